//! The state partition (GPT label `state`) at /var: ext4, mounted
//! nosuid,nodev,noexec and grown to the partition size with
//! EXT4_IOC_RESIZE_FS. There is no mkfs on the image: a blank partition (all
//! zeros where the ext4 superblock belongs: first boot, or wiped by an
//! operator) is formatted by writing the empty ext4 template the image tool
//! put in the verified root (`/usr/lib/gwos/state-template`, format in
//! gwos_core::state_template), then grown. Without a template /var becomes a tmpfs
//! and the console says loudly that state is NOT persistent. A partition
//! holding anything else is never touched; any other failure is fatal.
//!
//! Nothing on /var is trusted: the directories PID 1 makes and hands to
//! services are walked with `openat(O_NOFOLLOW | O_DIRECTORY)` and chowned
//! and chmodded through the opened fd ([`secure_dir`], [`prepare_service_dir`]),
//! so a symlink planted offline is refused, never followed.

use std::io::{Read, Seek, SeekFrom};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::Path;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use gwos_core::state_template::{self, PATH as TEMPLATE};
use nix::mount::MsFlags;

use crate::{gpt_find, mounts};

const EXT4_MAGIC: u16 = 0xef53;
// _IOW('f', 16, __u64)
const EXT4_IOC_RESIZE_FS: libc::c_ulong = 0x4008_6610;

/// What the first 2 KiB say about the partition.
#[derive(Debug, PartialEq, Eq)]
pub enum Kind {
    Blank,
    Ext4 { block_size: u64, blocks: u64 },
    Other,
}

pub fn classify(head: &[u8]) -> Kind {
    if head.len() < 2048 {
        return Kind::Other;
    }
    let sb = &head[1024..2048];
    if u16::from_le_bytes([sb[0x38], sb[0x39]]) == EXT4_MAGIC {
        let lo = u32::from_le_bytes(sb[4..8].try_into().expect("4")) as u64;
        let log = u32::from_le_bytes(sb[0x18..0x1c].try_into().expect("4"));
        return Kind::Ext4 {
            block_size: 1024u64 << log.min(6),
            blocks: lo,
        };
    }
    if head.iter().all(|b| *b == 0) {
        return Kind::Blank;
    }
    Kind::Other
}

pub fn mount_var() -> Result<String> {
    let flags = MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
    let part = gpt_find::wait_for(&["state"], Duration::from_secs(5))?.remove(0);
    let mut f = std::fs::File::open(part.dev_path())
        .with_context(|| format!("opening {}", part.dev_path()))?;
    let mut head = vec![0u8; 2048];
    f.read_exact(&mut head)?;
    let size = f.seek(SeekFrom::End(0))?;
    let msg = match classify(&head) {
        Kind::Blank if !std::path::Path::new(TEMPLATE).exists() => {
            mounts::fs("tmpfs", "/var", "tmpfs", flags, Some("mode=0755,size=64m"))?;
            format!("WARNING: state partition {} is blank and the image has no {TEMPLATE}: /var is a tmpfs, state is NOT persistent", part.name)
        }
        Kind::Blank => {
            drop(f);
            let tpl = std::fs::read(TEMPLATE).with_context(|| format!("reading {TEMPLATE}"))?;
            let blocks = format_from_template(&part.dev_path(), &tpl, size)
                .with_context(|| format!("formatting {}", part.name))?;
            mounts::fs(
                &part.dev_path(),
                "/var",
                "ext4",
                flags,
                Some("errors=remount-ro"),
            )?;
            let want = size / 4096;
            if want > blocks {
                grow("/var", want).context("growing /var")?;
            }
            format!("{} was blank: formatted ext4 from the image's template ({blocks} blocks), grown to {want} blocks, at /var", part.name)
        }
        Kind::Other => bail!(
            "state partition {} holds neither ext4 nor zeros; refusing to touch it",
            part.name
        ),
        Kind::Ext4 { block_size, blocks } => {
            mounts::fs(
                &part.dev_path(),
                "/var",
                "ext4",
                flags,
                Some("errors=remount-ro"),
            )?;
            let want = size / block_size;
            if want > blocks {
                grow("/var", want).context("growing /var")?;
                format!(
                    "{} ext4 at /var, grown from {blocks} to {want} blocks",
                    part.name
                )
            } else {
                format!("{} ext4 at /var ({blocks} blocks)", part.name)
            }
        }
    };
    let var = Path::new("/var");
    let mut msg = msg;
    for dir in [&["lib", "gwos"][..], &["log"]] {
        // A planted symlink is moved aside by the first try; the second makes the directory.
        if let Err(e) = secure_dir(var, dir, 0, 0, 0o755) {
            msg.push_str(&format!("; WARNING: {e:#}"));
            secure_dir(var, dir, 0, 0, 0o755)?;
        }
    }
    std::fs::create_dir_all(gwos_core::context::RUN_DIR)?;
    use std::os::unix::fs::PermissionsExt;
    // Services (distinct uids) create their sockets here; sticky, not listable.
    std::fs::set_permissions(
        gwos_core::context::RUN_DIR,
        std::fs::Permissions::from_mode(0o1733),
    )?;
    Ok(msg)
}

