//! The VPN: a WireGuard concentrator on boringtun driving TUN gw0, fed by tls-front over 127.0.0.1:51820.
//!
//! Data flow: client → (tls-front, one local UDP socket per TLS connection, or
//! the optional public UDP port) → [`engine`] (boringtun `Tunn` per user) →
//! inner source/destination check → TUN `gw0` → kernel forwarding through
//! nftables chain `vpn_forward` (per-user rules from `gwos_netfilter::vpn`).
//! Users exist only when made over the local RPC (`vpn_user_create`), which
//! control calls; the gateway stores their public keys, never private ones.

pub mod config;
pub mod engine;
pub mod rpc;
pub mod tun;
pub mod users;

use std::net::{Ipv4Addr, UdpSocket};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use base64::Engine as _;
use boringtun::x25519::{PublicKey, StaticSecret};
use ipnet::Ipv4Net;

pub use config::VpnConfig;

/// Loads the server key from `dir/server.key` or makes it (atomic write, 0600).
pub fn load_or_create_key(dir: &Path) -> Result<StaticSecret> {
    let path = dir.join("server.key");
    let b64 = base64::engine::general_purpose::STANDARD;
    match std::fs::read_to_string(&path) {
        Ok(text) => {
            let raw: [u8; 32] = b64
                .decode(text.trim())
                .ok()
                .and_then(|v| v.try_into().ok())
                .with_context(|| format!("{} is not a base64 32-byte key", path.display()))?;
            Ok(StaticSecret::from(raw))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let mut raw = [0u8; 32];
            rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut raw);
            let secret = StaticSecret::from(raw);
            gwos_core::state::write_atomic(
                &path,
                format!("{}\n", b64.encode(secret.to_bytes())).as_bytes(),
            )?;
            raw.fill(0);
            Ok(secret)
        }
        Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
    }
}

pub fn public_b64(secret: &StaticSecret) -> String {
    base64::engine::general_purpose::STANDARD.encode(PublicKey::from(secret).as_bytes())
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Runs the service until it fails; called by `gwosd run`.
pub fn run(ctx: gwos_core::ServiceContext) -> anyhow::Result<()> {
    let cfg: VpnConfig = ctx.site.section("vpn")?;
    let pool: Ipv4Net = cfg
        .pool
        .parse()
        .with_context(|| format!("[vpn] pool {:?}", cfg.pool))?;
    let gateway: Ipv4Addr = pool
        .hosts()
        .next()
        .context("[vpn] pool has no host addresses")?;
    let secret = load_or_create_key(&ctx.state_dir)?;
    let users_path = ctx.state_dir.join("users.json");
    let users: users::Users = gwos_core::state::read_json(&users_path)?.unwrap_or_default();

    let tun =
        tun::open(&cfg.interface).with_context(|| format!("creating TUN {}", cfg.interface))?;
    tun::configure(&cfg.interface, gateway, pool.prefix_len(), cfg.mtu)
        .with_context(|| format!("configuring {}", cfg.interface))?;
    let mut socks =
        vec![UdpSocket::bind(&cfg.listen).with_context(|| format!("binding {}", cfg.listen))?];
    if let Some(p) = &cfg.public_listen {
        socks.push(UdpSocket::bind(p).with_context(|| format!("binding {p}"))?);
    }
    let engine = Arc::new(engine::Engine::new(
        secret.clone(),
        gateway,
        pool,
        Duration::from_secs(cfg.idle_timeout_secs.max(1)),
        socks,
        tun,
        &ctx.name,
    ));
    let site_dns = users::parse_dns(&cfg.dns).context("[vpn] dns")?;
    let svc = Arc::new(rpc::Service {
        cfg: cfg.clone(),
        pool,
        gateway,
        server_public: public_b64(&secret),
        users_path,
        users: std::sync::Mutex::new(users),
        engine: engine.clone(),
        name: ctx.name.clone(),
        site_dns,
    });
    // A grant that ended while the vpn (or the box) was down is gone before
    // any packet of it is carried.
    svc.expire(unix_now()).context("removing expired grants")?;
    svc.load_engine()?;
    svc.apply_firewall()?;
    engine.start()?;
    let expiry = svc.clone();
    std::thread::Builder::new()
        .name("vpn-grants".into())
        .spawn(move || loop {
            std::thread::sleep(Duration::from_secs(1));
            if let Err(e) = expiry.expire(unix_now()) {
                gwos_core::emit(
                    &gwos_core::Event::new(&expiry.name, "vpn.grant_expiry_error")
                        .field("error", format!("{e:#}")),
                );
            }
        })?;
    gwos_core::emit(
        &gwos_core::Event::new(&ctx.name, "vpn.start")
            .field("interface", cfg.interface.clone())
            .field("gateway", gateway.to_string())
            .field("public_key", svc.server_public.clone()),
    );
    let sock = ctx.socket_path("vpn");
    let allowed = vec![0, cfg.control_uid];
    let handler: gwos_core::rpc::Handler = Arc::new(move |req, peer| svc.handle(req, peer));
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?
        .block_on(gwos_core::rpc::serve(&sock, allowed, handler))
}
