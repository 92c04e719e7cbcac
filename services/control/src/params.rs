//! The parameters of each control command: one `#[serde(deny_unknown_fields)]`
//! struct per shape, and its [`Validate`] impl that checks every field and
//! returns the validated value the handler gets and the audit record shows.
//! Which command takes which struct is a column of [`crate::command`].

use std::net::IpAddr;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::request::{base64_exact, base64_range, cidr, endpoint, err, ip, user_name, FieldError};

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Empty {}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct UserOnly {
    pub user: String,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct VpnUserCreate {
    pub user: String,
    /// WireGuard public key (32 bytes, base64).
    pub public_key: String,
    /// Fixed tunnel address (IPv4); default: the vpn picks one from its pool.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address: Option<String>,
    /// Networks the user may reach (IPv4 CIDRs); default: the vpn's default policy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allowed: Option<Vec<String>>,
    /// Grant length: the peer is removed this long after creation (the vpn
    /// enforces the site's `[vpn] grant_max_secs`); default: the site's
    /// `grant_default_secs`, or no expiry.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_secs: Option<u64>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct VpnUserRenew {
    pub user: String,
    /// The grant now ends this long from now.
    pub expires_secs: u64,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct UpdateCcd {
    pub user: String,
    /// Networks this user may reach through the tunnel (IPv4 CIDRs).
    pub allowed: Vec<String>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct SpaUserSet {
    pub user: String,
    /// fwknop KEY_BASE64 (Rijndael key, 16..=32 bytes).
    pub key_base64: String,
    /// fwknop HMAC_KEY_BASE64 (32..=128 bytes).
    pub hmac_key_base64: String,
    /// `sha256` (default), `sha1`, `sha384`, `sha512`, ... (spa checks the exact set).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hmac_type: Option<String>,
    /// `cbc` (default) ... (spa checks the exact set).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub encryption_mode: Option<String>,
    /// `tcp/443` style; default: spa's default ports.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ports: Option<Vec<String>>,
    /// Source networks (CIDRs) the SPA packet may come from; default any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sources: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub require_source_address: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_secs: Option<u64>,
}

/// `tcp/443` or `udp/53`.
pub fn proto_port(field: &str, s: &str) -> Result<(), FieldError> {
    match s.split_once('/') {
        Some(("tcp" | "udp", p))
            if p.parse::<u16>().is_ok_and(|p| p > 0) && !p.starts_with('0') =>
        {
            Ok(())
        }
        _ => err(field, format!("{s:?} is not tcp/<port> or udp/<port>")),
    }
}

fn ipv4_cidrs(field: &str, list: &[String], max: usize) -> Result<(), FieldError> {
    if list.len() > max {
        return err(field, format!("at most {max} entries"));
    }
    for c in list {
        if !matches!(cidr(field, c)?, IpNet::V4(_)) {
            return err(field, format!("{c:?} is not an IPv4 CIDR"));
        }
    }
    Ok(())
}

fn word(field: &str, s: &str) -> Result<(), FieldError> {
    if s.is_empty()
        || s.len() > 16
        || !s
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
    {
        return err(field, "must be a short lowercase name");
    }
    Ok(())
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct KeyAdd {
    /// One OpenSSH public key line: `ssh-ed25519 AAAA... [comment]`.
    pub key: String,
    pub scopes: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub comment: Option<String>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct KeyRemove {
    /// `SHA256:...` as `ssh-keygen -lf` prints it.
    pub fingerprint: String,
}

/// Present-but-null → `Some(None)` (clear), absent → `None` (keep).
fn double<'de, D: serde::Deserializer<'de>, T: Deserialize<'de>>(
    d: D,
) -> Result<Option<Option<T>>, D::Error> {
    Option::<T>::deserialize(d).map(Some)
}

/// `config_set`: every field optional; `null` clears an override.
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ConfigSet {
    #[serde(
        default,
        deserialize_with = "double",
        skip_serializing_if = "Option::is_none"
    )]
    pub siem_endpoint: Option<Option<String>>,
    #[serde(
        default,
        deserialize_with = "double",
        skip_serializing_if = "Option::is_none"
    )]
    pub siem_ca_pem: Option<Option<String>>,
    #[serde(
        default,
        deserialize_with = "double",
        skip_serializing_if = "Option::is_none"
    )]
    pub siem_server_name: Option<Option<String>>,
    #[serde(
        default,
        deserialize_with = "double",
        skip_serializing_if = "Option::is_none"
    )]
    pub siem_spki_sha256: Option<Option<String>>,
    #[serde(
        default,
        deserialize_with = "double",
        skip_serializing_if = "Option::is_none"
    )]
    pub backend: Option<Option<Vec<String>>>,
    #[serde(
        default,
        deserialize_with = "double",
        skip_serializing_if = "Option::is_none"
    )]
    pub dns: Option<Option<Vec<String>>>,
    #[serde(
        default,
        deserialize_with = "double",
        skip_serializing_if = "Option::is_none"
    )]
    pub idle_timeout_secs: Option<Option<u64>>,
    #[serde(
        default,
        deserialize_with = "double",
        skip_serializing_if = "Option::is_none"
    )]
    pub auth_timeout_secs: Option<Option<u64>>,
    #[serde(
        default,
        deserialize_with = "double",
        skip_serializing_if = "Option::is_none"
    )]
    pub rpc_timeout_secs: Option<Option<u64>>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct PullLogs {
    /// RFC 3339 time or Unix seconds; default: 1 hour ago.
    #[serde(default)]
    pub since: Option<Value>,
    /// RFC 3339 time or Unix seconds; default: now.
    #[serde(default)]
    pub until: Option<Value>,
    /// Max records (1..=10000, default 1000), newest kept.
    #[serde(default)]
    pub limit: Option<u64>,
    /// Only events of this service / kind / control call (see `crate::siem`).
    #[serde(default)]
    pub service: Option<String>,
    #[serde(default)]
    pub kind: Option<String>,
    #[serde(default)]
    pub for_trace_id: Option<String>,
}

