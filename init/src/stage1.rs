//! Stage 1: `gwosd` as `/init` of the initramfs. Finds the slot's partitions
//! by GPT label, verifies the signed manifest against the release keys built
//! into the initramfs, checks the root hash on the command line equals the
//! signed one, checks the signed version against the stored security floor
//! ([`crate::floor`], read raw from the disk before anything is mounted),
//! creates the dm-verity device (`panic_on_corruption`: a corrupted block
//! read at any later time panics the kernel with a message naming
//! dm-verity), mounts the EROFS root read-only, switches root and execs
//! `/sbin/init` (stage 2). Every failure is fatal ([`console::fatal`]).
//!
//! The decisions are pure functions ([`parse_cmdline`], [`pick_partitions`],
//! [`check_manifest`], [`check_floor`]) called by [`verify_and_mount`], which
//! reaches the machine only through the [`Platform`] trait: [`Machine`] on
//! the gateway, a recording fake in the unit tests. Each refusal is a
//! [`Refusal`] variant.

use std::ffi::CString;
use std::io::{Read, Seek, SeekFrom};
use std::time::Duration;

use anyhow::{Context, Result};
use gwos_signing::{Manifest, PublicKey};
use nix::mount::MsFlags;

use crate::gpt_find::Part;
use crate::{cmdline, console, dm, floor, gpt_find, mounts};

const KEYS_DIR: &str = "/etc/gwos/release-keys";
const NEWROOT: &str = "/newroot";
const DISK_WAIT: Duration = Duration::from_secs(10);
const DISK_POLL: Duration = Duration::from_millis(50);
/// dm-verity's reaction to a corrupted block; see docs/boot.md.
pub const VERITY_ON_CORRUPTION: &str = "panic_on_corruption";
/// Environment variable carrying [`BootInfo`] (JSON) from stage 1 to stage 2.
pub const BOOT_INFO_ENV: &str = "GWOS_BOOT";

/// Why stage 1 refuses to boot a slot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// `gwos.slot=` / `gwos.roothash=` missing or malformed.
    Cmdline(String),
    /// No release keys in the initramfs.
    NoKeys(String),
    /// A partition label on more than one device (an attached disk must not shadow ours).
    DuplicateLabel {
        label: String,
        devices: Vec<String>,
    },
    /// The slot's partitions did not appear in time.
    Missing {
        labels: Vec<String>,
        seen: String,
    },
    /// The envelope does not open: bad magic, bad signature, unknown key, ...
    Signature {
        part: String,
        error: String,
    },
    WrongSlot {
        manifest: String,
        booting: String,
    },
    RootHashMismatch {
        cmdline: String,
        manifest: String,
    },
    /// A partition is smaller than the signed sizes need.
    TooSmall {
        part: String,
        size: u64,
        need: u64,
    },
    FsType(String),
    /// The signed version is below the stored security floor.
    BelowFloor {
        version: u64,
        floor: u64,
    },
    /// The floor record cannot be read or is corrupt, or its region is inside a partition.
    Floor(String),
    /// A read, the device-mapper setup or the mount failed.
    Io(String),
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Refusal::Cmdline(s) | Refusal::NoKeys(s) | Refusal::Io(s) => write!(f, "{s}"),
            Refusal::DuplicateLabel { label, devices } => write!(
                f,
                "partition label {label:?} is on more than one device ({}); refusing to guess",
                devices.join(", ")
            ),
            Refusal::Missing { labels, seen } => write!(
                f,
                "partitions {labels:?} not found within {}s (seen: [{seen}])",
                DISK_WAIT.as_secs()
            ),
            Refusal::Signature { part, error } => write!(
                f,
                "manifest signature check failed on {part}: {error}; refusing to mount an unverified root"
            ),
            Refusal::WrongSlot { manifest, booting } => {
                write!(f, "signed manifest is for slot {manifest}, booting slot {booting}")
            }
            Refusal::RootHashMismatch { cmdline, manifest } => write!(
                f,
                "root hash mismatch: command line gwos.roothash={cmdline} but the signed manifest says {manifest}; refusing to boot"
            ),
            Refusal::TooSmall { part, size, need } => write!(
                f,
                "partition {part} is {size} bytes, smaller than the {need} bytes the signed manifest needs"
            ),
            Refusal::FsType(t) => write!(f, "root fs type {t:?} unsupported"),
            Refusal::BelowFloor { version, floor } => write!(
                f,
                "signed version {version} is below the stored security floor {floor}; refusing to boot an older release"
            ),
            Refusal::Floor(s) => write!(f, "security floor: {s}"),
        }
    }
}

