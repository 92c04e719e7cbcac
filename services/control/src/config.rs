//! `[control]` in the site config, and runtime overrides set by `config_set`
//! (kept in `<state_dir>/runtime.json`, sealed like keys.json: an override
//! not sealed under this machine's key is refused and the site config used).

use std::time::Duration;

use gwos_core::sealed::SealKey;
use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use crate::command::{Command, Risk};
use crate::keys::KeyConfig;

/// `[control]` section of the site config.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ControlConfig {
    /// Listen address, default `0.0.0.0:2222`.
    pub listen: String,
    /// Backend networks allowed to connect (CIDRs). Empty = nobody.
    pub backend: Vec<String>,
    /// Close a connection after this long without traffic.
    pub idle_timeout_secs: u64,
    /// Close a connection that has not authenticated within this time.
    pub auth_timeout_secs: u64,
    /// Concurrent connections; more are refused at accept time.
    pub max_sessions: usize,
    /// Authentication attempts per connection.
    pub max_auth_tries: usize,
    /// Request body cap in bytes.
    pub max_request_bytes: usize,
    /// Local audit log size before it rotates to `audit.log.1`.
    pub audit_max_bytes: u64,
    /// Rotated audit files kept (`audit.log.1` … `audit.log.<N>`).
    pub audit_files: usize,
    /// Timeout of RPC calls to other services.
    pub rpc_timeout_secs: u64,
    /// Commands that need a second admin key's approval token (only
    /// `Risk::High` commands may be listed).
    pub require_approval: Vec<Command>,
    /// Authorized control keys (baked into the image).
    pub keys: Vec<KeyConfig>,
}

impl Default for ControlConfig {
    fn default() -> Self {
        Self {
            listen: "0.0.0.0:2222".into(),
            backend: Vec::new(),
            idle_timeout_secs: 300,
            auth_timeout_secs: 20,
            max_sessions: 16,
            max_auth_tries: 3,
            max_request_bytes: crate::request::DEFAULT_MAX_REQUEST,
            audit_max_bytes: 8 << 20,
            audit_files: 4,
            rpc_timeout_secs: 10,
            require_approval: Vec::new(),
            keys: Vec::new(),
        }
    }
}

impl ControlConfig {
    pub fn validate(&self) -> anyhow::Result<()> {
        self.listen
            .parse::<std::net::SocketAddr>()
            .map_err(|_| anyhow::anyhow!("[control] listen {:?} is not ip:port", self.listen))?;
        for b in &self.backend {
            crate::request::cidr("backend", b).map_err(|e| anyhow::anyhow!("[control] {e}"))?;
        }
        for c in &self.require_approval {
            anyhow::ensure!(
                c.risk() == Risk::High,
                "[control] require_approval: {c} is not a risky command (risky: {})",
                Command::ALL
                    .iter()
                    .filter(|c| c.risk() == Risk::High)
                    .map(|c| c.name())
                    .collect::<Vec<_>>()
                    .join(", ")
            );
        }
        anyhow::ensure!(
            self.max_sessions > 0 && self.max_auth_tries > 0,
            "[control] max_sessions and max_auth_tries must be > 0"
        );
        anyhow::ensure!(
            (1..=64).contains(&self.audit_files),
            "[control] audit_files must be 1..=64, not {}",
            self.audit_files
        );
        anyhow::ensure!(
            self.audit_max_bytes >= 64 * 1024,
            "[control] audit_max_bytes must be >= 65536, not {}",
            self.audit_max_bytes
        );
        anyhow::ensure!(
            self.max_request_bytes >= 1024,
            "[control] max_request_bytes must be >= 1024"
        );
        Ok(())
    }
}

/// Runtime overrides (`config_set`); `None` = use the site config.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct RuntimeConfig {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub siem_endpoint: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub siem_ca_pem: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub siem_server_name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub siem_spki_sha256: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub backend: Option<Vec<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dns: Option<Vec<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub idle_timeout_secs: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub auth_timeout_secs: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rpc_timeout_secs: Option<u64>,
}

/// What `runtime.json` is sealed as.
const RUNTIME_PURPOSE: &str = "control/runtime.json";

impl RuntimeConfig {
    /// The overrides in `<state_dir>/runtime.json`; none when it is missing or refused.
    pub fn load(state_dir: &std::path::Path, seal: Option<&SealKey>) -> Self {
        gwos_core::sealed::read_json_or_refuse(
            seal,
            "control",
            RUNTIME_PURPOSE,
            &state_dir.join("runtime.json"),
        )
        .unwrap_or_default()
    }

