//! `gwos run IMAGE` and `gwos stop STATEDIR|PIDFILE`: the launcher as a
//! person or a CI job uses it (docs/ci.md).
//!
//! A run works in a run directory: `--state DIR` (kept: disk overlay and
//! firmware variables survive between runs), else a temporary one (removed
//! when a foreground run ends, or by `gwos stop` after `--detach`). It holds
//! `disk.qcow2` (copy-on-write overlay over the image, which is never
//! written unless `--in-place`), `OVMF_VARS.fd`, `monitor.sock`,
//! `console.log`, `qemu.log`, and for detached runs `qemu.pid` with its
//! record `qemu.pid.json`.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use super::direct;
use super::ready::{self, Failure};
use super::spec::{
    self, default_forwards, Accel, Console, Disk, DiskFormat, DiskModel, Firmware, Forward,
    NetBackend, Nic, Proto, Spec,
};
use super::vm::{self, Stdio3, Vm};

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum AccelArg {
    Auto,
    Kvm,
    Tcg,
}

/// `--nic none` or `--nic model=M[,mac=AA:..][,tap=NAME]` (a bare `M` is a model).
#[derive(Debug, Clone)]
pub enum NicArg {
    None,
    Nic {
        model: String,
        mac: Option<String>,
        tap: Option<String>,
    },
}

impl std::str::FromStr for NicArg {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Self> {
        if s == "none" {
            return Ok(NicArg::None);
        }
        let (mut model, mut mac, mut tap) = (None, None, None);
        for kv in s.split(',') {
            match kv.split_once('=') {
                Some(("model", v)) => model = Some(v.to_string()),
                Some(("mac", v)) => mac = Some(v.to_string()),
                Some(("tap", v)) => tap = Some(v.to_string()),
                None if model.is_none() => model = Some(kv.to_string()),
                _ => bail!("--nic {s:?}: {kv:?} is not model=, mac= or tap="),
            }
        }
        Ok(NicArg::Nic {
            model: model.with_context(|| format!("--nic {s:?}: no model="))?,
            mac,
            tap,
        })
    }
}

#[derive(Debug, clap::Args)]
pub struct RunArgs {
    /// The disk image (gwos.img raw, or gwos.qcow2).
    pub image: PathBuf,
    /// Boot slot A's kernel and initramfs directly (no firmware, faster); default OVMF + systemd-boot.
    #[arg(long)]
    pub direct: bool,
    /// Extra kernel command line words (with --direct).
    #[arg(long, default_value = "")]
    pub append: String,
    #[arg(long, value_enum, default_value = "auto")]
    pub accel: AccelArg,
    /// Boot the image itself, writing to it (default: a copy-on-write overlay).
    #[arg(long)]
    pub in_place: bool,
    /// Keep the disk overlay and firmware variables in DIR between runs.
    #[arg(long)]
    pub state: Option<PathBuf>,
    /// proto:HOSTPORT:GUESTPORT on 127.0.0.1 (repeatable; replaces the defaults
    /// udp:62201:62201 tcp:8443:443 tcp:2222:2222). HOSTPORT 0 picks a free port.
    #[arg(long)]
    pub forward: Vec<Forward>,
    /// Put the first NIC on this existing TAP device instead of user networking.
    #[arg(long)]
    pub tap: Option<String>,
    /// A NIC (repeatable; default one virtio-net-pci): model=M[,mac=..][,tap=..], or none.
    /// The first NIC carries the forwards; others are on isolated user networks unless tap=.
    #[arg(long)]
    pub nic: Vec<NicArg>,
    /// Controller of the boot disk: virtio-blk, virtio-scsi, ahci, nvme, pvscsi, usb.
    #[arg(long, default_value = "virtio-blk")]
    pub disk_model: DiskModel,
    /// Extra disk (raw or qcow2, attached virtio-blk, written in place; repeatable).
    #[arg(long)]
    pub disk: Vec<PathBuf>,
    /// Guest memory in MiB.
    #[arg(long, default_value_t = 1024)]
    pub memory: u32,
    #[arg(long, default_value_t = 1)]
    pub cpus: u32,
    /// Print one JSON line once the ready line appears (exit codes: docs/ci.md).
    #[arg(long)]
    pub wait_ready: bool,
    /// Seconds --wait-ready waits for the ready line.
    #[arg(long, default_value_t = 300)]
    pub timeout: u64,
    /// Run QEMU in the background (pid file, console to a file) and return.
    #[arg(long)]
    pub detach: bool,
    /// Pid file of a detached run (default: RUNDIR/qemu.pid).
    #[arg(long)]
    pub pid_file: Option<PathBuf>,
    /// Write the serial console to FILE.
    #[arg(long)]
    pub console_log: Option<PathBuf>,
}