/// A parameter struct that checks its own fields. `Valid` is what the
/// handler receives and what the audit record shows (after [`redact`]).
pub trait Validate: serde::de::DeserializeOwned {
    type Valid: Serialize + std::fmt::Debug + Clone;
    fn validate(self, now: i64) -> Result<Self::Valid, FieldError>;
}

/// Deserializes the parameter object into `T` (unknown fields are refused).
pub(crate) fn typed<T: serde::de::DeserializeOwned>(
    params: &Map<String, Value>,
) -> Result<T, FieldError> {
    serde_json::from_value(Value::Object(params.clone()))
        .map_err(|e| FieldError(format!("invalid parameters: {e}")))
}

fn secs(field: &str, v: u64, max: u64) -> Result<(), FieldError> {
    if v == 0 || v > max {
        err(field, format!("must be 1..={max} seconds"))
    } else {
        Ok(())
    }
}

/// Time as RFC 3339 or Unix seconds.
pub fn time_value(field: &str, v: &Value) -> Result<i64, FieldError> {
    match v {
        Value::Number(n) => n
            .as_i64()
            .filter(|s| (0..=253402300799).contains(s))
            .map_or_else(|| err(field, "out of range"), Ok),
        Value::String(s) => {
            time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339)
                .map(|t| t.unix_timestamp())
                .or_else(|_| err(field, "must be RFC 3339 or Unix seconds"))
        }
        _ => err(field, "must be RFC 3339 or Unix seconds"),
    }
}

impl Validate for Empty {
    type Valid = Empty;
    fn validate(self, _now: i64) -> Result<Empty, FieldError> {
        Ok(self)
    }
}

impl Validate for UserOnly {
    type Valid = UserOnly;
    fn validate(self, _now: i64) -> Result<UserOnly, FieldError> {
        user_name("user", &self.user)?;
        Ok(self)
    }
}

impl Validate for VpnUserCreate {
    type Valid = VpnUserCreate;
    fn validate(self, _now: i64) -> Result<VpnUserCreate, FieldError> {
        user_name("user", &self.user)?;
        base64_exact("public_key", &self.public_key, 32)?;
        if let Some(a) = &self.address {
            if !matches!(ip("address", a)?, IpAddr::V4(_)) {
                return err("address", "must be an IPv4 address");
            }
        }
        if let Some(a) = &self.allowed {
            ipv4_cidrs("allowed", a, 64)?;
        }
        if let Some(s) = self.expires_secs {
            grant_secs("expires_secs", s)?;
        }
        Ok(self)
    }
}