impl std::error::Error for Refusal {}

fn io(what: &str) -> impl Fn(anyhow::Error) -> Refusal + '_ {
    move |e| Refusal::Io(format!("{what}: {e:#}"))
}

/// What stage 1 verified, handed to stage 2 in [`BOOT_INFO_ENV`].
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BootInfo {
    /// "a" or "b".
    pub slot: String,
    pub version: u64,
    pub version_id: String,
    /// The manifest's own `security_floor`.
    pub manifest_floor: u64,
    /// The stored floor when stage 1 checked it.
    pub stored_floor: u64,
    /// The raw disk holding the slot and the floor record, e.g. `/dev/vda`.
    pub disk: String,
    pub root_hash: String,
}

/// Everything stage 1 does to the machine.
pub trait Platform {
    fn cmdline(&self) -> String;
    fn release_keys(&self) -> Result<Vec<PublicKey>>;
    /// Labelled partitions the kernel knows now.
    fn scan(&self) -> Vec<(String, Part)>;
    fn sleep(&self, d: Duration);
    fn part_size(&self, p: &Part) -> Result<u64>;
    /// First byte of the partition on its disk.
    fn part_start(&self, p: &Part) -> Result<u64>;
    /// The whole disk holding `p`, e.g. `/dev/vda`.
    fn disk_of(&self, p: &Part) -> Result<String>;
    fn read_at(&self, dev: &str, offset: u64, len: usize) -> Result<Vec<u8>>;
    /// Creates the read-only dm-verity device; returns its (major, minor).
    fn create_verity(&mut self, sectors: u64, params: &str) -> Result<(u32, u32)>;
    fn mount_root(&mut self, major: u32, minor: u32) -> Result<()>;
    fn say(&mut self, msg: &str);
}

/// `gwos.slot=` (a|b) and `gwos.roothash=` from the command line.
pub fn parse_cmdline(text: &str) -> Result<(String, String), Refusal> {
    let slot = cmdline::parse(text, "gwos.slot")
        .ok_or_else(|| Refusal::Cmdline("no gwos.slot= on the kernel command line".into()))?;
    if slot != "a" && slot != "b" {
        return Err(Refusal::Cmdline(format!(
            "gwos.slot={slot:?} is not a or b"
        )));
    }
    let hash = cmdline::parse(text, "gwos.roothash")
        .ok_or_else(|| Refusal::Cmdline("no gwos.roothash= on the kernel command line".into()))?;
    Ok((slot, hash))
}

/// The partitions for `labels` in `all`: `Ok(None)` while some are missing;
/// a label on two devices is refused.
pub fn pick_partitions(
    all: &[(String, Part)],
    labels: &[&str],
) -> Result<Option<Vec<Part>>, Refusal> {
    let mut found = Vec::new();
    for l in labels {
        let hits: Vec<&Part> = all.iter().filter(|(n, _)| n == l).map(|(_, p)| p).collect();
        if hits.len() > 1 {
            return Err(Refusal::DuplicateLabel {
                label: l.to_string(),
                devices: hits.iter().map(|p| p.name.clone()).collect(),
            });
        }
        if let Some(p) = hits.first() {
            found.push((*p).clone());
        }
    }
    Ok((found.len() == labels.len()).then_some(found))
}

