//! A running QEMU guest: started from a [`Spec`], watched through its
//! console file, driven through its monitor socket, killed on drop unless
//! detached.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use super::ready::{self, Failure, Ready};
use super::spec::{Console, Spec};

pub struct Vm {
    child: Option<Child>,
    pub pid: u32,
    /// The console file (`None` when the console is this terminal).
    pub console: Option<PathBuf>,
    pub monitor: PathBuf,
    pub started: Instant,
}

/// How QEMU's own stdio is wired.
pub enum Stdio3 {
    /// Inherit the terminal (a person at the keyboard).
    Terminal,
    /// stdin closed, stdout/stderr to this file, own process group (survives the caller).
    Detached(PathBuf),
    /// stdin closed, stdout dropped, stderr kept for the error message.
    Quiet,
}

impl Vm {
    pub fn spawn(spec: &Spec, io: Stdio3) -> Result<Vm> {
        let argv = spec.command_line()?;
        crate::tools::find("qemu-system-x86_64").context(
            "QEMU missing: install the Debian package qemu-system-x86 (apt-get install qemu-system-x86)",
        )?;
        let mut cmd = Command::new(&argv[0]);
        cmd.args(&argv[1..]);
        match io {
            Stdio3::Terminal => {}
            Stdio3::Detached(log) => {
                let f = std::fs::File::create(&log)
                    .with_context(|| format!("creating {}", log.display()))?;
                cmd.stdin(Stdio::null()).stdout(f.try_clone()?).stderr(f);
                std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
            }
            Stdio3::Quiet => {
                cmd.stdin(Stdio::null())
                    .stdout(Stdio::null())
                    .stderr(Stdio::null());
            }
        }
        let child = cmd
            .spawn()
            .with_context(|| format!("starting {}", argv.join(" ")))?;
        Ok(Vm {
            pid: child.id(),
            child: Some(child),
            console: match &spec.console {
                Console::File(f) => Some(f.clone()),
                Console::Stdio => None,
            },
            monitor: spec.monitor.clone(),
            started: Instant::now(),
        })
    }

    pub fn console_text(&self) -> String {
        self.console
            .as_ref()
            .and_then(|c| std::fs::read(c).ok())
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default()
    }

    /// Has QEMU exited (guest powered off, rebooted under -no-reboot, or crashed)?
    pub fn exited(&mut self) -> bool {
        match &mut self.child {
            Some(c) => matches!(c.try_wait(), Ok(Some(_))),
            None => !alive(self.pid),
        }
    }

    /// Waits for QEMU in the foreground; its exit code.
    pub fn wait(&mut self) -> Result<i32> {
        let c = self.child.as_mut().context("not QEMU's parent")?;
        Ok(c.wait()?.code().unwrap_or(1))
    }

    /// Lets QEMU run on after this handle is gone; its pid.
    pub fn detach(mut self) -> u32 {
        self.child = None;
        self.pid
    }

    /// Waits for the ready line; on failure the reason, from the console.
    pub fn wait_ready(&mut self, timeout: Duration) -> std::result::Result<Ready, Failure> {
        loop {
            let c = self.console_text();
            if let Some(r) = ready::find_ready(&c) {
                return Ok(r);
            }
            if self.exited() {
                let c = self.console_text();
                return ready::find_ready(&c).ok_or_else(|| ready::classify_exit(&c));
            }
            if let Some(f) = ready::failure_in(&c) {
                // Give the guest a moment to print the rest (panic trace, power-off).
                let t = Instant::now();
                while !self.exited() && t.elapsed() < Duration::from_secs(5) {
                    std::thread::sleep(Duration::from_millis(100));
                }
                return Err(ready::failure_in(&self.console_text()).unwrap_or(f));
            }
            if self.started.elapsed() > timeout {
                return Err(Failure::Timeout(timeout));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Waits until the console contains `pattern` after byte `from`; the console text.
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
                    ready::tail(&t, 40)
                );
            }
            if start.elapsed() > timeout {
                bail!(
                    "{pattern:?} not on the console within {}s; console tail:\n{}",
                    timeout.as_secs(),
                    ready::tail(&t, 40)
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Waits for QEMU to exit; the console text.
    pub fn wait_exit(&mut self, timeout: Duration) -> Result<String> {
        let start = Instant::now();
        while !self.exited() {
            if start.elapsed() > timeout {
                bail!(
                    "QEMU still running after {}s; console tail:\n{}",
                    timeout.as_secs(),
                    ready::tail(&self.console_text(), 40)
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Ok(self.console_text())
    }

    /// One human-monitor command (`system_powerdown`, `device_add ...`); its output.
    pub fn monitor(&self, cmd: &str) -> Result<String> {
        monitor_command(&self.monitor, cmd)
    }
}

impl Drop for Vm {
    fn drop(&mut self) {
        if let Some(c) = &mut self.child {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Is `pid` a live (not zombie) process?
pub fn alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // "pid (comm) S ...": the state follows the last ')'.
        Ok(s) => s
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .is_some_and(|st| st != "Z" && st != "X"),
        Err(_) => false,
    }
}

/// Sends `cmd` to a QEMU human monitor socket and returns what it printed
/// before the next prompt.
pub fn monitor_command(socket: &Path, cmd: &str) -> Result<String> {
    let mut s = std::os::unix::net::UnixStream::connect(socket)
        .with_context(|| format!("QEMU monitor socket {}", socket.display()))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    let read_prompt = |s: &mut std::os::unix::net::UnixStream| -> Result<String> {
        let mut got = Vec::new();
        let mut buf = [0u8; 1024];
        while !got.ends_with(b"(qemu) ") {
            let n = s.read(&mut buf).context("reading the QEMU monitor")?;
            if n == 0 {
                break;
            }
            got.extend_from_slice(&buf[..n]);
        }
        Ok(String::from_utf8_lossy(&got).into_owned())
    };
    read_prompt(&mut s)?;
    s.write_all(format!("{cmd}\n").as_bytes())?;
    let out = read_prompt(&mut s).unwrap_or_default();
    // The monitor echoes the command (with terminal escapes) before its output.
    let out = out.trim_end_matches("(qemu) ");
    let body = out.split_once('\n').map(|(_, b)| b).unwrap_or("");
    Ok(body.replace('\r', "").trim().to_string())
}
