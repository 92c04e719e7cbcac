//! Static network configuration over rtnetlink (no `ip` binary on the
//! image): loopback up; on the first ethernet interface: link up, the
//! address/prefix from `[network]` in the site config, default route via the
//! gateway. (DHCPv4 is not implemented.)

use std::net::Ipv4Addr;

use anyhow::{bail, Context, Result};
use nix::sys::socket::{
    recv, sendto, socket, AddressFamily, MsgFlags, NetlinkAddr, SockFlag, SockProtocol, SockType,
};
use serde::Deserialize;

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NetworkConfig {
    /// Interface name; empty: the first ethernet device (sorted by name).
    pub interface: String,
    /// "a.b.c.d/prefix"; empty: leave the interface unconfigured (only up).
    pub address: String,
    pub gateway: String,
}

const RTM_NEWLINK: u16 = 16;
const RTM_NEWADDR: u16 = 20;
const RTM_NEWROUTE: u16 = 24;
const NLM_F_REQUEST: u16 = 1;
const NLM_F_ACK: u16 = 4;
const NLM_F_EXCL: u16 = 0x200;
const NLM_F_CREATE: u16 = 0x400;
const NLMSG_ERROR: u16 = 2;

pub(crate) fn attr(buf: &mut Vec<u8>, ty: u16, data: &[u8]) {
    let len = 4 + data.len();
    buf.extend_from_slice(&(len as u16).to_ne_bytes());
    buf.extend_from_slice(&ty.to_ne_bytes());
    buf.extend_from_slice(data);
    while !buf.len().is_multiple_of(4) {
        buf.push(0);
    }
}

/// Wraps `body` in an nlmsghdr.
pub fn message(ty: u16, flags: u16, seq: u32, body: &[u8]) -> Vec<u8> {
    let mut m = Vec::with_capacity(16 + body.len());
    m.extend_from_slice(&((16 + body.len()) as u32).to_ne_bytes());
    m.extend_from_slice(&ty.to_ne_bytes());
    m.extend_from_slice(&(flags | NLM_F_REQUEST | NLM_F_ACK).to_ne_bytes());
    m.extend_from_slice(&seq.to_ne_bytes());
    m.extend_from_slice(&0u32.to_ne_bytes());
    m.extend_from_slice(body);
    m
}

pub fn link_up_msg(index: u32, seq: u32) -> Vec<u8> {
    let mut b = vec![libc::AF_UNSPEC as u8, 0];
    b.extend_from_slice(&0u16.to_ne_bytes()); // type
    b.extend_from_slice(&(index as i32).to_ne_bytes());
    b.extend_from_slice(&(libc::IFF_UP as u32).to_ne_bytes()); // flags
    b.extend_from_slice(&(libc::IFF_UP as u32).to_ne_bytes()); // change
    message(RTM_NEWLINK, 0, seq, &b)
}

pub fn addr_msg(index: u32, addr: Ipv4Addr, prefix: u8, seq: u32) -> Vec<u8> {
    let mut b = vec![libc::AF_INET as u8, prefix, 0, 0];
    b.extend_from_slice(&index.to_ne_bytes());
    attr(&mut b, libc::IFA_LOCAL, &addr.octets());
    attr(&mut b, libc::IFA_ADDRESS, &addr.octets());
    message(RTM_NEWADDR, NLM_F_CREATE | NLM_F_EXCL, seq, &b)
}

pub fn default_route_msg(index: u32, gw: Ipv4Addr, seq: u32) -> Vec<u8> {
    // struct rtmsg: family, dst_len, src_len, tos, table, protocol, scope, type, flags
    let mut b = vec![
        libc::AF_INET as u8,
        0,
        0,
        0,
        libc::RT_TABLE_MAIN,
        libc::RTPROT_BOOT,
        libc::RT_SCOPE_UNIVERSE,
        libc::RTN_UNICAST,
    ];
    b.extend_from_slice(&0u32.to_ne_bytes());
    attr(&mut b, libc::RTA_GATEWAY, &gw.octets());
    attr(&mut b, libc::RTA_OIF, &index.to_ne_bytes());
    message(RTM_NEWROUTE, NLM_F_CREATE | NLM_F_EXCL, seq, &b)
}

