//! In-process helpers for control's host tests: ed25519 keys written as
//! OpenSSH files (what `ssh -i` and `gwos ctl --approve-with` read), a
//! `Control` over a temporary state dir, one call through `Control::call`
//! exactly as the SSH layer makes it.
#![allow(dead_code)]

use std::net::IpAddr;
use std::path::{Path, PathBuf};

use gwos_control::commands::{CallInput, Caller, Control};
use gwos_control::config::ControlConfig;
use gwos_control::keys::KeyConfig;
use russh::keys::ssh_key::{private::Ed25519Keypair, LineEnding};
use russh::keys::PrivateKey;
use serde_json::Value;

/// A key pair on disk.
pub(crate) struct TestKey {
    pub file: PathBuf,
    /// `ssh-ed25519 AAAA… name@test`
    pub line: String,
    /// `SHA256:…`
    pub fp: String,
    pub private: PrivateKey,
}

pub(crate) fn key(dir: &Path, name: &str) -> TestKey {
    let seed: [u8; 32] = rand::random();
    let mut private = PrivateKey::from(Ed25519Keypair::from_seed(&seed));
    private.set_comment(format!("{name}@test"));
    let file = dir.join(name);
    let pem = private.to_openssh(LineEnding::LF).unwrap();
    std::fs::write(&file, pem.as_bytes()).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).unwrap();
    let line = private.public_key().to_openssh().unwrap();
    std::fs::write(file.with_extension("pub"), format!("{line}\n")).unwrap();
    TestKey {
        file,
        fp: gwos_control::keys::fingerprint(private.public_key()),
        line,
        private,
    }
}

pub(crate) fn site_key(k: &TestKey, scopes: &[&str]) -> KeyConfig {
    KeyConfig {
        key: k.line.clone(),
        scopes: scopes.iter().map(|s| s.to_string()).collect(),
        comment: None,
        added_by: None,
        added_at: None,
    }
}

/// What PID 1 does before it starts control: the state sealing key in
/// `<run>/keys/control.key` (review F10).
pub(crate) fn seal_key(run: &Path) {
    let key = gwos_core::sealed::key_path(run, "control");
    std::fs::create_dir_all(key.parent().unwrap()).unwrap();
    if !key.exists() {
        std::fs::write(&key, gwos_core::sealed::new_secret()).unwrap();
    }
}

pub(crate) fn control(state: &Path, site: ControlConfig) -> Control {
    seal_key(&state.join("run"));
    site.validate().unwrap();
    Control::new(site, state, &state.join("run"), "SHA256:host".into()).unwrap()
}

pub(crate) const SOURCE: &str = "192.0.2.10";

/// One call with `body` (any bytes) as stdin; returns the response.
pub(crate) fn call_raw(ctl: &Control, k: &TestKey, command: &str, body: &[u8]) -> Value {
    let caller = Caller {
        fingerprint: k.fp.clone(),
        source: SOURCE.parse::<IpAddr>().unwrap(),
    };
    let (resp, code) = ctl.call(
        &caller,
        CallInput {
            command: command.into(),
            body: body.to_vec(),
            ..Default::default()
        },
    );
    assert_eq!(code, if resp["ok"] == true { 0 } else { 1 }, "{resp}");
    resp
}

pub(crate) fn call(ctl: &Control, k: &TestKey, command: &str, req: &Value) -> Value {
    call_raw(ctl, k, command, req.to_string().as_bytes())
}

pub(crate) fn assert_ok(v: &Value) {
    assert_eq!(v["ok"], true, "expected ok: {v}");
}

pub(crate) fn assert_err(v: &Value, needle: &str) {
    assert_eq!(
        v["ok"], false,
        "expected an error containing {needle:?}: {v}"
    );
    let e = v["error"].as_str().unwrap_or_default();
    assert!(e.contains(needle), "error should contain {needle:?}: {v}");
}

