//! `gwos connect --knock-…` against a gateway namespace with the image's base
//! ruleset (loaded by `gwos-nft-base`: tcp/443 closed unless the SPA gate
//! opened it for a source), real `gwosd run spa-grant`, `gwosd run spa` and `gwosd run tls-front`,
//! and a UDP echo standing in for the vpn. From a client namespace:
//! - without the knock options, `gwos-connect` never gets a TLS connection
//!   (its SYNs are dropped) and no datagram comes back;
//! - with them, the first datagram comes back through TLS, after a
//!   `spa.permit` for this client's address and tcp/443;
//! - when tls-front drops the connection (idle timeout longer than the SPA
//!   grant), the reconnect knocks again and the tunnel works again;
//! - the keys appear in no output.
//!
//! Needs root, ip, nft, socat.

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use gwos_test_support::{binaries, must, require_root_and_tools, wait_until};

const K: &str = "PLJiB9FhMc635yVDYsXCvEgWl7Q60iCQNQBvN1inQ04=";
const H: &str =
    "YTMMjQ9STIx2+a0R1557B7q8N8jd3Zt1ryxkCDxe1g6mRlhD9YheNvRXhDIYy8tOmVId8lrSScZlygiX0bsRxA==";

struct Env {
    ns: Vec<String>,
    children: Vec<Child>,
}

impl Drop for Env {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
        for n in &self.ns {
            // also what our children forked inside (socat's per-peer children)
            let pids = Command::new("ip")
                .args(["netns", "pids", n])
                .output()
                .map(|o| o.stdout)
                .unwrap_or_default();
            for pid in String::from_utf8_lossy(&pids).split_whitespace() {
                let _ = Command::new("kill").arg(pid).status();
            }
            let _ = Command::new("ip").args(["netns", "del", n]).status();
        }
    }
}

/// A WireGuard-client stand-in in `ns`: socat with one fixed UDP source port
/// toward `gwos-connect`'s listen address; lines written come back as lines read.
struct Probe {
    stdin: ChildStdin,
    lines: mpsc::Receiver<String>,
}

impl Probe {
    fn new(env: &mut Env, ns: &str, to: &str) -> Self {
        let mut c = Command::new("ip")
            .args(["netns", "exec", ns, "socat", "STDIO", &format!("UDP:{to}")])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("socat");
        let stdin = c.stdin.take().unwrap();
        let out = BufReader::new(c.stdout.take().unwrap());
        env.children.push(c);
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for l in out.lines() {
                let Ok(l) = l else { break };
                if tx.send(l).is_err() {
                    break;
                }
            }
        });
        Self { stdin, lines }
    }

    /// Sends `msg` every second until it comes back or `within` passes.
    fn echoes(&mut self, msg: &str, within: Duration) -> bool {
        let t = Instant::now();
        while t.elapsed() < within {
            writeln!(self.stdin, "{msg}").unwrap();
            self.stdin.flush().unwrap();
            let until = Instant::now() + Duration::from_secs(1);
            while let Some(left) = until.checked_duration_since(Instant::now()) {
                match self.lines.recv_timeout(left) {
                    Ok(l) if l == msg => return true,
                    Ok(_) => continue,
                    Err(_) => break,
                }
            }
        }
        false
    }
}

fn health(run: &Path) -> serde_json::Value {
    let r = gwos_core::rpc::call(
        &run.join("tls-front.sock"),
        "health",
        serde_json::json!({}),
        None,
        Duration::from_secs(5),
    )
    .unwrap();
    assert!(r.ok, "{:?}", r.error);
    r.result
}

fn count(events: &Path, kind: &str) -> usize {
    let pat = format!("\"kind\":\"{kind}\"");
    std::fs::read_to_string(events)
        .unwrap_or_default()
        .lines()
        .filter(|l| l.contains(&pat))
        .count()
}

