//! The request body (a JSON object on stdin) and strict validators for every
//! command's parameters. Pure functions: the fuzz target `control_request`
//! drives [`parse_envelope`] and [`validate_params`] with arbitrary bytes.

use std::net::IpAddr;

use base64::Engine;
use ipnet::IpNet;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// Default cap on the request body.
pub const DEFAULT_MAX_REQUEST: usize = 64 * 1024;

/// An error that names the offending field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError(pub String);

impl std::fmt::Display for FieldError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

fn err<T>(field: &str, what: impl std::fmt::Display) -> Result<T, FieldError> {
    Err(FieldError(format!("invalid field {field:?}: {what}")))
}

/// The syntactic envelope: a JSON object, an optional `trace_id`, an optional
/// `approval`, and the remaining fields (the command's parameters).
#[derive(Debug, Clone, PartialEq)]
pub struct Envelope {
    pub trace_id: Option<String>,
    pub approval: Option<Value>,
    pub params: Map<String, Value>,
}

/// Parses the body: empty (or whitespace) = `{}`; over `max` bytes, not
/// UTF-8 JSON, or not an object is an error. `trace_id` is validated here.
pub fn parse_envelope(body: &[u8], max: usize) -> Result<Envelope, FieldError> {
    if body.len() > max {
        return Err(FieldError(format!("request larger than {max} bytes")));
    }
    let text = std::str::from_utf8(body).map_err(|_| FieldError("request is not UTF-8".into()))?;
    if text.trim().is_empty() {
        return Ok(Envelope {
            trace_id: None,
            approval: None,
            params: Map::new(),
        });
    }
    let value: Value =
        serde_json::from_str(text).map_err(|e| FieldError(format!("malformed JSON: {e}")))?;
    let Value::Object(mut params) = value else {
        return Err(FieldError("request must be a JSON object".into()));
    };
    let trace_id = match params.remove("trace_id") {
        None => None,
        Some(Value::String(t)) => Some(trace_id(&t)?),
        Some(_) => return err("trace_id", "must be a string"),
    };
    let approval = params.remove("approval");
    Ok(Envelope {
        trace_id,
        approval,
        params,
    })
}

/// `[A-Za-z0-9_-]{1,64}`
pub fn trace_id(t: &str) -> Result<String, FieldError> {
    if t.is_empty()
        || t.len() > 64
        || !t
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    {
        return err("trace_id", "must match [A-Za-z0-9_-]{1,64}");
    }
    Ok(t.to_owned())
}

/// `^[a-z][a-z0-9_-]{0,31}$`
pub fn user_name(field: &str, u: &str) -> Result<(), FieldError> {
    let b = u.as_bytes();
    let ok = !b.is_empty()
        && b.len() <= 32
        && b[0].is_ascii_lowercase()
        && b.iter()
            .all(|&c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'_' || c == b'-');
    if ok {
        Ok(())
    } else {
        err(field, "must match ^[a-z][a-z0-9_-]{0,31}$")
    }
}

/// Standard base64 decoding to exactly `len` bytes (`len` = 32: a WireGuard key).
pub fn base64_exact(field: &str, s: &str, len: usize) -> Result<Vec<u8>, FieldError> {
    match base64::engine::general_purpose::STANDARD.decode(s) {
        Ok(b) if b.len() == len => Ok(b),
        Ok(b) => err(
            field,
            format!("must be {len} bytes of base64, got {} bytes", b.len()),
        ),
        Err(_) => err(field, "is not valid base64"),
    }
}

/// Standard base64 decoding to between `min` and `max` bytes.
pub fn base64_range(field: &str, s: &str, min: usize, max: usize) -> Result<Vec<u8>, FieldError> {
    match base64::engine::general_purpose::STANDARD.decode(s) {
        Ok(b) if (min..=max).contains(&b.len()) => Ok(b),
        Ok(b) => err(
            field,
            format!("must be {min}..={max} bytes of base64, got {}", b.len()),
        ),
        Err(_) => err(field, "is not valid base64"),
    }
}

