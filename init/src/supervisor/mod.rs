//! The supervisor: starts services from the table in dependency order, each
//! as `gwosd run <name>` in its sandbox, restarts them with exponential
//! backoff, marks a flapping service failed (PID 1 carries on), polls each
//! service's `health` RPC, and reports when every required service is healthy.

pub mod table;

use std::collections::{HashMap, VecDeque};
use std::process::Command;
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use crate::{cgroup, console, sandbox};
pub use table::{Service, Table};

pub const BACKOFF_START: Duration = Duration::from_millis(500);
pub const BACKOFF_MAX: Duration = Duration::from_secs(30);
pub const FLAP_COUNT: usize = 5;
pub const FLAP_WINDOW: Duration = Duration::from_secs(60);
const HEALTH_EVERY: Duration = Duration::from_millis(500);
const HEALTH_EVERY_HEALTHY: Duration = Duration::from_secs(5);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    Waiting,
    Running,
    Backoff,
    Failed,
    Stopped,
}

pub struct Unit {
    pub svc: Service,
    pub status: Status,
    pub pid: Option<Pid>,
    pub healthy: bool,
    failures: VecDeque<Instant>,
    backoff: Duration,
    next_start: Instant,
    next_health: Instant,
    pub restarts: u32,
}

pub struct Supervisor {
    pub units: Vec<Unit>,
    exe: String,
    pub stopping: bool,
    /// Services' stdout/stderr pipes, drained by PID 1 (F2; init/src/events.rs).
    events: crate::events::Events,
}

/// Records a failure; true when the service has failed FLAP_COUNT times within FLAP_WINDOW.
pub fn flapping(failures: &mut VecDeque<Instant>, now: Instant) -> bool {
    failures.push_back(now);
    while failures
        .front()
        .is_some_and(|t| now.duration_since(*t) > FLAP_WINDOW)
    {
        failures.pop_front();
    }
    failures.len() >= FLAP_COUNT
}

impl Supervisor {
    pub fn new(table: &Table, exe: &str) -> anyhow::Result<Self> {
        let now = Instant::now();
        let units = table
            .order()?
            .into_iter()
            .map(|s| Unit {
                svc: s.clone(),
                status: Status::Waiting,
                pid: None,
                healthy: false,
                failures: VecDeque::new(),
                backoff: BACKOFF_START,
                next_start: now,
                next_health: now,
                restarts: 0,
            })
            .collect();
        Ok(Self {
            units,
            exe: exe.into(),
            stopping: false,
            events: Default::default(),
        })
    }

    fn deps_healthy(&self, s: &Service) -> bool {
        s.after
            .iter()
            .all(|a| self.units.iter().any(|u| &u.svc.name == a && u.healthy))
    }

    /// Starts what is due, polls health. Call often (every ~200 ms).
    pub fn tick(&mut self) {
        if self.stopping {
            return;
        }
        let now = Instant::now();
        for i in 0..self.units.len() {
            let due = matches!(self.units[i].status, Status::Waiting | Status::Backoff)
                && self.units[i].next_start <= now;
            if due && self.deps_healthy(&self.units[i].svc.clone()) {
                self.start(i);
            }
            let u = &mut self.units[i];
            if u.status == Status::Running && u.next_health <= now {
                let ok = health(&u.svc.name);
                if ok != u.healthy {
                    console::say(&format!(
                        "service {} {}",
                        u.svc.name,
                        if ok { "healthy" } else { "unhealthy" }
                    ));
                }
                u.healthy = ok;
                u.next_health = now
                    + if ok {
                        HEALTH_EVERY_HEALTHY
                    } else {
                        HEALTH_EVERY
                    };
            }
        }
    }

    fn start(&mut self, i: usize) {
        let u = &mut self.units[i];
        let s = &u.svc;
        let res = (|| -> anyhow::Result<u32> {
            let mem = table::memory_value(&s.memory_max)?;
            cgroup::prepare(&s.name, &mem, s.pids_max, s.cpu_weight)?;
            prepare_state_dir(&s.name, s.uid, s.gid)?;
            let spec = sandbox::Spec {
                name: s.name.clone(),
                uid: s.uid,
                gid: s.gid,
                caps: s.caps.clone(),
                writable: s.writable.clone(),
                nofile: s.nofile,
            };
            let (stdout, stderr) = self.events.pipes(&s.name)?;
            let child = Command::new(&self.exe)
                .args(["run", &s.name])
                .env_clear()
                .env("PATH", "/usr/bin:/sbin")
                .env(sandbox::ENV, serde_json::to_string(&spec)?)
                .stdout(stdout)
                .stderr(stderr)
                .spawn()?;
            Ok(child.id())
        })();
        match res {
            Ok(pid) => {
                console::say(&format!(
                    "service {} started pid {pid} (uid {})",
                    s.name, s.uid
                ));
                u.pid = Some(Pid::from_raw(pid as i32));
                u.status = Status::Running;
                u.healthy = false;
                u.next_health = Instant::now() + Duration::from_millis(100);
            }
            Err(e) => {
                console::say(&format!("service {} could not start: {e:#}", s.name));
                self.failed_once(i);
            }
        }
    }

