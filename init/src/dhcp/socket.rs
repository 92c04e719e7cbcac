//! The client's sockets. Before an address exists, DHCP runs over an
//! AF_PACKET socket (SOCK_DGRAM, ETH_P_IP: the kernel hands over IPv4 packets
//! only, without their link header) with a classic BPF filter attached that
//! passes only unfragmented IPv4 UDP to port 68, so IPv6, ARP and every other
//! frame on the link is dropped in the kernel and never reaches the parser
//! (mozim#32 was aborted by stray IPv6 frames). We build the IPv4 and UDP
//! headers of our broadcasts ourselves. Renewals go by unicast through an
//! ordinary UDP socket on port 68, which also keeps the kernel from
//! answering the server's unicast replies with ICMP port unreachable.
//!
//! This module holds the unsafe code of the client: the socket, bind, the
//! BPF attach and the send, each with its SAFETY note.

use std::io;
use std::net::{Ipv4Addr, SocketAddrV4, UdpSocket};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

const CLIENT_PORT: u16 = 68;
const SERVER_PORT: u16 = 67;

fn cvt(r: libc::c_int) -> io::Result<libc::c_int> {
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

/// `BPF_STMT`/`BPF_JUMP` as the kernel's filter.h defines them.
const fn stmt(code: u16, k: u32) -> libc::sock_filter {
    libc::sock_filter {
        code,
        jt: 0,
        jf: 0,
        k,
    }
}
const fn jump(code: u16, k: u32, jt: u8, jf: u8) -> libc::sock_filter {
    libc::sock_filter { code, jt, jf, k }
}

/// The filter, over the IPv4 header (SOCK_DGRAM: no link header):
/// version 4, protocol UDP, not a fragment, destination port 68. Jump
/// offsets count from the next instruction; every failed test lands on the
/// last instruction (drop).
pub fn filter() -> Vec<libc::sock_filter> {
    use libc::{
        BPF_ABS, BPF_B, BPF_H, BPF_IND, BPF_JEQ, BPF_JMP, BPF_JSET, BPF_K, BPF_LD, BPF_LDX,
        BPF_MSH, BPF_RET,
    };
    let (ld, jmp, ret) = (BPF_LD as u16, BPF_JMP as u16, BPF_RET as u16);
    vec![
        // A = version nibble; drop unless 4
        stmt(ld | BPF_B as u16 | BPF_ABS as u16, 0),
        stmt(
            libc::BPF_ALU as u16 | libc::BPF_RSH as u16 | BPF_K as u16,
            4,
        ),
        jump(jmp | BPF_JEQ as u16 | BPF_K as u16, 4, 0, 8),
        // protocol UDP
        stmt(ld | BPF_B as u16 | BPF_ABS as u16, 9),
        jump(
            jmp | BPF_JEQ as u16 | BPF_K as u16,
            libc::IPPROTO_UDP as u32,
            0,
            6,
        ),
        // no fragment offset
        stmt(ld | BPF_H as u16 | BPF_ABS as u16, 6),
        jump(jmp | BPF_JSET as u16 | BPF_K as u16, 0x1fff, 4, 0),
        // X = header length; A = destination port
        stmt(BPF_LDX as u16 | BPF_B as u16 | BPF_MSH as u16, 0),
        stmt(ld | BPF_H as u16 | BPF_IND as u16, 2),
        jump(
            jmp | BPF_JEQ as u16 | BPF_K as u16,
            u32::from(CLIENT_PORT),
            0,
            1,
        ),
        stmt(ret | BPF_K as u16, 0x0004_0000),
        stmt(ret | BPF_K as u16, 0),
    ]
}

/// RFC 1071 checksum.
fn checksum(parts: &[&[u8]]) -> u16 {
    let mut sum: u32 = 0;
    let mut odd: Option<u8> = None;
    for p in parts {
        for &b in *p {
            match odd.take() {
                Some(hi) => sum += u32::from(u16::from_be_bytes([hi, b])),
                None => odd = Some(b),
            }
        }
    }
    if let Some(hi) = odd {
        sum += u32::from(u16::from_be_bytes([hi, 0]));
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// 0.0.0.0:68 → 255.255.255.255:67 around a DHCP payload.
pub fn frame_broadcast(payload: &[u8]) -> Vec<u8> {
    let (src, dst) = (Ipv4Addr::UNSPECIFIED, Ipv4Addr::BROADCAST);
    let udp_len = (8 + payload.len()) as u16;
    let total = 20 + udp_len;
    let mut ip = vec![0x45, 0x10];
    ip.extend_from_slice(&total.to_be_bytes());
    ip.extend_from_slice(&[0, 0, 0, 0, 64, libc::IPPROTO_UDP as u8, 0, 0]);
    ip.extend_from_slice(&src.octets());
    ip.extend_from_slice(&dst.octets());
    let c = checksum(&[&ip]);
    ip[10..12].copy_from_slice(&c.to_be_bytes());
    let mut udp = Vec::with_capacity(8);
    udp.extend_from_slice(&CLIENT_PORT.to_be_bytes());
    udp.extend_from_slice(&SERVER_PORT.to_be_bytes());
    udp.extend_from_slice(&udp_len.to_be_bytes());
    udp.extend_from_slice(&[0, 0]);
    let mut pseudo = Vec::with_capacity(12);
    pseudo.extend_from_slice(&src.octets());
    pseudo.extend_from_slice(&dst.octets());
    pseudo.extend_from_slice(&[0, libc::IPPROTO_UDP as u8]);
    pseudo.extend_from_slice(&udp_len.to_be_bytes());
    let mut c = checksum(&[&pseudo, &udp, payload]);
    if c == 0 {
        c = 0xffff;
    }
    udp[6..8].copy_from_slice(&c.to_be_bytes());
    let mut f = ip;
    f.extend_from_slice(&udp);
    f.extend_from_slice(payload);
    f
}

/// The DHCP payload of a received IPv4/UDP packet (the filter already
/// checked version, protocol, fragment and port; this checks the lengths).
pub fn payload(packet: &[u8]) -> Option<&[u8]> {
    let ihl = usize::from(*packet.first()? & 0x0f) * 4;
    let udp = packet.get(ihl..)?;
    let len = usize::from(u16::from_be_bytes([*udp.get(4)?, *udp.get(5)?]));
    udp.get(8..len.max(8))
}

pub struct PacketSocket {
    fd: OwnedFd,
    ifindex: i32,
}

impl PacketSocket {
    pub fn open(ifindex: u32) -> io::Result<Self> {
        let proto = (libc::ETH_P_IP as u16).to_be();
        // SAFETY: socket(2) with constant arguments; the result is checked and owned at once.
        let raw = cvt(unsafe {
            libc::socket(
                libc::AF_PACKET,
                libc::SOCK_DGRAM | libc::SOCK_CLOEXEC,
                i32::from(proto),
            )
        })?;
        // SAFETY: `raw` is a fresh fd that nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        let prog = filter();
        let fprog = libc::sock_fprog {
            len: prog.len() as u16,
            filter: prog.as_ptr() as *mut _,
        };
        // SAFETY: `fprog` points at `prog`, which lives until the call returns; the
        // kernel copies the program; optlen is the size of `sock_fprog`.
        cvt(unsafe {
            libc::setsockopt(
                fd.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_ATTACH_FILTER,
                std::ptr::addr_of!(fprog).cast(),
                std::mem::size_of::<libc::sock_fprog>() as libc::socklen_t,
            )
        })?;
        let ifindex = ifindex as i32;
        let sll = sockaddr_ll(ifindex, proto, [0; 8], 0);
        // SAFETY: `sll` is a valid sockaddr_ll and the length is its size.
        cvt(unsafe {
            libc::bind(
                fd.as_raw_fd(),
                std::ptr::addr_of!(sll).cast(),
                std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t,
            )
        })?;
        Ok(Self { fd, ifindex })
    }

    pub fn raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }

    pub fn fd(&self) -> std::os::fd::BorrowedFd<'_> {
        std::os::fd::AsFd::as_fd(&self.fd)
    }

    /// Sends a DHCP payload to the link's broadcast address.
    pub fn broadcast(&self, dhcp: &[u8]) -> io::Result<()> {
        let frame = frame_broadcast(dhcp);
        let mut bcast = [0u8; 8];
        bcast[..6].copy_from_slice(&[0xff; 6]);
        let sll = sockaddr_ll(self.ifindex, (libc::ETH_P_IP as u16).to_be(), bcast, 6);
        // SAFETY: `frame` and `sll` are valid for the call; lengths are theirs.
        cvt(unsafe {
            libc::sendto(
                self.fd.as_raw_fd(),
                frame.as_ptr().cast(),
                frame.len(),
                0,
                std::ptr::addr_of!(sll).cast(),
                std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t,
            ) as libc::c_int
        })?;
        Ok(())
    }

    /// Reads one packet (non-blocking); `None` when none is queued.
    pub fn recv<'a>(&self, buf: &'a mut [u8]) -> io::Result<Option<&'a [u8]>> {
        // SAFETY: `buf` is writable for its whole length.
        let n = unsafe {
            libc::recv(
                self.fd.as_raw_fd(),
                buf.as_mut_ptr().cast(),
                buf.len(),
                libc::MSG_DONTWAIT,
            )
        };
        if n < 0 {
            let e = io::Error::last_os_error();
            return match e.kind() {
                io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted => Ok(None),
                _ => Err(e),
            };
        }
        Ok(Some(&buf[..n as usize]))
    }
}

