//! The TLS 1.3 front on tcp/443: rustls, carrying length-prefixed WireGuard datagrams to the vpn's local UDP socket.
//!
//! Flow: client (`gwos connect`, [`client`]) ──TLS 1.3 (AES-256-GCM or
//! ChaCha20-Poly1305 only, [`tls`])──▶ [`server`] ──one local UDP socket per
//! connection──▶ vpn 127.0.0.1:51820. The stream carries u16-BE-length
//! framed datagrams ([`frame`]). The server key is per machine (made on first
//! start); clients pin the SHA-256 of its SPKI ([`pin`]), which `health` reports.

#![forbid(unsafe_code)]

pub mod client;
pub mod frame;
pub mod pin;
pub mod server;
pub mod tls;

use std::sync::atomic::Ordering;
use std::sync::Arc;

use anyhow::Result;
use serde_json::json;

/// Runs the service until it fails; called by `gwosd run`.
pub fn run(ctx: gwos_core::ServiceContext) -> Result<()> {
    let cfg: server::FrontConfig = ctx.site.section("tls-front")?;
    let id = tls::load_or_create_identity(&ctx.state_dir, &cfg.server_name)?;
    let tls_cfg = Arc::new(tls::server_config(
        &id,
        cfg.client_ca.as_deref().map(std::path::Path::new),
    )?);
    let counters = Arc::new(server::Counters::default());
    gwos_core::emit(
        &gwos_core::Event::new(&ctx.name, "tls.start")
            .field("listen", cfg.listen.clone())
            .field("spki_sha256", id.pin.clone()),
    );
    let pin = id.pin.clone();
    let c2 = counters.clone();
    let handler: gwos_core::rpc::Handler = Arc::new(move |req, _peer| match req.method.as_str() {
        "health" => gwos_core::rpc::Response::ok(json!({
            "healthy": true,
            "status": "ok",
            "spki_sha256": pin,
            "active": c2.active.load(Ordering::Relaxed),
            "accepted": c2.accepted.load(Ordering::Relaxed),
            "refused_limit": c2.refused_limit.load(Ordering::Relaxed),
            "handshake_failed": c2.handshake_failed.load(Ordering::Relaxed),
        })),
        m => gwos_core::rpc::Response::err(format!("unknown method {m:?}")),
    });
    let sock = ctx.socket_path("tls-front");
    let allowed = vec![0, cfg.control_uid];
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let name = ctx.name.clone();
    rt.block_on(async move {
        tokio::select! {
            r = gwos_core::rpc::serve(&sock, allowed, handler) => r,
            r = server::serve(cfg, tls_cfg, counters, name) => r,
        }
    })
}
