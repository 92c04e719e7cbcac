//! `gwosd run spa`: the UDP listener (dual-stack, never answers), the
//! per-datagram pipeline and the local RPC (`spa.sock`).
//!
//! Per datagram, cheapest first: size/prefix/alphabet (no key) → replay
//! cache lookup → per-source token bucket (only then HMAC) → for each user
//! whose `sources` match: HMAC (constant time), decrypt, digest, fields →
//! replay insert (persisted) → age window → user name → allow IP rules →
//! ports → one `spa-grant` request per requested port with the user's
//! timeout (spa holds no CAP_NET_ADMIN: `gwos_netfilter::grant` adds the
//! element for it).
//!
//! Users with keys come from `users_file` (in the image
//! `/etc/gwos/secrets/spa.toml`, mode 0400, owned by spa's uid: `gwos build`
//! moves `[spa] users` there, out of the world-readable site.toml), from
//! `[spa] users` if a site config still has them (host tests), and from the
//! state file set over RPC.

use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Instant;

use anyhow::{Context, Result};
use serde::Deserialize;
use serde_json::{json, Value};

use gwos_core::rpc::{Request, Response};
use gwos_core::{emit, Event, ServiceContext};

use crate::packet::{self, Reject, Stage};
use crate::ratelimit::RateLimiter;
use crate::replay::{self, ReplayCache};
use crate::users::{self, User, UserConfig};

/// `[spa]` in the site config.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SpaConfig {
    pub port: u16,
    /// Listen address; `::` is dual-stack (IPv4 arrives v4-mapped).
    pub bind: String,
    pub control_uid: u32,
    /// Packet age window (seconds, both directions).
    pub max_age_secs: i64,
    pub default_ports: Vec<String>,
    pub default_timeout_secs: u64,
    /// Crypto attempts per source: rate (per second) and burst.
    pub rate_per_sec: f64,
    pub burst: f64,
    pub max_replay_entries: usize,
    /// Ask spa-grant for nftables grants (off only for tests without a table).
    pub firewall: bool,
    pub users: Vec<UserConfig>,
    /// TOML file of `[[users]]` (with keys) readable only by spa; a missing
    /// file means none.
    pub users_file: PathBuf,
}

/// `users_file`'s contents.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SecretUsers {
    #[serde(default)]
    pub users: Vec<UserConfig>,
}

/// Where `gwos build` puts spa's users (gwos_core's per-service secrets dir).
pub const USERS_FILE: &str = "/etc/gwos/secrets/spa.toml";

/// Reads `path`'s users; a missing file has none, any other failure is an error.
pub fn load_secret_users(path: &std::path::Path) -> Result<Vec<UserConfig>> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => {
            return Err(e).with_context(|| format!("reading spa's users file {}", path.display()))
        }
    };
    let s: SecretUsers = toml::from_str(&text)
        .with_context(|| format!("parsing spa's users file {}", path.display()))?;
    Ok(s.users)
}

impl Default for SpaConfig {
    fn default() -> Self {
        Self {
            port: 62201,
            bind: "::".into(),
            control_uid: gwos_core::rpc::CONTROL_UID,
            max_age_secs: 120,
            default_ports: vec!["tcp/443".into()],
            default_timeout_secs: users::DEFAULT_TIMEOUT,
            rate_per_sec: 5.0,
            burst: 10.0,
            max_replay_entries: 100_000,
            firewall: true,
            users: Vec::new(),
            users_file: PathBuf::from(USERS_FILE),
        }
    }
}

/// The decision for one datagram.
#[derive(Debug, PartialEq)]
pub enum Decision {
    Permit {
        user: String,
        addr: IpAddr,
        ports: Vec<packet::ProtoPort>,
        timeout_secs: u64,
    },
    Deny {
        user: Option<String>,
        reject: Reject,
    },
}

pub struct Gate {
    cfg: SpaConfig,
    users: Arc<RwLock<Vec<User>>>,
    replay: ReplayCache,
    limiter: RateLimiter,
    log_limiter: RateLimiter,
    /// One bucket for every source together: spoofed or replayed floods from
    /// many addresses still produce a bounded number of lines (F2).
    log_global: RateLimiter,
    suppressed: u64,
    /// The run dir holding `spa-grant.sock`.
    run_dir: PathBuf,
    /// Suppressed since the last `spa.suppressed` summary, and when that was.
    suppressed_window: u64,
    summary_at: Option<Instant>,
}

