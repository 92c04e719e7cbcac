//! Security events: one JSON object per line on the service's stdout, which
//! init collects and logship ships to the SIEM. Never put secrets in fields.

use serde::Serialize;
use serde_json::{Map, Value};

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

/// Writes the event as one line to stdout (flushed: lines must not be lost
/// if the service dies right after).
pub fn emit(event: &Event) {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{}", event.to_line());
    let _ = out.flush();
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
}
