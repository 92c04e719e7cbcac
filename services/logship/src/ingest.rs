//! The ingest socket `<run_dir>/logship-ingest.sock`: PID 1 writes one line
//! per event, `<service> <event JSON>\n`. Only the uids in `ingest_uids`
//! (default: root, i.e. PID 1) may connect, so the service name is the one
//! PID 1 read the line from, never what the event claims.
//!
//! Lines go to the writer through a bounded channel. When the spool cannot
//! keep up, this thread blocks, the socket fills and PID 1 counts drops in
//! its own bounded queue; nothing upstream of PID 1 ever waits.

use std::io::{BufRead, BufReader, Read};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::sync::mpsc::SyncSender;

use anyhow::{Context, Result};

use crate::record::MAX_EVENT;

/// One accepted line: (service, event JSON, acceptance time in Unix ms).
pub type Line = (String, Vec<u8>, i64);

pub fn now_ms() -> i64 {
    (time::OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000) as i64
}

/// Splits and checks one ingest line. A payload that is not a JSON object is
/// wrapped as `<service>.invalid_event` with the text, so nothing is lost
/// and nothing unparsable reaches the SIEM.
pub fn parse_line(line: &[u8]) -> Option<(String, Vec<u8>)> {
    let line = line.strip_suffix(b"\n").unwrap_or(line);
    let sp = line.iter().position(|b| *b == b' ')?;
    let service = std::str::from_utf8(&line[..sp]).ok()?;
    if service.is_empty()
        || service.len() > 48
        || !service
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    {
        return None;
    }
    let payload = &line[sp + 1..];
    let ok = serde_json::from_slice::<serde_json::Value>(payload).is_ok_and(|v| v.is_object());
    let payload = if ok && payload.len() <= MAX_EVENT {
        payload.to_vec()
    } else {
        let text = String::from_utf8_lossy(&payload[..payload.len().min(MAX_EVENT / 2)]);
        gwos_core::Event::new(service, &format!("{service}.invalid_event"))
            .field("line", text.into_owned())
            .field("bytes", payload.len())
            .to_line()
            .into_bytes()
    };
    Some((service.to_owned(), payload))
}

fn peer_uid(s: &UnixStream) -> Result<u32> {
    let cred = nix::sys::socket::getsockopt(s, nix::sys::socket::sockopt::PeerCredentials)?;
    Ok(cred.uid())
}

fn serve_conn(s: UnixStream, tx: SyncSender<Line>) {
    let mut r = BufReader::with_capacity(64 << 10, s);
    let mut line = Vec::new();
    loop {
        line.clear();
        match (&mut r)
            .take(MAX_EVENT as u64 + 64)
            .read_until(b'\n', &mut line)
        {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        if !line.ends_with(b"\n") {
            // longer than the cap: skip to the end of this line
            let mut rest = Vec::new();
            if r.read_until(b'\n', &mut rest).unwrap_or(0) == 0 {
                return;
            }
        }
        if let Some((svc, payload)) = parse_line(&line) {
            if tx.send((svc, payload, now_ms())).is_err() {
                return;
            }
        }
    }
}

/// Binds the ingest socket and accepts PID 1's connections forever.
pub fn serve(path: &Path, allowed: Vec<u32>, tx: SyncSender<Line>) -> Result<()> {
    let _ = std::fs::remove_file(path);
    let l = UnixListener::bind(path).with_context(|| format!("binding {}", path.display()))?;
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o666))?;
    for s in l.incoming() {
        let Ok(s) = s else { continue };
        match peer_uid(&s) {
            Ok(uid) if allowed.contains(&uid) => {
                let tx = tx.clone();
                let _ = std::thread::Builder::new()
                    .name("logship-ingest".into())
                    .spawn(move || serve_conn(s, tx));
            }
            _ => drop(s),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_are_split_and_bad_payloads_wrapped() {
        let (svc, p) = parse_line(b"spa {\"kind\":\"spa.deny\"}\n").unwrap();
        assert_eq!(
            (svc.as_str(), p.as_slice()),
            ("spa", &b"{\"kind\":\"spa.deny\"}"[..])
        );
        let (_, p) = parse_line(b"vpn panic at the disco\n").unwrap();
        let v: serde_json::Value = serde_json::from_slice(&p).unwrap();
        assert_eq!(v["kind"], "vpn.invalid_event");
        assert_eq!(v["line"], "panic at the disco");
        assert_eq!(parse_line(b"sp/a {}\n"), None);
        assert_eq!(parse_line(b"nospace\n"), None);
    }
}
