//! Just enough GPT reading to find a partition's byte range by label
//! (to tamper with a copy of an image).

use std::io::{Read, Seek, SeekFrom};
use std::path::Path;

use anyhow::{bail, Result};

#[derive(Debug, Clone)]
pub struct Part {
    pub label: String,
    pub offset: u64,
    pub size: u64,
}

pub fn partitions(image: &Path) -> Result<Vec<Part>> {
    let mut f = std::fs::File::open(image)?;
    let mut hdr = [0u8; 512];
    f.seek(SeekFrom::Start(512))?;
    f.read_exact(&mut hdr)?;
    if &hdr[0..8] != b"EFI PART" {
        bail!("{}: no GPT header", image.display());
    }
    let lba = u64::from_le_bytes(hdr[72..80].try_into()?);
    let n = u32::from_le_bytes(hdr[80..84].try_into()?) as usize;
    let esz = u32::from_le_bytes(hdr[84..88].try_into()?) as usize;
    let mut ents = vec![0u8; n * esz];
    f.seek(SeekFrom::Start(lba * 512))?;
    f.read_exact(&mut ents)?;
    let mut out = Vec::new();
    for e in ents.chunks(esz) {
        if e[0..16].iter().all(|b| *b == 0) {
            continue;
        }
        let first = u64::from_le_bytes(e[32..40].try_into()?);
        let last = u64::from_le_bytes(e[40..48].try_into()?);
        let name: Vec<u16> = e[56..128]
            .chunks(2)
            .map(|c| u16::from_le_bytes([c[0], c[1]]))
            .take_while(|u| *u != 0)
            .collect();
        out.push(Part {
            label: String::from_utf16_lossy(&name),
            offset: first * 512,
            size: (last - first + 1) * 512,
        });
    }
    Ok(out)
}

pub fn find(image: &Path, label: &str) -> Result<Part> {
    partitions(image)?
        .into_iter()
        .find(|p| p.label == label)
        .ok_or_else(|| anyhow::anyhow!("no partition {label}"))
}