/// Opens and checks the signed manifest of `slot` from its verity partition's
/// manifest region against the keys, the command line's root hash and the
/// partition sizes.
pub fn check_manifest(
    region: &[u8],
    keys: &[PublicKey],
    slot: &str,
    want_hash: &str,
    root_size: u64,
    verity_size: u64,
) -> Result<Manifest, Refusal> {
    let verity_l = format!("verity-{slot}");
    let m = gwos_signing::open(region, keys).map_err(|e| Refusal::Signature {
        part: verity_l.clone(),
        error: e.to_string(),
    })?;
    if let Some(s) = &m.slot {
        if s != slot {
            return Err(Refusal::WrongSlot {
                manifest: s.clone(),
                booting: slot.into(),
            });
        }
    }
    if want_hash != m.root_hash {
        return Err(Refusal::RootHashMismatch {
            cmdline: want_hash.into(),
            manifest: m.root_hash.clone(),
        });
    }
    if root_size < m.data_size {
        return Err(Refusal::TooSmall {
            part: format!("root-{slot}"),
            size: root_size,
            need: m.data_size,
        });
    }
    let need = m.hash_size + gwos_signing::MANIFEST_REGION_SIZE;
    if verity_size < need {
        return Err(Refusal::TooSmall {
            part: verity_l,
            size: verity_size,
            need,
        });
    }
    if m.fs_type != "erofs" {
        return Err(Refusal::FsType(m.fs_type.clone()));
    }
    Ok(m)
}

/// The stored floor from the two record copies, checked against the signed
/// version. `lowest_part_start`: the first byte of the disk's lowest
/// partition (the record region must be outside every partition). The
/// manifest's own `security_floor` may be lower than the stored floor (an
/// older release may still boot if its version is not below it); it only
/// raises the stored floor once the slot is blessed (stage 2).
pub fn check_floor(
    version: u64,
    copies: &[Vec<u8>; 2],
    lowest_part_start: u64,
) -> Result<u64, Refusal> {
    if lowest_part_start < floor::REGION_END {
        return Err(Refusal::Floor(format!(
            "a partition starts at byte {lowest_part_start}, inside the floor record region (first {} bytes); refusing to boot a disk laid out without it",
            floor::REGION_END
        )));
    }
    let stored = floor::value(floor::current(copies).map_err(Refusal::Floor)?);
    if version < stored {
        return Err(Refusal::BelowFloor {
            version,
            floor: stored,
        });
    }
    Ok(stored)
}

/// Stage 1's whole check and mount, over a [`Platform`].
pub fn verify_and_mount(p: &mut dyn Platform) -> Result<BootInfo, Refusal> {
    let (slot, want_hash) = parse_cmdline(&p.cmdline())?;
    let keys = p
        .release_keys()
        .map_err(|e| Refusal::NoKeys(format!("loading release keys from {KEYS_DIR}: {e:#}")))?;
    if keys.is_empty() {
        return Err(Refusal::NoKeys(format!("no release keys in {KEYS_DIR}")));
    }
    let (root_l, verity_l) = (format!("root-{slot}"), format!("verity-{slot}"));
    let labels = [root_l.as_str(), verity_l.as_str()];
    let mut waited = Duration::ZERO;
    let parts = loop {
        let all = p.scan();
        if let Some(found) = pick_partitions(&all, &labels)? {
            break found;
        }
        if waited >= DISK_WAIT {
            let seen: Vec<_> = all.iter().map(|(l, p)| format!("{}={l}", p.name)).collect();
            return Err(Refusal::Missing {
                labels: labels.iter().map(|s| s.to_string()).collect(),
                seen: seen.join(", "),
            });
        }
        p.sleep(DISK_POLL);
        waited += DISK_POLL;
    };
    let (root, verity) = (&parts[0], &parts[1]);
    p.say(&format!(
        "slot {slot}: {root_l}={} {verity_l}={}",
        root.name, verity.name
    ));

    let root_size = p.part_size(root).map_err(io("root partition size"))?;
    let verity_size = p.part_size(verity).map_err(io("verity partition size"))?;
    let region_len = gwos_signing::MANIFEST_REGION_SIZE;
    if verity_size < region_len {
        return Err(Refusal::TooSmall {
            part: verity_l,
            size: verity_size,
            need: region_len,
        });
    }
    let region = p
        .read_at(
            &verity.dev_path(),
            verity_size - region_len,
            region_len as usize,
        )
        .map_err(io("reading the manifest region"))?;
    let m = check_manifest(&region, &keys, &slot, &want_hash, root_size, verity_size)?;
    p.say(&format!(
        "manifest verified: version {} ({}), root hash {}",
        m.version_id, m.version, m.root_hash
    ));

    let disk = p
        .disk_of(root)
        .map_err(io("finding the disk of the slot"))?;
    let all = p.scan();
    let mut lowest = u64::MAX;
    for (_, q) in &all {
        if p.disk_of(q).map_err(io("finding a partition's disk"))? == disk {
            lowest = lowest.min(p.part_start(q).map_err(io("partition start"))?);
        }
    }
    let copies = [
        p.read_at(&disk, floor::COPY_OFFSETS[0], floor::RECORD_LEN)
            .map_err(io("reading the security floor record"))?,
        p.read_at(&disk, floor::COPY_OFFSETS[1], floor::RECORD_LEN)
            .map_err(io("reading the security floor record"))?,
    ];
    let stored = check_floor(m.version, &copies, lowest)?;
    p.say(&format!(
        "security floor: stored {stored}, signed version {} (manifest floor {})",
        m.version, m.security_floor
    ));

    let (sectors, mut params) = m.dm_verity_table(&root.majmin(), &verity.majmin());
    params.push_str(&format!(" 1 {VERITY_ON_CORRUPTION}"));
    let (maj, min) = p
        .create_verity(sectors, &params)
        .map_err(io("creating the dm-verity device"))?;
    p.mount_root(maj, min)
        .map_err(io("mounting the verified EROFS root"))?;
    p.say(&format!(
        "dm-verity root {maj}:{min} mounted read-only ({VERITY_ON_CORRUPTION})"
    ));
    Ok(BootInfo {
        slot,
        version: m.version,
        version_id: m.version_id,
        manifest_floor: m.security_floor,
        stored_floor: stored,
        disk,
        root_hash: m.root_hash,
    })
}

