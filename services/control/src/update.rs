//! The update commands. `update_status` and `update_rollback` are ordinary
//! calls forwarded to the update service (`/run/gwos/update.sock`).
//! `update_apply` is the one streamed command: its stdin is the bundle, not
//! JSON, so it bypasses `max_request_bytes` and the body buffer. As soon as
//! the `exec` names it, the key's scope (`update:write`) is checked; then
//! every SSH data packet goes through a bounded queue straight to the
//! update service's socket (backpressure: a slow disk slows the SSH
//! window, nothing piles up in control). The stream's length is capped by
//! the update service, which stops reading where the signed header's part
//! sizes end (they are capped by the slot sizes) and answers; control then
//! drops whatever the client still sends. Progress lines go to the client's
//! stderr (SSH extended data 1), the answer to stdout as one JSON object.
//! The audit record names the bundle's version, its header and stream
//! sha256 and the byte count.

use std::sync::Arc;
use std::time::Instant;

use russh::{ChannelId, CryptoVec};
use serde_json::{json, Map, Value};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::sync::mpsc;

use crate::command::Command;
use crate::commands::{Caller, Control};

/// The command whose stdin is streamed instead of parsed.
pub const STREAMED: Command = Command::UpdateApply;
/// The update service's uid (gwos_core::rpc::SERVICE_UIDS).
const UPDATE_UID: u32 = 806;
const QUEUE: usize = 8;

/// An `update_apply` in flight: SSH data goes into `tx`.
pub struct Upload {
    tx: Option<mpsc::Sender<Vec<u8>>>,
}

impl Upload {
    /// Queues one SSH data packet (waits while the queue is full).
    pub async fn send(&mut self, data: &[u8]) {
        if let Some(tx) = &self.tx {
            if tx.send(data.to_vec()).await.is_err() {
                // The service already answered: discard the rest.
                self.tx = None;
            }
        }
    }
    /// End of stdin.
    pub fn finish(&mut self) {
        self.tx = None;
    }
}

pub fn is_streamed(command: &str) -> bool {
    command.trim() == STREAMED.name()
}

/// Checks the caller may apply updates and starts the stream to the update
/// service; the answer goes to `channel` when the service has answered.
pub fn start(
    ctl: Arc<Control>,
    caller: Caller,
    channel: ChannelId,
    handle: russh::server::Handle,
) -> Upload {
    let (tx, rx) = mpsc::channel::<Vec<u8>>(QUEUE);
    tokio::spawn(async move {
        let t0 = Instant::now();
        let trace_id = gwos_core::event::new_trace_id();
        let mut notes = Map::new();
        if let Some(k) = ctl
            .keys
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .find(&caller.fingerprint)
        {
            notes.insert("key_comment".into(), json!(k.comment));
        }
        let outcome = match authorize(&ctl, &caller) {
            Ok(comment) => {
                notes.insert("key_comment".into(), json!(comment));
                forward(&ctl, rx, &trace_id, channel, &handle, &mut notes).await
            }
            Err(e) => {
                // Nobody reads the queue: drop it so the SSH side never waits on it.
                drop(rx);
                Err(("denied", e))
            }
        };
        let (result, resp) = match outcome {
            Ok(result) => {
                let mut r = Map::new();
                r.insert("ok".into(), json!(true));
                r.insert("trace_id".into(), json!(trace_id));
                if let Value::Object(m) = result {
                    r.extend(m);
                }
                ("ok", Value::Object(r))
            }
            Err((kind, e)) => (kind, json!({"ok": false, "trace_id": trace_id, "error": e})),
        };
        // Every control.call record has the same fields (docs/control.md).
        notes.entry("key_comment").or_insert_with(|| json!(""));
        notes.entry("arguments").or_insert(Value::Null);
        notes.insert("trace_id".into(), json!(trace_id));
        notes.insert("key_fingerprint".into(), json!(caller.fingerprint));
        notes.insert("source_ip".into(), json!(caller.source.to_string()));
        notes.insert("command".into(), json!(STREAMED.name()));
        notes.insert("result".into(), json!(result));
        notes.insert(
            "error".into(),
            resp.get("error").cloned().unwrap_or(Value::Null),
        );
        notes.insert(
            "duration_ms".into(),
            json!(t0.elapsed().as_secs_f64() * 1000.0),
        );
        ctl.audit.record("control.call", notes);
        let mut out = serde_json::to_vec(&resp).unwrap_or_default();
        out.push(b'\n');
        let code = u32::from(result != "ok");
        let _ = handle.data(channel, CryptoVec::from(out)).await;
        let _ = handle.exit_status_request(channel, code).await;
        let _ = handle.eof(channel).await;
        let _ = handle.close(channel).await;
    });
    Upload { tx: Some(tx) }
}