#[derive(Debug, clap::Args)]
pub struct StopArgs {
    /// The --state DIR or the pid file of a detached run.
    pub target: PathBuf,
    /// Seconds to wait for the guest to power off before killing QEMU.
    #[arg(long, default_value_t = 60)]
    pub grace: u64,
}

/// What `gwos stop` needs to find a detached run again (`<pid file>.json`).
#[derive(Debug, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunRecord {
    pub pid: u32,
    pub monitor: PathBuf,
    pub run_dir: PathBuf,
    /// The run dir was made by `gwos run` and goes away at `gwos stop`.
    pub temporary: bool,
}

fn record_path(pid_file: &Path) -> PathBuf {
    let mut s = pid_file.as_os_str().to_owned();
    s.push(".json");
    PathBuf::from(s)
}

fn absolute(p: &Path) -> Result<PathBuf> {
    std::path::absolute(p).with_context(|| format!("{}", p.display()))
}

/// A free port on 127.0.0.1 for `proto` (for HOSTPORT 0).
fn free_port(proto: Proto) -> Result<u16> {
    Ok(match proto {
        Proto::Tcp => std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port(),
        Proto::Udp => std::net::UdpSocket::bind("127.0.0.1:0")?
            .local_addr()?
            .port(),
    })
}

struct RunDir {
    path: PathBuf,
    temporary: bool,
}

impl RunDir {
    fn new(state: Option<&Path>) -> Result<RunDir> {
        match state {
            Some(d) => {
                std::fs::create_dir_all(d)
                    .with_context(|| format!("creating --state {}", d.display()))?;
                Ok(RunDir {
                    path: absolute(d)?,
                    temporary: false,
                })
            }
            None => {
                let t = tempfile::Builder::new().prefix("gwos-run.").tempdir()?;
                Ok(RunDir {
                    path: t.keep(),
                    temporary: true,
                })
            }
        }
    }
    fn remove(&self) {
        if self.temporary {
            let _ = std::fs::remove_dir_all(&self.path);
        }
    }
}

/// The boot disk: the image itself (`--in-place`) or an overlay in the run dir.
fn boot_disk(image: &Path, dir: &RunDir, in_place: bool, model: DiskModel) -> Result<Disk> {
    if in_place {
        return Ok(Disk {
            path: image.to_path_buf(),
            format: DiskFormat::of(image)?,
            model,
        });
    }
    let overlay = dir.path.join("disk.qcow2");
    if !overlay.exists() {
        let fmt = match DiskFormat::of(image)? {
            DiskFormat::Raw => "raw",
            DiskFormat::Qcow2 => "qcow2",
        };
        let backing = image.to_str().context("non-UTF-8 image path")?;
        let out = overlay.to_str().context("non-UTF-8 run dir")?;
        crate::tools::run_s(
            "qemu-img",
            &["create", "-q", "-f", "qcow2", "-F", fmt, "-b", backing, out],
        )
        .context("creating the copy-on-write overlay")?;
    }
    Ok(Disk {
        path: overlay,
        format: DiskFormat::Qcow2,
        model,
    })
}

