//! The base ruleset of table `inet gwos`, loaded by init at boot in one
//! atomic batch (create-if-missing, delete, create): default-deny input with
//! loopback, established/related, essential ICMP/ICMPv6 (router
//! advertisements only with `accept_ra`), the tunnel interface told apart
//! (`gw0` reaches only `tunnel_*_ports`, never the SPA or control port,
//! whatever `backend` covers), the SPA port, the control port for backend
//! addresses, and whatever the SPA gate has put into `spa_v4`/`spa_v6`
//! (`addr . l4proto . dport`, with timeouts); a rate-limited log of drops;
//! forward (default deny, jump to `vpn_forward`); output by socket uid
//! ([`egress`]); an empty nat `postrouting` chain.

use std::net::IpAddr;

use ipnet::IpNet;
use serde::Deserialize;

use crate::expr::*;
use crate::nl::Batch;
use crate::{interval_elems, Error, TABLE};

pub const SET_BACKEND_V4: &str = "backend_v4";
pub const SET_BACKEND_V6: &str = "backend_v6";
pub const SET_SPA_V4: &str = "spa_v4";
pub const SET_SPA_V6: &str = "spa_v6";

// nft's datatype ids; concatenations are shifted by 6 bits per field
const TYPE_IPV4: u32 = 7;
const TYPE_IPV6: u32 = 8;
const TYPE_INET_PROTO: u32 = 12;
const TYPE_INET_SERVICE: u32 = 13;
const SET_INTERVAL: u32 = 0x4;
const SET_TIMEOUT: u32 = 0x10;

/// What the base ruleset needs from the site config.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct BaseConfig {
    /// Backend networks allowed to reach the control port (CIDRs).
    pub backend: Vec<IpNet>,
    pub spa_port: u16,
    pub control_port: u16,
    pub tls_port: u16,
    /// Public WireGuard port (SPA-gated like tls), if enabled.
    pub wg_public_port: Option<u16>,
    /// The vpn's TUN interface: what arrives on it is tunnel traffic.
    pub tunnel_interface: String,
    /// Local ports the tunnel may reach (nothing else: no SPA, no control).
    pub tunnel_tcp_ports: Vec<u16>,
    pub tunnel_udp_ports: Vec<u16>,
    /// The vpn's loopback UDP port, the one tls-front sends datagrams to.
    pub vpn_port: u16,
    /// Accept IPv6 router advertisements (off: no SLAAC addresses or
    /// default routes from whoever is on the link).
    pub accept_ra: bool,
}

impl Default for BaseConfig {
    fn default() -> Self {
        Self {
            backend: Vec::new(),
            spa_port: 62201,
            control_port: 2222,
            tls_port: 443,
            wg_public_port: None,
            tunnel_interface: "gw0".into(),
            tunnel_tcp_ports: Vec::new(),
            tunnel_udp_ports: Vec::new(),
            vpn_port: 51820,
            accept_ra: false,
        }
    }
}

impl BaseConfig {
    /// From the site config: `[firewall]` if present, else `[control] backend`/`listen`,
    /// `[spa] port` and `[vpn] interface`/`listen`/`public_listen`.
    pub fn from_site(site: &gwos_core::SiteConfig) -> anyhow::Result<Self> {
        if site.raw().contains_key("firewall") {
            return site.section("firewall");
        }
        let mut c = BaseConfig::default();
        let raw = site.raw();
        if let Some(ctl) = raw.get("control").and_then(|v| v.as_table()) {
            if let Some(b) = ctl.get("backend").and_then(|v| v.as_array()) {
                for x in b {
                    let s = x.as_str().ok_or_else(|| {
                        anyhow::anyhow!("[control] backend entries must be strings")
                    })?;
                    c.backend.push(parse_net(s)?);
                }
            }
            if let Some(l) = ctl.get("listen").and_then(|v| v.as_str()) {
                c.control_port = l.parse::<std::net::SocketAddr>()?.port();
            }
        }
        if let Some(p) = raw
            .get("spa")
            .and_then(|v| v.get("port"))
            .and_then(|v| v.as_integer())
        {
            c.spa_port = u16::try_from(p)?;
        }
        if let Some(vpn) = raw.get("vpn").and_then(|v| v.as_table()) {
            if let Some(i) = vpn.get("interface").and_then(|v| v.as_str()) {
                c.tunnel_interface = i.into();
            }
            let port = |key: &str| -> anyhow::Result<Option<u16>> {
                match vpn.get(key).and_then(|v| v.as_str()) {
                    None => Ok(None),
                    Some(l) => Ok(Some(
                        l.parse::<std::net::SocketAddr>()
                            .map_err(|e| anyhow::anyhow!("[vpn] {key} {l:?}: {e}"))?
                            .port(),
                    )),
                }
            };
            if let Some(p) = port("listen")? {
                c.vpn_port = p;
            }
            if let Some(p) = port("public_listen")? {
                c.wg_public_port = Some(p);
            }
        }
        Ok(c)
    }
}

