//! The SIEM settings and the event spool, both owned by logship: control
//! validates the `config_set` keys, forwards them to logship's `siem_config`
//! (which applies them at once, without a restart), reports logship's SIEM
//! state in `health`/`config_get`, and answers `pull_logs` from logship's
//! spool (every service's events), falling back to its own audit log while
//! logship is down.

use std::path::Path;
use std::time::Duration;

use serde_json::{json, Value};

use crate::params::ConfigSet;
use crate::request::FieldError;

const TIMEOUT: Duration = Duration::from_secs(5);

fn bad<T>(field: &str, what: &str) -> Result<T, FieldError> {
    Err(FieldError(format!("{field}: {what}")))
}

/// Syntax of the SIEM keys (logship checks the PEM itself when applying).
pub fn validate(p: &ConfigSet) -> Result<(), FieldError> {
    if let Some(Some(pem)) = &p.siem_ca_pem {
        if pem.len() > 64 << 10 || !pem.contains("-----BEGIN CERTIFICATE-----") {
            return bad(
                "siem_ca_pem",
                "must be PEM text with a CERTIFICATE block (≤ 64 KiB)",
            );
        }
    }
    if let Some(Some(n)) = &p.siem_server_name {
        let ok = !n.is_empty()
            && n.len() <= 253
            && n.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b".-:".contains(&b));
        if !ok {
            return bad("siem_server_name", "must be a DNS name or IP address");
        }
    }
    if let Some(Some(pin)) = &p.siem_spki_sha256 {
        if pin.len() != 64 || !pin.bytes().all(|b| b.is_ascii_hexdigit()) {
            return bad(
                "siem_spki_sha256",
                "must be 64 hex digits (sha256 of the SIEM's SPKI)",
            );
        }
    }
    Ok(())
}

/// The SIEM keys of a `config_set`, as logship's `siem_config` takes them.
fn siem_params(p: &ConfigSet) -> Option<Value> {
    let mut m = serde_json::Map::new();
    for (k, v) in [
        ("siem_endpoint", &p.siem_endpoint),
        ("siem_ca_pem", &p.siem_ca_pem),
        ("siem_server_name", &p.siem_server_name),
        ("siem_spki_sha256", &p.siem_spki_sha256),
    ] {
        if let Some(v) = v {
            m.insert(k.into(), json!(v));
        }
    }
    (!m.is_empty()).then_some(Value::Object(m))
}

fn call(run_dir: &Path, method: &str, params: Value, trace_id: &str) -> Result<Value, String> {
    let path = gwos_core::context::socket_path(run_dir, "logship");
    match gwos_core::rpc::call(&path, method, params, Some(trace_id), TIMEOUT) {
        Ok(r) if r.ok => Ok(r.result),
        Ok(r) => Err(format!(
            "logship: {}",
            r.error.unwrap_or_else(|| "failed without a message".into())
        )),
        Err(e) => Err(format!("service unavailable: logship ({e:#})")),
    }
}

/// Hands the SIEM keys of `p` (if any) to logship. `Err`: logship refused
/// them (control must not save them either). `Ok(Some(why))`: logship is
/// not running; control saves them and says so (`siem_not_applied`), and
/// the operator sends them again once logship is back.
pub fn apply(run_dir: &Path, p: &ConfigSet, trace_id: &str) -> Result<Option<String>, String> {
    let Some(params) = siem_params(p) else {
        return Ok(None);
    };
    let path = gwos_core::context::socket_path(run_dir, "logship");
    match gwos_core::rpc::call(&path, "siem_config", params, Some(trace_id), TIMEOUT) {
        Ok(r) if r.ok => Ok(None),
        Ok(r) => Err(format!(
            "logship refused the SIEM settings: {}",
            r.error.unwrap_or_else(|| "no message".into())
        )),
        Err(e) => Ok(Some(format!("service unavailable: logship ({e:#})"))),
    }
}

/// logship's SIEM state for `health` and `config_get`.
pub fn status(run_dir: &Path) -> Value {
    match call(run_dir, "health", json!({}), "-") {
        Ok(v) => v.get("siem").cloned().unwrap_or(Value::Null),
        Err(e) => json!({"error": e}),
    }
}

/// `pull_logs` filters besides the time window. `trace_id` in a request
/// names the call itself, so the filter is `for_trace_id`.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
pub struct LogFilter {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub service: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub for_trace_id: Option<String>,
}

impl LogFilter {
    pub fn validate(&self) -> Result<(), FieldError> {
        let word = |s: &str| {
            !s.is_empty()
                && s.len() <= 64
                && s.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
        };
        for (f, v) in [
            ("service", &self.service),
            ("kind", &self.kind),
            ("for_trace_id", &self.for_trace_id),
        ] {
            if v.as_deref().is_some_and(|v| !word(v)) {
                return bad(f, "must match [A-Za-z0-9._-]{1,64}");
            }
        }
        Ok(())
    }
}

