//! The UKIs on the ESP (`EFI/Linux/`), through the `fatfs` crate on the raw
//! partition: the writer has no CAP_SYS_ADMIN to mount it. Names follow
//! systemd-boot's boot counting (see init/src/bless.rs):
//! `gwos-<version_id>-<slot>.efi` is a good (blessed) entry,
//! `gwos-<version_id>-<slot>+<left>[-<done>].efi` is on trial with `left`
//! tries left, and `+0[-N]` is bad (systemd-boot sorts it last and boots the
//! other slot). PID 1 mounts the ESP only to bless a trial boot; the writer
//! refuses to run during an unblessed trial, so the two never overlap.
//!
//! Atomic install: the UKI goes to a temporary name (not `*.efi`, so
//! systemd-boot ignores it), is flushed and fsynced, read back and hashed
//! after the page cache is dropped, and only then renamed to its `+3` name;
//! the volume is flushed and the device fsynced again (on FAT the directory
//! lives on the same device, so this is the directory fsync).

use std::io::{Read, Write};

use anyhow::{bail, Context, Result};
use fatfs::{FileSystem, FsOptions};
use gwos_signing::Slot;
use sha2::{Digest, Sha256};

use crate::blockcache::BlockCache;
use crate::disk::{Part, Window};

pub const DIR: &str = "EFI/Linux";
/// Tries systemd-boot gives a freshly written slot.
pub const TRIES: u32 = 3;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub name: String,
    pub version_id: String,
    pub slot: Slot,
    /// None: no counter (a good entry).
    pub tries_left: Option<u32>,
}

impl Entry {
    pub fn is_good(&self) -> bool {
        self.tries_left.is_none()
    }
    pub fn is_bad(&self) -> bool {
        self.tries_left == Some(0)
    }
}

/// `gwos-0.2.0-b+2-1.efi` → (0.2.0, B, Some(2)); None for anything else.
pub fn parse_name(name: &str) -> Option<Entry> {
    let stem = name.strip_prefix("gwos-")?.strip_suffix(".efi")?;
    let (base, counter) = match stem.rsplit_once('+') {
        Some((b, c)) => (b, Some(c)),
        None => (stem, None),
    };
    let tries_left = match counter {
        None => None,
        Some(c) => {
            let mut it = c.split('-');
            let left: u32 = it.next()?.parse().ok()?;
            if let Some(done) = it.next() {
                done.parse::<u32>().ok()?;
            }
            if it.next().is_some() {
                return None;
            }
            Some(left)
        }
    };
    let (version_id, slot) = base.rsplit_once('-')?;
    let slot = match slot {
        "a" => Slot::A,
        "b" => Slot::B,
        _ => return None,
    };
    (!version_id.is_empty()).then(|| Entry {
        name: name.into(),
        version_id: version_id.into(),
        slot,
        tries_left,
    })
}

pub fn trial_name(version_id: &str, slot: Slot) -> String {
    format!("gwos-{version_id}-{}+{TRIES}.efi", slot.lower())
}

fn with_fs<T>(esp: &Part, f: impl FnOnce(&FileSystem<&mut BlockCache>) -> Result<T>) -> Result<T> {
    let mut w = esp.open_rw()?;
    let out = {
        let mut cache = BlockCache::new(&mut w);
        let out = {
            let fs = FileSystem::new(&mut cache, FsOptions::new().update_accessed_date(false))
                .context("the ESP is not a readable FAT file system")?;
            let out = f(&fs)?;
            fs.unmount().context("flushing the ESP")?;
            out
        };
        cache.flush().context("writing the ESP")?;
        out
    };
    w.file().sync_all().context("fsync of the ESP")?;
    Ok(out)
}