pub fn cidr(field: &str, s: &str) -> Result<IpNet, FieldError> {
    match s.parse::<IpNet>() {
        Ok(n) if n == n.trunc() => Ok(n),
        Ok(_) => err(field, format!("{s:?} has host bits set")),
        Err(_) => err(field, format!("{s:?} is not a CIDR (a.b.c.d/n)")),
    }
}

pub fn ip(field: &str, s: &str) -> Result<IpAddr, FieldError> {
    s.parse()
        .or_else(|_| err(field, format!("{s:?} is not an IP address")))
}

/// `host:port` with a DNS name or IP host and port 1..=65535.
pub fn endpoint(field: &str, s: &str) -> Result<(), FieldError> {
    let Some((host, port)) = s.rsplit_once(':') else {
        return err(field, "must be host:port");
    };
    match port.parse::<u16>() {
        Ok(p) if p > 0 => {}
        _ => return err(field, "port must be 1..=65535"),
    }
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let dns_ok = !host.is_empty()
        && host.len() <= 253
        && host.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && l.bytes().all(|c| c.is_ascii_alphanumeric() || c == b'-')
                && !l.starts_with('-')
        });
    if dns_ok || host.parse::<IpAddr>().is_ok() {
        Ok(())
    } else {
        err(field, format!("{host:?} is not a host name or IP"))
    }
}

// ---- per-command parameters (deny unknown fields; serde names the field) ----

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

/// Validated parameters of one command.
#[derive(Debug, Clone)]
pub enum Params {
    None,
    User(UserOnly),
    VpnUserCreate(VpnUserCreate),
    UpdateCcd(UpdateCcd),
    SpaUserSet(SpaUserSet),
    KeyAdd(KeyAdd),
    KeyRemove(KeyRemove),
    ConfigSet(ConfigSet),
    PullLogs {
        since: i64,
        until: i64,
        limit: usize,
        filter: crate::siem::LogFilter,
    },
}

