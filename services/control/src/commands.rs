//! One call: command name + request body from one `exec` channel → JSON
//! response and one audit record. Order: known command (parsed once into
//! [`Command`]) → key still authorized → size cap → JSON envelope (only to
//! find `trace_id`) → scope → approval (risky commands, if configured) →
//! strict parameter validation → durable intent record (changes only; refused
//! if it cannot be written) → approval marked used → the command's handler
//! ([`crate::handlers`]) → the call's record. Actions that change another service's state go
//! over that service's local RPC socket; control itself holds no privileges.

use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::atomic::AtomicUsize;
use std::sync::Mutex;
use std::time::Instant;

use serde_json::{json, Map, Value};

use crate::audit::AuditLog;
use crate::command::{Command, Effect, Risk};
use crate::config::{ControlConfig, Effective, RuntimeConfig};
use crate::handlers::{Ctx, HandlerError};
use crate::keys::KeyStore;
use crate::request;

/// Shared service state.
pub struct Control {
    pub site: ControlConfig,
    pub state_dir: PathBuf,
    pub run_dir: PathBuf,
    pub keys: Mutex<KeyStore>,
    /// Approval tokens already used (F5: one call per token).
    pub approvals: Mutex<crate::approval::UsedApprovals>,
    pub runtime: Mutex<RuntimeConfig>,
    /// Seals keys.json and runtime.json (from PID 1; `None`: no runtime state).
    pub state_key: Option<gwos_core::sealed::SealKey>,
    pub audit: AuditLog,
    /// Aggregates refusals before authentication (F7).
    pub refusals: Mutex<crate::refusals::Refusals>,
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
    /// The connection as a whole buffered too much (several channels at once).
    pub buffer_full: bool,
    /// Environment variables the client tried to set (refused).
    pub refused_env: Vec<String>,
}

/// What a call learned on the way, for its audit records.
#[derive(Default)]
struct Notes {
    trace_id: String,
    /// Validated, redacted, bounded parameters; `null` until validated.
    arguments: Value,
    arguments_truncated: bool,
    /// Field names of a request refused before validation.
    argument_names: Option<Value>,
    key_comment: String,
    approved_by: Option<String>,
}

/// Longest error message kept in an audit record.
const MAX_RECORD_ERROR: usize = 512;

enum Outcome {
    Ok(Map<String, Value>),
    Denied(String),
    Invalid(String),
    Failed(String),
}

pub(crate) fn now() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp()
}

/// `s` cut at `max` bytes (on a character boundary), marked with `…`.
pub fn bounded_text(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_owned();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}

/// Printable, bounded copy of a client-supplied string for logs.
pub fn sanitize(s: &str, max: usize) -> String {
    s.chars().filter(|c| !c.is_control()).take(max).collect()
}

impl Control {
    /// Loads keys and runtime overrides from `state_dir`.
    pub fn new(
        site: ControlConfig,
        state_dir: &std::path::Path,
        run_dir: &std::path::Path,
        host_fingerprint: String,
    ) -> anyhow::Result<Self> {
        // keys.json and runtime.json are sealed with PID 1's per-machine key
        // (review F10): a file edited offline is refused, the site keys stay.
        let state_key = crate::keys::state_key(run_dir);
        let keys = KeyStore::load(&site.keys, state_dir, state_key.clone())?;
        let runtime = RuntimeConfig::load(state_dir, state_key.as_ref());
        Ok(Self {
            audit: AuditLog::new(state_dir, site.audit_max_bytes, site.audit_files),
            refusals: Mutex::new(crate::refusals::Refusals::default()),
            site,
            state_dir: state_dir.to_owned(),
            run_dir: run_dir.to_owned(),
            keys: Mutex::new(keys),
            approvals: Mutex::new(crate::approval::UsedApprovals::load(state_dir)?),
            runtime: Mutex::new(runtime),
            state_key,
            host_fingerprint,
            started: Instant::now(),
            sessions: AtomicUsize::new(0),
        })
    }

    /// Records a refusal that happened before authentication, unless the
    /// source already had its share of records in this window (then it is
    /// only counted; see [`crate::refusals`]).
    pub fn record_unauthenticated(
        &self,
        kind: &'static str,
        source: std::net::IpAddr,
        reason: &str,
        mut fields: Map<String, Value>,
    ) {
        let admitted = self
            .refusals
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .admit(kind, &source.to_string(), reason, Instant::now());
        if admitted {
            fields.insert("source_ip".into(), json!(source.to_string()));
            fields.insert("count".into(), json!(1));
            self.audit.record(kind, fields);
        }
    }