#[test]
fn connect_knocks_before_every_connection_and_only_then_gets_through() {
    require_root_and_tools(&["ip", "nft", "socat"]);
    let (gwosd, nft_base) = binaries();
    let connect = env!("CARGO_BIN_EXE_gwos-connect");
    let id = std::process::id() % 100_000;
    let (gw, cl) = (format!("gwkg{id}"), format!("gwkc{id}"));
    let mut env = Env {
        ns: vec![],
        children: vec![],
    };
    for n in [&gw, &cl] {
        let _ = Command::new("ip")
            .args(["netns", "del", n])
            .stderr(Stdio::null())
            .status();
        must(&["ip", "netns", "add", n]);
        env.ns.push(n.clone());
        must(&["ip", "-n", n, "link", "set", "lo", "up"]);
    }
    let (vg, vc) = (format!("vkg{id}"), format!("vkc{id}"));
    must(&[
        "ip", "link", "add", &vg, "netns", &gw, "type", "veth", "peer", "name", &vc, "netns", &cl,
    ]);
    must(&["ip", "-n", &gw, "addr", "add", "10.203.0.1/24", "dev", &vg]);
    must(&["ip", "-n", &cl, "addr", "add", "10.203.0.2/24", "dev", &vc]);
    must(&["ip", "-n", &gw, "link", "set", &vg, "up"]);
    must(&["ip", "-n", &cl, "link", "set", &vc, "up"]);

    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let site = dir.join("site.toml");
    // SPA grants last 2 s; tls-front drops a tunnel after 4 s without frames.
    std::fs::write(
        &site,
        format!(
            "[control]\nbackend = [\"192.0.2.0/24\"]\n\n[spa]\nport = 62201\n\n[[spa.users]]\nuser = \"alice\"\nkey_base64 = \"{K}\"\nhmac_key_base64 = \"{H}\"\nports = [\"tcp/443\"]\ntimeout_secs = 2\n\n[spa-grant]\nspa_uid = 0\n\n[tls-front]\nlisten = \"0.0.0.0:443\"\nvpn = \"127.0.0.1:51820\"\nidle_timeout_secs = 4\nhandshake_timeout_secs = 5\n"
        ),
    )
    .unwrap();
    must(&[
        "ip",
        "netns",
        "exec",
        &gw,
        nft_base.to_str().unwrap(),
        site.to_str().unwrap(),
    ]);
    // sanity: the base ruleset is there and tcp/443 is not open to anyone
    let rules = must(&[
        "ip", "netns", "exec", &gw, "nft", "list", "table", "inet", "gwos",
    ]);
    assert!(
        rules.contains("spa_v4") && !rules.contains("dport 443"),
        "{rules}"
    );

    // the vpn stand-in: UDP echo on 127.0.0.1:51820 (one child per tls-front connection)
    env.children.push(
        Command::new("ip")
            .args([
                "netns",
                "exec",
                &gw,
                "socat",
                "UDP-LISTEN:51820,bind=127.0.0.1,fork,reuseaddr",
                "PIPE",
            ])
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let run = dir.join("run");
    let events = dir.join("events.jsonl");
    // spa-grant first: spa holds no CAP_NET_ADMIN and asks it for each grant
    // (spa runs as root here, hence `spa_uid = 0`)
    for svc in ["spa-grant", "spa", "tls-front"] {
        let ev = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&events)
            .unwrap();
        env.children.push(
            Command::new("ip")
                .args(["netns", "exec", &gw])
                .arg(&gwosd)
                .args(["run", svc, "--config"])
                .arg(&site)
                .arg("--state-dir")
                .arg(dir.join(svc))
                .arg("--run-dir")
                .arg(&run)
                .stdout(ev.try_clone().unwrap())
                .stderr(ev)
                .spawn()
                .expect("gwosd"),
        );
        let sock = run.join(format!("{svc}.sock"));
        wait_until(
            &format!("{}", sock.display()),
            Duration::from_secs(30),
            || sock.exists(),
        );
    }
    let h = health(&run);
    assert_eq!(h["healthy"], true, "{h}");
    let pin = h["spki_sha256"].as_str().unwrap().to_string();

    let keys = dir.join("alice.keys");
    std::fs::write(
        &keys,
        format!("# fwknop --key-gen\nKEY_BASE64: {K}\nHMAC_KEY_BASE64: {H}\n"),
    )
    .unwrap();
    std::fs::set_permissions(&keys, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();

    let start_connect = |env: &mut Env, listen: &str, knock: bool, log: &Path| {
        let mut c = Command::new("ip");
        c.args([
            "netns",
            "exec",
            &cl,
            connect,
            "--server",
            "10.203.0.1:443",
            "--pin",
            &pin,
            "--listen",
            listen,
        ])
        .args(["--connect-timeout-secs", "2"]);
        if knock {
            c.arg("--knock-key-file").arg(&keys).args([
                "--knock-user",
                "alice",
                "--knock-wait-ms",
                "300",
            ]);
        }
        c.stdout(Stdio::null())
            .stderr(std::fs::File::create(log).unwrap());
        env.children.push(c.spawn().expect("gwos-connect"));
        let idx = env.children.len() - 1;
        // the probe's first datagram must not meet a closed port (socat gives up on ICMP errors)
        wait_until("gwos-connect to listen", Duration::from_secs(10), || {
            std::fs::read_to_string(log)
                .unwrap_or_default()
                .contains("WireGuard endpoint")
        });
        idx
    };

    // --- without the knock: the firewall drops the SYNs, nothing comes back
    let plain_log = dir.join("connect-plain.log");
    let plain_client = start_connect(&mut env, "127.0.0.1:51831", false, &plain_log);
    let mut p = Probe::new(&mut env, &cl, "127.0.0.1:51831");
    assert!(
        !p.echoes("no knock", Duration::from_secs(5)),
        "a datagram came back without a knock"
    );
    let plain = std::fs::read_to_string(&plain_log).unwrap();
    assert!(
        plain.contains("no TLS connection to 10.203.0.1:443 within"),
        "{plain}"
    );
    assert_eq!(health(&run)["accepted"], 0);
    assert_eq!(count(&events, "spa.permit"), 0);
    // (a grant opens tcp/443 for the knocking address, so a client sharing
    // that address would get in too: stop this one)
    let c = &mut env.children[plain_client];
    c.kill().unwrap();
    c.wait().unwrap();

    // --- with the knock
    let knock_log = dir.join("connect-knock.log");
    start_connect(&mut env, "127.0.0.1:51832", true, &knock_log);
    let mut p = Probe::new(&mut env, &cl, "127.0.0.1:51832");
    assert!(
        p.echoes("knocked", Duration::from_secs(10)),
        "no echo through the knocked TLS connection; logs in {}",
        dir.display()
    );
    assert_eq!(count(&events, "spa.permit"), 1);
    let ev = std::fs::read_to_string(&events).unwrap();
    let permit = ev.lines().find(|l| l.contains("\"spa.permit\"")).unwrap();
    assert!(
        permit.contains("\"allow\":\"10.203.0.2\"") && permit.contains("tcp/443"),
        "{permit}"
    );
    assert_eq!(health(&run)["accepted"], 1);
    assert_eq!(count(&events, "tls.open"), 1);

    // --- tls-front drops the idle tunnel after 4 s, long after the 2 s grant
    // expired: the reconnect only gets through because it knocks again
    let t = Instant::now();
    wait_until(
        "the idle close and a knocked reconnect",
        Duration::from_secs(15),
        || count(&events, "tls.close") >= 1 && health(&run)["accepted"] == 2,
    );
    println!("reconnected {:?} after the first echo", t.elapsed());
    assert_eq!(
        count(&events, "spa.permit"),
        2,
        "the reconnect did not knock"
    );
    assert!(p.echoes("after reconnect", Duration::from_secs(5)));
    let ev = std::fs::read_to_string(&events).unwrap();
    assert_eq!(
        count(&events, "tls.open"),
        2,
        "{ev}\n{}",
        std::fs::read_to_string(&knock_log).unwrap()
    );

    let klog = std::fs::read_to_string(&knock_log).unwrap();
    assert!(
        klog.matches("knocked 10.203.0.1:62201 as alice for tcp/443")
            .count()
            >= 2,
        "{klog}"
    );
    // the idle close is a clean TLS close (close_notify), not a truncation
    assert!(
        klog.contains("gateway closed the connection; reconnecting"),
        "{klog}"
    );
    let all = format!("{klog}{plain}{}", std::fs::read_to_string(&events).unwrap());
    assert!(
        !all.contains(K) && !all.contains(H) && !all.contains(&K[..16]),
        "key material in the output"
    );
}
