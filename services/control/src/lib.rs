//! The SSH control channel on tcp/2222: the only way to configure a gateway;
//! allowlisted JSON commands, scoped keys, audited.
//!
//! Data flow: backend `ssh -p 2222 gwctl@gw <command> < request.json` →
//! [`server`] (backend source check and `max_sessions` at accept, the auth
//! deadline) → `conn` (russh handler: ed25519 public-key auth,
//! `max_auth_tries`, `exec` only, channel and buffer caps) → [`commands`]
//! (the [`command`] table: scope check, [`approval`], [`params`] validation,
//! intent record, handler) → local RPC to the owning service (`vpn.sock`,
//! `spa.sock`, `init.sock`) or control's own state (keys, runtime config)
//! → JSON on stdout + exit status. Every call leaves an [`audit`] record
//! (stdout event for logship/SIEM and `<state_dir>/audit.log*` for
//! `pull_logs`); refusals before authentication are aggregated per source
//! ([`refusals`]). [`client`] holds the backend-side helpers behind
//! `gwos ctl`.
#![forbid(unsafe_code)]

pub mod approval;
pub mod audit;
pub mod client;
pub mod command;
pub mod commands;
pub mod config;
mod conn;
mod handlers;
pub mod keys;
pub mod params;
pub mod refusals;
pub mod request;
pub mod scope;
pub mod server;
pub mod siem;
pub mod update;

use std::sync::Arc;

use anyhow::Context;

/// Runs the service until it fails; called by `gwosd run`.
pub fn run(ctx: gwos_core::ServiceContext) -> anyhow::Result<()> {
    let site: config::ControlConfig = ctx.site.section("control")?;
    site.validate()?;
    let host = server::host_key(&ctx.state_dir)?;
    let host_fp = keys::fingerprint(host.public_key());
    let ctl = Arc::new(commands::Control::new(
        site,
        &ctx.state_dir,
        &ctx.run_dir,
        host_fp.clone(),
    )?);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    rt.block_on(async move {
        let listener = tokio::net::TcpListener::bind(&ctl.site.listen)
            .await
            .with_context(|| format!("binding {}", ctl.site.listen))?;
        gwos_core::emit(
            &gwos_core::Event::new("control", "control.started")
                .field("listen", listener.local_addr()?.to_string())
                .field("host_key_fingerprint", host_fp)
                .field("backend", serde_json::json!(ctl.effective().backend.iter().map(|n| n.to_string()).collect::<Vec<_>>())),
        );
        let rpc = local_rpc(&ctl);
        let sock = ctx.socket_path("control");
        tokio::select! {
            r = server::serve(ctl, listener, host) => r,
            r = gwos_core::rpc::serve(&sock, vec![0], rpc) => r.context("control's local health socket"),
        }
    })
}

/// `control.sock`: PID 1's `health` probe only (uid 0). Configuration never
/// arrives this way: it comes over SSH from the backend.
fn local_rpc(ctl: &Arc<commands::Control>) -> gwos_core::rpc::Handler {
    let ctl = ctl.clone();
    Arc::new(move |req, _peer| match req.method.as_str() {
        "health" => gwos_core::rpc::Response::ok(serde_json::json!({
            "healthy": true,
            "service": "control",
            "host_key_fingerprint": ctl.host_fingerprint,
            "sessions": ctl.sessions.load(std::sync::atomic::Ordering::Relaxed),
        })),
        m => gwos_core::rpc::Response::err(format!("unknown method {m:?}")),
    })
}
