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
    pub(super) fn new() -> Self {
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
    pub(super) fn answer(&mut self, name: &str, healthy: bool) {
        let (mine, rest): (Vec<_>, Vec<_>) = self.pending.drain(..).partition(|(n, _)| n == name);
        self.pending = rest;
        self.answers
            .extend(mine.into_iter().map(|(_, t)| (t, healthy)));
    }

    pub(super) fn spawns(&self, name: &str) -> usize {
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

impl<E: Effects> Supervisor<E> {
    pub(super) fn unit(&self, name: &str) -> &Unit {
        self.units
            .iter()
            .find(|u| u.svc.name == name)
            .expect("unit in the test table")
    }
}

impl Supervisor<Fake> {
    pub(super) fn advance(&mut self, d: Duration) {
        self.fx.now += d;
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
    for _ in 0..4 {
        s.crash("a");
        s.restart_due("a");
    }
    s.crash("a");
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

/// The shipped service table (rootfs/etc/gwos/services.toml).
fn shipped() -> Table {
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../rootfs/etc/gwos/services.toml"
    ))
    .expect("shipped service table");
    table(&text)
}

/// Review F3: a unit that failed 5 times in 60 s was never started again.
#[test]
fn f3_failed_unit_retried_after_cap() {
    let mut s = sup(&one("a"));
    s.tick();
    for _ in 0..4 {
        s.crash("a");
        s.restart_due("a");
    }
    s.crash("a");
    assert_eq!(s.unit("a").status, Status::Failed);
    let spawns = s.fx.spawns("a");
    s.advance(Duration::from_secs(3600));
    s.tick();
    assert_eq!(s.fx.spawns("a"), spawns + 1, "{:?}", s.fx.lines);
    assert_eq!(s.unit("a").status, Status::Running);
}

/// A unit that keeps failing after its retry goes back to failed and is
/// retried again after the long cap, not every 30 s.
#[test]
fn f3_failed_unit_keeps_being_retried_at_the_cap() {
    let mut s = sup(&one("a"));
    s.fx.spawn_fails.insert("a".into());
    for _ in 0..5 {
        s.restart_due("a");
    }
    assert_eq!(s.unit("a").status, Status::Failed);
    for round in 0..3 {
        let spawns = s.fx.spawns("a");
        s.advance(policy::FAILED_RETRY - Duration::from_secs(1));
        s.tick();
        assert_eq!(
            s.fx.spawns("a"),
            spawns,
            "round {round}: not before the cap"
        );
        s.advance(Duration::from_secs(1));
        s.tick();
        assert_eq!(
            s.fx.spawns("a"),
            spawns + 1,
            "round {round}: retried at the cap"
        );
        assert_eq!(s.unit("a").status, Status::Failed, "round {round}");
    }
    assert!(s
        .fx
        .lines
        .iter()
        .any(|l| l.contains("FAILED") && l.contains("retrying in 300 s")));
}

/// Review F3: the backoff grew for good; after a long healthy run a crash
/// is restarted after the first, short delay again.
#[test]
fn f3_backoff_resets_after_healthy_period() {
    let mut s = sup(&one("a"));
    s.tick();
    // Seven crashes, each a bit more than a flap window apart: backoff at its 30 s cap.
    for _ in 0..7 {
        s.crash("a");
        s.advance(FLAP_WINDOW + Duration::from_secs(1));
        s.tick();
    }
    s.crash("a");
    assert_eq!(
        s.unit("a").next_start - s.fx.now,
        policy::BACKOFF_MAX,
        "backoff at its cap"
    );
    s.restart_due("a");
    s.become_healthy("a");
    // Healthy for longer than the reset period (probes keep answering).
    let until = s.fx.now + policy::HEALTHY_RESET + Duration::from_secs(1);
    while s.fx.now < until {
        s.advance(Duration::from_secs(5));
        s.tick();
        s.fx.answer("a", true);
    }
    s.tick();
    s.crash("a");
    assert_eq!(s.unit("a").next_start - s.fx.now, BACKOFF_START);
}

/// Issue 12: a unit with a few recent failures that then runs healthy for
/// long is not counted as flapping when it crashes again.
#[test]
fn restart_after_long_healthy_run_is_not_flapping() {
    let mut s = sup(&one("a"));
    s.tick();
    for _ in 0..4 {
        s.crash("a");
        s.restart_due("a");
    }
    s.become_healthy("a");
    s.advance(Duration::from_secs(3 * 3600));
    s.tick();
    s.fx.answer("a", true);
    s.tick();
    s.crash("a");
    assert_eq!(s.unit("a").status, Status::Backoff);
    s.restart_due("a");
    assert_eq!(s.unit("a").status, Status::Running);
}

/// Review F3: control only started while spa, tls-front and vpn were all
/// healthy; with vpn failing at start control must still start.
#[test]
fn f3_control_starts_without_data_plane() {
    let mut s = sup(&shipped());
    s.fx.spawn_fails.insert("vpn".into());
    s.tick();
    for _ in 0..20 {
        s.advance(Duration::from_millis(500));
        s.tick();
        s.fx.answer("spa", true);
        s.fx.answer("tls-front", true);
        s.fx.answer("control", true);
    }
    assert_eq!(s.fx.spawns("control"), 1, "{:?}", s.fx.lines);
    assert!(s.unit("control").healthy);
    assert_eq!(s.unit("vpn").status, Status::Failed);
    // vpn stays down; control crashes once and is restarted all the same.
    s.crash("control");
    s.restart_due("control");
    assert_eq!(s.fx.spawns("control"), 2);
    assert_eq!(s.unit("control").status, Status::Running);
}

/// `after` orders starts; it does not wait for the other unit's health.
#[test]
fn dependencies_start_in_order_without_waiting_for_health() {
    let mut s = sup(&table(
        "[[service]]\nname = \"b\"\nuid = 901\ngid = 901\nafter = [\"a\"]\n\
         [[service]]\nname = \"a\"\nuid = 900\ngid = 900\n",
    ));
    s.tick();
    let spawned: Vec<&Call> =
        s.fx.calls
            .iter()
            .filter(|c| matches!(c, Call::Spawn(_)))
            .collect();
    assert_eq!(
        spawned,
        [&Call::Spawn("a".into()), &Call::Spawn("b".into())]
    );
    assert!(!s.unit("a").healthy);
}

/// The fake's spawns and clock with the real probe threads.
struct ThreadedFake {
    fake: Fake,
    probes: system::ThreadProbes,
}

impl Effects for ThreadedFake {
    fn now(&self) -> Instant {
        self.fake.now
    }
    fn spawn(&mut self, svc: &Service) -> anyhow::Result<Pid> {
        self.fake.spawn(svc)
    }
    fn kill_group(&mut self, name: &str) {
        self.fake.kill_group(name)
    }
    fn signal(&mut self, pid: Pid, sig: Signal) {
        self.fake.signal(pid, sig)
    }
    fn probe(&mut self, name: &str, token: ProbeToken) {
        self.probes.start(name, token)
    }
    fn probe_results(&mut self) -> Vec<(ProbeToken, bool)> {
        self.probes.results()
    }
    fn say(&mut self, line: &str) {
        self.fake.say(line)
    }
}

/// Review F4: a service whose health probe never returns must not stall
/// PID 1's loop (reaping, restarts, shutdown). The probe runs on a real
/// probe thread that blocks until the test ends; tick() keeps returning at
/// once, other units keep being started and probed, and the hung unit is
/// reported unhealthy after the deadline.
#[test]
fn f4_hung_probe_does_not_stall_tick() {
    use std::sync::{mpsc, Arc, Mutex};
    let (release, wait) = mpsc::channel::<()>();
    let wait = Mutex::new(wait);
    let check: system::Check = Arc::new(move |name: &str| {
        if name == "hung" {
            let _ = wait.lock().map(|w| w.recv());
        }
        true
    });
    let fx = ThreadedFake {
        fake: Fake::new(),
        probes: system::ThreadProbes::new(check),
    };
    let t = table(
        "[[service]]\nname = \"hung\"\nuid = 900\ngid = 900\n\
         [[service]]\nname = \"fine\"\nuid = 901\ngid = 901\n",
    );
    let mut s = Supervisor::with_effects(&t, fx).expect("supervisor");
    s.tick();
    let started = Instant::now();
    for _ in 0..50 {
        s.fx.fake.now += Duration::from_millis(200);
        s.tick();
        std::thread::sleep(Duration::from_millis(2));
    }
    let took = started.elapsed();
    assert!(took < Duration::from_secs(2), "50 ticks took {took:?}");
    assert!(s.unit("fine").healthy, "{:?}", s.fx.fake.lines);
    assert!(!s.unit("hung").healthy);
    assert_eq!(s.unit("hung").status, Status::Running);
    // The other unit still restarts while the probe hangs.
    s.fx.fake.calls.clear();
    let pid = s.unit("fine").pid.expect("fine runs");
    s.on_exit(pid, "killed by SIGKILL", false);
    s.fx.fake.now += BACKOFF_START;
    s.tick();
    assert_eq!(s.fx.fake.spawns("fine"), 1);
    drop(release);
}

/// A healthy unit whose probe stops answering is reported unhealthy after
/// the deadline, and no second probe is sent while the first hangs.
#[test]
fn f4_unanswered_probe_marks_unit_unhealthy() {
    let mut s = sup(&one("a"));
    s.tick();
    s.become_healthy("a");
    s.advance(HEALTH_EVERY_HEALTHY);
    s.tick(); // probe sent, never answered
    let probes = |s: &Supervisor<Fake>| {
        s.fx.calls
            .iter()
            .filter(|c| **c == Call::Probe("a".into()))
            .count()
    };
    let sent = probes(&s);
    s.advance(PROBE_DEADLINE);
    s.tick();
    assert!(!s.unit("a").healthy);
    assert!(s
        .fx
        .lines
        .iter()
        .any(|l| l == "service a unhealthy: its health probe has not answered for 3 s"));
    s.advance(Duration::from_secs(60));
    s.tick();
    assert_eq!(probes(&s), sent, "one probe in flight per unit");
}
