//! Health-gated boot blessing (systemd-boot boot counting).
//!
//! An update writes the new slot's UKI as `gwos-<version_id>-<slot>+3.efi`;
//! systemd-boot renames it to `+2-1`, `+1-2`, ... before each try and puts
//! the path it booted in the `LoaderBootCountPath` efivar. Such a boot is a
//! *trial*. PID 1 blesses it (renames the UKI to the plain name, so
//! systemd-boot treats the entry as good) only after every required service
//! has stayed healthy for `[boot] bless_after_secs` in a row ([`decide`]).
//! If that has not happened `bless_deadline_secs` after stage 2 started, it
//! records why in [`LAST_BAD`] and reboots without blessing: the tries run
//! out and systemd-boot sorts the entry with no tries left last, so the
//! previous good slot boots again by itself.
//!
//! Only the trial entry ever carries a counter: a blessed UKI has the plain
//! name, so a power cut before userspace never costs the good slot a try.
//!
//! After a slot is blessed (and on every boot of an already blessed slot)
//! the stored security floor ([`crate::floor`]) is raised to the slot's
//! signed `security_floor`; it is never lowered.
//!
//! PID 1 publishes the boot's state as [`BootStatus`] in `/run/gwos/boot.json`.

use std::path::Path;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use serde::Deserialize;

const VAR: &str =
    "/sys/firmware/efi/efivars/LoaderBootCountPath-4a67b082-0a4c-41cf-b6c7-440b29bb8c4f";
const ESP_MNT: &str = "/run/gwos-esp";
/// Why the last trial boot was not blessed (kept on /var).
pub const LAST_BAD: &str = "/var/lib/gwos/boot/last_bad.json";
/// The boot's state for the update service and control (world-readable),
/// in the run directory under the name its readers expect.
pub use gwos_core::boot_status::FILE_NAME as STATUS_FILE;

/// Site config `[boot]`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BootConfig {
    /// Every required service healthy this long in a row blesses a trial boot.
    pub bless_after_secs: u64,
    /// Not blessed this long after stage 2 started: reboot without blessing.
    pub bless_deadline_secs: u64,
}

impl Default for BootConfig {
    fn default() -> Self {
        Self {
            bless_after_secs: 60,
            bless_deadline_secs: 600,
        }
    }
}

impl BootConfig {
    pub fn validate(&self) -> Result<()> {
        if self.bless_after_secs == 0 || self.bless_deadline_secs <= self.bless_after_secs {
            bail!(
                "[boot] bless_deadline_secs ({}) must be larger than bless_after_secs ({}), which must be > 0",
                self.bless_deadline_secs,
                self.bless_after_secs
            );
        }
        Ok(())
    }
}

/// The UKI this boot came from, from `LoaderBootCountPath`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// ESP directory, e.g. `EFI/Linux`.
    pub dir: String,
    /// File name with its counter, e.g. `gwos-0.2.0-b+2-1.efi`.
    pub file: String,
    /// Tries left after this one (the `N` of `+N-M`).
    pub tries_left: u32,
}

/// efivar content: 4 bytes attributes, then a NUL-terminated UTF-16LE string.
pub fn decode_efivar_string(raw: &[u8]) -> Option<String> {
    let units: Vec<u16> = raw
        .get(4..)?
        .chunks_exact(2)
        .map(|c| u16::from_le_bytes([c[0], c[1]]))
        .take_while(|u| *u != 0)
        .collect();
    String::from_utf16(&units).ok()
}

/// `gwos-0.1.0-a+2-1.efi` → (`gwos-0.1.0-a`, tries left 2); None without a counter.
pub fn counter(name: &str) -> Option<(&str, u32)> {
    let stem = name.strip_suffix(".efi")?;
    let (base, counter) = stem.rsplit_once('+')?;
    let parts: Vec<&str> = counter.split('-').collect();
    let ok = parts.len() <= 2
        && parts
            .iter()
            .all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()));
    if !ok {
        return None;
    }
    Some((base, parts[0].parse().ok()?))
}

/// `gwos-0.1.0-a+2-1.efi` → `gwos-0.1.0-a.efi`; None when there is no counter.
pub fn blessed_name(name: &str) -> Option<String> {
    counter(name).map(|(base, _)| format!("{base}.efi"))
}

/// `\EFI\Linux\gwos-0.2.0-b+2-1.efi` → the trial entry; Ok(None) for a name without counter.
pub fn parse_entry(path: &str) -> Result<Option<Entry>> {
    let rel = path.trim_start_matches('\\').replace('\\', "/");
    if rel.split('/').any(|c| c == ".." || c.is_empty()) {
        bail!("LoaderBootCountPath {path:?} is not a plain path");
    }
    let (dir, file) = rel
        .rsplit_once('/')
        .context("LoaderBootCountPath has no directory")?;
    Ok(counter(file).map(|(_, tries_left)| Entry {
        dir: dir.into(),
        file: file.into(),
        tries_left,
    }))
}

