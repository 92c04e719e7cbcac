//! Local RPC between the control channel and the services that own state.
//!
//! Transport: a Unix stream socket `/run/gwos/<service>.sock`; each request and
//! each response is one JSON object on one line. The server checks the
//! caller's uid with SO_PEERCRED before reading anything, so only the uids it
//! was told to trust (normally control's) may call it.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream as StdUnixStream;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader as TokioBufReader};
use tokio::net::UnixListener;

/// Largest request or response line accepted.
pub const MAX_MESSAGE: usize = 1 << 20;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Request {
    pub method: String,
    #[serde(default)]
    pub params: Value,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trace_id: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Response {
    pub ok: bool,
    #[serde(default, skip_serializing_if = "Value::is_null")]
    pub result: Value,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl Response {
    pub fn ok(result: Value) -> Self {
        Self {
            ok: true,
            result,
            error: None,
        }
    }
    pub fn err(msg: impl Into<String>) -> Self {
        Self {
            ok: false,
            result: Value::Null,
            error: Some(msg.into()),
        }
    }
}

/// Who is calling, from SO_PEERCRED.
#[derive(Debug, Clone, Copy)]
pub struct Peer {
    pub uid: u32,
    pub pid: Option<i32>,
}

/// A synchronous request handler; runs on the blocking pool.
pub type Handler = Arc<dyn Fn(Request, Peer) -> Response + Send + Sync>;

/// Binds `path` (replacing a stale socket) and serves forever.
///
/// The socket is mode 0666: services run under different uids (control
/// calls spa and vpn), so the file mode cannot be the access check. The check
/// is `allowed_uids` against the caller's SO_PEERCRED, done for every
/// connection before a byte of the request is read.
pub async fn serve(path: &Path, allowed_uids: Vec<u32>, handler: Handler) -> Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let _ = std::fs::remove_file(path);
    let listener =
        UnixListener::bind(path).with_context(|| format!("binding {}", path.display()))?;
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o666))?;
    let allowed = Arc::new(allowed_uids);
    loop {
        let (stream, _) = listener.accept().await?;
        let handler = handler.clone();
        let allowed = allowed.clone();
        tokio::spawn(async move {
            let _ = serve_conn(stream, &allowed, handler).await;
        });
    }
}

async fn serve_conn(
    stream: tokio::net::UnixStream,
    allowed: &[u32],
    handler: Handler,
) -> Result<()> {
    let cred = stream.peer_cred()?;
    let peer = Peer {
        uid: cred.uid(),
        pid: cred.pid(),
    };
    let (rd, mut wr) = stream.into_split();
    if !allowed.contains(&peer.uid) {
        let line = serde_json::to_string(&Response::err(format!(
            "uid {} may not call this service",
            peer.uid
        )))?;
        wr.write_all(format!("{line}\n").as_bytes()).await?;
        return Ok(());
    }
    let mut rd = TokioBufReader::new(rd);
    loop {
        let mut line = Vec::new();
        let n = (&mut rd)
            .take(MAX_MESSAGE as u64 + 1)
            .read_until(b'\n', &mut line)
            .await?;
        if n == 0 {
            return Ok(());
        }
        let response = if line.len() > MAX_MESSAGE {
            Response::err(format!("request larger than {MAX_MESSAGE} bytes"))
        } else {
            match serde_json::from_slice::<Request>(&line) {
                Ok(req) => {
                    let h = handler.clone();
                    tokio::task::spawn_blocking(move || h(req, peer))
                        .await
                        .unwrap_or_else(|_| Response::err("internal error: handler panicked"))
                }
                Err(e) => Response::err(format!("malformed request: {e}")),
            }
        };
        let out = serde_json::to_string(&response)?;
        wr.write_all(format!("{out}\n").as_bytes()).await?;
        if line.len() > MAX_MESSAGE {
            return Ok(());
        }
    }
}

/// control's uid: the one caller spa, vpn and tls-front accept besides root.
pub const CONTROL_UID: u32 = 804;

/// The fixed uid of each gateway service (rootfs/etc/gwos/services.toml uses
/// the same; init's tests check that). `init` is PID 1's `init.sock` (root).
pub const SERVICE_UIDS: &[(&str, u32)] = &[
    ("init", 0),
    ("spa", 801),
    ("vpn", 802),
    ("tls-front", 803),
    ("control", CONTROL_UID),
    // the one privileged step of an SPA knock (gwos_netfilter::grant)
    ("spa-grant", 805),
    ("update", 806),
    ("logship", 807),
];

