//! Host integration test: real `gwosd run vpn` and `gwosd run tls-front` in a
//! gateway namespace, Debian's wireguard-go + wg in client namespaces going
//! through `gwos-connect` (TLS 1.3, SPKI pin), an "internal" namespace behind
//! the gateway. Checks reachability per policy, client isolation, the inner
//! source check, `openssl s_client` protocol/suite refusals, vpn_user_delete
//! and idle teardown. Needs root, ip, nft, wireguard-go, wg, openssl, ping.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use gwos_test_support::{gwosd, in_ns, must, ns_ok, require_root_and_tools};
use serde_json::{json, Value};

struct Env {
    ns: Vec<String>,
    children: Vec<Child>,
    dir: tempfile::TempDir,
}

impl Drop for Env {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
        for n in &self.ns {
            let _ = Command::new("ip").args(["netns", "del", n]).status();
        }
    }
}

fn rpc(run: &Path, svc: &str, method: &str, params: Value) -> Value {
    let r = gwos_core::rpc::call(
        &run.join(format!("{svc}.sock")),
        method,
        params,
        None,
        Duration::from_secs(10),
    )
    .unwrap_or_else(|e| panic!("{svc} {method}: {e:#}"));
    assert!(r.ok, "{svc} {method}: {:?}", r.error);
    r.result
}

