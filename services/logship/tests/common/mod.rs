//! Helpers of logship's host tests: a real rsyslogd (imtcp + gtls) as the
//! SIEM with a test-made CA, `gwosd run logship` as a child process, and the
//! ingest socket as PID 1 would write it.
#![allow(dead_code)]

use std::io::Write;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

pub(crate) fn wait_until(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    let t = Instant::now();
    while t.elapsed() < timeout {
        if f() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("timed out after {timeout:?} waiting for {what}");
}

fn run(cmd: &mut Command) {
    let o = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        o.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
}

/// `gwosd` of this target dir ($GWOSD if set), built if needed.
pub(crate) fn gwosd() -> PathBuf {
    static BUILT: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    BUILT.get_or_init(build_gwosd).clone()
}

fn build_gwosd() -> PathBuf {
    if let Some(p) = std::env::var_os("GWOSD") {
        return p.into();
    }
    let dir = std::env::current_exe()
        .unwrap()
        .parent()
        .unwrap()
        .parent()
        .unwrap()
        .to_path_buf();
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let ws = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let st = Command::new(cargo)
        .current_dir(&ws)
        .env("CARGO_TARGET_DIR", dir.parent().unwrap())
        .args(["build", "-j2", "-p", "gwos-init", "--bin", "gwosd"])
        .status()
        .expect("running cargo build for gwosd");
    assert!(st.success(), "building gwosd failed");
    dir.join("gwosd")
}

pub(crate) fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A CA and a server certificate for `siem.test` (and a second, unrelated CA).
pub(crate) struct Pki {
    pub dir: PathBuf,
}

impl Pki {
    pub(crate) fn new(dir: &Path) -> Self {
        let d = |n: &str| dir.join(n);
        for ca in ["ca", "other-ca"] {
            run(Command::new("openssl")
                .args([
                    "req",
                    "-x509",
                    "-newkey",
                    "ec",
                    "-pkeyopt",
                    "ec_paramgen_curve:P-256",
                    "-nodes",
                    "-days",
                    "2",
                ])
                .arg("-keyout")
                .arg(d(&format!("{ca}.key")))
                .arg("-out")
                .arg(d(&format!("{ca}.pem")))
                .args(["-subj", &format!("/CN=test-{ca}")]));
        }
        run(Command::new("openssl")
            .args([
                "req",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
                "-nodes",
                "-subj",
                "/CN=siem.test",
            ])
            .arg("-keyout")
            .arg(d("srv.key"))
            .arg("-out")
            .arg(d("srv.csr")));
        std::fs::write(d("ext"), "subjectAltName=DNS:siem.test\n").unwrap();
        run(Command::new("openssl")
            .args(["x509", "-req", "-days", "2", "-CAcreateserial"])
            .arg("-in")
            .arg(d("srv.csr"))
            .arg("-CA")
            .arg(d("ca.pem"))
            .arg("-CAkey")
            .arg(d("ca.key"))
            .arg("-out")
            .arg(d("srv.pem"))
            .arg("-extfile")
            .arg(d("ext")));
        Self {
            dir: dir.to_owned(),
        }
    }
    pub(crate) fn ca_pem(&self) -> String {
        std::fs::read_to_string(self.dir.join("ca.pem")).unwrap()
    }
    pub(crate) fn other_ca_pem(&self) -> String {
        std::fs::read_to_string(self.dir.join("other-ca.pem")).unwrap()
    }
    /// sha256 of the server certificate's SPKI, hex.
    pub(crate) fn server_pin(&self) -> String {
        let out = Command::new("sh").arg("-c").arg(format!(
            "openssl x509 -in {} -pubkey -noout | openssl pkey -pubin -outform der | openssl dgst -sha256 -hex",
            self.dir.join("srv.pem").display()
        )).output().unwrap();
        String::from_utf8_lossy(&out.stdout)
            .rsplit(' ')
            .next()
            .unwrap()
            .trim()
            .to_owned()
    }
}

/// rsyslogd as the SIEM: imtcp with the gtls driver on 127.0.0.1:`port`,
/// every message's raw text appended to `siem.log`.
pub(crate) struct Siem {
    pub dir: PathBuf,
    pub port: u16,
    child: Option<Child>,
}

impl Siem {
    pub(crate) fn new(dir: &Path, pki: &Pki) -> Self {
        let port = free_port();
        std::fs::create_dir_all(dir.join("work")).unwrap();
        let p = |n: &str| pki.dir.join(n).display().to_string();
        std::fs::write(dir.join("rs.conf"), format!(
r#"global(workDirectory="{work}" DefaultNetstreamDriver="gtls" DefaultNetstreamDriverCAFile="{ca}"
       DefaultNetstreamDriverCertFile="{cert}" DefaultNetstreamDriverKeyFile="{key}")
module(load="imtcp" StreamDriver.Name="gtls" StreamDriver.Mode="1" StreamDriver.AuthMode="anon")
input(type="imtcp" port="{port}" address="127.0.0.1")
template(name="raw" type="string" string="%rawmsg%\n")
action(type="omfile" file="{log}" template="raw")
"#, work = dir.join("work").display(), ca = p("ca.pem"), cert = p("srv.pem"), key = p("srv.key"),
            log = dir.join("siem.log").display())).unwrap();
        Self {
            dir: dir.to_owned(),
            port,
            child: None,
        }
    }

    pub(crate) fn endpoint(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    pub(crate) fn start(&mut self) {
        let c = Command::new("rsyslogd")
            .arg("-n")
            .arg("-f")
            .arg(self.dir.join("rs.conf"))
            .arg("-i")
            .arg(self.dir.join("rs.pid"))
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(self.dir.join("rs.err")).unwrap())
            .spawn()
            .expect("rsyslogd (Debian rsyslog + rsyslog-gnutls) must be installed");
        self.child = Some(c);
        let port = self.port;
        wait_until("rsyslogd listening", Duration::from_secs(10), || {
            Command::new("ss")
                .args(["-Hltn", &format!("sport = :{port}")])
                .output()
                .map(|o| !o.stdout.is_empty())
                .unwrap_or(false)
        });
    }

    /// Stops rsyslogd (SIGTERM) and waits for it.
    pub(crate) fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(c.id() as i32),
                nix::sys::signal::Signal::SIGTERM,
            );
            let _ = c.wait();
        }
    }

    pub(crate) fn raw(&self) -> String {
        std::fs::read_to_string(self.dir.join("siem.log")).unwrap_or_default()
    }

    /// Parsed messages (heartbeats left out).
    pub(crate) fn messages(&self) -> Vec<Msg> {
        self.raw()
            .lines()
            .filter(|l| !l.is_empty())
            .map(|l| Msg::parse(l).unwrap_or_else(|e| panic!("{e}: {l}")))
            .filter(|m| m.msgid != "logship.heartbeat")
            .collect()
    }
}