    /// Writes the overrides sealed, atomically.
    pub fn save(&self, state_dir: &std::path::Path, seal: Option<&SealKey>) -> anyhow::Result<()> {
        use anyhow::Context;
        let seal = seal.context(
            "runtime overrides need the sealing key PID 1 provides (/run/gwos/keys/control.key), which is missing",
        )?;
        gwos_core::sealed::write_json(seal, RUNTIME_PURPOSE, &state_dir.join("runtime.json"), self)
    }

    pub fn apply(&mut self, set: &crate::params::ConfigSet) {
        if let Some(v) = &set.siem_endpoint {
            self.siem_endpoint = v.clone();
        }
        for (slot, v) in [
            (&mut self.siem_ca_pem, &set.siem_ca_pem),
            (&mut self.siem_server_name, &set.siem_server_name),
            (&mut self.siem_spki_sha256, &set.siem_spki_sha256),
        ] {
            if let Some(v) = v {
                *slot = v.clone();
            }
        }
        if let Some(v) = &set.backend {
            self.backend = v.clone();
        }
        if let Some(v) = &set.dns {
            self.dns = v.clone();
        }
        if let Some(v) = set.idle_timeout_secs {
            self.idle_timeout_secs = v;
        }
        if let Some(v) = set.auth_timeout_secs {
            self.auth_timeout_secs = v;
        }
        if let Some(v) = set.rpc_timeout_secs {
            self.rpc_timeout_secs = v;
        }
    }
}

/// Site config merged with runtime overrides.
#[derive(Debug, Clone)]
pub struct Effective {
    pub backend: Vec<IpNet>,
    pub idle_timeout: Duration,
    pub auth_timeout: Duration,
    pub rpc_timeout: Duration,
}

pub fn effective(site: &ControlConfig, rt: &RuntimeConfig) -> Effective {
    let backend = rt
        .backend
        .as_ref()
        .unwrap_or(&site.backend)
        .iter()
        .filter_map(|c| c.parse().ok())
        .collect();
    Effective {
        backend,
        idle_timeout: Duration::from_secs(rt.idle_timeout_secs.unwrap_or(site.idle_timeout_secs)),
        auth_timeout: Duration::from_secs(rt.auth_timeout_secs.unwrap_or(site.auth_timeout_secs)),
        rpc_timeout: Duration::from_secs(rt.rpc_timeout_secs.unwrap_or(site.rpc_timeout_secs)),
    }
}

/// True if `ip` is inside one of the backend networks (IPv4-mapped IPv6 is unmapped first).
pub fn is_backend(backend: &[IpNet], ip: std::net::IpAddr) -> bool {
    let ip = match ip {
        std::net::IpAddr::V6(v6) => v6.to_ipv4_mapped().map(std::net::IpAddr::V4).unwrap_or(ip),
        v4 => v4,
    };
    backend.iter().any(|n| n.contains(&ip))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn require_approval_takes_only_risky_commands() {
        let site = ControlConfig {
            require_approval: vec![Command::Health],
            ..Default::default()
        };
        let e = site.validate().unwrap_err().to_string();
        assert!(
            e.starts_with("[control] require_approval: health is not a risky command (risky: control_key_add, control_key_remove, reboot, update_apply, update_rollback)"),
            "{e}"
        );
        let ok = ControlConfig {
            require_approval: vec![Command::Reboot],
            ..Default::default()
        };
        ok.validate().unwrap();
    }

    #[test]
    fn audit_files_bounded() {
        let site = ControlConfig {
            audit_files: 0,
            ..Default::default()
        };
        let e = site.validate().unwrap_err().to_string();
        assert_eq!(e, "[control] audit_files must be 1..=64, not 0");
    }

    /// Review F10: a `backend` widened in runtime.json offline must not
    /// take effect; the site config's value stays.
    #[test]
    fn f10_tampered_runtime_file_refused() {
        let dir = tempfile::tempdir().unwrap();
        let seal = SealKey::derive(&[3; 32], "control");
        let rt = RuntimeConfig {
            backend: Some(vec!["10.1.0.0/24".into()]),
            ..Default::default()
        };
        rt.save(dir.path(), Some(&seal)).unwrap();
        assert_eq!(RuntimeConfig::load(dir.path(), Some(&seal)), rt);
        let path = dir.path().join("runtime.json");
        let text = std::fs::read_to_string(&path).unwrap();
        let edited = text.replace("10.1.0.0/24", "0.0.0.0/0");
        assert_ne!(text, edited);
        std::fs::write(&path, edited).unwrap();
        assert_eq!(
            RuntimeConfig::load(dir.path(), Some(&seal)),
            RuntimeConfig::default()
        );
        // An unsealed file (offline edit, or an older image's) is refused the same way.
        std::fs::write(&path, r#"{"backend":["0.0.0.0/0"]}"#).unwrap();
        assert_eq!(
            RuntimeConfig::load(dir.path(), Some(&seal)),
            RuntimeConfig::default()
        );
    }
}
