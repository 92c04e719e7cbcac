//! The `update` service (`gwosd run update`): the on-device writer of A/B
//! updates. Control's `update_apply` streams the bundle (ssh stdin) to
//! `/run/gwos/update.sock`; this service verifies it ([`gwos_signing::bundle`]),
//! writes the inactive slot's root and verity partitions, reads them back,
//! and installs the slot's UKI on the ESP under a boot-counted name so
//! systemd-boot tries it next ([`apply`]). `update_status` and
//! `update_rollback` are answered from the ESP's boot entries, the slots'
//! signed manifests and PID 1's `/run/gwos/boot.json` ([`status`]).
//!
//! Access: it runs as its own uid with no capabilities; PID 1 gives its
//! group the inactive slot's root and verity partitions and the ESP (nothing
//! else of the disk), and its state dir `/var/lib/gwos/update` holds the
//! spool and the last result.
//!
//! Wire protocol on the socket (caller uid checked with SO_PEERCRED before a
//! byte is read: control, or root): one JSON request line
//! `{"method":"apply"|"status"|"rollback"|"health","trace_id":..}`. For
//! `apply` the raw bundle follows the line until the caller shuts down its
//! write half; the service answers with zero or more `{"progress":"…"}`
//! lines, then one [`gwos_core::rpc::Response`] line. Other methods get the
//! response line only (so `gwos_core::rpc::call` works for them).

#![forbid(unsafe_code)]

pub mod apply;
pub mod blockcache;
pub mod boot;
pub mod disk;
pub mod esp;
pub mod status;

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use anyhow::{Context, Result};
use gwos_core::rpc::{Response, CONTROL_UID};
use gwos_core::ServiceContext;
use serde::Deserialize;
use serde_json::{json, Value};

pub const KEYS_DIR: &str = "/etc/gwos/release-keys";
const MAX_LINE: u64 = 64 * 1024;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Request {
    method: String,
    #[serde(default)]
    params: Value,
    #[serde(default)]
    trace_id: Option<String>,
}

/// Where the service finds things; host tests point these at fakes.
#[derive(Clone)]
pub struct Paths {
    pub state_dir: PathBuf,
    pub boot_json: PathBuf,
    pub release_json: PathBuf,
    pub keys_dir: PathBuf,
    /// None: find the partitions in sysfs.
    pub disk: Option<disk::Disk>,
    pub allowed_uids: Vec<u32>,
}

pub fn run(ctx: ServiceContext) -> Result<()> {
    let paths = Paths {
        state_dir: ctx.state_dir.clone(),
        boot_json: PathBuf::from(boot::BOOT_JSON),
        release_json: PathBuf::from(boot::RELEASE_JSON),
        keys_dir: PathBuf::from(KEYS_DIR),
        disk: None,
        allowed_uids: vec![CONTROL_UID, 0],
    };
    serve(&ctx.socket_path("update"), paths)
}

/// Binds `socket` and serves forever (one thread per connection, one apply
/// at a time).
pub fn serve(socket: &Path, paths: Paths) -> Result<()> {
    let _ = std::fs::remove_file(socket);
    let listener =
        UnixListener::bind(socket).with_context(|| format!("binding {}", socket.display()))?;
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(socket, std::fs::Permissions::from_mode(0o666))?;
    let paths = Arc::new(paths);
    let busy = Arc::new(Mutex::new(()));
    for conn in listener.incoming() {
        let Ok(conn) = conn else { continue };
        let (paths, busy) = (paths.clone(), busy.clone());
        std::thread::spawn(move || {
            let _ = handle(conn, &paths, &busy);
        });
    }
    Ok(())
}

fn send(w: &mut impl Write, v: &impl serde::Serialize) -> std::io::Result<()> {
    let mut line = serde_json::to_vec(v)?;
    line.push(b'\n');
    w.write_all(&line)
}

