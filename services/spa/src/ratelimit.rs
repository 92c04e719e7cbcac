//! Per-source token buckets: the expensive part of a packet (HMAC, decrypt)
//! runs only while the source has tokens, so a flood from some addresses
//! cannot starve a valid knock from another. The table is bounded; when
//! full, the stalest buckets are dropped.

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::Instant;

pub struct RateLimiter {
    rate: f64,
    burst: f64,
    max_sources: usize,
    buckets: HashMap<IpAddr, (f64, Instant)>,
}

impl RateLimiter {
    pub fn new(rate_per_sec: f64, burst: f64, max_sources: usize) -> Self {
        Self {
            rate: rate_per_sec,
            burst,
            max_sources,
            buckets: HashMap::new(),
        }
    }

    /// Takes one token for `src` at `now`; false = over the limit.
    pub fn allow(&mut self, src: IpAddr, now: Instant) -> bool {
        if self.buckets.len() >= self.max_sources && !self.buckets.contains_key(&src) {
            let (rate, burst) = (self.rate, self.burst);
            // drop buckets that have refilled completely (they carry no state)
            self.buckets.retain(|_, (tokens, t)| {
                *tokens + now.duration_since(*t).as_secs_f64() * rate < burst
            });
            if self.buckets.len() >= self.max_sources {
                return false;
            }
        }
        let b = self.buckets.entry(src).or_insert((self.burst, now));
        let refill = now.duration_since(b.1).as_secs_f64() * self.rate;
        b.0 = (b.0 + refill).min(self.burst);
        b.1 = now;
        if b.0 >= 1.0 {
            b.0 -= 1.0;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn one_source_flooding_does_not_block_another() {
        let mut r = RateLimiter::new(10.0, 20.0, 1000);
        let t = Instant::now();
        let bad: IpAddr = "192.0.2.1".parse().unwrap();
        let good: IpAddr = "192.0.2.2".parse().unwrap();
        let allowed = (0..1000).filter(|_| r.allow(bad, t)).count();
        assert_eq!(allowed, 20);
        assert!(r.allow(good, t));
        assert!(r.allow(bad, t + Duration::from_millis(200)));
    }
}
