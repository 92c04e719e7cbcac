//! RFC 5424 messages and RFC 5425 framing.
//!
//! One record becomes
//!
//! ```text
//! <PRI>1 TIMESTAMP HOSTNAME APP-NAME - MSGID [meta sequenceId="N"][gwos@32473 boot_id="…" service="…" kind="…" seq="…"] {event JSON}
//! ```
//!
//! - PRI: facility 13 (log audit); severity 4 (warning) for kinds that report
//!   a refusal or a failure (`.deny`, `.replay`, `.error`, `.fail…`, `.gap`),
//!   5 (notice) otherwise.
//! - TIMESTAMP: when logship accepted the event (UTC, milliseconds).
//! - APP-NAME: the service PID 1 read the event from; MSGID: the event kind.
//! - `sequenceId` (RFC 5424 §7.3.1) counts 1..=2147483647 and wraps; the
//!   full 64-bit spool sequence number is `seq` in the `gwos@32473` element
//!   (32473 is the documentation enterprise number of RFC 5612). A SIEM
//!   deduplicates by (`boot_id`, `seq`) — see docs/logship.md.
//! - MSG: the event's JSON as the service wrote it (UTF-8, no BOM).
//!
//! On the wire each message is `LEN SP MSG` (RFC 5425 §4.3, octet counting).

use crate::record::{Kind, Record};

/// Facility `log audit`.
const FACILITY: u8 = 13;
/// SD-ID of our structured data element.
pub const SD_ID: &str = "gwos@32473";

/// RFC 5424 sequenceId of a spool sequence number (1..=2^31-1, wrapping).
pub fn sequence_id(seq: u64) -> u64 {
    (seq.saturating_sub(1) % 2_147_483_647) + 1
}

/// PRINTUSASCII without spaces, at most `max` characters, `-` if empty.
fn token(s: &str, max: usize) -> String {
    let t: String = s
        .chars()
        .filter(|c| c.is_ascii_graphic())
        .take(max)
        .collect();
    if t.is_empty() {
        "-".into()
    } else {
        t
    }
}

/// An SD-PARAM value: `"`, `\` and `]` escaped (RFC 5424 §6.3.3).
fn param(s: &str) -> String {
    let mut o = String::with_capacity(s.len());
    for c in s.chars() {
        if matches!(c, '"' | '\\' | ']') {
            o.push('\\');
        }
        o.push(c);
    }
    o
}

fn timestamp(ms: i64) -> String {
    let t = time::OffsetDateTime::from_unix_timestamp_nanos(ms as i128 * 1_000_000)
        .unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
    let f = time::macros::format_description!(
        "[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:3]Z"
    );
    t.format(&f).unwrap_or_else(|_| "-".into())
}

fn severity(kind: &str, gap: bool) -> u8 {
    let bad = [
        "deny", "replay", "error", "fail", "refused", "gap", "dropped",
    ];
    if gap
        || bad
            .iter()
            .any(|b| kind.rsplit('.').next().unwrap_or("").contains(b))
    {
        4
    } else {
        5
    }
}

/// The RFC 5424 message of a record.
pub fn message(rec: &Record, hostname: &str) -> Vec<u8> {
    let kind = serde_json::from_slice::<serde_json::Value>(&rec.payload)
        .ok()
        .and_then(|v| v.get("kind").and_then(|k| k.as_str()).map(str::to_owned))
        .unwrap_or_else(|| format!("{}.event", rec.service));
    let pri = FACILITY * 8 + severity(&kind, rec.kind == Kind::Gap);
    let boot = crate::spool::boot_id_text(&rec.boot_id);
    let head = format!(
        "<{pri}>1 {} {} {} - {} [meta sequenceId=\"{}\"][{SD_ID} boot_id=\"{boot}\" service=\"{}\" kind=\"{}\" seq=\"{}\"] ",
        timestamp(rec.time_ms),
        token(hostname, 255),
        token(&rec.service, 48),
        token(&kind, 32),
        sequence_id(rec.seq),
        param(&rec.service),
        param(&kind),
        rec.seq,
    );
    let mut out = head.into_bytes();
    out.extend_from_slice(&rec.payload);
    out
}

/// A heartbeat message (not spooled, no sequenceId): keeps data flowing on
/// an idle connection so a dead peer shows up within the user timeout.
pub fn heartbeat(hostname: &str, boot_id: &[u8; 16], now_ms: i64) -> Vec<u8> {
    format!(
        "<{}>1 {} {} logship - logship.heartbeat [{SD_ID} boot_id=\"{}\"] {{\"kind\":\"logship.heartbeat\"}}",
        FACILITY * 8 + 6,
        timestamp(now_ms),
        token(hostname, 255),
        crate::spool::boot_id_text(boot_id),
    )
    .into_bytes()
}

/// Appends `LEN SP MSG` (RFC 5425 octet counting).
pub fn frame(msg: &[u8], out: &mut Vec<u8>) {
    out.extend_from_slice(format!("{} ", msg.len()).as_bytes());
    out.extend_from_slice(msg);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(seq: u64, payload: &str) -> Record {
        Record {
            seq,
            time_ms: 1_764_760_000_123,
            boot_id: [0x11; 16],
            kind: Kind::Event,
            service: "spa".into(),
            payload: payload.as_bytes().to_vec(),
        }
    }

    #[test]
    fn message_has_header_meta_sd_and_json() {
        let m = message(&rec(7, r#"{"kind":"spa.deny","reason":"a]b\"c"}"#), "gw1");
        let s = String::from_utf8(m).unwrap();
        assert_eq!(
            s,
            "<108>1 2025-12-03T11:06:40.123Z gw1 spa - spa.deny [meta sequenceId=\"7\"][gwos@32473 boot_id=\"11111111-1111-1111-1111-111111111111\" service=\"spa\" kind=\"spa.deny\" seq=\"7\"] {\"kind\":\"spa.deny\",\"reason\":\"a]b\\\"c\"}"
        );
        let m = String::from_utf8(message(&rec(8, r#"{"kind":"spa.permit"}"#), "")).unwrap();
        assert!(
            m.starts_with("<109>1 2025-12-03T11:06:40.123Z - spa - spa.permit "),
            "{m}"
        );
    }

    #[test]
    fn sequence_id_wraps_within_rfc_range() {
        assert_eq!(sequence_id(1), 1);
        assert_eq!(sequence_id(2_147_483_647), 2_147_483_647);
        assert_eq!(sequence_id(2_147_483_648), 1);
    }

    #[test]
    fn octet_counting_frame() {
        let mut out = Vec::new();
        frame("<13>1 - - - - - - hé".as_bytes(), &mut out);
        assert_eq!(out, "21 <13>1 - - - - - - hé".as_bytes());
    }
}
