//! The supervisor's decisions, driven through a recording fake of
//! [`Effects`] with a clock the test moves. No processes, no QEMU.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use nix::unistd::Pid;

use super::policy::{BACKOFF_START, FLAP_WINDOW};
use super::*;

/// What the supervisor asked the world to do, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Call {
    Spawn(String),
    KillGroup(String),
    Signal(Pid, Signal),
    Probe(String),
}

pub(super) struct Fake {
    pub now: Instant,
    pub calls: Vec<Call>,
    pub lines: Vec<String>,
    /// Services whose spawn fails.
    pub spawn_fails: HashSet<String>,
    /// Probes sent and not yet answered: (name, token).
    pub pending: Vec<(String, ProbeToken)>,
    answers: Vec<(ProbeToken, bool)>,
    next_pid: i32,
}

impl Fake {
    pub fn new() -> Self {
        Self {
            now: Instant::now(),
            calls: Vec::new(),
            lines: Vec::new(),
            spawn_fails: HashSet::new(),
            pending: Vec::new(),
            answers: Vec::new(),
            next_pid: 100,
        }
    }

    /// Answers every pending probe of `name`.
    pub fn answer(&mut self, name: &str, healthy: bool) {
        let (mine, rest): (Vec<_>, Vec<_>) = self.pending.drain(..).partition(|(n, _)| n == name);
        self.pending = rest;
        self.answers
            .extend(mine.into_iter().map(|(_, t)| (t, healthy)));
    }

    pub fn spawns(&self, name: &str) -> usize {
        self.calls
            .iter()
            .filter(|c| **c == Call::Spawn(name.into()))
            .count()
    }
}

impl Effects for Fake {
    fn now(&self) -> Instant {
        self.now
    }
    fn spawn(&mut self, svc: &Service) -> anyhow::Result<Pid> {
        self.calls.push(Call::Spawn(svc.name.clone()));
        if self.spawn_fails.contains(&svc.name) {
            anyhow::bail!("test: {} fails at start", svc.name);
        }
        self.next_pid += 1;
        Ok(Pid::from_raw(self.next_pid))
    }
    fn kill_group(&mut self, name: &str) {
        self.calls.push(Call::KillGroup(name.into()));
    }
    fn signal(&mut self, pid: Pid, sig: Signal) {
        self.calls.push(Call::Signal(pid, sig));
    }
    fn probe(&mut self, name: &str, token: ProbeToken) {
        self.calls.push(Call::Probe(name.into()));
        self.pending.push((name.into(), token));
    }
    fn probe_results(&mut self) -> Vec<(ProbeToken, bool)> {
        std::mem::take(&mut self.answers)
    }
    fn say(&mut self, line: &str) {
        self.lines.push(line.into());
    }
}

pub(super) fn table(text: &str) -> Table {
    table::parse(text).expect("test table parses")
}

pub(super) fn one(name: &str) -> Table {
    table(&format!(
        "[[service]]\nname = \"{name}\"\nuid = 900\ngid = 900\n"
    ))
}

pub(super) fn sup(t: &Table) -> Supervisor<Fake> {
    Supervisor::with_effects(t, Fake::new()).expect("test supervisor")
}

impl Supervisor<Fake> {
    pub(super) fn advance(&mut self, d: Duration) {
        self.fx.now += d;
    }
    pub(super) fn unit(&self, name: &str) -> &Unit {
        self.units
            .iter()
            .find(|u| u.svc.name == name)
            .expect("unit in the test table")
    }
    /// The running unit `name` dies (killed by a signal).
    pub(super) fn crash(&mut self, name: &str) {
        let pid = self.unit(name).pid.expect("unit is running");
        self.on_exit(pid, "killed by SIGKILL", false);
    }
    /// Moves the clock to the unit's next start and ticks.
    pub(super) fn restart_due(&mut self, name: &str) {
        let at = self.unit(name).next_start;
        self.fx.now = self.fx.now.max(at);
        self.tick();
    }
    /// Ticks until the probe of `name` is sent, then answers it.
    pub(super) fn become_healthy(&mut self, name: &str) {
        self.advance(FIRST_PROBE);
        self.tick();
        self.fx.answer(name, true);
        self.tick();
        assert!(
            self.unit(name).healthy,
            "{name} healthy: {:?}",
            self.fx.lines
        );
    }
}