    fn failed_once(&mut self, i: usize) {
        let now = Instant::now();
        let u = &mut self.units[i];
        u.pid = None;
        u.healthy = false;
        if flapping(&mut u.failures, now) {
            u.status = Status::Failed;
            console::say(&format!(
                "service {} FAILED: {FLAP_COUNT} failures within {}s, not restarting",
                u.svc.name,
                FLAP_WINDOW.as_secs()
            ));
            return;
        }
        u.status = Status::Backoff;
        u.next_start = now + u.backoff;
        console::say(&format!(
            "service {} restarting in {} ms",
            u.svc.name,
            u.backoff.as_millis()
        ));
        u.backoff = (u.backoff * 2).min(BACKOFF_MAX);
        u.restarts += 1;
    }

    /// A child exited: if it was a service, decide about its restart.
    pub fn on_exit(&mut self, pid: Pid, how: &str, success: bool) {
        let Some(i) = self.units.iter().position(|u| u.pid == Some(pid)) else {
            return;
        };
        cgroup::kill_all(&self.units[i].svc.name);
        console::say(&format!(
            "service {} (pid {pid}) exited: {how}",
            self.units[i].svc.name
        ));
        if self.stopping {
            self.units[i].status = Status::Stopped;
            self.units[i].pid = None;
            return;
        }
        if success && self.units[i].svc.restart == "on-failure" {
            self.units[i].status = Status::Stopped;
            self.units[i].pid = None;
            return;
        }
        self.failed_once(i);
    }

    /// Every required service reports healthy (true for an empty table).
    pub fn all_required_healthy(&self) -> bool {
        self.units
            .iter()
            .filter(|u| u.svc.required)
            .all(|u| u.healthy)
    }

    pub fn pid_of(&self, name: &str) -> Option<Pid> {
        self.units
            .iter()
            .find(|u| u.svc.name == name)
            .and_then(|u| u.pid)
    }

    pub fn signal_all(&self, sig: Signal) {
        for u in &self.units {
            if let Some(p) = u.pid {
                let _ = kill(p, sig);
            }
            if sig == Signal::SIGKILL {
                cgroup::kill_all(&u.svc.name);
            }
        }
    }

    pub fn running(&self) -> usize {
        self.units.iter().filter(|u| u.pid.is_some()).count()
    }

    pub fn summary(&self) -> HashMap<String, String> {
        self.units
            .iter()
            .map(|u| {
                (
                    u.svc.name.clone(),
                    format!(
                        "{:?} healthy={} restarts={}",
                        u.status, u.healthy, u.restarts
                    ),
                )
            })
            .collect()
    }
}

fn prepare_state_dir(name: &str, uid: u32, gid: u32) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let d = format!("{}/{name}", gwos_core::context::STATE_ROOT);
    std::fs::create_dir_all(&d)?;
    std::os::unix::fs::chown(&d, Some(uid), Some(gid))?;
    std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o700))?;
    Ok(())
}

/// `health` over the service's socket: `{"ok":true,"result":{"healthy":true}}`.
pub fn health(name: &str) -> bool {
    let p =
        gwos_core::context::socket_path(std::path::Path::new(gwos_core::context::RUN_DIR), name);
    match gwos_core::rpc::call(
        &p,
        "health",
        serde_json::json!({}),
        None,
        Duration::from_secs(1),
    ) {
        Ok(r) => r.ok && r.result.get("healthy").and_then(|v| v.as_bool()) == Some(true),
        Err(_) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flap_detection_window() {
        let mut f = VecDeque::new();
        let t = Instant::now();
        for i in 0..4 {
            assert!(!flapping(&mut f, t + Duration::from_secs(i)));
        }
        assert!(flapping(&mut f, t + Duration::from_secs(5)));
        let mut g = VecDeque::new();
        for i in 0..10 {
            assert!(
                !flapping(&mut g, t + Duration::from_secs(i * 20)),
                "spread-out failures are not flapping"
            );
        }
    }
}
