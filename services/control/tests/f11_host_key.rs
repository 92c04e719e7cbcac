//! F11 (security review 2026-12): `gwos ctl` never turns host-key checking
//! off. Without `--known-hosts` it pins the gateway's key on first contact
//! in a per-user file (trust on first use, reported), and a gateway that
//! answers later with another key is refused before the request is sent.
//! Two control servers with different host keys on the same loopback port;
//! the client is the real OpenSSH `ssh` that `gwos ctl` runs.

mod common;

use common::*;
use gwos_control::client::{HostKeys, Target};
use gwos_control::config::ControlConfig;
use serde_json::json;

#[test]
fn f11_ctl_refuses_changed_host_key() {
    let dir = tempfile::tempdir().unwrap();
    let admin = key(dir.path(), "admin");
    let site = || ControlConfig {
        keys: vec![site_key(&admin, &["admin"])],
        ..Default::default()
    };
    let (state_a, state_b) = (dir.path().join("a"), dir.path().join("b"));
    std::fs::create_dir_all(&state_a).unwrap();
    std::fs::create_dir_all(&state_b).unwrap();
    let known = dir.path().join("config/gwos/known_hosts");

    let real = serve(&state_a, site());
    let target = Target {
        host: real.addr.ip().to_string(),
        port: real.addr.port(),
        identity: admin.file.clone(),
        host_keys: HostKeys::FirstUse(known.clone()),
    };
    // First contact: the key is pinned and reported.
    let reply = gwos_control::client::call(&target, "health", &json!({})).unwrap();
    assert_eq!(reply.status, 0, "{:?}", reply.response);
    let host_fp = reply.response["host_key_fingerprint"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(reply.pinned.as_deref(), Some(host_fp.as_str()));
    assert!(known.exists());
    // Second contact: same key, nothing new pinned.
    let reply = gwos_control::client::call(&target, "health", &json!({})).unwrap();
    assert_eq!((reply.status, reply.pinned), (0, None));
    let port = real.addr.port();
    drop(real);

    // An impostor with another host key on the same address.
    let impostor = serve_on(&state_b, site(), port);
    let err = gwos_control::client::call(
        &target,
        "spa_user_set",
        &json!({"user": "alice", "key_base64": "c2VjcmV0c2VjcmV0c2VjcmV0", "hmac_key_base64": "aG1hY2htYWNobWFjaG1hY2htYWNobWFjaG1hY2htYWM="}),
    )
    .unwrap_err();
    let msg = format!("{err:#}");
    assert!(msg.contains("does not match the key pinned in"), "{msg}");
    // Nothing reached the impostor's command layer.
    assert_eq!(
        audit(&state_b, "control.call"),
        Vec::<serde_json::Value>::new()
    );
    drop(impostor);

    // With an explicit --known-hosts file, an unknown host is refused, not pinned.
    let pinned_only = Target {
        host_keys: HostKeys::Pinned(dir.path().join("empty_known_hosts")),
        ..target
    };
    std::fs::write(dir.path().join("empty_known_hosts"), "").unwrap();
    let other = serve_on(&state_b, site(), port);
    let err = gwos_control::client::call(&pinned_only, "health", &json!({})).unwrap_err();
    assert!(format!("{err:#}").contains("is not in"), "{err:#}");
    drop(other);
}

#[test]
fn f11_ssh_args_never_disable_checking() {
    for hk in [
        HostKeys::FirstUse("/u/.config/gwos/known_hosts".into()),
        HostKeys::Pinned("/kh".into()),
    ] {
        let t = Target {
            host: "gw".into(),
            port: 2222,
            identity: "/k".into(),
            host_keys: hk.clone(),
        };
        let a = gwos_control::client::ssh_args(&t, "health").join(" ");
        assert!(!a.contains("StrictHostKeyChecking=no"), "{a}");
        assert!(!a.contains("/dev/null"), "{a}");
        match hk {
            HostKeys::FirstUse(_) => assert!(
                a.contains("UserKnownHostsFile=/u/.config/gwos/known_hosts")
                    && a.contains("StrictHostKeyChecking=accept-new"),
                "{a}"
            ),
            HostKeys::Pinned(_) => assert!(
                a.contains("UserKnownHostsFile=/kh") && a.contains("StrictHostKeyChecking=yes"),
                "{a}"
            ),
        }
    }
}
