//! One handler per control command, named in the command table
//! ([`crate::command`]). A handler receives its command's validated
//! parameters and the call's context; scope, approval and validation have
//! already been checked. Commands owned by another service forward to its
//! local RPC socket with the command name as the method.

use std::sync::atomic::Ordering;

use serde_json::{json, Value};

use crate::command::Command;
use crate::commands::Control;
use crate::keys::{Key, KeyConfig};
use crate::params::{
    ConfigSet, Empty, KeyAdd, KeyRemove, LogWindow, SpaUserSet, UpdateCcd, UserOnly, VpnUserCreate,
    VpnUserRenew,
};
use crate::scope::Scopes;

/// What a handler knows about the call besides its parameters.
pub(crate) struct Ctx<'a> {
    pub command: Command,
    /// The calling key (still authorized at the start of the call).
    pub key: &'a Key,
    pub trace_id: &'a str,
}

/// Why a handler did not do its job.
#[derive(Debug)]
pub(crate) enum HandlerError {
    /// The caller may not do this (audited as `denied`).
    Denied(String),
    /// It was tried and failed (audited as `error`).
    Failed(String),
}

impl From<String> for HandlerError {
    fn from(e: String) -> Self {
        HandlerError::Failed(e)
    }
}

type Out = Result<Value, HandlerError>;

pub(crate) fn help(ctl: &Control, _: Empty, cx: &Ctx<'_>) -> Out {
    let cmds: Vec<Value> = Command::ALL
        .iter()
        .filter(|c| cx.key.scopes.allows(**c))
        .map(|c| {
            json!({"command": c.name(), "scope": c.scope(), "summary": c.summary(),
                   "approval_required": ctl.approval_required(*c)})
        })
        .collect();
    Ok(json!({"commands": cmds, "scopes": cx.key.scopes.list()}))
}

pub(crate) fn health(ctl: &Control, _: Empty, _cx: &Ctx<'_>) -> Out {
    let (tls, tls_health) = ctl.peer_health("tls-front");
    Ok(json!({
        "service": "control",
        "status": "ok",
        "host_key_fingerprint": ctl.host_fingerprint,
        "uptime_secs": ctl.started.elapsed().as_secs(),
        "sessions": ctl.sessions.load(Ordering::Relaxed),
        "services": {"spa": ctl.peer_health("spa").0, "vpn": ctl.peer_health("vpn").0, "tls-front": tls},
        // The pin `gwos connect --pin` needs; null when tls-front does not answer.
        "tls_spki_sha256": tls_health.and_then(|h| h.get("spki_sha256").cloned()).unwrap_or(Value::Null),
        "siem": crate::siem::status(&ctl.run_dir),
    }))
}

// vpn's RPC names the user `name` and nests the networks in `policy`.
pub(crate) fn vpn_user_create(ctl: &Control, p: VpnUserCreate, cx: &Ctx<'_>) -> Out {
    let mut v = json!({"name": p.user, "public_key": p.public_key});
    if let Some(a) = p.address {
        v["address"] = json!(a);
    }
    if let Some(a) = p.allowed {
        v["policy"] = json!({"allowed": a});
    }
    if let Some(s) = p.expires_secs {
        v["expires_secs"] = json!(s);
    }
    ctl.forward("vpn", cx.command.name(), v, cx.trace_id)
}

pub(crate) fn vpn_user_renew(ctl: &Control, p: VpnUserRenew, cx: &Ctx<'_>) -> Out {
    ctl.forward(
        "vpn",
        cx.command.name(),
        json!({"name": p.user, "expires_secs": p.expires_secs}),
        cx.trace_id,
    )
}

/// vpn commands that name one user (`name` in the vpn's RPC).
pub(crate) fn forward_vpn_user(ctl: &Control, p: UserOnly, cx: &Ctx<'_>) -> Out {
    ctl.forward(
        "vpn",
        cx.command.name(),
        json!({"name": p.user}),
        cx.trace_id,
    )
}

pub(crate) fn vpn_user_delete(ctl: &Control, p: UserOnly, cx: &Ctx<'_>) -> Out {
    ctl.forward(
        "vpn",
        cx.command.name(),
        json!({"name": p.user}),
        cx.trace_id,
    )
}

pub(crate) fn update_ccd(ctl: &Control, p: UpdateCcd, cx: &Ctx<'_>) -> Out {
    ctl.forward(
        "vpn",
        cx.command.name(),
        json!({"name": p.user, "policy": {"allowed": p.allowed}}),
        cx.trace_id,
    )
}

/// Parameterless vpn commands.
pub(crate) fn forward_vpn(ctl: &Control, _: Empty, cx: &Ctx<'_>) -> Out {
    ctl.forward("vpn", cx.command.name(), json!({}), cx.trace_id)
}

/// Trait for spa commands: their parameters go to spa as validated.
pub(crate) trait SpaParams: serde::Serialize {}
impl SpaParams for SpaUserSet {}
impl SpaParams for UserOnly {}
impl SpaParams for Empty {}

