//! `gwos connect`: a local UDP port for any stock WireGuard client; its
//! datagrams go framed over TLS 1.3 to tls-front, whose certificate must match
//! the pinned SPKI sha256. Reconnects when the TLS connection drops.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};

use crate::frame;

#[derive(Debug, Clone)]
pub struct ConnectOptions {
    /// Local UDP address the WireGuard client uses as its Endpoint.
    pub listen: SocketAddr,
    /// Gateway tls-front address (host:port).
    pub server: String,
    /// Hex sha256 of the gateway's SPKI (tls-front `health` reports it).
    pub pin: String,
    /// TLS server name to send (the certificate is pinned, not name-checked).
    pub server_name: String,
}

/// Opens one pinned TLS connection (used by the client and the tests).
pub async fn dial(
    server: &str,
    server_name: &str,
    pin: &str,
) -> Result<tokio_rustls::client::TlsStream<TcpStream>> {
    let cfg = Arc::new(crate::tls::client_config(pin)?);
    let tcp = TcpStream::connect(server).await.with_context(|| format!("connecting to {server}"))?;
    tcp.set_nodelay(true)?;
    let name = rustls::pki_types::ServerName::try_from(server_name.to_string()).context("server name")?;
    tokio_rustls::TlsConnector::from(cfg).connect(name, tcp).await.context("TLS handshake with the gateway")
}

/// Runs until an unrecoverable error (bad options); connection losses are retried.
pub async fn run_connect(opts: ConnectOptions) -> Result<()> {
    crate::tls::PinVerifier::new(&opts.pin)?;
    let udp = UdpSocket::bind(opts.listen).await.with_context(|| format!("binding {}", opts.listen))?;
    eprintln!("gwos connect: WireGuard endpoint {} → TLS {}", udp.local_addr()?, opts.server);
    let mut first = vec![0u8; frame::MAX_FRAME];
    let (n, mut wg) = udp.recv_from(&mut first).await?;
    let mut pending = Some(first[..n].to_vec());
    let mut backoff = Duration::from_millis(200);
    loop {
        let tls = match dial(&opts.server, &opts.server_name, &opts.pin).await {
            Ok(t) => {
                backoff = Duration::from_millis(200);
                t
            }
            Err(e) => {
                eprintln!("gwos connect: {e:#}; retrying in {backoff:?}");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(10));
                continue;
            }
        };
        let (mut rd, mut wr) = tokio::io::split(tls);
        let mut out = Vec::new();
        if let Some(p) = pending.take() {
            frame::encode(&p, &mut out)?;
            wr.write_all(&out).await?;
        }
        let mut dec = frame::Decoder::default();
        let mut inbuf = vec![0u8; 64 * 1024];
        let mut dgram = vec![0u8; frame::MAX_FRAME];
        let err: anyhow::Error = loop {
            tokio::select! {
                r = rd.read(&mut inbuf) => match r {
                    Ok(0) => break anyhow::anyhow!("gateway closed the connection"),
                    Ok(n) => {
                        dec.push(&inbuf[..n]);
                        loop {
                            match dec.next_frame() {
                                Ok(Some(f)) => { let _ = udp.send_to(f, wg).await; }
                                Ok(None) => break,
                                Err(e) => return Err(e.into()),
                            }
                        }
                    }
                    Err(e) => break e.into(),
                },
                r = udp.recv_from(&mut dgram) => {
                    let (n, from) = r?;
                    wg = from;
                    out.clear();
                    if frame::encode(&dgram[..n], &mut out).is_err() { continue; }
                    if let Err(e) = wr.write_all(&out).await { break e.into(); }
                    if let Err(e) = wr.flush().await { break e.into(); }
                }
            }
        };
        eprintln!("gwos connect: {err:#}; reconnecting");
    }
}
