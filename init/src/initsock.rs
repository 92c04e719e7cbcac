//! PID 1's local RPC server, `/run/gwos/init.sock` (security review F12).
//!
//! Served with [`gwos_core::rpc::serve`], so the caller's uid is checked with
//! SO_PEERCRED before a byte is read: only control (uid
//! [`gwos_core::rpc::CONTROL_UID`]) may call. The other direction is checked
//! by the caller: `init` is in [`gwos_core::rpc::SERVICE_UIDS`] with uid 0, so
//! a process of another uid that binds `init.sock` (the directory is 1733) is
//! refused by [`gwos_core::rpc::call`] before any request is sent.
//!
//! Methods:
//! - `reboot`: answers `{"rebooting": true}` and asks PID 1's main loop for a
//!   clean shutdown (services SIGTERMed, /var unmounted) followed by a reboot;
//! - `boot_status`: the current `/run/gwos/boot.json` object.
//!
//! PID 1 runs the server on its own thread (a current-thread tokio runtime);
//! the handler only sets a flag that the main loop polls, so the reboot itself
//! always happens on PID 1's main thread.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use gwos_core::rpc::{Handler, Peer, Request, Response};
use serde_json::json;

use crate::console;

/// When a reboot was asked for (CLOCK_BOOTTIME ms + 1; 0 = not asked).
static REBOOT: AtomicU64 = AtomicU64::new(0);
/// Time the caller gets to pass the answer on (control writes it to the SSH
/// channel) before the shutdown SIGTERMs it.
pub const REBOOT_DELAY_MS: u64 = 1000;

/// True once (then reset) when a caller asked for a reboot at least
/// [`REBOOT_DELAY_MS`] ago.
pub fn take_reboot_request() -> bool {
    let at = REBOOT.load(Ordering::SeqCst);
    if at == 0 || crate::boottime_ms() + 1 < at + REBOOT_DELAY_MS {
        return false;
    }
    REBOOT.swap(0, Ordering::SeqCst) != 0
}

/// True while a reboot was asked for and not yet taken.
pub fn reboot_pending() -> bool {
    REBOOT.load(Ordering::SeqCst) != 0
}

/// The uids allowed to call init.sock.
pub fn allowed_uids() -> Vec<u32> {
    vec![gwos_core::rpc::CONTROL_UID]
}

/// What a request asks PID 1 to do; the decision is separate from the effect
/// (setting the flag) so it can be tested without a socket.
#[derive(Debug, PartialEq, Eq)]
pub enum Action {
    Reboot,
    Status,
}

pub fn decide(req: &Request) -> Result<Action, String> {
    let params_empty = req.params.is_null() || req.params.as_object().is_some_and(|o| o.is_empty());
    match req.method.as_str() {
        "reboot" | "boot_status" if !params_empty => {
            Err(format!("{} takes no parameters", req.method))
        }
        "reboot" => Ok(Action::Reboot),
        "boot_status" => Ok(Action::Status),
        other => Err(format!(
            "unknown method {other:?} (init.sock serves reboot, boot_status)"
        )),
    }
}

/// The handler: `status_path` is where boot.json lives.
pub fn handler(status_path: PathBuf) -> Handler {
    Arc::new(move |req: Request, peer: Peer| match decide(&req) {
        Ok(Action::Reboot) => {
            console::say(&format!(
                "init.sock: reboot requested by uid {} (trace {})",
                peer.uid,
                req.trace_id.as_deref().unwrap_or("-")
            ));
            let _ = REBOOT.compare_exchange(
                0,
                crate::boottime_ms() + 1,
                Ordering::SeqCst,
                Ordering::SeqCst,
            );
            Response::ok(json!({"rebooting": true}))
        }
        Ok(Action::Status) => match std::fs::read(&status_path) {
            Ok(b) => match serde_json::from_slice::<serde_json::Value>(&b) {
                Ok(v) => Response::ok(v),
                Err(e) => Response::err(format!("{}: {e}", status_path.display())),
            },
            Err(e) => Response::err(format!("{}: {e}", status_path.display())),
        },
        Err(e) => Response::err(e),
    })
}

/// Serves `path` forever on the calling thread.
pub fn serve_blocking(path: &Path, allowed: Vec<u32>, handler: Handler) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(gwos_core::rpc::serve(path, allowed, handler))
}