fn nics(a: &RunArgs) -> Result<(Vec<Nic>, Vec<Forward>)> {
    let mut forwards = if a.forward.is_empty() {
        default_forwards()
    } else {
        a.forward.clone()
    };
    for f in &mut forwards {
        if f.host_port == 0 {
            f.host_port = free_port(f.proto)?;
        }
    }
    let wanted = if a.nic.is_empty() {
        vec![NicArg::Nic {
            model: "virtio-net-pci".into(),
            mac: None,
            tap: None,
        }]
    } else {
        a.nic.clone()
    };
    if wanted.iter().any(|n| matches!(n, NicArg::None)) {
        if wanted.len() > 1 {
            bail!("--nic none cannot be combined with other --nic");
        }
        return Ok((vec![], vec![]));
    }
    let mut out = Vec::new();
    for (i, n) in wanted.into_iter().enumerate() {
        let NicArg::Nic { model, mac, tap } = n else {
            unreachable!("none handled above")
        };
        let tap = tap.or_else(|| if i == 0 { a.tap.clone() } else { None });
        let backend = match tap {
            Some(ifname) => NetBackend::Tap { ifname },
            None if i == 0 => NetBackend::User {
                forwards: forwards.clone(),
                restrict: false,
            },
            None => NetBackend::User {
                forwards: vec![],
                restrict: true,
            },
        };
        out.push(Nic {
            model,
            mac,
            backend,
        });
    }
    let used = match &out[0].backend {
        NetBackend::User { forwards, .. } => forwards.clone(),
        NetBackend::Tap { .. } => vec![],
    };
    Ok((out, used))
}

struct Plan {
    spec: Spec,
    accel_why: String,
    forwards: Vec<Forward>,
    dir: RunDir,
}

fn plan(a: &RunArgs) -> Result<Plan> {
    let image = absolute(&a.image)?;
    if !image.is_file() {
        bail!("image {} does not exist", image.display());
    }
    let (accel, accel_why) = match a.accel {
        AccelArg::Auto => spec::detect_accel(),
        AccelArg::Kvm => (Accel::Kvm, "--accel kvm".into()),
        AccelArg::Tcg => (Accel::Tcg, "--accel tcg".into()),
    };
    let dir = RunDir::new(a.state.as_deref())?;
    let r = (|| {
        let firmware = if a.direct {
            let s = direct::extract_slot_a(&image, &dir.path)?;
            Firmware::Direct {
                kernel: s.kernel,
                initrd: s.initrd,
                append: format!("{} {}", s.cmdline, a.append).trim().to_string(),
            }
        } else {
            let (code, template) = spec::ovmf()?;
            let vars = dir.path.join("OVMF_VARS.fd");
            if !vars.exists() {
                std::fs::copy(&template, &vars)
                    .with_context(|| format!("copying {}", template.display()))?;
            }
            Firmware::Ovmf { code, vars }
        };
        let mut disks = vec![boot_disk(&image, &dir, a.in_place, a.disk_model)?];
        for d in &a.disk {
            let path = absolute(d)?;
            disks.push(Disk {
                format: DiskFormat::of(&path)?,
                path,
                model: DiskModel::VirtioBlk,
            });
        }
        let (nics, forwards) = nics(a)?;
        let console = match (&a.console_log, a.detach || a.wait_ready) {
            (Some(f), _) => Console::File(absolute(f)?),
            (None, true) => Console::File(dir.path.join("console.log")),
            (None, false) => Console::Stdio,
        };
        Ok((
            Spec {
                accel,
                memory_mib: a.memory,
                cpus: a.cpus,
                firmware,
                disks,
                nics,
                console,
                monitor: dir.path.join("monitor.sock"),
                netns: None,
                hotplug_ports: 0,
                allow_reboot: false,
            },
            forwards,
        ))
    })();
    match r {
        Ok((spec, forwards)) => Ok(Plan {
            spec,
            accel_why,
            forwards,
            dir,
        }),
        Err(e) => {
            dir.remove();
            Err(e)
        }
    }
}

fn forwards_json(f: &[Forward]) -> Vec<serde_json::Value> {
    f.iter()
        .map(|f| {
            serde_json::json!({"proto": f.proto, "host": "127.0.0.1", "host_port": f.host_port, "guest_port": f.guest_port})
        })
        .collect()
}

