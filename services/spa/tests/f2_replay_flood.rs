//! Review finding F2: spa logs every replayed packet, and its stdout is a
//! pipe. With stdout connected to a pipe that nobody reads, 2 000 replays of
//! one captured knock must not stop spa from granting a fresh knock from
//! another address within 2 s. Loopback only (127.0.0.1 and 127.0.0.2), no
//! firewall: the grant is observed in spa's replay cache, which spa writes
//! (and fsyncs) for a knock that decrypted, right before it grants.

use std::net::UdpSocket;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use gwos_spa::client::{encode, Knock};
use gwos_spa::packet::ProtoPort;
use gwos_test_support::{binaries, wait_until, Procs};

const K: &str = "PLJiB9FhMc635yVDYsXCvEgWl7Q60iCQNQBvN1inQ04=";
const H: &str =
    "YTMMjQ9STIx2+a0R1557B7q8N8jd3Zt1ryxkCDxe1g6mRlhD9YheNvRXhDIYy8tOmVId8lrSScZlygiX0bsRxA==";

fn knock() -> String {
    let k = Knock {
        user: "alice".into(),
        allow_ip: "0.0.0.0".parse().unwrap(),
        access: vec![ProtoPort {
            tcp: true,
            port: 443,
        }],
        client_timeout: 0,
        timestamp: gwos_spa::replay::now(),
    };
    encode(
        &k,
        &gwos_spa::crypto::b64d_strict(K).unwrap(),
        Some(&gwos_spa::crypto::b64d_strict(H).unwrap()),
    )
    .unwrap()
}

fn replay_entries(path: &std::path::Path) -> usize {
    std::fs::read_to_string(path)
        .map(|s| s.lines().count())
        .unwrap_or(0)
}

#[test]
fn f2_replay_flood_does_not_block_spa() {
    let (gwosd, _) = binaries();
    let port = UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let tmp = tempfile::tempdir().unwrap();
    let site = tmp.path().join("site.toml");
    std::fs::write(
        &site,
        format!(
            "[spa]\nport = {port}\nbind = \"127.0.0.1\"\nfirewall = false\n\n[[spa.users]]\nuser = \"alice\"\nkey_base64 = \"{K}\"\nhmac_key_base64 = \"{H}\"\nports = [\"tcp/443\"]\n"
        ),
    )
    .unwrap();
    let state = tmp.path().join("state");
    let replay_log = state.join("replay.log");
    let mut procs = Procs::default();
    let i = procs.spawn(
        Command::new(&gwosd)
            .args(["run", "spa", "--config"])
            .arg(&site)
            .arg("--state-dir")
            .arg(&state)
            .arg("--run-dir")
            .arg(tmp.path().join("run"))
            .stdout(Stdio::piped()) // held below, never read
            .stderr(Stdio::null()),
    );
    let _unread_stdout = procs.0[i].stdout.take().unwrap();
    wait_until("spa's socket", Duration::from_secs(10), || {
        tmp.path().join("run/spa.sock").exists()
    });

    let attacker = UdpSocket::bind("127.0.0.1:0").unwrap();
    let captured = knock();
    attacker
        .send_to(captured.as_bytes(), ("127.0.0.1", port))
        .unwrap();
    wait_until("the first knock", Duration::from_secs(5), || {
        replay_entries(&replay_log) == 1
    });
    for n in 0..2000 {
        attacker
            .send_to(captured.as_bytes(), ("127.0.0.1", port))
            .unwrap();
        if n % 50 == 0 {
            std::thread::sleep(Duration::from_millis(5)); // stay below the socket buffer
        }
    }
    std::thread::sleep(Duration::from_millis(200));

    let user = UdpSocket::bind("127.0.0.2:0").unwrap();
    let fresh = knock();
    assert_ne!(fresh, captured);
    let sent = Instant::now();
    user.send_to(fresh.as_bytes(), ("127.0.0.1", port)).unwrap();
    while replay_entries(&replay_log) < 2 && sent.elapsed() < Duration::from_secs(2) {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(
        replay_entries(&replay_log),
        2,
        "spa did not take the fresh knock from 127.0.0.2 within 2 s of a 2 000-replay flood \
         (stuck writing replay events to a full stdout pipe)"
    );
}
