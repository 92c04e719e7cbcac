//! The typed set operations over netlink in a namespace this test creates:
//! SPA grants added with `spa_allow` are listed back by `list_elements`
//! (the dump is read through libmnl's callback runner), the backend set is
//! replaced whole, and listing without the table is the kernel's ENOENT.
//! `nft` reads the same elements back. Needs root, ip, nft.

use std::net::IpAddr;
use std::time::Duration;

use gwos_netfilter::{list_elements, set_backend, spa_allow, Error, Proto};
use gwos_test_support::{in_netns, in_ns, require_root_and_tools, Netns};

/// A namespace `<prefix><pid>` with the base ruleset loaded, as init does.
fn gateway(prefix: &str) -> (String, Netns) {
    require_root_and_tools(&["ip", "nft"]);
    let ns = format!("{prefix}{}", std::process::id());
    let guard = Netns::new(&[&ns]);
    in_netns(&ns, || {
        gwos_netfilter::base::load(&gwos_netfilter::base::BaseConfig::default())
    })
    .expect("base ruleset");
    (ns, guard)
}

#[test]
fn spa_grants_are_listed_back_with_their_timeout() {
    let (ns, _guard) = gateway("gwsets");
    let x: IpAddr = "192.0.2.7".parse().expect("addr");
    let y: IpAddr = "2001:db8::9".parse().expect("addr");
    let listed = in_netns(&ns, move || {
        spa_allow(x, Proto::Tcp, 443, Duration::from_secs(20))?;
        spa_allow(y, Proto::Udp, 51820, Duration::from_secs(30))?;
        // enough elements that the dump spans more than one netlink message
        for port in 1000..1200 {
            spa_allow(x, Proto::Tcp, port, Duration::from_secs(60))?;
        }
        list_elements()
    })
    .expect("listing the spa sets");
    assert_eq!(listed.len(), 202, "{listed:?}");
    let tls = listed
        .iter()
        .find(|e| e.addr == x && e.port == 443)
        .expect("the tcp/443 grant");
    assert_eq!(tls.proto, 6);
    assert!(
        tls.expires_in <= Duration::from_secs(20) && tls.expires_in > Duration::from_secs(10),
        "{tls:?}"
    );
    let wg = listed.iter().find(|e| e.addr == y).expect("the IPv6 grant");
    assert_eq!((wg.proto, wg.port), (17, 51820));
    let nft = in_ns(&ns, &["nft", "list", "set", "inet", "gwos", "spa_v4"]);
    assert!(nft.contains("192.0.2.7 . tcp . 443"), "{nft}");
}

#[test]
fn backend_set_is_replaced_whole() {
    let (ns, _guard) = gateway("gwback");
    in_netns(&ns, || {
        set_backend(&["10.9.0.0/24".parse().expect("net")])?;
        set_backend(&["10.8.0.0/24".parse().expect("net")])
    })
    .expect("replacing the backend set");
    let nft = in_ns(&ns, &["nft", "list", "set", "inet", "gwos", "backend_v4"]);
    assert!(
        nft.contains("10.8.0.0/24") && !nft.contains("10.9.0.0/24"),
        "{nft}"
    );
}

#[test]
fn listing_without_the_table_is_enoent() {
    require_root_and_tools(&["ip"]);
    let ns = format!("gwnotab{}", std::process::id());
    let _ns = Netns::new(&[&ns]);
    match in_netns(&ns, list_elements) {
        Err(Error::Netlink(what, e)) => {
            assert_eq!(what, "listing an spa set");
            assert_eq!(e.raw_os_error(), Some(libc::ENOENT), "{e}");
        }
        other => panic!("expected the kernel's ENOENT, got {other:?}"),
    }
}