/// Key still present, scope `update:write`, and no approval configured for
/// it (an approval token travels in a JSON body, which this command has not).
fn authorize(ctl: &Control, caller: &Caller) -> Result<String, String> {
    let command = Command::UpdateApply;
    let key = ctl
        .keys
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .find(&caller.fingerprint)
        .cloned()
        .ok_or_else(|| format!("key {} is no longer authorized", caller.fingerprint))?;
    if !key.scopes.allows(command) {
        return Err(format!(
            "key {} ({}) lacks scope {} needed by {command}",
            key.fingerprint,
            key.comment,
            command.scope().unwrap_or("-")
        ));
    }
    if ctl.site.require_approval.contains(&command) {
        return Err(format!(
            "{command} is listed in [control] require_approval, but its stdin is the bundle and cannot carry an approval token; remove it from require_approval to apply updates"
        ));
    }
    Ok(key.comment)
}

type Failure = (&'static str, String);

async fn forward(
    ctl: &Control,
    mut rx: mpsc::Receiver<Vec<u8>>,
    trace_id: &str,
    channel: ChannelId,
    handle: &russh::server::Handle,
    notes: &mut Map<String, Value>,
) -> Result<Value, Failure> {
    let path = gwos_core::context::socket_path(&ctl.run_dir, "update");
    let sock = tokio::net::UnixStream::connect(&path).await.map_err(|e| {
        (
            "error",
            format!("service unavailable: update ({}: {e})", path.display()),
        )
    })?;
    let uid = sock
        .peer_cred()
        .map_err(|e| ("error", format!("update socket: {e}")))?
        .uid();
    if uid != UPDATE_UID && uid != 0 {
        return Err(("error", format!("{} is served by uid {uid}, not the update service's {UPDATE_UID}: refusing to send it the bundle", path.display())));
    }
    let (rd, mut wr) = sock.into_split();
    let mut line = serde_json::to_vec(&json!({"method": "apply", "trace_id": trace_id}))
        .map_err(|e| ("error", e.to_string()))?;
    line.push(b'\n');
    let pump = async move {
        let (mut hash, mut bytes) = (Sha256::new(), 0u64);
        let mut open = wr.write_all(&line).await.is_ok();
        while let Some(chunk) = rx.recv().await {
            hash.update(&chunk);
            bytes += chunk.len() as u64;
            if open && wr.write_all(&chunk).await.is_err() {
                // The service answered early (a refusal): keep hashing what arrives, send nothing.
                open = false;
                rx.close();
            }
        }
        let _ = wr.shutdown().await;
        (hex::encode(hash.finalize()), bytes)
    };
    let pump = tokio::spawn(pump);
    let mut lines = BufReader::new(rd).lines();
    let answer = loop {
        match lines.next_line().await {
            Ok(Some(l)) => match serde_json::from_str::<Value>(&l) {
                Ok(v) if v.get("progress").is_some() => {
                    let text = format!("update: {}\n", v["progress"].as_str().unwrap_or(""));
                    let _ = handle
                        .extended_data(channel, 1, CryptoVec::from(text.into_bytes()))
                        .await;
                }
                Ok(v) => break v,
                Err(e) => {
                    break json!({"ok": false, "error": format!("malformed answer from the update service: {e}")})
                }
            },
            Ok(None) => {
                break json!({"ok": false, "error": "the update service closed the connection without answering"})
            }
            Err(e) => {
                break json!({"ok": false, "error": format!("reading the update service's answer: {e}")})
            }
        }
    };
    let ok = answer["ok"].as_bool() == Some(true);
    if !ok {
        // Stop reading SSH data for this call: the pump ends when the channel closes.
        pump.abort();
    } else if let Ok((sha, bytes)) = pump.await {
        notes.insert("bundle_sha256".into(), json!(sha));
        notes.insert("bundle_bytes".into(), json!(bytes));
    }
    let result = answer.get("result").cloned().unwrap_or(Value::Null);
    notes.insert(
        "arguments".into(),
        json!({
            "version_id": result.get("version_id"),
            "version": result.get("version"),
            "header_sha256": result.get("header_sha256"),
            "slot": result.get("slot"),
        }),
    );
    if ok {
        Ok(result)
    } else {
        Err((
            "error",
            answer["error"]
                .as_str()
                .unwrap_or("update failed")
                .to_string(),
        ))
    }
}
