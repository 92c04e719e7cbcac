//! The stored security floor: the lowest signed `version` stage 1 will boot.
//!
//! Where: two 512-byte copies of a record in the gap between the primary GPT
//! (LBA 0..33) and the first partition (which `gwos build` puts at 1 MiB), at
//! byte offsets [`COPY_OFFSETS`] of the disk that holds the slot. Stage 1
//! reads them raw from `/dev/<disk>` before it mounts anything; no file
//! system is involved, and the region belongs to no partition (stage 1 checks
//! that every partition starts at or after [`REGION_END`]).
//!
//! Record: `GWOSFLR1` magic, then little-endian u64 `seq`, `floor`,
//! `version` (the blessed release that raised it), then the SHA-256 of those
//! 32 bytes; the rest of the 512 bytes is zero. A record with sequence `s`
//! is written to copy `s % 2`, so a write never touches the copy holding the
//! current record: a power cut during the write leaves the old record
//! intact (the torn copy fails its hash and the other is used).
//!
//! Reading: the valid copy with the highest `seq` wins; both copies zero
//! means no floor was ever stored (0). Any other content with no valid copy
//! is refused by stage 1 (FATAL), since that is not something a power cut can
//! produce.
//!
//! Who writes it: only PID 1 (root, raw block device), and only after the
//! booted slot is blessed, to `max(stored floor, the slot's signed
//! security_floor)`. The floor never goes down.

use std::io::{Read, Seek, SeekFrom, Write};

use sha2::{Digest, Sha256};

pub const MAGIC: &[u8; 8] = b"GWOSFLR1";
pub const RECORD_LEN: usize = 512;
/// End of the reserved region: the first partition must start here or later.
pub const REGION_END: u64 = 1 << 20;
/// Byte offsets of the two copies on the disk.
pub const COPY_OFFSETS: [u64; 2] = [REGION_END - 8192, REGION_END - 4096];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Record {
    pub seq: u64,
    pub floor: u64,
    pub version: u64,
}

/// What one copy holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Copy {
    Empty,
    Valid(Record),
    Corrupt(String),
}

pub fn encode(r: &Record) -> [u8; RECORD_LEN] {
    let mut b = [0u8; RECORD_LEN];
    b[..8].copy_from_slice(MAGIC);
    b[8..16].copy_from_slice(&r.seq.to_le_bytes());
    b[16..24].copy_from_slice(&r.floor.to_le_bytes());
    b[24..32].copy_from_slice(&r.version.to_le_bytes());
    let h = Sha256::digest(&b[..32]);
    b[32..64].copy_from_slice(&h);
    b
}

pub fn decode(b: &[u8]) -> Copy {
    if b.len() < RECORD_LEN {
        return Copy::Corrupt(format!("{} bytes, need {RECORD_LEN}", b.len()));
    }
    let b = &b[..RECORD_LEN];
    if b.iter().all(|x| *x == 0) {
        return Copy::Empty;
    }
    if &b[..8] != MAGIC {
        return Copy::Corrupt("no GWOSFLR1 magic".into());
    }
    if Sha256::digest(&b[..32])[..] != b[32..64] || b[64..].iter().any(|x| *x != 0) {
        return Copy::Corrupt("hash does not match".into());
    }
    let u = |o: usize| u64::from_le_bytes(b[o..o + 8].try_into().expect("8 bytes"));
    Copy::Valid(Record {
        seq: u(8),
        floor: u(16),
        version: u(24),
    })
}

/// The current record from both copies; `Ok(None)` when none was ever written.
pub fn current(copies: &[Vec<u8>; 2]) -> Result<Option<Record>, String> {
    let decoded: Vec<Copy> = copies.iter().map(|c| decode(c)).collect();
    let best = decoded
        .iter()
        .filter_map(|c| match c {
            Copy::Valid(r) => Some(*r),
            _ => None,
        })
        .max_by_key(|r| r.seq);
    if best.is_some() {
        return Ok(best);
    }
    if decoded.iter().all(|c| *c == Copy::Empty) {
        return Ok(None);
    }
    let why: Vec<String> = decoded
        .iter()
        .enumerate()
        .map(|(i, c)| match c {
            Copy::Corrupt(w) => format!("copy {i} at byte {}: {w}", COPY_OFFSETS[i]),
            _ => format!("copy {i}: empty"),
        })
        .collect();
    Err(format!(
        "the stored security floor record is corrupt ({}); a power cut cannot do this",
        why.join(", ")
    ))
}