impl Drop for Siem {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// One RFC 5424 message as the SIEM stored it.
#[derive(Debug, Clone)]
pub(crate) struct Msg {
    pub pri: u8,
    pub timestamp: String,
    pub app: String,
    pub msgid: String,
    pub sequence_id: Option<u64>,
    pub sd: String,
    pub seq: Option<u64>,
    pub boot_id: Option<String>,
    pub json: Value,
}

fn sd_param(sd: &str, name: &str) -> Option<String> {
    let at = sd.find(&format!(" {name}=\""))? + name.len() + 3;
    let rest = &sd[at..];
    let mut out = String::new();
    let mut esc = false;
    for c in rest.chars() {
        match (esc, c) {
            (false, '\\') => esc = true,
            (false, '"') => return Some(out),
            _ => {
                out.push(c);
                esc = false;
            }
        }
    }
    None
}

impl Msg {
    /// Strict RFC 5424 parse: `<PRI>1 TS HOST APP PROCID MSGID SD MSG`.
    pub(crate) fn parse(line: &str) -> Result<Self, String> {
        let rest = line.strip_prefix('<').ok_or("no PRI")?;
        let (pri, rest) = rest.split_once('>').ok_or("no PRI end")?;
        let pri: u8 = pri.parse().map_err(|_| "PRI not a number")?;
        if pri > 191 {
            return Err("PRI > 191".into());
        }
        let rest = rest.strip_prefix("1 ").ok_or("VERSION is not 1")?;
        let mut it = rest.splitn(6, ' ');
        let ts = it.next().ok_or("no TIMESTAMP")?.to_owned();
        time::OffsetDateTime::parse(&ts, &time::format_description::well_known::Rfc3339)
            .map_err(|e| format!("TIMESTAMP {ts}: {e}"))?;
        let host = it.next().ok_or("no HOSTNAME")?;
        let app = it.next().ok_or("no APP-NAME")?.to_owned();
        let procid = it.next().ok_or("no PROCID")?;
        let msgid = it.next().ok_or("no MSGID")?.to_owned();
        for (f, max) in [
            (host, 255),
            (app.as_str(), 48),
            (procid, 128),
            (msgid.as_str(), 32),
        ] {
            if f.is_empty() || f.len() > max || !f.bytes().all(|b| (33..=126).contains(&b)) {
                return Err(format!("header field {f:?}"));
            }
        }
        let rest = it.next().ok_or("no SD")?;
        // SD: one or more [..] elements (with \] escapes), then SP MSG
        let b = rest.as_bytes();
        let mut i = 0;
        if b.first() != Some(&b'[') {
            return Err("SD does not start with [".into());
        }
        while i < b.len() && b[i] == b'[' {
            let mut in_q = false;
            i += 1;
            while i < b.len() {
                match b[i] {
                    b'\\' if in_q => i += 1,
                    b'"' => in_q = !in_q,
                    b']' if !in_q => break,
                    _ => {}
                }
                i += 1;
            }
            i += 1;
        }
        let sd = rest[..i].to_owned();
        let msg = rest[i..].strip_prefix(' ').ok_or("no SP before MSG")?;
        let json: Value = serde_json::from_str(msg).map_err(|e| format!("MSG is not JSON: {e}"))?;
        Ok(Msg {
            pri,
            timestamp: ts,
            app,
            msgid,
            sequence_id: sd
                .strip_prefix("[meta sequenceId=\"")
                .and_then(|r| r.split('"').next())
                .and_then(|s| s.parse().ok()),
            seq: sd_param(&sd, "seq").and_then(|s| s.parse().ok()),
            boot_id: sd_param(&sd, "boot_id"),
            sd,
            json,
        })
    }
}

/// `gwosd run logship` with its own site config, state and run dirs.
pub(crate) struct Logship {
    pub dir: PathBuf,
    pub child: Option<Child>,
}

impl Logship {
    /// `extra` is appended to the `[logship]` section.
    pub(crate) fn new(dir: &Path, extra: &str) -> Self {
        Self::with_spool(dir, extra, 8 << 20)
    }

