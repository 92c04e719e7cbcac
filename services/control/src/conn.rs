//! One SSH connection's handler (russh `Handler`): public-key auth against
//! the control keys with `max_auth_tries` counted here, session channels
//! (at most [`MAX_CHANNELS`]) carrying one `exec` each, request bodies
//! buffered up to `max_request_bytes` per channel and
//! [`MAX_BUFFERED_REQUESTS`] × that per connection; everything else is
//! refused and audited. A finished request goes to [`Control::call`] on a
//! blocking thread.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use russh::keys::{Algorithm, PublicKey};
use russh::server::{Auth, Msg, Session};
use russh::{Channel, ChannelId, CryptoVec, MethodKind, MethodSet};
use serde_json::{json, Value};

use crate::commands::{sanitize, CallInput, Caller, Control};
use crate::keys::fingerprint;
use crate::server::{fields, USER};

/// Shared between a connection's handler and its supervising task.
#[derive(Default)]
pub(crate) struct ConnState {
    pub(crate) authed: AtomicBool,
    /// The auth deadline passed before authentication.
    pub(crate) timed_out: AtomicBool,
}

#[derive(Default)]
struct Chan {
    command: Option<String>,
    body: Vec<u8>,
    overflow: bool,
    /// The connection's buffer cap was hit while this request arrived.
    buffer_full: bool,
    env: Vec<String>,
    /// Answered, refused or closed: ignore further requests.
    done: bool,
    /// `update_apply`: stdin streams to the update service (crate::update).
    upload: Option<crate::update::Upload>,
}

pub(crate) struct Conn {
    ctl: Arc<Control>,
    peer: SocketAddr,
    caller: Option<Caller>,
    state: Arc<ConnState>,
    /// Refused authentication attempts (at most `max_auth_tries` + a few),
    /// audited when the connection ends unauthenticated.
    attempts: Vec<Value>,
    /// Failed authentication attempts; at `max_auth_tries` the connection is cut.
    failures: usize,
    /// The first `none` probe (OpenSSH sends one) does not count as a failure.
    none_seen: bool,
    channels: HashMap<ChannelId, Chan>,
    /// Request bytes held for all channels of this connection.
    buffered: usize,
    channel_cap_reported: bool,
}

/// Session channels one connection may have open at once.
pub const MAX_CHANNELS: usize = 8;

/// Request bytes one connection may buffer, as a multiple of `max_request_bytes`.
pub const MAX_BUFFERED_REQUESTS: usize = 4;

impl Drop for Conn {
    fn drop(&mut self) {
        if self.caller.is_none() {
            let reason = if self.failures >= self.ctl.site.max_auth_tries {
                "too many authentication failures"
            } else if self.state.timed_out.load(Ordering::Relaxed) {
                "authentication timeout"
            } else if self.attempts.is_empty() {
                "closed before authenticating"
            } else {
                "authentication failed"
            };
            self.ctl.record_unauthenticated(
                "control.auth_refused",
                self.peer.ip(),
                reason,
                fields(&[
                    ("attempts", Value::Array(std::mem::take(&mut self.attempts))),
                    ("reason", json!(reason)),
                    ("result", json!("denied")),
                ]),
            );
        }
    }
}

impl Conn {
    pub(crate) fn new(ctl: Arc<Control>, peer: SocketAddr, state: Arc<ConnState>) -> Self {
        Self {
            ctl,
            peer,
            caller: None,
            state,
            attempts: Vec::new(),
            failures: 0,
            none_seen: false,
            channels: HashMap::new(),
            buffered: 0,
            channel_cap_reported: false,
        }
    }

