//! One call: command name + request body from one `exec` channel → JSON
//! response and one audit record. Order: known command → key still
//! authorized → size cap → JSON envelope (only to find `trace_id`) → scope
//! → approval (risky commands, if configured) → strict parameter validation
//! → action. Actions that change another service's state go over that
//! service's local RPC socket; control itself holds no privileges.

use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::Instant;

use serde_json::{json, Map, Value};

use crate::audit::AuditLog;
use crate::config::{ControlConfig, Effective, RuntimeConfig};
use crate::keys::{KeyConfig, KeyStore};
use crate::request::{self, Params};
use crate::scope;

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

fn now() -> i64 {
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
        let Some(spec) = scope::command(command) else {
            return Outcome::Invalid(format!(
                "unknown command {command:?}; `help` lists the commands this key may call"
            ));
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
        if !key.scopes.allows(spec) {
            return Outcome::Denied(format!(
                "key {} ({}) lacks scope {} needed by {}",
                key.fingerprint,
                key.comment,
                spec.scope.unwrap_or("-"),
                spec.name
            ));
        }
        if spec.risky && self.site.require_approval.iter().any(|c| c == spec.name) {
            match self.check_approval(&key.fingerprint, spec.name, &env) {
                Ok(approver) => n.approved_by = Some(approver),
                Err(e) => return Outcome::Denied(e),
            }
        }
        let params = match request::validate_params(spec.name, &env.params, now()) {
            Ok(p) => p,
            Err(e) => return Outcome::Invalid(e.0),
        };
        match self.execute(spec.name, params, &key, &n.trace_id) {
            Ok(Value::Object(m)) => Outcome::Ok(m),
            Ok(other) => Outcome::Ok(Map::from_iter([("result".to_string(), other)])),
            Err(e) => Outcome::Failed(e),
        }
    }

    /// Returns the approver's fingerprint.
    fn check_approval(
        &self,
        caller_fp: &str,
        command: &str,
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
            command,
            &env.params,
            trace,
            now(),
        )?;
        Ok(approver.fingerprint)
    }

    fn forward(
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
    fn peer_health(&self, service: &str) -> (Value, Option<Value>) {
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

    fn execute(
        &self,
        command: &str,
        params: Params,
        key: &crate::keys::Key,
        trace_id: &str,
    ) -> Result<Value, String> {
        let to_value = |p: &dyn erased::Ser| p.value();
        match (command, params) {
            ("help", _) => {
                let require = &self.site.require_approval;
                let cmds: Vec<Value> = scope::COMMANDS
                    .iter()
                    .filter(|c| key.scopes.allows(c))
                    .map(|c| {
                        json!({"command": c.name, "scope": c.scope, "summary": c.summary,
                                    "approval_required": require.iter().any(|r| r == c.name)})
                    })
                    .collect();
                Ok(json!({"commands": cmds, "scopes": key.scopes.list()}))
            }
            ("health", _) => {
                let (tls, tls_health) = self.peer_health("tls-front");
                Ok(json!({
                    "service": "control",
                    "status": "ok",
                    "host_key_fingerprint": self.host_fingerprint,
                    "uptime_secs": self.started.elapsed().as_secs(),
                    "sessions": self.sessions.load(Ordering::Relaxed),
                    "services": {"spa": self.peer_health("spa").0, "vpn": self.peer_health("vpn").0, "tls-front": tls},
                    // The pin `gwos connect --pin` needs; null when tls-front does not answer.
                    "tls_spki_sha256": tls_health.and_then(|h| h.get("spki_sha256").cloned()).unwrap_or(Value::Null),
                    "siem": crate::siem::status(&self.run_dir),
                }))
            }
            // vpn's RPC names the user `name` and nests the networks in `policy`.
            ("vpn_user_create", Params::VpnUserCreate(p)) => {
                let mut v = json!({"name": p.user, "public_key": p.public_key});
                if let Some(a) = p.address {
                    v["address"] = json!(a);
                }
                if let Some(a) = p.allowed {
                    v["policy"] = json!({"allowed": a});
                }
                self.forward("vpn", command, v, trace_id)
            }
            ("update_ccd", Params::UpdateCcd(p)) => self.forward(
                "vpn",
                command,
                json!({"name": p.user, "policy": {"allowed": p.allowed}}),
                trace_id,
            ),
            ("vpn_user_delete", Params::User(p)) => {
                self.forward("vpn", command, json!({"name": p.user}), trace_id)
            }
            ("vpn_user_list" | "vpn_status", _) => {
                self.forward("vpn", command, json!({}), trace_id)
            }
            ("spa_user_set", Params::SpaUserSet(p)) => {
                self.forward("spa", command, to_value(&p), trace_id)
            }
            ("spa_user_delete", Params::User(p)) => {
                self.forward("spa", command, to_value(&p), trace_id)
            }
            ("spa_user_list", _) => self.forward("spa", command, json!({}), trace_id),
            ("control_key_add", Params::KeyAdd(p)) => {
                let scopes = scope::Scopes::parse(&p.scopes)?;
                if !key.scopes.covers(&scopes) {
                    return Err(format!(
                        "cannot grant scopes this key does not hold itself ({})",
                        key.scopes.list().join(", ")
                    ));
                }
                let c = KeyConfig {
                    key: p.key.trim().to_owned(),
                    scopes: scopes.list(),
                    comment: p.comment,
                    added_by: Some(key.fingerprint.clone()),
                    added_at: Some(gwos_core::event::now_rfc3339()),
                };
                let k = self.keys.lock().unwrap_or_else(|p| p.into_inner()).add(c)?;
                Ok(json!({"key": k.describe()}))
            }
            ("control_key_remove", Params::KeyRemove(p)) => {
                let k = self
                    .keys
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .remove(&p.fingerprint)?;
                Ok(json!({"removed": k.describe()}))
            }
            ("control_key_list", _) => {
                let keys: Vec<Value> = self
                    .keys
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .all()
                    .map(|k| k.describe())
                    .collect();
                Ok(json!({"keys": keys}))
            }
            ("config_get", _) => Ok(self.config_view()),
            ("config_set", Params::ConfigSet(p)) => {
                let mut rt = self.runtime.lock().unwrap_or_else(|p| p.into_inner());
                let mut next = rt.clone();
                next.apply(&p);
                let not_applied = crate::siem::apply(&self.run_dir, &p, trace_id)?;
                gwos_core::state::write_json(&self.state_dir.join("runtime.json"), &next)
                    .map_err(|e| format!("saving runtime config: {e:#}"))?;
                *rt = next;
                drop(rt);
                let mut view = self.config_view();
                if let Some(why) = not_applied {
                    view["siem_not_applied"] = json!(why);
                }
                Ok(view)
            }
            (
                "pull_logs",
                Params::PullLogs {
                    since,
                    until,
                    limit,
                    filter,
                },
            ) => Ok(crate::siem::pull_logs(
                &self.run_dir,
                &self.audit,
                (since, until, limit),
                &filter,
                trace_id,
            )),
            ("reboot", _) => {
                let path = gwos_core::context::socket_path(&self.run_dir, "init");
                if !path.exists() {
                    return Err(format!(
                        "service unavailable: init (no socket at {})",
                        path.display()
                    ));
                }
                self.forward("init", "reboot", json!({}), trace_id)
            }
            (
                "spawn_browser_container"
                | "terminate_session"
                | "update_apply"
                | "update_status"
                | "update_rollback",
                _,
            ) => Err(format!("{command} is not available in this release")),
            (c, _) => Err(format!("internal error: no handler for {c}")),
        }
    }

    fn config_view(&self) -> Value {
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
                "siem_server_name": rt.siem_server_name,
                "dns": rt.dns,
                "idle_timeout_secs": eff.idle_timeout.as_secs(),
                "auth_timeout_secs": eff.auth_timeout.as_secs(),
                "rpc_timeout_secs": eff.rpc_timeout.as_secs(),
            },
            "siem": crate::siem::status(&self.run_dir),
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

mod erased {
    /// Serialize any validated parameter struct to a JSON value.
    pub trait Ser {
        fn value(&self) -> serde_json::Value;
    }
    impl<T: serde::Serialize> Ser for T {
        fn value(&self) -> serde_json::Value {
            serde_json::to_value(self).unwrap_or(serde_json::Value::Null)
        }
    }
}
