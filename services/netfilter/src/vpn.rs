//! Per-user VPN forward rules (owned by the vpn service): chain `vpn_forward`
//! of table `inet gwos` lets each tunnel address reach only its allowed
//! networks, drops client-to-client traffic (gw0 → gw0) and everything else
//! coming from the tunnel; chain `vpn_postrouting` masquerades tunnel traffic
//! toward internal networks. The vpn rewrites both chains whole on every
//! change (one atomic nft transaction), so a deleted user's rules vanish with
//! the same commit that adds the others'.
//!
//! Today the transaction is handed to `nft -f -` when that binary exists (host
//! tests, dev images); the netlink path the image needs is still to be written
//! (the vpn also enforces source address and allowed destinations itself).

use std::io::Write;
use std::net::Ipv4Addr;
use std::process::{Command, Stdio};

/// One user's forward policy.
#[derive(Debug, Clone, PartialEq)]
pub struct UserRule {
    pub address: Ipv4Addr,
    /// Allowed destination networks as CIDR text (already validated).
    pub allowed: Vec<String>,
}

fn valid_cidr(s: &str) -> bool {
    let (ip, len) = s.split_once('/').unwrap_or((s, "32"));
    ip.parse::<Ipv4Addr>().is_ok() && len.parse::<u8>().map(|l| l <= 32).unwrap_or(false)
}

fn valid_ifname(s: &str) -> bool {
    !s.is_empty() && s.len() < 16 && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// Renders the nft transaction for `iface`, the pool and the users.
pub fn render(iface: &str, pool: &str, users: &[UserRule]) -> Result<String, String> {
    if !valid_ifname(iface) {
        return Err(format!("bad interface name {iface:?}"));
    }
    if !valid_cidr(pool) {
        return Err(format!("bad pool {pool:?}"));
    }
    let mut s = String::new();
    s += "add table inet gwos\n";
    s += "add chain inet gwos vpn_forward\n";
    s += "flush chain inet gwos vpn_forward\n";
    s += "add chain inet gwos vpn_postrouting { type nat hook postrouting priority srcnat; policy accept; }\n";
    s += "flush chain inet gwos vpn_postrouting\n";
    s += &format!("add rule inet gwos vpn_forward oifname \"{iface}\" ct state established,related accept\n");
    s += &format!("add rule inet gwos vpn_forward iifname \"{iface}\" oifname \"{iface}\" counter drop\n");
    for u in users {
        let nets: Vec<&str> = u.allowed.iter().map(String::as_str).filter(|n| valid_cidr(n)).collect();
        if nets.len() != u.allowed.len() {
            return Err(format!("bad allowed network for {}", u.address));
        }
        if nets.is_empty() {
            continue;
        }
        s += &format!(
            "add rule inet gwos vpn_forward iifname \"{iface}\" ip saddr {} ip daddr {{ {} }} accept\n",
            u.address,
            nets.join(", ")
        );
    }
    s += &format!("add rule inet gwos vpn_forward iifname \"{iface}\" counter drop\n");
    s += &format!(
        "add rule inet gwos vpn_postrouting iifname \"{iface}\" oifname != \"{iface}\" ip saddr {pool} masquerade\n"
    );
    Ok(s)
}

/// Applies the rendered rules in one transaction.
pub fn apply(iface: &str, pool: &str, users: &[UserRule]) -> Result<(), String> {
    let script = render(iface, pool, users)?;
    let mut child = Command::new("nft")
        .args(["-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("running nft: {e}"))?;
    child
        .stdin
        .take()
        .ok_or("nft stdin")?
        .write_all(script.as_bytes())
        .map_err(|e| format!("writing to nft: {e}"))?;
    let out = child.wait_with_output().map_err(|e| format!("waiting for nft: {e}"))?;
    if !out.status.success() {
        return Err(format!("nft refused the vpn rules: {}", String::from_utf8_lossy(&out.stderr).trim()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_per_user_rules_and_rejects_bad_input() {
        let users = vec![
            UserRule { address: Ipv4Addr::new(10, 77, 0, 2), allowed: vec!["10.99.1.0/24".into()] },
            UserRule { address: Ipv4Addr::new(10, 77, 0, 3), allowed: vec![] },
        ];
        let s = render("gw0", "10.77.0.0/24", &users).unwrap();
        assert!(s.contains("ip saddr 10.77.0.2 ip daddr { 10.99.1.0/24 } accept"));
        assert!(!s.contains("10.77.0.3"));
        assert!(s.contains("iifname \"gw0\" oifname \"gw0\" counter drop"));
        assert!(render("gw0;x", "10.77.0.0/24", &users).is_err());
        let bad = vec![UserRule { address: Ipv4Addr::new(10, 77, 0, 2), allowed: vec!["1.2.3.4/99".into()] }];
        assert!(render("gw0", "10.77.0.0/24", &bad).is_err());
    }
}