/// `pull_logs`: from logship's spool; from control's audit log (control's
/// records only, filtered here) when logship does not answer.
pub fn pull_logs(
    run_dir: &Path,
    audit: &crate::audit::AuditLog,
    (since, until, limit): (i64, i64, usize),
    f: &LogFilter,
    trace_id: &str,
) -> Value {
    let params = json!({"since": since, "until": until, "limit": limit,
        "service": f.service, "kind": f.kind, "trace_id": f.for_trace_id});
    match call(run_dir, "pull_logs", params, trace_id) {
        Ok(mut v) => {
            v["since"] = json!(since);
            v["until"] = json!(until);
            v["source"] = json!("logship spool");
            v
        }
        Err(e) => {
            let field = |v: &Value, k: &str| v.get(k).and_then(Value::as_str).map(str::to_owned);
            let records: Vec<Value> = audit
                .read_window(since, until, usize::MAX)
                .into_iter()
                .filter(|_| f.service.as_deref().is_none_or(|s| s == "control"))
                .filter(|v| f.kind.is_none() || field(v, "kind") == f.kind)
                .filter(|v| f.for_trace_id.is_none() || field(v, "trace_id") == f.for_trace_id)
                .collect();
            let records = records[records.len().saturating_sub(limit)..].to_vec();
            json!({"since": since, "until": until, "count": records.len(), "records": records,
                   "source": format!("control audit log only ({e})")})
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn set(v: Value) -> Result<crate::command::Params, FieldError> {
        crate::command::Command::ConfigSet.validate(v.as_object().unwrap(), 0)
    }

    #[test]
    fn siem_keys_are_validated_by_name() {
        let ok = set(json!({"siem_endpoint": "10.0.2.2:6514",
            "siem_ca_pem": "-----BEGIN CERTIFICATE-----\nMII\n-----END CERTIFICATE-----\n",
            "siem_server_name": "siem.test"}));
        assert!(ok.is_ok(), "{ok:?}");
        let e = set(json!({"siem_ca_pem": "hello"})).unwrap_err();
        assert!(e.0.starts_with("siem_ca_pem:"), "{e:?}");
        let e = set(json!({"siem_server_name": "a b"})).unwrap_err();
        assert!(e.0.starts_with("siem_server_name:"), "{e:?}");
        let e = set(json!({"siem_spki_sha256": "abc"})).unwrap_err();
        assert!(e.0.starts_with("siem_spki_sha256:"), "{e:?}");
        set(json!({"siem_spki_sha256": null})).expect("null clears the pin");
    }

    #[test]
    fn only_siem_keys_go_to_logship() {
        let p: ConfigSet = serde_json::from_value(json!({"backend": ["10.0.0.0/8"]})).unwrap();
        assert_eq!(siem_params(&p), None);
        let p: ConfigSet =
            serde_json::from_value(json!({"siem_endpoint": "h:1", "siem_spki_sha256": null}))
                .unwrap();
        assert_eq!(
            siem_params(&p),
            Some(json!({"siem_endpoint": "h:1", "siem_spki_sha256": null}))
        );
    }

    #[test]
    fn pull_logs_filters_are_checked() {
        let p = |v: Value| crate::command::Command::PullLogs.validate(v.as_object().unwrap(), 0);
        match p(json!({"service": "spa", "kind": "spa.permit", "for_trace_id": "abc-1"})) {
            Ok(crate::command::Params::PullLogs(crate::params::LogWindow { filter, .. })) => {
                assert_eq!(filter.kind.as_deref(), Some("spa.permit"));
                assert_eq!(filter.for_trace_id.as_deref(), Some("abc-1"));
            }
            other => panic!("{other:?}"),
        }
        let e = p(json!({"kind": "a b"})).unwrap_err();
        assert!(e.0.starts_with("kind:"), "{e:?}");
    }

    #[test]
    fn without_logship_pull_logs_reads_controls_audit_log() {
        let dir = tempfile::tempdir().unwrap();
        let audit = crate::audit::AuditLog::new(dir.path(), 1 << 20, 4);
        for t in ["a", "b"] {
            let mut m = serde_json::Map::new();
            m.insert("trace_id".into(), t.into());
            audit.record("control.call", m);
        }
        let now = time::OffsetDateTime::now_utc().unix_timestamp();
        let f = LogFilter {
            for_trace_id: Some("b".into()),
            ..Default::default()
        };
        let v = pull_logs(dir.path(), &audit, (now - 60, now + 60, 100), &f, "t");
        assert_eq!(v["count"], 1, "{v}");
        assert!(
            v["source"]
                .as_str()
                .unwrap()
                .contains("unavailable: logship"),
            "{v}"
        );
    }
}
