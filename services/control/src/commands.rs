//! One call: command name + request body from one `exec` channel → JSON
//! response and one audit record. Order: known command (parsed once into
//! [`Command`]) → key still authorized → size cap → JSON envelope (only to
//! find `trace_id`) → scope → approval (risky commands, if configured) →
//! strict parameter validation → the command's handler
//! ([`crate::handlers`]). Actions that change another service's state go
//! over that service's local RPC socket; control itself holds no privileges.

use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::atomic::AtomicUsize;
use std::sync::Mutex;
use std::time::Instant;

use serde_json::{json, Map, Value};

use crate::audit::AuditLog;
use crate::command::{Command, Risk};
use crate::config::{ControlConfig, Effective, RuntimeConfig};
use crate::handlers::Ctx;
use crate::keys::KeyStore;
use crate::request;

/// Shared service state.
pub struct Control {
    pub site: ControlConfig,
    pub state_dir: PathBuf,
    pub run_dir: PathBuf,
    pub keys: Mutex<KeyStore>,
    pub runtime: Mutex<RuntimeConfig>,
    pub audit: AuditLog,
    pub host_fingerprint: String,
    pub started: Instant,
    pub sessions: AtomicUsize,
}

/// Who is calling.
#[derive(Debug, Clone)]
pub struct Caller {
    pub fingerprint: String,
    pub source: IpAddr,
}

/// What the SSH layer hands over for one exec channel.
#[derive(Debug, Default)]
pub struct CallInput {
    pub command: String,
    pub body: Vec<u8>,
    /// More than the cap was sent.
    pub overflow: bool,
    /// Environment variables the client tried to set (refused).
    pub refused_env: Vec<String>,
}

/// What a call learned on the way, for its audit record.
#[derive(Default)]
struct Notes {
    trace_id: String,
    arguments: Value,
    key_comment: String,
    approved_by: Option<String>,
}

enum Outcome {
    Ok(Map<String, Value>),
    Denied(String),
    Invalid(String),
    Failed(String),
}

pub(crate) fn now() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp()
}

/// Printable, bounded copy of a client-supplied string for logs.
pub fn sanitize(s: &str, max: usize) -> String {
    s.chars().filter(|c| !c.is_control()).take(max).collect()
}

impl Control {
    pub fn effective(&self) -> Effective {
        crate::config::effective(
            &self.site,
            &self.runtime.lock().unwrap_or_else(|p| p.into_inner()),
        )
    }

    /// Handles one call; returns the response object and the exit status.
    pub fn call(&self, caller: &Caller, input: CallInput) -> (Value, u32) {
        let t0 = Instant::now();
        let mut n = Notes {
            trace_id: gwos_core::event::new_trace_id(),
            ..Default::default()
        };
        let command = sanitize(input.command.trim(), 64);
        let outcome = self.call_inner(caller, &input, &command, &mut n);
        let Notes {
            trace_id,
            arguments,
            key_comment,
            approved_by,
        } = n;
        let (result, error, fields) = match outcome {
            Outcome::Ok(f) => ("ok", None, f),
            Outcome::Denied(e) => ("denied", Some(e), Map::new()),
            Outcome::Invalid(e) => ("invalid", Some(e), Map::new()),
            Outcome::Failed(e) => ("error", Some(e), Map::new()),
        };
        let mut rec = Map::new();
        rec.insert("trace_id".into(), json!(trace_id));
        rec.insert("key_fingerprint".into(), json!(caller.fingerprint));
        rec.insert("key_comment".into(), json!(key_comment));
        rec.insert("source_ip".into(), json!(caller.source.to_string()));
        rec.insert("command".into(), json!(command));
        rec.insert("arguments".into(), arguments);
        rec.insert("result".into(), json!(result));
        rec.insert("error".into(), json!(error));
        rec.insert(
            "duration_ms".into(),
            json!(t0.elapsed().as_secs_f64() * 1000.0),
        );
        if let Some(a) = approved_by {
            rec.insert("approved_by".into(), json!(a));
        }
        if !input.refused_env.is_empty() {
            rec.insert("refused_env".into(), json!(input.refused_env));
        }
        self.audit.record("control.call", rec);
        let mut resp = Map::new();
        resp.insert("ok".into(), json!(error.is_none()));
        resp.insert("trace_id".into(), json!(trace_id));
        match error {
            Some(e) => {
                resp.insert("error".into(), json!(e));
            }
            None => resp.extend(fields),
        }
        (Value::Object(resp), if result == "ok" { 0 } else { 1 })
    }

