//! What one guest is made of, and the one QEMU command line built from it.
//! `gwos run` and the QEMU test suite both describe a guest as a [`Spec`];
//! [`Spec::args`] is the only place in the tree that spells QEMU options.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

/// OVMF firmware from Debian's `ovmf` package (4 MiB variant first).
pub const OVMF_CODE: &str = "/usr/share/OVMF/OVMF_CODE_4M.fd";
pub const OVMF_VARS: &str = "/usr/share/OVMF/OVMF_VARS_4M.fd";
const OVMF_CODE_2M: &str = "/usr/share/OVMF/OVMF_CODE.fd";
const OVMF_VARS_2M: &str = "/usr/share/OVMF/OVMF_VARS.fd";

/// (code, vars template) of the installed OVMF.
pub fn ovmf() -> Result<(PathBuf, PathBuf)> {
    for (c, v) in [(OVMF_CODE, OVMF_VARS), (OVMF_CODE_2M, OVMF_VARS_2M)] {
        if Path::new(c).is_file() && Path::new(v).is_file() {
            return Ok((c.into(), v.into()));
        }
    }
    bail!("OVMF firmware not found ({OVMF_CODE}); install the Debian package `ovmf`, or boot with --direct")
}

/// CPU virtualisation: KVM when /dev/kvm can be opened read-write, else TCG.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Accel {
    Kvm,
    Tcg,
}

impl Accel {
    pub fn name(self) -> &'static str {
        match self {
            Accel::Kvm => "kvm",
            Accel::Tcg => "tcg",
        }
    }
}

/// The accelerator `auto` picks, and why.
pub fn detect_accel() -> (Accel, String) {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    kvm_decision(
        std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/kvm")
            .map(drop),
        &cpuinfo,
    )
}

/// KVM needs /dev/kvm read-write AND hardware virtualisation (vmx/svm) on
/// the host CPU: a /dev/kvm without it (kvm_pvm in a nested sandbox) only
/// runs specially built guests, and an ordinary kernel hangs there.
pub fn kvm_decision(open: std::io::Result<()>, cpuinfo: &str) -> (Accel, String) {
    let hw = cpuinfo
        .lines()
        .filter(|l| l.starts_with("flags"))
        .any(|l| l.split_whitespace().any(|f| f == "vmx" || f == "svm"));
    match (open, hw) {
        (Ok(()), true) => (Accel::Kvm, "/dev/kvm is usable".into()),
        (Ok(()), false) => (
            Accel::Tcg,
            "/dev/kvm opens but the CPU has no vmx/svm flag, so ordinary guests cannot run on it"
                .into(),
        ),
        (Err(e), _) => (Accel::Tcg, format!("/dev/kvm not usable: {e}")),
    }
}

/// How the guest boots.
#[derive(Debug, Clone)]
pub enum Firmware {
    /// UEFI (OVMF) → systemd-boot → UKI, as bare metal does. `vars` is the
    /// writable copy of the variable store this guest owns.
    Ovmf { code: PathBuf, vars: PathBuf },
    /// `-kernel/-initrd/-append` (no firmware; the command line can be edited).
    Direct {
        kernel: PathBuf,
        initrd: PathBuf,
        append: String,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DiskFormat {
    Raw,
    Qcow2,
}

impl DiskFormat {
    /// qcow2 by its magic, raw otherwise.
    pub fn of(path: &Path) -> Result<DiskFormat> {
        use std::io::Read;
        let mut magic = [0u8; 4];
        let mut f =
            std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
        let n = f.read(&mut magic)?;
        Ok(if n == 4 && magic == *b"QFI\xfb" {
            DiskFormat::Qcow2
        } else {
            DiskFormat::Raw
        })
    }
    fn name(self) -> &'static str {
        match self {
            DiskFormat::Raw => "raw",
            DiskFormat::Qcow2 => "qcow2",
        }
    }
}

/// The storage controller a disk hangs off.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DiskModel {
    VirtioBlk,
    VirtioScsi,
    /// The q35 machine's built-in ich9-ahci controller.
    Ahci,
    Nvme,
    /// VMware paravirtual SCSI.
    Pvscsi,
    /// USB mass storage on an xHCI controller (a flashing stick).
    Usb,
}