/// The trial entry of this boot, if it is one (reads the efivar).
pub fn trial_entry() -> Result<Option<Entry>> {
    if !Path::new("/sys/firmware/efi").exists() {
        return Ok(None);
    }
    let Ok(raw) = std::fs::read(VAR) else {
        return Ok(None);
    };
    let path = decode_efivar_string(&raw).context("LoaderBootCountPath is not UTF-16")?;
    parse_entry(&path)
}

/// What the gate says to do now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    Wait,
    Bless,
    /// Reboot without blessing; the reason is recorded.
    GiveUp(String),
}

/// The blessing decision for a trial boot, called on every tick. `elapsed`:
/// time since stage 2 started; `healthy_since`: when the required services
/// last became all healthy (updated here); `unhealthy`: required services
/// not healthy now.
pub fn decide(
    cfg: &BootConfig,
    elapsed: Duration,
    healthy_since: &mut Option<Duration>,
    unhealthy: &[String],
) -> Action {
    if unhealthy.is_empty() {
        let since = *healthy_since.get_or_insert(elapsed);
        if elapsed.saturating_sub(since) >= Duration::from_secs(cfg.bless_after_secs) {
            return Action::Bless;
        }
    } else {
        *healthy_since = None;
    }
    if elapsed >= Duration::from_secs(cfg.bless_deadline_secs) {
        let now = match healthy_since {
            None => format!("unhealthy now: {}", unhealthy.join(", ")),
            Some(s) => format!(
                "all healthy only for the last {} s",
                elapsed.saturating_sub(*s).as_secs()
            ),
        };
        return Action::GiveUp(format!(
            "required services were not healthy for {} s in a row within {} s of boot ({now})",
            cfg.bless_after_secs, cfg.bless_deadline_secs
        ));
    }
    Action::Wait
}

/// Renames the trial UKI to its blessed name on the ESP and fsyncs the
/// directory. Returns what was done, for the console.
pub fn rename_blessed(esp: Option<&crate::gpt_find::Part>, e: &Entry) -> Result<String> {
    let new = blessed_name(&e.file).with_context(|| format!("{} has no boot counter", e.file))?;
    let esp = esp.context("no partition labelled esp")?;
    crate::mounts::fs(
        &esp.dev_path(),
        ESP_MNT,
        "vfat",
        crate::mounts::SAFE,
        Some("umask=0077"),
    )?;
    let res = (|| -> Result<()> {
        let d = format!("{ESP_MNT}/{}", e.dir);
        std::fs::rename(format!("{d}/{}", e.file), format!("{d}/{new}"))
            .with_context(|| format!("renaming {} to {new}", e.file))?;
        std::fs::File::open(&d)?.sync_all()?;
        Ok(())
    })();
    nix::unistd::sync();
    let _ = nix::mount::umount2(ESP_MNT, nix::mount::MntFlags::empty());
    res.map(|_| format!("blessed {} -> {new}", e.file))
}

pub use gwos_core::boot_status::{BootStatus, LastBad};

/// Writes `boot.json` into `run_dir` atomically, mode 0644.
pub fn publish(run_dir: &Path, s: &BootStatus) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let p = run_dir.join(STATUS_FILE);
    gwos_core::state::write_json(&p, s)?;
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644))?;
    Ok(())
}

