//! tls-front's limits and mTLS, in process on loopback (no root needed): the
//! real listener (`server::serve_on`) with a UDP echo standing in for the vpn,
//! clients bound to different 127.0.0.x sources.
//!
//! - per source: the N+1th concurrent connection from one address is
//!   refused while another address still gets in; a closed one frees its slot;
//! - total: the M+1th connection is refused whatever its source;
//! - handshake timeout: a TCP connection that never sends a ClientHello is
//!   closed after `handshake_timeout_secs`, an established tunnel is not;
//! - mTLS (`client_ca`): no client certificate → refused, a certificate from
//!   that CA → accepted and carrying datagrams, one from another CA → refused;
//!   also through `gwos connect`'s own option parsing (`--client-cert/--client-key`).

use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use gwos_tls_front::client::{ConnectArgs, ConnectOptions, KnockArgs};
use gwos_tls_front::server::{serve_on, Counters, FrontConfig};
use gwos_tls_front::tls::{self, ClientAuth};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream, UdpSocket};

type Tls = tokio_rustls::client::TlsStream<TcpStream>;

struct Front {
    addr: SocketAddr,
    pin: String,
    counters: Arc<Counters>,
    _dir: tempfile::TempDir,
}

/// A UDP echo (the "vpn") and tls-front on 127.0.0.1 with `cfg`'s limits.
async fn start(mut cfg: FrontConfig, client_ca: Option<&Path>) -> Front {
    let echo = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    cfg.vpn = echo.local_addr().unwrap().to_string();
    tokio::spawn(async move {
        let mut b = vec![0u8; 65535];
        loop {
            let (n, from) = echo.recv_from(&mut b).await.unwrap();
            let _ = echo.send_to(&b[..n], from).await;
        }
    });
    let dir = tempfile::tempdir().unwrap();
    let id = tls::load_or_create_identity(dir.path(), "gwos").unwrap();
    let server = Arc::new(tls::server_config(&id, client_ca).unwrap());
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let counters = Arc::new(Counters::default());
    let c = counters.clone();
    tokio::spawn(async move { serve_on(listener, cfg, server, c, "tls-front".into()).await });
    Front {
        addr,
        pin: id.pin.clone(),
        counters,
        _dir: dir,
    }
}

/// TLS 1.3 from source address `src` (127.0.0.x), pinned.
async fn dial_from(f: &Front, src: &str, auth: Option<&ClientAuth>) -> anyhow::Result<Tls> {
    let sock = TcpSocket::new_v4()?;
    sock.bind(SocketAddr::new(src.parse::<IpAddr>()?, 0))?;
    let tcp = sock.connect(f.addr).await?;
    let cfg = Arc::new(tls::client_config(&f.pin, auth)?);
    let name = rustls::pki_types::ServerName::try_from("gwos")?;
    let s = tokio::time::timeout(
        Duration::from_secs(5),
        tokio_rustls::TlsConnector::from(cfg).connect(name, tcp),
    )
    .await??;
    Ok(s)
}

/// Sends one framed datagram and expects it back (through the echo).
async fn echo(s: &mut Tls, payload: &[u8]) -> anyhow::Result<()> {
    let mut out = Vec::new();
    gwos_tls_front::frame::encode(payload, &mut out)?;
    s.write_all(&out).await?;
    s.flush().await?;
    let mut back = vec![0u8; out.len()];
    tokio::time::timeout(Duration::from_secs(5), s.read_exact(&mut back)).await??;
    anyhow::ensure!(back == out, "echo differs");
    Ok(())
}

