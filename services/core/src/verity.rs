//! dm-verity hash tree, format version 1 (what `veritysetup format` writes
//! with its defaults: sha256, 4096-byte data and hash blocks, superblock at
//! hash offset 0, tree starting at the next hash block).
//!
//! Layout of the hash area: block 0 holds the 512-byte superblock (rest
//! zero); then the tree levels, topmost level first, level 0 (hashes of the
//! data blocks) last. Each hash is sha256(salt ‖ block); hash blocks are the
//! concatenated 32-byte digests, zero padded. Root hash = sha256(salt ‖ top
//! block); with a single data block there are no levels and the root hash is
//! the data block's hash (as cryptsetup does).

use std::io::Read;

use anyhow::{bail, Context, Result};
use sha2::{Digest, Sha256};

pub const BLOCK: usize = 4096;
const DIGEST: usize = 32;
const PER_BLOCK_BITS: u32 = 7; // 4096 / 32 = 128 hashes per block

#[derive(Debug, Clone)]
pub struct VerityTree {
    pub root_hash: [u8; 32],
    pub data_blocks: u64,
    /// Superblock block + tree: the bytes that go at offset 0 of the hash device.
    pub hash_area: Vec<u8>,
}

/// Number of tree levels cryptsetup uses for `n` data blocks.
fn levels(n: u64) -> u32 {
    let mut l = 0u32;
    while PER_BLOCK_BITS * l < 64 && (n - 1) >> (PER_BLOCK_BITS * l) != 0 {
        l += 1;
    }
    l
}

pub fn superblock(data_blocks: u64, salt: &[u8], uuid: &[u8; 16]) -> Result<[u8; 512]> {
    if salt.len() > 256 {
        bail!("verity salt longer than 256 bytes");
    }
    let mut sb = [0u8; 512];
    sb[0..8].copy_from_slice(b"verity\0\0");
    sb[8..12].copy_from_slice(&1u32.to_le_bytes()); // superblock version
    sb[12..16].copy_from_slice(&1u32.to_le_bytes()); // hash type: normal
    sb[16..32].copy_from_slice(uuid);
    sb[32..38].copy_from_slice(b"sha256");
    sb[64..68].copy_from_slice(&(BLOCK as u32).to_le_bytes());
    sb[68..72].copy_from_slice(&(BLOCK as u32).to_le_bytes());
    sb[72..80].copy_from_slice(&data_blocks.to_le_bytes());
    sb[80..82].copy_from_slice(&(salt.len() as u16).to_le_bytes());
    sb[88..88 + salt.len()].copy_from_slice(salt);
    Ok(sb)
}

/// Hashes `blocks` (a whole number of 4096-byte blocks) into 32-byte digests
/// appended to `out`.
fn hash_blocks(base: &Sha256, blocks: &[u8], out: &mut Vec<u8>) {
    for b in blocks.chunks_exact(BLOCK) {
        out.extend_from_slice(&base.clone().chain_update(b).finalize());
    }
}

/// Pads a digest list to whole hash blocks.
fn pad(mut v: Vec<u8>) -> Vec<u8> {
    let len = v.len().div_ceil(BLOCK) * BLOCK;
    v.resize(len, 0);
    v
}

/// Builds the tree over the first `data_blocks` blocks read from `data`
/// (sequential; see [`build_file`] for the parallel path).
pub fn build(
    mut data: impl Read,
    data_blocks: u64,
    salt: &[u8],
    uuid: &[u8; 16],
) -> Result<VerityTree> {
    if data_blocks == 0 {
        bail!("verity: no data blocks");
    }
    let base = Sha256::new_with_prefix(salt);
    let mut level0 = Vec::with_capacity(data_blocks as usize * DIGEST);
    let mut buf = vec![0u8; 32 * BLOCK];
    let mut left = data_blocks as usize;
    while left > 0 {
        let n = left.min(32);
        let chunk = &mut buf[..n * BLOCK];
        data.read_exact(chunk)
            .context("verity: reading data (shorter than data_blocks?)")?;
        hash_blocks(&base, chunk, &mut level0);
        left -= n;
    }
    finish(level0, data_blocks, salt, uuid)
}

/// Builds the tree over `data_blocks` blocks of `f` starting at byte
/// `offset`. Level 0 (nearly all the work) is split into one contiguous
/// range per CPU; each thread reads its range with pread in 128 KiB pieces
/// (cache-hot) and the digests are joined in order.
pub fn build_file(
    f: &std::fs::File,
    offset: u64,
    data_blocks: u64,
    salt: &[u8],
    uuid: &[u8; 16],
) -> Result<VerityTree> {
    use std::os::unix::fs::FileExt;
    if data_blocks == 0 {
        bail!("verity: no data blocks");
    }
    let base = Sha256::new_with_prefix(salt);
    let threads = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .min(8) as u64;
    let per = data_blocks.div_ceil(threads);
    let parts: Vec<Result<Vec<u8>>> = std::thread::scope(|sc| {
        let hs: Vec<_> = (0..threads)
            .map(|t| {
                let b = base.clone();
                sc.spawn(move || -> Result<Vec<u8>> {
                    let (start, end) = (t * per, ((t + 1) * per).min(data_blocks));
                    let mut v = Vec::with_capacity((end.saturating_sub(start) as usize) * DIGEST);
                    let mut buf = vec![0u8; 32 * BLOCK];
                    let mut blk = start;
                    while blk < end {
                        let n = (end - blk).min(32) as usize;
                        let chunk = &mut buf[..n * BLOCK];
                        f.read_exact_at(chunk, offset + blk * BLOCK as u64)
                            .context("verity: reading data (shorter than data_blocks?)")?;
                        hash_blocks(&b, chunk, &mut v);
                        blk += n as u64;
                    }
                    Ok(v)
                })
            })
            .collect();
        hs.into_iter()
            .map(|h| h.join().expect("hash thread"))
            .collect()
    });
    let mut level0 = Vec::with_capacity(data_blocks as usize * DIGEST);
    for p in parts {
        level0.extend_from_slice(&p?);
    }
    finish(level0, data_blocks, salt, uuid)
}

