//! `gwos connect`: a local UDP port for any stock WireGuard client; its
//! datagrams go framed over TLS 1.3 to tls-front, whose certificate must match
//! the pinned SPKI sha256. Reconnects when the TLS connection drops.
//!
//! Optionally each TCP connection attempt (the first and every reconnect) is
//! preceded by an SPA knock (fwknop wire format, `gwos_spa::client`) asking
//! for `tcp/<the TLS port>`, then a short wait for the gateway to open it.
//! Optionally a client certificate is presented (gateways with `client_ca`).

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpStream, UdpSocket};

use crate::frame;
use crate::tls::ClientAuth;

/// The command line of `gwos connect` (and of the crate's `gwos-connect`).
#[derive(Debug, Clone, clap::Args)]
pub struct ConnectArgs {
    /// Gateway tls-front address, host:port.
    #[arg(long)]
    pub server: String,
    /// sha256 of the gateway's SPKI, hex (tls-front `health` reports it as spki_sha256).
    #[arg(long)]
    pub pin: String,
    /// Local UDP address to give the WireGuard client as its Endpoint.
    #[arg(long, default_value = "127.0.0.1:51821")]
    pub listen: SocketAddr,
    /// TLS server name (the certificate is pinned, not name-checked).
    #[arg(long, default_value = "gwos")]
    pub server_name: String,
    /// PEM client certificate (chain, leaf first) for gateways that require mTLS (`client_ca`).
    #[arg(long, requires = "client_key")]
    pub client_cert: Option<PathBuf>,
    /// PEM private key of --client-cert.
    #[arg(long, requires = "client_cert")]
    pub client_key: Option<PathBuf>,
    /// Seconds allowed for the TCP connect plus the TLS handshake of one attempt.
    #[arg(long, default_value_t = 10)]
    pub connect_timeout_secs: u64,
    #[command(flatten)]
    pub knock: KnockArgs,
}

/// SPA knock before each connection attempt (all optional; a key file turns it on).
#[derive(Debug, Clone, clap::Args)]
pub struct KnockArgs {
    /// Knock first: file with the SPA keys, as `fwknop --key-gen` prints them
    /// (`KEY_BASE64: …` and `HMAC_KEY_BASE64: …` lines; mode 0600). Keys are never printed.
    #[arg(long, requires = "knock_user")]
    pub knock_key_file: Option<PathBuf>,
    /// SPA user name (the gateway's spa stanza).
    #[arg(long, requires = "knock_key_file")]
    pub knock_user: Option<String>,
    /// Gateway's SPA UDP port.
    #[arg(long, default_value_t = 62201)]
    pub knock_port: u16,
    /// Address to open (default: this host's source address toward the gateway;
    /// 0.0.0.0 = the packet's source, for gateway stanzas that allow it).
    #[arg(long)]
    pub knock_allow_ip: Option<Ipv4Addr>,
    /// Milliseconds to wait after a knock before connecting.
    #[arg(long, default_value_t = 300)]
    pub knock_wait_ms: u64,
}

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
    /// Client certificate for mTLS.
    pub client_auth: Option<ClientAuth>,
    /// Limit on TCP connect + TLS handshake per attempt.
    pub connect_timeout: Duration,
    /// SPA knock before every attempt.
    pub knock: Option<KnockConfig>,
}

impl ConnectOptions {
    /// Reads the files the command line names (client certificate, knock keys).
    pub fn from_args(a: ConnectArgs) -> Result<Self> {
        let client_auth = match (&a.client_cert, &a.client_key) {
            (Some(c), Some(k)) => Some(ClientAuth::from_pem_files(c, k)?),
            (None, None) => None,
            _ => anyhow::bail!("--client-cert and --client-key go together"),
        };
        let knock = match (&a.knock.knock_key_file, a.knock.knock_user) {
            (Some(f), Some(user)) => Some(KnockConfig {
                user,
                keys: KnockKeys::load(f)?,
                port: a.knock.knock_port,
                allow_ip: a.knock.knock_allow_ip,
                wait: Duration::from_millis(a.knock.knock_wait_ms),
            }),
            (None, None) => None,
            _ => anyhow::bail!("--knock-key-file and --knock-user go together"),
        };
        anyhow::ensure!(
            a.connect_timeout_secs > 0,
            "--connect-timeout-secs must be positive"
        );
        Ok(Self {
            listen: a.listen,
            server: a.server,
            pin: a.pin,
            server_name: a.server_name,
            client_auth,
            connect_timeout: Duration::from_secs(a.connect_timeout_secs),
            knock,
        })
    }
}

