//! Users (WireGuard peers) as kept in `users.json`: name, client public key,
//! one /32 from the pool and the networks the user may reach. Only users made
//! through RPC exist; client private keys never reach the gateway.

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
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Users {
    pub users: BTreeMap<String, User>,
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
            },
        );
        assert_eq!(
            u.allocate(pool, gw, None).unwrap(),
            Ipv4Addr::new(10, 77, 0, 3)
        );
        assert!(u.allocate(pool, gw, Some(a)).is_err());
        assert!(u.allocate(pool, gw, Some(gw)).is_err());
        assert!(u
            .allocate(pool, gw, Some(Ipv4Addr::new(10, 78, 0, 5)))
            .is_err());
        assert!(u
            .allocate(pool, gw, Some(Ipv4Addr::new(10, 77, 0, 255)))
            .is_err());
    }

    #[test]
    fn names_keys_nets() {
        assert!(valid_name("alice@corp"));
        assert!(!valid_name("a b") && !valid_name("") && !valid_name("a;rm"));
        assert!(parse_key("AAAA").is_err());
        assert_eq!(
            parse_nets(&["10.1.2.3/16".into(), "10.9.9.9".into()]).unwrap()[0].to_string(),
            "10.1.0.0/16"
        );
        assert!(parse_nets(&["nope".into()]).is_err());
    }
}
