//! A lease as the client keeps it: what the ACK said, when it was taken, and
//! the times derived from it. Persisted (JSON) for INIT-REBOOT.

use std::net::Ipv4Addr;

use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Lease {
    pub address: Ipv4Addr,
    pub prefix: u8,
    /// The server identifier (option 54): renewals go here by unicast.
    pub server: Ipv4Addr,
    /// Option 3 (used only when option 121 is absent).
    pub routers: Vec<Ipv4Addr>,
    /// Option 121 (RFC 3442): destination and gateway.
    pub classless_routes: Vec<(Ipv4Net, Ipv4Addr)>,
    pub dns: Vec<Ipv4Addr>,
    pub ntp: Vec<Ipv4Addr>,
    /// Lease length (option 51), seconds.
    pub lease_secs: u32,
    /// T1 and T2 (options 58/59 or the RFC defaults), seconds from `taken`.
    pub renew_secs: u32,
    pub rebind_secs: u32,
    /// Unix time the ACK arrived (for INIT-REBOOT after a reboot).
    pub taken_unix: u64,
}

/// Shortest lease we accept; shorter is an absurd answer and refused.
pub const MIN_LEASE_SECS: u32 = 4;

impl Lease {
    /// The routes to install: option 121 overrides option 3 (RFC 3442 §2);
    /// without 121, a default route via the first router.
    pub fn routes(&self) -> Vec<(Ipv4Net, Ipv4Addr)> {
        if !self.classless_routes.is_empty() {
            return self.classless_routes.clone();
        }
        self.routers
            .first()
            .map(|gw| vec![(Ipv4Net::default(), *gw)])
            .unwrap_or_default()
    }

    /// Whether the lease is still valid at unix time `now` (for INIT-REBOOT).
    pub fn valid_at(&self, now_unix: u64) -> bool {
        now_unix < self.taken_unix.saturating_add(u64::from(self.lease_secs))
    }

    /// T1/T2 within the lease: defaults 0.5 and 0.875 of it (RFC 2131 §4.4.5),
    /// and T1 ≤ T2 ≤ lease whatever the server said.
    pub fn timers(lease: u32, t1: Option<u32>, t2: Option<u32>) -> (u32, u32) {
        let t2 = t2.unwrap_or((u64::from(lease) * 7 / 8) as u32).min(lease);
        let t1 = t1.unwrap_or(lease / 2).min(t2);
        (t1, t2)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lease() -> Lease {
        Lease {
            address: Ipv4Addr::new(10, 0, 2, 15),
            prefix: 24,
            server: Ipv4Addr::new(10, 0, 2, 2),
            routers: vec![Ipv4Addr::new(10, 0, 2, 2)],
            classless_routes: vec![],
            dns: vec![],
            ntp: vec![],
            lease_secs: 100,
            renew_secs: 50,
            rebind_secs: 87,
            taken_unix: 1000,
        }
    }

    #[test]
    fn option_121_overrides_option_3() {
        let mut l = lease();
        assert_eq!(
            l.routes(),
            vec![(Ipv4Net::default(), Ipv4Addr::new(10, 0, 2, 2))]
        );
        l.classless_routes = vec![("10.9.0.0/16".parse().unwrap(), Ipv4Addr::new(10, 0, 2, 3))];
        assert_eq!(l.routes(), l.classless_routes);
    }

    #[test]
    fn default_timers_and_bounds() {
        assert_eq!(Lease::timers(3600, None, None), (1800, 3150));
        assert_eq!(Lease::timers(100, Some(200), Some(300)), (100, 100));
        assert_eq!(Lease::timers(100, Some(90), Some(60)), (60, 60));
        assert!(lease().valid_at(1099));
        assert!(!lease().valid_at(1100));
    }
}
