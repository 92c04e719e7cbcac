//! Host integration test of short-lived grants: a real `gwosd run vpn` in a
//! gateway namespace with its public UDP port, Debian's wireguard-go + wg as
//! the clients in a client namespace. A peer created with `expires_secs`
//! stops passing traffic within 5 s of its expiry and leaves `vpn_user_list`;
//! a renewed one keeps working; expiry survives a restart of the vpn, and a
//! grant that ended while the vpn was down is gone at start. Needs root, ip,
//! nft, wireguard-go, wg, ping.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

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

fn run(args: &[&str]) -> std::process::Output {
    Command::new(args[0])
        .args(&args[1..])
        .output()
        .unwrap_or_else(|e| panic!("running {args:?}: {e}"))
}

fn in_ns(ns: &str, args: &[&str]) -> String {
    let mut v = vec!["ip", "netns", "exec", ns];
    v.extend_from_slice(args);
    let o = run(&v);
    assert!(
        o.status.success(),
        "{v:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn gwosd() -> PathBuf {
    if let Ok(p) = std::env::var("GWOSD") {
        return p.into();
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let st = Command::new(env!("CARGO"))
        .args(["build", "-q", "-p", "gwos-init", "--bin", "gwosd"])
        .current_dir(&root)
        .status()
        .expect("cargo build gwosd");
    assert!(st.success(), "building gwosd failed");
    std::env::var("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| root.join("target"))
        .join("debug/gwosd")
}

fn call(run_dir: &Path, method: &str, params: Value) -> Result<Value, String> {
    let r = gwos_core::rpc::call(
        &run_dir.join("vpn.sock"),
        method,
        params,
        None,
        Duration::from_secs(10),
    )
    .map_err(|e| format!("{e:#}"))?;
    if r.ok {
        Ok(r.result)
    } else {
        Err(r.error.unwrap_or_default())
    }
}

fn start_vpn(env: &mut Env, gw: &str) -> usize {
    let dir = env.dir.path();
    let log = std::fs::File::options()
        .create(true)
        .append(true)
        .open(dir.join("vpn.log"))
        .unwrap();
    let _ = std::fs::remove_file(dir.join("run/vpn.sock"));
    let mut child = Command::new("ip")
        .args(["netns", "exec", gw])
        .arg(gwosd())
        .args(["run", "vpn", "--config"])
        .arg(dir.join("site.toml"))
        .arg("--state-dir")
        .arg(dir.join("vpn"))
        .arg("--run-dir")
        .arg(dir.join("run"))
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .expect("gwosd run vpn");
    let t = Instant::now();
    while !dir.join("run/vpn.sock").exists() {
        if let Ok(Some(st)) = child.try_wait() {
            panic!(
                "vpn exited early ({st}): {}",
                std::fs::read_to_string(dir.join("vpn.log")).unwrap_or_default()
            );
        }
        assert!(
            t.elapsed() < Duration::from_secs(30),
            "vpn.sock never appeared"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    env.children.push(child);
    env.children.len() - 1
}

fn stop(env: &mut Env, idx: usize) {
    let c = &mut env.children[idx];
    let _ = c.kill();
    let _ = c.wait();
}

fn genkey() -> (String, String) {
    let k = run(&["wg", "genkey"]);
    let private = String::from_utf8(k.stdout).unwrap().trim().to_string();
    let mut p = Command::new("wg")
        .arg("pubkey")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    p.stdin
        .take()
        .unwrap()
        .write_all(private.as_bytes())
        .unwrap();
    let public = String::from_utf8(p.wait_with_output().unwrap().stdout).unwrap();
    (private, public.trim().to_string())
}

/// A wireguard-go client in `ns` for the gateway's client config.
fn wg_client(env: &mut Env, ns: &str, ifname: &str, answer: &Value, private: &str, endpoint: &str) {
    let cfg = answer["client_config"]
        .as_str()
        .unwrap()
        .replace("<CLIENT_PRIVATE_KEY>", private);
    let setconf: String = cfg
        .lines()
        .filter(|l| !l.starts_with("Address") && !l.starts_with("DNS"))
        .map(|l| {
            if l.starts_with("Endpoint") {
                format!("Endpoint = {endpoint}\n")
            } else {
                format!("{l}\n")
            }
        })
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
    while !run(&["ip", "netns", "exec", ns, "ip", "link", "show", ifname])
        .status
        .success()
    {
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "wireguard-go never made {ifname}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    in_ns(ns, &["wg", "setconf", ifname, path.to_str().unwrap()]);
    let addr = answer["address"].as_str().unwrap();
    in_ns(ns, &["ip", "addr", "add", addr, "dev", ifname]);
    in_ns(ns, &["ip", "link", "set", ifname, "mtu", "1380", "up"]);
    in_ns(ns, &["ip", "route", "add", "10.77.0.1/32", "dev", ifname]);
}

/// Pings the gateway's tunnel address through the tunnel of `ns`, retrying
/// for up to `secs` (the first packet waits for the handshake; after a vpn
/// restart the client re-handshakes only once its data went unanswered for
/// WireGuard's keepalive + rekey timeouts, 15 s).
fn reaches_gw(ns: &str, secs: u64) -> bool {
    let t = Instant::now();
    while t.elapsed() < Duration::from_secs(secs) {
        if ping_gw(ns) {
            return true;
        }
    }
    false
}

/// One ping of the gateway's tunnel address through the tunnel of `ns`.
fn ping_gw(ns: &str) -> bool {
    run(&[
        "ip",
        "netns",
        "exec",
        ns,
        "ping",
        "-n",
        "-c",
        "1",
        "-W",
        "1",
        "10.77.0.1",
    ])
    .status
    .success()
}

fn listed(run_dir: &Path, name: &str) -> Option<Value> {
    let st = call(run_dir, "vpn_user_list", json!({})).unwrap();
    st["users"]
        .as_array()
        .unwrap()
        .iter()
        .find(|u| u["name"] == name)
        .cloned()
}

fn require_root_and_tools() {
    let root = std::fs::metadata("/proc/self")
        .map(|m| std::os::unix::fs::MetadataExt::uid(&m) == 0)
        .unwrap_or(false);
    assert!(root, "this test needs root (network namespaces, TUN)");
    for t in ["ip", "nft", "wireguard-go", "wg", "ping"] {
        assert!(
            run(&["sh", "-c", &format!("command -v {t}")])
                .status
                .success(),
            "this test needs `{t}` (Debian packages in .ci/debian-packages.txt)"
        );
    }
}

/// A gateway namespace and one client namespace per name, each on its own
/// veth (client `i` is 172.31.(20+i).2, the gateway .1).
fn topology(env: &mut Env, id: u32, clients: usize) -> (String, Vec<String>) {
    let gw = format!("gwgg{id}");
    let cls: Vec<String> = (0..clients).map(|i| format!("gwgc{id}x{i}")).collect();
    for n in std::iter::once(&gw).chain(&cls) {
        assert!(
            run(&["ip", "netns", "add", n]).status.success(),
            "ip netns add {n}"
        );
        env.ns.push(n.clone());
        in_ns(n, &["ip", "link", "set", "lo", "up"]);
    }
    for (i, cl) in cls.iter().enumerate() {
        let (a, b) = (format!("ggv{id}x{i}"), format!("ggc{id}x{i}"));
        let ok = run(&[
            "ip", "link", "add", &a, "netns", &gw, "type", "veth", "peer", "name", &b, "netns", cl,
        ]);
        assert!(
            ok.status.success(),
            "veth: {}",
            String::from_utf8_lossy(&ok.stderr)
        );
        let net = 20 + i;
        in_ns(
            &gw,
            &[
                "ip",
                "addr",
                "add",
                &format!("172.31.{net}.1/24"),
                "dev",
                &a,
            ],
        );
        in_ns(&gw, &["ip", "link", "set", &a, "up"]);
        in_ns(
            cl,
            &[
                "ip",
                "addr",
                "add",
                &format!("172.31.{net}.2/24"),
                "dev",
                &b,
            ],
        );
        in_ns(cl, &["ip", "link", "set", &b, "up"]);
    }
    (gw, cls)
}

#[test]
fn grants_expire_renew_and_survive_restarts() {
    require_root_and_tools();
    let id = std::process::id() % 100_000;
    let mut env = Env {
        ns: vec![],
        children: vec![],
        dir: tempfile::tempdir().unwrap(),
    };
    let (gw, cls) = topology(&mut env, id, 2);
    std::fs::write(
        env.dir.path().join("site.toml"),
        "[vpn]\npublic_listen = \"0.0.0.0:51830\"\nendpoints = [\"172.31.20.1:51830\"]\ngrant_max_secs = 120\n",
    )
    .unwrap();
    let run_dir = env.dir.path().join("run");
    let first = start_vpn(&mut env, &gw);

    // above the site's maximum: refused, with the limit named
    let (_, pk) = genkey();
    let e = call(
        &run_dir,
        "vpn_user_create",
        json!({"name": "greedy", "public_key": pk, "expires_secs": 121}),
    )
    .unwrap_err();
    assert!(e.contains("maximum grant of 120"), "{e}");

    let (short_priv, short_pub) = genkey();
    let short = call(
        &run_dir,
        "vpn_user_create",
        json!({"name": "short", "public_key": short_pub, "expires_secs": 8}),
    )
    .unwrap();
    let created = Instant::now();
    assert!(
        short["expires_at"]
            .as_str()
            .is_some_and(|t| t.ends_with('Z')),
        "{short}"
    );
    let (kept_priv, kept_pub) = genkey();
    let kept = call(
        &run_dir,
        "vpn_user_create",
        json!({"name": "kept", "public_key": kept_pub, "expires_secs": 8}),
    )
    .unwrap();
    wg_client(
        &mut env,
        &cls[0],
        "wgs0",
        &short,
        &short_priv,
        "172.31.20.1:51830",
    );
    wg_client(
        &mut env,
        &cls[1],
        "wgk0",
        &kept,
        &kept_priv,
        "172.31.21.1:51830",
    );
    assert!(
        reaches_gw(&cls[0], 10),
        "the short grant passes traffic before its expiry"
    );
    assert!(reaches_gw(&cls[1], 10), "the kept grant passes traffic");
    let renewed = call(
        &run_dir,
        "vpn_user_renew",
        json!({"name": "kept", "expires_secs": 100}),
    )
    .unwrap();
    assert_ne!(renewed["expires_at"], kept["expires_at"]);
    assert_eq!(
        listed(&run_dir, "kept").unwrap()["expires_at"],
        renewed["expires_at"]
    );
    assert!(
        created.elapsed() < Duration::from_secs(8),
        "set-up took longer than the grant"
    );

    // the short grant ends 8 s after its creation: within 5 s more, gone and no traffic
    while created.elapsed() < Duration::from_secs(8) {
        std::thread::sleep(Duration::from_millis(100));
    }
    let ended = Instant::now();
    while listed(&run_dir, "short").is_some() {
        assert!(
            ended.elapsed() < Duration::from_secs(5),
            "the expired peer is still listed 5 s after its expiry"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(!ping_gw(&cls[0]), "an expired peer still passes traffic");
    assert!(
        ended.elapsed() < Duration::from_secs(5),
        "expiry took more than 5 s"
    );
    assert!(ping_gw(&cls[1]), "the renewed peer keeps working");
    let log = std::fs::read_to_string(env.dir.path().join("vpn.log")).unwrap();
    assert!(
        log.lines()
            .any(|l| l.contains("\"vpn.grant_expired\"") && l.contains("\"short\"")),
        "no expiry event: {log}"
    );

    // a restart keeps the expiry; a grant that ends while the vpn is down is gone at start
    let (_, gone_pub) = genkey();
    call(
        &run_dir,
        "vpn_user_create",
        json!({"name": "gone", "public_key": gone_pub, "expires_secs": 2}),
    )
    .unwrap();
    stop(&mut env, first);
    std::thread::sleep(Duration::from_secs(3));
    start_vpn(&mut env, &gw);
    assert!(
        listed(&run_dir, "gone").is_none(),
        "a grant that ended while the vpn was down came back"
    );
    assert_eq!(
        listed(&run_dir, "kept").unwrap()["expires_at"],
        renewed["expires_at"],
        "the expiry changed across a restart"
    );
    assert!(
        reaches_gw(&cls[1], 30),
        "the kept peer does not reconnect after the restart"
    );
}
