//! The vpn's per-user chains over netlink ([`gwos_netfilter::vpn::apply`]) in
//! network namespaces this test creates: the base ruleset is loaded first
//! (as init does), then the vpn rules; `nft` reads them back, a re-apply
//! with a user removed drops exactly that user's rules, a batch the kernel
//! refuses changes nothing, a large policy fits one batch, and packets
//! through a veth "gw0" are forwarded (and masqueraded) only as the policy
//! says. Needs root, ip, nft, ping, sysctl.

use gwos_netfilter::vpn::{apply, UserRule};
use gwos_test_support::{in_netns, in_ns, must, require_root_and_tools, sh, Netns as Nss};
use ipnet::Ipv4Net;

fn net(s: &str) -> Ipv4Net {
    s.parse().unwrap()
}

fn user(addr: &str, nets: &[&str]) -> UserRule {
    UserRule {
        address: addr.parse().unwrap(),
        allowed: nets.iter().map(|n| net(n)).collect(),
    }
}

fn load_base(ns: &str) {
    in_netns(ns, || {
        gwos_netfilter::base::load(&gwos_netfilter::base::BaseConfig::default())
    })
    .expect("base ruleset");
}

fn vpn(ns: &str, users: Vec<UserRule>) -> Result<(), gwos_netfilter::Error> {
    vpn_dns(ns, users, vec![])
}

fn vpn_dns(
    ns: &str,
    users: Vec<UserRule>,
    dns: Vec<std::net::Ipv4Addr>,
) -> Result<(), gwos_netfilter::Error> {
    in_netns(ns, move || apply("gw0", net("10.77.0.0/24"), &users, &dns))
}

/// The DNS drop rules as `nft` prints them, for one resolver.
fn dns_lines(resolver: &str) -> Vec<String> {
    let mut v = vec![];
    for proto in ["udp", "tcp"] {
        for port in [53, 853] {
            v.push(format!(
                "iifname \"gw0\" {proto} dport {port} ip daddr != {resolver} counter packets 0 bytes 0 drop"
            ));
        }
    }
    v
}

fn chain(ns: &str, name: &str) -> String {
    in_ns(ns, &["nft", "list", "chain", "inet", "gwos", name])
}

const ALICE_1: &str = "iifname \"gw0\" ip saddr 10.77.0.2 ip daddr 10.99.1.0/24 accept";
const ALICE_3: &str = "iifname \"gw0\" ip saddr 10.77.0.2 ip daddr 10.99.3.0/24 accept";
const BOB_2: &str = "iifname \"gw0\" ip saddr 10.77.0.3 ip daddr 10.99.2.0/24 accept";