fn wait_sock(p: &Path, child: &mut Child) {
    let t = Instant::now();
    while !p.exists() {
        if let Ok(Some(st)) = child.try_wait() {
            panic!("service exited early: {st}");
        }
        assert!(
            t.elapsed() < Duration::from_secs(30),
            "{} never appeared",
            p.display()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn ping(ns: &str, dst: &str, extra: &[&str]) -> bool {
    let mut a = vec!["ping", "-n", "-c", "2", "-i", "0.3", "-W", "2"];
    a.extend_from_slice(extra);
    a.push(dst);
    ns_ok(ns, &a)
}

fn wg_client(
    env: &mut Env,
    ns: &str,
    ifname: &str,
    cfg: &str,
    privkey: &str,
    addr: &str,
    routes: &[&str],
) {
    let filled = cfg.replace("<CLIENT_PRIVATE_KEY>", privkey);
    let setconf: String = filled
        .lines()
        .filter(|l| {
            ![
                "Address", "DNS", "MTU", "Table", "PreUp", "PostUp", "PreDown", "PostDown",
            ]
            .iter()
            .any(|k| l.starts_with(k))
        })
        .map(|l| format!("{l}\n"))
        .collect();
    let path = env.dir.path().join(format!("{ifname}.conf"));
    std::fs::write(&path, setconf).unwrap();
    let child = Command::new("ip")
        .args(["netns", "exec", ns, "wireguard-go", "-f", ifname])
        .env("WG_I_PREFER_BUGGY_USERSPACE_TO_POLISHED_KMOD", "1")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("wireguard-go");
    env.children.push(child);
    let t = Instant::now();
    while !ns_ok(ns, &["ip", "link", "show", ifname]) {
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "wireguard-go never made {ifname}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    in_ns(ns, &["wg", "setconf", ifname, path.to_str().unwrap()]);
    in_ns(ns, &["ip", "addr", "add", addr, "dev", ifname]);
    in_ns(ns, &["ip", "link", "set", ifname, "mtu", "1380", "up"]);
    for r in routes {
        in_ns(ns, &["ip", "route", "add", r, "dev", ifname]);
    }
}

fn user(st: &Value, name: &str) -> Option<Value> {
    st["users"]
        .as_array()
        .unwrap()
        .iter()
        .find(|u| u["name"] == name)
        .cloned()
}

#[test]
fn tunnel_end_to_end() {
    require_root_and_tools(&["ip", "nft", "wireguard-go", "wg", "openssl", "ping"]);
    let gwosd = gwosd();
    let connect = env!("CARGO_BIN_EXE_gwos-connect");
    let id = std::process::id() % 100_000;
    let (gw, c1, c2, int) = (
        format!("gwv{id}"),
        format!("gwc{id}"),
        format!("gwd{id}"),
        format!("gwi{id}"),
    );
    let mut env = Env {
        ns: vec![],
        children: vec![],
        dir: tempfile::tempdir().unwrap(),
    };
    for n in [&gw, &c1, &c2, &int] {
        must(&["ip", "netns", "add", n]);
        env.ns.push(n.clone());
        in_ns(n, &["ip", "link", "set", "lo", "up"]);
    }
    // client1 <-> gw 172.31.1.0/24, client2 <-> gw 172.31.2.0/24, gw <-> internal 10.99.0.0/24
    for (peer, a, b, net) in [
        (&c1, "v1g", "v1c", "172.31.1"),
        (&c2, "v2g", "v2c", "172.31.2"),
        (&int, "vig", "vii", "10.99.0"),
    ] {
        let (a, b) = (format!("{a}{id}"), format!("{b}{id}"));
        must(&[
            "ip", "link", "add", &a, "netns", &gw, "type", "veth", "peer", "name", &b, "netns",
            peer,
        ]);
        in_ns(
            &gw,
            &["ip", "addr", "add", &format!("{net}.1/24"), "dev", &a],
        );
        in_ns(&gw, &["ip", "link", "set", &a, "up"]);
        in_ns(
            peer,
            &["ip", "addr", "add", &format!("{net}.2/24"), "dev", &b],
        );
        in_ns(peer, &["ip", "link", "set", &b, "up"]);
        if peer == &int {
            in_ns(peer, &["ip", "addr", "add", "10.99.1.2/32", "dev", &b]);
            in_ns(peer, &["ip", "addr", "add", "10.99.2.2/32", "dev", &b]);
            in_ns(peer, &["ip", "route", "add", "default", "via", "10.99.0.1"]);
            in_ns(
                &gw,
                &["ip", "route", "add", "10.99.1.0/24", "via", "10.99.0.2"],
            );
            in_ns(
                &gw,
                &["ip", "route", "add", "10.99.2.0/24", "via", "10.99.0.2"],
            );
        }
    }
    in_ns(&gw, &["sysctl", "-qw", "net.ipv4.ip_forward=1"]);
    // The base ruleset's forward shape (default deny, jump vpn_forward); the
    // vpn fills vpn_forward and its masquerade chain itself.
    let nft = "table inet gwos {\n chain vpn_forward {}\n chain forward { type filter hook forward priority 0; policy drop;\n  ct state established,related accept\n  jump vpn_forward\n }\n}\n";
    let nft_path = env.dir.path().join("base.nft");
    std::fs::write(&nft_path, nft).unwrap();
    in_ns(&gw, &["nft", "-f", nft_path.to_str().unwrap()]);

    let dir = env.dir.path().to_path_buf();
    let run = dir.join("run");
    let site = dir.join("site.toml");
    std::fs::write(
        &site,
        "[vpn]\nendpoints = [\"127.0.0.1:51821\"]\nidle_timeout_secs = 8\ndns = [\"10.77.0.1\"]\n\n[tls-front]\nlisten = \"0.0.0.0:8443\"\nhandshake_timeout_secs = 5\n",
    )
    .unwrap();
    for svc in ["vpn", "tls-front"] {
        let log = std::fs::File::create(dir.join(format!("{svc}.log"))).unwrap();
        let mut child = Command::new("ip")
            .args(["netns", "exec", &gw])
            .arg(&gwosd)
            .args(["run", svc, "--config"])
            .arg(&site)
            .arg("--state-dir")
            .arg(dir.join(svc))
            .arg("--run-dir")
            .arg(&run)
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("gwosd");
        wait_sock(&run.join(format!("{svc}.sock")), &mut child);
        env.children.push(child);
    }
    let pin = rpc(&run, "tls-front", "health", json!({}))["spki_sha256"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(pin.len(), 64);

    // --- TLS policy, checked with openssl s_client from client1.
    let s_client = |extra: &[&str]| -> bool {
        let mut a = vec![
            "ip",
            "netns",
            "exec",
            &c1,
            "openssl",
            "s_client",
            "-connect",
            "172.31.1.1:8443",
        ];
        a.extend_from_slice(extra);
        let o = Command::new(a[0])
            .args(&a[1..])
            .stdin(Stdio::null())
            .output()
            .unwrap();
        let out = String::from_utf8_lossy(&o.stdout);
        o.status.success() && out.contains("TLSv1.3")
    };
    assert!(!s_client(&["-tls1_2"]), "TLS 1.2 must be refused");
    assert!(s_client(&[
        "-tls1_3",
        "-ciphersuites",
        "TLS_AES_256_GCM_SHA384"
    ]));
    assert!(s_client(&[
        "-tls1_3",
        "-ciphersuites",
        "TLS_CHACHA20_POLY1305_SHA256"
    ]));
    assert!(
        !s_client(&["-tls1_3", "-ciphersuites", "TLS_AES_128_GCM_SHA256"]),
        "AES-128-GCM must be refused"
    );

    // --- users
    let key = |_: &str| {
        let k = must(&["wg", "genkey"]).trim().to_string();
        let mut p = Command::new("wg")
            .arg("pubkey")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        use std::io::Write;
        p.stdin.take().unwrap().write_all(k.as_bytes()).unwrap();
        let pubk = String::from_utf8(p.wait_with_output().unwrap().stdout)
            .unwrap()
            .trim()
            .to_string();
        (k, pubk)
    };
    let (a_priv, a_pub) = key("alice");
    let (b_priv, b_pub) = key("bob");
    let a = rpc(
        &run,
        "vpn",
        "vpn_user_create",
        json!({"name": "alice", "public_key": a_pub, "policy": {"allowed": ["10.99.1.0/24"]}}),
    );
    let b = rpc(
        &run,
        "vpn",
        "vpn_user_create",
        json!({"name": "bob", "public_key": b_pub, "policy": {"allowed": ["10.99.1.0/24"]}}),
    );
    assert_eq!(a["address"], "10.77.0.2/32");
    assert_eq!(b["address"], "10.77.0.3/32");
    let cfg_a = a["client_config"].as_str().unwrap();
    assert!(cfg_a.contains("PrivateKey = <CLIENT_PRIVATE_KEY>") && !cfg_a.contains(&a_priv));
    // a second user with the same key is refused
    let dup = gwos_core::rpc::call(
        &run.join("vpn.sock"),
        "vpn_user_create",
        json!({"name": "eve", "public_key": a_pub}),
        None,
        Duration::from_secs(5),
    )
    .unwrap();
    assert!(!dup.ok);

    for (ns, port) in [(&c1, "127.0.0.1:51821"), (&c2, "127.0.0.1:51821")] {
        let child = Command::new("ip")
            .args([
                "netns",
                "exec",
                ns,
                connect,
                "--server",
                if ns == &c1 {
                    "172.31.1.1:8443"
                } else {
                    "172.31.2.1:8443"
                },
                "--pin",
                &pin,
                "--listen",
                port,
            ])
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join(format!("connect-{ns}.log"))).unwrap())
            .spawn()
            .unwrap();
        env.children.push(child);
    }
    std::thread::sleep(Duration::from_millis(300));
    // Clients route everything to the tunnel (AllowedIPs widened) so the
    // gateway, not the client, has to refuse what the policy does not allow.
    wg_client(
        &mut env,
        &c1,
        "wga",
        cfg_a,
        &a_priv,
        "10.77.0.2/32",
        &["10.77.0.0/24", "10.99.0.0/16"],
    );
    wg_client(
        &mut env,
        &c2,
        "wgb",
        b["client_config"].as_str().unwrap(),
        &b_priv,
        "10.77.0.3/32",
        &["10.77.0.0/24", "10.99.0.0/16"],
    );
    let gw_pub = a["gateway_public_key"].as_str().unwrap();
    in_ns(
        &c1,
        &[
            "wg",
            "set",
            "wga",
            "peer",
            gw_pub,
            "allowed-ips",
            "0.0.0.0/0",
        ],
    );
    in_ns(
        &c2,
        &[
            "wg",
            "set",
            "wgb",
            "peer",
            gw_pub,
            "allowed-ips",
            "0.0.0.0/0",
        ],
    );

    // --- reachability per policy
    let t = Instant::now();
    while !ping(&c1, "10.77.0.1", &[]) {
        assert!(
            t.elapsed() < Duration::from_secs(20),
            "alice never reached the gateway; logs in {}",
            dir.display()
        );
    }
    assert!(
        ping(&c1, "10.99.1.2", &[]),
        "alice must reach the allowed internal host"
    );
    assert!(
        !ping(&c1, "10.99.2.2", &[]),
        "alice must not reach a host outside her policy"
    );
    let st = rpc(&run, "vpn", "vpn_status", json!({}));
    let au = user(&st, "alice").unwrap();
    assert_eq!(au["session"], true);
    assert!(
        au["dropped_policy"].as_u64().unwrap() > 0,
        "the vpn itself dropped the disallowed packets: {au}"
    );
    assert!(au["rx_bytes"].as_u64().unwrap() > 0);

    assert!(ping(&c2, "10.77.0.1", &[]), "bob must reach the gateway");
    assert!(!ping(&c2, "10.77.0.2", &[]), "bob must not reach alice");
    // inner source check: bob sending from an address that is not his
    in_ns(&c2, &["ip", "addr", "add", "10.77.0.50/32", "dev", "wgb"]);
    assert!(
        !ping(&c2, "10.77.0.1", &["-I", "10.77.0.50"]),
        "spoofed inner source must be dropped"
    );
    let bu = user(&rpc(&run, "vpn", "vpn_status", json!({})), "bob").unwrap();
    assert!(bu["dropped_spoofed"].as_u64().unwrap() > 0, "{bu}");
    assert!(bu["dropped_policy"].as_u64().unwrap() > 0, "{bu}");

    // --- update_ccd widens alice's policy at once
    rpc(
        &run,
        "vpn",
        "update_ccd",
        json!({"name": "alice", "policy": {"allowed": ["10.99.1.0/24", "10.99.2.0/24"]}}),
    );
    assert!(
        ping(&c1, "10.99.2.2", &[]),
        "after update_ccd alice reaches 10.99.2.2"
    );

    // --- delete cuts bob's live session
    assert!(ping(&c2, "10.77.0.1", &[]));
    rpc(&run, "vpn", "vpn_user_delete", json!({"name": "bob"}));
    assert!(user(&rpc(&run, "vpn", "vpn_status", json!({})), "bob").is_none());
    assert!(
        !ping(&c2, "10.77.0.1", &[]),
        "a deleted user's session must be cut at once"
    );

    // --- idle teardown: alice silent for longer than idle_timeout_secs (8)
    let t = Instant::now();
    loop {
        let au = user(&rpc(&run, "vpn", "vpn_status", json!({})), "alice").unwrap();
        if au["session"] == false {
            break;
        }
        assert!(
            t.elapsed() < Duration::from_secs(20),
            "idle session never torn down: {au}"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    assert!(
        !ping(&c1, "10.77.0.1", &["-c", "1"]),
        "old session keys must no longer work"
    );
    // wireguard-go notices and handshakes again
    let t = Instant::now();
    while !ping(&c1, "10.77.0.1", &[]) {
        assert!(
            t.elapsed() < Duration::from_secs(40),
            "alice never handshook again after idle teardown"
        );
    }
    assert_eq!(
        user(&rpc(&run, "vpn", "vpn_status", json!({})), "alice").unwrap()["session"],
        true
    );
    let log = std::fs::read_to_string(dir.join("vpn.log")).unwrap();
    assert!(log.contains("vpn.idle_teardown"), "{log}");
}
