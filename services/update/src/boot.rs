//! What PID 1 says about this boot: `/run/gwos/boot.json` (world-readable,
//! written by stage 2). The writer trusts it for the active slot, whether
//! this boot is still a trial, and the stored security floor.

use std::path::Path;

use anyhow::{Context, Result};
use gwos_signing::Slot;
use serde::{Deserialize, Serialize};

pub use gwos_core::boot_status::BOOT_JSON;
/// Written by `gwos build` into the verified root.
pub const RELEASE_JSON: &str = "/etc/gwos/release.json";
const BOOT_COUNT_VAR: &str =
    "/sys/firmware/efi/efivars/LoaderBootCountPath-4a67b082-0a4c-41cf-b6c7-440b29bb8c4f";

/// The running release (`/etc/gwos/release.json`, part of the dm-verity
/// protected root, so as trustworthy as the code reading it).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Release {
    pub version: u64,
    pub version_id: String,
    pub security_floor: u64,
    pub development: bool,
}

/// PID 1's `boot.json`: the one type stage 2 writes (`gwos_core::boot_status`).
pub use gwos_core::boot_status::{BootStatus as BootInfo, LastBad};

/// boot.json, with the floor raised to the running release's own floor.
/// Without boot.json (a PID 1 that does not write it): the slot from
/// the kernel command line, version and floor from release.json, and a
/// trial is detected from systemd-boot's `LoaderBootCountPath` naming an
/// entry that still carries its counter on the ESP (PID 1 removes the
/// counter when it blesses).
pub fn load_or_derive(
    boot_json: &Path,
    release_json: &Path,
    esp: Option<&crate::disk::Part>,
) -> Result<BootInfo> {
    let release: Option<Release> = match std::fs::read(release_json) {
        Ok(t) => Some(
            serde_json::from_slice(&t)
                .with_context(|| format!("parsing {}", release_json.display()))?,
        ),
        Err(_) => None,
    };
    if boot_json.exists() {
        let mut b = BootInfo::load(boot_json)?;
        // /run/gwos is writable by every service: believe only PID 1's
        // file (root's, or this process's own in host tests), and only if
        // it names the slot the kernel booted.
        let owner = std::os::unix::fs::MetadataExt::uid(&std::fs::metadata(boot_json)?);
        let me = rustix::process::geteuid().as_raw();
        anyhow::ensure!(
            owner == 0 || owner == me,
            "{} is owned by uid {owner}, not root: not PID 1's; refusing to trust it",
            boot_json.display()
        );
        if let Some(s) = cmdline_slot() {
            anyhow::ensure!(
                s.eq_ignore_ascii_case(&b.slot),
                "{} says slot {} but the kernel booted gwos.slot={s}; refusing to trust it",
                boot_json.display(),
                b.slot
            );
        }
        if let Some(r) = &release {
            b.security_floor = b.security_floor.max(r.security_floor);
        }
        return Ok(b);
    }
    let r = release.with_context(|| {
        format!(
            "neither {} nor {}: the active slot and the security floor are unknown",
            boot_json.display(),
            release_json.display()
        )
    })?;
    let slot = cmdline_slot()
        .map(|s| s.to_uppercase())
        .context("no gwos.slot= on /proc/cmdline")?;
    let counted = std::fs::read(BOOT_COUNT_VAR).ok().and_then(|raw| {
        let units: Vec<u16> = raw
            .get(4..)?
            .chunks_exact(2)
            .map(|c| u16::from_le_bytes([c[0], c[1]]))
            .take_while(|u| *u != 0)
            .collect();
        String::from_utf16(&units).ok()
    });
    let pending = match (counted, esp) {
        (Some(path), Some(esp)) => {
            let file = path.rsplit('\\').next().unwrap_or("").to_string();
            crate::esp::list(esp)?
                .into_iter()
                .find(|e| e.name == file)
                .map(|e| e.tries_left)
        }
        _ => None,
    };
    Ok(BootInfo {
        slot,
        version: r.version,
        version_id: r.version_id,
        security_floor: r.security_floor,
        trial: pending.is_some(),
        tries_left: pending.flatten(),
        blessed: pending.is_none(),
        last_bad: None,
        development: r.development,
    })
}

/// The slot this boot runs from.
pub fn active(b: &BootInfo) -> Result<Slot> {
    Slot::parse(&b.slot).with_context(|| format!("boot.json slot {:?} is not A or B", b.slot))
}

/// `gwos.slot=` of the running kernel, if any.
fn cmdline_slot() -> Option<String> {
    let t = std::fs::read_to_string("/proc/cmdline").ok()?;
    t.split_whitespace()
        .find_map(|w| w.strip_prefix("gwos.slot="))
        .map(str::to_owned)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn boot(floor: u64) -> BootInfo {
        BootInfo {
            slot: "A".into(),
            version: 2,
            version_id: "0.2.0".into(),
            security_floor: floor,
            trial: false,
            tries_left: None,
            blessed: true,
            last_bad: None,
            development: false,
        }
    }

    /// The floor applied is the higher of PID 1's stored floor and the
    /// running release's own (signed, in the verified root).
    #[test]
    fn floor_is_the_higher_of_stored_and_running() {
        let dir = tempfile::tempdir().unwrap();
        let (b, r) = (
            dir.path().join("boot.json"),
            dir.path().join("release.json"),
        );
        std::fs::write(&b, serde_json::to_vec(&boot(1)).unwrap()).unwrap();
        let none = dir.path().join("none.json");
        assert_eq!(load_or_derive(&b, &none, None).unwrap().security_floor, 1);
        std::fs::write(
            &r,
            br#"{"version":2,"version_id":"0.2.0","security_floor":2,"development":true}"#,
        )
        .unwrap();
        assert_eq!(load_or_derive(&b, &r, None).unwrap().security_floor, 2);
        std::fs::write(&b, serde_json::to_vec(&boot(3)).unwrap()).unwrap();
        assert_eq!(load_or_derive(&b, &r, None).unwrap().security_floor, 3);
    }

    #[test]
    fn without_boot_json_or_release_json_nothing_is_guessed() {
        let dir = tempfile::tempdir().unwrap();
        let e = load_or_derive(&dir.path().join("a"), &dir.path().join("b"), None).unwrap_err();
        assert!(e.to_string().contains("security floor are unknown"), "{e}");
        std::fs::write(dir.path().join("a"), br#"{"slot":"A","extra":1}"#).unwrap();
        let e = load_or_derive(&dir.path().join("a"), &dir.path().join("b"), None).unwrap_err();
        assert!(format!("{e:#}").contains("unknown field"), "{e:#}");
    }
}