#[test]
fn starts_probes_and_reports_healthy() {
    let mut s = sup(&one("a"));
    s.tick();
    assert_eq!(s.unit("a").status, Status::Running);
    assert_eq!(s.fx.calls, [Call::Spawn("a".into())]);
    assert!(!s.all_required_healthy());
    s.become_healthy("a");
    assert!(s.all_required_healthy());
    assert!(s.fx.lines.iter().any(|l| l == "service a healthy"));
}

#[test]
fn crash_is_restarted_after_backoff() {
    let mut s = sup(&one("a"));
    s.tick();
    s.crash("a");
    assert_eq!(s.unit("a").status, Status::Backoff);
    assert_eq!(
        s.fx.calls[1..],
        [Call::KillGroup("a".into())],
        "the cgroup's leftovers are killed"
    );
    s.advance(Duration::from_millis(499));
    s.tick();
    assert_eq!(s.fx.spawns("a"), 1, "not before the 500 ms backoff");
    s.advance(Duration::from_millis(1));
    s.tick();
    assert_eq!(s.fx.spawns("a"), 2);
    assert_eq!(s.unit("a").restarts, 1);
}

#[test]
fn flapping_unit_is_marked_failed() {
    let mut s = sup(&one("a"));
    s.tick();
    let t0 = s.fx.now;
    for _ in 0..5 {
        s.crash("a");
        s.restart_due("a");
    }
    assert!(s.fx.now - t0 < FLAP_WINDOW);
    assert_eq!(s.unit("a").status, Status::Failed, "{:?}", s.fx.lines);
    assert!(s
        .fx
        .lines
        .iter()
        .any(|l| l.starts_with("service a FAILED: 5 failures within 60s")));
}

#[test]
fn on_failure_unit_stays_stopped_after_a_clean_exit() {
    let mut s = sup(&table(
        "[[service]]\nname = \"a\"\nuid = 900\ngid = 900\nrestart = \"on-failure\"\n",
    ));
    s.tick();
    let pid = s.unit("a").pid.expect("running");
    s.on_exit(pid, "exit status 0", true);
    s.advance(Duration::from_secs(3600));
    s.tick();
    assert_eq!(s.unit("a").status, Status::Stopped);
    assert_eq!(s.fx.spawns("a"), 1);
}

#[test]
fn a_late_probe_answer_does_not_mark_the_next_run_healthy() {
    let mut s = sup(&one("a"));
    s.tick();
    s.advance(FIRST_PROBE);
    s.tick(); // probe sent to the first run
    s.crash("a");
    s.advance(BACKOFF_START);
    s.tick(); // second run
    s.fx.answer("a", true); // the first run's probe answers late
    s.tick();
    assert_eq!(s.unit("a").status, Status::Running);
    assert!(!s.unit("a").healthy);
}

#[test]
fn shutdown_signals_every_running_unit() {
    let mut s = sup(&table(
        "[[service]]\nname = \"a\"\nuid = 900\ngid = 900\n[[service]]\nname = \"b\"\nuid = 901\ngid = 901\n",
    ));
    s.tick();
    let (a, b) = (s.unit("a").pid.expect("a"), s.unit("b").pid.expect("b"));
    s.stopping = true;
    s.signal_all(Signal::SIGTERM);
    assert!(s.fx.calls.contains(&Call::Signal(a, Signal::SIGTERM)));
    assert!(s.fx.calls.contains(&Call::Signal(b, Signal::SIGTERM)));
    s.on_exit(a, "exit status 0", true);
    assert_eq!(s.unit("a").status, Status::Stopped);
    assert_eq!(s.running(), 1);
}
