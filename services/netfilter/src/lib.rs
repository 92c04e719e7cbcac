//! Owns the nftables table `inet gwos`: the base ruleset init loads at boot
//! ([`base::load`], one atomic batch), the typed set operations spa, vpn
//! and sessions use ([`spa_allow`], [`set_backend`], [`list_elements`]) and
//! the vpn's per-user forward and masquerade chains ([`vpn::apply`]), all
//! over netlink through libnftnl/libmnl ([`nl`]); no `nft` binary is needed.
//! spa holds no CAP_NET_ADMIN: its grants go through the `spa-grant`
//! service ([`grant`]), which adds one bounded set element per request.
//! `gwos-nft-base` (src/bin) loads the same base ruleset from a site.toml so
//! host tests use exactly the image's rules inside their namespaces.

pub mod base;
mod expr;
pub mod grant;
pub mod nl;
pub mod vpn;

use std::net::IpAddr;
use std::time::Duration;

use ipnet::IpNet;

pub const TABLE: &str = "gwos";

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("nftables: {0}: {1}")]
    Netlink(&'static str, std::io::Error),
    #[error("nftables: {0}")]
    Invalid(String),
}

/// Transport protocol of an SPA grant.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Proto {
    Tcp,
    Udp,
}

impl Proto {
    pub fn number(self) -> u8 {
        match self {
            Proto::Tcp => 6,
            Proto::Udp => 17,
        }
    }
}

/// The set key `addr . l4proto . port` with each field padded to 32 bits.
pub fn spa_key(addr: IpAddr, proto: Proto, port: u16) -> (&'static str, Vec<u8>) {
    let (set, mut k) = match addr {
        IpAddr::V4(a) => (base::SET_SPA_V4, a.octets().to_vec()),
        IpAddr::V6(a) => match a.to_ipv4_mapped() {
            Some(v4) => (base::SET_SPA_V4, v4.octets().to_vec()),
            None => (base::SET_SPA_V6, a.octets().to_vec()),
        },
    };
    k.extend_from_slice(&[proto.number(), 0, 0, 0]);
    k.extend_from_slice(&port.to_be_bytes());
    k.extend_from_slice(&[0, 0]);
    (set, k)
}

/// Lets `addr` open new connections to `proto/port` for `timeout`
/// (established ones continue afterwards through the ct state rule). A
/// repeated grant restarts the timeout.
pub fn spa_allow(addr: IpAddr, proto: Proto, port: u16, timeout: Duration) -> Result<(), Error> {
    let (set, key) = spa_key(addr, proto, port);
    let ms = (timeout.as_millis() as u64).max(1);
    let mut b = nl::Batch::new();
    b.elems(TABLE, set, &[(key.clone(), 0, ms)], false, true);
    match b.commit() {
        Ok(()) => Ok(()),
        Err(e) if e.raw_os_error() == Some(libc::EEXIST) => {
            let mut b = nl::Batch::new();
            b.elems(TABLE, set, &[(key.clone(), 0, 0)], true, false);
            b.elems(TABLE, set, &[(key, 0, ms)], false, false);
            b.commit()
                .map_err(|e| Error::Netlink("refreshing an spa element", e))
        }
        Err(e) => Err(Error::Netlink("adding an spa element", e)),
    }
}

/// Replaces the backend sets (control port access) in one transaction.
pub fn set_backend(addrs: &[IpNet]) -> Result<(), Error> {
    let (v4, v6) = interval_elems(addrs);
    let mut b = nl::Batch::new();
    // flush = delete every current element
    for (set, cur) in [
        (base::SET_BACKEND_V4, list_raw(base::SET_BACKEND_V4)?),
        (base::SET_BACKEND_V6, list_raw(base::SET_BACKEND_V6)?),
    ] {
        let elems: Vec<_> = cur.into_iter().map(|(k, f)| (k, f, 0)).collect();
        b.elems(TABLE, set, &elems, true, false);
    }
    b.elems(TABLE, base::SET_BACKEND_V4, &v4, false, false);
    b.elems(TABLE, base::SET_BACKEND_V6, &v6, false, false);
    b.commit()
        .map_err(|e| Error::Netlink("replacing the backend sets", e))
}

fn list_raw(set: &str) -> Result<Vec<(Vec<u8>, u32)>, Error> {
    // interval ends are reported as elements too and must be deleted with their flag
    let elems = nl::list_elems(TABLE, set).map_err(|e| Error::Netlink("listing a set", e))?;
    Ok(elems.into_iter().map(|(k, flags, _)| (k, flags)).collect())
}

/// One element of an spa set, decoded.
#[derive(Debug, Clone, PartialEq)]
pub struct SpaElement {
    pub addr: IpAddr,
    pub proto: u8,
    pub port: u16,
    /// Remaining lifetime.
    pub expires_in: Duration,
}

/// Lists the current SPA grants (both families).
pub fn list_elements() -> Result<Vec<SpaElement>, Error> {
    let mut out = Vec::new();
    for (set, alen) in [(base::SET_SPA_V4, 4usize), (base::SET_SPA_V6, 16)] {
        for (k, _, exp) in
            nl::list_elems(TABLE, set).map_err(|e| Error::Netlink("listing an spa set", e))?
        {
            if k.len() != alen + 8 {
                continue;
            }
            let addr = if alen == 4 {
                IpAddr::from(<[u8; 4]>::try_from(&k[..4]).unwrap())
            } else {
                IpAddr::from(<[u8; 16]>::try_from(&k[..16]).unwrap())
            };
            out.push(SpaElement {
                addr,
                proto: k[alen],
                port: u16::from_be_bytes([k[alen + 4], k[alen + 5]]),
                expires_in: Duration::from_millis(exp),
            });
        }
    }
    Ok(out)
}

/// Interval-set elements for CIDRs: start key, and end key (first address
/// after the range) flagged NFT_SET_ELEM_INTERVAL_END; overlaps merged.
/// Set elements as (key, element flags, timeout ms).
pub type Elems = Vec<(Vec<u8>, u32, u64)>;

pub fn interval_elems(nets: &[IpNet]) -> (Elems, Elems) {
    const END: u32 = 1;
    let (mut v4, mut v6) = (Vec::new(), Vec::new());
    for n in IpNet::aggregate(&nets.to_vec()) {
        match n {
            IpNet::V4(n) => {
                v4.push((n.network().octets().to_vec(), 0, 0));
                if let Some(next) = u32::from(n.broadcast()).checked_add(1) {
                    v4.push((next.to_be_bytes().to_vec(), END, 0));
                }
            }
            IpNet::V6(n) => {
                v6.push((n.network().octets().to_vec(), 0, 0));
                if let Some(next) = u128::from(n.broadcast()).checked_add(1) {
                    v6.push((next.to_be_bytes().to_vec(), END, 0));
                }
            }
        }
    }
    (v4, v6)
}
