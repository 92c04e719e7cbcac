//! A network namespace with a TAP device for the guest. The host side of the
//! "remote network": the namespace holds the guest's gateway address and
//! extra addresses (backend, scanner) on the same TAP link. Deleted on drop.

use std::process::{Command, Output};

use anyhow::{ensure, Context, Result};

pub struct NetNs {
    pub name: String,
    pub tap: String,
}

fn ip(args: &[&str]) -> Result<()> {
    let o = Command::new("ip")
        .args(args)
        .output()
        .context("running ip")?;
    ensure!(
        o.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&o.stderr)
    );
    Ok(())
}

impl NetNs {
    /// Creates namespace `gwq<pid>-<tag>` with `tap0` holding `addrs` (CIDR strings).
    pub fn new(tag: &str, addrs: &[&str]) -> Result<Self> {
        crate::need_tool("ip");
        let name = format!("gwq{}-{tag}", std::process::id());
        ip(&["netns", "add", &name])?;
        let ns = NetNs {
            name,
            tap: "tap0".into(),
        };
        ip(&["-n", &ns.name, "link", "set", "lo", "up"])?;
        ip(&[
            "-n", &ns.name, "tuntap", "add", "dev", &ns.tap, "mode", "tap",
        ])?;
        for a in addrs {
            ip(&["-n", &ns.name, "addr", "add", a, "dev", &ns.tap])?;
        }
        ip(&["-n", &ns.name, "link", "set", &ns.tap, "up"])?;
        Ok(ns)
    }

    /// Another TAP device `name` in this namespace holding `addrs`.
    pub fn add_tap(&self, name: &str, addrs: &[&str]) -> Result<()> {
        ip(&[
            "-n", &self.name, "tuntap", "add", "dev", name, "mode", "tap",
        ])?;
        for a in addrs {
            ip(&["-n", &self.name, "addr", "add", a, "dev", name])?;
        }
        ip(&["-n", &self.name, "link", "set", name, "up"])
    }

    /// A second namespace routed through this one (a remote client's site):
    /// a veth pair, `outer` (CIDR) on this side, `inner` (CIDR) in the new
    /// namespace with its default route via `outer`; this namespace forwards.
    pub fn behind(&self, tag: &str, outer: &str, inner: &str) -> Result<NetNs> {
        let name = format!("gwq{}-{tag}", std::process::id());
        ip(&["netns", "add", &name])?;
        let ns = NetNs {
            name,
            tap: String::new(),
        };
        ip(&[
            "-n", &self.name, "link", "add", "vx0", "type", "veth", "peer", "name", "vx1", "netns",
            &ns.name,
        ])?;
        ip(&["-n", &self.name, "addr", "add", outer, "dev", "vx0"])?;
        ip(&["-n", &self.name, "link", "set", "vx0", "up"])?;
        ip(&["-n", &ns.name, "link", "set", "lo", "up"])?;
        ip(&["-n", &ns.name, "addr", "add", inner, "dev", "vx1"])?;
        ip(&["-n", &ns.name, "link", "set", "vx1", "up"])?;
        let via = outer.split('/').next().unwrap_or(outer);
        ip(&["-n", &ns.name, "route", "add", "default", "via", via])?;
        let o = self.exec("sysctl", &["-qw", "net.ipv4.ip_forward=1"])?;
        ensure!(
            o.status.success(),
            "enabling forwarding in {}: {}",
            self.name,
            String::from_utf8_lossy(&o.stderr)
        );
        Ok(ns)
    }

    /// Runs `script` with `sh -c` inside the namespace; (success, stdout+stderr).
    pub fn sh(&self, script: &str) -> (bool, String) {
        match self.exec("sh", &["-c", script]) {
            Ok(o) => (
                o.status.success(),
                format!(
                    "{}{}",
                    String::from_utf8_lossy(&o.stdout),
                    String::from_utf8_lossy(&o.stderr)
                ),
            ),
            Err(e) => (false, format!("{e:#}")),
        }
    }

    /// Calls control `cmd` (request `{}`) on the guest 10.0.2.15 from `src` with
    /// the suite's backend key (qemu-tests/fixtures), through OpenSSH.
    pub fn control(&self, key: &std::path::Path, src: &str, cmd: &str) -> (bool, String) {
        self.sh(&format!("echo '{{}}' | {}", control_ssh(key, src, cmd)))
    }

    /// Like [`NetNs::control`], with the request body read from `body` (a
    /// file, so any JSON passes without shell quoting).
    pub fn control_file(
        &self,
        key: &std::path::Path,
        src: &str,
        cmd: &str,
        body: &std::path::Path,
    ) -> (bool, String) {
        self.sh(&format!(
            "{} <{}",
            control_ssh(key, src, cmd),
            body.display()
        ))
    }

    /// Runs a command inside the namespace.
    pub fn exec(&self, cmd: &str, args: &[&str]) -> Result<Output> {
        Command::new("ip")
            .args(["netns", "exec", &self.name, cmd])
            .args(args)
            .output()
            .with_context(|| format!("running {cmd} in {}", self.name))
    }
}

/// The OpenSSH command line that calls control `cmd` on the guest from `src`.
fn control_ssh(key: &std::path::Path, src: &str, cmd: &str) -> String {
    format!("timeout 90 {}", control_ssh_argv(key, src, cmd).join(" "))
}

/// The OpenSSH client's argv for control `cmd` on the guest from `src`.
pub(crate) fn control_ssh_argv(key: &std::path::Path, src: &str, cmd: &str) -> Vec<String> {
    let mut v: Vec<String> = ["ssh", "-p", "2222", "-i"].map(String::from).to_vec();
    v.push(key.display().to_string());
    for o in [
        format!("BindAddress={src}"),
        "StrictHostKeyChecking=no".into(),
        "UserKnownHostsFile=/dev/null".into(),
        "BatchMode=yes".into(),
        "IdentitiesOnly=yes".into(),
        "LogLevel=ERROR".into(),
        "ConnectTimeout=20".into(),
    ] {
        v.push("-o".into());
        v.push(o);
    }
    v.push("gwctl@10.0.2.15".into());
    v.push(cmd.into());
    v
}

impl Drop for NetNs {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}