/// Accepts `a.b.c.d`, `a.b.c.d/n`, IPv6 likewise.
pub fn parse_net(s: &str) -> anyhow::Result<IpNet> {
    if let Ok(n) = s.parse::<IpNet>() {
        return Ok(n.trunc());
    }
    let a: IpAddr = s
        .parse()
        .map_err(|_| anyhow::anyhow!("{s:?} is not an address or CIDR"))?;
    Ok(IpNet::from(a))
}

/// Replaces table `inet gwos` with the base ruleset in one transaction.
pub fn load(cfg: &BaseConfig) -> Result<(), Error> {
    let t = TABLE;
    let mut b = Batch::new();
    b.table(t, false);
    b.table(t, true);
    b.table(t, false);
    b.set(t, SET_BACKEND_V4, 1, TYPE_IPV4, 4, SET_INTERVAL);
    b.set(t, SET_BACKEND_V6, 2, TYPE_IPV6, 16, SET_INTERVAL);
    let concat = |a: u32| (a << 12) | (TYPE_INET_PROTO << 6) | TYPE_INET_SERVICE;
    b.set(t, SET_SPA_V4, 3, concat(TYPE_IPV4), 12, SET_TIMEOUT);
    b.set(t, SET_SPA_V6, 4, concat(TYPE_IPV6), 24, SET_TIMEOUT);
    let (v4, v6) = interval_elems(&cfg.backend);
    b.elems(t, SET_BACKEND_V4, &v4, false, false);
    b.elems(t, SET_BACKEND_V6, &v6, false, false);

    b.chain(
        t,
        "input",
        Some((libc::NF_INET_LOCAL_IN as u32, 0, false, "filter")),
    );
    b.chain(
        t,
        "forward",
        Some((libc::NF_INET_FORWARD as u32, 0, false, "filter")),
    );
    b.chain(
        t,
        "output",
        Some((libc::NF_INET_LOCAL_OUT as u32, 0, true, "filter")),
    );
    b.chain(t, "vpn_forward", None);
    b.chain(
        t,
        "postrouting",
        Some((libc::NF_INET_POST_ROUTING as u32, 100, true, "nat")),
    );

    let rule = |b: &mut Batch, chain: &str, parts: Vec<Vec<crate::nl::Expr>>| {
        let exprs: Vec<_> = parts.into_iter().flatten().collect();
        b.rule(t, chain, &exprs);
    };
    // input
    rule(&mut b, "input", vec![iifname("lo"), vec![accept()]]);
    rule(
        &mut b,
        "input",
        vec![ct_state(CT_ESTABLISHED | CT_RELATED), vec![accept()]],
    );
    rule(&mut b, "input", vec![ct_state(CT_INVALID), vec![drop()]]);
    // ICMP: echo-request, destination-unreachable, time-exceeded, parameter-problem
    for ty in [8u8, 3, 11, 12] {
        rule(
            &mut b,
            "input",
            vec![
                nfproto(NFPROTO_IPV4),
                l4proto(1),
                icmp_type(ty),
                vec![accept()],
            ],
        );
    }
    // ICMPv6: unreachable, packet-too-big, time-exceeded, parameter-problem, echo-request, RS,
    // NS, NA; RA only if configured (the gateway is IPv4-only unless told otherwise)
    let mut icmpv6 = vec![1u8, 2, 3, 4, 128, 133, 135, 136];
    if cfg.accept_ra {
        icmpv6.push(134);
    }
    for ty in icmpv6 {
        rule(
            &mut b,
            "input",
            vec![
                nfproto(NFPROTO_IPV6),
                l4proto(58),
                icmp_type(ty),
                vec![accept()],
            ],
        );
    }
    // the tunnel: only the listed ports, then nothing (before SPA, control and the grants)
    let tun = cfg.tunnel_interface.as_str();
    for (proto, ports) in [(6u8, &cfg.tunnel_tcp_ports), (17, &cfg.tunnel_udp_ports)] {
        for p in ports {
            rule(
                &mut b,
                "input",
                vec![iifname(tun), l4proto(proto), dport(*p), vec![accept()]],
            );
        }
    }
    rule(&mut b, "input", vec![iifname(tun), vec![counter(), drop()]]);
    rule(
        &mut b,
        "input",
        vec![l4proto(17), dport(cfg.spa_port), vec![accept()]],
    );
    rule(
        &mut b,
        "input",
        vec![
            nfproto(NFPROTO_IPV4),
            l4proto(6),
            dport(cfg.control_port),
            vec![
                payload(true, 12, 4, REG_1),
                lookup(SET_BACKEND_V4, 1, REG_1),
                accept(),
            ],
        ],
    );
    rule(
        &mut b,
        "input",
        vec![
            nfproto(NFPROTO_IPV6),
            l4proto(6),
            dport(cfg.control_port),
            vec![
                payload(true, 8, 16, REG_1),
                lookup(SET_BACKEND_V6, 2, REG_1),
                accept(),
            ],
        ],
    );
    // ip saddr . meta l4proto . th dport @spa_v4 accept
    rule(
        &mut b,
        "input",
        vec![
            nfproto(NFPROTO_IPV4),
            vec![
                payload(true, 12, 4, reg32(0)),
                l4proto_into(reg32(1)),
                payload(false, 2, 2, reg32(2)),
                lookup(SET_SPA_V4, 3, REG_1),
                accept(),
            ],
        ],
    );
    rule(
        &mut b,
        "input",
        vec![
            nfproto(NFPROTO_IPV6),
            vec![
                payload(true, 8, 16, reg32(0)),
                l4proto_into(reg32(4)),
                payload(false, 2, 2, reg32(5)),
                lookup(SET_SPA_V6, 4, REG_1),
                accept(),
            ],
        ],
    );
    rule(
        &mut b,
        "input",
        vec![vec![limit_per_sec(5), log("gwos-drop: ")]],
    );
    rule(&mut b, "input", vec![vec![counter(), drop()]]);
    // forward
    rule(
        &mut b,
        "forward",
        vec![ct_state(CT_ESTABLISHED | CT_RELATED), vec![accept()]],
    );
    rule(&mut b, "forward", vec![vec![jump("vpn_forward")]]);
    for parts in egress(cfg) {
        rule(&mut b, "output", parts);
    }
    b.commit()
        .map_err(|e| Error::Netlink("loading the base ruleset", e))
}