async fn wait_for(what: &str, mut f: impl FnMut() -> bool) {
    let t = Instant::now();
    while !f() {
        assert!(
            t.elapsed() < Duration::from_secs(5),
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_source_limit_refuses_the_extra_connection_only_for_that_source() {
    let f = start(
        FrontConfig {
            max_per_source: 2,
            max_connections: 100,
            ..Default::default()
        },
        None,
    )
    .await;
    let mut a1 = dial_from(&f, "127.0.0.1", None).await.unwrap();
    let mut a2 = dial_from(&f, "127.0.0.1", None).await.unwrap();
    echo(&mut a1, b"a1").await.unwrap();
    echo(&mut a2, b"a2").await.unwrap();
    assert_eq!(f.counters.active.load(Ordering::SeqCst), 2);

    // the third from 127.0.0.1 is closed before any TLS
    let third = dial_from(&f, "127.0.0.1", None).await;
    assert!(
        third.is_err(),
        "third connection from one source was accepted"
    );
    assert_eq!(f.counters.refused_limit.load(Ordering::SeqCst), 1);

    // another source still gets in
    let mut b = dial_from(&f, "127.0.0.2", None)
        .await
        .expect("a second source must not be limited by the first");
    echo(&mut b, b"b").await.unwrap();
    assert_eq!(f.counters.accepted.load(Ordering::SeqCst), 3);

    // closing one frees its slot
    drop(a1);
    wait_for("the slot to be released", || {
        f.counters.active.load(Ordering::SeqCst) == 2
    })
    .await;
    let mut a3 = dial_from(&f, "127.0.0.1", None)
        .await
        .expect("slot not released");
    echo(&mut a3, b"a3").await.unwrap();
    echo(&mut a2, b"a2 still up").await.unwrap();
    assert_eq!(f.counters.refused_limit.load(Ordering::SeqCst), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn total_limit_refuses_any_source_beyond_it() {
    let f = start(
        FrontConfig {
            max_per_source: 16,
            max_connections: 3,
            ..Default::default()
        },
        None,
    )
    .await;
    let mut held = Vec::new();
    for src in ["127.0.0.1", "127.0.0.2", "127.0.0.3"] {
        let mut s = dial_from(&f, src, None).await.unwrap();
        echo(&mut s, src.as_bytes()).await.unwrap();
        held.push(s);
    }
    assert!(
        dial_from(&f, "127.0.0.4", None).await.is_err(),
        "fourth connection accepted over max_connections = 3"
    );
    dial_from(&f, "127.0.0.1", None).await.unwrap_err();
    assert_eq!(f.counters.refused_limit.load(Ordering::SeqCst), 2);
    held.pop();
    wait_for("the slot to be released", || {
        f.counters.active.load(Ordering::SeqCst) == 2
    })
    .await;
    let mut s = dial_from(&f, "127.0.0.4", None)
        .await
        .expect("slot not released");
    echo(&mut s, b"4").await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_connection_is_closed_after_the_handshake_timeout() {
    let f = start(
        FrontConfig {
            handshake_timeout_secs: 1,
            ..Default::default()
        },
        None,
    )
    .await;
    let mut up = dial_from(&f, "127.0.0.2", None).await.unwrap();

    let mut silent = TcpStream::connect(f.addr).await.unwrap();
    let t = Instant::now();
    let mut b = [0u8; 16];
    let r = tokio::time::timeout(Duration::from_secs(5), silent.read(&mut b))
        .await
        .expect("silent connection never closed");
    let took = t.elapsed();
    assert!(
        matches!(r, Ok(0) | Err(_)),
        "server sent bytes to a client that sent none: {r:?}"
    );
    assert!(
        took >= Duration::from_millis(900),
        "closed after {took:?}, before the 1 s timeout"
    );
    assert!(took < Duration::from_secs(3), "closed only after {took:?}");
    assert_eq!(f.counters.handshake_failed.load(Ordering::SeqCst), 1);
    wait_for("the slot to be released", || {
        f.counters.active.load(Ordering::SeqCst) == 1
    })
    .await;

    // the established tunnel outlives the handshake timeout
    tokio::time::sleep(Duration::from_millis(500)).await;
    echo(&mut up, b"still here").await.unwrap();
}

struct Pki {
    ca_pem: String,
    good: ClientAuth,
    other: ClientAuth,
    good_cert_pem: String,
    good_key_pem: String,
}

fn pki() -> Pki {
    use rcgen::{
        BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    };
    let ca = |name: &str| {
        let key = KeyPair::generate().unwrap();
        let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        p.distinguished_name.push(DnType::CommonName, name);
        (p.self_signed(&key).unwrap(), key)
    };
    let leaf = |ca: &(rcgen::Certificate, KeyPair), name: &str| {
        let key = KeyPair::generate().unwrap();
        let mut p = CertificateParams::new(vec![name.to_string()]).unwrap();
        p.distinguished_name.push(DnType::CommonName, name);
        p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        let cert = p.signed_by(&key, &ca.0, &ca.1).unwrap();
        (cert, key)
    };
    let site_ca = ca("gwos test client CA");
    let other_ca = ca("someone else's CA");
    let (gc, gk) = leaf(&site_ca, "alice");
    let (oc, ok) = leaf(&other_ca, "mallory");
    let auth = |c: &rcgen::Certificate, k: &KeyPair| {
        ClientAuth::new(
            vec![c.der().clone()],
            rustls::pki_types::PrivatePkcs8KeyDer::from(k.serialize_der()).into(),
        )
    };
    Pki {
        ca_pem: site_ca.0.pem(),
        good: auth(&gc, &gk),
        other: auth(&oc, &ok),
        good_cert_pem: gc.pem(),
        good_key_pem: gk.serialize_pem(),
    }
}

/// In TLS 1.3 the client finishes before the server has judged its
/// certificate: a refusal shows on the first read (alert or close).
async fn refused_after_handshake(r: anyhow::Result<Tls>) -> bool {
    match r {
        Err(_) => true,
        Ok(mut s) => echo(&mut s, b"let me in").await.is_err(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mtls_requires_a_certificate_from_the_configured_ca() {
    let p = pki();
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("client-ca.pem");
    std::fs::write(&ca, &p.ca_pem).unwrap();
    let f = start(FrontConfig::default(), Some(&ca)).await;

    assert!(
        refused_after_handshake(dial_from(&f, "127.0.0.1", None).await).await,
        "no client certificate, yet carried"
    );
    wait_for("the failed handshake to be counted", || {
        f.counters.handshake_failed.load(Ordering::SeqCst) == 1
    })
    .await;
    assert!(
        refused_after_handshake(dial_from(&f, "127.0.0.1", Some(&p.other)).await).await,
        "other CA's certificate carried"
    );
    wait_for("the failed handshake to be counted", || {
        f.counters.handshake_failed.load(Ordering::SeqCst) == 2
    })
    .await;
    assert_eq!(f.counters.accepted.load(Ordering::SeqCst), 0);

    let mut s = dial_from(&f, "127.0.0.1", Some(&p.good)).await.unwrap();
    echo(&mut s, b"alice")
        .await
        .expect("certificate from the configured CA refused");
    assert_eq!(f.counters.accepted.load(Ordering::SeqCst), 1);

    // the same through `gwos connect`'s options and its UDP side
    let cert = dir.path().join("alice.pem");
    let key = dir.path().join("alice.key");
    std::fs::write(&cert, &p.good_cert_pem).unwrap();
    std::fs::write(&key, &p.good_key_pem).unwrap();
    let via_connect = |client: Option<(&Path, &Path)>| {
        let listen = std::net::UdpSocket::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        let args = ConnectArgs {
            server: f.addr.to_string(),
            pin: f.pin.clone(),
            listen,
            server_name: "gwos".into(),
            client_cert: client.map(|c| c.0.to_path_buf()),
            client_key: client.map(|c| c.1.to_path_buf()),
            connect_timeout_secs: 5,
            knock: KnockArgs {
                knock_key_file: None,
                knock_user: None,
                knock_port: 62201,
                knock_allow_ip: None,
                knock_wait_ms: 300,
            },
        };
        let opts = ConnectOptions::from_args(args).unwrap();
        (
            listen,
            tokio::spawn(gwos_tls_front::client::run_connect(opts)),
        )
    };
    let wg = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let roundtrip = |to: SocketAddr| {
        let wg = &wg;
        async move {
            let mut b = [0u8; 64];
            for _ in 0..6 {
                wg.send_to(b"wireguard datagram", to).await.unwrap();
                if let Ok(Ok((n, _))) =
                    tokio::time::timeout(Duration::from_millis(500), wg.recv_from(&mut b)).await
                {
                    return n == 18 && &b[..n] == b"wireguard datagram";
                }
            }
            false
        }
    };
    let (with, t1) = via_connect(Some((&cert, &key)));
    assert!(
        roundtrip(with).await,
        "gwos connect --client-cert/--client-key did not carry the datagram"
    );
    let (without, t2) = via_connect(None);
    assert!(
        !roundtrip(without).await,
        "gwos connect without a client certificate carried a datagram"
    );
    t1.abort();
    t2.abort();
}
