//! `gwosd run logship`: the config, the writer loop (group commit), the
//! ingest socket, the shipper thread and the RPC (`logship.sock`: `health`,
//! `siem_config`, `pull_logs`).

use std::path::{Path, PathBuf};
use std::sync::mpsc::{sync_channel, Receiver, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use serde::Deserialize;
use serde_json::{json, Value};

use gwos_core::rpc::{Request, Response};
use gwos_core::{emit, Event, ServiceContext};

use crate::ingest::{self, Line};
use crate::shipper::{self, Control, Shipper};
use crate::spool::{self, Shared, Writer};
use crate::tls::{self, ClientCert, SiemSettings, TargetError};

/// `[logship]` in the site config.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogshipConfig {
    /// `host:port` of the SIEM (RFC 5425 listener).
    pub siem_endpoint: Option<String>,
    /// PEM of the CA that signs the SIEM's certificate.
    pub siem_ca_pem: Option<String>,
    /// Name the certificate must carry (default: the endpoint's host).
    pub siem_server_name: Option<String>,
    /// Instead of a CA: sha256 of the SIEM certificate's SPKI (64 hex digits).
    pub siem_spki_sha256: Option<String>,
    /// Optional client certificate and key (PEM files) for SIEMs that want mTLS.
    pub siem_client_cert_file: Option<PathBuf>,
    pub siem_client_key_file: Option<PathBuf>,
    /// Spool bound on /var (bytes); the oldest records go first, with a gap record.
    pub spool_max_bytes: u64,
    pub control_uid: u32,
    /// Who may write events to the ingest socket (PID 1 is root).
    pub ingest_uids: Vec<u32>,
    pub heartbeat_secs: u64,
    pub reconnect_max_secs: u64,
    /// HOSTNAME in the messages (default: the kernel's hostname).
    pub hostname: Option<String>,
    /// Refuse TLS 1.2 (see `crate::tls`).
    pub tls13_only: bool,
}

impl Default for LogshipConfig {
    fn default() -> Self {
        Self {
            siem_endpoint: None,
            siem_ca_pem: None,
            siem_server_name: None,
            siem_spki_sha256: None,
            siem_client_cert_file: None,
            siem_client_key_file: None,
            spool_max_bytes: spool::DEFAULT_MAX_BYTES,
            control_uid: gwos_core::rpc::CONTROL_UID,
            ingest_uids: vec![0],
            heartbeat_secs: 30,
            reconnect_max_secs: 30,
            hostname: None,
            tls13_only: false,
        }
    }
}

impl LogshipConfig {
    pub fn validate(&self) -> Result<()> {
        anyhow::ensure!(
            self.spool_max_bytes >= 1 << 20,
            "[logship] spool_max_bytes {} is below 1 MiB",
            self.spool_max_bytes
        );
        anyhow::ensure!(
            (1..=60).contains(&self.heartbeat_secs),
            "[logship] heartbeat_secs must be 1..=60 (a dead SIEM must show within 90 s)"
        );
        anyhow::ensure!(
            (1..=600).contains(&self.reconnect_max_secs),
            "[logship] reconnect_max_secs must be 1..=600"
        );
        anyhow::ensure!(
            self.siem_client_cert_file.is_some() == self.siem_client_key_file.is_some(),
            "[logship] siem_client_cert_file and siem_client_key_file go together"
        );
        match tls::target(&self.site_settings(), None, self.tls13_only) {
            Err(TargetError::Invalid(e)) => anyhow::bail!("[logship] {e}"),
            _ => Ok(()),
        }
    }

    fn site_settings(&self) -> SiemSettings {
        SiemSettings {
            siem_endpoint: self.siem_endpoint.clone(),
            siem_ca_pem: self.siem_ca_pem.clone(),
            siem_server_name: self.siem_server_name.clone(),
            siem_spki_sha256: self.siem_spki_sha256.clone(),
        }
    }
}

/// Present-but-null → `Some(None)` (clear the override), absent → `None`.
fn double<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Option<String>>, D::Error> {
    Option::<String>::deserialize(d).map(Some)
}

/// `siem_config` parameters (what control's `config_set` forwards).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SiemConfigSet {
    #[serde(default, deserialize_with = "double")]
    pub siem_endpoint: Option<Option<String>>,
    #[serde(default, deserialize_with = "double")]
    pub siem_ca_pem: Option<Option<String>>,
    #[serde(default, deserialize_with = "double")]
    pub siem_server_name: Option<Option<String>>,
    #[serde(default, deserialize_with = "double")]
    pub siem_spki_sha256: Option<Option<String>>,
}

fn merge(site: &SiemSettings, rt: &SiemSettings) -> SiemSettings {
    SiemSettings {
        siem_endpoint: rt.siem_endpoint.clone().or(site.siem_endpoint.clone()),
        siem_ca_pem: rt.siem_ca_pem.clone().or(site.siem_ca_pem.clone()),
        siem_server_name: rt
            .siem_server_name
            .clone()
            .or(site.siem_server_name.clone()),
        siem_spki_sha256: rt
            .siem_spki_sha256
            .clone()
            .or(site.siem_spki_sha256.clone()),
    }
}