/// A gateway service's fixed uid (gwos_core::rpc::SERVICE_UIDS).
fn service_uid(name: &str) -> u32 {
    gwos_core::rpc::SERVICE_UIDS
        .iter()
        .find(|(n, _)| *n == name)
        .map(|(_, u)| *u)
        .unwrap_or_else(|| panic!("{name} is not in gwos_core::rpc::SERVICE_UIDS"))
}

/// The output chain's rules: what each service's socket uid may send.
/// spa (parses the internet's packets) and spa-grant send no IP packet at
/// all; tls-front answers its clients and sends datagrams to the vpn's
/// loopback port; vpn sends from its own UDP ports (and answers); control
/// only answers. Root (PID 1) and packets the kernel makes without a socket
/// (RSTs, ICMP errors) pass as before (policy accept); uids not listed here
/// are not restricted yet.
pub fn egress(cfg: &BaseConfig) -> Vec<Vec<Vec<crate::nl::Expr>>> {
    let replies = || ct_state(CT_ESTABLISHED | CT_RELATED);
    let (spa, vpn, tls, control, grant) = (
        service_uid("spa"),
        service_uid("vpn"),
        service_uid("tls-front"),
        service_uid("control"),
        service_uid("spa-grant"),
    );
    let mut rules = vec![
        vec![skuid(spa), vec![counter(), drop()]],
        vec![skuid(grant), vec![counter(), drop()]],
        vec![skuid(tls), replies(), vec![accept()]],
        vec![
            skuid(tls),
            oifname("lo", true),
            l4proto(17),
            dport(cfg.vpn_port),
            vec![accept()],
        ],
        vec![skuid(tls), vec![counter(), drop()]],
        vec![skuid(vpn), replies(), vec![accept()]],
    ];
    for p in std::iter::once(cfg.vpn_port).chain(cfg.wg_public_port) {
        rules.push(vec![skuid(vpn), l4proto(17), sport(p), vec![accept()]]);
    }
    rules.push(vec![skuid(vpn), vec![counter(), drop()]]);
    rules.push(vec![skuid(control), replies(), vec![accept()]]);
    rules.push(vec![skuid(control), vec![counter(), drop()]]);
    rules
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn from_site_takes_the_tunnel_and_vpn_ports_from_vpn() {
        let site = gwos_core::SiteConfig::parse(
            "[control]\nbackend = [\"10.0.0.0/8\"]\n[vpn]\ninterface = \"wg9\"\nlisten = \"127.0.0.1:5000\"\npublic_listen = \"0.0.0.0:51821\"\n",
        )
        .unwrap();
        let c = BaseConfig::from_site(&site).unwrap();
        assert_eq!(
            (c.tunnel_interface.as_str(), c.vpn_port, c.wg_public_port),
            ("wg9", 5000, Some(51821))
        );
        assert!(!c.accept_ra && c.tunnel_tcp_ports.is_empty());
        let bad = gwos_core::SiteConfig::parse("[vpn]\nlisten = \"nowhere\"\n").unwrap();
        let e = format!("{:#}", BaseConfig::from_site(&bad).unwrap_err());
        assert!(e.starts_with("[vpn] listen \"nowhere\":"), "{e}");
    }

    #[test]
    fn egress_restricts_each_service_and_ends_with_its_drop() {
        let rules = egress(&BaseConfig {
            wg_public_port: Some(51821),
            ..Default::default()
        });
        // spa, spa-grant: drop; tls-front: replies, lo→vpn, drop; vpn: replies,
        // two source ports, drop; control: replies, drop
        assert_eq!(rules.len(), 11);
    }
}