/// Every gwos UKI in `EFI/Linux`.
pub fn list(esp: &Part) -> Result<Vec<Entry>> {
    let mut w = esp.open_ro()?;
    let mut ro = ReadOnly(&mut w);
    let fs = FileSystem::new(&mut ro, FsOptions::new())
        .context("the ESP is not a readable FAT file system")?;
    let dir = fs.root_dir().open_dir(DIR).context("ESP: no EFI/Linux")?;
    let mut out = Vec::new();
    for e in dir.iter() {
        let e = e.context("reading EFI/Linux")?;
        if e.is_file() {
            if let Some(x) = parse_name(&e.file_name()) {
                out.push(x);
            }
        }
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(out)
}

/// Removes every UKI of `slot` (so nothing can boot it while it is rewritten).
pub fn remove_slot(esp: &Part, slot: Slot) -> Result<Vec<String>> {
    with_fs(esp, |fs| {
        let dir = fs.root_dir().open_dir(DIR)?;
        let mut gone = Vec::new();
        for e in dir.iter() {
            let name = e?.file_name();
            let stale_tmp = name == tmp_name(slot);
            if stale_tmp || parse_name(&name).is_some_and(|x| x.slot == slot) {
                gone.push(name);
            }
        }
        for n in &gone {
            dir.remove(n)
                .with_context(|| format!("removing EFI/Linux/{n}"))?;
        }
        Ok(gone)
    })
}

fn tmp_name(slot: Slot) -> String {
    format!("gwos-{}.tmp", slot.lower())
}

/// Writes `size` bytes from `src` as the trial UKI of `slot` (see the module
/// doc for the order); `sha256` is the signed hash the read-back must match.
pub fn install_trial(
    esp: &Part,
    slot: Slot,
    version_id: &str,
    src: &mut impl Read,
    size: u64,
    sha256: &str,
) -> Result<String> {
    let tmp = tmp_name(slot);
    let name = trial_name(version_id, slot);
    with_fs(esp, |fs| {
        let dir = fs.root_dir().open_dir(DIR)?;
        let mut f = dir
            .create_file(&tmp)
            .with_context(|| format!("creating EFI/Linux/{tmp}"))?;
        f.truncate()?;
        let n = std::io::copy(&mut src.take(size), &mut f)
            .context("writing the UKI to the ESP (ESP full?)")?;
        if n != size {
            bail!("UKI source ended after {n} of {size} bytes");
        }
        f.flush()?;
        Ok(())
    })?;
    let esp_w = esp.open_ro()?;
    esp_w
        .sync_and_drop_cache()
        .context("dropping the ESP's cached pages")?;
    drop(esp_w);
    with_fs(esp, |fs| {
        let dir = fs.root_dir().open_dir(DIR)?;
        let mut h = Sha256::new();
        let n = std::io::copy(&mut dir.open_file(&tmp)?, &mut h)?;
        let got = hex::encode(h.finalize());
        if n != size || got != sha256 {
            bail!("UKI read back from the ESP differs from the signed one ({n} bytes, sha256 {got}); not installing it");
        }
        dir.rename(&tmp, &dir, &name)
            .with_context(|| format!("renaming {tmp} to {name}"))?;
        Ok(())
    })?;
    Ok(name)
}

/// Renames `entry` to its `+0` (bad) name, so systemd-boot boots the other slot.
pub fn mark_bad(esp: &Part, entry: &Entry) -> Result<String> {
    let name = format!("gwos-{}-{}+0.efi", entry.version_id, entry.slot.lower());
    with_fs(esp, |fs| {
        let dir = fs.root_dir().open_dir(DIR)?;
        dir.rename(&entry.name, &dir, &name)
            .with_context(|| format!("renaming {} to {name}", entry.name))?;
        Ok(())
    })?;
    Ok(name)
}

/// fatfs wants Read + Write + Seek even to list; writes are refused here.
struct ReadOnly<'a>(&'a mut Window);

impl Read for ReadOnly<'_> {
    fn read(&mut self, b: &mut [u8]) -> std::io::Result<usize> {
        self.0.read(b)
    }
}
impl Write for ReadOnly<'_> {
    fn write(&mut self, _: &[u8]) -> std::io::Result<usize> {
        Err(std::io::Error::new(
            std::io::ErrorKind::PermissionDenied,
            "read-only ESP view",
        ))
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}
impl std::io::Seek for ReadOnly<'_> {
    fn seek(&mut self, p: std::io::SeekFrom) -> std::io::Result<u64> {
        self.0.seek(p)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        let e = parse_name("gwos-0.2.0-b+2-1.efi").unwrap();
        assert_eq!(
            (e.version_id.as_str(), e.slot, e.tries_left),
            ("0.2.0", Slot::B, Some(2))
        );
        let e = parse_name("gwos-0.1.0-a.efi").unwrap();
        assert!(e.is_good() && e.slot == Slot::A);
        assert!(parse_name("gwos-0.1.0-b+0-3.efi").unwrap().is_bad());
        assert_eq!(trial_name("0.2.0", Slot::B), "gwos-0.2.0-b+3.efi");
        for bad in [
            "gwos-0.1.0-c.efi",
            "gwos--a.efi",
            "x-0.1.0-a.efi",
            "gwos-0.1.0-a+x.efi",
            "gwos-0.1.0-a.tmp",
        ] {
            assert_eq!(parse_name(bad), None, "{bad}");
        }
    }
}