/// `pull_logs` parameters (Unix seconds).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PullLogs {
    since: i64,
    until: i64,
    #[serde(default)]
    service: Option<String>,
    #[serde(default)]
    kind: Option<String>,
    #[serde(default)]
    trace_id: Option<String>,
    #[serde(default = "default_limit")]
    limit: usize,
}

fn default_limit() -> usize {
    1000
}

/// Largest `pull_logs` answer: below the RPC line cap.
const PULL_MAX_BYTES: usize = gwos_core::rpc::MAX_MESSAGE - (64 << 10);

pub struct Rpc {
    site: SiemSettings,
    runtime: Mutex<SiemSettings>,
    runtime_path: PathBuf,
    client: Option<ClientCert>,
    ctl: Arc<Control>,
    shared: Arc<Shared>,
    max_bytes: u64,
    boot_id: String,
    tls13_only: bool,
}

impl Rpc {
    pub fn handle(&self, req: Request) -> Response {
        match req.method.as_str() {
            "health" => Response::ok(self.health()),
            "siem_config" => match serde_json::from_value::<SiemConfigSet>(req.params) {
                Err(e) => Response::err(format!("invalid parameters: {e}")),
                Ok(set) => match self.set(set) {
                    Ok(v) => Response::ok(v),
                    Err(e) => Response::err(e),
                },
            },
            "pull_logs" => match serde_json::from_value::<PullLogs>(req.params) {
                Err(e) => Response::err(format!("invalid parameters: {e}")),
                Ok(p) => self.pull(p),
            },
            m => Response::err(format!("unknown method {m:?}")),
        }
    }

    /// The SIEM part of `health` (also what control's `config_get` shows).
    pub fn health(&self) -> Value {
        let st = self.ctl.status().clone();
        let (bytes, committed, confirmed, dropped, torn, corrupt) = {
            let s = self.shared.lock();
            (
                s.bytes(),
                s.committed,
                s.confirmed,
                s.dropped,
                s.torn_bytes,
                s.corrupt,
            )
        };
        let age = st
            .oldest_unshipped_ms
            .map(|t| ((ingest::now_ms() - t).max(0) / 1000) as u64);
        json!({
            "healthy": true,
            "service": "logship",
            "boot_id": self.boot_id,
            "siem": {
                "configured": st.configured,
                "endpoint": st.endpoint,
                "server_name": st.server_name,
                "verify": st.verify,
                "connected": st.connected,
                "last_error": st.last_error,
                "last_error_at": st.last_error_at,
                "last_ack": st.last_ack,
                "connects": st.connects,
                "shipped": st.shipped,
                "sent": st.sent,
                "in_flight": st.in_flight,
                "spool_bytes": bytes,
                "spool_max_bytes": self.max_bytes,
                "committed_seq": committed,
                "confirmed_seq": confirmed,
                "unshipped": committed.saturating_sub(confirmed),
                "oldest_unshipped_age_secs": age,
                "dropped": dropped,
                "torn_bytes_truncated": torn,
                "corrupt_skipped": corrupt,
            }
        })
    }

    fn set(&self, set: SiemConfigSet) -> Result<Value, String> {
        let mut rt = self.runtime.lock().unwrap_or_else(|p| p.into_inner());
        let mut next = rt.clone();
        let apply = |slot: &mut Option<String>, v: Option<Option<String>>| {
            if let Some(v) = v {
                *slot = v.filter(|s| !s.trim().is_empty());
            }
        };
        apply(&mut next.siem_endpoint, set.siem_endpoint);
        apply(&mut next.siem_ca_pem, set.siem_ca_pem);
        apply(&mut next.siem_server_name, set.siem_server_name);
        apply(&mut next.siem_spki_sha256, set.siem_spki_sha256);
        let eff = merge(&self.site, &next);
        let target = match tls::target(&eff, self.client.as_ref(), self.tls13_only) {
            Err(TargetError::Invalid(e)) => return Err(e),
            Err(e @ TargetError::Unverified(_)) => Err(e.to_string()),
            Ok(t) => Ok(t),
        };
        gwos_core::state::write_json(&self.runtime_path, &next)
            .map_err(|e| format!("saving {}: {e:#}", self.runtime_path.display()))?;
        *rt = next;
        drop(rt);
        self.ctl.set(target);
        emit(
            &Event::new("logship", "logship.siem_config")
                .field("endpoint", eff.siem_endpoint.clone().unwrap_or_default())
                .field(
                    "server_name",
                    eff.siem_server_name.clone().unwrap_or_default(),
                )
                .field("ca", eff.siem_ca_pem.is_some())
                .field("spki_pin", eff.siem_spki_sha256.is_some()),
        );
        Ok(self.health())
    }

