//! Everything the supervisor does to the world, behind one small trait (as
//! youki-dev/youki:crates/libcontainer/src/syscall/syscall.rs does for
//! libcontainer): the clock, spawning a sandboxed service, signals, the
//! service's cgroup, health probes and the console. [`super::system`] is the
//! real implementation; the tests use a recording fake with a clock they move.

use std::time::Instant;

use nix::sys::signal::Signal;
use nix::unistd::Pid;

use super::table::Service;

/// A probe's identity, so a late answer for an earlier run of a unit is ignored.
pub type ProbeToken = u64;

pub trait Effects {
    /// The monotonic clock.
    fn now(&self) -> Instant;
    /// Prepares the service's cgroup and state dir and starts `gwosd run <name>` in its sandbox.
    fn spawn(&mut self, svc: &Service) -> anyhow::Result<Pid>;
    /// Kills whatever is left in the service's cgroup.
    fn kill_group(&mut self, name: &str);
    fn signal(&mut self, pid: Pid, sig: Signal);
    /// Starts a `health` probe of `name`. Must not wait for the answer: it
    /// arrives later through [`Effects::probe_results`].
    fn probe(&mut self, name: &str, token: ProbeToken);
    /// Probes that have finished since the last call: (token, healthy).
    fn probe_results(&mut self) -> Vec<(ProbeToken, bool)>;
    /// One console line.
    fn say(&mut self, line: &str);
}