/// `/run/gwos` is writable by every service, so a compromised service could
/// bind another's socket name first. Before sending a request to
/// `<name>.sock` of a known service, the caller checks that the process
/// serving it runs as that service's uid (or root, as in host tests).
fn check_server(path: &Path, stream: &StdUnixStream) -> Result<()> {
    let name = path
        .file_name()
        .and_then(|n| n.to_str())
        .and_then(|n| n.strip_suffix(".sock"))
        .unwrap_or("");
    let Some((_, want)) = SERVICE_UIDS.iter().find(|(n, _)| *n == name) else {
        return Ok(());
    };
    let cred = nix::sys::socket::getsockopt(stream, nix::sys::socket::sockopt::PeerCredentials)
        .with_context(|| format!("reading the peer credentials of {}", path.display()))?;
    server_uid_ok(name, *want, cred.uid()).with_context(|| format!("{}", path.display()))
}

fn server_uid_ok(name: &str, want: u32, uid: u32) -> Result<()> {
    anyhow::ensure!(
        uid == want || uid == 0,
        "served by uid {uid}, not {name}'s uid {want}: refusing to talk to it"
    );
    Ok(())
}

/// Connects to `path`, waiting at most `timeout`. A blocking `connect()` on
/// a Unix stream socket sleeps while the listener's accept queue is full,
/// and with no send timeout it sleeps forever (a wedged or hostile service
/// would freeze its caller); the kernel bounds that sleep by SO_SNDTIMEO,
/// so it is set before connecting and fails with EAGAIN when it runs out.
fn connect(path: &Path, timeout: Duration) -> Result<StdUnixStream> {
    use nix::sys::socket::{self, sockopt, AddressFamily, SockFlag, SockType, UnixAddr};
    use std::os::fd::AsRawFd;
    let unavailable = || format!("service socket {} unavailable", path.display());
    let addr = UnixAddr::new(path).with_context(unavailable)?;
    let fd = socket::socket(
        AddressFamily::Unix,
        SockType::Stream,
        SockFlag::SOCK_CLOEXEC,
        None,
    )
    .context("creating a Unix socket")?;
    let tv = nix::sys::time::TimeVal::new(
        timeout.as_secs().try_into().unwrap_or(i64::MAX),
        timeout.subsec_micros().into(),
    );
    socket::setsockopt(&fd, sockopt::SendTimeout, &tv).context("setting SO_SNDTIMEO")?;
    match socket::connect(fd.as_raw_fd(), &addr) {
        Ok(()) => Ok(StdUnixStream::from(fd)),
        Err(nix::errno::Errno::EAGAIN) => anyhow::bail!(
            "service socket {} did not accept the connection within {}s (its listen queue is full: the service is wedged or hostile); giving up",
            path.display(),
            timeout.as_secs_f32()
        ),
        Err(e) => Err(std::io::Error::from(e)).with_context(unavailable),
    }
}