pub use gwos_spa::keyfile::KnockKeys;

/// Knock settings of a connection.
#[derive(Debug, Clone)]
pub struct KnockConfig {
    pub user: String,
    pub keys: KnockKeys,
    /// Gateway's SPA UDP port.
    pub port: u16,
    /// Address to open; `None`: this host's source address toward the gateway.
    pub allow_ip: Option<Ipv4Addr>,
    /// Wait after the knock before connecting.
    pub wait: Duration,
}

impl KnockConfig {
    /// Sends one knock for `tcp/<tls.port()>` to the gateway at `tls.ip()`.
    pub fn send(&self, tls: SocketAddr) -> Result<()> {
        let allow_ip = match self.allow_ip {
            Some(a) => a,
            None => source_toward(tls)?,
        };
        let knock = gwos_spa::client::Knock {
            user: self.user.clone(),
            allow_ip,
            access: vec![gwos_spa::packet::ProtoPort {
                tcp: true,
                port: tls.port(),
            }],
            client_timeout: 0,
            timestamp: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)?
                .as_secs() as i64,
        };
        let dest = SocketAddr::new(tls.ip(), self.port);
        gwos_spa::client::send(&knock, self.keys.key(), Some(self.keys.hmac()), dest)
            .context("sending the SPA knock")?;
        eprintln!(
            "gwos connect: knocked {dest} as {} for tcp/{} (allow ip {allow_ip})",
            self.user,
            tls.port()
        );
        Ok(())
    }
}

/// The IPv4 address this host sends from toward `dest` (0.0.0.0 for IPv6
/// gateways: SPA allow IPs are IPv4, and 0.0.0.0 means the packet source).
fn source_toward(dest: SocketAddr) -> Result<Ipv4Addr> {
    if !dest.is_ipv4() {
        return Ok(Ipv4Addr::UNSPECIFIED);
    }
    let s = std::net::UdpSocket::bind("0.0.0.0:0")?;
    s.connect(dest)
        .with_context(|| format!("no route to {dest}"))?;
    Ok(match s.local_addr()?.ip() {
        IpAddr::V4(a) => a,
        IpAddr::V6(_) => Ipv4Addr::UNSPECIFIED,
    })
}

/// Opens pinned TLS connections to the gateway, knocking first if configured.
pub struct Dialer {
    cfg: Arc<rustls::ClientConfig>,
    server: String,
    name: rustls::pki_types::ServerName<'static>,
    timeout: Duration,
    knock: Option<KnockConfig>,
}

impl Dialer {
    pub fn new(opts: &ConnectOptions) -> Result<Self> {
        let cfg = Arc::new(crate::tls::client_config(
            &opts.pin,
            opts.client_auth.as_ref(),
        )?);
        let name = rustls::pki_types::ServerName::try_from(opts.server_name.clone())
            .context("server name")?;
        Ok(Self {
            cfg,
            server: opts.server.clone(),
            name,
            timeout: opts.connect_timeout,
            knock: opts.knock.clone(),
        })
    }

    /// One attempt: resolve, knock (if set) and wait, TCP connect, TLS handshake.
    pub async fn dial(&self) -> Result<tokio_rustls::client::TlsStream<TcpStream>> {
        let addr = tokio::net::lookup_host(&self.server)
            .await
            .with_context(|| format!("resolving {}", self.server))?
            .next()
            .with_context(|| format!("{} has no address", self.server))?;
        if let Some(k) = &self.knock {
            k.send(addr)?;
            tokio::time::sleep(k.wait).await;
        }
        let attempt = async {
            let tcp = TcpStream::connect(addr)
                .await
                .with_context(|| format!("connecting to {addr}"))?;
            tcp.set_nodelay(true)?;
            tokio_rustls::TlsConnector::from(self.cfg.clone())
                .connect(self.name.clone(), tcp)
                .await
                .context("TLS handshake with the gateway")
        };
        match tokio::time::timeout(self.timeout, attempt).await {
            Ok(r) => r,
            Err(_) => anyhow::bail!("no TLS connection to {addr} within {:?}", self.timeout),
        }
    }
}

