//! Running the Debian tools the build needs, with errors that name the
//! missing package instead of a bare "No such file or directory".

use std::path::PathBuf;
use std::process::{Command, Output};

use anyhow::{bail, Context, Result};

/// tool → Debian package that provides it.
const PACKAGES: &[(&str, &str)] = &[
    ("mkfs.erofs", "erofs-utils"),
    ("fsck.erofs", "erofs-utils"),
    ("dump.erofs", "erofs-utils"),
    ("objcopy", "binutils"),
    ("qemu-img", "qemu-utils"),
    ("veritysetup", "cryptsetup-bin"),
    ("ssh-keygen", "openssh-client"),
    ("sgdisk", "gdisk"),
    ("cpio", "cpio"),
    ("mformat", "mtools"),
    ("mmd", "mtools"),
    ("mcopy", "mtools"),
    ("dpkg-query", "dpkg"),
    ("cargo", "rustup (https://rustup.rs) or Debian cargo"),
];

pub fn package_for(tool: &str) -> &'static str {
    PACKAGES
        .iter()
        .find(|(t, _)| *t == tool)
        .map(|(_, p)| *p)
        .unwrap_or("(unknown package)")
}

/// Finds `tool` in PATH or the sbin directories.
pub fn find(tool: &str) -> Result<PathBuf> {
    let path = std::env::var("PATH").unwrap_or_default();
    let dirs = path.split(':').map(str::to_owned).chain([
        "/usr/sbin".into(),
        "/sbin".into(),
        "/usr/bin".into(),
    ]);
    for d in dirs {
        let p = PathBuf::from(d).join(tool);
        if p.is_file() {
            return Ok(p);
        }
    }
    bail!(
        "required tool `{tool}` not found; install the Debian package `{}` (apt-get install {})",
        package_for(tool),
        package_for(tool)
    )
}

/// Runs a tool to completion; a non-zero exit is an error that carries its stderr.
pub fn run(tool: &str, args: &[&std::ffi::OsStr]) -> Result<Output> {
    let exe = find(tool)?;
    let out = Command::new(&exe)
        .args(args)
        .output()
        .with_context(|| format!("running {}", exe.display()))?;
    if !out.status.success() {
        bail!(
            "{tool} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(out)
}

/// `run` with string arguments.
pub fn run_s(tool: &str, args: &[&str]) -> Result<Output> {
    let a: Vec<&std::ffi::OsStr> = args.iter().map(std::ffi::OsStr::new).collect();
    run(tool, &a)
}
