//! `gwosd run spa-grant`: the one privileged step of an SPA knock.
//!
//! spa parses hostile UDP from the whole internet, so it runs with no
//! capabilities and may open no netlink socket. When a knock is good it asks
//! this service, over `<run_dir>/spa-grant.sock`, to add one element
//! `addr . proto . port` with a timeout of at most [`MAX_GRANT_SECS`] to
//! `spa_v4`/`spa_v6` ([`crate::spa_allow`]). That is all this service can be
//! asked: it never deletes, flushes or lists, never touches another set or
//! chain, never opens the control port, and answers `spa_grant` only for
//! spa's uid (SO_PEERCRED, read by `gwos_core::rpc` before the request;
//! root may ask `health` and nothing else). Its own seccomp filter allows no
//! sockets but unix and `NETLINK_NETFILTER`, so even a compromised spa-grant
//! cannot change routes or addresses.

use std::net::IpAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use serde_json::json;

use gwos_core::rpc::{Handler, Response};
use gwos_core::{emit, Event, ServiceContext};

use crate::{Error, Proto};

/// Service name: table entry, socket `<run_dir>/spa-grant.sock`, config section.
pub const SERVICE: &str = "spa-grant";
/// The one RPC method that changes anything.
pub const METHOD: &str = "spa_grant";
/// Longest grant (the same bound spa puts on a user's `timeout_secs`).
pub const MAX_GRANT_SECS: u64 = 300;

/// One grant: `addr` may open new connections to `proto/port` for
/// `timeout_secs`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Grant {
    pub addr: IpAddr,
    pub proto: Proto,
    pub port: u16,
    pub timeout_secs: u64,
}

/// Why a well-formed grant is refused.
#[derive(Debug, PartialEq, thiserror::Error)]
pub enum GrantError {
    #[error("timeout_secs {0} is outside 1..={MAX_GRANT_SECS}")]
    Timeout(u64),
    #[error("port 0 cannot be granted")]
    PortZero,
    #[error("address {0} cannot be granted (unspecified, multicast or broadcast)")]
    Address(IpAddr),
    #[error("port {0} is the control port, which only backend addresses reach")]
    ControlPort(u16),
}

impl Grant {
    /// Every field in bounds; `control_port` is never granted.
    pub fn check(&self, control_port: u16) -> Result<(), GrantError> {
        if !(1..=MAX_GRANT_SECS).contains(&self.timeout_secs) {
            return Err(GrantError::Timeout(self.timeout_secs));
        }
        if self.port == 0 {
            return Err(GrantError::PortZero);
        }
        if self.proto == Proto::Tcp && self.port == control_port {
            return Err(GrantError::ControlPort(self.port));
        }
        let bad = match self.addr {
            IpAddr::V4(a) => a.is_unspecified() || a.is_multicast() || a.is_broadcast(),
            IpAddr::V6(a) => match a.to_ipv4_mapped() {
                Some(v4) => v4.is_unspecified() || v4.is_multicast() || v4.is_broadcast(),
                None => a.is_unspecified() || a.is_multicast(),
            },
        };
        if bad {
            return Err(GrantError::Address(self.addr));
        }
        Ok(())
    }
}

/// `[spa-grant]` in the site config.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GrantConfig {
    /// The only uid whose `spa_grant` calls are served (spa's; host tests
    /// that run spa as root set 0).
    pub spa_uid: u32,
}

impl Default for GrantConfig {
    fn default() -> Self {
        Self { spa_uid: spa_uid() }
    }
}

/// spa's fixed uid, from `gwos_core::rpc::SERVICE_UIDS`.
fn spa_uid() -> u32 {
    gwos_core::rpc::SERVICE_UIDS
        .iter()
        .find(|(n, _)| *n == "spa")
        .map(|(_, u)| *u)
        .expect("spa is in SERVICE_UIDS")
}

