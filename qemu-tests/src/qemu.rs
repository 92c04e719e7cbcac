//! The suite's guests, on the one launcher in `gwos_image::run`: a [`Boot`]
//! and an optional [`crate::NetNs`] become a [`Spec`] (serial console to a
//! file, a monitor socket, 512 MiB, one vCPU); killed on drop.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::Result;
use gwos_image::run::{
    self, Console, Disk, DiskFormat, DiskModel, Firmware, NetBackend, Nic, Spec, Stdio3, Vm,
};

pub use gwos_image::run::spec::{OVMF_CODE, OVMF_VARS};

/// How the guest boots.
pub enum Boot {
    /// UEFI firmware → systemd-boot → UKI (what bare metal does).
    Ovmf,
    /// `-kernel/-initrd/-append` from a slot directory (faster; the command line can be edited).
    Direct {
        kernel: PathBuf,
        initrd: PathBuf,
        append: String,
    },
}

pub struct Qemu {
    vm: Vm,
    pub console: PathBuf,
    pub started: Instant,
    _dir: tempfile::TempDir,
}

/// KVM when usable (or `GWOS_ACCEL=kvm|tcg`), as `gwos run` decides.
fn accel() -> run::Accel {
    match std::env::var("GWOS_ACCEL").as_deref() {
        Ok("tcg") => run::Accel::Tcg,
        Ok("kvm") => run::Accel::Kvm,
        _ => run::detect_accel().0,
    }
}

impl Qemu {
    /// Boots `disk` (use a copy: the guest writes to it). With `netns`,
    /// QEMU runs inside that namespace and the guest NIC is its TAP device;
    /// otherwise the guest's NIC is on an isolated user-mode network.
    pub fn start(disk: &Path, boot: Boot, netns: Option<&crate::NetNs>) -> Result<Qemu> {
        Self::start_with(disk, boot, netns, |_| {})
    }

    /// Like [`Qemu::start`] (no test network), but a guest reboot restarts the
    /// machine (same firmware variables, same console file) instead of ending QEMU.
    pub fn start_rebooting(disk: &Path, boot: Boot) -> Result<Qemu> {
        Self::start_with(disk, boot, None, |s| s.allow_reboot = true)
    }

    /// [`Qemu::start`], with `adjust` changing the guest (NICs, disk controller, memory) first.
    pub fn start_with(
        disk: &Path,
        boot: Boot,
        netns: Option<&crate::NetNs>,
        adjust: impl FnOnce(&mut Spec),
    ) -> Result<Qemu> {
        crate::need_tool("qemu-system-x86_64");
        let dir = tempfile::Builder::new().prefix("gwos-qemu").tempdir()?;
        let console = dir.path().join("console.log");
        let firmware = match boot {
            Boot::Ovmf => {
                let vars = dir.path().join("OVMF_VARS.fd");
                let (code, template) = run::spec::ovmf()?;
                std::fs::copy(template, &vars)?;
                Firmware::Ovmf { code, vars }
            }
            Boot::Direct {
                kernel,
                initrd,
                append,
            } => Firmware::Direct {
                kernel,
                initrd,
                append,
            },
        };
        let nic = match netns {
            Some(ns) => Nic {
                model: "virtio-net-pci".into(),
                mac: Some("52:54:00:12:34:56".into()),
                backend: NetBackend::Tap {
                    ifname: ns.tap.clone(),
                },
            },
            // Isolated user-mode network (restrict=on: nothing reaches the host or
            // beyond), so images whose site config names an address still find a NIC.
            None => Nic {
                model: "virtio-net-pci".into(),
                mac: None,
                backend: NetBackend::User {
                    forwards: vec![],
                    restrict: true,
                },
            },
        };
        let mut spec = Spec {
            accel: accel(),
            memory_mib: 512,
            cpus: 1,
            firmware,
            disks: vec![Disk {
                path: disk.to_path_buf(),
                format: DiskFormat::Raw,
                model: DiskModel::VirtioBlk,
            }],
            nics: vec![nic],
            console: Console::File(console.clone()),
            monitor: dir.path().join("monitor.sock"),
            netns: netns.map(|n| n.name.clone()),
            hotplug_ports: 0,
            allow_reboot: false,
        };
        adjust(&mut spec);
        let vm = Vm::spawn(&spec, Stdio3::Quiet)?;
        Ok(Qemu {
            started: vm.started,
            vm,
            console,
            _dir: dir,
        })
    }

    pub fn console_text(&self) -> String {
        self.vm.console_text()
    }

    /// Has QEMU exited (the guest powered off, rebooted with -no-reboot, or crashed)?
    pub fn exited(&mut self) -> bool {
        self.vm.exited()
    }

    /// Waits until the console contains `pattern` (after byte `from`); returns the console text.
    pub fn wait_for_from(
        &mut self,
        from: usize,
        pattern: &str,
        timeout: Duration,
    ) -> Result<String> {
        self.vm.wait_for_from(from, pattern, timeout)
    }

    pub fn wait_for(&mut self, pattern: &str, timeout: Duration) -> Result<String> {
        self.vm.wait_for_from(0, pattern, timeout)
    }

    /// Waits for QEMU to exit (guest powered off); returns the console text.
    pub fn wait_exit(&mut self, timeout: Duration) -> Result<String> {
        self.vm.wait_exit(timeout)
    }

    /// Sends one human monitor command (e.g. `system_powerdown`); its output.
    pub fn monitor(&self, cmd: &str) -> Result<String> {
        self.vm.monitor(cmd)
    }

    /// ACPI power button through the monitor; the guest must shut down
    /// cleanly ("gwos: powering off") within 90 s. Returns the console.
    pub fn power_off(&mut self) -> Result<String> {
        self.monitor("system_powerdown")?;
        let c = self.wait_exit(Duration::from_secs(90))?;
        anyhow::ensure!(c.contains("gwos: powering off"), "no clean power-off:\n{c}");
        Ok(c)
    }
}

/// Boot figures read from the console: (kernel → PID 1 ms, PID 1 → ready ms).
pub fn boot_times(console: &str) -> Option<(u64, u64)> {
    let r = run::ready::find_ready(console)?;
    Some((r.kernel_to_pid1_ms?, r.boot_ms))
}
