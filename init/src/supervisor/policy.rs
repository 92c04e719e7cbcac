//! The supervisor's restart decisions as pure functions of a unit's failure
//! history and the time: no processes, no clock. `Supervisor` asks
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

/// What to do after a unit failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Start it again after this delay.
    Restart(Duration),
    /// It is flapping: mark it failed and do not start it again.
    GiveUp,
}

/// One unit's failures, backoff and health, as far as restarts care.
#[derive(Debug, Clone)]
pub struct History {
    failures: VecDeque<Instant>,
    backoff: Duration,
}

impl Default for History {
    fn default() -> Self {
        Self {
            failures: VecDeque::new(),
            backoff: BACKOFF_START,
        }
    }
}

impl History {
    /// The unit failed (exited, was killed, or could not be started) at `now`.
    pub fn failed(&mut self, now: Instant) -> Verdict {
        if flapping(&mut self.failures, now) {
            return Verdict::GiveUp;
        }
        let delay = self.backoff;
        self.backoff = (self.backoff * 2).min(BACKOFF_MAX);
        Verdict::Restart(delay)
    }

    /// A health probe answered at `now` (`ok`: the unit said it is healthy).
    pub fn probed(&mut self, _now: Instant, _ok: bool) {}
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
