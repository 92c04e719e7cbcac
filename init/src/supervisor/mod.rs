//! The supervisor: starts services from the table in dependency order, each
//! as `gwosd run <name>` in its sandbox, restarts them with exponential
//! backoff, marks a flapping service failed and retries it every few minutes
//! (PID 1 carries on), polls each
//! service's `health` RPC, and reports when every required service is healthy.
//!
//! The decisions are made here and in [`policy`] over (unit states, events,
//! now); every effect (spawn, signals, cgroup, health probes, clock, console)
//! goes through [`Effects`], real in [`system`], recorded in the tests.

mod effects;
pub mod policy;
pub mod state_keys;
pub mod system;
pub mod table;
#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use nix::unistd::Pid;

pub use effects::{Effects, ProbeToken};
pub use policy::{History, Verdict};
pub use system::SystemEffects;
pub use table::{Restart, Service, Table};

/// Probe interval while a unit is not (yet) healthy, and once it is.
const HEALTH_EVERY: Duration = Duration::from_millis(500);
const HEALTH_EVERY_HEALTHY: Duration = Duration::from_secs(5);
/// First probe after a start.
const FIRST_PROBE: Duration = Duration::from_millis(100);
/// A probe not answered after this long counts as an unhealthy answer (it
/// stays in flight: no second thread is started for the same unit).
const PROBE_DEADLINE: Duration = Duration::from_secs(3);

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
    history: History,
    next_start: Instant,
    next_health: Instant,
    /// The probe in flight: its token and when it was sent.
    probe: Option<(ProbeToken, Instant)>,
    pub restarts: u32,
}

pub struct Supervisor<E: Effects = SystemEffects> {
    pub units: Vec<Unit>,
    fx: E,
    next_token: ProbeToken,
    pub stopping: bool,
}

impl Supervisor<SystemEffects> {
    /// The real supervisor, starting services from `exe` (`/sbin/init`).
    pub fn new(table: &Table, exe: &str) -> anyhow::Result<Self> {
        Self::with_effects(table, SystemEffects::new(exe))
    }
}

impl<E: Effects> Supervisor<E> {
    pub fn with_effects(table: &Table, fx: E) -> anyhow::Result<Self> {
        let now = fx.now();
        let units = table
            .order()?
            .into_iter()
            .map(|s| Unit {
                svc: s.clone(),
                status: Status::Waiting,
                pid: None,
                healthy: false,
                history: History::default(),
                next_start: now,
                next_health: now,
                probe: None,
                restarts: 0,
            })
            .collect();
        Ok(Self {
            units,
            fx,
            next_token: 1,
            stopping: false,
        })
    }

    /// Whether every unit `s` is `after` has been started (or tried) once.
    /// `after` orders starts; it never waits for another unit's health, so a
    /// failing data-plane service cannot keep control from starting.
    fn deps_met(&self, s: &Service) -> bool {
        s.after.iter().all(|a| {
            self.units
                .iter()
                .any(|u| &u.svc.name == a && u.status != Status::Waiting)
        })
    }

    /// Takes in finished probes, starts what is due, sends due probes. Never
    /// waits on a service. Call often (every ~200 ms).
    pub fn tick(&mut self) {
        if self.stopping {
            return;
        }
        let now = self.fx.now();
        for (token, ok) in self.fx.probe_results() {
            self.probe_answered(token, ok, now);
        }
        for i in 0..self.units.len() {
            let due = matches!(
                self.units[i].status,
                Status::Waiting | Status::Backoff | Status::Failed
            ) && self.units[i].next_start <= now;
            if due && self.deps_met(&self.units[i].svc) {
                self.start(i, now);
            }
            self.probe_overdue(i, now);
            let u = &self.units[i];
            if u.status == Status::Running && u.probe.is_none() && u.next_health <= now {
                let token = self.next_token;
                self.next_token += 1;
                self.units[i].probe = Some((token, now));
                let name = self.units[i].svc.name.clone();
                self.fx.probe(&name, token);
            }
        }
    }

