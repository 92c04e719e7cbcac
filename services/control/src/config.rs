//! `[control]` in the site config, and runtime overrides set by `config_set`
//! (kept in `<state_dir>/runtime.json`).

use std::time::Duration;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

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
    /// Timeout of RPC calls to other services.
    pub rpc_timeout_secs: u64,
    /// Commands that need a second admin key's approval token.
    pub require_approval: Vec<String>,
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
            match crate::scope::command(c) {
                Some(spec) if spec.risky => {}
                _ => anyhow::bail!("[control] require_approval: {c:?} is not a risky command"),
            }
        }
        anyhow::ensure!(
            self.max_sessions > 0 && self.max_auth_tries > 0,
            "[control] max_sessions and max_auth_tries must be > 0"
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

impl RuntimeConfig {
    pub fn apply(&mut self, set: &crate::request::ConfigSet) {
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