fn sockaddr_ll(ifindex: i32, proto_be: u16, addr: [u8; 8], halen: u8) -> libc::sockaddr_ll {
    libc::sockaddr_ll {
        sll_family: libc::AF_PACKET as u16,
        sll_protocol: proto_be,
        sll_ifindex: ifindex,
        sll_hatype: 0,
        sll_pkttype: 0,
        sll_halen: halen,
        sll_addr: addr,
    }
}

/// The UDP socket for unicast renewals (bound to port 68 on the interface).
pub fn unicast_socket(ifname: &str) -> io::Result<UdpSocket> {
    let s = UdpSocket::bind(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, CLIENT_PORT))?;
    nix::sys::socket::setsockopt(
        &s,
        nix::sys::socket::sockopt::BindToDevice,
        &std::ffi::OsString::from(ifname),
    )
    .map_err(io::Error::from)?;
    s.set_nonblocking(true)?;
    Ok(s)
}

pub fn send_unicast(s: &UdpSocket, server: Ipv4Addr, dhcp: &[u8]) -> io::Result<()> {
    s.send_to(dhcp, SocketAddrV4::new(server, SERVER_PORT))
        .map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn broadcast_frame_has_valid_checksums_and_round_trips() {
        let f = frame_broadcast(b"hello dhcp");
        assert_eq!(checksum(&[&f[..20]]), 0, "IPv4 header checksum");
        assert_eq!(&f[16..20], &[255; 4]);
        assert_eq!(payload(&f), Some(&b"hello dhcp"[..]));
        assert_eq!(payload(&f[..25]), None);
        assert_eq!(filter().len(), 12);
    }
}