    fn probe_overdue(&mut self, i: usize, now: Instant) {
        let u = &mut self.units[i];
        let overdue = u
            .probe
            .is_some_and(|(_, sent)| now.saturating_duration_since(sent) >= PROBE_DEADLINE);
        if overdue && u.healthy {
            u.healthy = false;
            u.history.probed(now, false);
            let line = format!(
                "service {} unhealthy: its health probe has not answered for {} s",
                u.svc.name,
                PROBE_DEADLINE.as_secs()
            );
            self.fx.say(&line);
        }
    }

    fn probe_answered(&mut self, token: ProbeToken, ok: bool, now: Instant) {
        let Some(u) = self
            .units
            .iter_mut()
            .find(|u| u.probe.is_some_and(|(t, _)| t == token))
        else {
            return; // the run it probed has ended
        };
        u.probe = None;
        if u.status != Status::Running {
            return;
        }
        if ok != u.healthy {
            let line = format!(
                "service {} {}",
                u.svc.name,
                if ok { "healthy" } else { "unhealthy" }
            );
            self.fx.say(&line);
        }
        u.healthy = ok;
        u.history.probed(now, ok);
        u.next_health = now
            + if ok {
                HEALTH_EVERY_HEALTHY
            } else {
                HEALTH_EVERY
            };
    }

    fn start(&mut self, i: usize, now: Instant) {
        match self.fx.spawn(&self.units[i].svc) {
            Ok(pid) => {
                let u = &mut self.units[i];
                let line = format!(
                    "service {} started pid {pid} (uid {})",
                    u.svc.name, u.svc.uid
                );
                u.pid = Some(pid);
                u.status = Status::Running;
                u.healthy = false;
                u.probe = None;
                u.next_health = now + FIRST_PROBE;
                self.fx.say(&line);
            }
            Err(e) => {
                let line = format!("service {} could not start: {e:#}", self.units[i].svc.name);
                self.fx.say(&line);
                self.failed_once(i, now);
            }
        }
    }

    fn failed_once(&mut self, i: usize, now: Instant) {
        let u = &mut self.units[i];
        u.pid = None;
        u.healthy = false;
        u.probe = None;
        let line = match u.history.failed(now) {
            Verdict::GiveUp(retry) => {
                u.status = Status::Failed;
                u.next_start = now + retry;
                format!(
                    "service {} FAILED: {} failures within {}s (or failed again since), retrying in {} s",
                    u.svc.name,
                    policy::FLAP_COUNT,
                    policy::FLAP_WINDOW.as_secs(),
                    retry.as_secs()
                )
            }
            Verdict::Restart(delay) => {
                u.status = Status::Backoff;
                u.next_start = now + delay;
                u.restarts += 1;
                format!(
                    "service {} restarting in {} ms",
                    u.svc.name,
                    delay.as_millis()
                )
            }
        };
        self.fx.say(&line);
    }

    /// A child exited: if it was a service, decide about its restart.
    pub fn on_exit(&mut self, pid: Pid, how: &str, success: bool) {
        let Some(i) = self.units.iter().position(|u| u.pid == Some(pid)) else {
            return;
        };
        let name = self.units[i].svc.name.clone();
        self.fx.kill_group(&name);
        self.fx
            .say(&format!("service {name} (pid {pid}) exited: {how}"));
        let final_exit = success && self.units[i].svc.restart == Restart::OnFailure;
        if self.stopping || final_exit {
            let u = &mut self.units[i];
            u.status = Status::Stopped;
            u.pid = None;
            u.healthy = false;
            u.probe = None;
            return;
        }
        let now = self.fx.now();
        self.failed_once(i, now);
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

    pub fn signal_all(&mut self, sig: Signal) {
        for u in &self.units {
            if let Some(p) = u.pid {
                self.fx.signal(p, sig);
            }
            if sig == Signal::SIGKILL {
                self.fx.kill_group(&u.svc.name);
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
