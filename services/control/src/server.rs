//! The SSH side (russh): accept only backend sources, public-key auth with
//! ed25519 control keys for user `gwctl`, one `exec` per session channel;
//! PTY, shell, env, subsystems (sftp), X11, agent and every kind of
//! forwarding are refused and audited.

use std::borrow::Cow;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use russh::keys::{Algorithm, PrivateKey, PublicKey};
use russh::server::{Auth, Msg, Session};
use russh::{Channel, ChannelId, CryptoVec, MethodKind, MethodSet};
use serde_json::{json, Map, Value};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

use crate::commands::{sanitize, CallInput, Caller, Control};
use crate::keys::fingerprint;

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

fn fields(pairs: &[(&str, Value)]) -> Map<String, Value> {
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
            ctl.audit.record(
                "control.connection_refused",
                fields(&[
                    ("source_ip", json!(peer.ip().to_string())),
                    ("reason", json!("source not in the backend set")),
                ]),
            );
            drop(sock);
            continue;
        }
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            ctl.audit.record(
                "control.connection_refused",
                fields(&[
                    ("source_ip", json!(peer.ip().to_string())),
                    ("reason", json!("max_sessions reached")),
                ]),
            );
            drop(sock);
            continue;
        };
        let config = Arc::new(russh_config(&ctl, &host));
        let authed = Arc::new(AtomicBool::new(false));
        let conn = Conn {
            ctl: ctl.clone(),
            peer,
            caller: None,
            authed: authed.clone(),
            attempts: Vec::new(),
            channels: HashMap::new(),
        };
        let auth_timeout = eff.auth_timeout;
        let ctl2 = ctl.clone();
        tokio::spawn(async move {
            let _permit = permit;
            ctl2.sessions.fetch_add(1, Ordering::Relaxed);
            if let Ok(session) = russh::server::run_stream(config, sock, conn).await {
                let handle = session.handle();
                let timer = tokio::spawn(async move {
                    tokio::time::sleep(auth_timeout).await;
                    if !authed.load(Ordering::Relaxed) {
                        let _ = handle
                            .disconnect(
                                russh::Disconnect::ByApplication,
                                "authentication timeout".into(),
                                String::new(),
                            )
                            .await;
                    }
                });
                let _ = session.await;
                timer.abort();
            }
            ctl2.sessions.fetch_sub(1, Ordering::Relaxed);
        });
    }
}

#[derive(Default)]
struct Chan {
    command: Option<String>,
    body: Vec<u8>,
    overflow: bool,
    env: Vec<String>,
    /// Answered, refused or closed: ignore further requests.
    done: bool,
    /// `update_apply`: stdin streams to the update service.
    upload: Option<crate::update::Upload>,
}

struct Conn {
    ctl: Arc<Control>,
    peer: SocketAddr,
    caller: Option<Caller>,
    authed: Arc<AtomicBool>,
    /// Refused authentication attempts, audited when the connection ends unauthenticated.
    attempts: Vec<Value>,
    channels: HashMap<ChannelId, Chan>,
}

impl Drop for Conn {
    fn drop(&mut self) {
        if self.caller.is_none() {
            self.ctl.audit.record(
                "control.auth_refused",
                fields(&[
                    ("source_ip", json!(self.peer.ip().to_string())),
                    ("attempts", Value::Array(std::mem::take(&mut self.attempts))),
                    ("result", json!("denied")),
                ]),
            );
        }
    }
}

impl Conn {
    fn check_key(&mut self, method: &str, user: &str, key: &PublicKey) -> Auth {
        let fp = fingerprint(key);
        let reason = if user != USER {
            Some(format!("user {:?} is not {USER}", sanitize(user, 64)))
        } else if key.algorithm() != Algorithm::Ed25519 {
            Some(format!(
                "{} keys are refused (ed25519 only)",
                key.algorithm()
            ))
        } else if self
            .ctl
            .keys
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .find(&fp)
            .is_none()
        {
            Some("unknown key".into())
        } else {
            None
        };
        match reason {
            None => Auth::Accept,
            Some(r) => {
                self.attempts.push(json!({"method": method, "user": sanitize(user, 64), "key_fingerprint": fp, "reason": r}));
                Auth::Reject {
                    proceed_with_methods: Some(MethodSet::from(&[MethodKind::PublicKey][..])),
                    partial_success: false,
                }
            }
        }
    }

    fn refuse_attempt(&mut self, method: &str, user: &str) -> Auth {
        if self.attempts.len() < 32 {
            self.attempts.push(json!({"method": method, "user": sanitize(user, 64), "reason": "only publickey is accepted"}));
        }
        Auth::Reject {
            proceed_with_methods: Some(MethodSet::from(&[MethodKind::PublicKey][..])),
            partial_success: false,
        }
    }