/// What a valid grant does (the real one is [`crate::spa_allow`]).
pub type Apply = Arc<dyn Fn(&Grant) -> Result<(), Error> + Send + Sync>;

/// The RPC handler: `health` for any caller the socket admits, `spa_grant`
/// for `spa_uid` only, each field checked before `apply` runs.
pub fn handler(spa_uid: u32, control_port: u16, apply: Apply) -> Handler {
    Arc::new(move |req, peer| match req.method.as_str() {
        "health" => Response::ok(json!({"healthy": true, "service": SERVICE})),
        METHOD if peer.uid != spa_uid => Response::err(format!(
            "uid {} may not call {METHOD} (only spa's uid {spa_uid})",
            peer.uid
        )),
        METHOD => {
            let g: Grant = match serde_json::from_value(req.params) {
                Ok(g) => g,
                Err(e) => return Response::err(format!("invalid parameters: {e}")),
            };
            if let Err(e) = g.check(control_port) {
                emit(
                    &Event::new(SERVICE, "spa-grant.refused")
                        .field("allow", g.addr.to_string())
                        .field("port", g.port)
                        .field("reason", e.to_string()),
                );
                return Response::err(format!("refused: {e}"));
            }
            match apply(&g) {
                Ok(()) => Response::ok(json!({"granted": true})),
                Err(e) => Response::err(e.to_string()),
            }
        }
        m => Response::err(format!("unknown method {m:?}")),
    })
}

/// Root (PID 1's health checks) and spa.
fn allowed_uids(spa_uid: u32) -> Vec<u32> {
    let mut v = vec![0, spa_uid];
    v.dedup();
    v
}

/// Runs the service until it fails; called by `gwosd run spa-grant`.
pub fn run(ctx: ServiceContext) -> Result<()> {
    let cfg: GrantConfig = ctx.site.section(SERVICE)?;
    let control_port = crate::base::BaseConfig::from_site(&ctx.site)
        .context("reading the control port from the site config")?
        .control_port;
    let apply: Apply = Arc::new(|g: &Grant| {
        crate::spa_allow(g.addr, g.proto, g.port, Duration::from_secs(g.timeout_secs))
    });
    let path = ctx.socket_path(SERVICE);
    emit(
        &Event::new(SERVICE, "spa-grant.start")
            .field("socket", path.display().to_string())
            .field("spa_uid", cfg.spa_uid),
    );
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(gwos_core::rpc::serve(
        &path,
        allowed_uids(cfg.spa_uid),
        handler(cfg.spa_uid, control_port, apply),
    ))
}