fn typed<T: serde::de::DeserializeOwned>(params: &Map<String, Value>) -> Result<T, FieldError> {
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

/// Strictly validates `params` for `command` (already known to exist).
pub fn validate_params(
    command: &str,
    params: &Map<String, Value>,
    now: i64,
) -> Result<Params, FieldError> {
    Ok(match command {
        "vpn_user_create" => {
            let p: VpnUserCreate = typed(params)?;
            user_name("user", &p.user)?;
            base64_exact("public_key", &p.public_key, 32)?;
            if let Some(a) = &p.address {
                if !matches!(ip("address", a)?, IpAddr::V4(_)) {
                    return err("address", "must be an IPv4 address");
                }
            }
            if let Some(a) = &p.allowed {
                ipv4_cidrs("allowed", a, 64)?;
            }
            Params::VpnUserCreate(p)
        }
        "vpn_user_delete" | "spa_user_delete" => {
            let p: UserOnly = typed(params)?;
            user_name("user", &p.user)?;
            Params::User(p)
        }
        "update_ccd" => {
            let p: UpdateCcd = typed(params)?;
            user_name("user", &p.user)?;
            ipv4_cidrs("allowed", &p.allowed, 64)?;
            Params::UpdateCcd(p)
        }
        "spa_user_set" => {
            let p: SpaUserSet = typed(params)?;
            user_name("user", &p.user)?;
            base64_range("key_base64", &p.key_base64, 16, 32)?;
            base64_range("hmac_key_base64", &p.hmac_key_base64, 32, 128)?;
            if let Some(h) = &p.hmac_type {
                word("hmac_type", h)?;
            }
            if let Some(m) = &p.encryption_mode {
                word("encryption_mode", m)?;
            }
            if let Some(ports) = &p.ports {
                if ports.len() > 32 {
                    return err("ports", "at most 32 entries");
                }
                for x in ports {
                    proto_port("ports", x)?;
                }
            }
            if let Some(src) = &p.sources {
                if src.len() > 64 {
                    return err("sources", "at most 64 entries");
                }
                for c in src {
                    cidr("sources", c)?;
                }
            }
            if let Some(t) = p.timeout_secs {
                secs("timeout_secs", t, 86400)?;
            }
            Params::SpaUserSet(p)
        }
        "control_key_add" => {
            let p: KeyAdd = typed(params)?;
            if p.key.len() > 1024 {
                return err("key", "longer than 1024 bytes");
            }
            crate::keys::parse_ed25519_line(&p.key)
                .map_err(|e| FieldError(format!("invalid field \"key\": {e}")))?;
            crate::scope::Scopes::parse(&p.scopes)
                .map_err(|e| FieldError(format!("invalid field \"scopes\": {e}")))?;
            if let Some(c) = &p.comment {
                if c.len() > 128 || c.chars().any(char::is_control) {
                    return err("comment", "at most 128 printable characters");
                }
            }
            Params::KeyAdd(p)
        }
        "control_key_remove" => {
            let p: KeyRemove = typed(params)?;
            if !p.fingerprint.starts_with("SHA256:") || p.fingerprint.len() > 80 {
                return err(
                    "fingerprint",
                    "must be SHA256:... as ssh-keygen -lf prints it",
                );
            }
            Params::KeyRemove(p)
        }
        "config_set" => {
            let p: ConfigSet = typed(params)?;
            if p == ConfigSet::default() {
                return Err(FieldError("config_set needs at least one field".into()));
            }
            if let Some(Some(e)) = &p.siem_endpoint {
                endpoint("siem_endpoint", e)?;
            }
            crate::siem::validate(&p)?;
            if let Some(Some(b)) = &p.backend {
                if b.is_empty() || b.len() > 64 {
                    return err("backend", "1..=64 CIDRs (null clears the override)");
                }
                for c in b {
                    cidr("backend", c)?;
                }
            }
            if let Some(Some(d)) = &p.dns {
                if d.len() > 4 {
                    return err("dns", "at most 4 entries");
                }
                for a in d {
                    ip("dns", a)?;
                }
            }
            if let Some(Some(v)) = p.idle_timeout_secs {
                secs("idle_timeout_secs", v, 86400)?;
            }
            if let Some(Some(v)) = p.auth_timeout_secs {
                secs("auth_timeout_secs", v, 600)?;
            }
            if let Some(Some(v)) = p.rpc_timeout_secs {
                secs("rpc_timeout_secs", v, 600)?;
            }
            Params::ConfigSet(p)
        }
        "pull_logs" => {
            let p: PullLogs = typed(params)?;
            let since = p
                .since
                .as_ref()
                .map(|v| time_value("since", v))
                .transpose()?
                .unwrap_or(now - 3600);
            let until = p
                .until
                .as_ref()
                .map(|v| time_value("until", v))
                .transpose()?
                .unwrap_or(now + 1);
            if until < since {
                return err("until", "is before since");
            }
            let limit = p.limit.unwrap_or(1000);
            if limit == 0 || limit > 10_000 {
                return err("limit", "must be 1..=10000");
            }
            let filter = crate::siem::LogFilter {
                service: p.service,
                kind: p.kind,
                for_trace_id: p.for_trace_id,
            };
            filter.validate()?;
            Params::PullLogs {
                since,
                until,
                limit: limit as usize,
                filter,
            }
        }
        _ => {
            let _: Empty = typed(params)?;
            Params::None
        }
    })
}

/// Field names whose values never reach logs.
pub fn is_secret_field(name: &str) -> bool {
    let n = name.to_ascii_lowercase();
    n.contains("key") && n != "public_key"
        || n.contains("token")
        || n.contains("secret")
        || n.contains("password")
        || n == "signature"
        || n == "approval"
}

/// A copy of `v` with secret fields replaced by `"<redacted>"` (recursively).
pub fn redact(v: &Value) -> Value {
    match v {
        Value::Object(m) => Value::Object(
            m.iter()
                .map(|(k, v)| {
                    (
                        k.clone(),
                        if is_secret_field(k) {
                            Value::String("<redacted>".into())
                        } else {
                            redact(v)
                        },
                    )
                })
                .collect(),
        ),
        Value::Array(a) => Value::Array(a.iter().map(redact).collect()),
        other => other.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn obj(v: Value) -> Map<String, Value> {
        v.as_object().unwrap().clone()
    }

    #[test]
    fn envelope() {
        assert_eq!(parse_envelope(b"", 10).unwrap().params.len(), 0);
        assert_eq!(parse_envelope(b" \n", 10).unwrap().trace_id, None);
        let e = parse_envelope(br#"{"trace_id":"abc-1_2","user":"x"}"#, 100).unwrap();
        assert_eq!(e.trace_id.as_deref(), Some("abc-1_2"));
        assert_eq!(e.params.len(), 1);
        assert!(parse_envelope(br#"{"trace_id":"a b"}"#, 100)
            .unwrap_err()
            .0
            .contains("trace_id"));
        assert!(parse_envelope(b"[1]", 100)
            .unwrap_err()
            .0
            .contains("object"));
        assert!(parse_envelope(b"{", 100)
            .unwrap_err()
            .0
            .contains("malformed"));
        assert!(parse_envelope(&[b' '; 11], 10)
            .unwrap_err()
            .0
            .contains("larger"));
        assert!(trace_id(&"a".repeat(65)).is_err() && trace_id(&"a".repeat(64)).is_ok());
    }

    #[test]
    fn validators_name_the_field() {
        let key = base64::engine::general_purpose::STANDARD.encode([7u8; 32]);
        assert!(validate_params(
            "vpn_user_create",
            &obj(json!({"user":"alice","public_key":key})),
            0
        )
        .is_ok());
        let e = validate_params(
            "vpn_user_create",
            &obj(json!({"user":"Alice","public_key":key})),
            0,
        )
        .unwrap_err();
        assert!(e.0.contains("\"user\""), "{e}");
        let e = validate_params(
            "vpn_user_create",
            &obj(json!({"user":"alice","public_key":"AAAA"})),
            0,
        )
        .unwrap_err();
        assert!(e.0.contains("public_key"), "{e}");
        let e = validate_params(
            "vpn_user_create",
            &obj(json!({"user":"alice","public_key":key,"x":1})),
            0,
        )
        .unwrap_err();
        assert!(e.0.contains("unknown field `x`"), "{e}");
        let e = validate_params(
            "update_ccd",
            &obj(json!({"user":"bob","allowed":["10.0.0.1/24"]})),
            0,
        )
        .unwrap_err();
        assert!(e.0.contains("host bits"), "{e}");
        let e =
            validate_params("config_set", &obj(json!({"siem_endpoint":"siem:0"})), 0).unwrap_err();
        assert!(e.0.contains("siem_endpoint"), "{e}");
        assert!(validate_params("config_set", &obj(json!({"backend":null})), 0).is_ok());
        assert!(validate_params("health", &obj(json!({"extra":1})), 0).is_err());
        assert!(
            user_name("u", &"a".repeat(32)).is_ok() && user_name("u", &"a".repeat(33)).is_err()
        );
        assert!(user_name("u", "1a").is_err());
        let p = validate_params(
            "pull_logs",
            &obj(json!({"since":"2026-01-01T00:00:00Z","limit":5})),
            100,
        )
        .unwrap_err();
        assert!(p.0.contains("until"), "{p}");
    }

    #[test]
    fn redaction() {
        let v = json!({"user":"a","public_key":"pub","key_base64":"s","hmac_key_base64":"s","key":"ssh-ed25519 A","nested":{"token":"t"}});
        let r = redact(&v);
        assert_eq!(r["public_key"], "pub");
        assert_eq!(r["user"], "a");
        for k in ["key_base64", "hmac_key_base64", "key"] {
            assert_eq!(r[k], "<redacted>");
        }
        assert_eq!(r["nested"]["token"], "<redacted>");
    }
}