fn header(p: &Plan, image: &Path) -> String {
    let fw = if matches!(p.spec.firmware, Firmware::Direct { .. }) {
        "direct kernel"
    } else {
        "OVMF + systemd-boot"
    };
    let reach: Vec<String> = p
        .forwards
        .iter()
        .map(|f| match (f.proto, f.guest_port) {
            (Proto::Udp, 62201) => format!("SPA udp 127.0.0.1:{}", f.host_port),
            (Proto::Tcp, 443) => format!("TLS tcp 127.0.0.1:{}", f.host_port),
            (Proto::Tcp, 2222) => format!(
                "control: ssh -i out/keys/dev-control -p {} gwctl@127.0.0.1 health",
                f.host_port
            ),
            (proto, g) => format!("{proto:?} 127.0.0.1:{} -> {g}", f.host_port).to_lowercase(),
        })
        .collect();
    format!(
        "gwos run: {} ({fw}, {} [{}]); {}; quit: ctrl-a x",
        image.display(),
        p.spec.accel.name(),
        p.accel_why,
        if reach.is_empty() {
            "no forwarded ports".to_string()
        } else {
            reach.join(", ")
        }
    )
}

/// `gwos run`; the process exit code (see [`super::ready`]).
pub fn run(a: RunArgs) -> Result<u8> {
    if a.pid_file.is_some() && !a.detach {
        bail!("--pid-file is for --detach runs");
    }
    let p = plan(&a)?;
    if matches!(p.spec.console, Console::Stdio) {
        eprintln!("{}", header(&p, &a.image));
        let mut vm = Vm::spawn(&p.spec, Stdio3::Terminal)?;
        let code = vm.wait();
        drop(vm);
        p.dir.remove();
        return Ok(code?.clamp(0, 255) as u8);
    }
    eprintln!(
        "gwos run: accel {} ({}); console {}",
        p.spec.accel.name(),
        p.accel_why,
        match &p.spec.console {
            Console::File(f) => f.display().to_string(),
            Console::Stdio => "terminal".into(),
        }
    );
    let io = if a.detach {
        Stdio3::Detached(p.dir.path.join("qemu.log"))
    } else {
        Stdio3::Quiet
    };
    let mut vm = match Vm::spawn(&p.spec, io) {
        Ok(vm) => vm,
        Err(e) => {
            p.dir.remove();
            return Err(e);
        }
    };
    let pid_file = match a.detach {
        true => {
            let pf = match &a.pid_file {
                Some(f) => absolute(f)?,
                None => p.dir.path.join("qemu.pid"),
            };
            write_record(&pf, vm.pid, &p)?;
            Some(pf)
        }
        false => None,
    };
    let mut out = serde_json::json!({
        "pid": vm.pid,
        "accel": p.spec.accel.name(),
        "firmware": if a.direct { "direct" } else { "ovmf" },
        "run_dir": p.dir.path,
        "console_log": vm.console,
        "pid_file": pid_file,
        "forwards": forwards_json(&p.forwards),
    });
    if !a.wait_ready {
        println!("{out}");
        vm.detach();
        return Ok(0);
    }
    let t = Instant::now();
    match vm.wait_ready(Duration::from_secs(a.timeout)) {
        Ok(r) => {
            let obj = out.as_object_mut().expect("a JSON object");
            obj.insert("ready".into(), true.into());
            obj.insert("slot".into(), r.slot.into());
            obj.insert("version".into(), r.version.into());
            obj.insert("boot_ms".into(), r.boot_ms.into());
            obj.insert("kernel_to_pid1_ms".into(), r.kernel_to_pid1_ms.into());
            obj.insert(
                "wall_s".into(),
                ((t.elapsed().as_secs_f64() * 10.0).round() / 10.0).into(),
            );
            println!("{out}");
            if a.detach {
                vm.detach();
                return Ok(0);
            }
            let code = vm.wait()?;
            drop(vm);
            p.dir.remove();
            Ok(code.clamp(0, 255) as u8)
        }
        Err(f) => {
            report_failure(&f, &vm.console_text());
            drop(vm); // kills QEMU if it is still up (timeout)
            if let Some(pf) = &pid_file {
                let _ = std::fs::remove_file(pf);
                let _ = std::fs::remove_file(record_path(pf));
            }
            p.dir.remove();
            Ok(f.exit_code())
        }
    }
}

fn report_failure(f: &Failure, console: &str) {
    eprintln!("gwos run: {f}; last console lines:");
    eprintln!("{}", ready::tail(console, 25));
    eprintln!("gwos run: exit {} ({})", f.exit_code(), f);
}