/// spa's side: asks the service in `run_dir` for one grant.
pub fn request(run_dir: &Path, g: &Grant) -> Result<()> {
    let path = gwos_core::context::socket_path(run_dir, SERVICE);
    let r = gwos_core::rpc::call(
        &path,
        METHOD,
        serde_json::to_value(g)?,
        None,
        Duration::from_secs(2),
    )?;
    anyhow::ensure!(
        r.ok,
        "{SERVICE}: {}",
        r.error.as_deref().unwrap_or("refused without a reason")
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;
    use gwos_core::rpc::{Peer, Request};

    fn my_uid() -> u32 {
        std::fs::metadata("/proc/self")
            .map(|m| std::os::unix::fs::MetadataExt::uid(&m))
            .unwrap()
    }

    /// A real socket served with `handler`; grants applied are recorded.
    struct Served {
        dir: tempfile::TempDir,
        applied: Arc<Mutex<Vec<Grant>>>,
        _rt: tokio::runtime::Runtime,
    }

    fn serve(spa_uid: u32) -> Served {
        let dir = tempfile::tempdir().unwrap();
        let applied = Arc::new(Mutex::new(Vec::new()));
        let rec = applied.clone();
        let apply: Apply = Arc::new(move |g: &Grant| {
            rec.lock().unwrap().push(g.clone());
            Ok(())
        });
        let rt = tokio::runtime::Runtime::new().unwrap();
        let path = gwos_core::context::socket_path(dir.path(), SERVICE);
        let h = handler(spa_uid, 2222, apply);
        let p = path.clone();
        rt.spawn(async move { gwos_core::rpc::serve(&p, allowed_uids(spa_uid), h).await });
        for _ in 0..200 {
            if path.exists() {
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        Served {
            dir,
            applied,
            _rt: rt,
        }
    }

    fn call(s: &Served, params: serde_json::Value) -> Response {
        gwos_core::rpc::call(
            &gwos_core::context::socket_path(s.dir.path(), SERVICE),
            METHOD,
            params,
            None,
            Duration::from_secs(5),
        )
        .unwrap()
    }

    fn error(r: Response) -> String {
        assert!(!r.ok, "granted: {r:?}");
        r.error.unwrap()
    }

    /// F9: the grant path spa uses instead of holding CAP_NET_ADMIN takes
    /// exactly one bounded element from spa's uid, nothing else.
    #[test]
    fn f9_grant_rpc_bounds() {
        let me = my_uid();
        let s = serve(me);
        let good =
            json!({"addr": "198.51.100.7", "proto": "tcp", "port": 443, "timeout_secs": 300});
        let r = call(&s, good.clone());
        assert!(r.ok, "{r:?}");
        let with = |k: &str, v: serde_json::Value| {
            let mut p = good.clone();
            p[k] = v;
            p
        };
        assert_eq!(
            error(call(&s, with("timeout_secs", json!(301)))),
            "refused: timeout_secs 301 is outside 1..=300"
        );
        assert_eq!(
            error(call(&s, with("timeout_secs", json!(0)))),
            "refused: timeout_secs 0 is outside 1..=300"
        );
        let e = error(call(&s, with("addr", json!("198.51.100.999"))));
        assert!(
            e.starts_with("invalid parameters:") && e.contains("invalid IP address syntax"),
            "{e}"
        );
        assert_eq!(
            error(call(&s, with("addr", json!("0.0.0.0")))),
            "refused: address 0.0.0.0 cannot be granted (unspecified, multicast or broadcast)"
        );
        assert_eq!(
            error(call(&s, with("port", json!(2222)))),
            "refused: port 2222 is the control port, which only backend addresses reach"
        );
        assert_eq!(
            error(call(&s, with("port", json!(0)))),
            "refused: port 0 cannot be granted"
        );
        let e = error(call(&s, with("port", json!(65536))));
        assert!(e.starts_with("invalid parameters:"), "{e}");
        let e = error(call(&s, with("proto", json!("icmp"))));
        assert!(
            e.starts_with("invalid parameters: unknown variant `icmp`"),
            "{e}"
        );
        let e = error(call(&s, with("flush", json!(true))));
        assert!(
            e.starts_with("invalid parameters: unknown field `flush`"),
            "{e}"
        );
        // only the one good grant reached nftables
        assert_eq!(
            *s.applied.lock().unwrap(),
            vec![Grant {
                addr: "198.51.100.7".parse().unwrap(),
                proto: Proto::Tcp,
                port: 443,
                timeout_secs: 300
            }]
        );

        // another uid: refused whatever it asks (over the real socket: this
        // process is not the configured spa uid)
        let other = serve(me.wrapping_add(1));
        let e = error(call(&other, good.clone()));
        assert!(e.starts_with(&format!("uid {me} may not call")), "{e}");
        assert!(other.applied.lock().unwrap().is_empty());
        // and through the handler with that uid's credentials, as for root
        let h = handler(801, 2222, Arc::new(|_: &Grant| Ok(())));
        for uid in [0, 803, 804] {
            let r = h(
                Request {
                    method: METHOD.into(),
                    params: good.clone(),
                    trace_id: None,
                },
                Peer { uid, pid: None },
            );
            assert_eq!(
                r.error.as_deref(),
                Some(format!("uid {uid} may not call spa_grant (only spa's uid 801)").as_str())
            );
        }
    }
}
