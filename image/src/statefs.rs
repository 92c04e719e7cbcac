//! The state partition's file system template. PID 1 has no mkfs, so the
//! image carries an empty ext4 (made here by Debian's `mke2fs` with a fixed
//! UUID, hash seed and clock, so the same inputs give the same bytes) as a
//! list of its non-zero blocks, at [`TEMPLATE_PATH`] in the verified root.
//! On a boot that finds the state partition blank (first boot, or after an
//! operator wiped it) PID 1 writes those blocks to the partition, then grows
//! the file system to the partition (init/src/state.rs). The image's state
//! partition itself is left blank, so every first boot takes that path.
//!
//! Format (little endian): magic `GWOSST01`, u32 block size, u64 file
//! system size in blocks, u32 record count, then per record a u64 block
//! index and one block of data, indices strictly increasing.

use std::path::Path;

use anyhow::{Context, Result};
use uuid::Uuid;

pub const TEMPLATE_PATH: &str = "usr/lib/gwos/state-template";
pub const MAGIC: &[u8; 8] = b"GWOSST01";
const BLOCK: usize = 4096;
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
        .args(["-q", "-F", "-L", "gwos-state", "-b", "4096", "-m", "1", "-i", "16384", "-O", "64bit,resize_inode"])
        .args(["-U", &uuid.to_string(), "-E", &ext])
        .arg(&img)
        .output()
        .context("running mkfs.ext4 (Debian package e2fsprogs)")?;
    anyhow::ensure!(o.status.success(), "mkfs.ext4 for the state template failed: {}", String::from_utf8_lossy(&o.stderr));
    let data = std::fs::read(&img)?;
    let _ = std::fs::remove_file(&img);
    Ok(encode(&data))
}

/// Non-zero blocks of `fs` in the template format.
pub fn encode(fs: &[u8]) -> Vec<u8> {
    let blocks: Vec<(u64, &[u8])> =
        fs.chunks(BLOCK).enumerate().filter(|(_, c)| c.iter().any(|&b| b != 0)).map(|(i, c)| (i as u64, c)).collect();
    let mut out = Vec::with_capacity(24 + blocks.len() * (8 + BLOCK));
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&(BLOCK as u32).to_le_bytes());
    out.extend_from_slice(&(fs.len().div_ceil(BLOCK) as u64).to_le_bytes());
    out.extend_from_slice(&(blocks.len() as u32).to_le_bytes());
    for (i, c) in blocks {
        out.extend_from_slice(&i.to_le_bytes());
        out.extend_from_slice(c);
        out.resize(out.len() + (BLOCK - c.len()), 0);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_only_non_zero_blocks() {
        let mut fs = vec![0u8; BLOCK * 4];
        fs[BLOCK + 7] = 1;
        fs[3 * BLOCK] = 2;
        let t = encode(&fs);
        assert_eq!(&t[..8], MAGIC);
        assert_eq!(u64::from_le_bytes(t[12..20].try_into().unwrap()), 4);
        assert_eq!(u32::from_le_bytes(t[20..24].try_into().unwrap()), 2);
        assert_eq!(t.len(), 24 + 2 * (8 + BLOCK));
        assert_eq!(u64::from_le_bytes(t[24..32].try_into().unwrap()), 1);
        assert_eq!(t[32 + 7], 1);
    }

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
