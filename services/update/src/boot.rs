//! What PID 1 says about this boot: `/run/gwos/boot.json` (world-readable,
//! written by stage 2). The writer trusts it for the active slot, whether
//! this boot is still a trial, and the stored security floor.

use std::path::Path;

use anyhow::{Context, Result};
use gwos_signing::Slot;
use serde::{Deserialize, Serialize};

pub const BOOT_JSON: &str = "/run/gwos/boot.json";

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LastBad {
    pub slot: String,
    pub version_id: String,
    pub reason: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BootInfo {
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
}

impl BootInfo {
    pub fn load(path: &Path) -> Result<BootInfo> {
        let text = std::fs::read(path).with_context(|| {
            format!("reading {} (PID 1 writes it at boot; without it the active slot and the security floor are unknown)", path.display())
        })?;
        serde_json::from_slice(&text).with_context(|| format!("parsing {}", path.display()))
    }

    pub fn active(&self) -> Result<Slot> {
        Slot::parse(&self.slot)
            .with_context(|| format!("boot.json slot {:?} is not A or B", self.slot))
    }
}
