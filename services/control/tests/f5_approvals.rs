//! F5 (security review 2026-12): approvals bind the requester and a nonce,
//! a used approval is refused, minting a key needs an approval whenever
//! approvals are on, and a key only removes keys whose scopes it covers.
//! Driven through `Control::call`, as the SSH layer calls it.

mod common;

use common::*;
use gwos_control::command::Command;
use gwos_control::config::ControlConfig;
use serde_json::json;

fn approve(
    approver: &TestKey,
    requester: &TestKey,
    command: &str,
    req: &serde_json::Value,
) -> serde_json::Value {
    gwos_control::client::approve(&approver.file, &requester.fp, command, req, 300).unwrap()
}

#[test]
fn f5_replayed_approval_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b, k) = (
        key(dir.path(), "a"),
        key(dir.path(), "b"),
        key(dir.path(), "k"),
    );
    let ctl = control(
        dir.path(),
        ControlConfig {
            require_approval: vec![Command::ControlKeyAdd, Command::ControlKeyRemove],
            keys: vec![site_key(&a, &["admin"]), site_key(&b, &["admin"])],
            ..Default::default()
        },
    );
    let add = json!({"trace_id": "t1", "key": k.line, "scopes": ["health:read"]});
    let add = approve(&b, &a, "control_key_add", &add).to_string();
    assert_ok(&call_raw(&ctl, &a, "control_key_add", add.as_bytes()));
    let rm = json!({"trace_id": "t2", "fingerprint": k.fp});
    let rm = approve(&a, &b, "control_key_remove", &rm);
    assert_ok(&call(&ctl, &b, "control_key_remove", &rm));
    // A resends the first request byte for byte: K must stay removed.
    let v = call_raw(&ctl, &a, "control_key_add", add.as_bytes());
    assert_err(&v, "approval was already used");
    assert_err(
        &call(&ctl, &k, "health", &json!({})),
        "no longer authorized",
    );
    // The used set survives a restart.
    drop(ctl);
    let ctl = control(
        dir.path(),
        ControlConfig {
            require_approval: vec![Command::ControlKeyAdd, Command::ControlKeyRemove],
            keys: vec![site_key(&a, &["admin"]), site_key(&b, &["admin"])],
            ..Default::default()
        },
    );
    let v = call_raw(&ctl, &a, "control_key_add", add.as_bytes());
    assert_err(&v, "approval was already used");
}

#[test]
fn f5_approval_bound_to_requester() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b, c, k) = (
        key(dir.path(), "a"),
        key(dir.path(), "b"),
        key(dir.path(), "c"),
        key(dir.path(), "k"),
    );
    let ctl = control(
        dir.path(),
        ControlConfig {
            require_approval: vec![Command::ControlKeyAdd],
            keys: vec![
                site_key(&a, &["admin"]),
                site_key(&b, &["admin"]),
                site_key(&c, &["keys:write", "health:read"]),
            ],
            ..Default::default()
        },
    );
    // B approved A's request; C (another key with the scope) sends it.
    let add = json!({"trace_id": "t1", "key": k.line, "scopes": ["health:read"]});
    let v = call(
        &ctl,
        &c,
        "control_key_add",
        &approve(&b, &a, "control_key_add", &add),
    );
    assert_err(&v, "approval was issued for key");
    assert!(!dir.path().join("keys.json").exists());
}

#[test]
fn f5_self_minted_admin_cannot_approve() {
    let dir = tempfile::tempdir().unwrap();
    let (a, a2) = (key(dir.path(), "a"), key(dir.path(), "a2"));
    let ctl = control(
        dir.path(),
        ControlConfig {
            require_approval: vec![Command::Reboot],
            keys: vec![site_key(&a, &["admin"])],
            ..Default::default()
        },
    );
    // Approvals are on, so minting a key needs one too.
    let v = call(
        &ctl,
        &a,
        "control_key_add",
        &json!({"key": a2.line, "scopes": ["admin"]}),
    );
    assert_err(&v, "control_key_add needs a second admin key's approval");
    assert!(!dir.path().join("keys.json").exists());
    let help = call(&ctl, &a, "help", &json!({}));
    let add = help["commands"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["command"] == "control_key_add")
        .unwrap();
    assert_eq!(add["approval_required"], true, "{help}");
    // A2's signature is worthless: it is no control key.
    let req = approve(&a2, &a, "reboot", &json!({"trace_id": "t-reboot"}));
    let v = call(&ctl, &a, "reboot", &req);
    assert_err(&v, &format!("approver key {} is not a control key", a2.fp));
}

#[test]
fn f5_key_remove_needs_covering_scopes() {
    let dir = tempfile::tempdir().unwrap();
    let (admin, w, k) = (
        key(dir.path(), "admin"),
        key(dir.path(), "w"),
        key(dir.path(), "k"),
    );
    let ctl = control(
        dir.path(),
        ControlConfig {
            keys: vec![site_key(&admin, &["admin"]), site_key(&w, &["keys:write"])],
            ..Default::default()
        },
    );
    assert_ok(&call(
        &ctl,
        &admin,
        "control_key_add",
        &json!({"key": k.line, "scopes": ["admin"]}),
    ));
    let v = call(
        &ctl,
        &w,
        "control_key_remove",
        &json!({"trace_id": "t-rm", "fingerprint": k.fp}),
    );
    assert_err(&v, "does not hold all scopes of key");
    let rec = audit(dir.path(), "control.call")
        .into_iter()
        .find(|r| r["trace_id"] == "t-rm")
        .unwrap();
    assert_eq!(rec["result"], "denied", "{rec}");
    assert_ok(&call(&ctl, &k, "health", &json!({})));
}