/// Deny lines per second for all sources together, and the burst.
const LOG_GLOBAL_RATE: f64 = 10.0;
const LOG_GLOBAL_BURST: f64 = 50.0;
/// How often a `spa.suppressed` summary may be emitted.
const SUMMARY_EVERY: std::time::Duration = std::time::Duration::from_secs(10);

fn deny(user: Option<&str>, stage: Stage, reason: impl Into<String>) -> Decision {
    Decision::Deny {
        user: user.map(str::to_owned),
        reject: Reject {
            stage,
            reason: reason.into(),
        },
    }
}

impl Gate {
    pub fn new(cfg: SpaConfig, users: Arc<RwLock<Vec<User>>>, replay: ReplayCache) -> Self {
        let limiter = RateLimiter::new(cfg.rate_per_sec, cfg.burst, 65536);
        Self {
            cfg,
            users,
            replay,
            limiter,
            log_limiter: RateLimiter::new(1.0, 5.0, 4096),
            log_global: RateLimiter::new(LOG_GLOBAL_RATE, LOG_GLOBAL_BURST, 1),
            suppressed: 0,
            run_dir: PathBuf::from(gwos_core::context::RUN_DIR),
            suppressed_window: 0,
            summary_at: None,
        }
    }

    /// Grants go to `<run_dir>/spa-grant.sock`.
    pub fn with_run_dir(mut self, run_dir: PathBuf) -> Self {
        self.run_dir = run_dir;
        self
    }

    /// Decides one datagram from `src` at Unix time `now`.
    pub fn handle(&mut self, src: IpAddr, payload: &[u8], now: i64, mono: Instant) -> Decision {
        let spa = match packet::preprocess(payload, false) {
            Ok(s) => s,
            Err(r) => {
                return Decision::Deny {
                    user: None,
                    reject: r,
                }
            }
        };
        if self.replay.contains(&spa.replay_digest) {
            return deny(None, Stage::Replay, "replayed SPA packet");
        }
        if !self.limiter.allow(src, mono) {
            return deny(
                None,
                Stage::RateLimit,
                "too many SPA attempts from this source",
            );
        }
        let users = self.users.read().unwrap_or_else(|p| p.into_inner());
        let mut last: Option<Reject> = None;
        let mut matched = None;
        for u in users.iter().filter(|u| u.source_ok(src)) {
            match packet::decode_with(&spa, &u.keys) {
                Ok(f) => {
                    matched = Some((u, f));
                    break;
                }
                Err(e) => {
                    if last.as_ref().is_none_or(|l| rank(e.stage) > rank(l.stage)) {
                        last = Some(e);
                    }
                }
            }
        }
        let Some((u, f)) = matched else {
            return Decision::Deny {
                user: None,
                reject: last.unwrap_or(Reject {
                    stage: Stage::Policy,
                    reason: "no user accepts this source".into(),
                }),
            };
        };
        // used up from here on, whatever the policy says (as fwknopd does)
        match self.replay.insert(&spa.replay_digest, now) {
            Ok(true) => {}
            Ok(false) => return deny(Some(&u.name), Stage::Replay, "replayed SPA packet"),
            Err(e) => {
                return deny(
                    Some(&u.name),
                    Stage::Replay,
                    format!("replay cache unavailable: {e:#}"),
                )
            }
        }
        if let Err(r) = packet::check_age(&f, now, self.cfg.max_age_secs) {
            return Decision::Deny {
                user: Some(u.name.clone()),
                reject: r,
            };
        }
        if f.username != u.name {
            return deny(
                Some(&u.name),
                Stage::Policy,
                format!("packet user {:?} is not the key's user", f.username),
            );
        }
        if f.message_type != 1 && f.message_type != 3 {
            return deny(
                Some(&u.name),
                Stage::Policy,
                format!("message type {} not allowed (access only)", f.message_type),
            );
        }
        let src_v4 = match src {
            IpAddr::V4(a) => Some(a),
            IpAddr::V6(a) => a.to_ipv4_mapped(),
        };
        let addr: IpAddr = if f.allow_ip.is_unspecified() {
            if u.require_source_address {
                return deny(
                    Some(&u.name),
                    Stage::Policy,
                    "allow IP 0.0.0.0 but the source address is required",
                );
            }
            src
        } else {
            if u.require_source_address && src_v4 != Some(f.allow_ip) {
                return deny(
                    Some(&u.name),
                    Stage::Policy,
                    format!("allow IP {} differs from the source address", f.allow_ip),
                );
            }
            IpAddr::V4(f.allow_ip)
        };
        if let Some(p) = f.access.iter().find(|p| !u.ports.contains(p)) {
            return deny(
                Some(&u.name),
                Stage::Policy,
                format!("{p} is not allowed for this user"),
            );
        }
        let mut timeout = u.timeout_secs;
        if f.client_timeout > 0 {
            timeout = timeout.min(f.client_timeout as u64);
        }
        Decision::Permit {
            user: u.name.clone(),
            addr,
            ports: f.access.clone(),
            timeout_secs: timeout,
        }
    }