    /// Writes the aggregate records of the windows that ended by `now`.
    pub fn flush_refusals(&self, now: Instant) {
        let summaries = self
            .refusals
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .flush(now);
        for s in summaries {
            self.audit.record(s.kind, s.fields);
        }
    }

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
        let (result, error, fields) = match outcome {
            Outcome::Ok(f) => ("ok", None, f),
            Outcome::Denied(e) => ("denied", Some(e), Map::new()),
            Outcome::Invalid(e) => ("invalid", Some(e), Map::new()),
            Outcome::Failed(e) => ("error", Some(e), Map::new()),
        };
        let mut rec = self.record_base(caller, &command, &n);
        rec.insert("result".into(), json!(result));
        rec.insert(
            "error".into(),
            json!(error.as_deref().map(|e| bounded_text(e, MAX_RECORD_ERROR))),
        );
        rec.insert("request_bytes".into(), json!(input.body.len()));
        rec.insert(
            "duration_ms".into(),
            json!(t0.elapsed().as_secs_f64() * 1000.0),
        );
        if !input.refused_env.is_empty() {
            rec.insert("refused_env".into(), json!(input.refused_env));
        }
        self.audit.record("control.call", rec);
        let mut resp = Map::new();
        resp.insert("ok".into(), json!(error.is_none()));
        resp.insert("trace_id".into(), json!(n.trace_id));
        match error {
            Some(e) => {
                resp.insert("error".into(), json!(e));
            }
            None => resp.extend(fields),
        }
        (Value::Object(resp), if result == "ok" { 0 } else { 1 })
    }

    /// Fields shared by a call's intent and result records.
    fn record_base(&self, caller: &Caller, command: &str, n: &Notes) -> Map<String, Value> {
        let mut rec = Map::new();
        rec.insert("trace_id".into(), json!(n.trace_id));
        rec.insert("key_fingerprint".into(), json!(caller.fingerprint));
        rec.insert("key_comment".into(), json!(n.key_comment));
        rec.insert("source_ip".into(), json!(caller.source.to_string()));
        rec.insert("command".into(), json!(command));
        rec.insert("arguments".into(), n.arguments.clone());
        if n.arguments_truncated {
            rec.insert("arguments_truncated".into(), json!(true));
        }
        if let Some(names) = &n.argument_names {
            rec.insert("argument_names".into(), names.clone());
        }
        if let Some(a) = &n.approved_by {
            rec.insert("approved_by".into(), json!(a));
        }
        rec
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
        if input.buffer_full {
            return Outcome::Invalid(format!(
                "more than {} bytes buffered on this connection; send requests one at a time",
                max * crate::server::MAX_BUFFERED_REQUESTS
            ));
        }
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
        // Until the parameters are valid, the record holds only their names.
        n.argument_names = Some(crate::audit::field_names(&env.params));
        if !key.scopes.allows(command) {
            return Outcome::Denied(format!(
                "key {} ({}) lacks scope {} needed by {command}",
                key.fingerprint,
                key.comment,
                command.scope().unwrap_or("-"),
            ));
        }
        let mut token = None;
        if self.approval_required(command) {
            match self.check_approval(&key.fingerprint, command, &env) {
                Ok((t, approver)) => {
                    token = Some(t);
                    n.approved_by = Some(approver);
                }
                Err(e) => return Outcome::Denied(e),
            }
        }
        let params = match command.validate(&env.params, now()) {
            Ok(p) => p,
            Err(e) => return Outcome::Invalid(e.0),
        };
        let (arguments, truncated) = crate::audit::bounded(
            request::redact(&params.to_value()),
            crate::audit::MAX_ARGUMENTS,
        );
        n.arguments = arguments;
        n.arguments_truncated = truncated;
        n.argument_names = None;
        if command.effect() == Effect::Change {
            let intent = self.record_base(caller, command.name(), n);
            if let Err(e) = self.audit.record_durable("control.intent", intent) {
                return Outcome::Failed(format!(
                    "cannot record the change in the audit log ({e}); refusing {command}"
                ));
            }
        }
        if let Some(t) = &token {
            let used = self
                .approvals
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .consume(t, now());
            if let Err(e) = used {
                return Outcome::Denied(e);
            }
        }
        let cx = Ctx {
            command,
            key: &key,
            trace_id: &n.trace_id,
        };
        match params.execute(self, &cx) {
            Ok(Value::Object(m)) => Outcome::Ok(m),
            Ok(other) => Outcome::Ok(Map::from_iter([("result".to_string(), other)])),
            Err(HandlerError::Denied(e)) => Outcome::Denied(e),
            Err(HandlerError::Failed(e)) => Outcome::Failed(e),
        }
    }

    /// True if this call needs a second admin key's approval. Once any
    /// command needs one, minting a key does too: otherwise an admin could
    /// add a second admin key and approve their own requests with it.
    pub(crate) fn approval_required(&self, command: Command) -> bool {
        let list = &self.site.require_approval;
        command.risk() == Risk::High
            && (list.contains(&command) || (command == Command::ControlKeyAdd && !list.is_empty()))
    }

    /// Checks the approval of this call; returns the token (to consume once
    /// the parameters are valid) and the approver's fingerprint.
    fn check_approval(
        &self,
        caller_fp: &str,
        command: Command,
        env: &request::Envelope,
    ) -> Result<(crate::approval::Token, String), String> {
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
        let subject = crate::approval::Subject {
            command: command.name(),
            requester: caller_fp,
            params: &env.params,
            trace_id: trace,
        };
        crate::approval::verify(&token, &approver.ed25519, &subject, now())?;
        Ok((token, approver.fingerprint))
    }

    /// Calls `method` on `service`'s local RPC socket.
    pub(crate) fn forward(
        &self,
        service: &str,
        method: &str,
        params: Value,
        trace_id: &str,
    ) -> Result<Value, HandlerError> {
        self.forward_rpc(service, method, params, trace_id)
            .map_err(HandlerError::Failed)
    }

    fn forward_rpc(
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
            "siem": crate::siem::status(&self.run_dir),
            "effective": {
                "backend": eff.backend.iter().map(|n| n.to_string()).collect::<Vec<_>>(),
                "siem_endpoint": rt.siem_endpoint,
                "siem_server_name": rt.siem_server_name,
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
