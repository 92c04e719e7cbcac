//! `status` and `rollback`. A slot's state comes from its boot entry on the
//! ESP (systemd-boot boot counting, see [`crate::esp`]): the active slot is
//! `active` (or `trial` while PID 1 has not blessed it), the other is `good`
//! (a UKI without counter), `trial` (a `+N` UKI with N tries left), `bad`
//! (`+0`: tries used up or rolled back; the reason from boot.json or the
//! rollback record) or `empty` (no boot entry). Version and root hash of the
//! inactive slot come from its signed manifest, read and verified from the
//! verity partition.

use std::path::Path;

use anyhow::{bail, Context, Result};
use gwos_signing::{PublicKey, Slot, MANIFEST_REGION_SIZE};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::boot::BootInfo;
use crate::disk::Disk;
use crate::esp::{self, Entry};

pub const LAST_FILE: &str = "last.json";
pub const ROLLBACK_FILE: &str = "rollback.json";

/// The last `update_apply`'s outcome, kept on /var.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LastResult {
    /// "ok", "refused" or "failed".
    pub result: String,
    pub at: u64,
    pub slot: Option<String>,
    pub version_id: Option<String>,
    pub header_sha256: Option<String>,
    pub seconds: Option<f64>,
    pub error: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RollbackRecord {
    pub slot: String,
    pub version_id: String,
    pub reason: String,
    pub at: u64,
}

fn slot_manifest(
    disk: &Disk,
    slot: Slot,
    keys: &[PublicKey],
) -> Result<Option<gwos_signing::Manifest>> {
    let v = disk.verity(slot).open_ro()?;
    let mut region = vec![0u8; MANIFEST_REGION_SIZE as usize];
    v.read_at(&mut region, v.len() - MANIFEST_REGION_SIZE)?;
    if region.iter().all(|&b| b == 0) {
        return Ok(None);
    }
    Ok(Some(gwos_signing::open(&region, keys)?))
}

fn entry_state(e: Option<&Entry>) -> (&'static str, Option<u32>) {
    match e {
        None => ("empty", None),
        Some(e) if e.is_good() => ("good", None),
        Some(e) if e.is_bad() => ("bad", Some(0)),
        Some(e) => ("trial", e.tries_left),
    }
}

pub fn status(
    disk: &Disk,
    keys: &[PublicKey],
    boot: &BootInfo,
    state_dir: &Path,
    active_root_hash: Option<String>,
) -> Result<Value> {
    let active = crate::boot::active(boot)?;
    let entries = esp::list(&disk.esp)?;
    let rollback: Option<RollbackRecord> =
        gwos_core::state::read_json(&state_dir.join(ROLLBACK_FILE))?;
    let mut slots = Vec::new();
    for slot in [Slot::A, Slot::B] {
        let entry = entries.iter().find(|e| e.slot == slot);
        let (mut state, mut tries) = entry_state(entry);
        let mut reason = None;
        let (version, version_id, root_hash) = if slot == active {
            state = if boot.trial && !boot.blessed {
                "trial"
            } else {
                "active"
            };
            tries = if boot.trial { boot.tries_left } else { None };
            (
                Some(boot.version),
                Some(boot.version_id.clone()),
                active_root_hash.clone(),
            )
        } else {
            match slot_manifest(disk, slot, keys) {
                Ok(Some(m)) => (Some(m.version), Some(m.version_id), Some(m.root_hash)),
                Ok(None) => (None, None, None),
                Err(e) => {
                    reason = Some(format!("signed manifest unreadable: {e:#}"));
                    (None, None, None)
                }
            }
        };
        if state == "bad" {
            reason = boot
                .last_bad
                .as_ref()
                .filter(|b| Slot::parse(&b.slot) == Some(slot))
                .map(|b| b.reason.clone())
                .or_else(|| {
                    rollback
                        .as_ref()
                        .filter(|r| Slot::parse(&r.slot) == Some(slot))
                        .map(|r| r.reason.clone())
                })
                .or(Some("boot tries used up".into()));
        }
        slots.push(json!({
            "slot": slot.upper(),
            "version": version,
            "version_id": version_id,
            "root_hash": root_hash,
            "state": state,
            "tries_left": tries,
            "reason": reason,
            "boot_entry": entry.map(|e| format!("EFI/Linux/{}", e.name)),
        }));
    }
    let last: Option<LastResult> = gwos_core::state::read_json(&state_dir.join(LAST_FILE))?;
    Ok(json!({
        "active": active.upper(),
        "blessed": boot.blessed,
        "security_floor": boot.security_floor,
        "slots": slots,
        "last_bad": boot.last_bad,
        "last_update": last,
    }))
}

/// Makes the other slot the next boot: it must have a good boot entry; the
/// active slot's entry is renamed to its `+0` (bad) name, so systemd-boot
/// sorts it last and boots the other one.
pub fn rollback(disk: &Disk, boot: &BootInfo, state_dir: &Path, now: u64) -> Result<Value> {
    let active = crate::boot::active(boot)?;
    let other = active.other();
    let entries = esp::list(&disk.esp)?;
    let target = entries.iter().find(|e| e.slot == other);
    match entry_state(target) {
        ("good", _) => {}
        (state, _) => bail!(
            "cannot roll back: slot {} is {state}, not a good slot to boot",
            other.upper()
        ),
    }
    let current = entries.iter().find(|e| e.slot == active).with_context(|| {
        format!(
            "no boot entry of the active slot {} on the ESP",
            active.upper()
        )
    })?;
    let record = RollbackRecord {
        slot: active.upper().into(),
        version_id: current.version_id.clone(),
        reason: format!("rolled back to slot {} by update_rollback", other.upper()),
        at: now,
    };
    gwos_core::state::write_json(&state_dir.join(ROLLBACK_FILE), &record)?;
    let renamed = esp::mark_bad(&disk.esp, current)?;
    Ok(json!({
        "next_boot": other.upper(),
        "version_id": target.map(|e| e.version_id.clone()),
        "marked_bad": format!("EFI/Linux/{renamed}"),
        "method": "systemd-boot boot counting: the active slot's UKI renamed to +0 (bad), so the other slot's good entry sorts first; takes effect at the next reboot",
    }))
}
