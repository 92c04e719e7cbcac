//! Second-key approval for risky commands (site config
//! `[control] require_approval`).
//!
//! An approval token is an ed25519 signature, by a *different* control key
//! holding `admin`, over
//!
//! ```text
//! gwos-control-approval-v2\n<command>\n<requester>\n<nonce>\n<canonical params>\n<trace_id>\n<expires>
//! ```
//!
//! where `<requester>` is the `SHA256:` fingerprint of the key that will
//! send the request (a token is useless to any other key), `<nonce>` is 32
//! lowercase hex digits chosen by the approver, `<canonical params>` is the
//! request object without `trace_id` and `approval`, serialized as compact
//! JSON with object keys sorted (recursively), and `<expires>` is Unix
//! seconds (at most 1 hour ahead). The request carries it as
//! `"approval": {"key": "SHA256:<approver>", "requester": "SHA256:<requester>", "nonce": "<hex>", "expires": <secs>, "signature": "<base64 64 bytes>"}`
//! and must carry its own `trace_id` (the one that was signed).
//!
//! A token is good for one call: [`UsedApprovals`] keeps the nonce of every
//! accepted token until the token expires, in
//! `<state_dir>/approvals_used.json` (written atomically before the command
//! runs), so a replay is refused even after a restart.

use std::path::{Path, PathBuf};

use base64::Engine;
use ed25519_dalek::{Signature, Signer, SigningKey, Verifier, VerifyingKey};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// Longest validity of a token.
pub const MAX_VALIDITY_SECS: i64 = 3600;

/// Most unexpired used tokens remembered; beyond it approvals are refused
/// (fail closed) until some expire.
pub const MAX_USED: usize = 4096;

/// A fresh nonce for [`sign`].
pub fn new_nonce() -> String {
    hex::encode(rand::random::<[u8; 16]>())
}

fn is_nonce(s: &str) -> bool {
    s.len() == 32
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

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

/// What an approval covers, besides the approver's identity.
#[derive(Debug, Clone, Copy)]
pub struct Subject<'a> {
    pub command: &'a str,
    /// Fingerprint of the key that sends the request.
    pub requester: &'a str,
    pub params: &'a Map<String, Value>,
    pub trace_id: &'a str,
}

pub fn message(s: &Subject<'_>, nonce: &str, expires: i64) -> Vec<u8> {
    format!(
        "gwos-control-approval-v2\n{}\n{}\n{nonce}\n{}\n{}\n{expires}",
        s.command,
        s.requester,
        canonical(&Value::Object(s.params.clone())),
        s.trace_id,
    )
    .into_bytes()
}

/// Makes the `approval` object with the approver's ed25519 seed.
pub fn sign(
    seed: &[u8; 32],
    approver_fingerprint: &str,
    subject: &Subject<'_>,
    nonce: &str,
    expires: i64,
) -> Value {
    let sk = SigningKey::from_bytes(seed);
    let sig = sk.sign(&message(subject, nonce, expires));
    serde_json::json!({
        "key": approver_fingerprint,
        "requester": subject.requester,
        "nonce": nonce,
        "expires": expires,
        "signature": base64::engine::general_purpose::STANDARD.encode(sig.to_bytes()),
    })
}

/// A parsed approval object.
#[derive(Debug, Clone)]
pub struct Token {
    /// Approver's fingerprint.
    pub key: String,
    pub requester: String,
    pub nonce: String,
    pub expires: i64,
    pub signature: [u8; 64],
}

pub fn parse(v: &Value) -> Result<Token, String> {
    let o = v
        .as_object()
        .ok_or("invalid field \"approval\": must be an object")?;
    for k in o.keys() {
        if !["key", "requester", "nonce", "expires", "signature"].contains(&k.as_str()) {
            return Err(format!("invalid field \"approval\": unknown field {k:?}"));
        }
    }
    let key = o
        .get("key")
        .and_then(Value::as_str)
        .filter(|k| k.starts_with("SHA256:") && k.len() <= 80)
        .ok_or("invalid field \"approval.key\": must be the approver's SHA256: fingerprint")?;
    let requester = o
        .get("requester")
        .and_then(Value::as_str)
        .filter(|k| k.starts_with("SHA256:") && k.len() <= 80)
        .ok_or("invalid field \"approval.requester\": must be the requesting key's SHA256: fingerprint")?;
    let nonce = o
        .get("nonce")
        .and_then(Value::as_str)
        .filter(|n| is_nonce(n))
        .ok_or("invalid field \"approval.nonce\": must be 32 lowercase hex digits")?;
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
        requester: requester.to_owned(),
        nonce: nonce.to_owned(),
        expires,
        signature: sig,
    })
}

/// Checks a token against the approver's public key bytes and the call
/// (`subject.requester` = the caller's fingerprint).
pub fn verify(
    token: &Token,
    approver: &[u8; 32],
    subject: &Subject<'_>,
    now: i64,
) -> Result<(), String> {
    if token.requester != subject.requester {
        return Err(format!(
            "approval was issued for key {}, not for the caller {}",
            token.requester, subject.requester
        ));
    }
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
        &message(subject, &token.nonce, token.expires),
        &Signature::from_bytes(&token.signature),
    )
    .map_err(|_| {
        "approval signature does not verify (command, requester, nonce, request, trace_id or expiry differ)"
            .to_string()
    })
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
struct Used {
    nonce: String,
    approver: String,
    expires: i64,
}