impl std::str::FromStr for DiskModel {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Self> {
        Ok(match s {
            "virtio-blk" | "virtio" => DiskModel::VirtioBlk,
            "virtio-scsi" => DiskModel::VirtioScsi,
            "ahci" | "ich9-ahci" | "sata" => DiskModel::Ahci,
            "nvme" => DiskModel::Nvme,
            "pvscsi" => DiskModel::Pvscsi,
            "usb" | "usb-storage" => DiskModel::Usb,
            _ => bail!("disk model {s:?}: use virtio-blk, virtio-scsi, ahci, nvme, pvscsi or usb"),
        })
    }
}

#[derive(Debug, Clone)]
pub struct Disk {
    pub path: PathBuf,
    pub format: DiskFormat,
    pub model: DiskModel,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Proto {
    Tcp,
    Udp,
}

/// A host port (on 127.0.0.1) forwarded to a guest port by user networking.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct Forward {
    pub proto: Proto,
    pub host_port: u16,
    pub guest_port: u16,
}

impl std::str::FromStr for Forward {
    type Err = anyhow::Error;
    /// `tcp:HOSTPORT:GUESTPORT` or `udp:…`; HOSTPORT 0 picks a free port.
    fn from_str(s: &str) -> Result<Self> {
        let parts: Vec<&str> = s.split(':').collect();
        let [proto, host, guest] = parts[..] else {
            bail!("--forward {s:?}: expected tcp:HOSTPORT:GUESTPORT or udp:HOSTPORT:GUESTPORT");
        };
        let proto = match proto {
            "tcp" => Proto::Tcp,
            "udp" => Proto::Udp,
            p => bail!("--forward {s:?}: protocol {p:?} is not tcp or udp"),
        };
        let host_port = host
            .parse()
            .with_context(|| format!("--forward {s:?}: host port {host:?}"))?;
        let guest_port: u16 = guest
            .parse()
            .with_context(|| format!("--forward {s:?}: guest port {guest:?}"))?;
        if guest_port == 0 {
            bail!("--forward {s:?}: guest port 0");
        }
        Ok(Forward {
            proto,
            host_port,
            guest_port,
        })
    }
}

/// Today's `make run` ports: SPA, TLS (443 as 8443) and control.
pub fn default_forwards() -> Vec<Forward> {
    let f = |proto, host_port, guest_port| Forward {
        proto,
        host_port,
        guest_port,
    };
    vec![
        f(Proto::Udp, 62201, 62201),
        f(Proto::Tcp, 8443, 443),
        f(Proto::Tcp, 2222, 2222),
    ]
}

/// Where a NIC's frames go.
#[derive(Debug, Clone)]
pub enum NetBackend {
    /// QEMU user networking on 10.0.2.0/24 (host = 10.0.2.2). `restrict`
    /// cuts it off from the host and beyond (forwards still work).
    User {
        forwards: Vec<Forward>,
        restrict: bool,
    },
    /// A TAP device the caller made (in `Spec::netns` when set).
    Tap { ifname: String },
}

#[derive(Debug, Clone)]
pub struct Nic {
    /// A QEMU network device: virtio-net-pci, e1000, e1000e, igb, vmxnet3, rtl8139, ...
    pub model: String,
    pub mac: Option<String>,
    pub backend: NetBackend,
}

impl Nic {
    pub fn user(model: &str, forwards: Vec<Forward>) -> Nic {
        Nic {
            model: model.into(),
            mac: None,
            backend: NetBackend::User {
                forwards,
                restrict: false,
            },
        }
    }
}

