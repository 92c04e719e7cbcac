//! F7 (security review 2026-12): the audit trail holds only bounded,
//! validated arguments, aggregates unauthenticated refusals per source,
//! records an intent before every change and refuses a change it cannot
//! record.

mod common;

use std::time::{Duration, Instant};

use common::*;
use gwos_control::config::ControlConfig;
use serde_json::{json, Value};

#[test]
fn f7_flood_of_padded_requests_keeps_history() {
    let dir = tempfile::tempdir().unwrap();
    let (admin, low, k) = (
        key(dir.path(), "admin"),
        key(dir.path(), "low"),
        key(dir.path(), "k"),
    );
    let ctl = control(
        dir.path(),
        ControlConfig {
            keys: vec![site_key(&admin, &["admin"]), site_key(&low, &["vpn:read"])],
            ..Default::default()
        },
    );
    let add = json!({"trace_id": "t-admin-add", "key": k.line, "scopes": ["health:read"]});
    assert_ok(&call(&ctl, &admin, "control_key_add", &add));
    // The lowest-privilege key floods: 300 refused calls with 60 KiB of junk each.
    let pad = "x".repeat(60 * 1024);
    for _ in 0..300 {
        let v = call(&ctl, &low, "health", &json!({"pad": pad}));
        assert_err(&v, "lacks scope health:read");
    }
    let v = call(
        &ctl,
        &admin,
        "pull_logs",
        &json!({"since": 0, "limit": 10000}),
    );
    assert_ok(&v);
    let records = v["records"].as_array().unwrap();
    assert!(
        records
            .iter()
            .any(|r| r["trace_id"] == "t-admin-add" && r["kind"] == "control.call"),
        "the admin's control_key_add record was evicted ({} records left)",
        records.len()
    );
    // Refused requests leave no trace of their body.
    let refused: Vec<&Value> = records
        .iter()
        .filter(|r| r["command"] == "health" && r["result"] == "denied")
        .collect();
    assert_eq!(refused.len(), 300);
    for r in refused {
        let line = r.to_string();
        assert!(line.len() < 4096 && !line.contains("xxxx"), "{line:.300}");
    }
}

#[test]
fn f7_intent_recorded_before_change() {
    let dir = tempfile::tempdir().unwrap();
    let (admin, k) = (key(dir.path(), "admin"), key(dir.path(), "k"));
    let ctl = control(
        dir.path(),
        ControlConfig {
            keys: vec![site_key(&admin, &["admin"])],
            ..Default::default()
        },
    );
    let add = json!({"trace_id": "t-add", "key": k.line, "scopes": ["health:read"]});
    assert_ok(&call(&ctl, &admin, "control_key_add", &add));
    let text = std::fs::read_to_string(dir.path().join("audit.log")).unwrap();
    let kinds: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .filter(|r| r["trace_id"] == "t-add")
        .map(|r| json!([r["kind"], r["command"]]))
        .collect();
    assert_eq!(
        kinds,
        [
            json!(["control.intent", "control_key_add"]),
            json!(["control.call", "control_key_add"])
        ]
    );
    // Reads leave no intent record.
    assert_ok(&call(
        &ctl,
        &admin,
        "health",
        &json!({"trace_id": "t-read"}),
    ));
    assert_eq!(
        audit(dir.path(), "control.intent").len(),
        1,
        "health left an intent record"
    );
}

#[test]
fn f7_unrecordable_change_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (admin, k) = (key(dir.path(), "admin"), key(dir.path(), "k"));
    let ctl = control(
        dir.path(),
        ControlConfig {
            keys: vec![site_key(&admin, &["admin"])],
            ..Default::default()
        },
    );
    // The audit log cannot be appended to (root ignores modes; a directory in its place cannot be written).
    std::fs::create_dir(dir.path().join("audit.log")).unwrap();
    let add = json!({"key": k.line, "scopes": ["health:read"]});
    let v = call(&ctl, &admin, "control_key_add", &add);
    assert_err(&v, "cannot record the change in the audit log");
    assert!(
        !dir.path().join("keys.json").exists(),
        "an unrecorded change was made"
    );
    let v = call(&ctl, &admin, "config_set", &json!({"dns": ["10.0.0.53"]}));
    assert_err(&v, "cannot record the change in the audit log");
    assert!(!dir.path().join("runtime.json").exists());
    // Reads still work.
    assert_ok(&call(&ctl, &admin, "health", &json!({})));
}

#[test]
fn f7_unauthenticated_connects_aggregated() {
    let dir = tempfile::tempdir().unwrap();
    let admin = key(dir.path(), "admin");
    let ctl = std::sync::Arc::new(control(
        dir.path(),
        ControlConfig {
            listen: "127.0.0.1:0".into(),
            backend: vec!["127.0.0.0/8".into()],
            keys: vec![site_key(&admin, &["admin"])],
            ..Default::default()
        },
    ));
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    const N: usize = 2000;
    rt.block_on(async {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let host = gwos_control::server::host_key(dir.path()).unwrap();
        let server = tokio::spawn(gwos_control::server::serve(ctl.clone(), listener, host));
        for _ in 0..N {
            let s = tokio::net::TcpStream::connect(addr).await.unwrap();
            drop(s);
        }
        // Let the server see every close.
        let deadline = Instant::now() + Duration::from_secs(30);
        while ctl.sessions.load(std::sync::atomic::Ordering::Relaxed) > 0 {
            assert!(Instant::now() < deadline, "connections not closed");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
        server.abort();
    });
    // Connects beyond max_sessions are refused at accept (connection_refused),
    // the others close before authenticating (auth_refused).
    let kinds = ["control.auth_refused", "control.connection_refused"];
    for kind in kinds {
        let n = audit(dir.path(), kind).len();
        assert!(
            n <= gwos_control::refusals::BURST as usize,
            "{n} {kind} records for {N} connects from one source"
        );
    }
    // When the window ends, one record per kind stands for the rest.
    ctl.flush_refusals(Instant::now() + gwos_control::refusals::WINDOW);
    let mut total = 0;
    for kind in kinds {
        let recs = audit(dir.path(), kind);
        assert!(recs.len() <= gwos_control::refusals::BURST as usize + 1);
        let summaries: Vec<&Value> = recs.iter().filter(|r| r["aggregated"] == true).collect();
        assert!(summaries.len() <= 1, "{summaries:?}");
        for r in &recs {
            assert_eq!(r["source_ip"], "127.0.0.1", "{r}");
        }
        total += recs
            .iter()
            .map(|r| r["count"].as_u64().unwrap())
            .sum::<u64>();
    }
    assert_eq!(total, N as u64);
}
