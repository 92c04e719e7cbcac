//! The TUN device `gw0`: opened through /dev/net/tun (TUNSETIFF) and given its
//! address, netmask, MTU and the UP flag through the classic SIOCSIF* ioctls
//! (no `ip` binary on the image). Every `unsafe` block wraps one syscall.

use std::fs::{File, OpenOptions};
use std::io;
use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

const IFF_TUN: libc::c_short = 0x0001;
const IFF_NO_PI: libc::c_short = 0x1000;
const TUNSETIFF: libc::c_ulong = 0x4004_54ca;

#[repr(C)]
#[derive(Clone, Copy)]
struct IfReqFlags {
    name: [u8; libc::IFNAMSIZ],
    flags: libc::c_short,
    _pad: [u8; 22],
}

#[repr(C)]
#[derive(Clone, Copy)]
struct IfReqAddr {
    name: [u8; libc::IFNAMSIZ],
    addr: libc::sockaddr_in,
    _pad: [u8; 8],
}

#[repr(C)]
#[derive(Clone, Copy)]
struct IfReqInt {
    name: [u8; libc::IFNAMSIZ],
    value: libc::c_int,
    _pad: [u8; 20],
}

fn ifname(name: &str) -> io::Result<[u8; libc::IFNAMSIZ]> {
    let b = name.as_bytes();
    if b.is_empty() || b.len() >= libc::IFNAMSIZ || b.contains(&0) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("bad interface name {name:?}"),
        ));
    }
    let mut out = [0u8; libc::IFNAMSIZ];
    out[..b.len()].copy_from_slice(b);
    Ok(out)
}

fn sockaddr(ip: Ipv4Addr) -> libc::sockaddr_in {
    libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: 0,
        sin_addr: libc::in_addr {
            s_addr: u32::from_ne_bytes(ip.octets()),
        },
        sin_zero: [0; 8],
    }
}

/// Opens (creating if needed) the TUN interface `name` without packet info.
pub fn open(name: &str) -> io::Result<File> {
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/net/tun")?;
    let mut req = IfReqFlags {
        name: ifname(name)?,
        flags: IFF_TUN | IFF_NO_PI,
        _pad: [0; 22],
    };
    // SAFETY: TUNSETIFF reads and writes one `struct ifreq`; `req` is a live,
    // correctly sized (40 bytes) repr(C) value and the fd is open.
    let rc = unsafe {
        libc::ioctl(
            file.as_raw_fd(),
            TUNSETIFF as _,
            &mut req as *mut IfReqFlags,
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(file)
}

fn ctl_socket() -> io::Result<OwnedFd> {
    // SAFETY: plain socket(2) call; the returned fd is checked and then owned.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` is a fresh descriptor nobody else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn ioctl_ptr<T>(fd: &OwnedFd, req: libc::c_ulong, arg: &mut T) -> io::Result<()> {
    // SAFETY: every caller passes an ifreq-shaped repr(C) struct of 40 bytes
    // matching what the SIOC* request reads or writes; `arg` outlives the call.
    let rc = unsafe { libc::ioctl(fd.as_raw_fd(), req as _, arg as *mut T) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Sets the interface address, prefix, MTU and brings it up.
pub fn configure(name: &str, addr: Ipv4Addr, prefix: u8, mtu: u32) -> io::Result<()> {
    let sock = ctl_socket()?;
    let n = ifname(name)?;
    let mut a = IfReqAddr {
        name: n,
        addr: sockaddr(addr),
        _pad: [0; 8],
    };
    ioctl_ptr(&sock, libc::SIOCSIFADDR, &mut a)?;
    let mask = if prefix == 0 {
        0
    } else {
        u32::MAX << (32 - prefix as u32)
    };
    let mut m = IfReqAddr {
        name: n,
        addr: sockaddr(Ipv4Addr::from(mask)),
        _pad: [0; 8],
    };
    ioctl_ptr(&sock, libc::SIOCSIFNETMASK, &mut m)?;
    let mut t = IfReqInt {
        name: n,
        value: mtu as libc::c_int,
        _pad: [0; 20],
    };
    ioctl_ptr(&sock, libc::SIOCSIFMTU, &mut t)?;
    let mut f = IfReqFlags {
        name: n,
        flags: 0,
        _pad: [0; 22],
    };
    ioctl_ptr(&sock, libc::SIOCGIFFLAGS, &mut f)?;
    f.flags |= (libc::IFF_UP | libc::IFF_RUNNING) as libc::c_short;
    ioctl_ptr(&sock, libc::SIOCSIFFLAGS, &mut f)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn ifreq_layouts_are_40_bytes() {
        assert_eq!(std::mem::size_of::<super::IfReqFlags>(), 40);
        assert_eq!(std::mem::size_of::<super::IfReqAddr>(), 40);
        assert_eq!(std::mem::size_of::<super::IfReqInt>(), 40);
        super::ifname("this-name-is-too-long").unwrap_err();
    }
}