/// Where the serial console goes.
#[derive(Debug, Clone)]
pub enum Console {
    /// Appended to a file (waiting, detached runs, tests).
    File(PathBuf),
    /// This terminal, with QEMU's monitor on ctrl-a c (a person at the keyboard).
    Stdio,
}

/// One guest.
#[derive(Debug, Clone)]
pub struct Spec {
    pub accel: Accel,
    pub memory_mib: u32,
    pub cpus: u32,
    pub firmware: Firmware,
    /// The first disk is the one booted.
    pub disks: Vec<Disk>,
    /// Empty: no NIC at all.
    pub nics: Vec<Nic>,
    pub console: Console,
    /// Human monitor socket (`system_powerdown`, `device_add`).
    pub monitor: PathBuf,
    /// Run QEMU inside this network namespace (`ip netns exec`).
    pub netns: Option<String>,
    /// Empty PCIe root ports `hp0`, `hp1`, ... for `device_add ...,bus=hpN` (hotplug).
    pub hotplug_ports: u32,
    /// A guest reboot restarts the machine; `false`: QEMU exits (`-no-reboot`).
    pub allow_reboot: bool,
}

fn check_word(what: &str, v: &str) -> Result<()> {
    if v.is_empty()
        || !v
            .bytes()
            .all(|c| c.is_ascii_alphanumeric() || b"-_:.".contains(&c))
    {
        bail!("{what} {v:?}: only letters, digits and - _ : . are allowed");
    }
    Ok(())
}

fn path_arg(p: &Path) -> Result<String> {
    let s = p.to_str().context("non-UTF-8 path")?;
    if s.contains(',') {
        bail!("path {s:?} contains a comma, which QEMU's option syntax cannot carry");
    }
    Ok(s.to_string())
}

impl Spec {
    /// The program and arguments (with `ip netns exec NS` in front when in a namespace).
    pub fn command_line(&self) -> Result<Vec<String>> {
        let mut v = match &self.netns {
            Some(ns) => vec!["ip".into(), "netns".into(), "exec".into(), ns.clone()],
            None => vec![],
        };
        v.push("qemu-system-x86_64".into());
        v.extend(self.args()?);
        Ok(v)
    }

    /// Every QEMU argument for this guest.
    pub fn args(&self) -> Result<Vec<String>> {
        let mut a: Vec<String> = Vec::new();
        let mut push = |xs: &[&str]| a.extend(xs.iter().map(|s| s.to_string()));
        push(&["-machine", "q35", "-accel", self.accel.name()]);
        if self.accel == Accel::Kvm {
            push(&["-cpu", "host"]);
        }
        push(&["-m", &self.memory_mib.to_string()]);
        push(&["-smp", &self.cpus.to_string()]);
        if !self.allow_reboot {
            push(&["-no-reboot"]);
        }
        match &self.console {
            Console::File(f) => push(&[
                "-display",
                "none",
                "-vga",
                "none",
                "-serial",
                &format!("file:{}", path_arg(f)?),
            ]),
            Console::Stdio => push(&["-nographic", "-serial", "mon:stdio"]),
        }
        push(&[
            "-monitor",
            &format!("unix:{},server,nowait", path_arg(&self.monitor)?),
        ]);
        match &self.firmware {
            Firmware::Ovmf { code, vars } => push(&[
                "-drive",
                &format!(
                    "if=pflash,format=raw,unit=0,readonly=on,file={}",
                    path_arg(code)?
                ),
                "-drive",
                &format!("if=pflash,format=raw,unit=1,file={}", path_arg(vars)?),
            ]),
            Firmware::Direct {
                kernel,
                initrd,
                append,
            } => push(&[
                "-kernel",
                &path_arg(kernel)?,
                "-initrd",
                &path_arg(initrd)?,
                "-append",
                append,
            ]),
        }
        for i in 0..self.hotplug_ports {
            a.extend([
                "-device".to_string(),
                format!("pcie-root-port,id=hp{i},chassis={}", i + 1),
            ]);
        }
        for (i, d) in self.disks.iter().enumerate() {
            a.extend(disk_args(i, d)?);
        }
        if self.nics.is_empty() {
            a.extend(["-nic".into(), "none".into()]);
        }
        for (i, n) in self.nics.iter().enumerate() {
            a.extend(nic_args(i, n)?);
        }
        Ok(a)
    }
}

