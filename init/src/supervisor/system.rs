//! The real [`Effects`]: cgroups, the state dir, `gwosd run <name>` in its
//! sandbox, signals, the console, and health probes on their own threads so
//! that a service that never answers cannot stall PID 1's main loop.

use std::process::Command;
use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::Arc;
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use super::effects::{Effects, ProbeToken};
use super::table::{self, Service};
use crate::{cgroup, console, sandbox};

/// How long one `health` call may take (connect, write and read each).
const PROBE_TIMEOUT: Duration = Duration::from_secs(1);

pub struct SystemEffects {
    exe: String,
    probes: ThreadProbes,
    /// `gwos.test=vpnfail` (QEMU suite only): the vpn fails at every start.
    vpn_fails: bool,
    /// Services' stdout/stderr pipes, drained by PID 1 (F2; init/src/events.rs).
    events: crate::events::Events,
}

impl SystemEffects {
    /// `exe` is the multi-call binary services are started from (`/sbin/init`).
    pub fn new(exe: &str) -> Self {
        let vpn_fails = crate::cmdline::test_flag("vpnfail");
        if vpn_fails {
            console::say("TEST MODE (gwos.test=vpnfail): the vpn fails at every start");
        }
        Self {
            exe: exe.into(),
            probes: ThreadProbes::new(Arc::new(health)),
            vpn_fails,
            events: Default::default(),
        }
    }
}

impl Effects for SystemEffects {
    fn now(&self) -> Instant {
        Instant::now()
    }

    fn spawn(&mut self, svc: &Service) -> anyhow::Result<Pid> {
        if self.vpn_fails && svc.name == "vpn" {
            anyhow::bail!("TEST MODE (gwos.test=vpnfail): not starting the vpn");
        }
        let (stdout, stderr) = self.events.pipes(&svc.name)?;
        spawn(&self.exe, svc, stdout, stderr)
    }

    fn kill_group(&mut self, name: &str) {
        cgroup::kill_all(name);
    }

    fn signal(&mut self, pid: Pid, sig: Signal) {
        let _ = kill(pid, sig);
    }

    fn probe(&mut self, name: &str, token: ProbeToken) {
        self.probes.start(name, token);
    }

    fn probe_results(&mut self) -> Vec<(ProbeToken, bool)> {
        self.probes.results()
    }

    fn say(&mut self, line: &str) {
        console::say(line);
    }
}

/// Starts one service: its cgroup, its state dir, then `gwosd run <name>`
/// with the sandbox spec in the environment.
fn spawn(
    exe: &str,
    s: &Service,
    stdout: std::process::Stdio,
    stderr: std::process::Stdio,
) -> anyhow::Result<Pid> {
    let mem = table::memory_value(&s.memory_max)?;
    cgroup::prepare(&s.name, &mem, s.pids_max, s.cpu_weight)?;
    crate::state::prepare_service_dir(std::path::Path::new("/var"), &s.name, s.uid, s.gid)?;
    let spec = sandbox::Spec {
        name: s.name.clone(),
        uid: s.uid,
        gid: s.gid,
        caps: s.caps.clone(),
        writable: s.writable.clone(),
        nofile: s.nofile,
    };
    let child = Command::new(exe)
        .args(["run", &s.name])
        .env_clear()
        .env("PATH", "/usr/bin:/sbin")
        .env(sandbox::ENV, serde_json::to_string(&spec)?)
        .stdout(stdout)
        .stderr(stderr)
        .spawn()?;
    let pid = i32::try_from(child.id())
        .map_err(|_| anyhow::anyhow!("pid {} does not fit a pid_t", child.id()))?;
    Ok(Pid::from_raw(pid))
}

/// `health` over the service's socket: `{"ok":true,"result":{"healthy":true}}`.
pub fn health(name: &str) -> bool {
    let p =
        gwos_core::context::socket_path(std::path::Path::new(gwos_core::context::RUN_DIR), name);
    match gwos_core::rpc::call(&p, "health", serde_json::json!({}), None, PROBE_TIMEOUT) {
        Ok(r) => r.ok && r.result.get("healthy").and_then(|v| v.as_bool()) == Some(true),
        Err(_) => false,
    }
}

/// The probe check: true when the named service answered healthy.
pub type Check = Arc<dyn Fn(&str) -> bool + Send + Sync>;

/// Runs each probe on a thread of its own and hands the answers back over a
/// channel; [`ThreadProbes::start`] never waits. The supervisor keeps at most
/// one probe per unit in flight, so the threads are bounded by the table.
pub struct ThreadProbes {
    check: Check,
    tx: Sender<(ProbeToken, bool)>,
    rx: Receiver<(ProbeToken, bool)>,
}

impl ThreadProbes {
    pub fn new(check: Check) -> Self {
        let (tx, rx) = channel();
        Self { check, tx, rx }
    }

    pub fn start(&self, name: &str, token: ProbeToken) {
        let (check, tx, name) = (self.check.clone(), self.tx.clone(), name.to_owned());
        let spawned = std::thread::Builder::new()
            .name(format!("probe-{name}"))
            .spawn(move || {
                let ok = check(&name);
                let _ = tx.send((token, ok));
            });
        if let Err(e) = spawned {
            console::say(&format!("health probe thread could not start: {e}"));
            let _ = self.tx.send((token, false));
        }
    }

    pub fn results(&self) -> Vec<(ProbeToken, bool)> {
        self.rx.try_iter().collect()
    }
}