/// A grant length: at least a second, at most ten years (the vpn applies
/// the site's own, smaller maximum).
fn grant_secs(field: &str, secs: u64) -> Result<(), FieldError> {
    if secs == 0 || secs > 10 * 365 * 24 * 3600 {
        return err(field, "must be between 1 and 315360000 seconds");
    }
    Ok(())
}

impl Validate for VpnUserRenew {
    type Valid = VpnUserRenew;
    fn validate(self, _now: i64) -> Result<VpnUserRenew, FieldError> {
        user_name("user", &self.user)?;
        grant_secs("expires_secs", self.expires_secs)?;
        Ok(self)
    }
}

impl Validate for UpdateCcd {
    type Valid = UpdateCcd;
    fn validate(self, _now: i64) -> Result<UpdateCcd, FieldError> {
        user_name("user", &self.user)?;
        ipv4_cidrs("allowed", &self.allowed, 64)?;
        Ok(self)
    }
}

impl Validate for SpaUserSet {
    type Valid = SpaUserSet;
    fn validate(self, _now: i64) -> Result<SpaUserSet, FieldError> {
        user_name("user", &self.user)?;
        base64_range("key_base64", &self.key_base64, 16, 32)?;
        base64_range("hmac_key_base64", &self.hmac_key_base64, 32, 128)?;
        if let Some(h) = &self.hmac_type {
            word("hmac_type", h)?;
        }
        if let Some(m) = &self.encryption_mode {
            word("encryption_mode", m)?;
        }
        if let Some(ports) = &self.ports {
            if ports.len() > 32 {
                return err("ports", "at most 32 entries");
            }
            for x in ports {
                proto_port("ports", x)?;
            }
        }
        if let Some(src) = &self.sources {
            if src.len() > 64 {
                return err("sources", "at most 64 entries");
            }
            for c in src {
                cidr("sources", c)?;
            }
        }
        if let Some(t) = self.timeout_secs {
            secs("timeout_secs", t, 86400)?;
        }
        Ok(self)
    }
}

impl Validate for KeyAdd {
    type Valid = KeyAdd;
    fn validate(self, _now: i64) -> Result<KeyAdd, FieldError> {
        if self.key.len() > 1024 {
            return err("key", "longer than 1024 bytes");
        }
        crate::keys::parse_ed25519_line(&self.key)
            .map_err(|e| FieldError(format!("invalid field \"key\": {e}")))?;
        crate::scope::Scopes::parse(&self.scopes)
            .map_err(|e| FieldError(format!("invalid field \"scopes\": {e}")))?;
        if let Some(c) = &self.comment {
            if c.len() > 128 || c.chars().any(char::is_control) {
                return err("comment", "at most 128 printable characters");
            }
        }
        Ok(self)
    }
}

impl Validate for KeyRemove {
    type Valid = KeyRemove;
    fn validate(self, _now: i64) -> Result<KeyRemove, FieldError> {
        if !self.fingerprint.starts_with("SHA256:")
            || self.fingerprint.len() > 80
            || self.fingerprint.chars().any(char::is_control)
        {
            return err(
                "fingerprint",
                "must be SHA256:... as ssh-keygen -lf prints it",
            );
        }
        Ok(self)
    }
}

impl Validate for ConfigSet {
    type Valid = ConfigSet;
    fn validate(self, _now: i64) -> Result<ConfigSet, FieldError> {
        if self == ConfigSet::default() {
            return Err(FieldError("config_set needs at least one field".into()));
        }
        if let Some(Some(e)) = &self.siem_endpoint {
            endpoint("siem_endpoint", e)?;
        }
        crate::siem::validate(&self)?;
        if let Some(Some(b)) = &self.backend {
            if b.is_empty() || b.len() > 64 {
                return err("backend", "1..=64 CIDRs (null clears the override)");
            }
            for c in b {
                cidr("backend", c)?;
            }
        }
        if let Some(Some(d)) = &self.dns {
            if d.len() > 4 {
                return err("dns", "at most 4 entries");
            }
            for a in d {
                ip("dns", a)?;
            }
        }
        if let Some(Some(v)) = self.idle_timeout_secs {
            secs("idle_timeout_secs", v, 86400)?;
        }
        if let Some(Some(v)) = self.auth_timeout_secs {
            secs("auth_timeout_secs", v, 600)?;
        }
        if let Some(Some(v)) = self.rpc_timeout_secs {
            secs("rpc_timeout_secs", v, 600)?;
        }
        Ok(self)
    }
}

