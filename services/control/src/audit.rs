//! The audit trail: one JSON record per call (allowed or refused), per
//! refused connection, authentication and channel request. Each record is
//! emitted as a `gwos_core` event on stdout (for logship/SIEM) and appended to
//! `<state_dir>/audit.log`, which rotates to `audit.log.1` … `audit.log.<N>`
//! (`[control] audit_max_bytes`, `audit_files`); `pull_logs` reads them all.
//!
//! What keeps a flood from evicting history (F7):
//! - records are bounded: arguments are the *validated* parameters, redacted
//!   and cut at [`MAX_ARGUMENTS`] bytes; a refused request leaves only its
//!   field names and size, never its body ([`bounded`], [`field_names`]);
//! - refusals before authentication are aggregated per source
//!   ([`crate::refusals`]): a few records per source and interval, then one
//!   record with a count;
//! - several rotated files are kept.
//!
//! A change is preceded by an intent record written with
//! [`AuditLog::record_durable`] (appended and fsynced); if that fails the
//! change is refused. Other records fail open: an append error is reported
//! as `control.audit_error` on stdout.

use std::fs::{self, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde_json::{Map, Value};

/// Longest `arguments` value in a record, in bytes of JSON.
pub const MAX_ARGUMENTS: usize = 2048;

/// Most field names of a refused request kept in its record.
pub const MAX_FIELD_NAMES: usize = 16;

pub struct AuditLog {
    path: PathBuf,
    max_bytes: u64,
    /// Rotated files kept besides `audit.log`.
    keep: usize,
    lock: Mutex<()>,
}

/// `v` as is if its JSON is at most `max` bytes, else its JSON text cut at
/// `max` bytes (on a character boundary) as a string; the flag says which.
pub fn bounded(v: Value, max: usize) -> (Value, bool) {
    let text = v.to_string();
    if text.len() <= max {
        return (v, false);
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    (Value::String(text[..end].to_owned()), true)
}

/// The (sanitized, bounded) field names of a request object, for the record
/// of a request that was refused before validation.
pub fn field_names(params: &Map<String, Value>) -> Value {
    Value::Array(
        params
            .keys()
            .take(MAX_FIELD_NAMES)
            .map(|k| Value::String(crate::commands::sanitize(k, 64)))
            .collect(),
    )
}

impl AuditLog {
    pub fn new(state_dir: &Path, max_bytes: u64, keep: usize) -> Self {
        Self {
            path: state_dir.join("audit.log"),
            max_bytes,
            keep: keep.max(1),
            lock: Mutex::new(()),
        }
    }

    fn rotated(&self, n: usize) -> PathBuf {
        self.path.with_extension(format!("log.{n}"))
    }

    /// Emits `kind` with `fields` as an event and appends it to the local
    /// log; an append error is reported, not returned.
    pub fn record(&self, kind: &str, fields: Map<String, Value>) {
        if let Err(e) = self.record_durable(kind, fields) {
            gwos_core::emit(
                &gwos_core::Event::new("control", "control.audit_error").field("error", e),
            );
        }
    }

    /// Like [`record`](Self::record), but returns whether the record is on
    /// disk (appended and fsynced).
    pub fn record_durable(&self, kind: &str, fields: Map<String, Value>) -> Result<(), String> {
        let mut ev = gwos_core::Event::new("control", kind);
        ev.fields = fields;
        gwos_core::emit(&ev);
        let line = ev.to_line();
        let _g = self.lock.lock().unwrap_or_else(|p| p.into_inner());
        self.append(&line)
            .map_err(|e| format!("appending to {}: {e}", self.path.display()))
    }

    fn append(&self, line: &str) -> std::io::Result<()> {
        let size = fs::metadata(&self.path).map(|m| m.len()).unwrap_or(0);
        if size > 0 && size + line.len() as u64 + 1 > self.max_bytes {
            self.rotate()?;
        }
        let mut f = OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o600)
            .open(&self.path)?;
        f.write_all(format!("{line}\n").as_bytes())?;
        f.sync_data()
    }

    /// `audit.log.<keep-1>` → `.<keep>` (the oldest is dropped), …, `audit.log` → `.1`.
    fn rotate(&self) -> std::io::Result<()> {
        for n in (1..self.keep).rev() {
            match fs::rename(self.rotated(n), self.rotated(n + 1)) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
                _ => {}
            }
        }
        fs::rename(&self.path, self.rotated(1))
    }

    /// Records with `since <= time < until` (Unix seconds), oldest first,
    /// at most `limit` (the newest are kept).
    pub fn read_window(&self, since: i64, until: i64, limit: usize) -> Vec<Value> {
        let _g = self.lock.lock().unwrap_or_else(|p| p.into_inner());
        let mut out = Vec::new();
        let files = (1..=self.keep)
            .rev()
            .map(|n| self.rotated(n))
            .chain([self.path.clone()]);
        for p in files {
            let Ok(f) = fs::File::open(&p) else { continue };
            for line in BufReader::new(f).lines().map_while(Result::ok) {
                let Ok(v) = serde_json::from_str::<Value>(&line) else {
                    continue;
                };
                let t = v["time"]
                    .as_str()
                    .and_then(|s| {
                        time::OffsetDateTime::parse(
                            s,
                            &time::format_description::well_known::Rfc3339,
                        )
                        .ok()
                    })
                    .map(|t| t.unix_timestamp());
                if let Some(t) = t {
                    if t >= since && t < until {
                        out.push(v);
                        if out.len() > limit.saturating_mul(2) {
                            out.drain(..out.len() - limit);
                        }
                    }
                }
            }
        }
        if out.len() > limit {
            out.drain(..out.len() - limit);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn rotates_keeps_n_files_and_reads_window() {
        let dir = tempfile::tempdir().unwrap();
        let log = AuditLog::new(dir.path(), 600, 3);
        for i in 0..40 {
            let mut m = Map::new();
            m.insert("i".into(), i.into());
            log.record("control.test", m);
        }
        for f in ["audit.log", "audit.log.1", "audit.log.2", "audit.log.3"] {
            assert!(dir.path().join(f).exists(), "{f} missing");
        }
        assert!(!dir.path().join("audit.log.4").exists());
        let total: u64 = ["audit.log", "audit.log.1", "audit.log.2", "audit.log.3"]
            .iter()
            .map(|f| fs::metadata(dir.path().join(f)).unwrap().len())
            .sum();
        assert!(total <= 4 * 600, "{total}");
        let now = time::OffsetDateTime::now_utc().unix_timestamp();
        let got = log.read_window(now - 60, now + 60, 3);
        assert_eq!(
            got.iter().map(|r| r["i"].clone()).collect::<Vec<_>>(),
            [json!(37), json!(38), json!(39)]
        );
        let all = log.read_window(now - 60, now + 60, 1000);
        let first = all[0]["i"].as_i64().unwrap();
        assert!(first > 0 && all.len() as i64 == 40 - first, "{first}");
        assert_eq!(
            log.read_window(now + 100, now + 200, 10),
            Vec::<Value>::new()
        );
    }

    #[test]
    fn durable_record_reports_failure() {
        let dir = tempfile::tempdir().unwrap();
        fs::create_dir(dir.path().join("audit.log")).unwrap();
        let log = AuditLog::new(dir.path(), 1 << 20, 2);
        let e = log
            .record_durable("control.intent", Map::new())
            .unwrap_err();
        assert!(e.starts_with("appending to "), "{e}");
    }

    #[test]
    fn bounded_cuts_long_arguments() {
        let small = json!({"user": "alice"});
        assert_eq!(bounded(small.clone(), 100), (small, false));
        let (v, cut) = bounded(json!({"allowed": vec!["10.0.0.0/8"; 500]}), 64);
        assert!(cut);
        assert_eq!(v.as_str().unwrap().len(), 64);
        let (v, _) = bounded(json!("ééééé"), 4);
        assert_eq!(v, json!("\"é"));
    }
}
