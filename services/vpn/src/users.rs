//! Users (WireGuard peers) as kept in `users.json`: name, client public key,
//! one /32 from the pool, the networks the user may reach and the grant's
//! expiry. Only users made through RPC exist; client private keys never reach
//! the gateway. The file also keeps the runtime DNS resolvers (`config_set
//! dns`), which override the site's `[vpn] dns`.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use anyhow::{bail, Context, Result};
use base64::Engine;
use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct User {
    pub name: String,
    /// Base64 WireGuard public key.
    pub public_key: String,
    pub address: Ipv4Addr,
    pub allowed: Vec<Ipv4Net>,
    pub created: String,
    /// Unix time the grant ends (the peer is removed then); `None`: no expiry.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<u64>,
    /// The resolvers written into the client config last handed out; when
    /// they differ from today's, the user's config is outdated.
    #[serde(default)]
    pub config_dns: Vec<Ipv4Addr>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Users {
    pub users: BTreeMap<String, User>,
    /// Resolvers set at runtime (`config_set dns`); `None`: the site's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dns: Option<Vec<Ipv4Addr>>,
}

pub use gwos_netfilter::vpn::DNS_PORTS;

/// The networks a user's packets may reach: their own plus the resolvers.
pub fn effective_allowed(user: &User, dns: &[Ipv4Addr]) -> Vec<Ipv4Net> {
    let mut v = user.allowed.clone();
    for r in dns {
        let n = Ipv4Net::from(*r);
        if !v.iter().any(|x| x.contains(r)) {
            v.push(n);
        }
    }
    v
}

/// Parses resolver addresses (IPv4 only: the tunnel carries IPv4).
pub fn parse_dns(list: &[String]) -> Result<Vec<Ipv4Addr>> {
    list.iter()
        .map(|s| {
            s.trim()
                .parse::<Ipv4Addr>()
                .with_context(|| format!("DNS resolver {s:?} is not an IPv4 address"))
        })
        .collect()
}

/// The grant's end for `requested` seconds from `now`, within the site's
/// default and maximum (`None` requested: the default, which may be none).
pub fn grant_end(
    now: u64,
    requested: Option<u64>,
    default: Option<u64>,
    max: Option<u64>,
) -> Result<Option<u64>> {
    let Some(secs) = requested.or(default) else {
        return Ok(None);
    };
    if secs == 0 {
        bail!("expires_secs must be at least 1");
    }
    if let Some(m) = max {
        if secs > m {
            bail!("expires_secs {secs} is above the site's maximum grant of {m} s ([vpn] grant_max_secs)");
        }
    }
    Ok(Some(now.saturating_add(secs)))
}

pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.@".contains(&b))
}

pub fn parse_key(b64: &str) -> Result<[u8; 32]> {
    let raw = base64::engine::general_purpose::STANDARD
        .decode(b64.trim())
        .context("public key is not base64")?;
    raw.try_into()
        .map_err(|_| anyhow::anyhow!("public key must be 32 bytes"))
}

pub fn parse_nets(list: &[String]) -> Result<Vec<Ipv4Net>> {
    list.iter()
        .map(|s| {
            let s = s.trim();
            let net: Ipv4Net = if s.contains('/') {
                s.parse().with_context(|| format!("bad CIDR {s:?}"))?
            } else {
                Ipv4Net::new(s.parse().with_context(|| format!("bad address {s:?}"))?, 32)?
            };
            Ok(net.trunc())
        })
        .collect()
}

impl Users {
    /// Users whose grant ended at or before `now`.
    pub fn expired(&self, now: u64) -> Vec<String> {
        self.users
            .values()
            .filter(|u| u.expires_at.is_some_and(|t| t <= now))
            .map(|u| u.name.clone())
            .collect()
    }

    pub fn by_key(&self, key: &[u8; 32]) -> Option<&User> {
        self.users
            .values()
            .find(|u| parse_key(&u.public_key).ok().as_ref() == Some(key))
    }

    /// Picks `want` (checked) or the lowest free host address of the pool,
    /// skipping the network, the gateway and broadcast addresses.
    pub fn allocate(
        &self,
        pool: Ipv4Net,
        gateway: Ipv4Addr,
        want: Option<Ipv4Addr>,
    ) -> Result<Ipv4Addr> {
        let taken = |a: Ipv4Addr| a == gateway || self.users.values().any(|u| u.address == a);
        if let Some(a) = want {
            if !pool.contains(&a) || a == pool.network() || a == pool.broadcast() {
                bail!("address {a} is not a host address of the pool {pool}");
            }
            if taken(a) {
                bail!("address {a} is already in use");
            }
            return Ok(a);
        }
        pool.hosts()
            .find(|a| !taken(*a))
            .context("address pool exhausted")
    }
}