/// The real machine.
pub struct Machine;

impl Platform for Machine {
    fn cmdline(&self) -> String {
        std::fs::read_to_string("/proc/cmdline").unwrap_or_default()
    }
    fn release_keys(&self) -> Result<Vec<PublicKey>> {
        Ok(gwos_signing::load_dir(std::path::Path::new(KEYS_DIR))?)
    }
    fn scan(&self) -> Vec<(String, Part)> {
        gpt_find::scan()
    }
    fn sleep(&self, d: Duration) {
        std::thread::sleep(d)
    }
    fn part_size(&self, p: &Part) -> Result<u64> {
        let s = std::fs::read_to_string(format!("/sys/class/block/{}/size", p.name))?;
        Ok(s.trim().parse::<u64>().context("partition size")? * 512)
    }
    fn part_start(&self, p: &Part) -> Result<u64> {
        let s = std::fs::read_to_string(format!("/sys/class/block/{}/start", p.name))?;
        Ok(s.trim().parse::<u64>().context("partition start")? * 512)
    }
    fn disk_of(&self, p: &Part) -> Result<String> {
        // /sys/class/block/vda2 -> .../block/vda/vda2: the parent is the disk.
        let real = std::fs::canonicalize(format!("/sys/class/block/{}", p.name))?;
        let disk = real
            .parent()
            .and_then(|d| d.file_name())
            .and_then(|n| n.to_str())
            .with_context(|| format!("no parent disk for {}", p.name))?;
        Ok(format!("/dev/{disk}"))
    }
    fn read_at(&self, dev: &str, offset: u64, len: usize) -> Result<Vec<u8>> {
        let mut f = std::fs::File::open(dev).with_context(|| format!("opening {dev}"))?;
        f.seek(SeekFrom::Start(offset))?;
        let mut buf = vec![0u8; len];
        f.read_exact(&mut buf)
            .with_context(|| format!("reading {len} bytes at {offset} of {dev}"))?;
        Ok(buf)
    }
    fn create_verity(&mut self, sectors: u64, params: &str) -> Result<(u32, u32)> {
        dm::create_readonly(
            "gwos-root",
            &[dm::Target {
                start: 0,
                length: sectors,
                kind: "verity",
                params,
            }],
        )
    }
    fn mount_root(&mut self, maj: u32, min: u32) -> Result<()> {
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
    }
    fn say(&mut self, msg: &str) {
        console::say(msg)
    }
}