fn handle(conn: UnixStream, paths: &Paths, busy: &Mutex<()>) -> Result<()> {
    let cred = nix::sys::socket::getsockopt(&conn, nix::sys::socket::sockopt::PeerCredentials)?;
    let mut out = conn.try_clone()?;
    if !paths.allowed_uids.contains(&cred.uid()) {
        send(
            &mut out,
            &Response::err(format!(
                "uid {} may not call the update service",
                cred.uid()
            )),
        )?;
        return Ok(());
    }
    let mut input = BufReader::with_capacity(1 << 20, conn);
    let mut line = Vec::new();
    (&mut input).take(MAX_LINE).read_until(b'\n', &mut line)?;
    let req: Request = match serde_json::from_slice(&line) {
        Ok(r) => r,
        Err(e) => {
            return Ok(send(
                &mut out,
                &Response::err(format!("malformed request: {e}")),
            )?)
        }
    };
    let _ = (&req.params, &req.trace_id);
    let resp = match req.method.as_str() {
        "health" => Response::ok(json!({"healthy": true, "service": "update"})),
        "status" => result(status_of(paths)),
        "rollback" => {
            let Ok(_guard) = busy.try_lock() else {
                return Ok(send(&mut out, &Response::err("an update is in progress"))?);
            };
            result(rollback_of(paths))
        }
        "apply" => {
            let Ok(_guard) = busy.try_lock() else {
                return Ok(send(
                    &mut out,
                    &Response::err(
                        "another update_apply is in progress; try again when it has finished",
                    ),
                )?);
            };
            let mut progress = |msg: String| {
                let _ = send(
                    &mut out.try_clone().expect("clone of a connected socket"),
                    &json!({"progress": msg}),
                );
            };
            apply_from(paths, &mut input, &mut progress)
        }
        m => Response::err(format!(
            "unknown method {m:?} (apply, status, rollback, health)"
        )),
    };
    send(&mut out, &resp)?;
    Ok(())
}

fn result(r: Result<Value>) -> Response {
    match r {
        Ok(v) => Response::ok(v),
        Err(e) => Response::err(format!("{e:#}")),
    }
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn disk_of(paths: &Paths) -> Result<disk::Disk> {
    match &paths.disk {
        Some(d) => Ok(d.clone()),
        None => disk::Disk::from_sysfs(),
    }
}

fn active_root_hash() -> Option<String> {
    let text = std::fs::read_to_string("/proc/cmdline").ok()?;
    text.split_whitespace()
        .find_map(|w| w.strip_prefix("gwos.roothash="))
        .map(str::to_owned)
}

fn boot_of(paths: &Paths, disk: &disk::Disk) -> Result<boot::BootInfo> {
    boot::load_or_derive(&paths.boot_json, &paths.release_json, Some(&disk.esp))
}

fn status_of(paths: &Paths) -> Result<Value> {
    let keys = gwos_signing::load_dir(&paths.keys_dir)?;
    let disk = disk_of(paths)?;
    let boot = boot_of(paths, &disk)?;
    status::status(&disk, &keys, &boot, &paths.state_dir, active_root_hash())
}

fn rollback_of(paths: &Paths) -> Result<Value> {
    let disk = disk_of(paths)?;
    let boot = boot_of(paths, &disk)?;
    status::rollback(&disk, &boot, &paths.state_dir, now())
}

/// Runs [`apply::apply`] and records the outcome in `last.json`.
pub fn apply_from(
    paths: &Paths,
    input: &mut impl Read,
    progress: &mut dyn FnMut(String),
) -> Response {
    let prepared = (|| -> Result<_> {
        let disk = disk_of(paths)?;
        Ok((
            gwos_signing::load_dir(&paths.keys_dir)?,
            boot_of(paths, &disk)?,
            disk,
        ))
    })();
    let outcome = match &prepared {
        Err(e) => Err(apply::ApplyError::Device(anyhow::anyhow!("{e:#}"))),
        Ok((keys, boot, disk)) => {
            let env = apply::Env {
                disk,
                keys,
                boot,
                spool: paths.state_dir.join("spool"),
            };
            apply::apply(&env, input, progress)
        }
    };
    let last = match &outcome {
        Ok(a) => status::LastResult {
            result: "ok".into(),
            at: now(),
            slot: Some(a.slot.into()),
            version_id: Some(a.version_id.clone()),
            header_sha256: Some(a.header_sha256.clone()),
            seconds: Some(a.seconds),
            error: None,
        },
        Err(e) => status::LastResult {
            result: if matches!(
                e,
                apply::ApplyError::Device(_) | apply::ApplyError::ReadBack { .. }
            ) {
                "failed"
            } else {
                "refused"
            }
            .into(),
            at: now(),
            slot: None,
            version_id: None,
            header_sha256: None,
            seconds: None,
            error: Some(e.to_string()),
        },
    };
    let _ = gwos_core::state::write_json(&paths.state_dir.join(status::LAST_FILE), &last);
    match outcome {
        Ok(a) => Response::ok(serde_json::to_value(&a).unwrap_or(Value::Null)),
        // The rest of a refused stream is not read: the caller sees the
        // answer and stops sending (control drops what its client still sends).
        Err(e) => Response::err(e.to_string()),
    }
}
