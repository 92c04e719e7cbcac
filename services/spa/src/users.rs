//! SPA users (stanzas): from spa's users file (`/etc/gwos/secrets/spa.toml`), `[spa] users` in the site config and from
//! `<state_dir>/users.json` (set over RPC, written atomically; a state user
//! replaces a site user of the same name). Keys never leave this module
//! except as SHA-256 fingerprints.

use std::net::IpAddr;
use std::path::Path;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use crate::crypto::{b64d_strict, b64e_nopad, HashType, Mode};
use crate::packet::{Keys, ProtoPort};

pub const MAX_TIMEOUT: u64 = 300;
pub const DEFAULT_TIMEOUT: u64 = 20;

/// A user as configured (keys as base64).
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct UserConfig {
    #[serde(alias = "name")]
    pub user: String,
    pub key_base64: String,
    pub hmac_key_base64: String,
    #[serde(default = "default_hmac")]
    pub hmac_type: String,
    #[serde(default = "default_mode")]
    pub encryption_mode: String,
    /// `tcp/443` style; empty = the section's `default_ports`.
    #[serde(default)]
    pub ports: Vec<String>,
    /// Source networks the packet may come from; empty = any.
    #[serde(default)]
    pub sources: Vec<String>,
    /// Refuse allow IP 0.0.0.0 and any allow IP that differs from the source.
    #[serde(default = "yes")]
    pub require_source_address: bool,
    /// Seconds the grant stays open for new connections.
    #[serde(default)]
    pub timeout_secs: Option<u64>,
}

fn default_hmac() -> String {
    "sha256".into()
}
fn default_mode() -> String {
    "cbc".into()
}
fn yes() -> bool {
    true
}

/// A validated user, ready to match packets.
pub struct User {
    pub name: String,
    pub keys: Keys,
    pub ports: Vec<ProtoPort>,
    pub sources: Vec<IpNet>,
    pub require_source_address: bool,
    pub timeout_secs: u64,
    pub origin: &'static str,
    pub key_fingerprint: String,
    pub hmac_fingerprint: String,
}

impl User {
    pub fn source_ok(&self, src: IpAddr) -> bool {
        self.sources.is_empty() || self.sources.iter().any(|n| n.contains(&src))
    }

    pub fn summary(&self) -> serde_json::Value {
        serde_json::json!({
            "user": self.name,
            "origin": self.origin,
            "ports": self.ports.iter().map(|p| p.to_string()).collect::<Vec<_>>(),
            "sources": self.sources.iter().map(|n| n.to_string()).collect::<Vec<_>>(),
            "require_source_address": self.require_source_address,
            "timeout_secs": self.timeout_secs,
            "hmac_type": self.keys.hmac_type.name(),
            "key_fingerprint": self.key_fingerprint,
            "hmac_key_fingerprint": self.hmac_fingerprint,
        })
    }
}

fn fingerprint(k: &[u8]) -> String {
    format!("SHA256:{}", &b64e_nopad(&HashType::Sha256.digest(k))[..16])
}

/// Same rule as control's: `^[a-z][a-z0-9_-]{0,31}$` (also a valid fwknop user name).
pub fn valid_name(u: &str) -> bool {
    let b = u.as_bytes();
    !b.is_empty()
        && b.len() <= 32
        && b[0].is_ascii_lowercase()
        && b.iter()
            .all(|&c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'_' || c == b'-')
}

