//! `apply`: one bundle stream into the inactive slot. Order, each step
//! only after the one before succeeded:
//!
//! 1. refuse during an unblessed trial boot (the inactive slot is then the
//!    fallback);
//! 2. read and verify the header ([`gwos_signing::bundle::read_header`]);
//!    refuse another layout, a version below the floor, a part larger than
//!    its partition ([`VerifiedHeader::check_target`]);
//! 3. spool the parts the inactive slot needs to the state partition
//!    (`/var/lib/gwos/update/spool/`), hashing each as it streams; the other
//!    slot's UKI is hashed and dropped. A bad hash, a short stream or
//!    trailing bytes end here: nothing of the slot has been touched;
//! 4. remove the inactive slot's UKIs from the ESP (nothing can boot a
//!    half-written slot), write root and the verity hash area, and the
//!    signed manifest for that slot at the end of the verity partition;
//!    fsync;
//! 5. drop the cached pages and read everything back from the disk: the
//!    dm-verity tree recomputed over the root partition must give the signed
//!    root hash and equal the hash area on disk, and the manifest region
//!    must verify;
//! 6. install the UKI under its `+3` name ([`crate::esp::install_trial`]).
//!
//! A power cut anywhere leaves the active slot and its UKI as they were;
//! before step 6 the inactive slot has no boot entry at all.

use std::fs::File;
use std::io::{BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result};
use gwos_signing::bundle::{self, BundleError, PartName, Target, VerifiedHeader, PART_ORDER};
use gwos_signing::{PublicKey, Slot, MANIFEST_REGION_SIZE};
use serde::Serialize;

use crate::boot::BootInfo;
use crate::disk::Disk;
use crate::esp;

/// Everything apply needs from the machine.
pub struct Env<'a> {
    pub disk: &'a Disk,
    pub keys: &'a [PublicKey],
    pub boot: &'a BootInfo,
    /// Directory for the spooled parts (on the state partition).
    pub spool: PathBuf,
}

