//! Host integration test: `gwosd run control` inside a network namespace the
//! test creates, driven by the real OpenSSH client (`ssh`, `sftp`) from a
//! second namespace holding a backend address (A) and a non-backend one (B).
//! vpn/spa commands go to the real services (`gwosd run spa|vpn` in the same
//! namespace); with vpn stopped, the clear "service unavailable" error is
//! asserted.
//!
//! Needs root, `ip`, `ssh`, `ssh-keygen`, `sftp`, `curl`. Run:
//! `cargo test -p gwos-control --test ssh_channel -- --nocapture`

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

const SRV: &str = "10.213.0.1";
const A: &str = "10.213.0.2";
const B: &str = "10.213.0.3";
const PORT: u16 = 2222;

fn sh(cmd: &str, args: &[&str]) -> Output {
    Command::new(cmd)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("running {cmd}: {e}"))
}

fn must(cmd: &str, args: &[&str]) {
    let o = sh(cmd, args);
    assert!(
        o.status.success(),
        "{cmd} {args:?} failed: {}",
        String::from_utf8_lossy(&o.stderr)
    );
}

fn require_tools() {
    let uid = sh("id", &["-u"]);
    assert_eq!(
        String::from_utf8_lossy(&uid.stdout).trim(),
        "0",
        "this test needs root (network namespaces)"
    );
    for t in ["ip", "ssh", "ssh-keygen", "sftp", "curl"] {
        assert!(
            sh("sh", &["-c", &format!("command -v {t}")])
                .status
                .success(),
            "missing tool {t} (Debian package list in .ci)"
        );
    }
}

