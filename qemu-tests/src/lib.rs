//! Boots built images in QEMU (TCG) and drives them from the host like a user would.
//!
//! Sits at the end of the chain: `gwos build` → `out/gwos.img` → [`Qemu`]
//! boots a copy of it (OVMF + systemd-boot, or the slot's kernel/initramfs
//! directly), records the serial console to a file and waits for lines; a
//! [`NetNs`] gives the guest a real address on a TAP device inside a network
//! namespace the test made. Both are torn down by `Drop` even when a test
//! fails.

pub mod gpt;
pub mod netns;
pub mod qemu;

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

/// Builds (once per test process) the suite's image from `qemu-tests/test-image.toml`
/// with the same kernel, `gwos` and `gwosd` as `make image`; returns its out dir.
pub fn test_image() -> anyhow::Result<PathBuf> {
    static BUILT: std::sync::OnceLock<Result<PathBuf, String>> = std::sync::OnceLock::new();
    BUILT
        .get_or_init(|| {
            let ws = workspace();
            let gwos = env_path("GWOS_BIN", ws.join("target/release/gwos"));
            let gwosd = env_path(
                "GWOSD",
                ws.join("target/x86_64-unknown-linux-gnu/release/gwosd"),
            );
            let kernel = out_dir().join("bzImage");
            for p in [&gwos, &gwosd, &kernel] {
                if !p.exists() {
                    return Err(format!(
                        "{} missing: run `make image` first (or set GWOS_BIN/GWOSD/GWOS_OUT)",
                        p.display()
                    ));
                }
            }
            let out = out_dir().join("qemu-test");
            let o = std::process::Command::new(&gwos)
                .arg("build")
                .arg("--config")
                .arg(ws.join("qemu-tests/test-image.toml"))
                .arg("--kernel")
                .arg(&kernel)
                .arg("--gwosd")
                .arg(&gwosd)
                .arg("--out")
                .arg(&out)
                .arg("--no-qcow2")
                // The test image is a development image named 0.1.0 (F15).
                .arg("--allow-dev-keys")
                .output()
                .map_err(|e| e.to_string())?;
            if !o.status.success() {
                return Err(format!(
                    "gwos build of the test image failed:\n{}",
                    String::from_utf8_lossy(&o.stderr)
                ));
            }
            Ok(out)
        })
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
