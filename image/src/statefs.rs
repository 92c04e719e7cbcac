//! The state partition's empty ext4 file system (mounted at /var by PID 1,
//! which has no mkfs): `mke2fs` from Debian's e2fsprogs with a fixed UUID,
//! hash seed and clock (`E2FSPROGS_FAKE_TIME`), so the same build inputs give
//! the same bytes. Full partition size; only its non-zero blocks are written
//! into the sparse image.

use std::path::Path;

use anyhow::{Context, Result};
use uuid::Uuid;

pub fn mkfs(out: &Path, size: u64, epoch: u64, uuid: Uuid) -> Result<()> {
    let _ = std::fs::remove_file(out);
    std::fs::File::create(out)?.set_len(size)?;
    let ext = format!("hash_seed={uuid},root_owner=0:0,lazy_itable_init=1,nodiscard");
    let o = std::process::Command::new("mkfs.ext4")
        .env("E2FSPROGS_FAKE_TIME", epoch.to_string())
        .args(["-q", "-F", "-L", "gwos-state", "-b", "4096", "-m", "1", "-U", &uuid.to_string(), "-E", &ext])
        .arg(out)
        .output()
        .context("running mkfs.ext4 (Debian package e2fsprogs)")?;
    anyhow::ensure!(o.status.success(), "mkfs.ext4 for the state partition failed: {}", String::from_utf8_lossy(&o.stderr));
    Ok(())
}
