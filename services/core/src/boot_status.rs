//! `/run/gwos/boot.json`: what PID 1 says about this boot. Stage 2 writes it
//! (world-readable); the update service reads it for the active slot, whether
//! this boot is still a trial, and the stored security floor. One type for
//! the writer and every reader, so a field added on one side cannot make the
//! other refuse the file.

use std::path::Path;

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

/// Its file name in PID 1's run directory.
pub const FILE_NAME: &str = "boot.json";
/// Where PID 1 publishes it (`/run/gwos/` + [`FILE_NAME`]).
pub const BOOT_JSON: &str = "/run/gwos/boot.json";

/// Why a trial boot was not blessed (`/var/lib/gwos/boot/last_bad.json`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LastBad {
    pub slot: String,
    pub version_id: String,
    pub reason: String,
}

/// The contents of `boot.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BootStatus {
    /// "A" or "B".
    pub slot: String,
    pub version: u64,
    pub version_id: String,
    /// The stored floor (raised by PID 1 after a slot is blessed).
    pub security_floor: u64,
    pub trial: bool,
    pub tries_left: Option<u32>,
    pub blessed: bool,
    pub last_bad: Option<LastBad>,
    /// A development-key image (its site config carries the dev control key).
    pub development: bool,
}

impl BootStatus {
    /// Reads and parses `path`; the error names the file.
    pub fn load(path: &Path) -> Result<BootStatus> {
        let text = std::fs::read(path).with_context(|| {
            format!("reading {} (PID 1 writes it at boot; without it the active slot and the security floor are unknown)", path.display())
        })?;
        serde_json::from_slice(&text).with_context(|| format!("parsing {}", path.display()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn boot_json_is_the_file_name_in_run_gwos() {
        assert_eq!(
            std::path::Path::new(BOOT_JSON),
            std::path::Path::new(crate::context::RUN_DIR).join(FILE_NAME)
        );
    }

    #[test]
    fn what_pid1_writes_parses_and_unknown_fields_are_refused() {
        let s = BootStatus {
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
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("boot.json");
        std::fs::write(&p, serde_json::to_vec_pretty(&s).unwrap()).unwrap();
        assert_eq!(BootStatus::load(&p).unwrap(), s);

        let mut v = serde_json::to_value(&s).unwrap();
        v["surprise"] = true.into();
        std::fs::write(&p, v.to_string()).unwrap();
        let e = format!("{:#}", BootStatus::load(&p).unwrap_err());
        assert!(e.contains("unknown field `surprise`"), "{e}");
    }
}
