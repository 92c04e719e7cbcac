//! Device-mapper through its ioctls on /dev/mapper/control (no libdevmapper,
//! no dmsetup): create a device, load one read-only target, resume it.
//! Layout of `struct dm_ioctl` / `struct dm_target_spec` from
//! include/uapi/linux/dm-ioctl.h (interface version 4).

use std::fs::File;
use std::os::fd::AsRawFd;

use anyhow::{bail, Context, Result};

const DM_IOCTL_SIZE: usize = 312; // sizeof(struct dm_ioctl)
const SPEC_SIZE: usize = 40; // sizeof(struct dm_target_spec)
const DM_READONLY_FLAG: u32 = 1 << 0;

const fn iowr(nr: u32) -> libc::c_ulong {
    // _IOWR(0xfd, nr, struct dm_ioctl)
    ((3u32 << 30) | ((DM_IOCTL_SIZE as u32) << 16) | (0xfd << 8) | nr) as libc::c_ulong
}
const DM_DEV_CREATE: libc::c_ulong = iowr(3);
const DM_DEV_REMOVE: libc::c_ulong = iowr(4);
const DM_DEV_SUSPEND: libc::c_ulong = iowr(6);
const DM_TABLE_LOAD: libc::c_ulong = iowr(9);

/// One target line: `<start> <length> <type> <params>` (sectors of 512 bytes).
pub struct Target<'a> {
    pub start: u64,
    pub length: u64,
    pub kind: &'a str,
    pub params: &'a str,
}

/// Builds the ioctl buffer: the header, then (for table loads) target specs.
fn header(name: &str, flags: u32, targets: &[Target]) -> Result<Vec<u8>> {
    if name.is_empty() || name.len() >= 128 {
        bail!("dm device name {name:?} must be 1..127 bytes");
    }
    let mut body = Vec::new();
    for t in targets {
        if t.kind.len() >= 16 {
            bail!("dm target type {:?} too long", t.kind);
        }
        let mut params = t.params.as_bytes().to_vec();
        params.push(0);
        while !(SPEC_SIZE + params.len()).is_multiple_of(8) {
            params.push(0);
        }
        let next = (SPEC_SIZE + params.len()) as u32;
        body.extend_from_slice(&t.start.to_ne_bytes());
        body.extend_from_slice(&t.length.to_ne_bytes());
        body.extend_from_slice(&0i32.to_ne_bytes()); // status
        body.extend_from_slice(&next.to_ne_bytes());
        let mut ty = [0u8; 16];
        ty[..t.kind.len()].copy_from_slice(t.kind.as_bytes());
        body.extend_from_slice(&ty);
        body.extend_from_slice(&params);
    }
    // Room for the kernel to write back status strings.
    let total = DM_IOCTL_SIZE + body.len() + 4096;
    let mut b = vec![0u8; total];
    let w32 = |b: &mut [u8], off: usize, v: u32| b[off..off + 4].copy_from_slice(&v.to_ne_bytes());
    w32(&mut b, 0, 4); // version 4.0.0
    w32(&mut b, 12, total as u32); // data_size
    w32(&mut b, 16, DM_IOCTL_SIZE as u32); // data_start
    w32(&mut b, 20, targets.len() as u32); // target_count
    w32(&mut b, 28, flags);
    b[48..48 + name.len()].copy_from_slice(name.as_bytes());
    b[DM_IOCTL_SIZE..DM_IOCTL_SIZE + body.len()].copy_from_slice(&body);
    Ok(b)
}

fn ioctl(ctl: &File, req: libc::c_ulong, buf: &mut [u8], what: &str) -> Result<()> {
    // SAFETY: `buf` is a live, writable buffer of `data_size` bytes that starts
    // with a struct dm_ioctl whose data_size field equals buf.len(); the kernel
    // reads and writes at most data_size bytes of it. The fd is an open
    // /dev/mapper/control.
    let r = unsafe { libc::ioctl(ctl.as_raw_fd(), req as _, buf.as_mut_ptr()) };
    if r < 0 {
        return Err(std::io::Error::last_os_error())
            .with_context(|| format!("device-mapper {what}"));
    }
    Ok(())
}

fn decode_dev(dev: u64) -> (u32, u32) {
    // The kernel's huge_encode_dev: new_encode_dev layout.
    let major = ((dev & 0xfff00) >> 8) as u32;
    let minor = ((dev & 0xff) | ((dev >> 12) & 0xfff00)) as u32;
    (major, minor)
}

/// Creates read-only device `name` with `targets` and resumes it. Returns
/// (major, minor) of the new block device. On failure the half-made device
/// is removed.
pub fn create_readonly(name: &str, targets: &[Target]) -> Result<(u32, u32)> {
    let ctl = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/mapper/control")
        .context("opening /dev/mapper/control (kernel without CONFIG_BLK_DEV_DM?)")?;
    let mut b = header(name, 0, &[])?;
    ioctl(&ctl, DM_DEV_CREATE, &mut b, "DM_DEV_CREATE")?;
    let dev = u64::from_ne_bytes(b[40..48].try_into().expect("8 bytes"));
    let res = (|| {
        let mut t = header(name, DM_READONLY_FLAG, targets)?;
        ioctl(&ctl, DM_TABLE_LOAD, &mut t, "DM_TABLE_LOAD")?;
        // DM_DEV_SUSPEND without DM_SUSPEND_FLAG = resume: activates the table.
        let mut r = header(name, 0, &[])?;
        ioctl(&ctl, DM_DEV_SUSPEND, &mut r, "DM_DEV_SUSPEND (resume)")
    })();
    if let Err(e) = res {
        if let Ok(mut rm) = header(name, 0, &[]) {
            let _ = ioctl(&ctl, DM_DEV_REMOVE, &mut rm, "DM_DEV_REMOVE");
        }
        return Err(e);
    }
    Ok(decode_dev(dev))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ioctl_numbers_match_linux() {
        // Values from strace of dmsetup on x86_64.
        assert_eq!(DM_DEV_CREATE, 0xc138fd03);
        assert_eq!(DM_DEV_SUSPEND, 0xc138fd06);
        assert_eq!(DM_TABLE_LOAD, 0xc138fd09);
    }

    #[test]
    fn table_buffer_layout() {
        let t = Target {
            start: 0,
            length: 8,
            kind: "verity",
            params: "1 2 3",
        };
        let b = header("gwos-root", DM_READONLY_FLAG, &[t]).unwrap();
        assert_eq!(
            u32::from_ne_bytes(b[12..16].try_into().unwrap()) as usize,
            b.len()
        );
        assert_eq!(u32::from_ne_bytes(b[20..24].try_into().unwrap()), 1);
        assert_eq!(&b[48..57], b"gwos-root");
        let spec = &b[DM_IOCTL_SIZE..];
        assert_eq!(u64::from_ne_bytes(spec[8..16].try_into().unwrap()), 8);
        assert_eq!(&spec[24..30], b"verity");
        assert_eq!(&spec[40..46], b"1 2 3\0");
        assert_eq!(u32::from_ne_bytes(spec[20..24].try_into().unwrap()) % 8, 0);
        header("", 0, &[]).unwrap_err();
    }

    #[test]
    fn decodes_dev() {
        assert_eq!(decode_dev(253 << 8), (253, 0));
        assert_eq!(decode_dev((253 << 8) | 0x12 | (0x300 << 12)), (253, 0x312));
    }
}
