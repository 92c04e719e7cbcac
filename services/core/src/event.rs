//! Security events: one JSON object per line on the service's stdout. Under
//! PID 1 that stdout is a pipe PID 1 drains (never the console): it forwards
//! each line to logship, which spools and ships it to the SIEM, and keeps a
//! rate-limited summary on the console. Never put secrets in fields.
//!
//! Writing never blocks the service: when stdout is a pipe it is switched to
//! non-blocking mode, a line is one `write(2)` of at most `PIPE_BUF` bytes
//! (atomic, never interleaved), and a line the pipe has no room for is
//! dropped and counted; the next line that goes out carries the count as
//! `events_dropped_before`.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Once;

use serde::Serialize;
use serde_json::{Map, Value};

/// The field vocabulary: one name per meaning, in every service.
/// Source address of a packet or connection (address only, no port).
pub const SOURCE_IP: &str = "source_ip";
/// Source port, a number.
pub const SOURCE_PORT: &str = "source_port";
/// The user a decision is about (spa/vpn user, not a uid).
pub const USER: &str = "user";
/// `SHA256:...` fingerprint of a key (control keys, client certificates).
pub const KEY_FINGERPRINT: &str = "key_fingerprint";
/// The control call (or other request) this event belongs to.
pub const TRACE_ID: &str = "trace_id";
/// Why a decision was taken, for people.
pub const REASON: &str = "reason";
/// What failed, for people.
pub const ERROR: &str = "error";

/// Largest line written to a pipe in one atomic `write(2)` (Linux PIPE_BUF).
pub const MAX_PIPE_LINE: usize = 4096;

#[derive(Debug, Clone, Serialize)]
pub struct Event {
    /// RFC 3339 UTC time.
    pub time: String,
    /// Emitting service (`spa`, `control`, ...).
    pub service: String,
    /// Event kind, dotted: `spa.permit`, `spa.deny`, `control.call`, ...
    pub kind: String,
    #[serde(flatten)]
    pub fields: Map<String, Value>,
}

impl Event {
    pub fn new(service: &str, kind: &str) -> Self {
        Self {
            time: now_rfc3339(),
            service: service.into(),
            kind: kind.into(),
            fields: Map::new(),
        }
    }

    pub fn field(mut self, key: &str, value: impl Into<Value>) -> Self {
        self.fields.insert(key.into(), value.into());
        self
    }

    pub fn to_line(&self) -> String {
        serde_json::to_string(self).unwrap_or_else(|_| "{}".into())
    }
}

static DROPPED: AtomicU64 = AtomicU64::new(0);
static PREPARE: Once = Once::new();
static IS_PIPE: AtomicBool = AtomicBool::new(false);

/// Switches stdout to non-blocking if it is a pipe (once per process).
fn stdout_is_pipe() -> bool {
    PREPARE.call_once(|| {
        use nix::fcntl::{fcntl, FcntlArg, OFlag};
        use nix::sys::stat::{fstat, SFlag};
        let is_fifo = fstat(libc::STDOUT_FILENO)
            .map(|st| {
                SFlag::from_bits_truncate(st.st_mode & SFlag::S_IFMT.bits()) == SFlag::S_IFIFO
            })
            .unwrap_or(false);
        if !is_fifo {
            return;
        }
        let Ok(flags) = fcntl(libc::STDOUT_FILENO, FcntlArg::F_GETFL) else {
            return;
        };
        let flags = OFlag::from_bits_truncate(flags) | OFlag::O_NONBLOCK;
        if fcntl(libc::STDOUT_FILENO, FcntlArg::F_SETFL(flags)).is_ok() {
            IS_PIPE.store(true, Ordering::SeqCst);
        }
    });
    IS_PIPE.load(Ordering::SeqCst)
}

/// The line for `event`, at most [`MAX_PIPE_LINE`] bytes with its newline:
/// an oversized event keeps its time, service, kind and short fields and
/// says how long it was (`truncated_bytes`).
pub fn pipe_line(event: &Event, dropped_before: u64) -> String {
    let mut e = event.clone();
    if dropped_before > 0 {
        e.fields
            .insert("events_dropped_before".into(), dropped_before.into());
    }
    let line = e.to_line();
    if line.len() < MAX_PIPE_LINE {
        return line;
    }
    let full = line.len();
    e.fields.retain(|_, v| v.to_string().len() <= 256);
    e.fields.insert("truncated_bytes".into(), full.into());
    let line = e.to_line();
    if line.len() < MAX_PIPE_LINE {
        return line;
    }
    let mut min = Event {
        time: e.time,
        service: e.service,
        kind: e.kind,
        fields: Map::new(),
    };
    min.fields.insert("truncated_bytes".into(), full.into());
    min.to_line()
}

/// Writes the event as one line to stdout without ever blocking on a pipe
/// (see the module doc); on a file or terminal (host runs) it is written
/// whole.
pub fn emit(event: &Event) {
    use std::io::Write;
    let pipe = stdout_is_pipe();
    let dropped = DROPPED.swap(0, Ordering::SeqCst);
    let mut line = pipe_line(event, dropped);
    line.push('\n');
    if !pipe {
        let mut out = std::io::stdout().lock();
        let _ = out.write_all(line.as_bytes());
        let _ = out.flush();
        return;
    }
    match nix::unistd::write(std::io::stdout(), line.as_bytes()) {
        Ok(n) if n == line.len() => {}
        // EAGAIN (pipe full) or a reader gone: drop, count, never wait
        _ => {
            DROPPED.fetch_add(dropped + 1, Ordering::SeqCst);
        }
    }
}

/// Events dropped so far because the pipe was full (not yet reported).
pub fn dropped_pending() -> u64 {
    DROPPED.load(Ordering::SeqCst)
}

pub fn now_rfc3339() -> String {
    time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

/// A fresh random trace id (16 hex chars).
pub fn new_trace_id() -> String {
    hex::encode(rand::random::<[u8; 8]>())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_is_one_json_line_with_fields() {
        let e = Event::new("spa", "spa.deny")
            .field("source", "10.0.0.2")
            .field("reason", "hmac");
        let line = e.to_line();
        assert!(!line.contains('\n'));
        let v: Value = serde_json::from_str(&line).unwrap();
        assert_eq!(v["kind"], "spa.deny");
        assert_eq!(v["source"], "10.0.0.2");
        assert!(v["time"].as_str().unwrap().ends_with('Z'));
    }

    #[test]
    fn oversized_event_fits_one_pipe_write_and_says_so() {
        let e = Event::new("control", "control.call")
            .field(TRACE_ID, "t1")
            .field("args", "x".repeat(10_000));
        let line = pipe_line(&e, 3);
        assert!(line.len() < MAX_PIPE_LINE, "{}", line.len());
        let v: Value = serde_json::from_str(&line).unwrap();
        assert_eq!(v[TRACE_ID], "t1");
        assert_eq!(v["events_dropped_before"], 3);
        assert!(v["truncated_bytes"].as_u64().unwrap() > 10_000);
        assert!(v.get("args").is_none());
    }
}