    fn refused(&self, what: &str, detail: Value) {
        let mut f = fields(&[
            ("source_ip", json!(self.peer.ip().to_string())),
            ("request", json!(what)),
            ("detail", detail),
            ("result", json!("denied")),
        ]);
        if let Some(c) = &self.caller {
            f.insert("key_fingerprint".into(), json!(c.fingerprint));
            if let Some(k) = self
                .ctl
                .keys
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .find(&c.fingerprint)
            {
                f.insert("key_comment".into(), json!(k.comment));
            }
        }
        self.ctl.audit.record("control.request_refused", f);
    }

    /// Refuses a channel request that would replace `exec` and closes the channel.
    fn refuse_and_close(
        &mut self,
        channel: ChannelId,
        what: &str,
        detail: Value,
        session: &mut Session,
    ) -> Result<(), anyhow::Error> {
        self.refused(what, detail);
        session.channel_failure(channel)?;
        if let Some(c) = self.channels.get_mut(&channel) {
            if !c.done {
                c.done = true;
                session.close(channel)?;
            }
        }
        Ok(())
    }

    fn answer(&mut self, channel: ChannelId, session: &mut Session) {
        let Some(chan) = self.channels.get_mut(&channel) else {
            return;
        };
        if chan.done || chan.command.is_none() {
            return;
        }
        chan.done = true;
        let input = CallInput {
            command: chan.command.take().unwrap_or_default(),
            body: std::mem::take(&mut chan.body),
            overflow: chan.overflow,
            refused_env: std::mem::take(&mut chan.env),
        };
        let Some(caller) = self.caller.clone() else {
            return;
        };
        let ctl = self.ctl.clone();
        let handle = session.handle();
        tokio::spawn(async move {
            let (resp, code) = tokio::task::spawn_blocking(move || ctl.call(&caller, input))
                .await
                .unwrap_or_else(|_| (json!({"ok": false, "error": "internal error"}), 1));
            let mut out = serde_json::to_vec(&resp).unwrap_or_default();
            out.push(b'\n');
            let _ = handle.data(channel, CryptoVec::from(out)).await;
            let _ = handle.exit_status_request(channel, code).await;
            let _ = handle.eof(channel).await;
            let _ = handle.close(channel).await;
        });
    }
}

impl russh::server::Handler for Conn {
    type Error = anyhow::Error;

    async fn auth_none(&mut self, user: &str) -> Result<Auth, Self::Error> {
        // OpenSSH probes with "none" first; it is only recorded if the
        // connection never authenticates.
        Ok(self.refuse_attempt("none", user))
    }

    async fn auth_password(&mut self, user: &str, _password: &str) -> Result<Auth, Self::Error> {
        Ok(self.refuse_attempt("password", user))
    }

