//! A lease onto the interface over rtnetlink: the address with the lease's
//! lifetime (so the kernel itself drops it at the end if PID 1 could not),
//! and its routes; and back off again. Messages are built with net.rs's
//! netlink helpers; replace semantics make a renewal idempotent.

use std::net::Ipv4Addr;

use anyhow::Result;
use ipnet::Ipv4Net;

use super::Lease;
use crate::net::{attr, message, request};

const RTM_NEWADDR: u16 = 20;
const RTM_DELADDR: u16 = 21;
const RTM_NEWROUTE: u16 = 24;
const RTM_DELROUTE: u16 = 25;
const NLM_F_REPLACE: u16 = 0x100;
const NLM_F_CREATE: u16 = 0x400;
/// `RTPROT_DHCP` (linux/rtnetlink.h; not in the libc crate).
const RTPROT_DHCP: u8 = 16;
/// `IFA_CACHEINFO`: preferred and valid lifetimes (seconds).
const IFA_CACHEINFO: u16 = 6;

fn addr_msg(ty: u16, flags: u16, index: u32, lease: &Lease, seq: u32) -> Vec<u8> {
    let mut b = vec![libc::AF_INET as u8, lease.prefix, 0, 0];
    b.extend_from_slice(&index.to_ne_bytes());
    attr(&mut b, libc::IFA_LOCAL, &lease.address.octets());
    attr(&mut b, libc::IFA_ADDRESS, &lease.address.octets());
    if ty == RTM_NEWADDR {
        let broadcast = Ipv4Net::new(lease.address, lease.prefix)
            .map(|n| n.broadcast())
            .unwrap_or(Ipv4Addr::BROADCAST);
        attr(&mut b, libc::IFA_BROADCAST, &broadcast.octets());
        let mut ci = Vec::with_capacity(16);
        ci.extend_from_slice(&lease.lease_secs.to_ne_bytes()); // preferred
        ci.extend_from_slice(&lease.lease_secs.to_ne_bytes()); // valid
        ci.extend_from_slice(&[0; 8]);
        attr(&mut b, IFA_CACHEINFO, &ci);
    }
    message(ty, flags, seq, &b)
}

fn route_msg(ty: u16, flags: u16, index: u32, dst: Ipv4Net, gw: Ipv4Addr, seq: u32) -> Vec<u8> {
    // a gateway of 0.0.0.0 in option 121 means "on link" (RFC 3442)
    let on_link = gw.is_unspecified();
    let mut b = vec![
        libc::AF_INET as u8,
        dst.prefix_len(),
        0,
        0,
        libc::RT_TABLE_MAIN,
        RTPROT_DHCP,
        if on_link {
            libc::RT_SCOPE_LINK
        } else {
            libc::RT_SCOPE_UNIVERSE
        },
        libc::RTN_UNICAST,
    ];
    b.extend_from_slice(&0u32.to_ne_bytes());
    if dst.prefix_len() > 0 {
        attr(&mut b, libc::RTA_DST, &dst.network().octets());
    }
    if !on_link {
        attr(&mut b, libc::RTA_GATEWAY, &gw.octets());
    }
    attr(&mut b, libc::RTA_OIF, &index.to_ne_bytes());
    message(ty, flags, seq, &b)
}

/// Installs (or refreshes) the lease's address and routes.
pub fn apply(index: u32, lease: &Lease) -> Result<()> {
    request(
        &addr_msg(RTM_NEWADDR, NLM_F_CREATE | NLM_F_REPLACE, index, lease, 1),
        "dhcp address",
    )?;
    for (dst, gw) in lease.routes() {
        request(
            &route_msg(
                RTM_NEWROUTE,
                NLM_F_CREATE | NLM_F_REPLACE,
                index,
                dst,
                gw,
                2,
            ),
            "dhcp route",
        )?;
    }
    Ok(())
}

/// Removes the lease's routes and address (what is already gone is fine).
pub fn remove(index: u32, lease: &Lease) -> Result<()> {
    for (dst, gw) in lease.routes() {
        let _ = request(
            &route_msg(RTM_DELROUTE, 0, index, dst, gw, 3),
            "dhcp route removal",
        );
    }
    match request(
        &addr_msg(RTM_DELADDR, 0, index, lease, 4),
        "dhcp address removal",
    ) {
        Err(e) if e.to_string().contains("Cannot assign requested address") => Ok(()),
        other => other,
    }
}
