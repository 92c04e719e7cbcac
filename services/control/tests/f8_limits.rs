//! F8 (security review 2026-12): pre-auth time is capped at
//! `auth_timeout_secs` (a silent TCP connection releases its slot),
//! `max_auth_tries` is enforced, and one connection cannot open unlimited
//! channels or buffer unlimited bytes. Real TCP on loopback: OpenSSH for
//! the login side, the russh client to open many channels.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use gwos_control::config::ControlConfig;
use russh::keys::PrivateKeyWithHashAlg;

#[test]
fn f8_silent_connections_release_slots() {
    let dir = tempfile::tempdir().unwrap();
    let admin = key(dir.path(), "admin");
    let srv = serve(
        dir.path(),
        ControlConfig {
            max_sessions: 4,
            auth_timeout_secs: 2,
            idle_timeout_secs: 300,
            keys: vec![site_key(&admin, &["admin"])],
            ..Default::default()
        },
    );
    // Every slot taken by a connection that never sends its SSH id.
    let silent: Vec<std::net::TcpStream> = (0..4)
        .map(|_| std::net::TcpStream::connect(srv.addr).unwrap())
        .collect();
    std::thread::sleep(Duration::from_millis(300));
    let (_, err, code) = ssh(srv.addr, &[&admin.file], &[], "health", b"");
    assert_eq!(code, 255, "a fifth connection got in: {err}");
    std::thread::sleep(Duration::from_secs(2 + 2));
    let (out, err, code) = ssh(srv.addr, &[&admin.file], &[], "health", b"");
    assert_eq!(code, 0, "slots still held after auth_timeout: {err}");
    assert!(out.contains("\"ok\":true"), "{out}");
    let timeouts = audit(dir.path(), "control.auth_refused")
        .into_iter()
        .filter(|r| r["reason"] == "authentication timeout")
        .count();
    assert_eq!(timeouts, 4);
    drop(silent);
}

#[test]
fn f8_max_auth_tries_enforced() {
    let dir = tempfile::tempdir().unwrap();
    let admin = key(dir.path(), "admin");
    let strangers: Vec<TestKey> = (0..10)
        .map(|i| key(dir.path(), &format!("stranger{i}")))
        .collect();
    let srv = serve(
        dir.path(),
        ControlConfig {
            max_auth_tries: 3,
            keys: vec![site_key(&admin, &["admin"])],
            ..Default::default()
        },
    );
    let files: Vec<&std::path::Path> = strangers.iter().map(|k| k.file.as_path()).collect();
    let (_, err, code) = ssh(srv.addr, &files, &["-v"], "health", b"");
    assert_eq!(code, 255, "{err}");
    let offered = err.matches("Offering public key").count();
    assert_eq!(
        offered, 3,
        "keys offered on one connection: {offered}\n{err}"
    );
    let deadline = Instant::now() + Duration::from_secs(5);
    let rec = loop {
        if let Some(r) = audit(dir.path(), "control.auth_refused").pop() {
            break r;
        }
        assert!(Instant::now() < deadline, "no auth_refused record");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(rec["reason"], "too many authentication failures", "{rec}");
    // OpenSSH's first "none" probe is recorded but not counted.
    let keys_tried = rec["attempts"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|a| a["method"] == "publickey")
        .count();
    assert_eq!(keys_tried, 3, "{rec}");
    // The limit is per connection: the right key still gets in.
    let (out, err, code) = ssh(srv.addr, &[&admin.file], &[], "health", b"");
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("\"ok\":true"), "{out}");
}

struct AnyHostKey;

impl russh::client::Handler for AnyHostKey {
    type Error = russh::Error;
    async fn check_server_key(
        &mut self,
        _key: &russh::keys::PublicKey,
    ) -> Result<bool, Self::Error> {
        Ok(true)
    }
}

#[test]
fn f8_channel_cap() {
    let dir = tempfile::tempdir().unwrap();
    let admin = key(dir.path(), "admin");
    let srv = serve(
        dir.path(),
        ControlConfig {
            keys: vec![site_key(&admin, &["health:read"])],
            ..Default::default()
        },
    );
    let private = Arc::new(admin.private.clone());
    srv.rt.block_on(async {
        let config = Arc::new(russh::client::Config::default());
        let mut session = russh::client::connect(config, srv.addr, AnyHostKey)
            .await
            .unwrap();
        let auth = session
            .authenticate_publickey("gwctl", PrivateKeyWithHashAlg::new(private, None))
            .await
            .unwrap();
        assert!(auth.success());
        let mut open = Vec::new();
        let mut refused = 0;
        for _ in 0..40 {
            match session.channel_open_session().await {
                Ok(ch) => open.push(ch),
                Err(russh::Error::ChannelOpenFailure(_)) => refused += 1,
                Err(e) => panic!("unexpected error opening a channel: {e}"),
            }
        }
        assert_eq!(
            (open.len(), refused),
            (
                gwos_control::server::MAX_CHANNELS,
                40 - gwos_control::server::MAX_CHANNELS
            )
        );
        // Each open channel buffers up to max_request_bytes, but the
        // connection as a whole is capped: the channel that crosses the cap is
        // answered with an error at once.
        let chunk = vec![b' '; 60 * 1024];
        for ch in &open {
            ch.exec(true, "health").await.unwrap();
            ch.data(&chunk[..]).await.unwrap();
        }
        let mut answers = Vec::new();
        for mut ch in open {
            let got = tokio::time::timeout(Duration::from_secs(2), async {
                let mut out = Vec::new();
                while let Some(msg) = ch.wait().await {
                    match msg {
                        russh::ChannelMsg::Data { data } => out.extend_from_slice(&data),
                        russh::ChannelMsg::Eof | russh::ChannelMsg::Close => break,
                        _ => {}
                    }
                }
                out
            })
            .await;
            if let Ok(out) = got {
                answers.push(String::from_utf8_lossy(&out).into_owned());
            }
        }
        // 4 × 60 KiB fit in the cap (4 × max_request_bytes); the other 4 channels cross it.
        let capped = answers
            .iter()
            .filter(|a| a.contains("buffered on this connection"))
            .count();
        assert_eq!(
            (answers.len(), capped),
            (4, 4),
            "channels answered / stopped by the per-connection buffer cap: {answers:?}"
        );
    });
}