fn disk_args(i: usize, d: &Disk) -> Result<Vec<String>> {
    let id = format!("disk{i}");
    let mut a = vec![
        "-drive".to_string(),
        format!(
            "file={},format={},if=none,id={id}",
            path_arg(&d.path)?,
            d.format.name()
        ),
    ];
    let mut dev = |s: String| a.extend(["-device".to_string(), s]);
    match d.model {
        DiskModel::VirtioBlk => dev(format!("virtio-blk-pci,drive={id}")),
        DiskModel::VirtioScsi => {
            dev(format!("virtio-scsi-pci,id=scsi{i}"));
            dev(format!("scsi-hd,drive={id},bus=scsi{i}.0"));
        }
        // q35's ich9-ahci has six ports, ide.0 .. ide.5.
        DiskModel::Ahci => dev(format!("ide-hd,drive={id},bus=ide.{}", i.min(5))),
        DiskModel::Nvme => dev(format!("nvme,drive={id},serial=gwos{i}")),
        DiskModel::Pvscsi => {
            dev(format!("pvscsi,id=pvscsi{i}"));
            dev(format!("scsi-hd,drive={id},bus=pvscsi{i}.0"));
        }
        DiskModel::Usb => {
            dev(format!("qemu-xhci,id=xhci{i}"));
            dev(format!("usb-storage,drive={id},bus=xhci{i}.0"));
        }
    }
    Ok(a)
}

