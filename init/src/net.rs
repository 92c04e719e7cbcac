//! Static network configuration over rtnetlink (no `ip` binary on the
//! image): loopback up; on the uplink interface: link up, the
//! address/prefix from `[network]` in the site config, default route via the
//! gateway. (DHCPv4 is not implemented.)
//!
//! The uplink is chosen by `mac`, `pci_path` or `interface` (alias `name`)
//! from the site config, else the first ethernet interface; every other
//! interface is left down. When it is not there yet (no driver, a late or
//! hot-added NIC), PID 1 does not stop: [`start`] keeps retrying in a
//! thread every [`RETRY`] and [`uplink_ready`] holds the ready line until it
//! is configured. Services bind wildcard addresses, so they serve as soon as
//! the uplink is up.

use std::net::Ipv4Addr;

use anyhow::{bail, Context, Result};
use nix::sys::socket::{
    recv, sendto, socket, AddressFamily, MsgFlags, NetlinkAddr, SockFlag, SockProtocol, SockType,
};
use serde::Deserialize;

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NetworkConfig {
    /// Interface name (`name` is accepted too); empty: not chosen by name.
    #[serde(alias = "name")]
    pub interface: String,
    /// MAC address of the uplink (`52:54:00:12:34:57`, any case); empty: not chosen by MAC.
    pub mac: String,
    /// PCI address of the uplink NIC (`0000:00:03.0`, or the bridge path
    /// `0000:00:1c.0/0000:01:00.0`); empty: not chosen by PCI path.
    pub pci_path: String,
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

/// An ethernet interface backed by a device, as sysfs shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Iface {
    pub name: String,
    pub mac: String,
    /// The canonical sysfs path of its device (`/sys/devices/pci0000:00/0000:00:02.0/virtio0`).
    pub device_path: String,
}

impl Iface {
    /// The PCI address nearest to the interface (`0000:00:02.0`), if it sits on PCI.
    pub fn pci_address(&self) -> Option<&str> {
        self.device_path
            .split('/')
            .rev()
            .find(|c| is_pci_address(c))
    }

    fn describe(&self) -> String {
        match self.pci_address() {
            Some(p) => format!("{} {} pci {p}", self.name, self.mac),
            None => format!("{} {}", self.name, self.mac),
        }
    }
}

fn is_pci_address(s: &str) -> bool {
    let b = s.as_bytes();
    b.len() == 12
        && b[4] == b':'
        && b[7] == b':'
        && b[10] == b'.'
        && s.bytes()
            .enumerate()
            .all(|(i, c)| [4, 7, 10].contains(&i) || c.is_ascii_hexdigit())
}

/// Ethernet interfaces (type 1 with a device) under `class_net`, sorted by name.
pub fn ethernet_interfaces(class_net: &std::path::Path) -> Vec<Iface> {
    let Ok(rd) = std::fs::read_dir(class_net) else {
        return vec![];
    };
    let mut v: Vec<Iface> = rd
        .flatten()
        .filter_map(|e| {
            let base = e.path();
            let ty = std::fs::read_to_string(base.join("type")).ok()?;
            if ty.trim() != "1" {
                return None;
            }
            let dev = std::fs::canonicalize(base.join("device")).ok()?;
            Some(Iface {
                name: e.file_name().to_string_lossy().into_owned(),
                mac: std::fs::read_to_string(base.join("address"))
                    .unwrap_or_default()
                    .trim()
                    .to_ascii_lowercase(),
                device_path: dev.to_string_lossy().into_owned(),
            })
        })
        .collect();
    v.sort_by(|a, b| a.name.cmp(&b.name));
    v
}

impl NetworkConfig {
    /// What picks the uplink, in words (for the console).
    pub fn selector(&self) -> String {
        let mut s = Vec::new();
        if !self.mac.is_empty() {
            s.push(format!("mac {}", self.mac));
        }
        if !self.pci_path.is_empty() {
            s.push(format!("pci_path {}", self.pci_path));
        }
        if !self.interface.is_empty() {
            s.push(format!("name {}", self.interface));
        }
        if s.is_empty() {
            "the first ethernet interface".into()
        } else {
            s.join(" and ")
        }
    }