/// The floor value of the current record (0 when none).
pub fn value(r: Option<Record>) -> u64 {
    r.map(|r| r.floor).unwrap_or(0)
}

/// The record to write to raise the floor to `floor` (None: nothing to do,
/// the stored floor is already at least that), and which copy it goes to.
pub fn raise(cur: Option<Record>, floor: u64, version: u64) -> Option<(usize, Record)> {
    if floor <= value(cur) {
        return None;
    }
    let seq = cur.map(|r| r.seq).unwrap_or(0) + 1;
    Some((
        (seq % 2) as usize,
        Record {
            seq,
            floor,
            version,
        },
    ))
}

/// Reads both copies from the raw disk `dev` (e.g. `/dev/vda`).
pub fn read(dev: &str) -> std::io::Result<[Vec<u8>; 2]> {
    let mut f = std::fs::File::open(dev)?;
    let mut out = [vec![0u8; RECORD_LEN], vec![0u8; RECORD_LEN]];
    for (i, off) in COPY_OFFSETS.iter().enumerate() {
        f.seek(SeekFrom::Start(*off))?;
        f.read_exact(&mut out[i])?;
    }
    Ok(out)
}

/// Writes copy `idx` and waits until it is on the disk.
pub fn write(dev: &str, idx: usize, r: &Record) -> std::io::Result<()> {
    let mut f = std::fs::OpenOptions::new().write(true).open(dev)?;
    f.seek(SeekFrom::Start(COPY_OFFSETS[idx]))?;
    f.write_all(&encode(r))?;
    f.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(seq: u64, floor: u64) -> Record {
        Record {
            seq,
            floor,
            version: floor,
        }
    }

    #[test]
    fn round_trip_and_torn_copies() {
        let r = rec(3, 2);
        assert_eq!(decode(&encode(&r)), Copy::Valid(r));
        assert_eq!(decode(&[0u8; RECORD_LEN]), Copy::Empty);
        let mut torn = encode(&r);
        torn[20] ^= 1;
        assert_eq!(decode(&torn), Copy::Corrupt("hash does not match".into()));
        // Highest valid seq wins; a torn copy next to a valid one is a power cut: the valid one counts.
        let a = encode(&rec(4, 3)).to_vec();
        let b = encode(&rec(3, 2)).to_vec();
        assert_eq!(current(&[a.clone(), b.clone()]), Ok(Some(rec(4, 3))));
        assert_eq!(current(&[torn.to_vec(), b]), Ok(Some(rec(3, 2))));
        assert_eq!(current(&[vec![0; 512], vec![0; 512]]), Ok(None));
        let e = current(&[torn.to_vec(), vec![0; 512]]).unwrap_err();
        assert!(
            e.starts_with("the stored security floor record is corrupt (copy 0 at byte 1040384: hash does not match, copy 1: empty)"),
            "{e}"
        );
    }

    #[test]
    fn raise_never_lowers_and_alternates_copies() {
        assert_eq!(raise(None, 0, 1), None);
        assert_eq!(raise(None, 1, 1), Some((1, rec(1, 1))));
        assert_eq!(raise(Some(rec(1, 1)), 1, 1), None);
        assert_eq!(raise(Some(rec(1, 2)), 1, 1), None, "never lowered");
        assert_eq!(
            raise(Some(rec(1, 1)), 2, 2),
            Some((0, rec(2, 2))),
            "written to the copy not holding seq 1"
        );
    }

    #[test]
    fn read_write_file() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("disk");
        std::fs::File::create(&p)
            .unwrap()
            .set_len(REGION_END)
            .unwrap();
        let dev = p.to_str().unwrap();
        assert_eq!(current(&read(dev).unwrap()), Ok(None));
        let (i, r) = raise(None, 2, 2).unwrap();
        write(dev, i, &r).unwrap();
        assert_eq!(current(&read(dev).unwrap()), Ok(Some(r)));
        let (i, r2) = raise(Some(r), 5, 5).unwrap();
        write(dev, i, &r2).unwrap();
        assert_eq!(current(&read(dev).unwrap()), Ok(Some(r2)));
    }
}
