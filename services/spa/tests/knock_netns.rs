//! The real Debian `fwknop` client knocks `gwosd run spa` inside namespaces
//! this test creates; the gateway namespace carries the image's own base
//! ruleset (loaded by `gwos-nft-base`). Checks: tcp/443 opens for the
//! knocking address X only (Y still fails), an established connection
//! survives the element's expiry, new connections fail after the timeout,
//! and a replayed datagram is refused and reported as `spa.replay`.

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use gwos_test_support::*;

const K: &str = "PLJiB9FhMc635yVDYsXCvEgWl7Q60iCQNQBvN1inQ04=";
const H: &str =
    "YTMMjQ9STIx2+a0R1557B7q8N8jd3Zt1ryxkCDxe1g6mRlhD9YheNvRXhDIYy8tOmVId8lrSScZlygiX0bsRxA==";

fn connect(ns: &str, from: &str, to: &str) -> bool {
    Command::new("ip")
        .args(["netns", "exec", ns, "socat", "-T2", "/dev/null"])
        .arg(format!("TCP:{to}:443,bind={from},connect-timeout=1"))
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

fn spa_set(gw: &str) -> String {
    String::from_utf8_lossy(
        &sh(&[
            "ip", "netns", "exec", gw, "nft", "list", "set", "inet", "gwos", "spa_v4",
        ])
        .stdout,
    )
    .into_owned()
}

#[test]
fn fwknop_client_opens_tcp_443_for_x_only_then_closes_and_replay_is_refused() {
    require_root_and_tools(&["ip", "nft", "fwknop", "socat"]);
    let (gwosd, nft_base) = binaries();
    let id = std::process::id();
    let (gw, cl) = (format!("gwspa{id}g"), format!("gwspa{id}c"));
    let _ns = Netns::new(&[&gw, &cl]);
    let (vg, vc) = (format!("vg{id}"), format!("vc{id}"));
    must(&[
        "ip", "link", "add", &vg, "netns", &gw, "type", "veth", "peer", "name", &vc, "netns", &cl,
    ]);
    must(&["ip", "-n", &gw, "addr", "add", "10.201.0.1/24", "dev", &vg]);
    must(&["ip", "-n", &cl, "addr", "add", "10.201.0.2/24", "dev", &vc]);
    must(&["ip", "-n", &cl, "addr", "add", "10.201.0.3/24", "dev", &vc]);
    must(&["ip", "-n", &gw, "link", "set", &vg, "up"]);
    must(&["ip", "-n", &cl, "link", "set", &vc, "up"]);

    let tmp = tempfile::tempdir().unwrap();
    let site = tmp.path().join("site.toml");
    std::fs::write(
        &site,
        format!(
            "[control]\nbackend = [\"192.0.2.0/24\"]\n\n[spa]\nport = 62201\n\n[[spa.users]]\nuser = \"alice\"\nkey_base64 = \"{K}\"\nhmac_key_base64 = \"{H}\"\nports = [\"tcp/443\"]\ntimeout_secs = 3\n\n[spa-grant]\nspa_uid = 0\n"
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

    let mut procs = Procs::default();
    procs.spawn(
        Command::new("ip")
            .args([
                "netns",
                "exec",
                &gw,
                "socat",
                "TCP-LISTEN:443,fork,reuseaddr",
                "EXEC:cat",
            ])
            .stderr(Stdio::null()),
    );
    let events = tmp.path().join("events.jsonl");
    let state = tmp.path().join("state");
    let run = tmp.path().join("run");
    // spa holds no CAP_NET_ADMIN: spa-grant adds the element for it (spa
    // runs as root here, hence `spa_uid = 0` above)
    procs.spawn(
        Command::new("ip")
            .args(["netns", "exec", &gw])
            .arg(&gwosd)
            .args(["run", "spa-grant", "--config"])
            .arg(&site)
            .arg("--state-dir")
            .arg(tmp.path().join("grant-state"))
            .arg("--run-dir")
            .arg(&run)
            .stdout(Stdio::null()),
    );
    let grant_sock = run.join("spa-grant.sock");
    wait_until("spa-grant.sock", Duration::from_secs(10), || {
        grant_sock.exists()
    });
    procs.spawn(
        Command::new("ip")
            .args(["netns", "exec", &gw])
            .arg(&gwosd)
            .args(["run", "spa", "--config"])
            .arg(&site)
            .arg("--state-dir")
            .arg(&state)
            .arg("--run-dir")
            .arg(&run)
            .stdout(std::fs::File::create(&events).unwrap()),
    );
    let read_events = || std::fs::read_to_string(&events).unwrap_or_default();
    wait_until("spa.start", Duration::from_secs(10), || {
        read_events().contains("spa.start")
    });
    wait_until("the tcp/443 listener", Duration::from_secs(5), || {
        sh(&["ip", "netns", "exec", &gw, "ss", "-ltn", "sport = :443"])
            .stdout
            .windows(4)
            .any(|w| w == b"443 " || w == b":443")
    });

    // closed before the knock, for both addresses
    assert!(
        !connect(&cl, "10.201.0.2", "10.201.0.1"),
        "tcp/443 open before any knock"
    );

    let home = tmp.path().join("home");
    std::fs::create_dir_all(&home).unwrap();
    let pkt = tmp.path().join("knock.spa");
    let knock_sent = Instant::now();
    let out = Command::new("ip")
        .args(["netns", "exec", &cl, "env"])
        .arg(format!("HOME={}", home.display()))
        .args([
            "fwknop",
            "--no-rc-file",
            "--no-save-args",
            "-A",
            "tcp/443",
            "-a",
            "10.201.0.2",
            "-D",
            "10.201.0.1",
            "-U",
            "alice",
        ])
        .args([
            "--key-base64-rijndael",
            K,
            "--key-base64-hmac",
            H,
            "--use-hmac",
            "-B",
        ])
        .arg(&pkt)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "fwknop failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    wait_until("the spa_v4 element", Duration::from_secs(5), || {
        spa_set(&gw).contains("10.201.0.2 . tcp . 443")
    });
    println!("knock → element present in {:?}", knock_sent.elapsed());
    assert!(
        read_events().contains("\"spa.permit\""),
        "no permit event:\n{}",
        read_events()
    );

    assert!(
        connect(&cl, "10.201.0.2", "10.201.0.1"),
        "tcp/443 not open for X after the knock"
    );
    assert!(
        !connect(&cl, "10.201.0.3", "10.201.0.1"),
        "tcp/443 open for Y, which did not knock"
    );

    // an established connection from X outlives the element
    let mut conn = Command::new("ip")
        .args([
            "netns",
            "exec",
            &cl,
            "socat",
            "STDIO",
            "TCP:10.201.0.1:443,bind=10.201.0.2",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut cin = conn.stdin.take().unwrap();
    let mut cout = BufReader::new(conn.stdout.take().unwrap());
    let mut line = String::new();
    writeln!(cin, "before").unwrap();
    cout.read_line(&mut line).unwrap();
    assert_eq!(line, "before\n");
    procs.0.push(conn);

    wait_until("the element to expire", Duration::from_secs(8), || {
        !spa_set(&gw).contains("10.201.0.2")
    });
    println!(
        "element gone {:?} after the knock (timeout 3 s)",
        knock_sent.elapsed()
    );
    assert!(
        !connect(&cl, "10.201.0.2", "10.201.0.1"),
        "new connection from X accepted after the timeout"
    );
    line.clear();
    writeln!(cin, "after").unwrap();
    cout.read_line(&mut line).unwrap();
    assert_eq!(line, "after\n", "established connection cut at expiry");

    // replay the captured datagram (the -B file holds S plus a newline)
    let spa = std::fs::read_to_string(&pkt).unwrap();
    let raw = tmp.path().join("raw.spa");
    std::fs::write(&raw, spa.trim_end()).unwrap();
    must(&[
        "ip",
        "netns",
        "exec",
        &cl,
        "socat",
        "-u",
        &format!("FILE:{}", raw.display()),
        "UDP:10.201.0.1:62201,bind=10.201.0.2",
    ]);
    wait_until("spa.replay event", Duration::from_secs(5), || {
        read_events().contains("\"spa.replay\"")
    });
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        !spa_set(&gw).contains("10.201.0.2"),
        "replay re-opened the port"
    );
    assert!(!connect(&cl, "10.201.0.2", "10.201.0.1"));
    let ev = read_events();
    let replay_line = ev.lines().find(|l| l.contains("spa.replay")).unwrap();
    assert!(replay_line.contains("10.201.0.2"), "{replay_line}");
    assert!(!ev.contains(K) && !ev.contains(H), "key material in events");
    println!("events:\n{ev}");
}