#[test]
fn vpn_chains_are_rewritten_whole() {
    require_root_and_tools(&["nft", "ping", "sysctl"]);
    let mut nss = Nss(vec![]);
    let ns = nss.add(format!("gwvnl{}", std::process::id()));
    load_base(&ns);
    let alice = user("10.77.0.2", &["10.99.1.0/24", "10.99.3.7/24"]);
    let bob = user("10.77.0.3", &["10.99.2.0/24"]);
    let carol = user("10.77.0.4", &[]);
    let resolver = std::net::Ipv4Addr::new(10, 99, 1, 53);
    vpn_dns(
        &ns,
        vec![alice.clone(), bob.clone(), carol.clone()],
        vec![resolver],
    )
    .unwrap();
    // twice: the flush keeps rules from piling up
    vpn_dns(
        &ns,
        vec![alice.clone(), bob.clone(), carol.clone()],
        vec![resolver],
    )
    .unwrap();

    let fwd = chain(&ns, "vpn_forward");
    let lines: Vec<&str> = fwd
        .lines()
        .map(str::trim)
        .filter(|l| {
            !l.is_empty() && !l.starts_with("table") && !l.starts_with("chain") && *l != "}"
        })
        .collect();
    let mut want: Vec<String> = vec![
        "oifname \"gw0\" ct state established,related accept".into(),
        "iifname \"gw0\" oifname \"gw0\" counter packets 0 bytes 0 drop".into(),
    ];
    want.extend(dns_lines("10.99.1.53"));
    want.extend(
        [
            ALICE_1,
            ALICE_3, // host bits of 10.99.3.7/24 dropped
            BOB_2,
            "iifname \"gw0\" counter packets 0 bytes 0 drop",
        ]
        .map(String::from),
    );
    assert_eq!(lines, want, "in:\n{fwd}");
    let post = chain(&ns, "vpn_postrouting");
    assert!(
        post.contains("type nat hook postrouting priority srcnat; policy accept;"),
        "{post}"
    );
    assert!(
        post.contains("iifname \"gw0\" oifname != \"gw0\" ip saddr 10.77.0.0/24 masquerade"),
        "{post}"
    );
    assert_eq!(post.matches("masquerade").count(), 1, "{post}");
    // the base ruleset is untouched and still hands forwarded traffic to vpn_forward
    let base = chain(&ns, "forward");
    assert!(
        base.contains("policy drop;") && base.contains("jump vpn_forward"),
        "{base}"
    );
    assert!(chain(&ns, "input").contains("udp dport 62201 accept"));

    // bob removed: his rule is gone, alice's stay
    vpn(&ns, vec![alice.clone(), carol.clone()]).unwrap();
    let fwd = chain(&ns, "vpn_forward");
    assert!(
        !fwd.contains("10.77.0.3") && fwd.contains(ALICE_1) && fwd.contains(ALICE_3),
        "{fwd}"
    );
    assert_eq!(fwd.matches(" accept").count(), 3, "{fwd}");

    // A batch the kernel refuses (vpn_postrouting exists with another hook)
    // aborts as a whole: vpn_forward keeps alice's rules, bob does not come back.
    in_ns(
        &ns,
        &["nft", "delete", "chain", "inet", "gwos", "vpn_postrouting"],
    );
    in_ns(
        &ns,
        &[
            "nft",
            "add",
            "chain",
            "inet",
            "gwos",
            "vpn_postrouting",
            "{ type filter hook forward priority 5; }",
        ],
    );
    let err =
        vpn(&ns, vec![bob.clone()]).expect_err("a conflicting vpn_postrouting must be refused");
    assert!(err.to_string().contains("vpn forward rules"), "{err}");
    let fwd = chain(&ns, "vpn_forward");
    assert!(fwd.contains(ALICE_1) && !fwd.contains("10.77.0.3"), "{fwd}");
    in_ns(
        &ns,
        &["nft", "delete", "chain", "inet", "gwos", "vpn_postrouting"],
    );

    // A large policy (1000 users, 2 networks each) still goes in one batch.
    let many: Vec<UserRule> = (0..1000u32)
        .map(|i| UserRule {
            address: std::net::Ipv4Addr::from(u32::from(std::net::Ipv4Addr::new(10, 78, 0, 2)) + i),
            allowed: vec![
                net(&format!("10.{}.{}.0/24", 100 + i / 256, i % 256)),
                net("192.168.7.0/28"),
            ],
        })
        .collect();
    in_netns(&ns, move || apply("gw0", net("10.78.0.0/16"), &many, &[]))
        .expect("1000 users in one batch");
    let fwd = chain(&ns, "vpn_forward");
    assert_eq!(
        fwd.matches(" accept").count(),
        2001,
        "{} lines",
        fwd.lines().count()
    );
    assert!(fwd.contains("iifname \"gw0\" ip saddr 10.78.3.233 ip daddr 10.103.231.0/24 accept"));
    assert!(chain(&ns, "vpn_postrouting").contains("ip saddr 10.78.0.0/16 masquerade"));

    // Without a base ruleset the vpn creates the table and both chains itself.
    let bare = nss.add(format!("gwvnm{}", std::process::id()));
    vpn(&bare, vec![alice]).unwrap();
    assert!(chain(&bare, "vpn_forward").contains(ALICE_1));
}

fn ping(ns: &str, src: &str, dst: &str) -> bool {
    sh(&[
        "ip", "netns", "exec", ns, "ping", "-n", "-q", "-c", "1", "-W", "1", "-I", src, dst,
    ])
    .status
    .success()
}

