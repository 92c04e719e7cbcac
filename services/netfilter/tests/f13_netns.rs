//! F13 with the image's base ruleset (`gwos-nft-base`) in namespaces this
//! test creates, real packets from socat, and `nft list` read back:
//!
//! - input from the tunnel interface `gw0` is told apart from the public
//!   side: even with `backend` covering the VPN pool, a tunnel address never
//!   reaches control's port, while a backend address on another interface
//!   does; only the listed tunnel ports are open to the tunnel;
//! - egress by socket uid: spa and spa-grant send nothing, tls-front only
//!   replies and datagrams to the vpn's loopback port, vpn only from its own
//!   UDP port and replies, control only replies; root as before.
//!
//! Needs root, ip, nft, socat, setpriv (util-linux).

use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

fn sh(args: &[&str]) -> Output {
    Command::new(args[0])
        .args(&args[1..])
        .output()
        .unwrap_or_else(|e| panic!("{args:?}: {e}"))
}

fn must(args: &[&str]) -> String {
    let o = sh(args);
    assert!(
        o.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn require_root_and_tools() {
    assert_eq!(
        sh(&["id", "-u"]).stdout,
        b"0\n",
        "needs root (creates network namespaces)"
    );
    for t in ["ip", "nft", "socat", "setpriv"] {
        assert!(
            sh(&["sh", "-c", &format!("command -v {t}")])
                .status
                .success(),
            "tool {t:?} is missing"
        );
    }
}

/// Namespaces and children, removed on drop (also on panic).
#[derive(Default)]
struct Lab {
    ns: Vec<String>,
    children: Vec<Child>,
}

impl Lab {
    fn netns(&mut self, name: &str) -> String {
        let n = format!("{name}{}", std::process::id());
        let _ = sh(&["ip", "netns", "del", &n]);
        must(&["ip", "netns", "add", &n]);
        must(&["ip", "-n", &n, "link", "set", "lo", "up"]);
        self.ns.push(n.clone());
        n
    }

    /// veth `a` in `na` (address `aa`) ↔ `b` in `nb` (address `ba`).
    fn link(&self, na: &str, a: &str, aa: &str, nb: &str, b: &str, ba: &str) {
        must(&[
            "ip", "link", "add", a, "netns", na, "type", "veth", "peer", "name", b, "netns", nb,
        ]);
        must(&["ip", "-n", na, "addr", "add", aa, "dev", a]);
        must(&["ip", "-n", nb, "addr", "add", ba, "dev", b]);
        must(&["ip", "-n", na, "link", "set", a, "up"]);
        must(&["ip", "-n", nb, "link", "set", b, "up"]);
    }

    /// Runs `args` in `ns` as `uid` (gid = uid, no groups) in the background.
    fn spawn(&mut self, ns: &str, uid: u32, args: &[&str]) {
        let c = Command::new("ip")
            .args(["netns", "exec", ns])
            .args(as_uid(uid))
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        self.children.push(c);
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
        for n in &self.ns {
            let _ = sh(&["ip", "netns", "del", n]);
        }
    }
}

fn as_uid(uid: u32) -> Vec<String> {
    let u = uid.to_string();
    vec![
        "setpriv".into(),
        format!("--reuid={u}"),
        format!("--regid={u}"),
        "--clear-groups".into(),
    ]
}

/// `gwos-nft-base` of this build, or `$GWOS_NFT_BASE` (as the spa tests).
fn load_base(ns: &str, site: &Path) {
    let bin = std::env::var("GWOS_NFT_BASE")
        .ok()
        .filter(|b| !b.is_empty())
        .unwrap_or_else(|| env!("CARGO_BIN_EXE_gwos-nft-base").to_string());
    must(&["ip", "netns", "exec", ns, &bin, site.to_str().unwrap()]);
}

/// A TCP connection from `ns` (as `uid`) to `to` that gets `ping` echoed back.
fn tcp_echo(ns: &str, uid: u32, to: &str) -> bool {
    let mut args: Vec<String> = vec!["netns".into(), "exec".into(), ns.into()];
    args.extend(as_uid(uid));
    args.extend([
        "timeout".into(),
        "5".into(),
        "socat".into(),
        "-T2".into(),
        "STDIO".into(),
        format!("TCP:{to},connect-timeout=2"),
    ]);
    let out = Command::new("ip")
        .args(&args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .and_then(|mut c| {
            use std::io::Write;
            c.stdin.take().unwrap().write_all(b"ping\n")?;
            c.wait_with_output()
        })
        .unwrap();
    out.stdout.starts_with(b"ping")
}

/// One UDP datagram from `ns` as `uid` to `to`, from source port `sport`
/// if given; whether `sendto` succeeded (a dropped output packet is EPERM).
fn udp_send(ns: &str, uid: u32, to: &str, sport: Option<u16>, payload: &str) -> bool {
    let mut args: Vec<String> = vec!["netns".into(), "exec".into(), ns.into()];
    args.extend(as_uid(uid));
    let target = match sport {
        Some(p) => format!("UDP-SENDTO:{to},sourceport={p},reuseaddr"),
        None => format!("UDP-SENDTO:{to}"),
    };
    args.extend(["socat".into(), "-u".into(), "STDIN".into(), target]);
    let out = Command::new("ip")
        .args(&args)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .and_then(|mut c| {
            use std::io::Write;
            c.stdin.take().unwrap().write_all(payload.as_bytes())?;
            c.wait_with_output()
        })
        .unwrap();
    out.status.success()
}

fn wait_for_file_containing(path: &Path, what: &str) -> bool {
    let t = Instant::now();
    while t.elapsed() < Duration::from_secs(3) {
        if std::fs::read_to_string(path).is_ok_and(|s| s.contains(what)) {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    false
}

fn listen_echo(lab: &mut Lab, ns: &str, uid: u32, port: u16) {
    lab.spawn(
        ns,
        uid,
        &[
            "socat",
            &format!("TCP-LISTEN:{port},fork,reuseaddr"),
            "EXEC:cat",
        ],
    );
}

fn wait_listening(ns: &str, port: u16) {
    let t = Instant::now();
    while t.elapsed() < Duration::from_secs(5) {
        let o = sh(&[
            "ip",
            "netns",
            "exec",
            ns,
            "ss",
            "-ltnH",
            &format!("sport = :{port}"),
        ]);
        if !o.stdout.is_empty() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("nothing listens on tcp/{port} in {ns}");
}

/// F13: with `backend` covering the VPN pool, the pool still cannot reach
/// control through the tunnel interface; the same range can on another one.
#[test]
fn f13_tunnel_input_cannot_reach_control() {
    require_root_and_tools();
    let mut lab = Lab::default();
    let gw = lab.netns("f13g");
    let tun = lab.netns("f13t");
    let bk = lab.netns("f13b");
    // `gw0` stands for the vpn's TUN: a tunnel address arrives on it
    lab.link(&gw, "gw0", "10.77.0.1/24", &tun, "t0", "10.77.0.2/24");
    lab.link(&gw, "eb", "10.9.0.1/24", &bk, "b0", "10.9.0.2/24");
    let dir = tempfile::tempdir().unwrap();
    let site = dir.path().join("site.toml");
    std::fs::write(
        &site,
        "[control]\nbackend = [\"10.0.0.0/8\"]\nlisten = \"0.0.0.0:2222\"\n[vpn]\ninterface = \"gw0\"\npool = \"10.77.0.0/24\"\n",
    )
    .unwrap();
    load_base(&gw, &site);
    listen_echo(&mut lab, &gw, 0, 2222);
    listen_echo(&mut lab, &gw, 0, 8080);
    wait_listening(&gw, 2222);
    wait_listening(&gw, 8080);

    assert!(
        tcp_echo(&bk, 0, "10.9.0.1:2222"),
        "a backend address on the public side reaches control"
    );
    assert!(
        !tcp_echo(&tun, 0, "10.77.0.1:2222"),
        "a tunnel address reached control's port through gw0"
    );
    assert!(
        !tcp_echo(&tun, 0, "10.77.0.1:8080"),
        "an unlisted port is open to the tunnel"
    );
    let input = must(&[
        "ip", "netns", "exec", &gw, "nft", "list", "chain", "inet", "gwos", "input",
    ]);
    assert!(input.contains("iifname \"gw0\" counter"), "{input}");
    let drop_at = input.find("iifname \"gw0\" counter").unwrap();
    let control_at = input.find("tcp dport 2222").unwrap();
    assert!(
        drop_at < control_at,
        "the tunnel drop must come before the control rule:\n{input}"
    );

    // the listed tunnel ports open to the tunnel only those
    std::fs::write(
        &site,
        "[firewall]\nbackend = [\"10.0.0.0/8\"]\ntunnel_tcp_ports = [8080]\n",
    )
    .unwrap();
    load_base(&gw, &site);
    assert!(
        tcp_echo(&tun, 0, "10.77.0.1:8080"),
        "a listed tunnel port is closed"
    );
    assert!(
        !tcp_echo(&tun, 0, "10.77.0.1:2222"),
        "listing tunnel ports opened control's port to the tunnel"
    );
    assert!(tcp_echo(&bk, 0, "10.9.0.1:2222"));
}

/// F13: what each service's uid may send (the fixed uids of
/// gwos_core::rpc::SERVICE_UIDS: spa 801, vpn 802, tls-front 803,
/// control 804, spa-grant 805).
#[test]
fn f13_egress_by_uid() {
    require_root_and_tools();
    let mut lab = Lab::default();
    let gw = lab.netns("f13e");
    let net = lab.netns("f13n");
    lab.link(&gw, "eo", "10.210.0.1/24", &net, "o0", "10.210.0.2/24");
    let dir = tempfile::tempdir().unwrap();
    let site = dir.path().join("site.toml");
    std::fs::write(
        &site,
        "[control]\nbackend = [\"10.210.0.0/24\"]\nlisten = \"0.0.0.0:2222\"\n[vpn]\nlisten = \"127.0.0.1:51820\"\npublic_listen = \"0.0.0.0:51821\"\n",
    )
    .unwrap();
    load_base(&gw, &site);
    let output = must(&[
        "ip", "netns", "exec", &gw, "nft", "list", "chain", "inet", "gwos", "output",
    ]);
    for want in [
        "meta skuid 801 counter",
        "meta skuid 805 counter",
        "meta skuid 803 ct state established,related accept",
        "meta skuid 803 oifname \"lo\" udp dport 51820 accept",
        "meta skuid 802 udp sport 51820 accept",
        "meta skuid 802 udp sport 51821 accept",
        "meta skuid 804 ct state established,related accept",
    ] {
        assert!(output.contains(want), "missing {want:?} in:\n{output}");
    }

    // new connections out: root yes, no service
    listen_echo(&mut lab, &net, 0, 80);
    wait_listening(&net, 80);
    assert!(
        tcp_echo(&gw, 0, "10.210.0.2:80"),
        "root (PID 1) may connect out"
    );
    for (svc, uid) in [
        ("spa", 801),
        ("vpn", 802),
        ("tls-front", 803),
        ("control", 804),
        ("spa-grant", 805),
    ] {
        assert!(
            !tcp_echo(&gw, uid, "10.210.0.2:80"),
            "{svc} (uid {uid}) opened a connection out"
        );
    }

    // datagrams to the vpn's loopback port: tls-front yes, spa no
    let got = dir.path().join("vpn-port.txt");
    lab.spawn(
        &gw,
        0,
        &[
            "socat",
            "-u",
            "UDP-RECV:51820,bind=127.0.0.1",
            &format!("OPEN:{},creat,append", got.display()),
        ],
    );
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        !udp_send(&gw, 801, "127.0.0.1:51820", None, "from-spa\n"),
        "spa's sendto succeeded"
    );
    assert!(
        udp_send(&gw, 803, "127.0.0.1:51820", None, "from-tls-front\n"),
        "tls-front could not reach the vpn's loopback port"
    );
    assert!(wait_for_file_containing(&got, "from-tls-front"));
    assert!(
        !std::fs::read_to_string(&got).unwrap().contains("from-spa"),
        "spa's datagram arrived"
    );

    // vpn: from its own ports only (here the public one: 51820 is taken by
    // the listener above)
    let wg = dir.path().join("wg.txt");
    lab.spawn(
        &net,
        0,
        &[
            "socat",
            "-u",
            "UDP-RECV:9999",
            &format!("OPEN:{},creat,append", wg.display()),
        ],
    );
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        !udp_send(&gw, 802, "10.210.0.2:9999", None, "vpn-other-port\n"),
        "vpn sent from a port that is not its own"
    );
    assert!(
        udp_send(&gw, 802, "10.210.0.2:9999", Some(51821), "vpn-own-port\n"),
        "vpn could not send from its public udp/51821"
    );
    assert!(wait_for_file_containing(&wg, "vpn-own-port"));

    // replies: control answers a backend's connection
    listen_echo(&mut lab, &gw, 804, 2222);
    wait_listening(&gw, 2222);
    assert!(
        tcp_echo(&net, 0, "10.210.0.1:2222"),
        "control's replies to a backend were dropped"
    );
}

/// F13: router advertisements are not accepted unless `accept_ra` is set
/// (nft read back; the sysctls are in rootfs/etc/gwos/sysctl.conf).
#[test]
fn f13_router_advertisements_dropped_unless_configured() {
    require_root_and_tools();
    let mut lab = Lab::default();
    let gw = lab.netns("f13r");
    let dir = tempfile::tempdir().unwrap();
    let site = dir.path().join("site.toml");
    let input = |site_text: &str| {
        std::fs::write(&site, site_text).unwrap();
        load_base(&gw, &site);
        must(&[
            "ip", "netns", "exec", &gw, "nft", "list", "chain", "inet", "gwos", "input",
        ])
    };
    let default = input("[spa]\nport = 62201\n");
    assert!(
        !default.contains("nd-router-advert"),
        "RAs accepted by default:\n{default}"
    );
    assert!(default.contains("icmpv6 type nd-neighbor-solicit accept"));
    let on = input("[firewall]\naccept_ra = true\n");
    assert!(on.contains("icmpv6 type nd-router-advert accept"), "{on}");
}
