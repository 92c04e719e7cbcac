//! The listener: TLS 1.3 handshakes under a timeout and per-source and total
//! connection limits; each connection gets its own local UDP socket toward
//! the vpn, so every client is its own WireGuard endpoint.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result};
use serde::Deserialize;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream, UdpSocket};

use crate::frame;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FrontConfig {
    pub listen: String,
    /// The vpn's local UDP socket.
    pub vpn: String,
    pub handshake_timeout_secs: u64,
    /// Close a tunnel connection after this long without a frame either way.
    pub idle_timeout_secs: u64,
    pub max_connections: usize,
    pub max_per_source: usize,
    /// PEM file of CAs whose client certificates are required (mTLS), if set.
    pub client_ca: Option<String>,
    /// Name in the self-signed certificate.
    pub server_name: String,
    pub control_uid: u32,
}

impl Default for FrontConfig {
    fn default() -> Self {
        Self {
            listen: "0.0.0.0:443".into(),
            vpn: "127.0.0.1:51820".into(),
            handshake_timeout_secs: 10,
            idle_timeout_secs: 1800,
            max_connections: 1024,
            max_per_source: 16,
            client_ca: None,
            server_name: "gwos".into(),
            control_uid: gwos_core::rpc::CONTROL_UID,
        }
    }
}

#[derive(Default)]
pub struct Counters {
    pub active: AtomicU64,
    pub accepted: AtomicU64,
    pub refused_limit: AtomicU64,
    pub handshake_failed: AtomicU64,
    per_source: Mutex<HashMap<IpAddr, usize>>,
}

/// Releases a connection's slots when it ends, whatever the path.
struct Slot {
    c: Arc<Counters>,
    ip: IpAddr,
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.c.active.fetch_sub(1, Ordering::SeqCst);
        let mut m = self.c.per_source.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = m.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                m.remove(&self.ip);
            }
        }
    }
}

fn take_slot(c: &Arc<Counters>, cfg: &FrontConfig, ip: IpAddr) -> Option<Slot> {
    let mut m = c.per_source.lock().unwrap_or_else(|p| p.into_inner());
    let n = m.entry(ip).or_insert(0);
    if *n >= cfg.max_per_source || c.active.load(Ordering::SeqCst) as usize >= cfg.max_connections {
        if *n == 0 {
            m.remove(&ip);
        }
        return None;
    }
    *n += 1;
    c.active.fetch_add(1, Ordering::SeqCst);
    Some(Slot { c: c.clone(), ip })
}

pub async fn serve(
    cfg: FrontConfig,
    tls: Arc<rustls::ServerConfig>,
    counters: Arc<Counters>,
    service: String,
) -> Result<()> {
    let listener = TcpListener::bind(&cfg.listen)
        .await
        .with_context(|| format!("binding {}", cfg.listen))?;
    serve_on(listener, cfg, tls, counters, service).await
}