    /// Applies and reports a decision.
    fn act(&mut self, src: SocketAddr, d: Decision, mono: Instant) {
        let src_ip = canonical(src.ip());
        match d {
            Decision::Permit {
                user,
                addr,
                ports,
                timeout_secs,
            } => {
                let mut errors = Vec::new();
                if self.cfg.firewall {
                    for p in &ports {
                        let grant = gwos_netfilter::grant::Grant {
                            addr,
                            proto: if p.tcp {
                                gwos_netfilter::Proto::Tcp
                            } else {
                                gwos_netfilter::Proto::Udp
                            },
                            port: p.port,
                            timeout_secs,
                        };
                        if let Err(e) = gwos_netfilter::grant::request(&self.run_dir, &grant) {
                            errors.push(format!("{e:#}"));
                        }
                    }
                }
                let kind = if errors.is_empty() {
                    "spa.permit"
                } else {
                    "spa.error"
                };
                let mut ev = Event::new("spa", kind)
                    .field("source", src_ip.to_string())
                    .field("user", user)
                    .field("allow", addr.to_string())
                    .field(
                        "ports",
                        ports.iter().map(|p| p.to_string()).collect::<Vec<_>>(),
                    )
                    .field("timeout_secs", timeout_secs);
                if !errors.is_empty() {
                    ev = ev.field("error", errors.join("; "));
                }
                emit(&ev);
            }
            Decision::Deny { user, reject } => {
                // junk that never reached a key, and replays (free to send
                // once a knock is captured), are logged at a bounded rate per
                // source and overall
                let cheap = matches!(
                    reject.stage,
                    Stage::Transport | Stage::RateLimit | Stage::Hmac | Stage::Replay
                );
                if cheap
                    && !(self.log_limiter.allow(src_ip, mono)
                        && self.log_global.allow(IpAddr::from([0u8; 4]), mono))
                {
                    self.suppressed += 1;
                    self.suppressed_window += 1;
                    self.summarize(mono);
                    return;
                }
                let kind = if reject.stage == Stage::Replay {
                    "spa.replay"
                } else {
                    "spa.deny"
                };
                let mut ev = Event::new("spa", kind)
                    .field("source", src_ip.to_string())
                    .field("stage", reject.stage.as_str())
                    .field("reason", reject.reason);
                if let Some(u) = user {
                    ev = ev.field("user", u);
                }
                if self.suppressed > 0 {
                    ev = ev.field("suppressed_before", self.suppressed);
                    self.suppressed = 0;
                }
                emit(&ev);
            }
        }
    }
}

impl Gate {
    /// At most every [`SUMMARY_EVERY`]: one `spa.suppressed` line saying how
    /// many deny lines the limits held back.
    fn summarize(&mut self, mono: Instant) {
        if self
            .summary_at
            .is_some_and(|t| mono.duration_since(t) < SUMMARY_EVERY)
        {
            return;
        }
        if self.summary_at.is_none() {
            // the first suppression starts the window
            self.summary_at = Some(mono);
            return;
        }
        self.summary_at = Some(mono);
        let n = std::mem::take(&mut self.suppressed_window);
        emit(
            &Event::new("spa", "spa.suppressed")
                .field("suppressed", n)
                .field("window_secs", SUMMARY_EVERY.as_secs())
                .field(
                    gwos_core::event::REASON,
                    format!("suppressed {n} deny/replay lines (per-source and global log limits)"),
                ),
        );
    }
}