/// Makes `<var>/lib/gwos/<name>` the service's state dir: owned by
/// uid:gid, mode 0700. PID 1 is root and /var is not verified (an offline
/// edit can put anything there), so no path is followed: each component is
/// opened with `openat(O_NOFOLLOW | O_DIRECTORY)` below the one before, and
/// the owner and mode are set on the opened fd. A symlink is refused.
pub fn prepare_service_dir(var: &Path, name: &str, uid: u32, gid: u32) -> Result<()> {
    let lib = secure_dir(var, &["lib", "gwos"], 0, 0, 0o755)?;
    let dir = open_dir_nofollow(&lib, &var.join("lib/gwos"), name, 0o700)?;
    set_owner_mode(&dir, &var.join("lib/gwos").join(name), uid, gid, 0o700)
}

/// Creates (when missing) and opens `<base>/<components…>` without following
/// any symlink, then sets owner and mode of the last one; returns it.
pub fn secure_dir(
    base: &Path,
    components: &[&str],
    uid: u32,
    gid: u32,
    mode: u32,
) -> Result<OwnedFd> {
    let mut dir = open_base(base)?;
    let mut path = base.to_path_buf();
    for c in components {
        // Directories on the way are traversable (0755); the last gets `mode` below.
        dir = open_dir_nofollow(&dir, &path, c, 0o755)?;
        path.push(c);
    }
    set_owner_mode(&dir, &path, uid, gid, mode)?;
    Ok(dir)
}

fn open_base(base: &Path) -> Result<OwnedFd> {
    use nix::fcntl::OFlag;
    let fd = nix::fcntl::openat(
        None,
        base,
        OFlag::O_DIRECTORY | OFlag::O_RDONLY | OFlag::O_CLOEXEC,
        nix::sys::stat::Mode::empty(),
    )
    .with_context(|| format!("opening {}", base.display()))?;
    Ok(owned(fd))
}

/// `name` below the open directory `parent` (at `parent_path`, for messages):
/// made (root, `create_mode` less the umask) if missing, opened only if it is
/// a real directory.
fn open_dir_nofollow(
    parent: &OwnedFd,
    parent_path: &Path,
    name: &str,
    create_mode: u32,
) -> Result<OwnedFd> {
    use nix::errno::Errno;
    use nix::fcntl::OFlag;
    use nix::sys::stat::Mode;
    let path = parent_path.join(name);
    anyhow::ensure!(
        !name.is_empty() && name != "." && name != ".." && !name.contains('/'),
        "{name:?} is not a single path component"
    );
    let mode = Mode::from_bits_truncate(create_mode);
    match nix::sys::stat::mkdirat(Some(parent.as_raw_fd()), name, mode) {
        Ok(()) | Err(Errno::EEXIST) => {}
        Err(e) => return Err(e).with_context(|| format!("creating {}", path.display())),
    }
    let flags = OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_RDONLY | OFlag::O_CLOEXEC;
    match nix::fcntl::openat(Some(parent.as_raw_fd()), name, flags, Mode::empty()) {
        Ok(fd) => Ok(owned(fd)),
        Err(Errno::ELOOP | Errno::ENOTDIR) => {
            let what = if is_symlink(parent, name) {
                "is a symlink: PID 1 never follows links on /var, refused it"
            } else {
                "is not a directory: refused it"
            };
            // Keep it for inspection, out of the way: the next attempt makes a fresh directory.
            let aside = format!("{name}.refused");
            let moved = nix::fcntl::renameat(
                Some(parent.as_raw_fd()),
                name,
                Some(parent.as_raw_fd()),
                aside.as_str(),
            );
            let next = match moved {
                Ok(()) => format!(
                    "moved it to {}; the next start makes a fresh one",
                    parent_path.join(&aside).display()
                ),
                Err(e) => format!("could not move it aside ({e}); remove it"),
            };
            bail!(
                "{} {what} (something changed the state partition); {next}",
                path.display()
            )
        }
        Err(e) => Err(e).with_context(|| format!("opening {}", path.display())),
    }
}