/// `pull_logs` after validation: a window in Unix seconds and a record cap.
#[derive(Debug, Clone, Serialize)]
pub struct LogWindow {
    pub since: i64,
    pub until: i64,
    pub limit: usize,
    #[serde(flatten)]
    pub filter: crate::siem::LogFilter,
}

impl Validate for PullLogs {
    type Valid = LogWindow;
    fn validate(self, now: i64) -> Result<LogWindow, FieldError> {
        let since = self
            .since
            .as_ref()
            .map(|v| time_value("since", v))
            .transpose()?
            .unwrap_or(now - 3600);
        let until = self
            .until
            .as_ref()
            .map(|v| time_value("until", v))
            .transpose()?
            .unwrap_or(now + 1);
        if until < since {
            return err("until", "is before since");
        }
        let limit = self.limit.unwrap_or(1000);
        if limit == 0 || limit > 10_000 {
            return err("limit", "must be 1..=10000");
        }
        let filter = crate::siem::LogFilter {
            service: self.service,
            kind: self.kind,
            for_trace_id: self.for_trace_id,
        };
        filter.validate()?;
        Ok(LogWindow {
            since,
            until,
            limit: limit as usize,
            filter,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::command::Command;
    use base64::Engine;
    use serde_json::json;

    fn obj(v: Value) -> Map<String, Value> {
        v.as_object().unwrap().clone()
    }

    fn invalid(c: Command, v: Value) -> String {
        c.validate(&obj(v), 100).unwrap_err().0
    }

    #[test]
    fn validators_name_the_field() {
        let key = base64::engine::general_purpose::STANDARD.encode([7u8; 32]);
        let p = Command::VpnUserCreate
            .validate(&obj(json!({"user":"alice","public_key":key})), 0)
            .unwrap();
        assert_eq!(p.command(), Command::VpnUserCreate);
        let e = invalid(
            Command::VpnUserCreate,
            json!({"user":"Alice","public_key":key}),
        );
        assert!(e.contains("\"user\""), "{e}");
        let e = invalid(
            Command::VpnUserCreate,
            json!({"user":"alice","public_key":"AAAA"}),
        );
        assert!(e.contains("public_key"), "{e}");
        let e = invalid(
            Command::VpnUserCreate,
            json!({"user":"alice","public_key":key,"x":1}),
        );
        assert!(e.contains("unknown field `x`"), "{e}");
        let e = invalid(
            Command::UpdateCcd,
            json!({"user":"bob","allowed":["10.0.0.1/24"]}),
        );
        assert!(e.contains("host bits"), "{e}");
        let e = invalid(Command::ConfigSet, json!({"siem_endpoint":"siem:0"}));
        assert!(e.contains("siem_endpoint"), "{e}");
        let e = invalid(Command::ConfigSet, json!({}));
        assert!(e.contains("at least one field"), "{e}");
        let p = Command::ConfigSet
            .validate(&obj(json!({"backend":null})), 0)
            .unwrap();
        assert_eq!(p.to_value(), json!({"backend": null}));
        let e = invalid(Command::Health, json!({"extra":1}));
        assert!(e.contains("unknown field `extra`"), "{e}");
        assert_eq!(user_name("u", &"a".repeat(32)), Ok(()));
        let e = user_name("u", &"a".repeat(33)).unwrap_err().0;
        assert!(e.contains("^[a-z][a-z0-9_-]{0,31}$"), "{e}");
        let e = user_name("u", "1a").unwrap_err().0;
        assert!(e.contains("invalid field \"u\""), "{e}");
        let e = invalid(
            Command::PullLogs,
            json!({"since":"2026-01-01T00:00:00Z","limit":5}),
        );
        assert!(e.contains("until"), "{e}");
        let e = invalid(Command::ControlKeyRemove, json!({"fingerprint":"MD5:aa"}));
        assert!(e.contains("\"fingerprint\""), "{e}");
    }

    #[test]
    fn pull_logs_defaults_to_the_last_hour() {
        let p = Command::PullLogs.validate(&Map::new(), 10_000).unwrap();
        assert_eq!(
            p.to_value(),
            json!({"since": 10_000 - 3600, "until": 10_001, "limit": 1000})
        );
    }
}