#[test]
fn forwarding_follows_the_per_user_policy() {
    require_root_and_tools(&["nft", "ping", "sysctl"]);
    let id = std::process::id();
    let mut nss = Nss(vec![]);
    let (gw, cl, int) = (
        nss.add(format!("gwvng{id}")),
        nss.add(format!("gwvnc{id}")),
        nss.add(format!("gwvni{id}")),
    );
    // client side: both users' addresses behind the gateway's "gw0"
    must(&[
        "ip", "link", "add", "gw0", "netns", &gw, "type", "veth", "peer", "name", "c0", "netns",
        &cl,
    ]);
    in_ns(&gw, &["ip", "addr", "add", "10.77.0.1/24", "dev", "gw0"]);
    in_ns(&gw, &["ip", "link", "set", "gw0", "up"]);
    in_ns(&cl, &["ip", "addr", "add", "10.77.0.2/24", "dev", "c0"]);
    in_ns(&cl, &["ip", "addr", "add", "10.77.0.3/24", "dev", "c0"]);
    in_ns(&cl, &["ip", "link", "set", "c0", "up"]);
    in_ns(&cl, &["ip", "route", "add", "default", "via", "10.77.0.1"]);
    // internal side: no route back to the pool, so replies arrive only if masqueraded
    must(&[
        "ip", "link", "add", "int0", "netns", &gw, "type", "veth", "peer", "name", "i0", "netns",
        &int,
    ]);
    in_ns(&gw, &["ip", "addr", "add", "10.99.0.1/24", "dev", "int0"]);
    in_ns(&gw, &["ip", "link", "set", "int0", "up"]);
    for a in [
        "10.99.0.2/24",
        "10.99.1.2/32",
        "10.99.1.3/32",
        "10.99.2.2/32",
    ] {
        in_ns(&int, &["ip", "addr", "add", a, "dev", "i0"]);
    }
    in_ns(&int, &["ip", "link", "set", "i0", "up"]);
    in_ns(
        &gw,
        &["ip", "route", "add", "10.99.1.0/24", "via", "10.99.0.2"],
    );
    in_ns(
        &gw,
        &["ip", "route", "add", "10.99.2.0/24", "via", "10.99.0.2"],
    );
    // 10.77.9.0/24 lies behind gw0 again: traffic to it is client-to-client (gw0 -> gw0)
    in_ns(
        &gw,
        &[
            "ip",
            "route",
            "add",
            "10.77.9.0/24",
            "via",
            "10.77.0.3",
            "dev",
            "gw0",
        ],
    );
    in_ns(&gw, &["sysctl", "-qw", "net.ipv4.ip_forward=1"]);

    load_base(&gw);
    assert!(
        !ping(&cl, "10.77.0.2", "10.99.1.2"),
        "the base ruleset alone must not forward tunnel traffic"
    );

    let alice = user("10.77.0.2", &["10.99.1.0/24"]);
    let bob = user("10.77.0.3", &["10.99.2.0/24"]);
    vpn(&gw, vec![alice.clone(), bob]).unwrap();
    assert!(
        ping(&cl, "10.77.0.2", "10.99.1.2"),
        "alice -> her allowed network (masqueraded)"
    );
    assert!(
        !ping(&cl, "10.77.0.2", "10.99.2.2"),
        "alice -> bob's network must be dropped"
    );
    assert!(
        ping(&cl, "10.77.0.3", "10.99.2.2"),
        "bob -> his allowed network"
    );
    assert!(
        !ping(&cl, "10.77.0.3", "10.99.1.2"),
        "bob -> alice's network must be dropped"
    );
    assert!(
        !ping(&cl, "10.77.0.2", "10.77.9.9"),
        "client-to-client must be dropped"
    );
    let fwd = chain(&gw, "vpn_forward");
    let c2c = fwd
        .lines()
        .find(|l| l.contains("iifname \"gw0\" oifname \"gw0\" counter"))
        .unwrap_or_else(|| panic!("{fwd}"));
    assert!(
        !c2c.contains("packets 0 "),
        "the client-to-client rule counted nothing: {c2c}"
    );
    let last = fwd
        .lines()
        .rfind(|l| l.contains("iifname \"gw0\" counter"))
        .unwrap();
    assert!(
        !last.contains("packets 0 "),
        "the final drop counted nothing: {last}"
    );

    // DNS stays inside the tunnel: to the resolver (10.99.1.2) it passes, to any
    // other address, even one alice may reach (10.99.1.3), it is counted and dropped.
    vpn_dns(&gw, vec![alice.clone()], vec!["10.99.1.2".parse().unwrap()]).unwrap();
    let listener = std::process::Command::new("ip")
        .args([
            "netns",
            "exec",
            &int,
            "timeout",
            "5",
            "socat",
            "-u",
            "UDP4-RECV:53,bind=10.99.1.2",
            "STDOUT",
        ])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(300));
    for dst in ["10.99.1.3", "10.99.1.2"] {
        must(&[
            "ip",
            "netns",
            "exec",
            &cl,
            "bash",
            "-c",
            &format!("echo query-{dst} > /dev/udp/{dst}/53"),
        ]);
    }
    let got = listener.wait_with_output().unwrap();
    assert_eq!(
        String::from_utf8_lossy(&got.stdout).trim(),
        "query-10.99.1.2",
        "only the resolver gets DNS"
    );
    let fwd = chain(&gw, "vpn_forward");
    let udp53 = fwd
        .lines()
        .find(|l| l.contains("udp dport 53 ip daddr != 10.99.1.2 counter"))
        .unwrap_or_else(|| panic!("{fwd}"));
    assert!(udp53.contains("packets 1 "), "the DNS drop counted {udp53}");

    // bob deleted: his traffic stops, alice's continues
    vpn(&gw, vec![alice]).unwrap();
    assert!(
        !ping(&cl, "10.77.0.3", "10.99.2.2"),
        "a removed user's traffic must be dropped"
    );
    assert!(
        ping(&cl, "10.77.0.2", "10.99.1.2"),
        "the remaining user keeps her access"
    );
}