/// Calls `method` on the service socket at `path` (blocking; connecting,
/// writing and reading each take at most `timeout`).
pub fn call(
    path: &Path,
    method: &str,
    params: Value,
    trace_id: Option<&str>,
    timeout: Duration,
) -> Result<Response> {
    let stream = connect(path, timeout)?;
    check_server(path, &stream)?;
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))?;
    let req = Request {
        method: method.into(),
        params,
        trace_id: trace_id.map(str::to_owned),
    };
    let mut line = serde_json::to_vec(&req)?;
    line.push(b'\n');
    // A server that refuses this caller answers with one line and closes,
    // maybe before the request is written: its answer is still the reason.
    if let Err(e) = (&stream).write_all(&line) {
        if e.kind() != std::io::ErrorKind::BrokenPipe {
            return Err(e).context("sending the request");
        }
    }
    let mut reader = BufReader::new((&stream).take(MAX_MESSAGE as u64 + 1));
    let mut buf = Vec::new();
    reader
        .read_until(b'\n', &mut buf)
        .context("reading service response")?;
    anyhow::ensure!(
        !buf.is_empty(),
        "service closed the connection without answering"
    );
    serde_json::from_slice(&buf).context("malformed service response")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn echo() -> Handler {
        Arc::new(|req: Request, peer: Peer| {
            Response::ok(json!({"method": req.method, "uid": peer.uid}))
        })
    }

    #[test]
    fn call_round_trip_and_uid_check() {
        let dir = tempfile::tempdir().unwrap();
        let ok_path = dir.path().join("ok.sock");
        let deny_path = dir.path().join("deny.sock");
        let me = my_uid();
        let rt = tokio::runtime::Runtime::new().unwrap();
        let (p1, p2) = (ok_path.clone(), deny_path.clone());
        rt.spawn(async move { serve(&p1, vec![me], echo()).await });
        rt.spawn(async move { serve(&p2, vec![me + 1], echo()).await });
        wait_for(&ok_path);
        wait_for(&deny_path);
        let r = call(&ok_path, "health", json!({}), None, Duration::from_secs(5)).unwrap();
        assert_eq!(r, Response::ok(json!({"method": "health", "uid": me})));
        let r = call(
            &deny_path,
            "health",
            json!({}),
            None,
            Duration::from_secs(5),
        )
        .unwrap();
        assert!(!r.ok && r.error.unwrap().contains("may not call"));
    }

    #[test]
    fn known_service_sockets_must_be_served_by_their_uid() {
        server_uid_ok("spa", 801, 801).unwrap();
        server_uid_ok("spa", 801, 0).unwrap();
        let e = server_uid_ok("spa", 801, 803).unwrap_err().to_string();
        assert!(e.contains("uid 803") && e.contains("801"), "{e}");
        // A real socket named spa.sock, served by this test's uid: allowed only if that is root or 801.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("spa.sock");
        let me = my_uid();
        let rt = tokio::runtime::Runtime::new().unwrap();
        let p = path.clone();
        rt.spawn(async move { serve(&p, vec![me], echo()).await });
        wait_for(&path);
        let r = call(&path, "health", json!({}), None, Duration::from_secs(5));
        assert_eq!(r.is_ok(), me == 0 || me == 801, "{r:?}");
    }

    #[test]
    fn malformed_request_gets_error_not_hangup() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.sock");
        let rt = tokio::runtime::Runtime::new().unwrap();
        let p = path.clone();
        let me = my_uid();
        rt.spawn(async move { serve(&p, vec![me], echo()).await });
        wait_for(&path);
        let s = StdUnixStream::connect(&path).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        (&s).write_all(b"{nope\n").unwrap();
        let mut line = String::new();
        BufReader::new(&s).read_line(&mut line).unwrap();
        let r: Response = serde_json::from_str(&line).unwrap();
        assert!(!r.ok && r.error.unwrap().starts_with("malformed request"));
    }

    /// Review F4: connect() on a Unix socket whose listen queue is full used
    /// to sleep forever; with the timeout the call fails within bounds.
    #[test]
    fn f4_connect_to_full_backlog_times_out() {
        use nix::sys::socket::{
            bind, listen, socket, AddressFamily, Backlog, SockFlag, SockType, UnixAddr,
        };
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("wedged.sock");
        let fd = socket(
            AddressFamily::Unix,
            SockType::Stream,
            SockFlag::SOCK_CLOEXEC,
            None,
        )
        .unwrap();
        bind(
            std::os::fd::AsRawFd::as_raw_fd(&fd),
            &UnixAddr::new(&path).unwrap(),
        )
        .unwrap();
        listen(&fd, Backlog::new(0).unwrap()).unwrap();
        // One client fills the queue; nobody ever accepts.
        let _queued = StdUnixStream::connect(&path).unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        let p = path.clone();
        std::thread::spawn(move || {
            let t = std::time::Instant::now();
            let r = call(&p, "health", json!({}), None, Duration::from_secs(1));
            let _ = tx.send((r.map(|_| ()).map_err(|e| format!("{e:#}")), t.elapsed()));
        });
        let (r, took) = rx
            .recv_timeout(Duration::from_secs(3))
            .expect("call() returned within 3 s");
        let e = r.expect_err("a wedged service gives an error");
        assert!(e.contains("did not accept the connection within 1s"), "{e}");
        assert!(
            took >= Duration::from_millis(900),
            "waited the timeout: {took:?}"
        );
        drop(fd);
    }

    fn my_uid() -> u32 {
        std::fs::metadata("/proc/self")
            .map(|m| std::os::unix::fs::MetadataExt::uid(&m))
            .unwrap()
    }

    fn wait_for(p: &Path) {
        for _ in 0..200 {
            if p.exists() {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        panic!("socket {} never appeared", p.display());
    }
}
