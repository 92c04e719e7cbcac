//! Boots built images in QEMU (TCG) and drives them from the host like a user would.
//!
//! Sits at the end of the chain: `gwos build` → `out/gwos.img` → [`Qemu`]
//! boots a copy of it (OVMF + systemd-boot, or the slot's kernel/initramfs
//! directly), records the serial console to a file and waits for lines; a
//! [`NetNs`] gives the guest a real address on a TAP device inside a network
//! namespace the test made. Both are torn down by `Drop` even when a test
//! fails.

#![forbid(unsafe_code)]

pub mod gpt;
pub mod netns;
pub mod qemu;
pub mod slot;
pub mod update;

pub use netns::NetNs;
pub use qemu::{Boot, Qemu};

use std::path::{Path, PathBuf};

/// The workspace root (parent of this crate).
pub fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace")
        .to_path_buf()
}

/// `$GWOS_OUT` (set by the Makefile) or `<workspace>/out`.
pub fn out_dir() -> PathBuf {
    std::env::var_os("GWOS_OUT")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace().join("out"))
}

/// Panics with a clear message when a host tool is missing (tests must not pass silently).
pub fn need_tool(name: &str) {
    let found = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| d.join(name).is_file()))
        .unwrap_or(false);
    assert!(
        found,
        "{name} is not installed (see .ci/debian-packages.txt)"
    );
}

/// Copies an image sparsely into `dir` (tests never touch the original).
pub fn copy_image(src: &Path, dir: &Path) -> anyhow::Result<PathBuf> {
    let dst = dir.join("disk.img");
    let st = std::process::Command::new("cp")
        .arg("--sparse=always")
        .arg(src)
        .arg(&dst)
        .status()?;
    anyhow::ensure!(st.success(), "copying {} failed", src.display());
    Ok(dst)
}

/// The suite's backend control key (qemu-tests/fixtures/backend_ed25519), copied
/// into `dir` with mode 0600 as OpenSSH wants.
pub fn backend_key(dir: &Path) -> anyhow::Result<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let key = dir.join("backend_ed25519");
    std::fs::copy(
        workspace().join("qemu-tests/fixtures/backend_ed25519"),
        &key,
    )?;
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600))?;
    Ok(key)
}

/// XORs one byte at `offset` of `file` with 0xff.
pub fn flip_byte(file: &Path, offset: u64) -> anyhow::Result<()> {
    use std::io::{Read, Seek, SeekFrom, Write};
    let mut f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(file)?;
    let mut b = [0u8; 1];
    f.seek(SeekFrom::Start(offset))?;
    f.read_exact(&mut b)?;
    b[0] ^= 0xff;
    f.seek(SeekFrom::Start(offset))?;
    f.write_all(&b)?;
    f.sync_all()?;
    Ok(())
}

fn env_path(var: &str, default: PathBuf) -> PathBuf {
    std::env::var_os(var).map(PathBuf::from).unwrap_or(default)
}

/// The host tool: `$GWOS_BIN` (set by the Makefile) or target/release/gwos.
pub fn gwos_bin() -> PathBuf {
    env_path("GWOS_BIN", workspace().join("target/release/gwos"))
}

/// Builds `qemu-tests/test-image.toml` with `network_extra` (TOML lines) added to its
/// `[site.network]` into `$GWOS_OUT/<name>/`, with the same kernel, `gwos` and
/// `gwosd` as `make image`; returns that out dir.
pub fn build_test_image(name: &str, network_extra: &str) -> anyhow::Result<PathBuf> {
    let ws = workspace();
    let gwos = gwos_bin();
    let gwosd = env_path(
        "GWOSD",
        ws.join("target/x86_64-unknown-linux-gnu/release/gwosd"),
    );
    let kernel = out_dir().join("bzImage");
    for p in [&gwos, &gwosd, &kernel] {
        anyhow::ensure!(
            p.exists(),
            "{} missing: run `make image` first (or set GWOS_BIN/GWOSD/GWOS_OUT)",
            p.display()
        );
    }
    let out = out_dir().join(name);
    std::fs::create_dir_all(&out)?;
    let text = std::fs::read_to_string(ws.join("qemu-tests/test-image.toml"))?
        .replace(
            "rootfs_dir = \"../rootfs\"",
            &format!("rootfs_dir = \"{}\"", ws.join("rootfs").display()),
        )
        .replace(
            "[site.network]\n",
            &format!("[site.network]\n{network_extra}\n"),
        );
    let config = out.join("image.toml");
    std::fs::write(&config, text)?;
    let o = std::process::Command::new(&gwos)
        .arg("build")
        .arg("--config")
        .arg(&config)
        .arg("--kernel")
        .arg(&kernel)
        .arg("--gwosd")
        .arg(&gwosd)
        .arg("--out")
        .arg(&out)
        .arg("--workspace")
        .arg(&ws)
        .arg("--no-qcow2")
        // The test images are development images named 0.1.0 (F15).
        .arg("--allow-dev-keys")
        .output()?;
    anyhow::ensure!(
        o.status.success(),
        "gwos build of {name} failed:\n{}",
        String::from_utf8_lossy(&o.stderr)
    );
    Ok(out)
}

/// Builds (once per test process) the suite's image from `qemu-tests/test-image.toml`
/// into `$GWOS_OUT/qemu-test/`; returns its out dir.
pub fn test_image() -> anyhow::Result<PathBuf> {
    static BUILT: std::sync::OnceLock<Result<PathBuf, String>> = std::sync::OnceLock::new();
    BUILT
        .get_or_init(|| build_test_image("qemu-test", "").map_err(|e| format!("{e:#}")))
        .clone()
        .map_err(|e| anyhow::anyhow!(e))
}

/// Direct-kernel boot of an image's slot A with its own command line plus `extra`.
pub fn direct_boot(out: &Path, extra: &str) -> anyhow::Result<Boot> {
    let slot = out.join("slot-a");
    let cmdline = std::fs::read_to_string(slot.join("cmdline"))?;
    Ok(Boot::Direct {
        kernel: slot.join("bzImage"),
        initrd: slot.join("initramfs.cpio"),
        append: format!("{} {extra}", cmdline.trim()),
    })
}