fn is_symlink(parent: &OwnedFd, name: &str) -> bool {
    use nix::sys::stat::{fstatat, SFlag};
    fstatat(
        Some(parent.as_raw_fd()),
        name,
        nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW,
    )
    .is_ok_and(|st| SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT == SFlag::S_IFLNK)
}

fn set_owner_mode(dir: &OwnedFd, path: &Path, uid: u32, gid: u32, mode: u32) -> Result<()> {
    use nix::unistd::{Gid, Uid};
    nix::unistd::fchown(
        dir.as_raw_fd(),
        Some(Uid::from_raw(uid)),
        Some(Gid::from_raw(gid)),
    )
    .with_context(|| format!("chown {uid}:{gid} {}", path.display()))?;
    nix::sys::stat::fchmod(
        dir.as_raw_fd(),
        nix::sys::stat::Mode::from_bits_truncate(mode),
    )
    .with_context(|| format!("chmod {mode:o} {}", path.display()))?;
    Ok(())
}

/// Opens the file `name` in the open directory `dir` with `flags` (plus
/// O_NOFOLLOW and O_CLOEXEC) and `mode` for a new file.
pub fn openat_file(
    dir: &OwnedFd,
    name: &str,
    flags: nix::fcntl::OFlag,
    mode: u32,
) -> nix::Result<std::fs::File> {
    use nix::fcntl::OFlag;
    let fd = nix::fcntl::openat(
        Some(dir.as_raw_fd()),
        name,
        flags | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
        nix::sys::stat::Mode::from_bits_truncate(mode),
    )?;
    Ok(std::fs::File::from(owned(fd)))
}

fn owned(fd: std::os::fd::RawFd) -> OwnedFd {
    // SAFETY: `fd` was just returned by a successful openat(2) and is owned
    // by nobody else; the OwnedFd closes it exactly once.
    unsafe { OwnedFd::from_raw_fd(fd) }
}

/// Writes the template's blocks to the (blank) partition and syncs it.
fn format_from_template(dev: &str, tpl: &[u8], part_size: u64) -> Result<u64> {
    use std::io::Write;
    let t = state_template::parse(tpl, part_size)?;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .open(dev)
        .with_context(|| format!("opening {dev} for writing"))?;
    for (idx, data) in t.records {
        f.seek(SeekFrom::Start(idx * state_template::BLOCK as u64))?;
        f.write_all(data)?;
    }
    f.sync_all()?;
    Ok(t.fs_blocks)
}

