//! Aggregation of refusals that happen before authentication
//! (`control.auth_refused`, `control.connection_refused`). Anybody who can
//! reach tcp/2222 from a backend address can cause them, so they must not
//! be able to flush the audit trail (F7): per source and kind, the first
//! [`BURST`] refusals of each [`WINDOW`] are recorded one by one (with
//! `count: 1`); the rest are counted and, when the window ends, written as
//! one record of the same kind with `aggregated: true`, the `count` and the
//! reasons. With more than [`MAX_SOURCES`] sources in flight the others
//! share one `source_ip: "*"` bucket.
//!
//! Pure: time is an argument. The server calls [`Refusals::flush`] every few
//! seconds.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use serde_json::{json, Map, Value};

/// Individual records per source, kind and window.
pub const BURST: u32 = 5;
pub const WINDOW: Duration = Duration::from_secs(60);
pub const MAX_SOURCES: usize = 1024;
/// Most distinct reasons counted per bucket.
const MAX_REASONS: usize = 8;

#[derive(Debug)]
struct Bucket {
    start: Instant,
    recorded: u32,
    suppressed: u64,
    reasons: BTreeMap<String, u64>,
}

/// A record that aggregates suppressed refusals.
#[derive(Debug, Clone, PartialEq)]
pub struct Summary {
    pub kind: &'static str,
    pub fields: Map<String, Value>,
}

#[derive(Debug, Default)]
pub struct Refusals {
    buckets: HashMap<(&'static str, String), Bucket>,
}

impl Refusals {
    /// True if this refusal gets its own record; otherwise it was counted.
    pub fn admit(&mut self, kind: &'static str, source: &str, reason: &str, now: Instant) -> bool {
        let full = self.buckets.len() >= MAX_SOURCES;
        let key = if full && !self.buckets.contains_key(&(kind, source.to_owned())) {
            (kind, "*".to_owned())
        } else {
            (kind, source.to_owned())
        };
        let overflow = key.1 == "*";
        let b = self.buckets.entry(key).or_insert_with(|| Bucket {
            start: now,
            recorded: 0,
            suppressed: 0,
            reasons: BTreeMap::new(),
        });
        if !overflow && b.recorded < BURST {
            b.recorded += 1;
            return true;
        }
        b.suppressed += 1;
        let reason = crate::commands::sanitize(reason, 128);
        if b.reasons.contains_key(&reason) || b.reasons.len() < MAX_REASONS {
            *b.reasons.entry(reason).or_default() += 1;
        } else {
            *b.reasons.entry("other".into()).or_default() += 1;
        }
        false
    }

    /// Ends the windows older than [`WINDOW`]; returns one summary per
    /// bucket that suppressed something.
    pub fn flush(&mut self, now: Instant) -> Vec<Summary> {
        let mut out = Vec::new();
        self.buckets.retain(|(kind, source), b| {
            if now.duration_since(b.start) < WINDOW {
                return true;
            }
            if b.suppressed > 0 {
                let mut f = Map::new();
                f.insert("source_ip".into(), json!(source));
                f.insert("aggregated".into(), json!(true));
                f.insert("count".into(), json!(b.suppressed));
                f.insert("window_secs".into(), json!(WINDOW.as_secs()));
                f.insert("reasons".into(), json!(b.reasons));
                f.insert("result".into(), json!("denied"));
                out.push(Summary { kind, fields: f });
            }
            false
        });
        out.sort_by(|a, b| {
            a.fields["source_ip"]
                .to_string()
                .cmp(&b.fields["source_ip"].to_string())
        });
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const K: &str = "control.auth_refused";

    #[test]
    fn burst_then_one_summary_per_window() {
        let t0 = Instant::now();
        let mut r = Refusals::default();
        let admitted = (0..1000)
            .filter(|_| r.admit(K, "10.0.0.1", "unauthenticated", t0))
            .count();
        assert_eq!(admitted, BURST as usize);
        assert!(r.admit(K, "10.0.0.2", "unauthenticated", t0));
        assert_eq!(r.flush(t0 + WINDOW / 2), Vec::new());
        let s = r.flush(t0 + WINDOW);
        assert_eq!(s.len(), 1, "{s:?}");
        assert_eq!(s[0].kind, K);
        assert_eq!(s[0].fields["source_ip"], "10.0.0.1");
        assert_eq!(s[0].fields["count"], 1000 - BURST as u64);
        assert_eq!(
            s[0].fields["reasons"]["unauthenticated"],
            1000 - BURST as u64
        );
        // A new window starts with a new burst.
        assert!(r.admit(K, "10.0.0.1", "unauthenticated", t0 + WINDOW));
    }

    #[test]
    fn many_sources_share_one_bucket() {
        let t0 = Instant::now();
        let mut r = Refusals::default();
        for i in 0..MAX_SOURCES {
            assert!(r.admit(K, &format!("s{i}"), "x", t0));
        }
        assert!(!r.admit(K, "late", "x", t0));
        assert!(!r.admit(K, "later", "y", t0));
        let s = r.flush(t0 + WINDOW);
        assert_eq!(s.len(), 1);
        assert_eq!(s[0].fields["source_ip"], "*");
        assert_eq!(s[0].fields["count"], 2);
    }
}
