//! PID 1's DHCP client against a real `dnsmasq` in network namespaces this
//! test makes: DORA within 1 s with IPv6 and ARP noise on the link, a NAK on
//! renewal sends the client back to INIT and to a new address, a server
//! change is taken at T2 (REBINDING), and option 121 overrides option 3.
//! Needs root, ip, dnsmasq (Debian dnsmasq-base), python3 (noise).

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use gwos_init::dhcp::{client::Client, Lease};

struct Net {
    ns: Vec<String>,
    children: Vec<Child>,
    dir: tempfile::TempDir,
}

impl Drop for Net {
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

fn ip(args: &[&str]) {
    let o = Command::new("ip").args(args).output().expect("ip");
    assert!(
        o.status.success(),
        "ip {args:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
}

fn require_root_and_tools() {
    let root = std::fs::metadata("/proc/self")
        .map(|m| std::os::unix::fs::MetadataExt::uid(&m) == 0)
        .unwrap_or(false);
    assert!(root, "this test needs root (network namespaces)");
    for t in ["ip", "dnsmasq", "python3"] {
        let ok = Command::new("sh")
            .args(["-c", &format!("command -v {t}")])
            .output()
            .unwrap();
        assert!(
            ok.status.success(),
            "this test needs `{t}` (.ci/debian-packages.txt)"
        );
    }
}

/// A server namespace and a client namespace joined by a veth pair:
/// server side `srv0` 10.55.0.1/24, client side `dh0` unconfigured.
fn link(tag: &str) -> Net {
    let id = std::process::id() % 100_000;
    let (s, c) = (format!("dhs{tag}{id}"), format!("dhc{tag}{id}"));
    let mut n = Net {
        ns: vec![],
        children: vec![],
        dir: tempfile::tempdir().unwrap(),
    };
    for x in [&s, &c] {
        ip(&["netns", "add", x]);
        n.ns.push(x.clone());
        ip(&["-n", x, "link", "set", "lo", "up"]);
    }
    ip(&[
        "link", "add", "srv0", "netns", &s, "type", "veth", "peer", "name", "dh0", "netns", &c,
    ]);
    ip(&["-n", &s, "addr", "add", "10.55.0.1/24", "dev", "srv0"]);
    ip(&["-n", &s, "link", "set", "srv0", "up"]);
    ip(&["-n", &c, "link", "set", "dh0", "up"]);
    n
}

impl Net {
    fn srv(&self) -> &str {
        &self.ns[0]
    }
    fn cli(&self) -> &str {
        &self.ns[1]
    }

    /// Starts dnsmasq as the DHCP server (no DNS) with `extra` options.
    fn dnsmasq(&mut self, name: &str, range: &str, extra: &[&str]) -> usize {
        let leases = self.dir.path().join(format!("{name}.leases"));
        let mut args: Vec<String> = vec![
            "netns".into(),
            "exec".into(),
            self.srv().into(),
            "dnsmasq".into(),
            "--no-daemon".into(),
            "--port=0".into(),
            "--interface=srv0".into(),
            "--bind-interfaces".into(),
            "--dhcp-authoritative".into(),
            // no ICMP probe of an address before offering it (1-3 s per DORA)
            "--no-ping".into(),
            format!("--dhcp-range={range}"),
            format!("--dhcp-leasefile={}", leases.display()),
            "--log-dhcp".into(),
        ];
        args.extend(extra.iter().map(|s| s.to_string()));
        let log = std::fs::File::create(self.dir.path().join(format!("{name}.log"))).unwrap();
        let child = Command::new("ip")
            .args(&args)
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("dnsmasq");
        self.children.push(child);
        std::thread::sleep(Duration::from_millis(300));
        self.children.len() - 1
    }

    fn stop(&mut self, i: usize) {
        let _ = self.children[i].kill();
        let _ = self.children[i].wait();
    }

    fn addrs(&self) -> String {
        let o = Command::new("ip")
            .args(["-n", self.cli(), "-4", "addr", "show", "dev", "dh0"])
            .output()
            .unwrap();
        String::from_utf8_lossy(&o.stdout).into_owned()
    }

    fn routes(&self) -> String {
        let o = Command::new("ip")
            .args(["-n", self.cli(), "-4", "route", "show"])
            .output()
            .unwrap();
        String::from_utf8_lossy(&o.stdout).into_owned()
    }
}

/// Runs the client in a thread inside the client namespace; leases arrive
/// on the channel.
fn start_client(ns: &str, lease_path: Option<PathBuf>) -> mpsc::Receiver<Lease> {
    let (tx, rx) = mpsc::channel();
    let nsfile = std::fs::File::open(Path::new("/run/netns").join(ns)).unwrap();
    std::thread::spawn(move || {
        nix::sched::setns(nsfile, nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
        let c = Client {
            ifname: "dh0".into(),
            lease_path,
            fallback: Box::new(|| {}),
            on_lease: Box::new(move |l| {
                let _ = tx.send(l.clone());
            }),
            say: Box::new(|m| eprintln!("{m}")),
        };
        let r = c.run();
        eprintln!("dhcp client ended: {r:?}");
    });
    rx
}

/// IPv6 and ARP frames (and a UDP datagram to another port) on the link
/// while the client runs, from the server side.
fn noise(net: &mut Net) {
    let script = r#"
import socket, time
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
s.bind(("srv0", 0))
dst = b"\xff" * 6
src = b"\x02\x00\x00\x00\x00\x01"
ipv6 = dst + src + b"\x86\xdd" + bytes([0x60, 0, 0, 0, 0, 8, 17, 64]) + bytes(32) + b"\x00\x43\x00\x44\x00\x08\x00\x00"
arp = dst + src + b"\x08\x06" + bytes([0, 1, 8, 0, 6, 4, 0, 1]) + src + bytes([10, 55, 0, 1]) + bytes(6) + bytes([10, 55, 0, 9])
while True:
    s.send(ipv6); s.send(arp)
    time.sleep(0.002)
"#;
    let child = Command::new("ip")
        .args(["netns", "exec", net.srv(), "python3", "-c", script])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    net.children.push(child);
}

fn wait_lease(rx: &mpsc::Receiver<Lease>, secs: u64, what: &str) -> Lease {
    rx.recv_timeout(Duration::from_secs(secs))
        .unwrap_or_else(|_| panic!("no lease: {what}"))
}

#[test]
fn dora_within_a_second_with_ipv6_and_arp_noise() {
    require_root_and_tools();
    let mut net = link("a");
    net.dnsmasq(
        "a",
        "10.55.0.50,10.55.0.60,255.255.255.0,1h",
        &["--dhcp-option=3,10.55.0.1", "--dhcp-option=6,10.55.0.53"],
    );
    noise(&mut net);
    let t = Instant::now();
    let rx = start_client(net.cli(), None);
    let l = wait_lease(&rx, 10, "DORA");
    let took = t.elapsed();
    assert!(took <= Duration::from_secs(1), "DORA took {took:?}");
    assert!(
        l.address >= Ipv4Addr::new(10, 55, 0, 50) && l.address <= Ipv4Addr::new(10, 55, 0, 60),
        "{l:?}"
    );
    assert_eq!(
        (l.prefix, l.lease_secs, l.server),
        (24, 3600, Ipv4Addr::new(10, 55, 0, 1))
    );
    assert_eq!(l.dns, vec![Ipv4Addr::new(10, 55, 0, 53)]);
    assert!(
        net.addrs().contains(&format!("inet {}/24", l.address)),
        "{}",
        net.addrs()
    );
    assert!(
        net.routes().contains("default via 10.55.0.1 dev dh0"),
        "{}",
        net.routes()
    );
}

#[test]
fn classless_routes_override_the_router_option() {
    require_root_and_tools();
    let mut net = link("c");
    net.dnsmasq(
        "c",
        "10.55.0.50,10.55.0.60,255.255.255.0,1h",
        &[
            "--dhcp-option=3,10.55.0.1",
            "--dhcp-option=121,10.66.0.0/16,10.55.0.2,0.0.0.0/0,10.55.0.3",
        ],
    );
    let rx = start_client(net.cli(), None);
    wait_lease(&rx, 10, "DORA");
    let r = net.routes();
    assert!(r.contains("default via 10.55.0.3 dev dh0"), "{r}");
    assert!(r.contains("10.66.0.0/16 via 10.55.0.2 dev dh0"), "{r}");
    assert!(
        !r.contains("via 10.55.0.1"),
        "option 3 was used despite option 121: {r}"
    );
}

#[test]
fn nak_on_renewal_restarts_and_server_change_at_t2() {
    require_root_and_tools();
    let mut net = link("n");
    // T1 3 s, T2 6 s of a 2-minute lease (dnsmasq's minimum)
    let a = net.dnsmasq(
        "a",
        "10.55.0.50,10.55.0.50,255.255.255.0,2m",
        &["--dhcp-option=58,3", "--dhcp-option=59,6"],
    );
    let rx = start_client(net.cli(), Some(net.dir.path().join("lease.json")));
    let first = wait_lease(&rx, 10, "first DORA");
    assert_eq!(first.address, Ipv4Addr::new(10, 55, 0, 50));
    assert_eq!((first.renew_secs, first.rebind_secs), (3, 6));
    // the server now serves another range: the renewal at T1 gets a NAK, the
    // client starts over and takes an address of the new range
    net.stop(a);
    let b = net.dnsmasq(
        "b",
        "10.55.0.70,10.55.0.70,255.255.255.0,2m",
        &["--dhcp-option=58,3", "--dhcp-option=59,6"],
    );
    let second = wait_lease(&rx, 20, "after the NAK");
    assert_eq!(second.address, Ipv4Addr::new(10, 55, 0, 70), "{second:?}");
    let addrs = net.addrs();
    assert!(
        !addrs.contains("10.55.0.50"),
        "the NAKed address stayed: {addrs}"
    );
    let log_b = std::fs::read_to_string(net.dir.path().join("b.log")).unwrap();
    assert!(
        log_b.contains("DHCPNAK"),
        "no NAK from the new server: {log_b}"
    );
    // a different server (another address: the unicast renewals to the old
    // one go unanswered) takes over at T2, by broadcast
    net.stop(b);
    ip(&["-n", net.srv(), "addr", "flush", "dev", "srv0"]);
    ip(&[
        "-n",
        net.srv(),
        "addr",
        "add",
        "10.55.0.9/24",
        "dev",
        "srv0",
    ]);
    net.dnsmasq(
        "c",
        "10.55.0.70,10.55.0.70,255.255.255.0,2m",
        &["--dhcp-option=58,3", "--dhcp-option=59,6"],
    );
    let t = Instant::now();
    let third = loop {
        assert!(
            t.elapsed() < Duration::from_secs(20),
            "no server change by T2"
        );
        let l = wait_lease(&rx, 20, "rebinding to the new server");
        if l.server != second.server {
            break l;
        }
    };
    assert_eq!(third.server, Ipv4Addr::new(10, 55, 0, 9));
    assert!(t.elapsed() < Duration::from_secs(15));
    assert_eq!(third.address, second.address);
    let saved: Lease =
        serde_json::from_str(&std::fs::read_to_string(net.dir.path().join("lease.json")).unwrap())
            .unwrap();
    assert_eq!(
        saved.server, third.server,
        "the kept lease is not the latest"
    );
}