/// Audit records of `kind` in `state/audit.log*`, oldest first.
pub(crate) fn audit(state: &Path, kind: &str) -> Vec<Value> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(state)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            p.file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with("audit.log")
        })
        .collect();
    // audit.log.N is older the larger N; audit.log is the newest.
    files.sort_by_key(|p| {
        std::cmp::Reverse(
            p.extension()
                .and_then(|e| e.to_str())
                .and_then(|e| e.parse::<u32>().ok())
                .unwrap_or(0),
        )
    });
    let mut out = Vec::new();
    for f in files {
        for line in std::fs::read_to_string(&f).unwrap_or_default().lines() {
            let v: Value = serde_json::from_str(line).unwrap();
            if v["kind"] == kind {
                out.push(v);
            }
        }
    }
    out
}

/// `gwos_control::server::serve` on 127.0.0.1 (an ephemeral port, backend
/// 127.0.0.0/8) in its own runtime; stops on drop.
pub(crate) struct Served {
    pub rt: tokio::runtime::Runtime,
    pub addr: std::net::SocketAddr,
    pub ctl: std::sync::Arc<Control>,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

impl Drop for Served {
    fn drop(&mut self) {
        self.task.abort();
    }
}

pub(crate) fn serve(state: &Path, site: ControlConfig) -> Served {
    serve_on(state, site, 0)
}

/// [`serve`] on a given port (0 = any); retries while the port is still
/// held by a server that just stopped.
pub(crate) fn serve_on(state: &Path, mut site: ControlConfig, port: u16) -> Served {
    site.listen = format!("127.0.0.1:{port}");
    site.backend = vec!["127.0.0.0/8".into()];
    site.validate().unwrap();
    let host = gwos_control::server::host_key(state).unwrap();
    let host_fp = gwos_control::keys::fingerprint(host.public_key());
    seal_key(&state.join("run"));
    let ctl = std::sync::Arc::new(Control::new(site, state, &state.join("run"), host_fp).unwrap());
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let listener = loop {
        match rt.block_on(tokio::net::TcpListener::bind(("127.0.0.1", port))) {
            Ok(l) => break l,
            Err(e) if std::time::Instant::now() < deadline => {
                let _ = e;
                std::thread::sleep(std::time::Duration::from_millis(100));
            }
            Err(e) => panic!("binding 127.0.0.1:{port}: {e}"),
        }
    };
    let addr = listener.local_addr().unwrap();
    let task = rt.spawn(gwos_control::server::serve(ctl.clone(), listener, host));
    Served {
        rt,
        addr,
        ctl,
        task,
    }
}

/// The real OpenSSH client against `addr` with `keys` (-i each), `extra`
/// options; returns (stdout, stderr, exit code). Host key checking is off:
/// these tests are about the server (gwos ctl's checking has its own test).
pub(crate) fn ssh(
    addr: std::net::SocketAddr,
    keys: &[&Path],
    extra: &[&str],
    command: &str,
    stdin: &[u8],
) -> (String, String, i32) {
    use std::io::Write;
    use std::process::{Command, Stdio};
    let mut c = Command::new("ssh");
    c.args(["-p", &addr.port().to_string()]);
    for k in keys {
        c.arg("-i").arg(k);
    }
    c.args([
        "-o",
        "StrictHostKeyChecking=no",
        "-o",
        "UserKnownHostsFile=/dev/null",
        "-o",
        "BatchMode=yes",
        "-o",
        "IdentitiesOnly=yes",
        "-o",
        "ConnectTimeout=10",
    ])
    .args(extra)
    .arg(format!("gwctl@{}", addr.ip()))
    .arg(command)
    .stdin(Stdio::piped())
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    let mut child = c.spawn().expect("running ssh");
    let mut input = child.stdin.take().unwrap();
    let data = stdin.to_vec();
    let w = std::thread::spawn(move || {
        let _ = input.write_all(&data);
    });
    let out = child.wait_with_output().unwrap();
    let _ = w.join();
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
        out.status.code().unwrap_or(-1),
    )
}