/// [`serve`] on a listener the caller bound (`cfg.listen` is not used).
pub async fn serve_on(
    listener: TcpListener,
    cfg: FrontConfig,
    tls: Arc<rustls::ServerConfig>,
    counters: Arc<Counters>,
    service: String,
) -> Result<()> {
    let vpn: SocketAddr = cfg
        .vpn
        .parse()
        .with_context(|| format!("[tls-front] vpn {:?}", cfg.vpn))?;
    let acceptor = tokio_rustls::TlsAcceptor::from(tls);
    let cfg = Arc::new(cfg);
    loop {
        let (tcp, peer) = match listener.accept().await {
            Ok(x) => x,
            Err(e) => {
                eprintln!("tls-front: accept: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let Some(slot) = take_slot(&counters, &cfg, peer.ip()) else {
            counters.refused_limit.fetch_add(1, Ordering::Relaxed);
            gwos_core::emit(
                &gwos_core::Event::new(&service, "tls.refused")
                    .field("source", peer.to_string())
                    .field("reason", "limit"),
            );
            drop(tcp);
            continue;
        };
        let (acceptor, cfg, counters, service) = (
            acceptor.clone(),
            cfg.clone(),
            counters.clone(),
            service.clone(),
        );
        tokio::spawn(async move {
            let _slot = slot;
            let _ = tcp.set_nodelay(true);
            let hs = tokio::time::timeout(
                Duration::from_secs(cfg.handshake_timeout_secs),
                acceptor.accept(tcp),
            )
            .await;
            let tls = match hs {
                Ok(Ok(s)) => s,
                Ok(Err(e)) => {
                    counters.handshake_failed.fetch_add(1, Ordering::Relaxed);
                    gwos_core::emit(
                        &gwos_core::Event::new(&service, "tls.handshake_failed")
                            .field("source", peer.to_string())
                            .field("error", e.to_string()),
                    );
                    return;
                }
                Err(_) => {
                    counters.handshake_failed.fetch_add(1, Ordering::Relaxed);
                    gwos_core::emit(
                        &gwos_core::Event::new(&service, "tls.handshake_failed")
                            .field("source", peer.to_string())
                            .field("error", "timeout"),
                    );
                    return;
                }
            };
            counters.accepted.fetch_add(1, Ordering::Relaxed);
            let suite = tls
                .get_ref()
                .1
                .negotiated_cipher_suite()
                .map(|s| format!("{:?}", s.suite()))
                .unwrap_or_default();
            gwos_core::emit(
                &gwos_core::Event::new(&service, "tls.open")
                    .field("source", peer.to_string())
                    .field("suite", suite),
            );
            let r = pump(tls, vpn, Duration::from_secs(cfg.idle_timeout_secs)).await;
            gwos_core::emit(
                &gwos_core::Event::new(&service, "tls.close")
                    .field("source", peer.to_string())
                    .field(
                        "reason",
                        r.err()
                            .map(|e| format!("{e:#}"))
                            .unwrap_or_else(|| "eof".into()),
                    ),
            );
        });
    }
}

/// Carries frames between the TLS stream and a fresh connected UDP socket.
async fn pump(
    tls: tokio_rustls::server::TlsStream<TcpStream>,
    vpn: SocketAddr,
    idle: Duration,
) -> Result<()> {
    let udp = UdpSocket::bind(if vpn.is_ipv4() {
        "127.0.0.1:0"
    } else {
        "[::1]:0"
    })
    .await?;
    udp.connect(vpn).await?;
    carry(tls, udp, idle).await
}

/// Both directions over any stream: frames in → datagrams out, and back.
pub async fn carry<S>(stream: S, udp: UdpSocket, idle: Duration) -> Result<()>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let (mut rd, mut wr) = tokio::io::split(stream);
    let r = carry_loop(&mut rd, &mut wr, &udp, idle).await;
    if r.as_ref().is_err_and(|e| e.to_string() == "idle") {
        // a clean TLS close (close_notify), so the client sees an ordinary EOF
        let _ = tokio::time::timeout(Duration::from_secs(1), wr.shutdown()).await;
    }
    r
}

async fn carry_loop<R, W>(rd: &mut R, wr: &mut W, udp: &UdpSocket, idle: Duration) -> Result<()>
where
    R: tokio::io::AsyncRead + Unpin,
    W: tokio::io::AsyncWrite + Unpin,
{
    let mut dec = frame::Decoder::default();
    let mut dgram = vec![0u8; frame::MAX_FRAME];
    let mut out = Vec::with_capacity(frame::MAX_FRAME + 2);
    loop {
        tokio::select! {
            r = tokio::time::timeout(idle, dec.read_from(rd)) => {
                let n = r.map_err(|_| anyhow::anyhow!("idle"))??;
                if n == 0 {
                    return Ok(());
                }
                while let Some(f) = dec.next_frame()? {
                    let _ = udp.send(f).await;
                }
            }
            r = udp.recv(&mut dgram) => {
                let n = r?;
                if n == 0 {
                    continue;
                }
                out.clear();
                frame::encode(&dgram[..n], &mut out)?;
                wr.write_all(&out).await?;
                wr.flush().await?;
            }
        }
    }
}
