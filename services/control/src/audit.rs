//! The audit trail: one JSON record per call (allowed or refused), per
//! refused connection, authentication and channel request. Each record is
//! emitted as a `gwos_core` event on stdout (for logship/SIEM) and appended to
//! `<state_dir>/audit.log`, size-bounded with one rotated `audit.log.1`,
//! which `pull_logs` reads.

use std::fs::{self, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::PathBuf;
use std::sync::Mutex;

use serde_json::{Map, Value};

pub struct AuditLog {
    path: PathBuf,
    max_bytes: u64,
    lock: Mutex<()>,
}

impl AuditLog {
    pub fn new(state_dir: &std::path::Path, max_bytes: u64) -> Self {
        Self {
            path: state_dir.join("audit.log"),
            max_bytes,
            lock: Mutex::new(()),
        }
    }

    /// Emits `kind` with `fields` as an event and appends it to the local log.
    pub fn record(&self, kind: &str, fields: Map<String, Value>) {
        let mut ev = gwos_core::Event::new("control", kind);
        ev.fields = fields;
        gwos_core::emit(&ev);
        let line = ev.to_line();
        let _g = self.lock.lock().unwrap_or_else(|p| p.into_inner());
        if let Err(e) = self.append(&line) {
            gwos_core::emit(
                &gwos_core::Event::new("control", "control.audit_error")
                    .field("error", format!("{e:#}")),
            );
        }
    }

    fn append(&self, line: &str) -> std::io::Result<()> {
        let size = fs::metadata(&self.path).map(|m| m.len()).unwrap_or(0);
        if size > 0 && size + line.len() as u64 + 1 > self.max_bytes {
            fs::rename(&self.path, self.path.with_extension("log.1"))?;
        }
        let mut f = OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o600)
            .open(&self.path)?;
        f.write_all(format!("{line}\n").as_bytes())?;
        f.sync_data()
    }

    /// Records with `since <= time < until` (Unix seconds), oldest first,
    /// at most `limit` (the newest are kept).
    pub fn read_window(&self, since: i64, until: i64, limit: usize) -> Vec<Value> {
        let _g = self.lock.lock().unwrap_or_else(|p| p.into_inner());
        let mut out = Vec::new();
        for p in [self.path.with_extension("log.1"), self.path.clone()] {
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

    #[test]
    fn rotates_and_reads_window() {
        let dir = tempfile::tempdir().unwrap();
        let log = AuditLog::new(dir.path(), 600);
        for i in 0..20 {
            let mut m = Map::new();
            m.insert("i".into(), i.into());
            log.record("control.test", m);
        }
        assert!(dir.path().join("audit.log.1").exists());
        let total: u64 = ["audit.log", "audit.log.1"]
            .iter()
            .map(|f| fs::metadata(dir.path().join(f)).unwrap().len())
            .sum();
        assert!(total <= 1200, "{total}");
        let now = time::OffsetDateTime::now_utc().unix_timestamp();
        let got = log.read_window(now - 60, now + 60, 3);
        assert_eq!(got.len(), 3);
        assert_eq!(got[2]["i"], 19);
        assert!(log.read_window(now + 100, now + 200, 10).is_empty());
    }
}