/// Strict validation of one user.
pub fn validate(
    c: &UserConfig,
    default_ports: &[String],
    default_timeout: u64,
    origin: &'static str,
) -> Result<User, String> {
    if !valid_name(&c.user) {
        return Err(format!(
            "user {:?} must match ^[a-z][a-z0-9_-]{{0,31}}$",
            c.user
        ));
    }
    let key = b64d_strict(&c.key_base64).ok_or("key_base64 is not valid base64")?;
    if !(16..=32).contains(&key.len()) {
        return Err(format!(
            "key_base64 must decode to 16..32 bytes, got {}",
            key.len()
        ));
    }
    let hkey = b64d_strict(&c.hmac_key_base64).ok_or("hmac_key_base64 is not valid base64")?;
    if !(32..=128).contains(&hkey.len()) {
        return Err(format!(
            "hmac_key_base64 must decode to 32..128 bytes, got {}",
            hkey.len()
        ));
    }
    if crate::crypto::ct_eq(&key, &hkey) {
        return Err("the HMAC key must differ from the encryption key".into());
    }
    let hmac_type =
        HashType::parse(&c.hmac_type).ok_or(format!("unknown hmac_type {:?}", c.hmac_type))?;
    let mode = Mode::parse(&c.encryption_mode)
        .ok_or(format!("unknown encryption_mode {:?}", c.encryption_mode))?;
    if mode == Mode::Legacy {
        return Err("encryption_mode legacy is not supported with an HMAC".into());
    }
    let src_ports = if c.ports.is_empty() {
        default_ports
    } else {
        &c.ports[..]
    };
    let mut ports = Vec::new();
    for p in src_ports {
        ports.push(ProtoPort::parse(p).ok_or(format!("bad port {p:?} (want tcp/N or udp/N)"))?);
    }
    if ports.is_empty() || ports.len() > 16 {
        return Err("ports must list 1..16 proto/port entries".into());
    }
    let mut sources = Vec::new();
    for s in &c.sources {
        let n = s
            .parse::<IpNet>()
            .map(|n| n.trunc())
            .or_else(|_| s.parse::<IpAddr>().map(IpNet::from))
            .map_err(|_| format!("bad source {s:?}"))?;
        sources.push(n);
    }
    let timeout_secs = c.timeout_secs.unwrap_or(default_timeout);
    if timeout_secs == 0 || timeout_secs > MAX_TIMEOUT {
        return Err(format!("timeout_secs must be 1..={MAX_TIMEOUT}"));
    }
    Ok(User {
        name: c.user.clone(),
        key_fingerprint: fingerprint(&key),
        hmac_fingerprint: fingerprint(&hkey),
        keys: Keys {
            key,
            hmac_key: Some(hkey),
            hmac_type,
            mode,
        },
        ports,
        sources,
        require_source_address: c.require_source_address,
        timeout_secs,
        origin,
    })
}

/// The state file's users.
pub fn load_state(path: &Path) -> anyhow::Result<Vec<UserConfig>> {
    Ok(gwos_core::state::read_json::<Vec<UserConfig>>(path)?.unwrap_or_default())
}

pub fn save_state(path: &Path, users: &[UserConfig]) -> anyhow::Result<()> {
    gwos_core::state::write_json(path, &users)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> UserConfig {
        UserConfig {
            user: "alice".into(),
            key_base64: "PLJiB9FhMc635yVDYsXCvEgWl7Q60iCQNQBvN1inQ04=".into(),
            hmac_key_base64: "YTMMjQ9STIx2+a0R1557B7q8N8jd3Zt1ryxkCDxe1g6mRlhD9YheNvRXhDIYy8tOmVId8lrSScZlygiX0bsRxA==".into(),
            hmac_type: "sha256".into(),
            encryption_mode: "cbc".into(),
            ports: vec![],
            sources: vec![],
            require_source_address: true,
            timeout_secs: None,
        }
    }

    #[test]
    fn strict_validation() {
        let d = vec!["tcp/443".to_string()];
        let u = validate(&cfg(), &d, 20, "site").unwrap();
        assert_eq!(
            u.ports,
            vec![ProtoPort {
                tcp: true,
                port: 443
            }]
        );
        let s = u.summary().to_string();
        assert!(
            !s.contains("PLJiB9") && !s.contains("YTMM"),
            "key material in summary: {s}"
        );
        for (bad, want) in [
            (
                UserConfig {
                    user: "Alice".into(),
                    ..cfg()
                },
                "must match ^[a-z][a-z0-9_-]{0,31}$",
            ),
            (
                UserConfig {
                    key_base64: "c2hvcnQ=".into(),
                    ..cfg()
                },
                "key_base64 must decode to 16..32 bytes, got 5",
            ),
            (
                UserConfig {
                    hmac_key_base64: cfg().key_base64,
                    ..cfg()
                },
                "the HMAC key must differ from the encryption key",
            ),
            (
                UserConfig {
                    ports: vec!["icmp/1".into()],
                    ..cfg()
                },
                "bad port \"icmp/1\"",
            ),
            (
                UserConfig {
                    sources: vec!["10.0.0.0/33".into()],
                    ..cfg()
                },
                "bad source \"10.0.0.0/33\"",
            ),
            (
                UserConfig {
                    timeout_secs: Some(0),
                    ..cfg()
                },
                "timeout_secs must be 1..=300",
            ),
            (
                UserConfig {
                    hmac_type: "crc32".into(),
                    ..cfg()
                },
                "unknown hmac_type \"crc32\"",
            ),
        ] {
            match validate(&bad, &d, 20, "site") {
                Ok(_) => panic!("accepted, expected {want:?}"),
                Err(e) => assert!(e.to_string().contains(want), "{e} (expected {want:?})"),
            }
        }
    }
}