pub fn main(t0_ms: u64) -> ! {
    if let Err(e) = mount_early() {
        console::fatal(&format!("stage 1: {e:#}"));
    }
    console::say(&format!(
        "stage 1 (initramfs) pid 1 started at {t0_ms} ms after kernel start"
    ));
    let info = match verify_and_mount(&mut Machine) {
        Ok(i) => i,
        Err(e) => refuse(&e),
    };
    if let Err(e) = switch_root() {
        console::fatal(&format!("switch root: {e:#}"));
    }
    let init = CString::new("/sbin/init").expect("no NUL");
    let info = serde_json::to_string(&info).unwrap_or_default();
    let env = [
        CString::new(format!("GWOS_T0_MS={t0_ms}")).expect("no NUL"),
        CString::new(format!("{BOOT_INFO_ENV}={info}"))
            .unwrap_or_else(|_| CString::new("GWOS_BOOT=").expect("no NUL")),
    ];
    let e = nix::unistd::execve(&init, std::slice::from_ref(&init), &env);
    console::fatal(&format!("exec /sbin/init in the verified root: {e:?}"))
}

/// FATAL for a refused slot. On a trial boot (a boot-counted UKI) the
/// machine reboots instead of powering off, so systemd-boot counts the try
/// and falls back to the good slot once the tries are used up.
fn refuse(e: &Refusal) -> ! {
    if let Ok(Some(entry)) = crate::bless::trial_entry() {
        let msg = format!("FATAL: {e}");
        console::say(&msg);
        console::kmsg(&msg);
        console::say(&format!(
            "trial boot of {} ({} tries left): rebooting so systemd-boot counts this try",
            entry.file, entry.tries_left
        ));
        crate::shutdown::halt(true)
    }
    console::fatal(&e.to_string())
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
    if std::path::Path::new("/sys/firmware/efi").exists() {
        // To read LoaderBootCountPath (is this a trial boot?) if the slot is
        // refused; the same mount stage 2 makes (it moves along with /sys).
        let _ = mounts::fs_once(
            "efivarfs",
            "/sys/firmware/efi/efivars",
            "efivarfs",
            mounts::SAFE,
            None,
        );
    }
    console::set_init_mode();
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    const HASH: &str = "aa00000000000000000000000000000000000000000000000000000000000001";
    const MIB: u64 = 1 << 20;

    fn key(seed: u8) -> gwos_signing::ReleaseKey {
        gwos_signing::ReleaseKey::from_seed(&[seed; 32])
    }

    fn manifest(version: u64, floor: u64) -> Manifest {
        Manifest {
            format: gwos_signing::manifest::FORMAT,
            version,
            version_id: format!("0.{version}.0"),
            security_floor: floor,
            slot: Some("a".into()),
            development: false,
            build_id: "00".repeat(16),
            hash_algorithm: "sha256".into(),
            data_block_size: 4096,
            hash_block_size: 4096,
            data_blocks: 64,
            data_size: 64 * 4096,
            hash_size: 8192,
            salt: "11".repeat(32),
            root_hash: HASH.into(),
            verity_uuid: "00000000-0000-4000-8000-000000000000".into(),
            uki_sha256: "22".repeat(32),
            fs_type: "erofs".into(),
        }
    }

    fn part(name: &str, minor: u32) -> Part {
        Part {
            name: name.into(),
            major: 254,
            minor,
        }
    }

    /// The recording fake: a disk `/dev/vda` with root-a (vda2) and verity-a (vda3).
    struct Fake {
        cmdline: String,
        keys: Vec<PublicKey>,
        parts: Vec<(String, Part)>,
        sizes: HashMap<String, u64>,
        starts: HashMap<String, u64>,
        devices: HashMap<String, Vec<u8>>,
        calls: Vec<String>,
    }

    impl Fake {
        fn new(m: &Manifest, signer: &gwos_signing::ReleaseKey) -> Fake {
            let mut verity = vec![0u8; MIB as usize];
            let env = gwos_signing::seal(m, signer).unwrap();
            let at = (MIB - gwos_signing::MANIFEST_REGION_SIZE) as usize;
            verity[at..at + env.len()].copy_from_slice(&env);
            let mut f = Fake {
                cmdline: format!("console=ttyS0 gwos.slot=a gwos.roothash={HASH} ro\n"),
                keys: vec![key(1).public()],
                parts: vec![
                    ("esp".into(), part("vda1", 1)),
                    ("root-a".into(), part("vda2", 2)),
                    ("verity-a".into(), part("vda3", 3)),
                ],
                sizes: HashMap::new(),
                starts: HashMap::new(),
                devices: HashMap::new(),
                calls: Vec::new(),
            };
            for (i, n) in ["vda1", "vda2", "vda3"].iter().enumerate() {
                f.sizes.insert(n.to_string(), MIB);
                f.starts.insert(n.to_string(), MIB * (i as u64 + 1));
            }
            f.devices.insert("/dev/vda3".into(), verity);
            f.devices.insert("/dev/vda".into(), vec![0u8; MIB as usize]);
            f
        }

        fn store_floor(&mut self, idx: usize, r: floor::Record) {
            let d = self.devices.get_mut("/dev/vda").unwrap();
            let o = floor::COPY_OFFSETS[idx] as usize;
            d[o..o + floor::RECORD_LEN].copy_from_slice(&floor::encode(&r));
        }

        fn mounted(&self) -> bool {
            self.calls
                .iter()
                .any(|c| c.starts_with("create_verity") || c.starts_with("mount_root"))
        }
    }

    impl Platform for Fake {
        fn cmdline(&self) -> String {
            self.cmdline.clone()
        }
        fn release_keys(&self) -> Result<Vec<PublicKey>> {
            Ok(self.keys.clone())
        }
        fn scan(&self) -> Vec<(String, Part)> {
            self.parts.clone()
        }
        fn sleep(&self, _d: Duration) {}
        fn part_size(&self, p: &Part) -> Result<u64> {
            self.sizes.get(&p.name).copied().context("no size")
        }
        fn part_start(&self, p: &Part) -> Result<u64> {
            self.starts.get(&p.name).copied().context("no start")
        }
        fn disk_of(&self, p: &Part) -> Result<String> {
            Ok(format!(
                "/dev/{}",
                p.name.trim_end_matches(char::is_numeric)
            ))
        }
        fn read_at(&self, dev: &str, offset: u64, len: usize) -> Result<Vec<u8>> {
            let d = self.devices.get(dev).context("no such device")?;
            Ok(d[offset as usize..offset as usize + len].to_vec())
        }
        fn create_verity(&mut self, sectors: u64, params: &str) -> Result<(u32, u32)> {
            self.calls.push(format!("create_verity {sectors} {params}"));
            Ok((253, 0))
        }
        fn mount_root(&mut self, major: u32, minor: u32) -> Result<()> {
            self.calls.push(format!("mount_root {major}:{minor}"));
            Ok(())
        }
        fn say(&mut self, msg: &str) {
            self.calls.push(format!("say {msg}"));
        }
    }

    fn refused(f: &mut Fake) -> Refusal {
        let r = verify_and_mount(f).expect_err("stage 1 accepted the slot");
        assert!(!f.mounted(), "refused but created/mounted: {:?}", f.calls);
        r
    }

    #[test]
    fn good_slot_mounts_with_panic_on_corruption() {
        let mut f = Fake::new(&manifest(2, 2), &key(1));
        f.store_floor(
            1,
            floor::Record {
                seq: 1,
                floor: 1,
                version: 1,
            },
        );
        let info = verify_and_mount(&mut f).unwrap();
        assert_eq!(
            info,
            BootInfo {
                slot: "a".into(),
                version: 2,
                version_id: "0.2.0".into(),
                manifest_floor: 2,
                stored_floor: 1,
                disk: "/dev/vda".into(),
                root_hash: HASH.into(),
            }
        );
        let create = f
            .calls
            .iter()
            .find(|c| c.starts_with("create_verity"))
            .unwrap();
        assert_eq!(
            create,
            &format!("create_verity 512 1 254:2 254:3 4096 4096 64 1 sha256 {HASH} {} 1 panic_on_corruption", "11".repeat(32))
        );
        assert!(
            f.calls.contains(&"mount_root 253:0".to_string()),
            "{:?}",
            f.calls
        );
        assert!(f.calls.contains(
            &"say security floor: stored 1, signed version 2 (manifest floor 2)".to_string()
        ));
    }

    #[test]
    fn refuses_bad_signature() {
        let mut f = Fake::new(&manifest(1, 1), &key(1));
        // Envelope: magic(8) len(4) key id(8) signature(64) manifest...
        let at = (MIB - gwos_signing::MANIFEST_REGION_SIZE) as usize + 8 + 4 + 8 + 10;
        f.devices.get_mut("/dev/vda3").unwrap()[at] ^= 0xff;
        match refused(&mut f) {
            Refusal::Signature { part, error } => {
                assert_eq!(part, "verity-a");
                assert!(
                    error.starts_with("manifest signature does not verify"),
                    "{error}"
                );
            }
            r => panic!("{r:?}"),
        }
    }

    #[test]
    fn refuses_unknown_key() {
        let mut f = Fake::new(&manifest(1, 1), &key(9));
        let r = refused(&mut f);
        let id = key(9).public().id_hex();
        assert_eq!(
            r,
            Refusal::Signature {
                part: "verity-a".into(),
                error: format!("manifest signed by unknown key id {id}")
            }
        );
        assert!(r
            .to_string()
            .ends_with("refusing to mount an unverified root"));
    }

    #[test]
    fn refuses_root_hash_mismatch() {
        let mut f = Fake::new(&manifest(1, 1), &key(1));
        let other = "0".repeat(64);
        f.cmdline = format!("gwos.slot=a gwos.roothash={other}");
        assert_eq!(
            refused(&mut f),
            Refusal::RootHashMismatch {
                cmdline: other,
                manifest: HASH.into()
            }
        );
    }

    #[test]
    fn refuses_partitions_smaller_than_signed() {
        let mut f = Fake::new(&manifest(1, 1), &key(1));
        f.sizes.insert("vda2".into(), 4096);
        assert_eq!(
            refused(&mut f),
            Refusal::TooSmall {
                part: "root-a".into(),
                size: 4096,
                need: 64 * 4096
            }
        );
        let mut f = Fake::new(&manifest(1, 1), &key(1));
        f.sizes.insert("vda3".into(), 65536);
        f.devices.insert("/dev/vda3".into(), vec![0; 65536]);
        // The envelope is gone with the shrunk device: the signature check refuses first.
        assert!(matches!(refused(&mut f), Refusal::Signature { .. }));
    }

    #[test]
    fn check_manifest_refuses_small_verity_and_fs_type() {
        let k = key(1);
        let region = gwos_signing::seal(&manifest(1, 1), &k).unwrap();
        let keys = [k.public()];
        assert_eq!(
            check_manifest(&region, &keys, "a", HASH, MIB, 70000),
            Err(Refusal::TooSmall {
                part: "verity-a".into(),
                size: 70000,
                need: 8192 + 65536
            })
        );
        let mut m = manifest(1, 1);
        m.fs_type = "ext4".into();
        let region = gwos_signing::seal(&m, &k).unwrap();
        assert_eq!(
            check_manifest(&region, &keys, "a", HASH, MIB, MIB),
            Err(Refusal::FsType("ext4".into()))
        );
    }

    #[test]
    fn refuses_manifest_of_the_other_slot() {
        let mut f = Fake::new(&manifest(1, 1), &key(1));
        f.cmdline = format!("gwos.slot=b gwos.roothash={HASH}");
        f.parts = vec![
            ("root-b".into(), part("vda4", 4)),
            ("verity-b".into(), part("vda5", 5)),
        ];
        f.sizes.insert("vda4".into(), MIB);
        f.sizes.insert("vda5".into(), MIB);
        let v = f.devices["/dev/vda3"].clone();
        f.devices.insert("/dev/vda5".into(), v);
        assert_eq!(
            refused(&mut f),
            Refusal::WrongSlot {
                manifest: "a".into(),
                booting: "b".into()
            }
        );
    }

    #[test]
    fn refuses_version_below_the_stored_floor() {
        let mut f = Fake::new(&manifest(1, 1), &key(1));
        f.store_floor(
            0,
            floor::Record {
                seq: 2,
                floor: 2,
                version: 2,
            },
        );
        let r = refused(&mut f);
        assert_eq!(
            r,
            Refusal::BelowFloor {
                version: 1,
                floor: 2
            }
        );
        assert_eq!(
            r.to_string(),
            "signed version 1 is below the stored security floor 2; refusing to boot an older release"
        );
    }

    /// The manifest's own floor may be below the stored one: what counts is the version.
    #[test]
    fn boots_version_at_floor_with_lower_manifest_floor() {
        let mut f = Fake::new(&manifest(3, 1), &key(1));
        f.store_floor(
            0,
            floor::Record {
                seq: 2,
                floor: 3,
                version: 3,
            },
        );
        f.store_floor(
            1,
            floor::Record {
                seq: 1,
                floor: 1,
                version: 1,
            },
        );
        let info = verify_and_mount(&mut f).unwrap();
        assert_eq!((info.stored_floor, info.manifest_floor), (3, 1));
        assert!(f.mounted());
    }

    #[test]
    fn refuses_corrupt_floor_record_and_partition_in_its_region() {
        let mut f = Fake::new(&manifest(1, 1), &key(1));
        let o = floor::COPY_OFFSETS[0] as usize;
        f.devices.get_mut("/dev/vda").unwrap()[o..o + 8].copy_from_slice(b"GWOSFLR1");
        match refused(&mut f) {
            Refusal::Floor(s) => assert!(
                s.starts_with("the stored security floor record is corrupt (copy 0 at byte 1040384: hash does not match"),
                "{s}"
            ),
            r => panic!("{r:?}"),
        }
        let mut f = Fake::new(&manifest(1, 1), &key(1));
        f.starts.insert("vda1".into(), 17408);
        match refused(&mut f) {
            Refusal::Floor(s) => {
                assert!(
                    s.starts_with("a partition starts at byte 17408, inside"),
                    "{s}"
                )
            }
            r => panic!("{r:?}"),
        }
    }

    #[test]
    fn refuses_duplicate_label() {
        let mut f = Fake::new(&manifest(1, 1), &key(1));
        f.parts.push(("verity-a".into(), part("sda3", 19)));
        assert_eq!(
            refused(&mut f),
            Refusal::DuplicateLabel {
                label: "verity-a".into(),
                devices: vec!["vda3".into(), "sda3".into()]
            }
        );
    }

    #[test]
    fn refuses_missing_partitions_after_the_wait() {
        let mut f = Fake::new(&manifest(1, 1), &key(1));
        f.parts.retain(|(l, _)| l != "verity-a");
        let r = refused(&mut f);
        assert_eq!(
            r.to_string(),
            "partitions [\"root-a\", \"verity-a\"] not found within 10s (seen: [vda1=esp, vda2=root-a])"
        );
    }

    #[test]
    fn refuses_bad_command_lines_and_no_keys() {
        let mut f = Fake::new(&manifest(1, 1), &key(1));
        f.cmdline = format!("gwos.roothash={HASH}");
        assert_eq!(
            refused(&mut f),
            Refusal::Cmdline("no gwos.slot= on the kernel command line".into())
        );
        f.cmdline = format!("gwos.slot=c gwos.roothash={HASH}");
        assert_eq!(
            refused(&mut f),
            Refusal::Cmdline("gwos.slot=\"c\" is not a or b".into())
        );
        f.cmdline = "gwos.slot=a".into();
        assert_eq!(
            refused(&mut f),
            Refusal::Cmdline("no gwos.roothash= on the kernel command line".into())
        );
        let mut f = Fake::new(&manifest(1, 1), &key(1));
        f.keys.clear();
        assert_eq!(
            refused(&mut f),
            Refusal::NoKeys("no release keys in /etc/gwos/release-keys".into())
        );
    }
}