    fn check_key(&mut self, method: &str, user: &str, key: &PublicKey) -> anyhow::Result<Auth> {
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
            None => Ok(Auth::Accept),
            Some(r) => self.fail(json!({"method": method, "user": sanitize(user, 64), "key_fingerprint": fp, "reason": r})),
        }
    }

    /// Counts a failed attempt; at `max_auth_tries` failures the connection
    /// is closed (an error from the handler ends the russh session).
    fn fail(&mut self, attempt: Value) -> anyhow::Result<Auth> {
        let max = self.ctl.site.max_auth_tries;
        if self.attempts.len() < max + 4 {
            self.attempts.push(attempt);
        }
        self.failures += 1;
        if self.failures >= max {
            anyhow::bail!("too many authentication failures (max_auth_tries {max})");
        }
        Ok(Auth::Reject {
            proceed_with_methods: Some(MethodSet::from(&[MethodKind::PublicKey][..])),
            partial_success: false,
        })
    }

    fn refuse_attempt(&mut self, method: &str, user: &str) -> anyhow::Result<Auth> {
        let attempt = json!({"method": method, "user": sanitize(user, 64), "reason": "only publickey is accepted"});
        if method == "none" && !self.none_seen {
            self.none_seen = true;
            self.attempts.push(attempt);
            return Ok(Auth::Reject {
                proceed_with_methods: Some(MethodSet::from(&[MethodKind::PublicKey][..])),
                partial_success: false,
            });
        }
        self.fail(attempt)
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
            buffer_full: chan.buffer_full,
            refused_env: std::mem::take(&mut chan.env),
        };
        self.buffered = self.buffered.saturating_sub(input.body.len());
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
        self.refuse_attempt("none", user)
    }

    async fn auth_password(&mut self, user: &str, _password: &str) -> Result<Auth, Self::Error> {
        self.refuse_attempt("password", user)
    }

    async fn auth_keyboard_interactive<'a>(
        &'a mut self,
        user: &str,
        _submethods: &str,
        _response: Option<russh::server::Response<'a>>,
    ) -> Result<Auth, Self::Error> {
        self.refuse_attempt("keyboard-interactive", user)
    }

    async fn auth_openssh_certificate(
        &mut self,
        user: &str,
        _c: &russh::keys::Certificate,
    ) -> Result<Auth, Self::Error> {
        self.refuse_attempt("openssh-certificate", user)
    }

    async fn auth_publickey_offered(
        &mut self,
        user: &str,
        key: &PublicKey,
    ) -> Result<Auth, Self::Error> {
        self.check_key("publickey", user, key)
    }

    async fn auth_publickey(&mut self, user: &str, key: &PublicKey) -> Result<Auth, Self::Error> {
        let auth = self.check_key("publickey", user, key)?;
        if matches!(auth, Auth::Accept) {
            self.caller = Some(Caller {
                fingerprint: fingerprint(key),
                source: self.peer.ip(),
            });
            self.state.authed.store(true, Ordering::Relaxed);
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
        if self.channels.len() >= MAX_CHANNELS {
            // Reported once per connection, so the refusals cannot flood the audit log.
            if !self.channel_cap_reported {
                self.channel_cap_reported = true;
                self.refused(
                    "session channel",
                    json!({"reason": format!("more than {MAX_CHANNELS} channels open on one connection")}),
                );
            }
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
            // Streamed, not buffered: exempt from max_request_bytes (capped by the slot sizes).
            u.send(data).await;
            return Ok(());
        }
        let max = self.ctl.site.max_request_bytes;
        let max_buffered = max * MAX_BUFFERED_REQUESTS;
        let buffered = self.buffered;
        let overflow = match self.channels.get_mut(&channel) {
            Some(c) if !c.done && c.command.is_some() => {
                if c.body.len() + data.len() > max {
                    c.overflow = true;
                    true
                } else if buffered + data.len() > max_buffered {
                    c.buffer_full = true;
                    true
                } else {
                    c.body.extend_from_slice(data);
                    self.buffered += data.len();
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
        if let Some(c) = self.channels.remove(&channel) {
            self.buffered = self.buffered.saturating_sub(c.body.len());
        }
        Ok(())
    }
}
