//! Loads the base ruleset with `gwos-nft-base` (the netlink path init uses)
//! into a namespace this test creates and checks what `nft` reads back;
//! loading twice replaces the table atomically (no duplicate rules).

use gwos_test_support::{sh, Netns};

#[test]
fn base_ruleset_loads_in_a_namespace() {
    assert_eq!(
        sh(&["id", "-u"]).stdout,
        b"0\n",
        "needs root (creates a network namespace)"
    );
    assert!(
        sh(&["sh", "-c", "command -v nft"]).status.success(),
        "nft (Debian nftables) is needed to read the ruleset back"
    );
    let bin = env!("CARGO_BIN_EXE_gwos-nft-base");
    let ns = format!("gwnft{}", std::process::id());
    let _ns = Netns::new(&[&ns]);
    let dir = tempfile::tempdir().unwrap();
    let site = dir.path().join("site.toml");
    std::fs::write(&site, "[control]\nbackend = [\"10.9.0.0/24\", \"10.9.0.7\", \"fd00::/64\"]\nlisten = \"0.0.0.0:2222\"\n[spa]\nport = 62201\n").unwrap();
    for _ in 0..2 {
        let o = sh(&["ip", "netns", "exec", &ns, bin, site.to_str().unwrap()]);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    }
    let rs = String::from_utf8(sh(&["ip", "netns", "exec", &ns, "nft", "list", "ruleset"]).stdout)
        .unwrap();
    for want in [
        "type filter hook input priority filter; policy drop;",
        "iifname \"lo\" accept",
        "ct state established,related accept",
        "ct state invalid drop",
        "icmpv6 type nd-neighbor-solicit accept",
        "udp dport 62201 accept",
        "tcp dport 2222 ip saddr @backend_v4 accept",
        "tcp dport 2222 ip6 saddr @backend_v6 accept",
        "ip saddr . meta l4proto . th dport @spa_v4 accept",
        "ip6 saddr . meta l4proto . th dport @spa_v6 accept",
        "limit rate 5/second log prefix \"gwos-drop: \"",
        "type ipv4_addr . inet_proto . inet_service",
        "flags timeout",
        "elements = { 10.9.0.0/24 }",
        "elements = { fd00::/64 }",
        "jump vpn_forward",
        "chain vpn_forward",
        "type nat hook postrouting priority srcnat; policy accept;",
    ] {
        assert!(rs.contains(want), "missing {want:?} in:\n{rs}");
    }
    assert_eq!(
        rs.matches("udp dport 62201 accept").count(),
        1,
        "second load duplicated rules"
    );
    assert_eq!(rs.matches("table inet gwos").count(), 1);
}