pub(crate) fn forward_spa<P: SpaParams>(ctl: &Control, p: P, cx: &Ctx<'_>) -> Out {
    let v = serde_json::to_value(&p).map_err(|e| format!("encoding spa parameters: {e}"))?;
    ctl.forward("spa", cx.command.name(), v, cx.trace_id)
}

pub(crate) fn control_key_add(ctl: &Control, p: KeyAdd, cx: &Ctx<'_>) -> Out {
    let scopes = Scopes::parse(&p.scopes)?;
    if !cx.key.scopes.covers(&scopes) {
        return Err(HandlerError::Denied(format!(
            "cannot grant scopes this key does not hold itself ({})",
            cx.key.scopes.list().join(", ")
        )));
    }
    let c = KeyConfig {
        key: p.key.trim().to_owned(),
        scopes: scopes.list(),
        comment: p.comment,
        added_by: Some(cx.key.fingerprint.clone()),
        added_at: Some(gwos_core::event::now_rfc3339()),
    };
    let k = ctl.keys.lock().unwrap_or_else(|p| p.into_inner()).add(c)?;
    Ok(json!({"key": k.describe()}))
}

/// A key may only remove keys whose every scope it holds itself (no
/// `keys:write` key revoking an `admin`).
pub(crate) fn control_key_remove(ctl: &Control, p: KeyRemove, cx: &Ctx<'_>) -> Out {
    let mut keys = ctl.keys.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(target) = keys.find(&p.fingerprint) {
        if !cx.key.scopes.covers(&target.scopes) {
            return Err(HandlerError::Denied(format!(
                "key {} does not hold all scopes of key {} ({}); it cannot remove it",
                cx.key.fingerprint,
                target.fingerprint,
                target.scopes.list().join(", ")
            )));
        }
    }
    let k = keys.remove(&p.fingerprint)?;
    Ok(json!({"removed": k.describe()}))
}

pub(crate) fn control_key_list(ctl: &Control, _: Empty, _cx: &Ctx<'_>) -> Out {
    let keys: Vec<Value> = ctl
        .keys
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .all()
        .map(|k| k.describe())
        .collect();
    Ok(json!({"keys": keys}))
}

pub(crate) fn config_get(ctl: &Control, _: Empty, _cx: &Ctx<'_>) -> Out {
    Ok(ctl.config_view())
}

pub(crate) fn config_set(ctl: &Control, p: ConfigSet, cx: &Ctx<'_>) -> Out {
    // DNS is the vpn's to apply (client configs, allowed sets, the DNS drop
    // rules): it goes there first, and a change the vpn refuses is not stored.
    if let Some(dns) = &p.dns {
        ctl.forward("vpn", "set_dns", json!({ "dns": dns }), cx.trace_id)
            .map_err(|e| match e {
                HandlerError::Failed(m) => HandlerError::Failed(format!("dns not applied: {m}")),
                denied => denied,
            })?;
    }
    // The SIEM keys go to logship first: settings it refuses are not saved.
    let not_applied = crate::siem::apply(&ctl.run_dir, &p, cx.trace_id)?;
    let mut rt = ctl.runtime.lock().unwrap_or_else(|p| p.into_inner());
    let mut next = rt.clone();
    next.apply(&p);
    next.save(&ctl.state_dir, ctl.state_key.as_ref())
        .map_err(|e| format!("saving runtime config: {e:#}"))?;
    *rt = next;
    drop(rt);
    let mut view = ctl.config_view();
    if let Some(why) = not_applied {
        view["siem_not_applied"] = json!(why);
    }
    Ok(view)
}

pub(crate) fn pull_logs(ctl: &Control, w: LogWindow, cx: &Ctx<'_>) -> Out {
    Ok(crate::siem::pull_logs(
        &ctl.run_dir,
        &ctl.audit,
        (w.since, w.until, w.limit),
        &w.filter,
        cx.trace_id,
    ))
}

pub(crate) fn reboot(ctl: &Control, _: Empty, cx: &Ctx<'_>) -> Out {
    ctl.forward("init", cx.command.name(), json!({}), cx.trace_id)
}

pub(crate) fn update_status(ctl: &Control, _: Empty, cx: &Ctx<'_>) -> Out {
    ctl.forward("update", "status", json!({}), cx.trace_id)
}

pub(crate) fn update_rollback(ctl: &Control, _: Empty, cx: &Ctx<'_>) -> Out {
    ctl.forward("update", "rollback", json!({}), cx.trace_id)
}

/// `update_apply` reaches the table only when it was not streamed (the
/// connection handler streams it as soon as the `exec` names it).
pub(crate) fn update_apply_not_streamed(_ctl: &Control, _: Empty, cx: &Ctx<'_>) -> Out {
    Err(format!(
        "{} streams the bundle on stdin: `ssh gwctl@gateway update_apply < bundle.update`",
        cx.command
    )
    .into())
}

/// Commands reserved in the table whose service does not exist yet.
pub(crate) fn not_available(_ctl: &Control, _: Empty, cx: &Ctx<'_>) -> Out {
    Err(format!("{} is not available in this release", cx.command).into())
}