#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    /// The bundle itself was refused; the inactive slot is untouched.
    #[error("{0}")]
    Refused(#[from] BundleError),
    #[error("this boot (slot {slot}) is a trial that is not blessed yet: slot {other} is its fallback and is not overwritten; retry once update_status says blessed")]
    TrialNotBlessed {
        slot: &'static str,
        other: &'static str,
    },
    /// systemd-boot boots the entry with the newest version first, so a
    /// trial of the running release or an older one would never be tried.
    #[error("bundle {version_id} (version {version}) is not newer than the running release {running_id} (version {running}): systemd-boot boots the newest entry first and would never try it; nothing was written")]
    NotNewer {
        version: u64,
        version_id: String,
        running: u64,
        running_id: String,
    },
    #[error("not enough space on the state partition to spool the bundle: need {need} bytes, {free} free")]
    NoSpace { need: u64, free: u64 },
    #[error("reading back slot {slot}: {what}; the slot is left without a boot entry")]
    ReadBack { slot: &'static str, what: String },
    #[error("{0:#}")]
    Device(anyhow::Error),
}

#[derive(Debug, Clone, Serialize)]
pub struct Applied {
    pub slot: &'static str,
    pub version: u64,
    pub version_id: String,
    pub root_hash: String,
    pub uki: String,
    pub key_id: String,
    pub header_sha256: String,
    pub bytes: u64,
    pub seconds: f64,
}

fn dev<T>(r: Result<T>) -> Result<T, ApplyError> {
    r.map_err(ApplyError::Device)
}

/// The target the header is checked against: the inactive slot of `disk`.
pub fn target(env: &Env, inactive: Slot) -> Target {
    Target {
        layout: env.disk.layout_id(),
        floor: env.boot.security_floor,
        root_partition: env.disk.root(inactive).size,
        verity_partition: env.disk.verity(inactive).size,
        esp_partition: env.disk.esp.size,
    }
}

pub fn apply(
    env: &Env,
    input: &mut impl Read,
    progress: &mut dyn FnMut(String),
) -> Result<Applied, ApplyError> {
    let t0 = Instant::now();
    let active = dev(crate::boot::active(env.boot))?;
    let inactive = active.other();
    if env.boot.trial && !env.boot.blessed {
        return Err(ApplyError::TrialNotBlessed {
            slot: active.upper(),
            other: inactive.upper(),
        });
    }
    let mut r = BufReader::with_capacity(1 << 20, input);
    let h = bundle::read_header(&mut r, env.keys)?;
    h.check_target(&target(env, inactive))?;
    if h.header.version <= env.boot.version {
        return Err(ApplyError::NotNewer {
            version: h.header.version,
            version_id: h.header.version_id.clone(),
            running: env.boot.version,
            running_id: env.boot.version_id.clone(),
        });
    }
    progress(format!(
        "bundle {} (version {}, floor {}) signed by {}: header verified; writing slot {}",
        h.header.version_id,
        h.header.version,
        h.header.security_floor,
        hex::encode(h.key_id),
        inactive.upper()
    ));
    let spooled = spool(env, &h, inactive, &mut r, progress)?;
    progress("all parts verified; writing the slot".into());
    write_slot(env, &h, inactive, &spooled, progress)?;
    let uki_part = h.part(inactive.uki_part());
    let uki = dev(esp::install_trial(
        &env.disk.esp,
        inactive,
        &h.header.version_id,
        &mut dev(File::open(&spooled.uki).context("spooled UKI"))?,
        uki_part.size,
        &uki_part.sha256,
    ))?;
    progress(format!("EFI/Linux/{uki} written"));
    let _ = std::fs::remove_dir_all(&env.spool);
    Ok(Applied {
        slot: inactive.upper(),
        version: h.header.version,
        version_id: h.header.version_id.clone(),
        root_hash: h.header.root_hash.clone(),
        uki,
        key_id: hex::encode(h.key_id),
        header_sha256: hex::encode(h.header_sha256),
        bytes: (bundle::PREFIX_LEN + h.header_len) as u64 + h.payload_len(),
        seconds: (t0.elapsed().as_secs_f64() * 1000.0).round() / 1000.0,
    })
}

struct Spooled {
    root: PathBuf,
    verity: PathBuf,
    uki: PathBuf,
}

fn free_bytes(dir: &Path) -> Result<u64> {
    let s = rustix::fs::statvfs(dir).with_context(|| format!("statvfs {}", dir.display()))?;
    Ok(s.f_bavail * s.f_frsize)
}

fn spool(
    env: &Env,
    h: &VerifiedHeader,
    inactive: Slot,
    r: &mut impl Read,
    progress: &mut dyn FnMut(String),
) -> Result<Spooled, ApplyError> {
    let _ = std::fs::remove_dir_all(&env.spool);
    dev(std::fs::create_dir_all(&env.spool)
        .with_context(|| format!("creating {}", env.spool.display())))?;
    let need = h.part(PartName::Root).size
        + h.part(PartName::Verity).size
        + h.part(inactive.uki_part()).size;
    let free = dev(free_bytes(&env.spool))?;
    if need > free {
        return Err(ApplyError::NoSpace { need, free });
    }
    let s = Spooled {
        root: env.spool.join("root"),
        verity: env.spool.join("verity"),
        uki: env.spool.join("uki"),
    };
    let result = (|| {
        for name in PART_ORDER {
            let part = h.part(name);
            let path = match name {
                PartName::Root => Some(&s.root),
                PartName::Verity => Some(&s.verity),
                n if n == inactive.uki_part() => Some(&s.uki),
                _ => None,
            };
            let mut step = 0u64;
            let mut report = |done: u64| {
                if done >> 24 != step || done == part.size {
                    step = done >> 24;
                    progress(format!("{name}: {done}/{} bytes", part.size));
                }
            };
            match path {
                Some(p) => {
                    let mut out = std::io::BufWriter::with_capacity(
                        1 << 20,
                        dev(File::create(p).with_context(|| format!("creating {}", p.display())))?,
                    );
                    bundle::copy_part(r, part, &mut out, &mut report)?;
                    dev(out.flush().context("spool"))?;
                }
                None => bundle::copy_part(r, part, &mut std::io::sink(), &mut report)?,
            }
        }
        bundle::expect_end(r)?;
        Ok(())
    })();
    if result.is_err() {
        let _ = std::fs::remove_dir_all(&env.spool);
    }
    result.map(|()| s)
}

fn write_slot(
    env: &Env,
    h: &VerifiedHeader,
    slot: Slot,
    s: &Spooled,
    progress: &mut dyn FnMut(String),
) -> Result<(), ApplyError> {
    let removed = dev(esp::remove_slot(&env.disk.esp, slot))?;
    if !removed.is_empty() {
        progress(format!(
            "removed old slot {} entries: {}",
            slot.upper(),
            removed.join(", ")
        ));
    }
    let (root_p, verity_p) = (env.disk.root(slot), env.disk.verity(slot));
    let mut root = dev(root_p.open_rw())?;
    dev(std::io::copy(
        &mut dev(File::open(&s.root).context("spooled root"))?,
        &mut root,
    )
    .context("writing the root partition"))?;
    let mut verity = dev(verity_p.open_rw())?;
    dev(std::io::copy(
        &mut dev(File::open(&s.verity).context("spooled verity"))?,
        &mut verity,
    )
    .context("writing the verity partition"))?;
    let mut region = vec![0u8; MANIFEST_REGION_SIZE as usize];
    let env_bytes = h.envelope(slot);
    region[..env_bytes.len()].copy_from_slice(env_bytes);
    dev(verity
        .write_at(&region, verity.len() - MANIFEST_REGION_SIZE)
        .context("writing the manifest region"))?;
    dev(root
        .sync_and_drop_cache()
        .context("fsync of the root partition"))?;
    dev(verity
        .sync_and_drop_cache()
        .context("fsync of the verity partition"))?;
    progress(format!("slot {} written; reading it back", slot.upper()));
    read_back(env, h, slot, &root, &verity)?;
    progress(format!(
        "slot {}: dm-verity root hash {} verified over the disk",
        slot.upper(),
        h.header.root_hash
    ));
    Ok(())
}

fn read_back(
    env: &Env,
    h: &VerifiedHeader,
    slot: Slot,
    root: &crate::disk::Window,
    verity: &crate::disk::Window,
) -> Result<(), ApplyError> {
    let fail = |what: String| ApplyError::ReadBack {
        slot: slot.upper(),
        what,
    };
    let m = h.manifest(slot);
    let uuid =
        uuid::Uuid::parse_str(&m.verity_uuid).map_err(|e| fail(format!("verity uuid: {e}")))?;
    let tree = gwos_core::verity::build_file(
        root.file(),
        root.base(),
        m.data_blocks,
        &m.salt_bytes(),
        uuid.as_bytes(),
    )
    .map_err(|e| fail(format!("{e:#}")))?;
    if tree.root_hash != m.root_hash_bytes() {
        return Err(fail(format!(
            "root hash over the disk is {}, signed {}",
            hex::encode(tree.root_hash),
            m.root_hash
        )));
    }
    let mut stored = vec![0u8; m.hash_size as usize];
    verity
        .read_at(&mut stored, 0)
        .map_err(|e| fail(format!("hash area: {e}")))?;
    if stored != tree.hash_area {
        return Err(fail(
            "the hash area on disk differs from the tree over the root partition".into(),
        ));
    }
    let mut region = vec![0u8; MANIFEST_REGION_SIZE as usize];
    verity
        .read_at(&mut region, verity.len() - MANIFEST_REGION_SIZE)
        .map_err(|e| fail(format!("manifest region: {e}")))?;
    let got =
        gwos_signing::open(&region, env.keys).map_err(|e| fail(format!("manifest region: {e}")))?;
    if got != *m {
        return Err(fail(
            "the manifest region read back is not the signed one".into(),
        ));
    }
    Ok(())
}