pub(crate) fn request(msg: &[u8], what: &str) -> Result<()> {
    let fd = socket(
        AddressFamily::Netlink,
        SockType::Raw,
        SockFlag::SOCK_CLOEXEC,
        SockProtocol::NetlinkRoute,
    )
    .context("netlink socket")?;
    sendto(
        std::os::fd::AsRawFd::as_raw_fd(&fd),
        msg,
        &NetlinkAddr::new(0, 0),
        MsgFlags::empty(),
    )
    .with_context(|| format!("netlink send ({what})"))?;
    let mut buf = [0u8; 4096];
    let n = recv(
        std::os::fd::AsRawFd::as_raw_fd(&fd),
        &mut buf,
        MsgFlags::empty(),
    )
    .with_context(|| format!("netlink recv ({what})"))?;
    if n < 20 || u16::from_ne_bytes([buf[4], buf[5]]) != NLMSG_ERROR {
        bail!("netlink {what}: unexpected reply");
    }
    let err = i32::from_ne_bytes(buf[16..20].try_into().expect("4 bytes"));
    if err != 0 {
        bail!(
            "netlink {what}: {}",
            std::io::Error::from_raw_os_error(-err)
        );
    }
    Ok(())
}

fn index_of(name: &str) -> Result<u32> {
    nix::net::if_::if_nametoindex(name).with_context(|| format!("no interface {name}"))
}

/// The first ethernet interface backed by a device (type 1 with /device).
pub fn first_ethernet() -> Option<String> {
    let mut names: Vec<String> = std::fs::read_dir("/sys/class/net")
        .ok()?
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names.into_iter().find(|n| {
        let base = format!("/sys/class/net/{n}");
        std::fs::read_to_string(format!("{base}/type"))
            .map(|t| t.trim() == "1")
            .unwrap_or(false)
            && std::path::Path::new(&format!("{base}/device")).exists()
    })
}

/// Brings up lo and the configured interface; returns a console summary.
pub fn configure(cfg: &NetworkConfig) -> Result<String> {
    request(&link_up_msg(index_of("lo")?, 1), "lo up")?;
    let ifname = if cfg.interface.is_empty() {
        match first_ethernet() {
            Some(n) => n,
            None if cfg.address.is_empty() => {
                return Ok("no ethernet interface and no [network] address: loopback only".into())
            }
            None => bail!(
                "[network] address {} is configured but there is no ethernet interface",
                cfg.address
            ),
        }
    } else {
        cfg.interface.clone()
    };
    let idx = index_of(&ifname)?;
    request(&link_up_msg(idx, 2), "link up")?;
    if cfg.address.is_empty() {
        return Ok(format!(
            "{ifname} up, no address configured ([network] address empty)"
        ));
    }
    let (a, p) = cfg
        .address
        .split_once('/')
        .context("[network] address must be a.b.c.d/prefix")?;
    let addr: Ipv4Addr = a.parse().context("[network] address")?;
    let prefix: u8 = p
        .parse()
        .ok()
        .filter(|p| *p <= 32)
        .context("[network] prefix")?;
    request(&addr_msg(idx, addr, prefix, 3), "add address")?;
    let mut s = format!("{ifname} {addr}/{prefix}");
    if !cfg.gateway.is_empty() {
        let gw: Ipv4Addr = cfg.gateway.parse().context("[network] gateway")?;
        request(&default_route_msg(idx, gw, 4), "default route")?;
        s.push_str(&format!(" via {gw}"));
    }
    Ok(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn message_layout() {
        let m = addr_msg(2, Ipv4Addr::new(10, 0, 0, 2), 24, 7);
        assert_eq!(
            u32::from_ne_bytes(m[0..4].try_into().unwrap()) as usize,
            m.len()
        );
        assert_eq!(u16::from_ne_bytes([m[4], m[5]]), RTM_NEWADDR);
        assert_eq!(m[16], libc::AF_INET as u8);
        assert_eq!(m[17], 24);
        assert_eq!(&m[28..32], &[10, 0, 0, 2]);
        assert_eq!(m.len() % 4, 0);
    }

    /// Real rtnetlink in a fresh network namespace (needs root): configure a
    /// dummy-free veth-less namespace's loopback and check the kernel accepts our messages.
    #[test]
    fn real_netlink_in_netns() {
        assert!(
            nix::unistd::Uid::effective().is_root(),
            "real_netlink_in_netns needs root: it creates a network namespace (run the tests as root, as CI does)"
        );
        let h = std::thread::spawn(|| {
            nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
            request(&link_up_msg(index_of("lo").unwrap(), 1), "lo up").unwrap();
            let lo = index_of("lo").unwrap();
            request(&addr_msg(lo, Ipv4Addr::new(10, 9, 8, 7), 8, 2), "addr").unwrap();
            let e = request(
                &addr_msg(lo, Ipv4Addr::new(10, 9, 8, 7), 8, 3),
                "addr again",
            )
            .unwrap_err();
            assert!(format!("{e:#}").contains("exists"), "{e:#}");
            std::fs::read_to_string("/proc/thread-self/net/fib_trie").unwrap()
        });
        let trie = h.join().unwrap();
        assert!(trie.contains("10.9.8.7"), "{trie}");
    }
}