fn finish(level0: Vec<u8>, data_blocks: u64, salt: &[u8], uuid: &[u8; 16]) -> Result<VerityTree> {
    let base = Sha256::new_with_prefix(salt);
    let nlevels = levels(data_blocks);
    let sb = superblock(data_blocks, salt, uuid)?;
    let mut hash_area = vec![0u8; BLOCK];
    hash_area[..512].copy_from_slice(&sb);
    if nlevels == 0 {
        let mut root = [0u8; 32];
        root.copy_from_slice(&level0[..DIGEST]);
        return Ok(VerityTree {
            root_hash: root,
            data_blocks,
            hash_area,
        });
    }
    // levels[0] = hashes of data, levels[i+1] = hashes of levels[i]'s blocks.
    let mut lv: Vec<Vec<u8>> = vec![pad(level0)];
    for i in 1..nlevels as usize {
        let prev = &lv[i - 1];
        let mut next = Vec::with_capacity(prev.len() / BLOCK * DIGEST);
        hash_blocks(&base, prev, &mut next);
        lv.push(pad(next));
    }
    let top = lv.last().expect("at least one level");
    debug_assert_eq!(top.len(), BLOCK);
    let mut root = [0u8; 32];
    root.copy_from_slice(&base.clone().chain_update(top).finalize());
    for l in lv.iter().rev() {
        hash_area.extend_from_slice(l);
    }
    Ok(VerityTree {
        root_hash: root,
        data_blocks,
        hash_area,
    })
}

/// Size in bytes of the hash area (superblock block + tree) for `n` data blocks.
pub fn hash_area_size(n: u64) -> u64 {
    let l = levels(n);
    let mut total = 1u64;
    for i in 0..l {
        let shift = (i + 1) * PER_BLOCK_BITS;
        total += (n + (1u64 << shift) - 1) >> shift;
    }
    total * BLOCK as u64
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;

    fn data(blocks: usize, seed: u8) -> Vec<u8> {
        let mut v = Vec::with_capacity(blocks * BLOCK);
        let mut h = Sha256::digest([seed]);
        while v.len() < blocks * BLOCK {
            h = Sha256::digest(h);
            v.extend_from_slice(&h);
        }
        v.truncate(blocks * BLOCK);
        v
    }

    /// Our tree must be byte-identical to `veritysetup format` (cryptsetup-bin).
    #[test]
    fn matches_veritysetup_format() {
        let vs = which("veritysetup");
        let salt = hex::decode("5a17".repeat(16)).unwrap();
        let uuid = uuid::Uuid::parse_str("3f1c2a55-8f0e-4b1d-9c2a-0d5e6f708192").unwrap();
        for &blocks in &[1usize, 2, 128, 129, 1000, 128 * 128 + 1] {
            let dir = tempfile::tempdir().unwrap();
            let d = data(blocks, blocks as u8);
            let dp = dir.path().join("data");
            let hp = dir.path().join("hash");
            std::fs::write(&dp, &d).unwrap();
            let out = Command::new(&vs)
                .args([
                    "format",
                    "--salt",
                    &hex::encode(&salt),
                    "--uuid",
                    &uuid.to_string(),
                ])
                .arg(&dp)
                .arg(&hp)
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
            let text = String::from_utf8_lossy(&out.stdout);
            let root_line = text.lines().find(|l| l.starts_with("Root hash:")).unwrap();
            let theirs_root = root_line.split_whitespace().last().unwrap();
            let t = build(&d[..], blocks as u64, &salt, uuid.as_bytes()).unwrap();
            let tf = build_file(
                &std::fs::File::open(&dp).unwrap(),
                0,
                blocks as u64,
                &salt,
                uuid.as_bytes(),
            )
            .unwrap();
            assert_eq!(tf.hash_area, t.hash_area, "parallel path, {blocks} blocks");
            assert_eq!(
                hex::encode(t.root_hash),
                theirs_root,
                "root hash, {blocks} blocks"
            );
            let theirs = std::fs::read(&hp).unwrap();
            assert_eq!(t.hash_area.len() as u64, hash_area_size(blocks as u64));
            assert!(
                theirs.len() >= t.hash_area.len(),
                "{blocks}: hash file shorter than ours"
            );
            assert_eq!(
                &theirs[..t.hash_area.len()],
                &t.hash_area[..],
                "hash area bytes, {blocks} blocks"
            );
            assert!(theirs[t.hash_area.len()..].iter().all(|&b| b == 0));
        }
    }

    pub(crate) fn which(tool: &str) -> std::path::PathBuf {
        for d in ["/usr/sbin", "/sbin", "/usr/bin", "/bin"] {
            let p = std::path::Path::new(d).join(tool);
            if p.exists() {
                return p;
            }
        }
        panic!("{tool} not found: install the Debian package that provides it (see .ci/debian-packages.txt)");
    }
}