    /// The uplink among `ifaces`: the one every given selector matches, else the first.
    pub fn choose<'a>(&self, ifaces: &'a [Iface]) -> Option<&'a Iface> {
        let pci = self.pci_path.trim_matches('/').to_ascii_lowercase();
        ifaces.iter().find(|i| {
            (self.mac.is_empty() || i.mac.eq_ignore_ascii_case(&self.mac))
                && (self.interface.is_empty() || i.name == self.interface)
                && (pci.is_empty()
                    || i.device_path
                        .to_ascii_lowercase()
                        .ends_with(&format!("/{pci}"))
                    || i.device_path
                        .to_ascii_lowercase()
                        .contains(&format!("/{pci}/")))
        })
    }
}

/// How often a missing uplink is looked for again.
pub const RETRY: std::time::Duration = std::time::Duration::from_secs(2);

static UPLINK_READY: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Is the uplink configured (or is there nothing to configure)?
pub fn uplink_ready() -> bool {
    UPLINK_READY.load(std::sync::atomic::Ordering::SeqCst)
}

/// Brings up lo and tries the uplink once; when it is not there, keeps
/// trying in a thread every [`RETRY`] (saying so on the console once).
/// Errors only for a config that can never work (bad address).
pub fn start(cfg: &NetworkConfig) -> Result<()> {
    request(&link_up_msg(index_of("lo")?, 1), "lo up")?;
    parse_address(cfg)?;
    let ifaces = ethernet_interfaces(std::path::Path::new("/sys/class/net"));
    crate::console::say(&format!(
        "network: ethernet interfaces: {}",
        if ifaces.is_empty() {
            "none".to_string()
        } else {
            ifaces
                .iter()
                .map(Iface::describe)
                .collect::<Vec<_>>()
                .join(", ")
        }
    ));
    if let Some(done) = try_uplink(cfg)? {
        crate::console::say(&format!("network: {done}"));
        UPLINK_READY.store(true, std::sync::atomic::Ordering::SeqCst);
        return Ok(());
    }
    crate::console::say(&format!(
        "network: no uplink yet ({}) for [network] address {}; retrying every {} s (a late or hot-added NIC works); services start, the ready line waits",
        cfg.selector(),
        cfg.address,
        RETRY.as_secs()
    ));
    let cfg = cfg.clone();
    std::thread::spawn(move || loop {
        std::thread::sleep(RETRY);
        match try_uplink(&cfg) {
            Ok(Some(done)) => {
                crate::console::say(&format!("network: {done}"));
                UPLINK_READY.store(true, std::sync::atomic::Ordering::SeqCst);
                return;
            }
            Ok(None) => {}
            Err(e) => crate::console::say(&format!(
                "network: configuring the uplink failed: {e:#}; retrying in {} s",
                RETRY.as_secs()
            )),
        }
    });
    Ok(())
}

