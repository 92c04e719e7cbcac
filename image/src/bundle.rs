//! Writes the update bundle (`gwos-<version_id>.update`, format in
//! [`gwos_signing::bundle`]): the signed header, then the EROFS root, the
//! verity hash area and the UKIs of slot a and slot b, streamed from the
//! build's files.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::Path;

use anyhow::{Context, Result};
use gwos_signing::{Manifest, ReleaseKey};
use sha2::{Digest, Sha256};

pub struct Written {
    pub size: u64,
    pub sha256: String,
}

fn size_and_hash(p: &Path) -> Result<(u64, [u8; 32])> {
    let mut f = File::open(p).with_context(|| format!("reading {}", p.display()))?;
    let mut h = Sha256::new();
    let n = std::io::copy(&mut f, &mut h)?;
    Ok((n, h.finalize().into()))
}

/// `parts` = root, verity, uki-a, uki-b files. Written to a temporary name
/// and renamed, so a failed build leaves no half bundle.
pub fn write(
    path: &Path,
    manifest: &Manifest,
    layout: &str,
    parts: [&Path; 4],
    key: &ReleaseKey,
) -> Result<Written> {
    let mut info = [(0u64, [0u8; 32]); 4];
    for (i, p) in parts.iter().enumerate() {
        info[i] = size_and_hash(p)?;
    }
    let head = gwos_signing::bundle::sealed_header(manifest, layout, info, key)
        .context("signing the bundle header")?;
    let tmp = path.with_extension("update.tmp");
    let mut hash = Sha256::new();
    let mut size = 0u64;
    {
        let mut out = BufWriter::with_capacity(
            1 << 20,
            File::create(&tmp).with_context(|| format!("creating {}", tmp.display()))?,
        );
        out.write_all(&head)?;
        hash.update(&head);
        size += head.len() as u64;
        for p in parts {
            let mut f = File::open(p)?;
            let mut tee = Tee(&mut out, &mut hash);
            size += std::io::copy(&mut f, &mut tee)?;
        }
        out.into_inner()
            .map_err(|e| anyhow::anyhow!("flushing {}: {}", tmp.display(), e.error()))?
            .sync_all()?;
    }
    std::fs::rename(&tmp, path)?;
    Ok(Written {
        size,
        sha256: hex::encode(hash.finalize()),
    })
}

struct Tee<'a, W: Write>(&'a mut W, &'a mut Sha256);

impl<W: Write> Write for Tee<'_, W> {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        let n = self.0.write(b)?;
        self.1.update(&b[..n]);
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.0.flush()
    }
}
