//! Stage 1: `gwosd` as `/init` of the initramfs. Finds the slot's partitions
//! by GPT label, verifies the signed manifest against the release keys built
//! into the initramfs, checks the root hash on the command line equals the
//! signed one, creates the dm-verity device (`panic_on_corruption`: a
//! corrupted block read at any later time panics the kernel with a message
//! naming dm-verity), mounts the EROFS root read-only, switches root and
//! execs `/sbin/init` (stage 2). Every failure is fatal ([`console::fatal`]).

use std::ffi::CString;
use std::io::{Read, Seek, SeekFrom};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use nix::mount::MsFlags;

use crate::{cmdline, console, dm, gpt_find, mounts};

const KEYS_DIR: &str = "/etc/gwos/release-keys";
const NEWROOT: &str = "/newroot";
const DISK_WAIT: Duration = Duration::from_secs(10);
/// dm-verity's reaction to a corrupted block; see docs/boot.md.
pub const VERITY_ON_CORRUPTION: &str = "panic_on_corruption";

pub fn main(t0_ms: u64) -> ! {
    if let Err(e) = mount_early() {
        console::fatal(&format!("stage 1: {e:#}"));
    }
    console::say(&format!(
        "stage 1 (initramfs) pid 1 started at {t0_ms} ms after kernel start"
    ));
    match verify_and_mount() {
        Ok(()) => {}
        Err(e) => console::fatal(&format!("{e:#}")),
    }
    if let Err(e) = switch_root() {
        console::fatal(&format!("switch root: {e:#}"));
    }
    let init = CString::new("/sbin/init").expect("no NUL");
    let env = [CString::new(format!("GWOS_T0_MS={t0_ms}")).expect("no NUL")];
    let e = nix::unistd::execve(&init, std::slice::from_ref(&init), &env);
    console::fatal(&format!("exec /sbin/init in the verified root: {e:?}"))
}

fn mount_early() -> Result<()> {
    mounts::fs_once("proc", "/proc", "proc", mounts::SAFE, None)?;
    mounts::fs_once("sysfs", "/sys", "sysfs", mounts::SAFE, None)?;
    mounts::fs_once(
        "devtmpfs",
        "/dev",
        "devtmpfs",
        MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC,
        Some("mode=0755"),
    )?;
    console::set_init_mode();
    Ok(())
}

fn part_size(p: &gpt_find::Part) -> Result<u64> {
    let s = std::fs::read_to_string(format!("/sys/class/block/{}/size", p.name))?;
    Ok(s.trim().parse::<u64>().context("partition size")? * 512)
}

fn read_manifest_region(p: &gpt_find::Part) -> Result<Vec<u8>> {
    let size = part_size(p)?;
    let region = gwos_signing::MANIFEST_REGION_SIZE;
    if size < region {
        bail!(
            "verity partition {} is {size} bytes, smaller than the manifest region",
            p.name
        );
    }
    let mut f =
        std::fs::File::open(p.dev_path()).with_context(|| format!("opening {}", p.dev_path()))?;
    f.seek(SeekFrom::Start(size - region))?;
    let mut buf = vec![0u8; region as usize];
    f.read_exact(&mut buf)
        .with_context(|| format!("reading the manifest region of {}", p.dev_path()))?;
    Ok(buf)
}

fn verify_and_mount() -> Result<()> {
    let slot = cmdline::get("gwos.slot").context("no gwos.slot= on the kernel command line")?;
    if slot != "a" && slot != "b" {
        bail!("gwos.slot={slot:?} is not a or b");
    }
    let want_hash =
        cmdline::get("gwos.roothash").context("no gwos.roothash= on the kernel command line")?;
    let keys = gwos_signing::load_dir(std::path::Path::new(KEYS_DIR))
        .with_context(|| format!("loading release keys from {KEYS_DIR}"))?;
    if keys.is_empty() {
        bail!("no release keys in {KEYS_DIR}");
    }
    let (root_l, verity_l) = (format!("root-{slot}"), format!("verity-{slot}"));
    let parts = gpt_find::wait_for(&[&root_l, &verity_l], DISK_WAIT)?;
    let (root, verity) = (&parts[0], &parts[1]);
    console::say(&format!(
        "slot {slot}: {root_l}={} {verity_l}={}",
        root.name, verity.name
    ));

    let region = read_manifest_region(verity)?;
    let m = gwos_signing::open(&region, &keys)
        .map_err(|e| anyhow::anyhow!("manifest signature check failed on {verity_l}: {e}; refusing to mount an unverified root"))?;
    if let Some(s) = &m.slot {
        if *s != slot {
            bail!("signed manifest is for slot {s}, booting slot {slot}");
        }
    }
    if want_hash != m.root_hash {
        bail!("root hash mismatch: command line gwos.roothash={want_hash} but the signed manifest says {}; refusing to boot", m.root_hash);
    }
    console::say(&format!(
        "manifest verified: version {} ({}), root hash {}",
        m.version_id, m.version, m.root_hash
    ));
    if part_size(root)? < m.data_size
        || part_size(verity)? < m.hash_size + gwos_signing::MANIFEST_REGION_SIZE
    {
        bail!("slot partitions are smaller than the signed sizes");
    }
    if m.fs_type != "erofs" {
        bail!("root fs type {:?} unsupported", m.fs_type);
    }
    let (sectors, mut params) = m.dm_verity_table(&root.majmin(), &verity.majmin());
    params.push_str(&format!(" 1 {VERITY_ON_CORRUPTION}"));
    let (maj, min) = dm::create_readonly(
        "gwos-root",
        &[dm::Target {
            start: 0,
            length: sectors,
            kind: "verity",
            params: &params,
        }],
    )?;
    let node = "/dev/gwos-root";
    let _ = std::fs::remove_file(node);
    nix::sys::stat::mknod(
        node,
        nix::sys::stat::SFlag::S_IFBLK,
        nix::sys::stat::Mode::from_bits_truncate(0o600),
        nix::sys::stat::makedev(maj as u64, min as u64),
    )
    .context("mknod /dev/gwos-root")?;
    mounts::fs(
        node,
        NEWROOT,
        "erofs",
        MsFlags::MS_RDONLY | MsFlags::MS_NODEV,
        None,
    )
    .context("mounting the verified EROFS root")?;
    console::say(&format!(
        "dm-verity root {maj}:{min} mounted read-only ({VERITY_ON_CORRUPTION})"
    ));
    Ok(())
}

fn switch_root() -> Result<()> {
    for d in ["/dev", "/proc", "/sys"] {
        mounts::move_mount(d, &format!("{NEWROOT}{d}"))?;
    }
    // The initramfs (rootfs) cannot be pivoted away: move the new root over it and chroot.
    nix::unistd::chdir(NEWROOT)?;
    mounts::move_mount(".", "/")?;
    nix::unistd::chroot(".")?;
    nix::unistd::chdir("/")?;
    Ok(())
}