fn nic_args(i: usize, n: &Nic) -> Result<Vec<String>> {
    check_word("NIC model", &n.model)?;
    let id = format!("net{i}");
    let netdev = match &n.backend {
        NetBackend::User { forwards, restrict } => {
            let mut s = format!("user,id={id},net=10.0.2.0/24");
            if *restrict {
                s.push_str(",restrict=on");
            }
            for f in forwards {
                let p = match f.proto {
                    Proto::Tcp => "tcp",
                    Proto::Udp => "udp",
                };
                s.push_str(&format!(
                    ",hostfwd={p}:127.0.0.1:{}-:{}",
                    f.host_port, f.guest_port
                ));
            }
            s
        }
        NetBackend::Tap { ifname } => {
            check_word("TAP device", ifname)?;
            format!("tap,id={id},ifname={ifname},script=no,downscript=no")
        }
    };
    let mut dev = format!("{},netdev={id}", n.model);
    if let Some(mac) = &n.mac {
        check_word("MAC", mac)?;
        dev.push_str(&format!(",mac={mac}"));
    }
    Ok(vec!["-netdev".into(), netdev, "-device".into(), dev])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> Spec {
        Spec {
            accel: Accel::Tcg,
            memory_mib: 512,
            cpus: 1,
            firmware: Firmware::Ovmf {
                code: OVMF_CODE.into(),
                vars: "/r/vars.fd".into(),
            },
            disks: vec![Disk {
                path: "/r/disk.qcow2".into(),
                format: DiskFormat::Qcow2,
                model: DiskModel::VirtioBlk,
            }],
            nics: vec![Nic::user("virtio-net-pci", default_forwards())],
            console: Console::File("/r/console.log".into()),
            monitor: "/r/monitor.sock".into(),
            netns: None,
            hotplug_ports: 0,
            allow_reboot: false,
        }
    }

    #[test]
    fn default_guest_command_line() {
        let a = spec().args().unwrap().join(" ");
        assert_eq!(
            a,
            "-machine q35 -accel tcg -m 512 -smp 1 -no-reboot -display none -vga none \
             -serial file:/r/console.log -monitor unix:/r/monitor.sock,server,nowait \
             -drive if=pflash,format=raw,unit=0,readonly=on,file=/usr/share/OVMF/OVMF_CODE_4M.fd \
             -drive if=pflash,format=raw,unit=1,file=/r/vars.fd \
             -drive file=/r/disk.qcow2,format=qcow2,if=none,id=disk0 -device virtio-blk-pci,drive=disk0 \
             -netdev user,id=net0,net=10.0.2.0/24,hostfwd=udp:127.0.0.1:62201-:62201,\
hostfwd=tcp:127.0.0.1:8443-:443,hostfwd=tcp:127.0.0.1:2222-:2222 \
             -device virtio-net-pci,netdev=net0"
                .split_whitespace()
                .collect::<Vec<_>>()
                .join(" ")
        );
    }

    #[test]
    fn no_nic_means_nic_none_and_kvm_uses_host_cpu() {
        let mut s = spec();
        s.nics.clear();
        s.accel = Accel::Kvm;
        let a = s.args().unwrap().join(" ");
        assert!(a.contains("-accel kvm -cpu host"), "{a}");
        assert!(a.ends_with("-nic none"), "{a}");
    }

    #[test]
    fn storage_models_hang_the_disk_off_their_controller() {
        let mut s = spec();
        s.disks[0].model = DiskModel::Pvscsi;
        let a = s.args().unwrap().join(" ");
        assert!(
            a.contains("-device pvscsi,id=pvscsi0 -device scsi-hd,drive=disk0,bus=pvscsi0.0"),
            "{a}"
        );
        s.disks[0].model = DiskModel::Ahci;
        assert!(s
            .args()
            .unwrap()
            .join(" ")
            .contains("-device ide-hd,drive=disk0,bus=ide.0"));
    }

    #[test]
    fn kvm_only_with_hardware_virtualisation() {
        let vmx = "flags\t\t: fpu vme vmx sse2\n";
        let none = "flags\t\t: fpu vme hypervisor sse2\n";
        assert_eq!(kvm_decision(Ok(()), vmx).0, Accel::Kvm);
        let (a, why) = kvm_decision(Ok(()), none);
        assert_eq!(a, Accel::Tcg);
        assert!(why.contains("no vmx/svm"), "{why}");
        let denied = std::io::Error::from(std::io::ErrorKind::PermissionDenied);
        let (a, why) = kvm_decision(Err(denied), vmx);
        assert_eq!(a, Accel::Tcg);
        assert!(why.starts_with("/dev/kvm not usable"), "{why}");
    }

    #[test]
    fn forwards_parse_and_refuse_clearly() {
        let f: Forward = "udp:0:62201".parse().unwrap();
        assert_eq!((f.proto, f.host_port, f.guest_port), (Proto::Udp, 0, 62201));
        let e = "sctp:1:2".parse::<Forward>().unwrap_err().to_string();
        assert!(e.contains("\"sctp\" is not tcp or udp"), "{e}");
        let e = "tcp:2222".parse::<Forward>().unwrap_err().to_string();
        assert!(e.contains("expected tcp:HOSTPORT:GUESTPORT"), "{e}");
        let e = format!("{:#}", "tcp:x:1".parse::<Forward>().unwrap_err());
        assert!(e.contains("host port \"x\""), "{e}");
    }

    #[test]
    fn option_injection_through_names_is_refused() {
        let mut s = spec();
        s.nics[0].model = "e1000,romfile=/etc/shadow".into();
        let e = s.args().unwrap_err().to_string();
        assert!(e.contains("NIC model"), "{e}");
        let mut s = spec();
        s.console = Console::File("/tmp/a,b".into());
        let e = s.args().unwrap_err().to_string();
        assert!(e.contains("contains a comma"), "{e}");
    }
}
