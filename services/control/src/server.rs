//! The SSH side (russh): accept only backend sources, public-key auth with
//! ed25519 control keys for user `gwctl`, one `exec` per session channel;
//! PTY, shell, env, subsystems (sftp), X11, agent and every kind of
//! forwarding are refused and audited. This file owns the listener and each
//! connection's lifetime (backend check, `max_sessions`, the auth deadline);
//! [`crate::conn`] is the per-connection SSH handler.

use std::borrow::Cow;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use russh::keys::{Algorithm, PrivateKey};
use russh::{MethodKind, MethodSet};
use serde_json::{json, Map, Value};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

use crate::commands::Control;
use crate::conn::{Conn, ConnState};
pub use crate::conn::{MAX_BUFFERED_REQUESTS, MAX_CHANNELS};

/// The only user name accepted.
pub const USER: &str = "gwctl";

/// Loads the host key from `<state_dir>/ssh_host_ed25519_key`, making it
/// (atomically, 0600) on first start.
pub fn host_key(state_dir: &std::path::Path) -> anyhow::Result<PrivateKey> {
    let path = state_dir.join("ssh_host_ed25519_key");
    match std::fs::read_to_string(&path) {
        Ok(pem) => PrivateKey::from_openssh(pem.as_bytes())
            .map_err(|e| anyhow::anyhow!("host key {}: {e}", path.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let seed: [u8; 32] = rand::random();
            let kp = russh::keys::ssh_key::private::Ed25519Keypair::from_seed(&seed);
            let key = PrivateKey::from(kp);
            let pem = key
                .to_openssh(russh::keys::ssh_key::LineEnding::LF)
                .map_err(|e| anyhow::anyhow!("encoding host key: {e}"))?;
            gwos_core::state::write_atomic(&path, pem.as_bytes())?;
            Ok(key)
        }
        Err(e) => Err(anyhow::anyhow!("reading host key {}: {e}", path.display())),
    }
}

fn russh_config(ctl: &Control, host: &PrivateKey) -> russh::server::Config {
    let eff = ctl.effective();
    let preferred = russh::Preferred {
        key: Cow::Owned(vec![Algorithm::Ed25519]),
        ..Default::default()
    };
    russh::server::Config {
        server_id: russh::SshId::Standard("SSH-2.0-gwos-control".into()),
        methods: MethodSet::from(&[MethodKind::PublicKey][..]),
        auth_rejection_time: std::time::Duration::from_millis(500),
        auth_rejection_time_initial: Some(std::time::Duration::ZERO),
        keys: vec![host.clone()],
        max_auth_attempts: ctl.site.max_auth_tries,
        inactivity_timeout: Some(eff.idle_timeout),
        preferred,
        nodelay: true,
        ..Default::default()
    }
}

pub(crate) fn fields(pairs: &[(&str, Value)]) -> Map<String, Value> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.clone()))
        .collect()
}

/// Accepts connections until the listener fails.
pub async fn serve(
    ctl: Arc<Control>,
    listener: TcpListener,
    host: PrivateKey,
) -> anyhow::Result<()> {
    let slots = Arc::new(Semaphore::new(ctl.site.max_sessions));
    let flusher = ctl.clone();
    let _flush = AbortOnDrop(tokio::spawn(async move {
        let mut tick = tokio::time::interval(std::time::Duration::from_secs(5));
        loop {
            tick.tick().await;
            flusher.flush_refusals(std::time::Instant::now());
        }
    }));
    loop {
        let (sock, peer) = match listener.accept().await {
            Ok(x) => x,
            Err(e) => {
                // EMFILE and friends: report, back off, keep serving.
                gwos_core::emit(
                    &gwos_core::Event::new("control", "control.accept_error")
                        .field("error", e.to_string()),
                );
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                continue;
            }
        };
        let eff = ctl.effective();
        if !crate::config::is_backend(&eff.backend, peer.ip()) {
            let reason = "source not in the backend set";
            ctl.record_unauthenticated(
                "control.connection_refused",
                peer.ip(),
                reason,
                fields(&[("reason", json!(reason))]),
            );
            drop(sock);
            continue;
        }
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            let reason = "max_sessions reached";
            ctl.record_unauthenticated(
                "control.connection_refused",
                peer.ip(),
                reason,
                fields(&[("reason", json!(reason))]),
            );
            drop(sock);
            continue;
        };
        let config = Arc::new(russh_config(&ctl, &host));
        let state = Arc::new(ConnState::default());
        let conn = Conn::new(ctl.clone(), peer, state.clone());
        let deadline = tokio::time::Instant::now() + eff.auth_timeout;
        let ctl2 = ctl.clone();
        tokio::spawn(async move {
            let _permit = permit;
            ctl2.sessions.fetch_add(1, Ordering::Relaxed);
            run_connection(config, sock, conn, state, deadline).await;
            ctl2.sessions.fetch_sub(1, Ordering::Relaxed);
        });
    }
}

/// Runs one connection. Until it authenticates it lives at most until
/// `deadline` (`auth_timeout_secs` after accept), including the time to
/// send its SSH identification: a connection that never sends a byte
/// releases its slot then (F8).
async fn run_connection(
    config: Arc<russh::server::Config>,
    sock: tokio::net::TcpStream,
    conn: Conn,
    state: Arc<ConnState>,
    deadline: tokio::time::Instant,
) {
    let session = {
        let start = russh::server::run_stream(config, sock, conn);
        tokio::pin!(start);
        tokio::select! {
            r = &mut start => r.ok(),
            _ = tokio::time::sleep_until(deadline) => {
                // Dropping `start` drops the handler, which records the refusal.
                state.timed_out.store(true, Ordering::Relaxed);
                None
            }
        }
    };
    let Some(session) = session else { return };
    let handle = session.handle();
    tokio::pin!(session);
    tokio::select! {
        _ = &mut session => return,
        _ = tokio::time::sleep_until(deadline) => {}
    }
    if state.authed.load(Ordering::Relaxed) {
        let _ = session.await;
        return;
    }
    state.timed_out.store(true, Ordering::Relaxed);
    let _ = handle
        .disconnect(
            russh::Disconnect::ByApplication,
            "authentication timeout".into(),
            String::new(),
        )
        .await;
    // The session ends on the disconnect; do not wait for a peer that stalls.
    let _ = tokio::time::timeout(std::time::Duration::from_secs(5), session).await;
}

/// Aborts a background task when the server future is dropped.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}