/// Starts the server on a new thread (call after the signals are blocked, so
/// the thread inherits PID 1's mask). Errors are printed on the console.
pub fn spawn(run_dir: &Path) {
    let path = gwos_core::context::socket_path(run_dir, "init");
    let status = run_dir.join("boot.json");
    std::thread::spawn(move || {
        if let Err(e) = serve_blocking(&path, allowed_uids(), handler(status)) {
            console::say(&format!(
                "init.sock: server stopped: {e:#} (control's reboot will answer unavailable)"
            ));
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn wait_for(p: &Path) {
        for _ in 0..300 {
            if p.exists() {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        panic!("socket {} never appeared", p.display());
    }

    fn req(method: &str, params: serde_json::Value) -> Request {
        Request {
            method: method.into(),
            params,
            trace_id: None,
        }
    }

    #[test]
    fn decide_methods() {
        assert_eq!(decide(&req("reboot", json!({}))), Ok(Action::Reboot));
        assert_eq!(
            decide(&req("reboot", serde_json::Value::Null)),
            Ok(Action::Reboot)
        );
        assert_eq!(decide(&req("boot_status", json!({}))), Ok(Action::Status));
        assert_eq!(
            decide(&req("reboot", json!({"now": true}))),
            Err("reboot takes no parameters".into())
        );
        assert_eq!(
            decide(&req("poweroff", json!({}))),
            Err("unknown method \"poweroff\" (init.sock serves reboot, boot_status)".into())
        );
    }

    /// PID 1's server refuses every caller whose uid is not control's: here
    /// the test process (root, or whatever uid runs it) is not 804.
    #[test]
    fn init_sock_refuses_uids_other_than_control() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("init.sock");
        let p = path.clone();
        // PID 1's allowlist and server; the handler counts the calls that get through.
        let calls = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let c = calls.clone();
        let h: Handler = Arc::new(move |_r: Request, _p: Peer| {
            c.fetch_add(1, Ordering::SeqCst);
            Response::ok(json!({"rebooting": true}))
        });
        std::thread::spawn(move || serve_blocking(&p, allowed_uids(), h));
        wait_for(&path);
        let me = nix::unistd::geteuid().as_raw();
        assert_ne!(
            me,
            gwos_core::rpc::CONTROL_UID,
            "run the tests as another uid"
        );
        // The server answers a refused caller before reading its request and
        // hangs up, so read that line raw (rpc::call may hit EPIPE writing).
        use std::io::{BufRead, Write};
        let s = std::os::unix::net::UnixStream::connect(&path).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut line = String::new();
        std::io::BufReader::new(&s).read_line(&mut line).unwrap();
        let r: Response = serde_json::from_str(&line).unwrap();
        assert_eq!(
            r.error.as_deref(),
            Some(format!("uid {me} may not call this service").as_str())
        );
        (&s).write_all(b"{\"method\":\"reboot\"}\n").ok();
        std::thread::sleep(Duration::from_millis(200));
        assert_eq!(
            calls.load(Ordering::SeqCst),
            0,
            "a refused caller reached the handler"
        );
    }

    /// The handler with control's uid: reboot sets the flag, boot_status reads boot.json.
    #[test]
    fn handler_reboot_and_status() {
        let dir = tempfile::tempdir().unwrap();
        let status = dir.path().join("boot.json");
        std::fs::write(&status, br#"{"slot":"A"}"#).unwrap();
        let h = handler(status);
        let control = Peer {
            uid: gwos_core::rpc::CONTROL_UID,
            pid: None,
        };
        let r = h(req("boot_status", json!({})), control);
        assert_eq!(r, Response::ok(json!({"slot": "A"})));
        let r = h(req("reboot", json!({})), control);
        assert_eq!(r, Response::ok(json!({"rebooting": true})));
        assert!(reboot_pending());
        assert!(
            !take_reboot_request(),
            "taken before the answer had time to go out"
        );
        std::thread::sleep(Duration::from_millis(REBOOT_DELAY_MS + 50));
        assert!(take_reboot_request());
        assert!(!take_reboot_request(), "the flag is taken once");
    }

    /// Helper process for `f12_init_sock_squatter_refused`: serves a socket
    /// (path in GWOS_SQUAT_PATH) that answers every request with ok, as a
    /// squatting service would. Run only by that test, as another uid.
    #[test]
    #[ignore = "helper process of f12_init_sock_squatter_refused"]
    fn squatter_helper() {
        let path = std::env::var("GWOS_SQUAT_PATH").expect("GWOS_SQUAT_PATH");
        let h: Handler =
            Arc::new(|_req: Request, _peer: Peer| Response::ok(json!({"rebooting": true})));
        let me = nix::unistd::geteuid().as_raw();
        serve_blocking(
            Path::new(&path),
            vec![me, 0, gwos_core::rpc::CONTROL_UID],
            h,
        )
        .unwrap();
    }

    /// F12: a process of another uid than root that binds `init.sock` first
    /// (as a compromised service could in the 1733 run dir) is refused by the
    /// caller before a request is sent; control would otherwise show its
    /// answer as a successful reboot.
    #[test]
    fn f12_init_sock_squatter_refused() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o1777)).unwrap();
        let path = dir.path().join("init.sock");
        let me = nix::unistd::geteuid().as_raw();
        let squatter_uid = if me == 0 { 65534 } else { me };
        let mut child = None;
        if me == 0 {
            // Another process, as nobody: the test binary itself running the helper above.
            use std::os::unix::process::CommandExt;
            let exe = std::env::current_exe().unwrap();
            child = Some(
                std::process::Command::new(exe)
                    .args([
                        "--ignored",
                        "--exact",
                        "initsock::tests::squatter_helper",
                        "--nocapture",
                    ])
                    .env("GWOS_SQUAT_PATH", &path)
                    .uid(65534)
                    .gid(65534)
                    .stdout(std::process::Stdio::null())
                    .spawn()
                    .expect("starting the squatter as uid 65534"),
            );
        } else {
            // Not root: this process's own uid is already "not init's uid 0".
            let p = path.clone();
            let h: Handler =
                Arc::new(|_req: Request, _peer: Peer| Response::ok(json!({"rebooting": true})));
            std::thread::spawn(move || serve_blocking(&p, vec![me], h));
        }
        wait_for(&path);
        std::thread::sleep(Duration::from_millis(100));
        let r = gwos_core::rpc::call(&path, "reboot", json!({}), None, Duration::from_secs(5));
        if let Some(mut c) = child {
            let _ = c.kill();
            let _ = c.wait();
        }
        let e = format!("{:#}", r.expect_err("a squatted init.sock was answered"));
        assert!(
            e.contains(&format!(
                "served by uid {squatter_uid}, not init's uid 0: refusing to talk to it"
            )),
            "{e}"
        );
    }
}