    fn pull(&self, p: PullLogs) -> Response {
        let f = spool::Filter {
            since_ms: p.since.saturating_mul(1000),
            until_ms: p.until.saturating_mul(1000),
            service: p.service,
            kind: p.kind,
            trace_id: p.trace_id,
        };
        match spool::query(&self.shared, &f, p.limit.clamp(1, 10_000), PULL_MAX_BYTES) {
            Ok(found) => Response::ok(json!({
                "count": found.records.len(),
                "truncated": found.truncated,
                "records": found.records,
            })),
            Err(e) => Response::err(format!("reading the spool: {e:#}")),
        }
    }
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_owned())
        .unwrap_or_default()
}

/// The writer: takes lines from ingest, group-commits them.
fn write_loop(mut w: Writer, rx: Receiver<Line>) -> Result<()> {
    loop {
        let timeout = w
            .commit_deadline()
            .map(|d| d.saturating_duration_since(Instant::now()))
            .unwrap_or(Duration::from_secs(1));
        match rx.recv_timeout(timeout) {
            Ok((svc, payload, t)) => {
                w.append(&svc, &payload, t)?;
                while !w.commit_due(Instant::now()) {
                    match rx.try_recv() {
                        Ok((svc, payload, t)) => {
                            w.append(&svc, &payload, t)?;
                        }
                        Err(_) => break,
                    }
                }
            }
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => anyhow::bail!("ingest stopped"),
        }
        if w.commit_due(Instant::now()) {
            w.commit()?;
        }
    }
}

/// Site settings with the `siem_config` overrides saved in `siem.json`.
fn load_runtime(path: &Path) -> SiemSettings {
    gwos_core::state::read_json::<SiemSettings>(path)
        .ok()
        .flatten()
        .unwrap_or_default()
}

pub fn run(ctx: ServiceContext) -> Result<()> {
    let cfg: LogshipConfig = ctx.site.section("logship")?;
    cfg.validate()?;
    let boot_id = spool::kernel_boot_id()?;
    let cursor_path = ctx.state_dir.join("cursor.json");
    let (writer, shared) = Writer::open(
        &ctx.state_dir.join("spool"),
        cfg.spool_max_bytes,
        boot_id,
        shipper::load_cursor(&cursor_path),
    )?;
    let client = match (&cfg.siem_client_cert_file, &cfg.siem_client_key_file) {
        (Some(c), Some(k)) => Some(ClientCert::load(c, k)?),
        _ => None,
    };
    let runtime_path = ctx.state_dir.join("siem.json");
    let runtime = load_runtime(&runtime_path);
    let site = cfg.site_settings();
    let target = tls::target(&merge(&site, &runtime), client.as_ref(), cfg.tls13_only)
        .map_err(|e| e.to_string());
    let ctl = Control::new(target);
    let opts = shipper::Options {
        hostname: cfg.hostname.clone().unwrap_or_else(hostname),
        boot_id,
        heartbeat: Duration::from_secs(cfg.heartbeat_secs),
        reconnect_max: Duration::from_secs(cfg.reconnect_max_secs),
        cursor_path,
    };
    let ship = Shipper::new(shared.clone(), ctl.clone(), opts)?;
    std::thread::Builder::new()
        .name("logship-ship".into())
        .spawn(move || ship.run())?;

    let (tx, rx) = sync_channel::<Line>(4096);
    let ingest_path = ctx.socket_path("logship-ingest");
    let uids = cfg.ingest_uids.clone();
    std::fs::create_dir_all(&ctx.run_dir)
        .with_context(|| format!("creating {}", ctx.run_dir.display()))?;
    std::thread::Builder::new()
        .name("logship-accept".into())
        .spawn(move || {
            if let Err(e) = ingest::serve(&ingest_path, uids, tx) {
                eprintln!("logship: ingest stopped: {e:#}");
                std::process::exit(1);
            }
        })?;

    let rpc = Arc::new(Rpc {
        site,
        runtime: Mutex::new(runtime),
        runtime_path,
        client,
        ctl,
        shared: shared.clone(),
        max_bytes: cfg.spool_max_bytes,
        boot_id: spool::boot_id_text(&boot_id),
        tls13_only: cfg.tls13_only,
    });
    let sock_path = ctx.socket_path("logship");
    let allowed = vec![0, cfg.control_uid];
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    std::thread::Builder::new()
        .name("logship-rpc".into())
        .spawn(move || {
            let handler: gwos_core::rpc::Handler = Arc::new(move |req, _peer| rpc.handle(req));
            if let Err(e) = rt.block_on(gwos_core::rpc::serve(&sock_path, allowed, handler)) {
                eprintln!("logship: rpc server stopped: {e:#}");
                std::process::exit(1);
            }
        })?;
    let (committed, confirmed) = {
        let s = shared.lock();
        (s.committed, s.confirmed)
    };
    emit(
        &Event::new("logship", "logship.start")
            .field("committed_seq", committed)
            .field("confirmed_seq", confirmed)
            .field("spool_max_bytes", cfg.spool_max_bytes),
    );
    write_loop(writer, rx)
}