    pub(crate) fn with_spool(dir: &Path, extra: &str, spool_bytes: u64) -> Self {
        std::fs::create_dir_all(dir).unwrap();
        std::fs::write(
            dir.join("site.toml"),
            format!("[logship]\nspool_max_bytes = {spool_bytes}\nheartbeat_secs = 5\nreconnect_max_secs = 2\nhostname = \"gw-test\"\n{extra}"),
        )
        .unwrap();
        Self {
            dir: dir.to_owned(),
            child: None,
        }
    }

    pub(crate) fn start(&mut self) {
        let c = Command::new(gwosd())
            .args(["run", "logship", "--config"])
            .arg(self.dir.join("site.toml"))
            .arg("--state-dir")
            .arg(self.dir.join("state"))
            .arg("--run-dir")
            .arg(self.dir.join("run"))
            .stdout(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(self.dir.join("stdout"))
                    .unwrap(),
            )
            .stderr(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(self.dir.join("stderr"))
                    .unwrap(),
            )
            .spawn()
            .unwrap();
        self.child = Some(c);
        let sock = self.dir.join("run/logship.sock");
        let dir = self.dir.clone();
        wait_until("logship's socket", Duration::from_secs(20), || {
            UnixStream::connect(&sock).is_ok() || {
                assert!(
                    !dir.join("stderr").exists()
                        || !std::fs::read_to_string(dir.join("stderr"))
                            .unwrap()
                            .contains("gwosd run:"),
                    "logship failed: {}",
                    std::fs::read_to_string(dir.join("stderr")).unwrap()
                );
                false
            }
        });
    }

    pub(crate) fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill(); // SIGKILL
            let _ = c.wait();
        }
    }

    pub(crate) fn call(&self, method: &str, params: Value) -> gwos_core::rpc::Response {
        gwos_core::rpc::call(
            &self.dir.join("run/logship.sock"),
            method,
            params,
            None,
            Duration::from_secs(10),
        )
        .unwrap_or_else(|e| panic!("{method}: {e:#}"))
    }

    pub(crate) fn health(&self) -> Value {
        let r = self.call("health", serde_json::json!({}));
        assert!(r.ok, "{r:?}");
        r.result["siem"].clone()
    }

    /// An ingest connection, as PID 1 holds one.
    pub(crate) fn ingest(&self) -> UnixStream {
        UnixStream::connect(self.dir.join("run/logship-ingest.sock")).unwrap()
    }

    /// Sends events and waits until they are committed.
    pub(crate) fn send(&self, lines: &[(String, Value)]) {
        let before = self.health()["committed_seq"].as_u64().unwrap();
        let mut s = self.ingest();
        for (svc, v) in lines {
            s.write_all(format!("{svc} {v}\n").as_bytes()).unwrap();
        }
        drop(s);
        let want = before + lines.len() as u64;
        wait_until("events committed", Duration::from_secs(10), || {
            self.health()["committed_seq"].as_u64().unwrap() >= want
        });
    }
}

impl Drop for Logship {
    fn drop(&mut self) {
        self.kill();
    }
}

pub(crate) fn siem_toml(siem: &Siem, ca_pem: &str, name: &str) -> String {
    format!(
        "siem_endpoint = \"{}\"\nsiem_ca_pem = '''\n{}'''\nsiem_server_name = \"{name}\"\n",
        siem.endpoint(),
        ca_pem
    )
}

pub(crate) fn event(svc: &str, kind: &str, n: u64) -> (String, Value) {
    (
        svc.to_owned(),
        serde_json::json!({"time": gwos_core::event::now_rfc3339(), "service": svc, "kind": kind, "n": n, "trace_id": format!("t-{n}")}),
    )
}
