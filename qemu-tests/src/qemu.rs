//! One QEMU (TCG) guest: started from a disk image copy, serial console to a
//! file, a monitor socket; killed on drop.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

pub const OVMF_CODE: &str = "/usr/share/OVMF/OVMF_CODE_4M.fd";
pub const OVMF_VARS: &str = "/usr/share/OVMF/OVMF_VARS_4M.fd";

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
    child: Child,
    pub console: PathBuf,
    monitor: PathBuf,
    pub started: Instant,
    _dir: tempfile::TempDir,
}

impl Qemu {
    /// Boots `disk` (use a copy: the guest may write to it). With `netns`,
    /// QEMU runs inside that namespace and the guest NIC is its TAP device;
    /// otherwise the guest's NIC is on an isolated user-mode network.
    pub fn start(disk: &Path, boot: Boot, netns: Option<&crate::NetNs>) -> Result<Qemu> {
        Self::start_opts(disk, boot, netns, false)
    }

    /// Like [`Qemu::start`], but a guest reboot restarts the machine (same
    /// firmware variables, same console file) instead of ending QEMU.
    pub fn start_rebooting(disk: &Path, boot: Boot) -> Result<Qemu> {
        Self::start_opts(disk, boot, None, true)
    }

    fn start_opts(
        disk: &Path,
        boot: Boot,
        netns: Option<&crate::NetNs>,
        allow_reboot: bool,
    ) -> Result<Qemu> {
        crate::need_tool("qemu-system-x86_64");
        let dir = tempfile::Builder::new().prefix("gwos-qemu").tempdir()?;
        let console = dir.path().join("console.log");
        let monitor = dir.path().join("monitor.sock");
        let mut args: Vec<String> = vec![
            "-machine".into(),
            "q35".into(),
            "-accel".into(),
            "tcg".into(),
            "-m".into(),
            "512".into(),
            "-smp".into(),
            "1".into(),
            "-display".into(),
            "none".into(),
            "-vga".into(),
            "none".into(),
            "-serial".into(),
            format!("file:{}", console.display()),
            "-monitor".into(),
            format!("unix:{},server,nowait", monitor.display()),
            "-drive".into(),
            format!("file={},format=raw,if=virtio", disk.display()),
        ];
        if !allow_reboot {
            args.push("-no-reboot".into());
        }
        match &boot {
            Boot::Ovmf => {
                let vars = dir.path().join("OVMF_VARS.fd");
                std::fs::copy(OVMF_VARS, &vars)
                    .with_context(|| format!("{OVMF_VARS} missing (Debian package ovmf)"))?;
                args.extend([
                    "-drive".into(),
                    format!("if=pflash,format=raw,unit=0,readonly=on,file={OVMF_CODE}"),
                ]);
                args.extend([
                    "-drive".into(),
                    format!("if=pflash,format=raw,unit=1,file={}", vars.display()),
                ]);
            }
            Boot::Direct {
                kernel,
                initrd,
                append,
            } => {
                args.extend([
                    "-kernel".into(),
                    kernel.display().to_string(),
                    "-initrd".into(),
                    initrd.display().to_string(),
                    "-append".into(),
                    append.clone(),
                ]);
            }
        }
        match netns {
            Some(ns) => {
                args.extend([
                    "-netdev".into(),
                    format!("tap,id=n0,ifname={},script=no,downscript=no", ns.tap),
                ]);
                args.extend([
                    "-device".into(),
                    "virtio-net-pci,netdev=n0,mac=52:54:00:12:34:56".into(),
                ]);
            }
            // A NIC on an isolated user-mode network (restrict=on: nothing reaches the host
            // or beyond), so images whose site config names an address still find eth0.
            None => args.extend([
                "-nic".into(),
                "user,model=virtio-net-pci,restrict=on,net=10.0.2.0/24".into(),
            ]),
        }
        let mut cmd = match netns {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", &ns.name, "qemu-system-x86_64"]);
                c
            }
            None => Command::new("qemu-system-x86_64"),
        };
        let child = cmd
            .args(&args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .context("starting qemu")?;
        Ok(Qemu {
            child,
            console,
            monitor,
            started: Instant::now(),
            _dir: dir,
        })
    }

    pub fn console_text(&self) -> String {
        String::from_utf8_lossy(&std::fs::read(&self.console).unwrap_or_default()).into_owned()
    }

    /// Has QEMU exited (the guest powered off, rebooted with -no-reboot, or crashed)?
    pub fn exited(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(Some(_)))
    }

    fn tail(&self) -> String {
        let t = self.console_text();
        let lines: Vec<&str> = t.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }

    /// Waits until the console contains `pattern` (after byte `from`); returns the console text.
    pub fn wait_for_from(
        &mut self,
        from: usize,
        pattern: &str,
        timeout: Duration,
    ) -> Result<String> {
        let start = Instant::now();
        loop {
            let t = self.console_text();
            if t.get(from..).is_some_and(|s| s.contains(pattern)) {
                return Ok(t);
            }
            if self.exited() {
                let t = self.console_text();
                if t.get(from..).is_some_and(|s| s.contains(pattern)) {
                    return Ok(t);
                }
                bail!(
                    "QEMU exited before {pattern:?} appeared; console tail:\n{}",
                    self.tail()
                );
            }
            if start.elapsed() > timeout {
                bail!(
                    "{pattern:?} not on the console within {}s; console tail:\n{}",
                    timeout.as_secs(),
                    self.tail()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    pub fn wait_for(&mut self, pattern: &str, timeout: Duration) -> Result<String> {
        self.wait_for_from(0, pattern, timeout)
    }

    /// Waits for QEMU to exit (guest powered off); returns the console text.
    pub fn wait_exit(&mut self, timeout: Duration) -> Result<String> {
        let start = Instant::now();
        while !self.exited() {
            if start.elapsed() > timeout {
                bail!(
                    "QEMU still running after {}s; console tail:\n{}",
                    timeout.as_secs(),
                    self.tail()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Ok(self.console_text())
    }

    /// Sends one human monitor command (e.g. `system_powerdown`).
    pub fn monitor(&self, cmd: &str) -> Result<()> {
        let mut s = std::os::unix::net::UnixStream::connect(&self.monitor)
            .context("QEMU monitor socket")?;
        s.write_all(format!("{cmd}\n").as_bytes())?;
        std::thread::sleep(Duration::from_millis(300));
        Ok(())
    }
}

impl Drop for Qemu {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Boot figures read from the console: (kernel → PID 1 ms, PID 1 → ready ms).
pub fn boot_times(console: &str) -> Option<(u64, u64)> {
    let k = console.lines().find_map(|l| {
        l.split("stage 1 (initramfs) pid 1 started at ")
            .nth(1)?
            .split(' ')
            .next()?
            .parse()
            .ok()
    })?;
    let r = console
        .lines()
        .find_map(|l| l.split("boot_ms=").nth(1)?.trim().parse().ok())?;
    Some((k, r))
}