fn rank(s: Stage) -> u8 {
    match s {
        Stage::Hmac => 1,
        Stage::Decrypt => 2,
        Stage::Digest => 3,
        Stage::Decode => 4,
        _ => 0,
    }
}

fn canonical(a: IpAddr) -> IpAddr {
    match a {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(a),
        a => a,
    }
}

/// Site users plus state users (state wins by name), validated.
pub fn build_users(cfg: &SpaConfig, state: &[UserConfig]) -> Result<Vec<User>> {
    let mut out: Vec<User> = Vec::new();
    for c in &cfg.users {
        if state.iter().any(|s| s.user == c.user) {
            continue;
        }
        out.push(
            users::validate(c, &cfg.default_ports, cfg.default_timeout_secs, "site")
                .map_err(|e| anyhow::anyhow!("[spa] users: {e}"))?,
        );
    }
    for c in state {
        out.push(
            users::validate(c, &cfg.default_ports, cfg.default_timeout_secs, "state")
                .map_err(|e| anyhow::anyhow!("users.json: {e}"))?,
        );
    }
    Ok(out)
}

struct Rpc {
    cfg: SpaConfig,
    users: Arc<RwLock<Vec<User>>>,
    state_path: PathBuf,
    lock: Mutex<()>,
    started: Instant,
}

impl Rpc {
    fn handle(&self, req: Request) -> Response {
        let _g = self.lock.lock().unwrap_or_else(|p| p.into_inner());
        match req.method.as_str() {
            "health" => {
                let n = self.users.read().map(|u| u.len()).unwrap_or(0);
                Response::ok(
                    json!({"healthy": true, "users": n, "uptime_secs": self.started.elapsed().as_secs()}),
                )
            }
            "spa_user_list" => {
                let u = self.users.read().unwrap_or_else(|p| p.into_inner());
                Response::ok(json!({"users": u.iter().map(User::summary).collect::<Vec<_>>()}))
            }
            "spa_user_set" => match serde_json::from_value::<UserConfig>(req.params.clone()) {
                Err(e) => Response::err(format!("invalid parameters: {e}")),
                Ok(c) => {
                    if let Err(e) = users::validate(
                        &c,
                        &self.cfg.default_ports,
                        self.cfg.default_timeout_secs,
                        "state",
                    ) {
                        return Response::err(format!("invalid parameters: {e}"));
                    }
                    self.update(
                        |state| {
                            state.retain(|s| s.user != c.user);
                            state.push(c.clone());
                            Ok(())
                        },
                        "spa.user_set",
                        &c.user,
                    )
                }
            },
            "spa_user_delete" => {
                let Some(name) = req
                    .params
                    .get("user")
                    .and_then(Value::as_str)
                    .map(str::to_owned)
                else {
                    return Response::err("invalid parameters: need {\"user\": name}");
                };
                self.update(
                    |state| {
                        let before = state.len();
                        state.retain(|s| s.user != name);
                        if before == state.len() {
                            let in_site = self.cfg.users.iter().any(|u| u.user == name);
                            anyhow::bail!(if in_site {
                                "user is defined in the site config (read-only)"
                            } else {
                                "no such user"
                            });
                        }
                        Ok(())
                    },
                    "spa.user_delete",
                    &name,
                )
            }
            m => Response::err(format!("unknown method {m:?}")),
        }
    }

    fn update(
        &self,
        f: impl FnOnce(&mut Vec<UserConfig>) -> Result<()>,
        kind: &str,
        name: &str,
    ) -> Response {
        let result = (|| -> Result<()> {
            let mut state = users::load_state(&self.state_path)?;
            f(&mut state)?;
            let built = build_users(&self.cfg, &state)?;
            users::save_state(&self.state_path, &state)?;
            *self.users.write().unwrap_or_else(|p| p.into_inner()) = built;
            Ok(())
        })();
        match result {
            Ok(()) => {
                emit(&Event::new("spa", kind).field("user", name));
                Response::ok(json!({"user": name}))
            }
            Err(e) => Response::err(format!("{e:#}")),
        }
    }
}

