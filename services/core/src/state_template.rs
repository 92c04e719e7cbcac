//! The state partition's file system template, written by the image tool
//! (`gwos build`, image/src/statefs.rs, from an empty ext4 made by mke2fs)
//! into the verified root at [`PATH`], and read by PID 1
//! (init/src/state.rs), which has no mkfs: on a boot that finds the state
//! partition blank it writes these blocks to the partition, then grows the
//! file system to the partition.
//!
//! Format (little endian): magic `GWOSST01`, u32 block size (4096), u64 file
//! system size in blocks, u32 record count, then per record a u64 block index
//! and one block of data; indices strictly increasing. Only the file system's
//! non-zero blocks are records.

use anyhow::{bail, Result};

/// Where the template lives in the root file system.
pub const PATH: &str = "/usr/lib/gwos/state-template";
pub const MAGIC: &[u8; 8] = b"GWOSST01";
pub const BLOCK: usize = 4096;
const HEADER: usize = 24;

/// A parsed template: the file system's size and its non-zero blocks.
pub struct Template<'a> {
    pub fs_blocks: u64,
    /// (block index, one block of data)
    pub records: Vec<(u64, &'a [u8])>,
}

/// The non-zero blocks of the file system image `fs` in the template format.
pub fn encode(fs: &[u8]) -> Vec<u8> {
    let blocks: Vec<(u64, &[u8])> = fs
        .chunks(BLOCK)
        .enumerate()
        .filter(|(_, c)| c.iter().any(|&b| b != 0))
        .map(|(i, c)| (i as u64, c))
        .collect();
    let mut out = Vec::with_capacity(HEADER + blocks.len() * (8 + BLOCK));
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

/// Checks a template against a partition of `part_size` bytes.
pub fn parse(t: &[u8], part_size: u64) -> Result<Template<'_>> {
    if t.len() < HEADER || &t[..8] != MAGIC {
        bail!("not a gwos state template (bad magic)");
    }
    let bs = u32::from_le_bytes(t[8..12].try_into()?) as usize;
    let fs_blocks = u64::from_le_bytes(t[12..20].try_into()?);
    let count = u32::from_le_bytes(t[20..24].try_into()?) as usize;
    if bs != BLOCK {
        bail!("template block size {bs} unsupported");
    }
    if fs_blocks.saturating_mul(bs as u64) > part_size {
        bail!("template file system ({fs_blocks} blocks) is larger than the partition ({part_size} bytes)");
    }
    if t.len() != HEADER + count * (8 + bs) {
        bail!(
            "template length {} does not match its {count} records",
            t.len()
        );
    }
    let mut records = Vec::with_capacity(count);
    let mut last: Option<u64> = None;
    for r in t[HEADER..].chunks(8 + bs) {
        let idx = u64::from_le_bytes(r[..8].try_into()?);
        if idx >= fs_blocks || last.is_some_and(|l| idx <= l) {
            bail!("template record for block {idx} out of order or out of range");
        }
        last = Some(idx);
        records.push((idx, &r[8..]));
    }
    Ok(Template { fs_blocks, records })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A template by hand, including ones `encode` never makes.
    fn raw(recs: &[(u64, u8)], fs_blocks: u64) -> Vec<u8> {
        let mut t = MAGIC.to_vec();
        t.extend_from_slice(&(BLOCK as u32).to_le_bytes());
        t.extend_from_slice(&fs_blocks.to_le_bytes());
        t.extend_from_slice(&(recs.len() as u32).to_le_bytes());
        for (i, b) in recs {
            t.extend_from_slice(&i.to_le_bytes());
            t.extend_from_slice(&[*b; BLOCK]);
        }
        t
    }

    #[test]
    fn encodes_only_non_zero_blocks_and_parses_back() {
        let mut fs = vec![0u8; BLOCK * 4];
        fs[BLOCK + 7] = 1;
        fs[3 * BLOCK] = 2;
        let t = encode(&fs);
        assert_eq!(t.len(), HEADER + 2 * (8 + BLOCK));
        let p = parse(&t, fs.len() as u64).unwrap();
        assert_eq!(p.fs_blocks, 4);
        assert_eq!(
            p.records.iter().map(|(i, _)| *i).collect::<Vec<_>>(),
            vec![1, 3]
        );
        assert_eq!(p.records[0].1, &fs[BLOCK..2 * BLOCK]);
    }

    #[test]
    fn hostile_templates_are_refused() {
        parse(&raw(&[(0, 1), (5, 2)], 8), 8 * 4096).unwrap();
        let e = |t: &[u8], size| format!("{:#}", parse(t, size).err().expect("refused"));
        assert!(e(&raw(&[(0, 1)], 8), 4 * 4096).contains("larger than the partition"));
        assert!(e(&raw(&[(5, 1), (2, 1)], 8), 8 * 4096).contains("out of order"));
        assert!(e(&raw(&[(9, 1)], 8), 8 * 4096).contains("out of range"));
        let mut t = raw(&[(0, 1)], 8);
        t.pop();
        assert!(e(&t, 8 * 4096).contains("does not match"));
        t[0] = b'X';
        assert!(e(&t, 8 * 4096).contains("magic"));
    }
}
