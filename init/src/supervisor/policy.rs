//! The supervisor's restart decisions as pure functions of a unit's failure
//! history and the time: no processes, no clock. A failure is restarted
//! after an exponential backoff; a unit that flaps is marked failed and
//! tried again every [`FAILED_RETRY`], never abandoned for good; a unit
//! healthy for [`HEALTHY_RESET`] starts over with a clean history. `Supervisor` asks
//! [`History::failed`] what to do after each failure and tells it when a
//! health probe answered; tests drive it with made-up instants.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// First restart delay; doubled after every failure up to [`BACKOFF_MAX`].
pub const BACKOFF_START: Duration = Duration::from_millis(500);
pub const BACKOFF_MAX: Duration = Duration::from_secs(30);
/// This many failures within [`FLAP_WINDOW`] mark a unit failed.
pub const FLAP_COUNT: usize = 5;
pub const FLAP_WINDOW: Duration = Duration::from_secs(60);
/// A failed unit is tried again this long after it was marked failed.
pub const FAILED_RETRY: Duration = Duration::from_secs(300);
/// This long healthy and the unit's failure history is forgotten.
pub const HEALTHY_RESET: Duration = Duration::from_secs(600);

/// What to do after a unit failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Start it again after this delay.
    Restart(Duration),
    /// It is flapping (or failed again after such a retry without being
    /// healthy for [`HEALTHY_RESET`]): mark it failed and try again after
    /// this long ([`FAILED_RETRY`]).
    GiveUp(Duration),
}

/// One unit's failures, backoff and health, as far as restarts care.
#[derive(Debug, Clone)]
pub struct History {
    failures: VecDeque<Instant>,
    backoff: Duration,
    /// Since when the current run has answered healthy without a break.
    healthy_since: Option<Instant>,
    /// The unit was given up on and has not been healthy for long since.
    gave_up: bool,
}

impl Default for History {
    fn default() -> Self {
        Self {
            failures: VecDeque::new(),
            backoff: BACKOFF_START,
            healthy_since: None,
            gave_up: false,
        }
    }
}

impl History {
    /// The unit failed (exited, was killed, or could not be started) at `now`.
    pub fn failed(&mut self, now: Instant) -> Verdict {
        if self.healthy_for(now) >= HEALTHY_RESET {
            *self = Self::default();
        }
        self.healthy_since = None;
        if self.gave_up || flapping(&mut self.failures, now) {
            self.gave_up = true;
            self.failures.clear();
            return Verdict::GiveUp(FAILED_RETRY);
        }
        let delay = self.backoff;
        self.backoff = (self.backoff * 2).min(BACKOFF_MAX);
        Verdict::Restart(delay)
    }

    /// A health probe answered at `now` (`ok`: the unit said it is healthy).
    pub fn probed(&mut self, now: Instant, ok: bool) {
        match (ok, self.healthy_since) {
            (true, None) => self.healthy_since = Some(now),
            (true, Some(_)) => {}
            (false, _) => self.healthy_since = None,
        }
    }

    fn healthy_for(&self, now: Instant) -> Duration {
        self.healthy_since
            .map_or(Duration::ZERO, |t| now.saturating_duration_since(t))
    }
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

    #[test]
    fn healthy_period_resets_history() {
        let mut h = History::default();
        let t = Instant::now();
        for i in 0..4 {
            h.failed(t + Duration::from_secs(i));
        }
        h.probed(t + Duration::from_secs(10), true);
        h.probed(t + Duration::from_secs(15), true);
        let later = t + Duration::from_secs(10) + HEALTHY_RESET;
        assert_eq!(h.failed(later), Verdict::Restart(BACKOFF_START));
    }

    #[test]
    fn an_unhealthy_answer_restarts_the_healthy_period() {
        let mut h = History::default();
        let t = Instant::now();
        h.failed(t);
        h.probed(t, true);
        h.probed(t + HEALTHY_RESET - Duration::from_secs(1), false);
        h.probed(t + HEALTHY_RESET, true);
        assert_eq!(
            h.failed(t + HEALTHY_RESET + Duration::from_secs(1)),
            Verdict::Restart(BACKOFF_START * 2)
        );
    }

    #[test]
    fn backoff_doubles_to_its_cap() {
        let mut h = History::default();
        let t = Instant::now();
        let delays: Vec<Verdict> = (0..8)
            .map(|i| h.failed(t + Duration::from_secs(i * 61)))
            .collect();
        let ms = |m| Verdict::Restart(Duration::from_millis(m));
        assert_eq!(
            delays,
            [
                ms(500),
                ms(1000),
                ms(2000),
                ms(4000),
                ms(8000),
                ms(16000),
                ms(30000),
                ms(30000)
            ]
        );
    }
}