fn grow(mnt: &str, blocks: u64) -> Result<()> {
    let d = std::fs::File::open(mnt)?;
    let n: u64 = blocks;
    // SAFETY: EXT4_IOC_RESIZE_FS reads one u64 (the new block count) through
    // the pointer, which points to `n` on our stack; `d` is an open fd on the
    // mounted ext4 file system.
    let r = unsafe { libc::ioctl(d.as_raw_fd(), EXT4_IOC_RESIZE_FS as _, &n as *const u64) };
    if r < 0 {
        return Err(std::io::Error::last_os_error().into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies() {
        assert_eq!(classify(&[0u8; 2048]), Kind::Blank);
        let mut h = vec![0u8; 2048];
        h[1024 + 4..1024 + 8].copy_from_slice(&1000u32.to_le_bytes());
        h[1024 + 0x18..1024 + 0x1c].copy_from_slice(&2u32.to_le_bytes());
        h[1024 + 0x38] = 0x53;
        h[1024 + 0x39] = 0xef;
        assert_eq!(
            classify(&h),
            Kind::Ext4 {
                block_size: 4096,
                blocks: 1000
            }
        );
        h[1024 + 0x38] = 0;
        assert_eq!(classify(&h), Kind::Other);
    }

    /// Writing a template to a blank "partition" gives back the file system's bytes.
    #[test]
    fn format_writes_blocks_in_place() {
        let d = tempfile::tempdir().unwrap();
        let dev = d.path().join("part");
        std::fs::File::create(&dev)
            .unwrap()
            .set_len(16 * 4096)
            .unwrap();
        let mut fs = vec![0u8; 8 * 4096];
        fs[4096..8192].fill(7);
        fs[3 * 4096] = 9;
        let n = format_from_template(
            dev.to_str().unwrap(),
            &state_template::encode(&fs),
            16 * 4096,
        )
        .unwrap();
        assert_eq!(n, 8);
        let b = std::fs::read(&dev).unwrap();
        assert!(
            b[..4096].iter().all(|&x| x == 0)
                && b[4096..8192].iter().all(|&x| x == 7)
                && b[3 * 4096] == 9
        );
    }

    /// Review F10: a symlink planted where a service's state dir belongs
    /// made PID 1 (root) chown and chmod the link's target.
    #[test]
    fn f10_state_dir_symlink_not_followed() {
        use std::os::unix::fs::{MetadataExt, PermissionsExt};
        let d = tempfile::tempdir().unwrap();
        let var = d.path().join("var");
        let target = d.path().join("run-gwos");
        std::fs::create_dir_all(var.join("lib/gwos")).unwrap();
        std::fs::create_dir(&target).unwrap();
        std::fs::set_permissions(&target, std::fs::Permissions::from_mode(0o1733)).unwrap();
        let before = std::fs::metadata(&target).unwrap();
        std::os::unix::fs::symlink("../../../run-gwos", var.join("lib/gwos/tls-front")).unwrap();
        let e = prepare_service_dir(&var, "tls-front", 803, 803).unwrap_err();
        let after = std::fs::metadata(&target).unwrap();
        assert_eq!(
            (after.uid(), after.gid(), after.mode()),
            (before.uid(), before.gid(), before.mode()),
            "the link's target was changed"
        );
        assert!(format!("{e:#}").contains("is a symlink"), "{e:#}");
    }

    /// The refused link is kept aside and the next attempt makes a real directory.
    #[test]
    fn refused_symlink_is_moved_aside_then_replaced() {
        use std::os::unix::fs::MetadataExt;
        let d = tempfile::tempdir().unwrap();
        let var = d.path().join("var");
        std::fs::create_dir_all(var.join("lib/gwos")).unwrap();
        std::fs::create_dir(d.path().join("target")).unwrap();
        let link = var.join("lib/gwos/spa");
        std::os::unix::fs::symlink("../../../target", &link).unwrap();
        let me = std::fs::metadata(&var).unwrap();
        let e = prepare_service_dir(&var, "spa", me.uid(), me.gid()).unwrap_err();
        assert!(format!("{e:#}").contains("moved it to"), "{e:#}");
        let aside = std::fs::symlink_metadata(var.join("lib/gwos/spa.refused")).unwrap();
        assert!(aside.file_type().is_symlink());
        prepare_service_dir(&var, "spa", me.uid(), me.gid()).unwrap();
        assert!(std::fs::symlink_metadata(&link).unwrap().is_dir());
    }

    /// A symlink higher up (`/var/lib` → elsewhere) is refused as well.
    #[test]
    fn f10_parent_symlink_not_followed() {
        let d = tempfile::tempdir().unwrap();
        let var = d.path().join("var");
        std::fs::create_dir_all(&var).unwrap();
        std::fs::create_dir_all(d.path().join("elsewhere/gwos")).unwrap();
        std::os::unix::fs::symlink("../elsewhere", var.join("lib")).unwrap();
        let e = prepare_service_dir(&var, "vpn", 802, 802).unwrap_err();
        assert!(format!("{e:#}").contains("lib is a symlink"), "{e:#}");
        assert!(!d.path().join("elsewhere/gwos/vpn").exists());
    }

    /// A fresh state dir is made with its owner and mode; an existing one is fixed up.
    #[test]
    fn service_dir_created_owned_and_private() {
        use std::os::unix::fs::{MetadataExt, PermissionsExt};
        let d = tempfile::tempdir().unwrap();
        let var = d.path().join("var");
        std::fs::create_dir(&var).unwrap();
        let me = std::fs::metadata(&var).unwrap();
        prepare_service_dir(&var, "spa", me.uid(), me.gid()).unwrap();
        for up in ["lib", "lib/gwos"] {
            let m = std::fs::metadata(var.join(up)).unwrap();
            assert_eq!(
                m.mode() & 0o777,
                0o755,
                "{up} must be traversable by services"
            );
        }
        let dir = var.join("lib/gwos/spa");
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        prepare_service_dir(&var, "spa", me.uid(), me.gid()).unwrap();
        let m = std::fs::metadata(&dir).unwrap();
        assert_eq!(
            (m.uid(), m.mode() & 0o7777, m.is_dir()),
            (me.uid(), 0o700, true)
        );
    }

    /// A real ext4 made by mke2fs is recognised with its block count.
    #[test]
    fn real_mke2fs_image() {
        let d = tempfile::tempdir().unwrap();
        let img = d.path().join("x.img");
        std::fs::File::create(&img)
            .unwrap()
            .set_len(8 << 20)
            .unwrap();
        let st = std::process::Command::new("mkfs.ext4")
            .args(["-q", "-F", "-b", "4096"])
            .arg(&img)
            .status()
            .expect("mkfs.ext4 (e2fsprogs) is needed");
        assert!(st.success());
        let head = std::fs::read(&img).unwrap()[..2048].to_vec();
        assert_eq!(
            classify(&head),
            Kind::Ext4 {
                block_size: 4096,
                blocks: 2048
            }
        );
    }
}
