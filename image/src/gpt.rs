//! GPT disk layout: protective MBR, primary header + entries at LBA 1/2,
//! backup entries + header at the end, CRC32s, 1 MiB aligned partitions.
//! Disk and partition GUIDs are derived from a seed (the build id), so the
//! same inputs give the same table bytes.

use std::io::{Read, Seek, SeekFrom, Write};

use anyhow::{bail, ensure, Context, Result};
use sha2::{Digest, Sha256};
use uuid::Uuid;

pub const SECTOR: u64 = 512;
const ENTRIES: u64 = 128;
const ENTRY_SIZE: u64 = 128;
const ENTRY_SECTORS: u64 = ENTRIES * ENTRY_SIZE / SECTOR; // 32
const ALIGN: u64 = 1024 * 1024;

pub const TYPE_ESP: &str = "c12a7328-f81f-11d2-ba4b-00a0c93ec93b";
pub const TYPE_ROOT_X86_64: &str = "4f68bce3-e8cd-4db1-96e7-fbcaf984b709";
pub const TYPE_ROOT_VERITY_X86_64: &str = "2c7357ed-ebd2-46d9-aec1-23d437ec2bf5";
pub const TYPE_VAR: &str = "4d21b016-b534-45c2-a9fb-5c16e091fd2d";

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Partition {
    pub name: String,
    pub type_guid: Uuid,
    pub guid: Uuid,
    pub first_lba: u64,
    pub last_lba: u64,
}

