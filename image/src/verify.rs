//! `gwos verify` and `gwos ls`: check an image the way stage 1 will (signed
//! manifest at the end of verity-a, root hash, every hash block of the tree
//! recomputed over root-a), plus the UKI's sha256 and command line. Every
//! failure names the partition and what differs.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Take};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use gwos_signing::{Manifest, PublicKey, MANIFEST_REGION_SIZE};
use sha2::{Digest, Sha256};

use crate::{erofs, esp, gpt, uki, verity};

fn read_at(f: &mut File, off: u64, len: u64) -> Result<Vec<u8>> {
    let mut v = vec![0u8; len as usize];
    f.seek(SeekFrom::Start(off))?;
    f.read_exact(&mut v)?;
    Ok(v)
}

fn part_reader(f: &File, p: &gpt::Partition, len: u64) -> Result<Take<File>> {
    let mut g = f.try_clone()?;
    g.seek(SeekFrom::Start(p.offset()))?;
    Ok(g.take(len))
}

/// Release keys to check against: the `--key` files; with `--dev` (and no
/// `--key`) the DEVELOPMENT key `<dir of the file>/keys/dev-release.pub`.
/// There is no silent default (security review F15): without either, this
/// fails and says which flag to pass.
pub fn keys_for(image: &Path, given: &[PathBuf], dev: bool) -> Result<Vec<PublicKey>> {
    if !given.is_empty() {
        return given
            .iter()
            .map(|p| PublicKey::load(p).map_err(Into::into))
            .collect();
    }
    let dev_key = image
        .parent()
        .unwrap_or(Path::new("."))
        .join("keys/dev-release.pub");
    if dev {
        eprintln!(
            "note: checking against the DEVELOPMENT key {} (--dev)",
            dev_key.display()
        );
        return Ok(vec![PublicKey::load(&dev_key).with_context(|| {
            format!("--dev: development key {}", dev_key.display())
        })?]);
    }
    bail!(
        "no release public key given: pass --key <release.pub>{}",
        if dev_key.is_file() {
            format!(
                ", or --dev to check against the DEVELOPMENT key {}",
                dev_key.display()
            )
        } else {
            String::new()
        }
    )
}

pub fn verify(image: &Path, keys: &[PublicKey]) -> Result<Manifest> {
    let mut f = File::open(image).with_context(|| format!("opening {}", image.display()))?;
    let disk = gpt::read(&mut f).context("GPT")?;
    let (root, ver, espp) = (
        disk.find("root-a")?.clone(),
        disk.find("verity-a")?.clone(),
        disk.find("esp")?.clone(),
    );

    let region = read_at(
        &mut f,
        ver.offset() + ver.size() - MANIFEST_REGION_SIZE,
        MANIFEST_REGION_SIZE,
    )?;
    let m = gwos_signing::open(&region, keys).context("verity-a: signed manifest rejected")?;
    if m.data_size > root.size() || m.hash_size + MANIFEST_REGION_SIZE > ver.size() {
        bail!(
            "manifest sizes do not fit the partitions (data_size {}, hash_size {})",
            m.data_size,
            m.hash_size
        );
    }

    let uuid = uuid::Uuid::parse_str(&m.verity_uuid).context("manifest verity_uuid")?;
    let tree = verity::build_file(
        &f,
        root.offset(),
        m.data_blocks,
        &m.salt_bytes(),
        uuid.as_bytes(),
    )
    .context("root-a: reading data")?;
    let stored = read_at(&mut f, ver.offset(), m.hash_size)?;
    if tree.hash_area.len() as u64 != m.hash_size {
        bail!(
            "manifest hash_size {} does not match the tree size {} for {} blocks",
            m.hash_size,
            tree.hash_area.len(),
            m.data_blocks
        );
    }
    let level0_len = (m.data_blocks * 32).div_ceil(4096) * 4096;
    let level0_start = stored.len() - level0_len as usize;
    if tree.root_hash != m.root_hash_bytes() {
        let bad_block = (0..m.data_blocks as usize).find(|&i| {
            let o = level0_start + i * 32;
            tree.hash_area[o..o + 32] != stored[o..o + 32]
        });
        match bad_block {
            Some(i) => bail!(
                "root-a: data block {i} (byte offset {}) does not match its stored hash; recomputed root hash {} != signed {}",
                i * 4096,
                hex::encode(tree.root_hash),
                m.root_hash
            ),
            None => bail!("root-a: recomputed root hash {} != signed root hash {}", hex::encode(tree.root_hash), m.root_hash),
        }
    }
    if let Some(i) = (0..stored.len() / 4096)
        .find(|&i| tree.hash_area[i * 4096..(i + 1) * 4096] != stored[i * 4096..(i + 1) * 4096])
    {
        bail!("verity-a: hash block {i} (byte offset {}) differs from the tree recomputed over root-a", i * 4096);
    }

    let esp_bytes = read_at(&mut f, espp.offset(), espp.size())?;
    let ukis = esp::read_files(esp_bytes, "EFI/Linux").context("esp")?;
    let (name, bytes) = ukis
        .iter()
        .find(|(n, _)| {
            n.rsplit('/').next().is_some_and(|b| {
                b.starts_with("gwos-") && (b.ends_with("-a.efi") || b.contains("-a+"))
            })
        })
        .context("esp: no slot A UKI (EFI/Linux/gwos-*-a.efi)")?;
    let got = hex::encode(Sha256::digest(bytes));
    if got != m.uki_sha256 {
        bail!(
            "esp: {name} sha256 {got} != signed uki_sha256 {}",
            m.uki_sha256
        );
    }
    let cmdline = String::from_utf8_lossy(uki::section(bytes, ".cmdline")?).into_owned();
    if !cmdline
        .split_whitespace()
        .any(|w| w == format!("gwos.roothash={}", m.root_hash))
    {
        bail!("esp: {name} command line does not carry the signed root hash: {cmdline}");
    }
    Ok(m)
}

/// Lists the files of a slot's EROFS root: (path, kind, mode, size).
pub fn ls(image: &Path, slot: &str) -> Result<Vec<(String, char, u32, u64)>> {
    if slot != "a" && slot != "b" {
        bail!("slot must be a or b");
    }
    let mut f = File::open(image).with_context(|| format!("opening {}", image.display()))?;
    let disk = gpt::read(&mut f)?;
    let part = disk.find(&format!("root-{slot}"))?.clone();
    let head = read_at(&mut f, part.offset(), 4096)?;
    let size = erofs::image_size(&head).with_context(|| format!("root-{slot}"))?;
    if size > part.size() {
        bail!("root-{slot}: EROFS size {size} exceeds the partition");
    }
    let dir = tempfile::tempdir()?;
    let img = dir.path().join("root.erofs");
    std::io::copy(&mut part_reader(&f, &part, size)?, &mut File::create(&img)?)?;
    let root = dir.path().join("root");
    erofs::extract(&img, &root)?;
    let mut out = Vec::new();
    use std::os::unix::fs::{FileTypeExt, PermissionsExt};
    for (rel, md) in crate::rootfs::walk(&root)? {
        let ft = md.file_type();
        let kind = if ft.is_dir() {
            'd'
        } else if ft.is_symlink() {
            'l'
        } else if ft.is_char_device() {
            'c'
        } else if ft.is_block_device() {
            'b'
        } else {
            '-'
        };
        out.push((
            format!("/{rel}"),
            kind,
            md.permissions().mode() & 0o7777,
            md.len(),
        ));
    }
    Ok(out)
}