/// Raises the stored floor on `disk` to `to` if it is lower; returns (old, new).
pub fn raise_floor(disk: &str, to: u64, version: u64) -> Result<(u64, u64)> {
    let copies = crate::floor::read(disk).with_context(|| format!("reading {disk}"))?;
    let cur = crate::floor::current(&copies).map_err(|e| anyhow::anyhow!(e))?;
    let old = crate::floor::value(cur);
    match crate::floor::raise(cur, to, version) {
        None => Ok((old, old)),
        Some((idx, rec)) => {
            crate::floor::write(disk, idx, &rec)
                .with_context(|| format!("writing the floor record to {disk}"))?;
            Ok((old, rec.floor))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert_eq!(
            blessed_name("gwos-0.1.0-a+3.efi").as_deref(),
            Some("gwos-0.1.0-a.efi")
        );
        assert_eq!(
            blessed_name("gwos-0.1.0-a+2-1.efi").as_deref(),
            Some("gwos-0.1.0-a.efi")
        );
        assert_eq!(blessed_name("gwos-0.1.0-a.efi"), None);
        assert_eq!(blessed_name("gwos+x.efi"), None);
        assert_eq!(counter("gwos-0.2.0-b+0-3.efi"), Some(("gwos-0.2.0-b", 0)));
    }

    #[test]
    fn entries() {
        assert_eq!(
            parse_entry("\\EFI\\Linux\\gwos-0.2.0-b+2-1.efi").unwrap(),
            Some(Entry {
                dir: "EFI/Linux".into(),
                file: "gwos-0.2.0-b+2-1.efi".into(),
                tries_left: 2
            })
        );
        assert_eq!(parse_entry("\\EFI\\Linux\\gwos-0.1.0-a.efi").unwrap(), None);
        let e = parse_entry("\\EFI\\..\\x+1.efi").unwrap_err().to_string();
        assert!(e.contains("is not a plain path"), "{e}");
    }

    #[test]
    fn efivar_string() {
        let mut raw = vec![7, 0, 0, 0];
        for u in "\\EFI\\Linux\\a+1.efi".encode_utf16() {
            raw.extend_from_slice(&u.to_le_bytes());
        }
        raw.extend_from_slice(&[0, 0]);
        assert_eq!(
            decode_efivar_string(&raw).as_deref(),
            Some("\\EFI\\Linux\\a+1.efi")
        );
    }

    fn cfg(after: u64, deadline: u64) -> BootConfig {
        BootConfig {
            bless_after_secs: after,
            bless_deadline_secs: deadline,
        }
    }

    fn s(n: u64) -> Duration {
        Duration::from_secs(n)
    }

    /// Blesses only after the window of continuous health; a relapse restarts the window.
    #[test]
    fn gate_blesses_after_a_healthy_window() {
        let c = cfg(60, 300);
        let mut since = None;
        let bad = vec!["vpn".to_string()];
        assert_eq!(decide(&c, s(5), &mut since, &bad), Action::Wait);
        assert_eq!(decide(&c, s(10), &mut since, &[]), Action::Wait);
        assert_eq!(since, Some(s(10)));
        assert_eq!(decide(&c, s(69), &mut since, &[]), Action::Wait);
        assert_eq!(decide(&c, s(65), &mut since, &bad), Action::Wait);
        assert_eq!(since, None, "a relapse restarts the window");
        assert_eq!(decide(&c, s(70), &mut since, &[]), Action::Wait);
        assert_eq!(decide(&c, s(129), &mut since, &[]), Action::Wait);
        assert_eq!(decide(&c, s(130), &mut since, &[]), Action::Bless);
    }

    #[test]
    fn gate_gives_up_at_the_deadline_naming_why() {
        let c = cfg(60, 300);
        let mut since = None;
        let bad = vec!["tls-front".to_string(), "control".to_string()];
        assert_eq!(decide(&c, s(299), &mut since, &bad), Action::Wait);
        assert_eq!(
            decide(&c, s(300), &mut since, &bad),
            Action::GiveUp("required services were not healthy for 60 s in a row within 300 s of boot (unhealthy now: tls-front, control)".into())
        );
        let mut since = Some(s(280));
        assert_eq!(
            decide(&c, s(300), &mut since, &[]),
            Action::GiveUp("required services were not healthy for 60 s in a row within 300 s of boot (all healthy only for the last 20 s)".into())
        );
    }

    #[test]
    fn config_defaults_and_validation() {
        let d = BootConfig::default();
        assert_eq!((d.bless_after_secs, d.bless_deadline_secs), (60, 600));
        d.validate().unwrap();
        let e = cfg(60, 60).validate().unwrap_err().to_string();
        assert_eq!(e, "[boot] bless_deadline_secs (60) must be larger than bless_after_secs (60), which must be > 0");
        let e = gwos_core::SiteConfig::parse("[boot]\nbless_after_sec = 5\n")
            .unwrap()
            .section::<BootConfig>("boot")
            .unwrap_err();
        assert!(
            format!("{e:#}").contains("unknown field `bless_after_sec`"),
            "{e:#}"
        );
    }

    #[test]
    fn status_is_world_readable() {
        use std::os::unix::fs::PermissionsExt;
        let d = tempfile::tempdir().unwrap();
        let st = BootStatus {
            slot: "B".into(),
            version: 2,
            version_id: "0.2.0".into(),
            security_floor: 1,
            trial: true,
            tries_left: Some(2),
            blessed: false,
            last_bad: None,
            development: true,
        };
        publish(d.path(), &st).unwrap();
        let p = d.path().join(STATUS_FILE);
        assert_eq!(
            std::fs::metadata(&p).unwrap().permissions().mode() & 0o777,
            0o644
        );
        let back: BootStatus = serde_json::from_slice(&std::fs::read(&p).unwrap()).unwrap();
        assert_eq!(back, st);
        let v: serde_json::Value = serde_json::from_slice(&std::fs::read(&p).unwrap()).unwrap();
        assert_eq!(v["tries_left"], 2);
        assert_eq!(v["last_bad"], serde_json::Value::Null);
    }
}