impl Partition {
    pub fn offset(&self) -> u64 {
        self.first_lba * SECTOR
    }
    pub fn size(&self) -> u64 {
        (self.last_lba - self.first_lba + 1) * SECTOR
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Disk {
    pub guid: Uuid,
    pub sectors: u64,
    pub partitions: Vec<Partition>,
}

impl Disk {
    pub fn size(&self) -> u64 {
        self.sectors * SECTOR
    }
    pub fn find(&self, name: &str) -> Result<&Partition> {
        self.partitions
            .iter()
            .find(|p| p.name == name)
            .with_context(|| format!("no GPT partition labelled `{name}`"))
    }
}

pub fn derive_guid(seed: &[u8], what: &str) -> Uuid {
    let h = Sha256::new_with_prefix(b"gwos-gpt-guid\0")
        .chain_update(seed)
        .chain_update(what)
        .finalize();
    let mut b = [0u8; 16];
    b.copy_from_slice(&h[..16]);
    uuid::Builder::from_random_bytes(b).into_uuid()
}

/// Lays out partitions (name, type, size in bytes; sizes rounded up to 1 MiB)
/// from 1 MiB on, leaving 1 MiB at the end for the backup table.
pub fn layout(parts: &[(&str, &str, u64)], seed: &[u8]) -> Result<Disk> {
    let mut next = ALIGN;
    let mut out = Vec::new();
    for (name, ty, size) in parts {
        ensure!(*size > 0, "partition {name}: size must be > 0");
        ensure!(
            name.encode_utf16().count() <= 36,
            "partition name {name} longer than 36 UTF-16 units"
        );
        let size = size.div_ceil(ALIGN) * ALIGN;
        out.push(Partition {
            name: name.to_string(),
            type_guid: Uuid::parse_str(ty)?,
            guid: derive_guid(seed, name),
            first_lba: next / SECTOR,
            last_lba: (next + size) / SECTOR - 1,
        });
        next += size;
    }
    Ok(Disk {
        guid: derive_guid(seed, "disk"),
        sectors: (next + ALIGN) / SECTOR,
        partitions: out,
    })
}

fn entries_bytes(d: &Disk) -> Vec<u8> {
    let mut v = vec![0u8; (ENTRIES * ENTRY_SIZE) as usize];
    for (i, p) in d.partitions.iter().enumerate() {
        let e = &mut v[i * ENTRY_SIZE as usize..(i + 1) * ENTRY_SIZE as usize];
        e[0..16].copy_from_slice(&p.type_guid.to_bytes_le());
        e[16..32].copy_from_slice(&p.guid.to_bytes_le());
        e[32..40].copy_from_slice(&p.first_lba.to_le_bytes());
        e[40..48].copy_from_slice(&p.last_lba.to_le_bytes());
        for (j, u) in p.name.encode_utf16().enumerate() {
            e[56 + 2 * j..58 + 2 * j].copy_from_slice(&u.to_le_bytes());
        }
    }
    v
}

fn header(d: &Disk, primary: bool, entries_crc: u32) -> [u8; 512] {
    let last = d.sectors - 1;
    let (my, alt, entries_lba) = if primary {
        (1, last, 2)
    } else {
        (last, 1, last - ENTRY_SECTORS)
    };
    let mut h = [0u8; 512];
    h[0..8].copy_from_slice(b"EFI PART");
    h[8..12].copy_from_slice(&0x0001_0000u32.to_le_bytes());
    h[12..16].copy_from_slice(&92u32.to_le_bytes());
    h[24..32].copy_from_slice(&my.to_le_bytes());
    h[32..40].copy_from_slice(&alt.to_le_bytes());
    h[40..48].copy_from_slice(&(2 + ENTRY_SECTORS).to_le_bytes());
    h[48..56].copy_from_slice(&(last - 1 - ENTRY_SECTORS).to_le_bytes());
    h[56..72].copy_from_slice(&d.guid.to_bytes_le());
    h[72..80].copy_from_slice(&entries_lba.to_le_bytes());
    h[80..84].copy_from_slice(&(ENTRIES as u32).to_le_bytes());
    h[84..88].copy_from_slice(&(ENTRY_SIZE as u32).to_le_bytes());
    h[88..92].copy_from_slice(&entries_crc.to_le_bytes());
    let crc = crc32fast::hash(&h[..92]);
    h[16..20].copy_from_slice(&crc.to_le_bytes());
    h
}

fn protective_mbr(d: &Disk) -> [u8; 512] {
    let mut m = [0u8; 512];
    let e = &mut m[446..462];
    e[1..4].copy_from_slice(&[0x00, 0x02, 0x00]); // CHS of LBA 1
    e[4] = 0xEE;
    e[5..8].copy_from_slice(&[0xFF, 0xFF, 0xFF]);
    e[8..12].copy_from_slice(&1u32.to_le_bytes());
    e[12..16].copy_from_slice(&((d.sectors - 1).min(u32::MAX as u64) as u32).to_le_bytes());
    m[510] = 0x55;
    m[511] = 0xAA;
    m
}

/// Sets the file length and writes MBR, both headers and both entry arrays.
pub fn write<F: Write + Seek>(f: &mut F, d: &Disk) -> Result<()> {
    let entries = entries_bytes(d);
    let crc = crc32fast::hash(&entries);
    let last = d.sectors - 1;
    f.seek(SeekFrom::Start(0))?;
    f.write_all(&protective_mbr(d))?;
    f.write_all(&header(d, true, crc))?;
    f.write_all(&entries)?;
    f.seek(SeekFrom::Start((last - ENTRY_SECTORS) * SECTOR))?;
    f.write_all(&entries)?;
    f.write_all(&header(d, false, crc))?;
    Ok(())
}

fn le64(b: &[u8]) -> u64 {
    u64::from_le_bytes(b[..8].try_into().expect("8 bytes"))
}
fn le32(b: &[u8]) -> u32 {
    u32::from_le_bytes(b[..4].try_into().expect("4 bytes"))
}

/// Reads and checks the primary GPT (signature, header CRC, entries CRC).
pub fn read<F: Read + Seek>(f: &mut F) -> Result<Disk> {
    let len = f.seek(SeekFrom::End(0))?;
    ensure!(
        len >= 3 * ALIGN,
        "image too small ({len} bytes) to hold a gwos GPT disk"
    );
    let mut h = [0u8; 512];
    f.seek(SeekFrom::Start(SECTOR))?;
    f.read_exact(&mut h)?;
    ensure!(
        &h[0..8] == b"EFI PART",
        "no GPT header at LBA 1 (not a gwos image?)"
    );
    let hsize = le32(&h[12..]) as usize;
    ensure!(
        (92..=512).contains(&hsize),
        "GPT header size {hsize} invalid"
    );
    let want = le32(&h[16..]);
    let mut hc = h;
    hc[16..20].fill(0);
    ensure!(
        crc32fast::hash(&hc[..hsize]) == want,
        "GPT header CRC32 mismatch"
    );
    let n = le32(&h[80..]) as u64;
    let esz = le32(&h[84..]) as u64;
    ensure!(
        esz >= 128 && n <= 1024 && esz <= 1024,
        "GPT entry geometry invalid ({n} x {esz})"
    );
    let mut entries = vec![0u8; (n * esz) as usize];
    f.seek(SeekFrom::Start(le64(&h[72..]) * SECTOR))?;
    f.read_exact(&mut entries)?;
    ensure!(
        crc32fast::hash(&entries) == le32(&h[88..]),
        "GPT partition entries CRC32 mismatch"
    );
    let sectors = len / SECTOR;
    // The backup header (last LBA) must be intact and describe the same entries.
    let mut b = [0u8; 512];
    f.seek(SeekFrom::Start((sectors - 1) * SECTOR))?;
    f.read_exact(&mut b)?;
    ensure!(
        &b[0..8] == b"EFI PART",
        "no backup GPT header at the last LBA (image truncated?)"
    );
    let mut bc = b;
    bc[16..20].fill(0);
    ensure!(
        crc32fast::hash(&bc[..hsize]) == le32(&b[16..]),
        "backup GPT header CRC32 mismatch"
    );
    let mut bentries = vec![0u8; (n * esz) as usize];
    f.seek(SeekFrom::Start(le64(&b[72..]).saturating_mul(SECTOR)))?;
    f.read_exact(&mut bentries)
        .context("reading backup GPT entries")?;
    ensure!(
        bentries == entries,
        "backup GPT partition entries differ from the primary ones"
    );
    let mut parts = Vec::new();
    for e in entries.chunks_exact(esz as usize) {
        if e[..16].iter().all(|&b| b == 0) {
            continue;
        }
        let name: Vec<u16> = e[56..128]
            .chunks_exact(2)
            .map(|c| u16::from_le_bytes([c[0], c[1]]))
            .take_while(|&u| u != 0)
            .collect();
        let p = Partition {
            name: String::from_utf16_lossy(&name),
            type_guid: Uuid::from_bytes_le(e[0..16].try_into()?),
            guid: Uuid::from_bytes_le(e[16..32].try_into()?),
            first_lba: le64(&e[32..]),
            last_lba: le64(&e[40..]),
        };
        if p.first_lba > p.last_lba || p.last_lba >= sectors {
            bail!("GPT partition {} has an invalid range", p.name);
        }
        parts.push(p);
    }
    Ok(Disk {
        guid: Uuid::from_bytes_le(h[56..72].try_into()?),
        sectors,
        partitions: parts,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;

    fn sample() -> Disk {
        layout(
            &[
                ("esp", TYPE_ESP, 3 * ALIGN),
                ("root-a", TYPE_ROOT_X86_64, 2 * ALIGN),
                ("verity-a", TYPE_ROOT_VERITY_X86_64, ALIGN),
                ("root-b", TYPE_ROOT_X86_64, 2 * ALIGN),
                ("verity-b", TYPE_ROOT_VERITY_X86_64, ALIGN),
                ("state", TYPE_VAR, ALIGN + 1),
            ],
            b"seed",
        )
        .unwrap()
    }

    #[test]
    fn sgdisk_accepts_and_we_read_back() {
        let d = sample();
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("disk.img");
        let mut f = std::fs::File::create(&p).unwrap();
        f.set_len(d.size()).unwrap();
        write(&mut f, &d).unwrap();
        drop(f);
        let mut f = std::fs::File::open(&p).unwrap();
        assert_eq!(read(&mut f).unwrap(), d);
        assert_eq!(d.find("state").unwrap().size(), 2 * ALIGN);

        let v = Command::new("sgdisk")
            .arg("-v")
            .arg(&p)
            .output()
            .expect("sgdisk (gdisk) installed");
        let vt = String::from_utf8_lossy(&v.stdout);
        assert!(
            v.status.success() && vt.contains("No problems found"),
            "{vt}"
        );
        let pr = Command::new("sgdisk").arg("-p").arg(&p).output().unwrap();
        let pt = String::from_utf8_lossy(&pr.stdout);
        for name in ["esp", "root-a", "verity-a", "root-b", "verity-b", "state"] {
            assert!(pt.contains(name), "{name} missing in {pt}");
        }
        assert!(pt.contains(&d.guid.to_string().to_uppercase()), "{pt}");
        let i = Command::new("sgdisk")
            .args(["-i", "3"])
            .arg(&p)
            .output()
            .unwrap();
        let it = String::from_utf8_lossy(&i.stdout);
        assert!(
            it.contains("Linux x86-64 root verity")
                && it.contains(&d.partitions[2].guid.to_string().to_uppercase()),
            "{it}"
        );
    }

    #[test]
    fn corrupt_header_or_entries_detected() {
        let d = sample();
        let mut buf = std::io::Cursor::new(vec![0u8; d.size() as usize]);
        write(&mut buf, &d).unwrap();
        let good = buf.into_inner();
        let mut bad = good.clone();
        bad[512 + 40] ^= 1;
        let e = read(&mut std::io::Cursor::new(bad))
            .unwrap_err()
            .to_string();
        assert!(e.contains("header CRC32"), "{e}");
        let mut bad = good.clone();
        bad[1024 + 60] ^= 1;
        let e = read(&mut std::io::Cursor::new(bad))
            .unwrap_err()
            .to_string();
        assert!(e.contains("entries CRC32"), "{e}");
        let mut bad = good.clone();
        let n = bad.len();
        bad[n - 512 + 60] ^= 1;
        let e = read(&mut std::io::Cursor::new(bad))
            .unwrap_err()
            .to_string();
        assert!(e.contains("backup GPT header"), "{e}");
        let mut bad = good.clone();
        bad[n - 33 * 512 + 70] ^= 1;
        let e = read(&mut std::io::Cursor::new(bad))
            .unwrap_err()
            .to_string();
        assert!(e.contains("backup GPT partition entries"), "{e}");
        // deterministic
        let mut again = std::io::Cursor::new(vec![0u8; d.size() as usize]);
        write(&mut again, &sample()).unwrap();
        assert_eq!(again.into_inner(), good);
    }
}
