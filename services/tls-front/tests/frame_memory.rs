//! F1 against the real listener: a client streams frames whose every write
//! ends one byte into the next header, so no read of the server ever ends
//! on a frame boundary. The server's memory must stay flat (before the fix
//! its decoder kept every byte the connection had sent).
//!
//! Its own test binary so nothing else in the process moves `VmRSS`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use gwos_tls_front::server::{serve_on, Counters, FrontConfig};
use gwos_tls_front::tls;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};

/// Bytes streamed; `F1_STREAM_MIB` overrides (the review's figure is 200).
fn stream_bytes() -> usize {
    let mib = std::env::var("F1_STREAM_MIB")
        .ok()
        .and_then(|v| v.parse::<usize>().ok())
        .unwrap_or(200);
    mib << 20
}

/// Peak resident set (`VmHWM`): what the OOM killer would have seen, even
/// if the connection's buffers were freed when it closed.
fn vm_hwm_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("reading /proc/self/status");
    let line = status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .expect("VmHWM line in /proc/self/status");
    line.split_whitespace()
        .nth(1)
        .and_then(|v| v.parse().ok())
        .expect("VmHWM value in kB")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn f1_server_rss_bounded_under_misaligned_stream() {
    // the "vpn": a sink that never answers, so the server only reads
    let sink = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let vpn = sink.local_addr().unwrap();
    tokio::spawn(async move {
        let mut b = vec![0u8; 65535];
        while sink.recv(&mut b).await.is_ok() {}
    });
    let dir = tempfile::tempdir().unwrap();
    let id = tls::load_or_create_identity(dir.path(), "gwos").unwrap();
    let server = Arc::new(tls::server_config(&id, None).unwrap());
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let cfg = FrontConfig {
        vpn: vpn.to_string(),
        ..Default::default()
    };
    let counters = Arc::new(Counters::default());
    tokio::spawn(serve_on(
        listener,
        cfg,
        server,
        counters,
        "tls-front".into(),
    ));

    let tcp = TcpStream::connect(addr).await.unwrap();
    let client = Arc::new(tls::client_config(&id.pin, None).unwrap());
    let name = rustls::pki_types::ServerName::try_from("gwos").unwrap();
    let mut s = tokio_rustls::TlsConnector::from(client)
        .connect(name, tcp)
        .await
        .unwrap();

    // [len_lo, 1400 bytes, next len_hi]: one frame plus the next header's first byte
    let len = 1400u16.to_be_bytes();
    let mut piece = vec![0xAAu8; 1402];
    piece[0] = len[1];
    piece[1401] = len[0];
    s.write_all(&[len[0]]).await.unwrap();
    // warm up (TLS buffers, allocator arenas) before the baseline
    for _ in 0..2_000 {
        s.write_all(&piece).await.unwrap();
    }
    s.flush().await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let before = vm_hwm_kib();

    let total = stream_bytes();
    let writes = total / piece.len();
    let started = Instant::now();
    for _ in 0..writes {
        s.write_all(&piece).await.unwrap();
    }
    s.flush().await.unwrap();
    // close_notify: the server reads to the end, then closes its side
    s.shutdown().await.unwrap();
    // (it drops the TCP connection at EOF without a close_notify of its own)
    let mut rest = Vec::new();
    let end = tokio::time::timeout(Duration::from_secs(120), s.read_to_end(&mut rest))
        .await
        .expect("the server closes the connection after our close_notify");
    assert_eq!(
        end.map_err(|e| e.kind()),
        Err(std::io::ErrorKind::UnexpectedEof)
    );
    assert!(
        rest.is_empty(),
        "the sink never answers, so no frame comes back"
    );
    let after = vm_hwm_kib();
    let grew = after.saturating_sub(before);
    eprintln!(
        "streamed {} MiB in {:?}; peak VmRSS {before} kB -> {after} kB (+{grew} kB)",
        total >> 20,
        started.elapsed()
    );
    assert!(
        grew < 16 * 1024,
        "tls-front's peak VmRSS grew by {grew} kB over {} MiB (limit 16 MiB)",
        total >> 20
    );
}