/// wg-quick client config; the private key stays a placeholder.
pub fn client_config(
    user: &User,
    prefix: u8,
    server_public: &str,
    endpoint: &str,
    dns: &[String],
    allowed_ips: &[String],
) -> String {
    let mut s = String::from("[Interface]\nPrivateKey = <CLIENT_PRIVATE_KEY>\n");
    s += &format!("Address = {}/{}\n", user.address, prefix.max(32));
    if !dns.is_empty() {
        s += &format!("DNS = {}\n", dns.join(", "));
    }
    s += &format!(
        "\n[Peer]\nPublicKey = {server_public}\nEndpoint = {endpoint}\nAllowedIPs = {}\nPersistentKeepalive = 25\n",
        allowed_ips.join(", ")
    );
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allocation_skips_gateway_and_used() {
        let pool: Ipv4Net = "10.77.0.0/24".parse().unwrap();
        let gw = Ipv4Addr::new(10, 77, 0, 1);
        let mut u = Users::default();
        let a = u.allocate(pool, gw, None).unwrap();
        assert_eq!(a, Ipv4Addr::new(10, 77, 0, 2));
        u.users.insert(
            "a".into(),
            User {
                name: "a".into(),
                public_key: "x".into(),
                address: a,
                allowed: vec![],
                created: String::new(),
                expires_at: None,
                config_dns: vec![],
            },
        );
        assert_eq!(
            u.allocate(pool, gw, None).unwrap(),
            Ipv4Addr::new(10, 77, 0, 3)
        );
        u.allocate(pool, gw, Some(a)).unwrap_err();
        u.allocate(pool, gw, Some(gw)).unwrap_err();
        u.allocate(pool, gw, Some(Ipv4Addr::new(10, 78, 0, 5)))
            .unwrap_err();
        u.allocate(pool, gw, Some(Ipv4Addr::new(10, 77, 0, 255)))
            .unwrap_err();
    }

    #[test]
    fn grants_within_default_and_max() {
        assert_eq!(grant_end(100, None, None, Some(50)).unwrap(), None);
        assert_eq!(grant_end(100, None, Some(10), Some(50)).unwrap(), Some(110));
        assert_eq!(
            grant_end(100, Some(50), Some(10), Some(50)).unwrap(),
            Some(150)
        );
        let e = grant_end(100, Some(51), None, Some(50))
            .unwrap_err()
            .to_string();
        assert!(e.contains("maximum grant of 50"), "{e}");
        let e = grant_end(100, Some(0), None, None).unwrap_err().to_string();
        assert!(e.contains("at least 1"), "{e}");
    }

    #[test]
    fn expired_users_and_resolvers_in_allowed() {
        let mut u = Users::default();
        let mk = |name: &str, exp: Option<u64>| User {
            name: name.into(),
            public_key: "x".into(),
            address: Ipv4Addr::new(10, 77, 0, 2),
            allowed: vec!["10.99.0.0/16".parse().unwrap()],
            created: String::new(),
            expires_at: exp,
            config_dns: vec![],
        };
        u.users.insert("a".into(), mk("a", Some(10)));
        u.users.insert("b".into(), mk("b", Some(11)));
        u.users.insert("c".into(), mk("c", None));
        assert_eq!(u.expired(10), vec!["a".to_string()]);
        let dns = [Ipv4Addr::new(10, 99, 0, 53), Ipv4Addr::new(10, 5, 0, 53)];
        let eff = effective_allowed(&u.users["a"], &dns);
        assert_eq!(
            eff.iter().map(|n| n.to_string()).collect::<Vec<_>>(),
            ["10.99.0.0/16", "10.5.0.53/32"]
        );
        let e = parse_dns(&["fe80::1".into()]).unwrap_err().to_string();
        assert!(e.contains("not an IPv4"), "{e}");
    }

    #[test]
    fn names_keys_nets() {
        assert!(valid_name("alice@corp"));
        assert!(!valid_name("a b") && !valid_name("") && !valid_name("a;rm"));
        parse_key("AAAA").unwrap_err();
        assert_eq!(
            parse_nets(&["10.1.2.3/16".into(), "10.9.9.9".into()]).unwrap()[0].to_string(),
            "10.1.0.0/16"
        );
        parse_nets(&["nope".into()]).unwrap_err();
    }
}
