//! The request body (a JSON object on stdin) and strict validators for every
//! field type (user names, keys, CIDRs, endpoints), and redaction for logs.
//! The per-command parameter structs live in [`crate::params`]. Pure
//! functions: the fuzz target `control_request` drives [`parse_envelope`]
//! and `Command::validate` with arbitrary bytes.

use std::net::IpAddr;

use base64::Engine;
use ipnet::IpNet;
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

pub(crate) fn err<T>(field: &str, what: impl std::fmt::Display) -> Result<T, FieldError> {
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
        assert_eq!(
            trace_id(&"a".repeat(65)),
            Err(FieldError(
                "invalid field \"trace_id\": must match [A-Za-z0-9_-]{1,64}".into()
            ))
        );
        assert_eq!(trace_id(&"a".repeat(64)), Ok("a".repeat(64)));
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
