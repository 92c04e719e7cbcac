//! Second-key approval for risky commands (site config
//! `[control] require_approval`).
//!
//! An approval token is an ed25519 signature, by a *different* control key
//! holding `admin`, over
//!
//! ```text
//! gwos-control-approval-v1\n<command>\n<canonical params>\n<trace_id>\n<expires>
//! ```
//!
//! where `<canonical params>` is the request object without `trace_id` and
//! `approval`, serialized as compact JSON with object keys sorted
//! (recursively), and `<expires>` is Unix seconds (at most 1 hour ahead).
//! The request carries it as
//! `"approval": {"key": "SHA256:<approver fingerprint>", "expires": <secs>, "signature": "<base64 64 bytes>"}`
//! and must carry its own `trace_id` (the one that was signed).

use base64::Engine;
use ed25519_dalek::{Signature, Signer, SigningKey, Verifier, VerifyingKey};
use serde_json::{Map, Value};

/// Longest validity of a token.
pub const MAX_VALIDITY_SECS: i64 = 3600;

/// Compact JSON with keys sorted at every level.
pub fn canonical(v: &Value) -> String {
    match v {
        Value::Object(m) => {
            let mut keys: Vec<&String> = m.keys().collect();
            keys.sort();
            let parts: Vec<String> = keys
                .iter()
                .map(|k| {
                    format!(
                        "{}:{}",
                        serde_json::to_string(k).unwrap_or_default(),
                        canonical(&m[*k])
                    )
                })
                .collect();
            format!("{{{}}}", parts.join(","))
        }
        Value::Array(a) => format!(
            "[{}]",
            a.iter().map(canonical).collect::<Vec<_>>().join(",")
        ),
        other => serde_json::to_string(other).unwrap_or_default(),
    }
}

pub fn message(
    command: &str,
    params: &Map<String, Value>,
    trace_id: &str,
    expires: i64,
) -> Vec<u8> {
    format!(
        "gwos-control-approval-v1\n{command}\n{}\n{trace_id}\n{expires}",
        canonical(&Value::Object(params.clone()))
    )
    .into_bytes()
}

/// Makes the `approval` object with the approver's ed25519 seed.
pub fn sign(
    seed: &[u8; 32],
    fingerprint: &str,
    command: &str,
    params: &Map<String, Value>,
    trace_id: &str,
    expires: i64,
) -> Value {
    let sk = SigningKey::from_bytes(seed);
    let sig = sk.sign(&message(command, params, trace_id, expires));
    serde_json::json!({
        "key": fingerprint,
        "expires": expires,
        "signature": base64::engine::general_purpose::STANDARD.encode(sig.to_bytes()),
    })
}

/// A parsed approval object.
#[derive(Debug, Clone)]
pub struct Token {
    pub key: String,
    pub expires: i64,
    pub signature: [u8; 64],
}

pub fn parse(v: &Value) -> Result<Token, String> {
    let o = v
        .as_object()
        .ok_or("invalid field \"approval\": must be an object")?;
    for k in o.keys() {
        if !["key", "expires", "signature"].contains(&k.as_str()) {
            return Err(format!("invalid field \"approval\": unknown field {k:?}"));
        }
    }
    let key = o
        .get("key")
        .and_then(Value::as_str)
        .filter(|k| k.starts_with("SHA256:") && k.len() <= 80)
        .ok_or("invalid field \"approval.key\": must be the approver's SHA256: fingerprint")?;
    let expires = o
        .get("expires")
        .and_then(Value::as_i64)
        .ok_or("invalid field \"approval.expires\": must be Unix seconds")?;
    let sig = o
        .get("signature")
        .and_then(Value::as_str)
        .and_then(|s| base64::engine::general_purpose::STANDARD.decode(s).ok())
        .and_then(|b| <[u8; 64]>::try_from(b.as_slice()).ok())
        .ok_or("invalid field \"approval.signature\": must be 64 bytes of base64")?;
    Ok(Token {
        key: key.to_owned(),
        expires,
        signature: sig,
    })
}

/// Checks a token against the approver's public key bytes.
pub fn verify(
    token: &Token,
    approver: &[u8; 32],
    command: &str,
    params: &Map<String, Value>,
    trace_id: &str,
    now: i64,
) -> Result<(), String> {
    if token.expires < now {
        return Err("approval expired".into());
    }
    if token.expires > now + MAX_VALIDITY_SECS {
        return Err(format!(
            "approval expires more than {MAX_VALIDITY_SECS} s ahead"
        ));
    }
    let vk = VerifyingKey::from_bytes(approver)
        .map_err(|_| "approver key is not a valid ed25519 key")?;
    vk.verify(
        &message(command, params, trace_id, token.expires),
        &Signature::from_bytes(&token.signature),
    )
    .map_err(|_| {
        "approval signature does not verify (command, request, trace_id or expiry differ)"
            .to_string()
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn sign_verify_and_tamper() {
        let seed = [9u8; 32];
        let pk = SigningKey::from_bytes(&seed).verifying_key().to_bytes();
        let params = json!({"scopes":["vpn:read"],"key":"ssh-ed25519 AAAA x"})
            .as_object()
            .unwrap()
            .clone();
        let tok = parse(&sign(
            &seed,
            "SHA256:x",
            "control_key_add",
            &params,
            "t1",
            1000,
        ))
        .unwrap();
        assert_eq!(
            verify(&tok, &pk, "control_key_add", &params, "t1", 900),
            Ok(())
        );
        let bad = Err(
            "approval signature does not verify (command, request, trace_id or expiry differ)"
                .to_string(),
        );
        assert_eq!(
            verify(&tok, &pk, "control_key_add", &params, "t2", 900),
            bad
        );
        assert_eq!(
            verify(&tok, &pk, "control_key_remove", &params, "t1", 900),
            bad
        );
        assert!(verify(&tok, &pk, "control_key_add", &params, "t1", 1001)
            .unwrap_err()
            .contains("expired"));
        let mut p2 = params.clone();
        p2.insert("scopes".into(), json!(["admin"]));
        assert_eq!(verify(&tok, &pk, "control_key_add", &p2, "t1", 900), bad);
        assert_eq!(
            canonical(&json!({"b":1,"a":{"d":[1,{"z":1,"y":2}],"c":"x"}})),
            r#"{"a":{"c":"x","d":[1,{"y":2,"z":1}]},"b":1}"#
        );
    }
}
