//! The state partition's file system template (format and its reader in
//! `gwos_core::state_template`). PID 1 has no mkfs, so the image carries an
//! empty ext4, made here by Debian's `mke2fs` with a fixed UUID, hash seed and
//! clock (so the same inputs give the same bytes), as the list of its
//! non-zero blocks. The image's state partition itself is left blank, so
//! every first boot formats it from the template (init/src/state.rs).

use std::path::Path;

use anyhow::{Context, Result};
use uuid::Uuid;

/// [`gwos_core::state_template::PATH`] relative to the staged root.
pub fn template_path() -> &'static str {
    gwos_core::state_template::PATH.trim_start_matches('/')
}

/// Template file system size; PID 1 grows it to the partition.
pub const TEMPLATE_BYTES: u64 = 32 << 20;

/// Makes the ext4 with `mke2fs` in `work` and returns the template bytes.
pub fn template(work: &Path, epoch: u64, uuid: Uuid) -> Result<Vec<u8>> {
    let img = work.join("state.ext4");
    let _ = std::fs::remove_file(&img);
    std::fs::File::create(&img)?.set_len(TEMPLATE_BYTES)?;
    // mke2fs's default resize_inode reserve (growth to 1024x online; beyond that the kernel
    // converts to meta_bg). A larger reserve (`-E resize=`) makes each online group add need
    // more journal credits than this small file system's journal has: the kernel refuses the
    // resize (seen under QEMU: "JBD2: init wants too many credits").
    let ext = format!("hash_seed={uuid},root_owner=0:0,lazy_itable_init=1,nodiscard");
    let o = std::process::Command::new("mkfs.ext4")
        .env("E2FSPROGS_FAKE_TIME", epoch.to_string())
        .args([
            "-q",
            "-F",
            "-L",
            "gwos-state",
            "-b",
            "4096",
            "-m",
            "1",
            "-i",
            "16384",
            "-O",
            "64bit,resize_inode",
        ])
        .args(["-U", &uuid.to_string(), "-E", &ext])
        .arg(&img)
        .output()
        .context("running mkfs.ext4 (Debian package e2fsprogs)")?;
    anyhow::ensure!(
        o.status.success(),
        "mkfs.ext4 for the state template failed: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    let data = std::fs::read(&img)?;
    let _ = std::fs::remove_file(&img);
    Ok(gwos_core::state_template::encode(&data))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn real_template_is_small_and_reproducible() {
        let d = tempfile::tempdir().unwrap();
        let u = Uuid::from_u128(7);
        let a = template(d.path(), 1_700_000_000, u).unwrap();
        let b = template(d.path(), 1_700_000_000, u).unwrap();
        assert_eq!(a, b, "same inputs, same template");
        assert!(a.len() < 4 << 20, "template is {} bytes", a.len());
    }
}