fn gwosd() -> PathBuf {
    if let Ok(p) = std::env::var("GWOSD") {
        let p = PathBuf::from(p);
        if p.exists() {
            return p;
        }
    }
    let manifest = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let target = std::env::var("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| manifest.join("../../target"));
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let st = Command::new(cargo)
        .args(["build", "-p", "gwos-init"])
        .env("CARGO_TARGET_DIR", &target)
        .current_dir(&manifest)
        .status()
        .expect("building gwosd");
    assert!(st.success(), "building gwosd failed");
    target.join("debug/gwosd")
}

/// Namespaces, processes and files of one test run; removed on drop.
struct Lab {
    srv_ns: String,
    cli_ns: String,
    dir: tempfile::TempDir,
    gwosd: PathBuf,
    children: Vec<(String, Child)>,
}

impl Drop for Lab {
    fn drop(&mut self) {
        for (_, c) in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
        let _ = sh("ip", &["netns", "del", &self.srv_ns]);
        let _ = sh("ip", &["netns", "del", &self.cli_ns]);
    }
}

impl Lab {
    fn new() -> Self {
        static LABS: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = LABS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let id = format!("{}{n}", std::process::id() % 100_000);
        let lab = Lab {
            srv_ns: format!("gwcs{id}"),
            cli_ns: format!("gwcc{id}"),
            dir: tempfile::tempdir().unwrap(),
            gwosd: gwosd(),
            children: Vec::new(),
        };
        let (va, vb) = (format!("gwcv{id}a"), format!("gwcv{id}b"));
        must("ip", &["netns", "add", &lab.srv_ns]);
        must("ip", &["netns", "add", &lab.cli_ns]);
        must(
            "ip",
            &[
                "link",
                "add",
                &va,
                "netns",
                &lab.srv_ns,
                "type",
                "veth",
                "peer",
                "name",
                &vb,
                "netns",
                &lab.cli_ns,
            ],
        );
        for (ns, dev, addrs) in [
            (&lab.srv_ns, &va, vec![SRV]),
            (&lab.cli_ns, &vb, vec![A, B]),
        ] {
            for a in addrs {
                must(
                    "ip",
                    &["-n", ns, "addr", "add", &format!("{a}/24"), "dev", dev],
                );
            }
            must("ip", &["-n", ns, "link", "set", dev, "up"]);
            must("ip", &["-n", ns, "link", "set", "lo", "up"]);
        }
        // What PID 1 does before starting control: its state sealing key.
        let key = gwos_core::sealed::key_path(&lab.path("run"), "control");
        std::fs::create_dir_all(key.parent().unwrap()).unwrap();
        std::fs::write(&key, gwos_core::sealed::new_secret()).unwrap();
        lab
    }

    fn path(&self, p: &str) -> PathBuf {
        self.dir.path().join(p)
    }

    fn keygen(&self, name: &str) -> String {
        let p = self.path(name);
        must(
            "ssh-keygen",
            &[
                "-q",
                "-t",
                "ed25519",
                "-N",
                "",
                "-C",
                &format!("{name}@test"),
                "-f",
                p.to_str().unwrap(),
            ],
        );
        std::fs::read_to_string(p.with_extension("pub"))
            .unwrap()
            .trim()
            .to_owned()
    }

    fn fingerprint(&self, file: &Path) -> String {
        let o = sh("ssh-keygen", &["-lf", file.to_str().unwrap()]);
        String::from_utf8_lossy(&o.stdout)
            .split_whitespace()
            .nth(1)
            .unwrap()
            .to_owned()
    }

    fn spawn_service(&mut self, name: &str) -> bool {
        let log = std::fs::File::create(self.path(&format!("{name}.out"))).unwrap();
        let child = Command::new("ip")
            .args(["netns", "exec", &self.srv_ns])
            .arg(&self.gwosd)
            .args(["run", name, "--config"])
            .arg(self.path("site.toml"))
            .arg("--state-dir")
            .arg(self.path(&format!("state-{name}")))
            .arg("--run-dir")
            .arg(self.path("run"))
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        self.children.push((name.into(), child));
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            let (_, c) = self.children.last_mut().unwrap();
            if c.try_wait().unwrap().is_some() {
                return false;
            }
            let up = match name {
                "control" => std::fs::read_to_string(self.path("control.out"))
                    .unwrap_or_default()
                    .contains("control.started"),
                _ => self.path(&format!("run/{name}.sock")).exists(),
            };
            if up {
                return true;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        false
    }

    fn stop_service(&mut self, name: &str) {
        if let Some(pos) = self.children.iter().position(|(n, _)| n == name) {
            let (_, mut c) = self.children.remove(pos);
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    fn ssh_cmd(&self, key: &str, src: &str, extra: &[&str]) -> Command {
        let mut c = Command::new("ip");
        c.args([
            "netns",
            "exec",
            &self.cli_ns,
            "ssh",
            "-b",
            src,
            "-p",
            &PORT.to_string(),
            "-i",
        ])
        .arg(self.path(key))
        .args([
            "-o",
            "StrictHostKeyChecking=no",
            "-o",
            "UserKnownHostsFile=/dev/null",
            "-o",
            "BatchMode=yes",
        ])
        .args([
            "-o",
            "IdentitiesOnly=yes",
            "-o",
            "LogLevel=ERROR",
            "-o",
            "ConnectTimeout=5",
        ])
        .args(extra);
        c
    }

    /// One ssh run with `stdin`; returns (stdout, stderr, exit code).
    fn ssh(
        &self,
        key: &str,
        src: &str,
        extra: &[&str],
        command: Option<&str>,
        stdin: &[u8],
    ) -> (String, String, i32) {
        let mut c = self.ssh_cmd(key, src, extra);
        c.arg(format!("gwctl@{SRV}"));
        if let Some(cmd) = command {
            c.arg(cmd);
        }
        let mut child = c
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut input = child.stdin.take().unwrap();
        let data = stdin.to_vec();
        let w = std::thread::spawn(move || {
            let _ = input.write_all(&data);
        });
        let out = wait_timeout(child, Duration::from_secs(30));
        let _ = w.join();
        (
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
            out.status.code().unwrap_or(-1),
        )
    }

    /// A call that must answer JSON.
    fn call(&self, key: &str, command: &str, req: Value) -> (Value, i32) {
        let (out, err, code) = self.ssh(key, A, &[], Some(command), req.to_string().as_bytes());
        let v: Value = serde_json::from_str(out.trim())
            .unwrap_or_else(|_| panic!("{command}: no JSON (exit {code}): {out:?} {err:?}"));
        assert!(
            v["trace_id"].as_str().is_some_and(|t| !t.is_empty()),
            "{command}: no trace_id: {v}"
        );
        assert_eq!(
            code,
            if v["ok"] == true { 0 } else { 1 },
            "{command}: exit status vs ok: {v}"
        );
        (v, code)
    }

    fn audit(&self) -> Vec<Value> {
        let text =
            std::fs::read_to_string(self.path("state-control/audit.log")).unwrap_or_default();
        text.lines()
            .map(|l| serde_json::from_str(l).expect("audit line is JSON"))
            .collect()
    }

    fn audit_by_trace(&self, trace: &str) -> Value {
        let recs: Vec<Value> = self
            .audit()
            .into_iter()
            .filter(|r| r["trace_id"] == trace && r["kind"] == "control.call")
            .collect();
        assert_eq!(
            recs.len(),
            1,
            "exactly one control.call record for {trace}: {recs:?}"
        );
        recs.into_iter().next().unwrap()
    }

    /// Waits for a new audit record of `kind` after index `from` matching `pred`.
    fn wait_audit(&self, from: usize, kind: &str, pred: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(r) = self
                .audit()
                .into_iter()
                .skip(from)
                .find(|r| r["kind"] == kind && pred(r))
            {
                return r;
            }
            assert!(
                Instant::now() < deadline,
                "no {kind} audit record; log: {:#?}",
                &self.audit()[from.min(self.audit().len())..]
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

fn wait_timeout(mut child: Child, t: Duration) -> Output {
    let deadline = Instant::now() + t;
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.wait_with_output().unwrap()
}

fn ok(v: &Value) {
    assert_eq!(v["ok"], true, "expected ok: {v}");
}

fn err_contains(v: &Value, s: &str) {
    assert_eq!(v["ok"], false, "expected error: {v}");
    assert!(
        v["error"].as_str().unwrap_or("").contains(s),
        "error should contain {s:?}: {v}"
    );
}

#[test]
fn control_channel_end_to_end() {
    require_tools();
    let mut lab = Lab::new();
    let admin = lab.keygen("admin");
    let _admin2 = lab.keygen("admin2");
    let admin2 = std::fs::read_to_string(lab.path("admin2.pub")).unwrap();
    let ro = lab.keygen("ro");
    let _stranger = lab.keygen("stranger");
    let newkey = lab.keygen("newkey");
    let site = format!(
        r#"
[control]
listen = "{SRV}:{PORT}"
backend = ["{A}/32"]
require_approval = ["control_key_add", "control_key_remove"]
max_request_bytes = 65536

[[control.keys]]
key = "{admin}"
scopes = ["admin"]

[[control.keys]]
key = "{admin2}"
scopes = ["admin"]

[[control.keys]]
key = "{ro}"
scopes = ["health:read", "vpn:read", "logs:read"]
"#,
        admin2 = admin2.trim()
    );
    std::fs::write(lab.path("site.toml"), site).unwrap();
    assert!(
        lab.spawn_service("control"),
        "control did not start: {}",
        std::fs::read_to_string(lab.path("control.out")).unwrap_or_default()
    );
    for svc in ["spa", "vpn"] {
        assert!(
            lab.spawn_service(svc),
            "{svc} did not start: {}",
            std::fs::read_to_string(lab.path(&format!("{svc}.out"))).unwrap_or_default()
        );
    }
    let admin_fp = lab.fingerprint(&lab.path("admin.pub"));
    let ro_fp = lab.fingerprint(&lab.path("ro.pub"));

    // health: happy path, trace id kept, host key fingerprint reported, audited.
    let (v, _) = lab.call("admin", "health", json!({"trace_id": "t-health-1"}));
    ok(&v);
    assert_eq!(v["trace_id"], "t-health-1");
    let host_fp = lab.fingerprint(&lab.path("state-control/ssh_host_ed25519_key"));
    assert_eq!(v["host_key_fingerprint"], host_fp);
    let r = lab.audit_by_trace("t-health-1");
    assert_eq!(r["kind"], "control.call");
    assert_eq!(r["command"], "health");
    assert_eq!(r["result"], "ok");
    assert_eq!(r["key_fingerprint"], admin_fp);
    assert_eq!(r["key_comment"], "admin@test");
    assert_eq!(r["source_ip"], A);
    assert!(r["duration_ms"].as_f64().is_some() && r["time"].as_str().is_some());
    // stdout event too (for the SIEM).
    assert!(std::fs::read_to_string(lab.path("control.out"))
        .unwrap()
        .contains("\"trace_id\":\"t-health-1\""));

    // empty stdin = {}; made-up trace id.
    let (out, _, code) = lab.ssh("admin", A, &[], Some("health"), b"");
    assert_eq!(code, 0, "{out}");

    // help lists only what the key may call.
    let (v, _) = lab.call("ro", "help", json!({}));
    let names: Vec<&str> = v["commands"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["command"].as_str().unwrap())
        .collect();
    assert!(
        names.contains(&"health")
            && names.contains(&"vpn_user_list")
            && names.contains(&"pull_logs")
    );
    assert!(
        !names.contains(&"config_set") && !names.contains(&"reboot"),
        "{names:?}"
    );

    // A key without the scope is refused before validation, and audited.
    let (v, _) = lab.call(
        "ro",
        "config_set",
        json!({"trace_id": "t-noscope", "siem_endpoint": "not valid at all"}),
    );
    err_contains(&v, "lacks scope config:write");
    assert_eq!(v["trace_id"], "t-noscope");
    let r = lab.audit_by_trace("t-noscope");
    assert_eq!(
        (r["result"].as_str(), r["key_fingerprint"].as_str()),
        (Some("denied"), Some(ro_fp.as_str()))
    );
    assert!(
        !lab.path("state-control/runtime.json").exists(),
        "refused config_set changed state"
    );
    for cmd in ["spawn_browser_container", "update_apply", "reboot"] {
        let (v, _) = lab.call("ro", cmd, json!({}));
        err_contains(&v, "lacks scope");
    }

    // vpn/spa commands go to the real services.
    let wg = "qmJ8x0gQxJqYkYbYQ1E8o3Ff3Y1y8m7r0mQw6S4b9Fg=";
    let spa_key = "c2VjcmV0c2VjcmV0c2VjcmV0c2VjcmV0"; // 24 bytes
    let hmac = "aG1hY2htYWNobWFjaG1hY2htYWNobWFjaG1hY2htYWM="; // 32 bytes
    let cases: Vec<(&str, Value)> = vec![
        (
            "spa_user_set",
            json!({"trace_id":"t-spa-set","user":"alice","key_base64":spa_key,"hmac_key_base64":hmac,"ports":["tcp/443"]}),
        ),
        ("spa_user_list", json!({"trace_id":"t-spa-list"})),
        (
            "spa_user_delete",
            json!({"trace_id":"t-spa-del","user":"alice"}),
        ),
        (
            "vpn_user_create",
            json!({"trace_id":"t-vpn-create","user":"alice","public_key":wg}),
        ),
        (
            "update_ccd",
            json!({"trace_id":"t-ccd","user":"alice","allowed":["10.50.0.0/16"]}),
        ),
        ("vpn_user_list", json!({"trace_id":"t-vpn-list"})),
        ("vpn_status", json!({"trace_id":"t-vpn-status"})),
        (
            "vpn_user_delete",
            json!({"trace_id":"t-vpn-del","user":"alice"}),
        ),
    ];
    for (cmd, req) in cases {
        let trace = req["trace_id"].as_str().unwrap().to_owned();
        let (v, _) = lab.call("admin", cmd, req);
        ok(&v);
        if cmd.ends_with("_list") {
            assert!(
                v.to_string().contains("alice"),
                "{cmd} after create does not list alice: {v}"
            );
        }
        let r = lab.audit_by_trace(&trace);
        assert_eq!(r["command"], cmd);
        let args = r["arguments"].to_string();
        assert!(
            !args.contains(spa_key) && !args.contains(hmac),
            "secret in audit record: {args}"
        );
    }
    let r = lab.audit_by_trace("t-spa-set");
    assert_eq!(r["arguments"]["key_base64"], "<redacted>");
    assert_eq!(r["arguments"]["user"], "alice");

    // A peer service that is down: a clear error naming it.
    lab.stop_service("vpn");
    let (v, _) = lab.call("admin", "vpn_status", json!({}));
    err_contains(&v, "service unavailable: vpn");

    // Malformed JSON, oversize input and bad fields: clear error, trace id, nothing changed.
    let (out, _, code) = lab.ssh("admin", A, &[], Some("config_set"), b"{\"siem_endpoint\":");
    let v: Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(code, 1);
    err_contains(&v, "malformed JSON");
    assert!(v["trace_id"].as_str().is_some());
    let big = format!(
        "{{\"trace_id\":\"t-big\",\"pad\":\"{}\"}}",
        "x".repeat(70 * 1024)
    );
    let (out, _, code) = lab.ssh("admin", A, &[], Some("config_set"), big.as_bytes());
    let v: Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(code, 1);
    err_contains(&v, "larger than 65536 bytes");
    let (v, _) = lab.call(
        "admin",
        "vpn_user_create",
        json!({"trace_id":"t-badfield","user":"Bad!","public_key":wg}),
    );
    err_contains(&v, "invalid field \"user\"");
    assert_eq!(lab.audit_by_trace("t-badfield")["result"], "invalid");
    let (v, _) = lab.call(
        "admin",
        "vpn_user_create",
        json!({"user":"bob","public_key":"AAAA"}),
    );
    err_contains(&v, "invalid field \"public_key\"");
    let (v, _) = lab.call("admin", "config_set", json!({"backend":["10.0.0.1/8"]}));
    err_contains(&v, "invalid field \"backend\"");
    let (v, _) = lab.call("admin", "config_set", json!({"surprise": 1}));
    err_contains(&v, "unknown field `surprise`");
    let (v, _) = lab.call("admin", "health", json!({"trace_id": "bad trace id"}));
    err_contains(&v, "trace_id");
    assert!(
        !lab.path("state-control/runtime.json").exists(),
        "invalid config_set changed state"
    );
    let (v, _) = lab.call("admin", "no_such_command", json!({}));
    err_contains(&v, "unknown command");

    // config_set / config_get.
    // dns is the vpn's to apply: with the vpn stopped (above) it is refused and not stored.
    let (v, _) = lab.call("admin", "config_set", json!({"dns":["10.50.0.53"]}));
    err_contains(&v, "dns not applied: service unavailable: vpn");
    let (v, _) = lab.call(
        "admin",
        "config_set",
        json!({"siem_endpoint":"siem.example.net:6514","idle_timeout_secs":120}),
    );
    ok(&v);
    let (v, _) = lab.call("admin", "config_get", json!({}));
    assert_eq!(v["effective"]["siem_endpoint"], "siem.example.net:6514");
    assert_eq!(v["effective"]["idle_timeout_secs"], 120);
    assert_eq!(v["effective"]["backend"], json!([format!("{A}/32")]));

    // Keys: approval required for add/remove; needs a *different* admin key.
    let add = json!({"trace_id":"t-keyadd","key":newkey,"scopes":["health:read"]});
    let (v, _) = lab.call("admin", "control_key_add", add.clone());
    err_contains(&v, "needs a second admin key's approval");
    let self_approved =
        gwos_control::client::approve(&lab.path("admin"), &admin_fp, "control_key_add", &add, 300)
            .unwrap();
    let (v, _) = lab.call("admin", "control_key_add", self_approved);
    err_contains(&v, "different key");
    let mut tampered =
        gwos_control::client::approve(&lab.path("admin2"), &admin_fp, "control_key_add", &add, 300)
            .unwrap();
    tampered["scopes"] = json!(["admin"]);
    let (v, _) = lab.call("admin", "control_key_add", tampered);
    err_contains(&v, "does not verify");
    assert!(
        !lab.path("state-control/keys.json").exists(),
        "refused key add changed state"
    );
    let approved =
        gwos_control::client::approve(&lab.path("admin2"), &admin_fp, "control_key_add", &add, 300)
            .unwrap();
    let (v, _) = lab.call("admin", "control_key_add", approved);
    ok(&v);
    // The same trace id was used by the refused attempts above: 4 records, the last one ok.
    let recs: Vec<Value> = lab
        .audit()
        .into_iter()
        .filter(|r| r["trace_id"] == "t-keyadd" && r["kind"] == "control.call")
        .collect();
    let results: Vec<&str> = recs.iter().map(|r| r["result"].as_str().unwrap()).collect();
    assert_eq!(results, ["denied", "denied", "denied", "ok"]);
    assert_eq!(
        recs[3]["approved_by"],
        lab.fingerprint(&lab.path("admin2.pub"))
    );
    assert!(
        !recs[3].to_string().contains("signature"),
        "approval signature in the audit record"
    );
    let new_fp = lab.fingerprint(&lab.path("newkey.pub"));
    let (v, _) = lab.call("newkey", "health", json!({}));
    ok(&v);
    let (v, _) = lab.call("admin", "control_key_list", json!({}));
    assert_eq!(v["keys"].as_array().unwrap().len(), 4, "{v}");

    // pull_logs returns the records of this window.
    let (v, _) = lab.call("ro", "pull_logs", json!({"since": 0}));
    ok(&v);
    let logs = v["records"].to_string();
    assert!(logs.contains("t-health-1") && logs.contains("t-noscope"));

    // reboot asks init; not-yet-available commands still answer clearly.
    let (v, _) = lab.call("admin", "reboot", json!({}));
    err_contains(&v, "service unavailable: init");
    for cmd in ["spawn_browser_container", "terminate_session"] {
        let (v, _) = lab.call("admin", cmd, json!({}));
        err_contains(&v, "not available in this release");
    }
    // The update commands go to the update service (not running here).
    for cmd in ["update_apply", "update_status", "update_rollback"] {
        let (v, _) = lab.call("admin", cmd, json!({}));
        err_contains(&v, "service unavailable: update");
    }

    // Refusals at the SSH layer, each audited.
    let n = lab.audit().len();
    let (_, err, code) = lab.ssh("stranger", A, &[], Some("health"), b"{}");
    assert_eq!(code, 255);
    assert!(err.contains("Permission denied (publickey)"), "{err}");
    let stranger_fp = lab.fingerprint(&lab.path("stranger.pub"));
    lab.wait_audit(n, "control.auth_refused", |r| {
        r["attempts"].to_string().contains(&stranger_fp)
    });

    let n = lab.audit().len();
    let (_, err, code) = lab.ssh(
        "admin",
        A,
        &[
            "-o",
            "PubkeyAuthentication=no",
            "-o",
            "PreferredAuthentications=password,keyboard-interactive",
        ],
        Some("health"),
        b"",
    );
    assert_eq!(code, 255);
    assert!(err.contains("Permission denied (publickey)"), "{err}");
    lab.wait_audit(n, "control.auth_refused", |r| r["source_ip"] == A);

    let n = lab.audit().len();
    let (out, err, code) = lab.ssh("admin", A, &["-tt"], Some("health"), b"");
    assert_ne!(code, 0);
    assert!(
        err.contains("PTY allocation request failed") && !out.contains("\"ok\":true"),
        "{out} {err}"
    );
    lab.wait_audit(n, "control.request_refused", |r| r["request"] == "pty-req");

    let n = lab.audit().len();
    let (_, err, code) = lab.ssh("admin", A, &[], None, b"");
    assert_ne!(code, 0);
    assert!(err.contains("shell request failed"), "{err}");
    lab.wait_audit(n, "control.request_refused", |r| r["request"] == "shell");

    let n = lab.audit().len();
    let (_, err, code) = lab.ssh("admin", A, &["-W", "127.0.0.1:22"], None, b"");
    assert_ne!(code, 0);
    assert!(err.contains("stdio forwarding failed"), "{err}");
    lab.wait_audit(n, "control.request_refused", |r| {
        r["request"] == "direct-tcpip"
    });

    let n = lab.audit().len();
    let (_, err, code) = lab.ssh(
        "admin",
        A,
        &[
            "-N",
            "-o",
            "ExitOnForwardFailure=yes",
            "-R",
            "127.0.0.1:9999:127.0.0.1:22",
        ],
        None,
        b"",
    );
    assert_ne!(code, 0);
    assert!(err.contains("forwarding failed"), "{err}");
    lab.wait_audit(n, "control.request_refused", |r| {
        r["request"] == "tcpip-forward"
    });

    let n = lab.audit().len();
    let sock = lab.path("fwd.sock");
    let spec = format!("{}:127.0.0.1:22", sock.display());
    let (_, err, code) = lab.ssh(
        "admin",
        A,
        &["-N", "-o", "ExitOnForwardFailure=yes", "-R", &spec],
        None,
        b"",
    );
    assert_ne!(code, 0, "{err}");
    lab.wait_audit(n, "control.request_refused", |r| {
        r["request"] == "streamlocal-forward"
    });

    // -L and -D: the client listens, the refusal comes when something connects through it.
    for (flag, spec, port) in [
        ("-L", "127.0.0.1:18080:127.0.0.1:22", 18080),
        ("-D", "127.0.0.1:18081", 18081),
    ] {
        let n = lab.audit().len();
        let mut fwd = lab
            .ssh_cmd("admin", A, &["-N", flag, spec])
            .arg(format!("gwctl@{SRV}"))
            .stdin(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(800));
        let proxy = format!("socks5h://127.0.0.1:{port}");
        let url = format!("http://127.0.0.1:{port}/");
        let args: Vec<&str> = if flag == "-D" {
            vec![
                "netns",
                "exec",
                &lab.cli_ns,
                "curl",
                "-s",
                "-m",
                "5",
                "-x",
                &proxy,
                "http://127.0.0.1:22/",
            ]
        } else {
            vec!["netns", "exec", &lab.cli_ns, "curl", "-s", "-m", "5", &url]
        };
        let o = sh("ip", &args);
        assert!(
            !o.status.success(),
            "{flag}: curl through the forward succeeded"
        );
        lab.wait_audit(n, "control.request_refused", |r| {
            r["request"] == "direct-tcpip"
        });
        let _ = fwd.kill();
        let _ = fwd.wait();
    }

    let n = lab.audit().len();
    let o = Command::new("ip")
        .args([
            "netns",
            "exec",
            &lab.cli_ns,
            "sftp",
            "-b",
            "-",
            "-P",
            &PORT.to_string(),
            "-i",
        ])
        .arg(lab.path("admin"))
        .args([
            "-o",
            "StrictHostKeyChecking=no",
            "-o",
            "UserKnownHostsFile=/dev/null",
            "-o",
            "BatchMode=yes",
            "-o",
            "IdentitiesOnly=yes",
        ])
        .args(["-o", &format!("BindAddress={A}"), &format!("gwctl@{SRV}")])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(!o.status.success(), "sftp succeeded");
    lab.wait_audit(n, "control.request_refused", |r| {
        r["request"] == "subsystem" && r["detail"]["name"] == "sftp"
    });

    // Agent forwarding (-A with a running agent) is refused; the command still runs.
    let agent = lab.path("agent.sock");
    let mut ag = Command::new("ip")
        .args(["netns", "exec", &lab.cli_ns, "ssh-agent", "-D", "-a"])
        .arg(&agent)
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let n = lab.audit().len();
    let mut c = lab.ssh_cmd("admin", A, &["-A"]);
    let o = c
        .env("SSH_AUTH_SOCK", &agent)
        .arg(format!("gwctl@{SRV}"))
        .arg("health")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let _ = ag.kill();
    let _ = ag.wait();
    assert!(String::from_utf8_lossy(&o.stdout).contains("\"ok\":true"));
    lab.wait_audit(n, "control.request_refused", |r| {
        r["request"] == "auth-agent"
    });

    // Non-backend source B: refused at accept time.
    let n = lab.audit().len();
    let (out, _, code) = lab.ssh("admin", B, &[], Some("health"), b"{}");
    assert_eq!(code, 255);
    assert!(out.is_empty());
    lab.wait_audit(n, "control.connection_refused", |r| r["source_ip"] == B);

    // Key removal (approved), then the removed key is refused.
    let rm = json!({"trace_id":"t-keyrm","fingerprint":new_fp});
    let approved = gwos_control::client::approve(
        &lab.path("admin2"),
        &admin_fp,
        "control_key_remove",
        &rm,
        300,
    )
    .unwrap();
    let (v, _) = lab.call("admin", "control_key_remove", approved);
    ok(&v);
    let (_, _, code) = lab.ssh("newkey", A, &[], Some("health"), b"");
    assert_eq!(code, 255);
    let (v, _) = lab.call("admin", "control_key_remove", json!({"fingerprint": ro_fp}));
    err_contains(&v, "needs a second admin key's approval");

    // Restart: host key, runtime config and keys survive.
    lab.stop_service("control");
    assert!(lab.spawn_service("control"));
    let (v, _) = lab.call("admin", "health", json!({}));
    assert_eq!(v["host_key_fingerprint"], host_fp);
    let (v, _) = lab.call("admin", "config_get", json!({}));
    assert_eq!(v["overrides"]["siem_endpoint"], "siem.example.net:6514");
    let (v, _) = lab.call("admin", "control_key_list", json!({}));
    assert_eq!(v["keys"].as_array().unwrap().len(), 3, "{v}");

    // Every record is one JSON object with the audit fields.
    for r in lab.audit() {
        assert!(
            r["time"].is_string() && r["kind"].as_str().unwrap().starts_with("control."),
            "{r}"
        );
        if r["kind"] == "control.call" {
            for f in [
                "trace_id",
                "key_fingerprint",
                "key_comment",
                "source_ip",
                "command",
                "arguments",
                "result",
                "error",
                "duration_ms",
            ] {
                assert!(r.get(f).is_some(), "missing {f}: {r}");
            }
        }
    }
}