/// Nonces of accepted tokens, kept until they expire.
#[derive(Debug)]
pub struct UsedApprovals {
    path: PathBuf,
    used: Vec<Used>,
}

impl UsedApprovals {
    /// Loads `<state_dir>/approvals_used.json` (missing = none used).
    pub fn load(state_dir: &Path) -> anyhow::Result<Self> {
        let path = state_dir.join("approvals_used.json");
        let used = gwos_core::state::read_json(&path)?.unwrap_or_default();
        Ok(Self { path, used })
    }

    /// Marks `token` used, persisting it before returning; a token already
    /// used, a full set or a failed write refuses the call.
    pub fn consume(&mut self, token: &Token, now: i64) -> Result<(), String> {
        let mut next: Vec<Used> = self
            .used
            .iter()
            .filter(|u| u.expires >= now)
            .cloned()
            .collect();
        if next.iter().any(|u| u.nonce == token.nonce) {
            return Err(format!(
                "approval was already used (nonce {}); ask the approver for a new one",
                token.nonce
            ));
        }
        if next.len() >= MAX_USED {
            return Err(format!(
                "{MAX_USED} approvals are in use and not yet expired; refusing until some expire"
            ));
        }
        next.push(Used {
            nonce: token.nonce.clone(),
            approver: token.key.clone(),
            expires: token.expires,
        });
        gwos_core::state::write_json(&self.path, &next)
            .map_err(|e| format!("cannot record the approval as used ({e:#}); refusing"))?;
        self.used = next;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const BAD: &str = "approval signature does not verify (command, requester, nonce, request, trace_id or expiry differ)";

    fn subject<'a>(
        command: &'a str,
        requester: &'a str,
        params: &'a Map<String, Value>,
        trace_id: &'a str,
    ) -> Subject<'a> {
        Subject {
            command,
            requester,
            params,
            trace_id,
        }
    }

    #[test]
    fn sign_verify_and_tamper() {
        let seed = [9u8; 32];
        let pk = SigningKey::from_bytes(&seed).verifying_key().to_bytes();
        let params = json!({"scopes":["vpn:read"],"key":"ssh-ed25519 AAAA x"})
            .as_object()
            .unwrap()
            .clone();
        let nonce = new_nonce();
        let good = subject("control_key_add", "SHA256:req", &params, "t1");
        let tok = parse(&sign(&seed, "SHA256:x", &good, &nonce, 1000)).unwrap();
        assert_eq!(tok.nonce, nonce);
        assert_eq!(verify(&tok, &pk, &good, 900), Ok(()));
        let bad = Err(BAD.to_string());
        assert_eq!(
            verify(
                &tok,
                &pk,
                &subject("control_key_add", "SHA256:req", &params, "t2"),
                900
            ),
            bad
        );
        assert_eq!(
            verify(
                &tok,
                &pk,
                &subject("control_key_remove", "SHA256:req", &params, "t1"),
                900
            ),
            bad
        );
        assert_eq!(
            verify(
                &tok,
                &pk,
                &subject("control_key_add", "SHA256:other", &params, "t1"),
                900
            ),
            Err("approval was issued for key SHA256:req, not for the caller SHA256:other".into())
        );
        assert_eq!(
            verify(&tok, &pk, &good, 1001),
            Err("approval expired".into())
        );
        let mut p2 = params.clone();
        p2.insert("scopes".into(), json!(["admin"]));
        assert_eq!(
            verify(
                &tok,
                &pk,
                &subject("control_key_add", "SHA256:req", &p2, "t1"),
                900
            ),
            bad
        );
        let mut forged = tok.clone();
        forged.nonce = new_nonce();
        assert_eq!(verify(&forged, &pk, &good, 900), bad);
        assert_eq!(
            canonical(&json!({"b":1,"a":{"d":[1,{"z":1,"y":2}],"c":"x"}})),
            r#"{"a":{"c":"x","d":[1,{"y":2,"z":1}]},"b":1}"#
        );
    }

    #[test]
    fn parse_names_the_bad_field() {
        let e = parse(&json!({"key":"SHA256:a","requester":"SHA256:b","nonce":"XYZ","expires":1,"signature":""})).unwrap_err();
        assert!(e.contains("approval.nonce"), "{e}");
        let e = parse(&json!({"key":"SHA256:a","expires":1,"signature":"","extra":1})).unwrap_err();
        assert!(e.contains("unknown field \"extra\""), "{e}");
    }

    #[test]
    fn used_tokens_are_refused_until_expiry_and_survive_reload() {
        let dir = tempfile::tempdir().unwrap();
        let tok = Token {
            key: "SHA256:a".into(),
            requester: "SHA256:b".into(),
            nonce: new_nonce(),
            expires: 1000,
            signature: [0; 64],
        };
        let mut used = UsedApprovals::load(dir.path()).unwrap();
        assert_eq!(used.consume(&tok, 900), Ok(()));
        let e = UsedApprovals::load(dir.path())
            .unwrap()
            .consume(&tok, 950)
            .unwrap_err();
        assert!(e.starts_with("approval was already used"), "{e}");
        // Expired entries are dropped on the next write.
        let mut other = tok.clone();
        other.nonce = new_nonce();
        other.expires = 3000;
        assert_eq!(used.consume(&other, 2000), Ok(()));
        let text = std::fs::read_to_string(dir.path().join("approvals_used.json")).unwrap();
        assert!(
            !text.contains(&tok.nonce) && text.contains(&other.nonce),
            "{text}"
        );
    }
}
