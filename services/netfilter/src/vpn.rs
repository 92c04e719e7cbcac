//! Per-user VPN forward rules (owned by the vpn service): chain `vpn_forward`
//! of table `inet gwos` lets each tunnel address reach only its allowed
//! networks, drops client-to-client traffic (gw0 → gw0) and everything else
//! coming from the tunnel; chain `vpn_postrouting` masquerades tunnel traffic
//! leaving through any other interface. The vpn rewrites both chains whole on
//! every change, in one netlink batch (create-if-missing, flush, re-add), so
//! a deleted user's rules vanish in the same transaction that re-adds the
//! others' and a refused batch leaves the previous rules in place.
//!
//! The base ruleset ([`crate::base::load`], loaded by init first) creates
//! `vpn_forward` empty and its `forward` chain (policy drop) accepts
//! established/related traffic, then jumps here; what this chain does not
//! accept returns there and is dropped. The rules, as `nft list` shows them:
//!
//! ```text
//! chain vpn_forward {
//!     oifname "gw0" ct state established,related accept
//!     iifname "gw0" oifname "gw0" counter drop
//!     iifname "gw0" meta l4proto udp|tcp th dport 53|853 ip daddr != <each resolver> counter drop
//!     iifname "gw0" ip saddr <user> ip daddr <allowed net> accept   (per user, per net)
//!     iifname "gw0" counter drop
//! }
//! chain vpn_postrouting {
//!     type nat hook postrouting priority srcnat; policy accept;
//!     iifname "gw0" oifname != "gw0" ip saddr <pool> masquerade
//! }
//! ```
//!
//! The vpn also enforces source address and allowed destinations itself
//! before a packet reaches gw0; these rules are the kernel's second line.

use std::net::Ipv4Addr;

use ipnet::Ipv4Net;

use crate::expr::*;
use crate::nl::{Batch, Expr};
use crate::{Error, TABLE};

pub const CHAIN_FORWARD: &str = "vpn_forward";
pub const CHAIN_POSTROUTING: &str = "vpn_postrouting";
/// DNS ports kept inside the tunnel: plain DNS and DNS over TLS.
pub const DNS_PORTS: [u16; 2] = [53, 853];
/// `srcnat`
const PRIO_SRCNAT: i32 = 100;

/// One user's forward policy.
#[derive(Debug, Clone, PartialEq)]
pub struct UserRule {
    pub address: Ipv4Addr,
    /// Allowed destination networks (host bits are ignored).
    pub allowed: Vec<Ipv4Net>,
}

fn valid_ifname(s: &str) -> bool {
    !s.is_empty()
        && s.len() < 16
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// The transaction for `iface`, the pool, the users and the DNS resolvers
/// tunnel clients may query (nothing is sent).
fn batch(iface: &str, pool: Ipv4Net, users: &[UserRule], dns: &[Ipv4Addr]) -> Result<Batch, Error> {
    if !valid_ifname(iface) {
        return Err(Error::Invalid(format!("bad interface name {iface:?}")));
    }
    let t = TABLE;
    let mut b = Batch::new();
    b.table(t, false);
    b.chain(t, CHAIN_FORWARD, None);
    b.flush_chain(t, CHAIN_FORWARD);
    b.chain(
        t,
        CHAIN_POSTROUTING,
        Some((libc::NF_INET_POST_ROUTING as u32, PRIO_SRCNAT, true, "nat")),
    );
    b.flush_chain(t, CHAIN_POSTROUTING);

    let rule = |b: &mut Batch, chain: &str, parts: Vec<Vec<Expr>>| {
        let exprs: Vec<_> = parts.into_iter().flatten().collect();
        b.rule(t, chain, &exprs);
    };
    let ipv4 = || nfproto(NFPROTO_IPV4);
    rule(
        &mut b,
        CHAIN_FORWARD,
        vec![
            oifname(iface, true),
            ct_state(CT_ESTABLISHED | CT_RELATED),
            vec![accept()],
        ],
    );
    rule(
        &mut b,
        CHAIN_FORWARD,
        vec![
            iifname(iface),
            oifname(iface, true),
            vec![counter(), drop()],
        ],
    );
    // DNS stays inside the tunnel: to the resolvers only (the users' allowed
    // networks include them), every other DNS packet is counted and dropped.
    for proto in [libc::IPPROTO_UDP as u8, libc::IPPROTO_TCP as u8] {
        for port in DNS_PORTS {
            let mut parts = vec![iifname(iface), ipv4(), l4proto(proto), dport(port)];
            parts.extend(dns.iter().map(|r| ipv4_daddr_not(*r)));
            parts.push(vec![counter(), drop()]);
            rule(&mut b, CHAIN_FORWARD, parts);
        }
    }
    for u in users {
        let me = Ipv4Net::from(u.address);
        for net in &u.allowed {
            rule(
                &mut b,
                CHAIN_FORWARD,
                vec![
                    iifname(iface),
                    ipv4(),
                    ipv4_net(true, me),
                    ipv4_net(false, *net),
                    vec![accept()],
                ],
            );
        }
    }
    rule(
        &mut b,
        CHAIN_FORWARD,
        vec![iifname(iface), vec![counter(), drop()]],
    );
    rule(
        &mut b,
        CHAIN_POSTROUTING,
        vec![
            iifname(iface),
            oifname(iface, false),
            ipv4(),
            ipv4_net(true, pool),
            vec![masquerade()],
        ],
    );
    Ok(b)
}

/// Replaces both chains with the rules for these users in one transaction.
pub fn apply(
    iface: &str,
    pool: Ipv4Net,
    users: &[UserRule],
    dns: &[Ipv4Addr],
) -> Result<(), Error> {
    batch(iface, pool, users, dns)?
        .commit()
        .map_err(|e| Error::Netlink("replacing the vpn forward rules", e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejects_bad_interface_names_before_any_netlink() {
        let pool: Ipv4Net = "10.77.0.0/24".parse().unwrap();
        for bad in ["", "gw0;x", "gw0\"", "a-very-long-ifname", "gw 0"] {
            assert!(
                matches!(batch(bad, pool, &[], &[]), Err(Error::Invalid(_))),
                "{bad:?} accepted"
            );
        }
        let users = vec![UserRule {
            address: Ipv4Addr::new(10, 77, 0, 2),
            allowed: vec!["10.99.1.0/24".parse().unwrap()],
        }];
        batch("gw0", pool, &users, &[]).unwrap();
        batch("wg_1-x", pool, &users, &[Ipv4Addr::new(10, 99, 0, 53)]).unwrap();
    }
}