/// Opens one pinned TLS connection without knock or client certificate.
pub async fn dial(
    server: &str,
    server_name: &str,
    pin: &str,
) -> Result<tokio_rustls::client::TlsStream<TcpStream>> {
    Dialer::new(&ConnectOptions {
        listen: "127.0.0.1:0".parse()?,
        server: server.into(),
        pin: pin.into(),
        server_name: server_name.into(),
        client_auth: None,
        connect_timeout: Duration::from_secs(10),
        knock: None,
    })?
    .dial()
    .await
}

/// Runs until an unrecoverable error (bad options); connection losses are retried.
pub async fn run_connect(opts: ConnectOptions) -> Result<()> {
    let dialer = Dialer::new(&opts)?;
    let udp = UdpSocket::bind(opts.listen)
        .await
        .with_context(|| format!("binding {}", opts.listen))?;
    eprintln!(
        "gwos connect: WireGuard endpoint {} → TLS {}{}",
        udp.local_addr()?,
        opts.server,
        if opts.knock.is_some() {
            " (SPA knock before each connection)"
        } else {
            ""
        }
    );
    let mut first = vec![0u8; frame::MAX_FRAME];
    let (n, mut wg) = udp.recv_from(&mut first).await?;
    let mut pending = Some(first[..n].to_vec());
    let mut backoff = Duration::from_millis(200);
    loop {
        let tls = match dialer.dial().await {
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
            if let Err(e) = async {
                wr.write_all(&out).await?;
                wr.flush().await
            }
            .await
            {
                pending = Some(p);
                eprintln!("gwos connect: {e}; reconnecting");
                continue;
            }
        }
        let mut dec = frame::Decoder::default();
        let mut dgram = vec![0u8; frame::MAX_FRAME];
        let err: anyhow::Error = loop {
            tokio::select! {
                r = dec.read_from(&mut rd) => match r {
                    Ok(0) => break anyhow::anyhow!("gateway closed the connection"),
                    Ok(_) => {
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

#[cfg(test)]
mod tests {
    use super::*;

    const K: &str = "PLJiB9FhMc635yVDYsXCvEgWl7Q60iCQNQBvN1inQ04=";
    const H: &str =
        "YTMMjQ9STIx2+a0R1557B7q8N8jd3Zt1ryxkCDxe1g6mRlhD9YheNvRXhDIYy8tOmVId8lrSScZlygiX0bsRxA==";

    #[test]
    fn knock_is_a_valid_spa_packet_for_the_tls_port() {
        // what the gateway would decode: user, allow IP, tcp/<TLS port>
        let rx = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let k = KnockConfig {
            user: "alice".into(),
            keys: KnockKeys::parse(&format!("KEY_BASE64: {K}\nHMAC_KEY_BASE64: {H}\n")).unwrap(),
            port: rx.local_addr().unwrap().port(),
            allow_ip: None,
            wait: Duration::ZERO,
        };
        k.send("127.0.0.1:8443".parse().unwrap()).unwrap();
        let mut buf = [0u8; 1500];
        rx.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let n = rx.recv(&mut buf).unwrap();
        let spa = gwos_spa::packet::preprocess(&buf[..n], false).unwrap();
        let keys = gwos_spa::packet::Keys {
            key: gwos_spa::crypto::b64d_strict(K).unwrap(),
            hmac_key: Some(gwos_spa::crypto::b64d_strict(H).unwrap()),
            hmac_type: gwos_spa::crypto::HashType::Sha256,
            mode: gwos_spa::crypto::Mode::Cbc,
        };
        let f = gwos_spa::packet::decode_with(&spa, &keys).unwrap();
        assert_eq!(f.username, "alice");
        assert_eq!(f.allow_ip, Ipv4Addr::LOCALHOST);
        assert_eq!(
            f.access,
            vec![gwos_spa::packet::ProtoPort {
                tcp: true,
                port: 8443
            }]
        );
    }
}