    async fn auth_keyboard_interactive<'a>(
        &'a mut self,
        user: &str,
        _submethods: &str,
        _response: Option<russh::server::Response<'a>>,
    ) -> Result<Auth, Self::Error> {
        Ok(self.refuse_attempt("keyboard-interactive", user))
    }

    async fn auth_openssh_certificate(
        &mut self,
        user: &str,
        _c: &russh::keys::Certificate,
    ) -> Result<Auth, Self::Error> {
        Ok(self.refuse_attempt("openssh-certificate", user))
    }

    async fn auth_publickey_offered(
        &mut self,
        user: &str,
        key: &PublicKey,
    ) -> Result<Auth, Self::Error> {
        Ok(self.check_key("publickey", user, key))
    }

    async fn auth_publickey(&mut self, user: &str, key: &PublicKey) -> Result<Auth, Self::Error> {
        let auth = self.check_key("publickey", user, key);
        if matches!(auth, Auth::Accept) {
            self.caller = Some(Caller {
                fingerprint: fingerprint(key),
                source: self.peer.ip(),
            });
            self.authed.store(true, Ordering::Relaxed);
        }
        Ok(auth)
    }

    async fn channel_open_session(
        &mut self,
        channel: Channel<Msg>,
        _s: &mut Session,
    ) -> Result<bool, Self::Error> {
        if self.caller.is_none() {
            return Ok(false);
        }
        self.channels.insert(channel.id(), Chan::default());
        Ok(true)
    }

    async fn channel_open_x11(
        &mut self,
        _c: Channel<Msg>,
        addr: &str,
        port: u32,
        _s: &mut Session,
    ) -> Result<bool, Self::Error> {
        self.refused(
            "x11 channel",
            json!({"originator": format!("{}:{port}", sanitize(addr, 64))}),
        );
        Ok(false)
    }

    async fn channel_open_direct_tcpip(
        &mut self,
        _c: Channel<Msg>,
        host: &str,
        port: u32,
        _oa: &str,
        _op: u32,
        _s: &mut Session,
    ) -> Result<bool, Self::Error> {
        self.refused(
            "direct-tcpip",
            json!({"target": format!("{}:{port}", sanitize(host, 128))}),
        );
        Ok(false)
    }

    async fn channel_open_forwarded_tcpip(
        &mut self,
        _c: Channel<Msg>,
        host: &str,
        port: u32,
        _oa: &str,
        _op: u32,
        _s: &mut Session,
    ) -> Result<bool, Self::Error> {
        self.refused(
            "forwarded-tcpip",
            json!({"target": format!("{}:{port}", sanitize(host, 128))}),
        );
        Ok(false)
    }

    async fn channel_open_direct_streamlocal(
        &mut self,
        _c: Channel<Msg>,
        path: &str,
        _s: &mut Session,
    ) -> Result<bool, Self::Error> {
        self.refused("direct-streamlocal", json!({"path": sanitize(path, 256)}));
        Ok(false)
    }

    async fn tcpip_forward(
        &mut self,
        address: &str,
        port: &mut u32,
        _s: &mut Session,
    ) -> Result<bool, Self::Error> {
        self.refused(
            "tcpip-forward",
            json!({"listen": format!("{}:{}", sanitize(address, 128), port)}),
        );
        Ok(false)
    }

    async fn streamlocal_forward(
        &mut self,
        path: &str,
        _s: &mut Session,
    ) -> Result<bool, Self::Error> {
        self.refused("streamlocal-forward", json!({"path": sanitize(path, 256)}));
        Ok(false)
    }

    async fn agent_request(
        &mut self,
        channel: ChannelId,
        _s: &mut Session,
    ) -> Result<bool, Self::Error> {
        self.refused("auth-agent", json!({"channel": channel.to_string()}));
        Ok(false)
    }

    async fn x11_request(
        &mut self,
        channel: ChannelId,
        _single: bool,
        _proto: &str,
        _cookie: &str,
        _screen: u32,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        self.refused("x11-req", json!({"channel": channel.to_string()}));
        session.channel_failure(channel)?;
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    async fn pty_request(
        &mut self,
        channel: ChannelId,
        term: &str,
        _c: u32,
        _r: u32,
        _pw: u32,
        _ph: u32,
        _m: &[(russh::Pty, u32)],
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        self.refuse_and_close(
            channel,
            "pty-req",
            json!({"term": sanitize(term, 64)}),
            session,
        )
    }

    async fn env_request(
        &mut self,
        channel: ChannelId,
        name: &str,
        _value: &str,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        // Debian's ssh_config sends LANG/LC_*: refuse quietly, note it in the call's record.
        if let Some(c) = self.channels.get_mut(&channel) {
            if c.env.len() < 32 {
                c.env.push(sanitize(name, 64));
            }
        }
        session.channel_failure(channel)?;
        Ok(())
    }

    async fn shell_request(
        &mut self,
        channel: ChannelId,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        self.refuse_and_close(channel, "shell", Value::Null, session)
    }

    async fn subsystem_request(
        &mut self,
        channel: ChannelId,
        name: &str,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        self.refuse_and_close(
            channel,
            "subsystem",
            json!({"name": sanitize(name, 64)}),
            session,
        )
    }

    async fn exec_request(
        &mut self,
        channel: ChannelId,
        data: &[u8],
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        let ok = match self.channels.get_mut(&channel) {
            Some(c) if !c.done && c.command.is_none() => {
                let cmd = String::from_utf8_lossy(&data[..data.len().min(256)]).into_owned();
                if let (true, Some(caller)) = (crate::update::is_streamed(&cmd), &self.caller) {
                    c.upload = Some(crate::update::start(
                        self.ctl.clone(),
                        caller.clone(),
                        channel,
                        session.handle(),
                    ));
                    c.done = true;
                }
                c.command = Some(cmd);
                true
            }
            _ => false,
        };
        if ok {
            session.channel_success(channel)?;
        } else {
            session.channel_failure(channel)?;
        }
        Ok(())
    }

    async fn data(
        &mut self,
        channel: ChannelId,
        data: &[u8],
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        if let Some(u) = self
            .channels
            .get_mut(&channel)
            .and_then(|c| c.upload.as_mut())
        {
            u.send(data).await;
            return Ok(());
        }
        let max = self.ctl.site.max_request_bytes;
        let overflow = match self.channels.get_mut(&channel) {
            Some(c) if !c.done && c.command.is_some() => {
                if c.body.len() + data.len() > max {
                    c.overflow = true;
                    true
                } else {
                    c.body.extend_from_slice(data);
                    false
                }
            }
            _ => false,
        };
        if overflow {
            // Answer at once; the rest of the input is discarded.
            self.answer(channel, session);
        }
        Ok(())
    }

    async fn channel_eof(
        &mut self,
        channel: ChannelId,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        if let Some(u) = self
            .channels
            .get_mut(&channel)
            .and_then(|c| c.upload.as_mut())
        {
            u.finish();
            return Ok(());
        }
        self.answer(channel, session);
        Ok(())
    }

    async fn channel_close(
        &mut self,
        channel: ChannelId,
        _s: &mut Session,
    ) -> Result<(), Self::Error> {
        self.channels.remove(&channel);
        Ok(())
    }
}