    fn call_inner(
        &self,
        caller: &Caller,
        input: &CallInput,
        command: &str,
        n: &mut Notes,
    ) -> Outcome {
        let command: Command = match command.parse() {
            Ok(c) => c,
            Err(e) => return Outcome::Invalid(format!("{e}")),
        };
        let key = self
            .keys
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .find(&caller.fingerprint)
            .cloned();
        let Some(key) = key else {
            return Outcome::Denied(format!(
                "key {} is no longer authorized",
                caller.fingerprint
            ));
        };
        n.key_comment = key.comment.clone();
        let max = self.site.max_request_bytes;
        if input.overflow || input.body.len() > max {
            return Outcome::Invalid(format!("request larger than {max} bytes"));
        }
        let env = match request::parse_envelope(&input.body, max) {
            Ok(e) => e,
            Err(e) => return Outcome::Invalid(e.0),
        };
        if let Some(t) = &env.trace_id {
            n.trace_id = t.clone();
        }
        n.arguments = request::redact(&Value::Object(env.params.clone()));
        if !key.scopes.allows(command) {
            return Outcome::Denied(format!(
                "key {} ({}) lacks scope {} needed by {command}",
                key.fingerprint,
                key.comment,
                command.scope().unwrap_or("-"),
            ));
        }
        if self.approval_required(command) {
            match self.check_approval(&key.fingerprint, command, &env) {
                Ok(approver) => n.approved_by = Some(approver),
                Err(e) => return Outcome::Denied(e),
            }
        }
        let params = match command.validate(&env.params, now()) {
            Ok(p) => p,
            Err(e) => return Outcome::Invalid(e.0),
        };
        let cx = Ctx {
            command,
            key: &key,
            trace_id: &n.trace_id,
        };
        match params.execute(self, &cx) {
            Ok(Value::Object(m)) => Outcome::Ok(m),
            Ok(other) => Outcome::Ok(Map::from_iter([("result".to_string(), other)])),
            Err(e) => Outcome::Failed(e),
        }
    }

    /// True if this call needs a second admin key's approval.
    pub(crate) fn approval_required(&self, command: Command) -> bool {
        command.risk() == Risk::High && self.site.require_approval.contains(&command)
    }

    /// Returns the approver's fingerprint.
    fn check_approval(
        &self,
        caller_fp: &str,
        command: Command,
        env: &request::Envelope,
    ) -> Result<String, String> {
        let Some(a) = &env.approval else {
            return Err(format!("{command} needs a second admin key's approval (field \"approval\"); see docs/control.md"));
        };
        let Some(trace) = &env.trace_id else {
            return Err("an approved request must carry the trace_id that was signed".into());
        };
        let token = crate::approval::parse(a)?;
        if token.key == caller_fp {
            return Err("approval must come from a different key than the caller's".into());
        }
        let approver = self
            .keys
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .find(&token.key)
            .cloned();
        let approver =
            approver.ok_or_else(|| format!("approver key {} is not a control key", token.key))?;
        if !approver.scopes.has("admin") {
            return Err(format!(
                "approver key {} does not hold admin",
                approver.fingerprint
            ));
        }
        crate::approval::verify(
            &token,
            &approver.ed25519,
            command.name(),
            &env.params,
            trace,
            now(),
        )?;
        Ok(approver.fingerprint)
    }

    pub(crate) fn forward(
        &self,
        service: &str,
        method: &str,
        params: Value,
        trace_id: &str,
    ) -> Result<Value, String> {
        let path = gwos_core::context::socket_path(&self.run_dir, service);
        if !path.exists() {
            return Err(format!(
                "service unavailable: {service} (no socket at {})",
                path.display()
            ));
        }
        let timeout = self.effective().rpc_timeout;
        match gwos_core::rpc::call(&path, method, params, Some(trace_id), timeout) {
            Ok(r) if r.ok => Ok(r.result),
            Ok(r) => Err(format!(
                "{service}: {}",
                r.error.unwrap_or_else(|| "failed without a message".into())
            )),
            Err(e) => Err(format!("service unavailable: {service} ({e:#})")),
        }
    }

    /// A peer's `health`: (status for the report, its result when it answered ok).
    pub(crate) fn peer_health(&self, service: &str) -> (Value, Option<Value>) {
        let path = gwos_core::context::socket_path(&self.run_dir, service);
        if !path.exists() {
            return (json!("unavailable"), None);
        }
        match gwos_core::rpc::call(
            &path,
            "health",
            json!({}),
            None,
            std::time::Duration::from_secs(2),
        ) {
            Ok(r) if r.ok => (json!("ok"), Some(r.result)),
            Ok(r) => (
                json!(format!("error: {}", r.error.unwrap_or_default())),
                None,
            ),
            Err(e) => (json!(format!("unavailable: {e}")), None),
        }
    }

    pub(crate) fn config_view(&self) -> Value {
        let rt = self
            .runtime
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let eff = crate::config::effective(&self.site, &rt);
        json!({
            "overrides": rt,
            "effective": {
                "backend": eff.backend.iter().map(|n| n.to_string()).collect::<Vec<_>>(),
                "siem_endpoint": rt.siem_endpoint,
                "dns": rt.dns,
                "idle_timeout_secs": eff.idle_timeout.as_secs(),
                "auth_timeout_secs": eff.auth_timeout.as_secs(),
                "rpc_timeout_secs": eff.rpc_timeout.as_secs(),
            },
            "site": {
                "listen": self.site.listen,
                "backend": self.site.backend,
                "max_sessions": self.site.max_sessions,
                "max_auth_tries": self.site.max_auth_tries,
                "max_request_bytes": self.site.max_request_bytes,
                "require_approval": self.site.require_approval,
            },
        })
    }
}