fn parse_address(cfg: &NetworkConfig) -> Result<Option<(Ipv4Addr, u8, Option<Ipv4Addr>)>> {
    if cfg.address.is_empty() {
        return Ok(None);
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
    let gw = if cfg.gateway.is_empty() {
        None
    } else {
        Some(cfg.gateway.parse().context("[network] gateway")?)
    };
    Ok(Some((addr, prefix, gw)))
}

/// Configures the uplink if it is there: `Some(summary)`; `None` when not (yet).
fn try_uplink(cfg: &NetworkConfig) -> Result<Option<String>> {
    let ifaces = ethernet_interfaces(std::path::Path::new("/sys/class/net"));
    let Some(up) = cfg.choose(&ifaces) else {
        if cfg.address.is_empty()
            && cfg.mac.is_empty()
            && cfg.pci_path.is_empty()
            && cfg.interface.is_empty()
        {
            return Ok(Some(
                "no ethernet interface and no [network] address: loopback only".into(),
            ));
        }
        return Ok(None);
    };
    let others: Vec<&str> = ifaces
        .iter()
        .filter(|i| i.name != up.name)
        .map(|i| i.name.as_str())
        .collect();
    let idx = index_of(&up.name)?;
    request(&link_up_msg(idx, 2), "link up")?;
    let mut s = up.name.clone();
    match parse_address(cfg)? {
        None => s.push_str(" up, no address configured ([network] address empty)"),
        Some((addr, prefix, gw)) => {
            request(&addr_msg(idx, addr, prefix, 3), "add address")?;
            s.push_str(&format!(" {addr}/{prefix}"));
            if let Some(gw) = gw {
                request(&default_route_msg(idx, gw, 4), "default route")?;
                s.push_str(&format!(" via {gw}"));
            }
        }
    }
    s.push_str(&format!(
        " (uplink {}, chosen by {})",
        up.describe(),
        cfg.selector()
    ));
    if !others.is_empty() {
        s.push_str(&format!("; left down: {}", others.join(", ")));
    }
    Ok(Some(s))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn iface(name: &str, mac: &str, dev: &str) -> Iface {
        Iface {
            name: name.into(),
            mac: mac.into(),
            device_path: dev.into(),
        }
    }

    fn two_nics() -> Vec<Iface> {
        vec![
            iface(
                "eth0",
                "52:54:00:00:00:01",
                "/sys/devices/pci0000:00/0000:00:02.0/virtio0",
            ),
            iface(
                "eth1",
                "52:54:00:00:00:02",
                "/sys/devices/pci0000:00/0000:00:1c.0/0000:01:00.0",
            ),
        ]
    }

    #[test]
    fn uplink_by_mac_pci_path_or_name_else_the_first() {
        let nics = two_nics();
        let pick = |toml: &str| {
            let c: NetworkConfig = toml::from_str(toml).unwrap();
            c.choose(&nics).map(|i| i.name.clone())
        };
        assert_eq!(pick("").as_deref(), Some("eth0"));
        assert_eq!(pick("mac = \"52:54:00:00:00:02\"").as_deref(), Some("eth1"));
        assert_eq!(pick("mac = \"52:54:00:00:00:0A\"").as_deref(), None);
        assert_eq!(pick("pci_path = \"0000:01:00.0\"").as_deref(), Some("eth1"));
        assert_eq!(
            pick("pci_path = \"0000:00:1c.0/0000:01:00.0\"").as_deref(),
            Some("eth1")
        );
        assert_eq!(pick("pci_path = \"0000:00:02.0\"").as_deref(), Some("eth0"));
        assert_eq!(pick("name = \"eth1\"").as_deref(), Some("eth1"));
        assert_eq!(pick("interface = \"eth1\"").as_deref(), Some("eth1"));
        // Every given selector must match.
        assert_eq!(
            pick("name = \"eth0\"\nmac = \"52:54:00:00:00:02\"").as_deref(),
            None
        );
        assert_eq!(nics[0].pci_address(), Some("0000:00:02.0"));
        assert_eq!(nics[1].pci_address(), Some("0000:01:00.0"));
    }

    #[test]
    fn ethernet_interfaces_from_sysfs() {
        let t = tempfile::tempdir().unwrap();
        let dev = t.path().join("devices/pci0000:00/0000:00:03.0");
        std::fs::create_dir_all(&dev).unwrap();
        for (n, ty) in [("eth0", "1"), ("gw0", "65534")] {
            let d = t.path().join("class/net").join(n);
            std::fs::create_dir_all(&d).unwrap();
            std::fs::write(d.join("type"), format!("{ty}\n")).unwrap();
            std::fs::write(d.join("address"), "52:54:00:AB:CD:EF\n").unwrap();
            std::os::unix::fs::symlink(&dev, d.join("device")).unwrap();
        }
        let v = ethernet_interfaces(&t.path().join("class/net"));
        assert_eq!(v.len(), 1, "{v:?}");
        assert_eq!(v[0].name, "eth0");
        assert_eq!(v[0].mac, "52:54:00:ab:cd:ef");
        assert_eq!(v[0].pci_address(), Some("0000:00:03.0"));
    }

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