fn bind(cfg: &SpaConfig) -> Result<UdpSocket> {
    let ip: IpAddr = cfg
        .bind
        .parse()
        .with_context(|| format!("[spa] bind {:?} is not an address", cfg.bind))?;
    match UdpSocket::bind(SocketAddr::new(ip, cfg.port)) {
        Ok(s) => Ok(s),
        Err(e) if ip.is_unspecified() && ip.is_ipv6() => {
            // no IPv6 on this host: IPv4 only
            UdpSocket::bind(SocketAddr::new(IpAddr::from([0u8; 4]), cfg.port))
                .with_context(|| format!("binding udp/{} (IPv6 failed too: {e})", cfg.port))
        }
        Err(e) => Err(e).with_context(|| format!("binding udp {}:{}", cfg.bind, cfg.port)),
    }
}

pub fn run(ctx: ServiceContext) -> Result<()> {
    let mut cfg: SpaConfig = ctx.site.section("spa")?;
    let from_file = load_secret_users(&cfg.users_file)?;
    if let Some(dup) = from_file
        .iter()
        .find(|f| cfg.users.iter().any(|u| u.user == f.user))
    {
        anyhow::bail!(
            "spa user {:?} is in both [spa] users and {}; keep one",
            dup.user,
            cfg.users_file.display()
        );
    }
    cfg.users.extend(from_file);
    anyhow::ensure!(
        cfg.max_age_secs > 0 && cfg.max_age_secs <= 3600,
        "[spa] max_age_secs must be 1..=3600"
    );
    anyhow::ensure!(
        cfg.rate_per_sec > 0.0 && cfg.burst >= 1.0,
        "[spa] rate_per_sec and burst must be positive"
    );
    let state_path = ctx.state_dir.join("users.json");
    let state = users::load_state(&state_path)?;
    let users = Arc::new(RwLock::new(build_users(&cfg, &state)?));
    let replay = ReplayCache::open(
        &ctx.state_dir.join("replay.log"),
        cfg.max_age_secs,
        cfg.max_replay_entries,
    )?;
    let sock = bind(&cfg)?;

    let rpc = Arc::new(Rpc {
        cfg: cfg.clone(),
        users: users.clone(),
        state_path,
        lock: Mutex::new(()),
        started: Instant::now(),
    });
    let sock_path = ctx.socket_path("spa");
    let allowed = vec![0, cfg.control_uid];
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    std::thread::Builder::new()
        .name("spa-rpc".into())
        .spawn(move || {
            let handler: gwos_core::rpc::Handler = Arc::new(move |req, _peer| rpc.handle(req));
            if let Err(e) = rt.block_on(gwos_core::rpc::serve(&sock_path, allowed, handler)) {
                eprintln!("spa: rpc server stopped: {e:#}");
                std::process::exit(1);
            }
        })?;

    emit(
        &Event::new("spa", "spa.start")
            .field("listen", sock.local_addr()?.to_string())
            .field("users", users.read().map(|u| u.len()).unwrap_or(0)),
    );
    let mut gate = Gate::new(cfg, users, replay).with_run_dir(ctx.run_dir.clone());
    let mut buf = vec![0u8; 2048];
    loop {
        let (n, src) = match sock.recv_from(&mut buf) {
            Ok(x) => x,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e).context("receiving SPA datagrams"),
        };
        let mono = Instant::now();
        let d = gate.handle(canonical(src.ip()), &buf[..n], replay::now(), mono);
        gate.act(src, d, mono);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::client::{encode, Knock};
    use crate::packet::ProtoPort;

    const K: &str = "PLJiB9FhMc635yVDYsXCvEgWl7Q60iCQNQBvN1inQ04=";
    const H: &str =
        "YTMMjQ9STIx2+a0R1557B7q8N8jd3Zt1ryxkCDxe1g6mRlhD9YheNvRXhDIYy8tOmVId8lrSScZlygiX0bsRxA==";

    fn gate(dir: &std::path::Path, require: bool) -> Gate {
        let mut cfg = SpaConfig {
            firewall: false,
            ..Default::default()
        };
        cfg.users.push(UserConfig {
            user: "alice".into(),
            key_base64: K.into(),
            hmac_key_base64: H.into(),
            hmac_type: "sha256".into(),
            encryption_mode: "cbc".into(),
            ports: vec!["tcp/443".into()],
            sources: vec![],
            require_source_address: require,
            timeout_secs: Some(5),
        });
        let users = Arc::new(RwLock::new(build_users(&cfg, &[]).unwrap()));
        let replay = ReplayCache::open(&dir.join("replay.log"), 120, 1000).unwrap();
        Gate::new(cfg, users, replay)
    }

    fn knock(allow: &str, port: u16, ts: i64, user: &str) -> String {
        let k = Knock {
            user: user.into(),
            allow_ip: allow.parse().unwrap(),
            access: vec![ProtoPort { tcp: true, port }],
            client_timeout: 0,
            timestamp: ts,
        };
        encode(
            &k,
            &crate::crypto::b64d_strict(K).unwrap(),
            Some(&crate::crypto::b64d_strict(H).unwrap()),
        )
        .unwrap()
    }

    #[test]
    fn pipeline_decisions() {
        let dir = tempfile::tempdir().unwrap();
        let mut g = gate(dir.path(), true);
        let now = replay::now();
        let src: IpAddr = "10.0.0.2".parse().unwrap();
        let t = Instant::now();
        let p = knock("10.0.0.2", 443, now, "alice");
        assert!(matches!(
            g.handle(src, p.as_bytes(), now, t),
            Decision::Permit {
                timeout_secs: 5,
                ..
            }
        ));
        let stage = |d: Decision| match d {
            Decision::Deny { reject, .. } => reject.stage,
            d => panic!("permitted: {d:?}"),
        };
        assert_eq!(stage(g.handle(src, p.as_bytes(), now, t)), Stage::Replay);
        assert_eq!(
            stage(g.handle(src, knock("10.0.0.9", 443, now, "alice").as_bytes(), now, t)),
            Stage::Policy
        );
        assert_eq!(
            stage(g.handle(src, knock("0.0.0.0", 443, now, "alice").as_bytes(), now, t)),
            Stage::Policy
        );
        assert_eq!(
            stage(g.handle(src, knock("10.0.0.2", 22, now, "alice").as_bytes(), now, t)),
            Stage::Policy
        );
        assert_eq!(
            stage(g.handle(src, knock("10.0.0.2", 443, now, "bob").as_bytes(), now, t)),
            Stage::Policy
        );
        assert_eq!(
            stage(g.handle(
                src,
                knock("10.0.0.2", 443, now - 500, "alice").as_bytes(),
                now,
                t
            )),
            Stage::Age
        );
        // replay survives a restart
        drop(g);
        let mut g = gate(dir.path(), true);
        assert_eq!(stage(g.handle(src, p.as_bytes(), now, t)), Stage::Replay);
        // not requiring the source: 0.0.0.0 means the packet source
        let mut g2 = gate(tempfile::tempdir().unwrap().path(), false);
        match g2.handle(src, knock("0.0.0.0", 443, now, "alice").as_bytes(), now, t) {
            Decision::Permit { addr, .. } => assert_eq!(addr, src),
            d => panic!("{d:?}"),
        }
    }

    #[test]
    fn junk_flood_does_not_starve_a_valid_knock_from_elsewhere() {
        let dir = tempfile::tempdir().unwrap();
        let mut g = gate(dir.path(), true);
        let now = replay::now();
        let t = Instant::now();
        let bad: IpAddr = "10.0.0.66".parse().unwrap();
        let junk = {
            let mut p = knock("10.0.0.66", 443, now, "alice").into_bytes();
            p[5] = if p[5] == b'A' { b'B' } else { b'A' };
            p
        };
        let mut limited = 0;
        for _ in 0..1000 {
            if let Decision::Deny { reject, .. } = g.handle(bad, &junk, now, t) {
                limited += (reject.stage == Stage::RateLimit) as u32;
            }
        }
        assert!(limited >= 980, "{limited}");
        let good: IpAddr = "10.0.0.2".parse().unwrap();
        assert!(matches!(
            g.handle(
                good,
                knock("10.0.0.2", 443, now, "alice").as_bytes(),
                now,
                t
            ),
            Decision::Permit { .. }
        ));
    }

    #[test]
    fn rpc_user_set_list_delete_persists_and_never_returns_keys() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = SpaConfig {
            firewall: false,
            ..Default::default()
        };
        let users = Arc::new(RwLock::new(build_users(&cfg, &[]).unwrap()));
        let rpc = Rpc {
            cfg,
            users: users.clone(),
            state_path: dir.path().join("users.json"),
            lock: Mutex::new(()),
            started: Instant::now(),
        };
        let call = |m: &str, p: Value| {
            rpc.handle(Request {
                method: m.into(),
                params: p,
                trace_id: None,
            })
        };
        assert_eq!(call("health", json!({})).result["healthy"], true);
        let r = call(
            "spa_user_set",
            json!({"user": "bob", "key_base64": K, "hmac_key_base64": H}),
        );
        assert!(r.ok, "{r:?}");
        assert!(
            !call(
                "spa_user_set",
                json!({"user": "bob", "key_base64": "c2hvcnQ=", "hmac_key_base64": H})
            )
            .ok
        );
        assert!(
            !call(
                "spa_user_set",
                json!({"user": "bob", "key_base64": K, "hmac_key_base64": K})
            )
            .ok
        );
        assert!(
            !call(
                "spa_user_set",
                json!({"user": "bob", "key_base64": K, "hmac_key_base64": H, "extra": 1})
            )
            .ok
        );
        let l = call("spa_user_list", json!({}));
        let text = l.result.to_string();
        assert!(
            text.contains("\"bob\"") && text.contains("SHA256:"),
            "{text}"
        );
        assert!(
            !text.contains(&K[..12]) && !text.contains(&H[..12]),
            "key material listed: {text}"
        );
        let on_disk: Vec<UserConfig> = gwos_core::state::read_json(&dir.path().join("users.json"))
            .unwrap()
            .unwrap();
        assert_eq!(on_disk.len(), 1);
        assert_eq!(users.read().unwrap().len(), 1);
        assert!(call("spa_user_delete", json!({"user": "bob"})).ok);
        assert!(!call("spa_user_delete", json!({"user": "bob"})).ok);
        assert_eq!(users.read().unwrap().len(), 0);
    }

    #[test]
    fn users_file_is_read_and_a_missing_one_has_no_users() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("spa.toml");
        assert_eq!(load_secret_users(&path).unwrap(), vec![]);
        std::fs::write(
            &path,
            format!(
                "[[users]]\nuser = \"alice\"\nkey_base64 = \"{K}\"\nhmac_key_base64 = \"{H}\"\n"
            ),
        )
        .unwrap();
        let users = load_secret_users(&path).unwrap();
        assert_eq!(users.len(), 1);
        assert_eq!(users[0].user, "alice");
        std::fs::write(&path, "[[users]]\nuser = \"alice\"\nkey = \"x\"\n").unwrap();
        let e = format!("{:#}", load_secret_users(&path).unwrap_err());
        assert!(
            e.starts_with(&format!("parsing spa's users file {}", path.display()))
                && e.contains("unknown field `key`"),
            "{e}"
        );
    }

    #[test]
    fn f2_replays_are_logged_within_the_per_source_and_global_limits() {
        let dir = tempfile::tempdir().unwrap();
        let mut g = gate(dir.path(), false);
        let now = replay::now();
        let t = Instant::now();
        let p = knock("0.0.0.0", 443, now, "alice");
        let src: SocketAddr = "10.0.0.2:4000".parse().unwrap();
        let d = g.handle(src.ip(), p.as_bytes(), now, t);
        assert!(matches!(d, Decision::Permit { .. }));
        for i in 0..2000u32 {
            // many sources: the per-source limit alone would let 5 each through
            let from = SocketAddr::new(
                IpAddr::from([10, 1, (i / 250) as u8, (i % 250) as u8]),
                4000,
            );
            let d = g.handle(from.ip(), p.as_bytes(), now, t);
            g.act(from, d, t);
        }
        let logged = 2000 - g.suppressed;
        assert_eq!(
            logged, LOG_GLOBAL_BURST as u64,
            "replay lines logged in one instant"
        );
    }
}
