//! `gwos.img.bmap`: the block map bmaptool reads (`bmaptool copy gwos.img
//! /dev/sdX` writes only the mapped blocks and checks each range's sha256).
//! Format: bmap XML version 2.0 (bmap-tools' `BmapCreate`), 4096-byte
//! blocks; the mapped ranges are the image file's data extents
//! (`SEEK_DATA`/`SEEK_HOLE`: `gwos build` writes the image sparse, so the
//! unused parts of the slots and the state partition are holes).
//! `BmapFileChecksum` is the sha256 of the file with that field's value
//! replaced by 64 zeros, as bmaptool checks it.

use std::fs::File;

use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use sha2::{Digest, Sha256};

pub const BLOCK: u64 = 4096;

pub struct Bmap {
    pub path: PathBuf,
    pub mapped_bytes: u64,
}

/// Data extents of `f` (sparse file), rounded out to whole blocks and merged.
pub fn mapped_ranges(f: &File, size: u64) -> Result<Vec<(u64, u64)>> {
    use rustix::fs::{seek, SeekFrom as RSeek};
    let mut out: Vec<(u64, u64)> = Vec::new();
    let mut pos = 0u64;
    while pos < size {
        let data = match seek(f, RSeek::Data(pos)) {
            Ok(d) => d,
            Err(rustix::io::Errno::NXIO) => break,
            Err(e) => return Err(e).context("SEEK_DATA"),
        };
        let hole = seek(f, RSeek::Hole(data)).context("SEEK_HOLE")?;
        let (first, last) = (data / BLOCK, (hole.min(size)).div_ceil(BLOCK) - 1);
        match out.last_mut() {
            Some(r) if r.1 + 1 >= first => r.1 = r.1.max(last),
            _ => out.push((first, last)),
        }
        pos = hole;
    }
    Ok(out)
}

fn range_sha256(f: &File, first: u64, last: u64, size: u64) -> Result<String> {
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let (mut off, end) = (first * BLOCK, ((last + 1) * BLOCK).min(size));
    while off < end {
        let n = ((end - off) as usize).min(buf.len());
        f.read_exact_at(&mut buf[..n], off)?;
        h.update(&buf[..n]);
        off += n as u64;
    }
    Ok(hex::encode(h.finalize()))
}

/// The bmap XML text for `image`.
pub fn render(image: &Path) -> Result<(String, u64)> {
    let f = File::open(image).with_context(|| format!("opening {}", image.display()))?;
    let size = f.metadata()?.len();
    let ranges = mapped_ranges(&f, size)?;
    let mapped: u64 = ranges.iter().map(|(a, b)| b - a + 1).sum();
    let mut body = String::new();
    for (a, b) in &ranges {
        let sum = range_sha256(&f, *a, *b, size)?;
        let span = if a == b {
            a.to_string()
        } else {
            format!("{a}-{b}")
        };
        body.push_str(&format!(
            "        <Range chksum=\"{sum}\"> {span} </Range>\n"
        ));
    }
    let text = |checksum: &str| {
        format!(
            "<?xml version=\"1.0\" ?>\n<!-- written by gwos build; flash with: bmaptool copy gwos.img /dev/sdX -->\n<bmap version=\"2.0\">\n    <ImageSize> {size} </ImageSize>\n    <BlockSize> {BLOCK} </BlockSize>\n    <BlocksCount> {} </BlocksCount>\n    <MappedBlocksCount> {mapped} </MappedBlocksCount>\n    <ChecksumType> sha256 </ChecksumType>\n    <BmapFileChecksum> {checksum} </BmapFileChecksum>\n    <BlockMap>\n{body}    </BlockMap>\n</bmap>\n",
            size.div_ceil(BLOCK)
        )
    };
    let zero = "0".repeat(64);
    let sum = hex::encode(Sha256::digest(text(&zero).as_bytes()));
    Ok((text(&sum), (mapped * BLOCK).min(size)))
}

/// Writes `<image>.bmap` next to the image.
pub fn write_for(image: &Path) -> Result<Bmap> {
    let (text, mapped_bytes) = render(image)?;
    let mut path = image.as_os_str().to_owned();
    path.push(".bmap");
    let path = PathBuf::from(path);
    std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
    Ok(Bmap { path, mapped_bytes })
}

/// Reads back the ranges of a bmap file (for tests and `gwos inspect`).
pub fn parse_ranges(text: &str) -> Vec<(u64, u64)> {
    text.lines()
        .filter_map(|l| {
            let l = l.trim();
            let inner = l.strip_prefix("<Range")?.split_once('>')?.1;
            let span = inner.strip_suffix("</Range>")?.trim();
            let (a, b) = span.split_once('-').unwrap_or((span, span));
            Some((a.parse().ok()?, b.parse().ok()?))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Seek, SeekFrom, Write};

    #[test]
    fn ranges_follow_the_sparse_extents() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("img");
        let mut f = File::create(&p).unwrap();
        f.set_len(64 * BLOCK).unwrap();
        for blk in [0u64, 1, 2, 40] {
            f.seek(SeekFrom::Start(blk * BLOCK)).unwrap();
            f.write_all(&[0xab; BLOCK as usize]).unwrap();
        }
        f.sync_all().unwrap();
        let f = File::open(&p).unwrap();
        let r = mapped_ranges(&f, 64 * BLOCK).unwrap();
        // File systems may allocate in larger extents than 4 KiB; the writes must be covered.
        for blk in [0u64, 1, 2, 40] {
            assert!(
                r.iter().any(|(a, b)| *a <= blk && blk <= *b),
                "{blk} in {r:?}"
            );
        }
        assert!(
            !r.iter().any(|(a, b)| *a <= 20 && 20 <= *b),
            "hole at 20: {r:?}"
        );
        let (text, _) = render(&p).unwrap();
        assert_eq!(parse_ranges(&text), r);
    }
}