fn write_record(pid_file: &Path, pid: u32, p: &Plan) -> Result<()> {
    std::fs::write(pid_file, format!("{pid}\n"))
        .with_context(|| format!("writing pid file {}", pid_file.display()))?;
    let rec = RunRecord {
        pid,
        monitor: p.spec.monitor.clone(),
        run_dir: p.dir.path.clone(),
        temporary: p.dir.temporary,
    };
    std::fs::write(record_path(pid_file), serde_json::to_vec(&rec)?)?;
    Ok(())
}

/// `gwos stop`: ACPI power button through the monitor, SIGKILL after `grace`.
pub fn stop(a: StopArgs) -> Result<u8> {
    let pid_file = if a.target.is_dir() {
        a.target.join("qemu.pid")
    } else {
        a.target.clone()
    };
    let text = std::fs::read_to_string(&pid_file).with_context(|| {
        format!(
            "reading pid file {} (is the run detached and still recorded?)",
            pid_file.display()
        )
    })?;
    let pid: u32 = text
        .trim()
        .parse()
        .with_context(|| format!("{}: not a pid: {:?}", pid_file.display(), text.trim()))?;
    let rec_file = record_path(&pid_file);
    let rec: RunRecord = serde_json::from_slice(
        &std::fs::read(&rec_file).with_context(|| format!("reading {}", rec_file.display()))?,
    )
    .with_context(|| format!("{}", rec_file.display()))?;
    if rec.pid != pid {
        bail!(
            "{} says pid {pid} but {} says {}; not stopping anything",
            pid_file.display(),
            rec_file.display(),
            rec.pid
        );
    }
    let how = if !vm::alive(pid) {
        "was not running".to_string()
    } else {
        let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
        if !comm.starts_with("qemu") {
            bail!(
                "pid {pid} is {:?}, not QEMU; not stopping it (stale pid file {})",
                comm.trim(),
                pid_file.display()
            );
        }
        let t = Instant::now();
        let sent = vm::monitor_command(&rec.monitor, "system_powerdown");
        while vm::alive(pid) && t.elapsed() < Duration::from_secs(a.grace) && sent.is_ok() {
            std::thread::sleep(Duration::from_millis(200));
        }
        if vm::alive(pid) {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid as i32),
                nix::sys::signal::Signal::SIGKILL,
            );
            let k = Instant::now();
            while vm::alive(pid) && k.elapsed() < Duration::from_secs(5) {
                std::thread::sleep(Duration::from_millis(100));
            }
            match sent {
                Ok(_) => format!("did not power off within {} s: killed", a.grace),
                Err(e) => format!("monitor unreachable ({e:#}): killed"),
            }
        } else {
            format!("powered off in {:.1} s", t.elapsed().as_secs_f64())
        }
    };
    if vm::alive(pid) {
        bail!("pid {pid} is still running after SIGKILL");
    }
    let _ = std::fs::remove_file(&pid_file);
    let _ = std::fs::remove_file(&rec_file);
    if rec.temporary {
        std::fs::remove_dir_all(&rec.run_dir)
            .with_context(|| format!("removing {}", rec.run_dir.display()))?;
    } else {
        let _ = std::fs::remove_file(rec.monitor);
    }
    eprintln!("gwos stop: QEMU pid {pid} {how}");
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nic_arguments() {
        let n: NicArg = "model=vmxnet3,mac=52:54:00:00:00:02".parse().unwrap();
        assert!(
            matches!(&n, NicArg::Nic { model, mac: Some(m), tap: None } if model == "vmxnet3" && m == "52:54:00:00:00:02"),
            "{n:?}"
        );
        assert!(
            matches!("e1000".parse::<NicArg>().unwrap(), NicArg::Nic { model, .. } if model == "e1000")
        );
        assert!(matches!("none".parse::<NicArg>().unwrap(), NicArg::None));
        let e = "model=e1000,speed=10"
            .parse::<NicArg>()
            .unwrap_err()
            .to_string();
        assert!(e.contains("\"speed=10\" is not model="), "{e}");
    }
}
