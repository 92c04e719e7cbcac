//! The slot's root file system: `mkfs.erofs` (Debian erofs-utils 1.5) over
//! the staging tree with a fixed timestamp, fixed UUID, all files owned by
//! root, `--ignore-mtime` (else per-file mtime nanoseconds leak into the
//! inode format) and no xattrs, so the same tree gives the same bytes. The image is
//! padded to whole 4096-byte blocks for dm-verity.

use std::path::Path;

use anyhow::{ensure, Context, Result};
use uuid::Uuid;

use crate::tools;

pub fn mkfs(staging: &Path, out: &Path, epoch: u64, uuid: Uuid, compression: &str) -> Result<u64> {
    let _ = std::fs::remove_file(out);
    let t = format!("-T{epoch}");
    let u = format!("-U{uuid}");
    let z = format!("-z{compression}");
    let mut args: Vec<&std::ffi::OsStr> = vec![
        t.as_ref(),
        u.as_ref(),
        "--all-root".as_ref(),
        "--ignore-mtime".as_ref(),
        "-x-1".as_ref(),
    ];
    if !compression.is_empty() {
        args.push(z.as_ref());
    }
    args.push(out.as_os_str());
    args.push(staging.as_os_str());
    tools::run("mkfs.erofs", &args).context("building the EROFS root")?;
    let len = std::fs::metadata(out)?.len();
    ensure!(len > 0, "mkfs.erofs wrote an empty image");
    let padded = len.div_ceil(4096) * 4096;
    std::fs::OpenOptions::new()
        .write(true)
        .open(out)?
        .set_len(padded)?;
    Ok(padded)
}

/// Size in bytes of the EROFS image at the start of `dev` (from its superblock).
pub fn image_size(sb_area: &[u8]) -> Result<u64> {
    ensure!(
        sb_area.len() >= 1024 + 40,
        "EROFS superblock area too short"
    );
    let sb = &sb_area[1024..];
    ensure!(
        sb[0..4] == 0xE0F5_E1E2u32.to_le_bytes(),
        "no EROFS superblock (slot empty?)"
    );
    let bits = sb[12] as u32;
    ensure!(
        (9..=16).contains(&bits),
        "EROFS block size 2^{bits} unsupported"
    );
    let blocks = u32::from_le_bytes(sb[36..40].try_into()?) as u64;
    Ok(blocks << bits)
}

/// Extracts an EROFS image into `dir` with `fsck.erofs --extract` (also checks it).
pub fn extract(image: &Path, dir: &Path) -> Result<()> {
    let a = format!("--extract={}", dir.display());
    tools::run("fsck.erofs", &[a.as_ref(), image.as_os_str()]).context("fsck.erofs --extract")?;
    Ok(())
}
