//! `update_apply` end to end on the host: the real OpenSSH client streams a
//! bundle on stdin to control (in this process, on a loopback port), which
//! pipes it to the update service (in this process too), which writes the
//! file-backed disk. A tampered bundle is refused with slot B untouched; the
//! good one lands in slot B; `update_status` agrees; the audit record names
//! the bundle's version and sha256.
//!
//! Needs `ssh` and `ssh-keygen` (openssh-client). Run:
//! `cargo test -p gwos-update --test ssh_apply`

mod common;

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;
use sha2::{Digest, Sha256};

struct Gateway {
    fx: Fixture,
    port: u16,
    key: PathBuf,
}

fn start() -> Gateway {
    let fx = Fixture::new();
    let (run, keys, state_u, state_c) = (
        fx.path("run"),
        fx.path("release-keys"),
        fx.path("state-update"),
        fx.path("state-control"),
    );
    for d in [&run, &keys, &state_u, &state_c] {
        std::fs::create_dir_all(d).unwrap();
    }
    std::fs::write(keys.join("release.pub"), fx.key.public().to_file_text()).unwrap();
    std::fs::write(
        fx.path("boot.json"),
        serde_json::to_vec(&running_a(1)).unwrap(),
    )
    .unwrap();
    let paths = gwos_update::Paths {
        state_dir: state_u,
        boot_json: fx.path("boot.json"),
        release_json: fx.path("no-release.json"),
        keys_dir: keys,
        disk: Some(fx.disk.clone()),
        allowed_uids: vec![0, gwos_core::rpc::CONTROL_UID, my_uid()],
    };
    let sock = run.join("update.sock");
    std::thread::spawn(move || gwos_update::serve(&sock, paths));

    let keygen = |key: &Path| {
        let o = Command::new("ssh-keygen")
            .args(["-q", "-t", "ed25519", "-N", "", "-f"])
            .arg(key)
            .output()
            .expect("ssh-keygen (openssh-client)");
        assert!(o.status.success());
        std::fs::read_to_string(key.with_extension("pub")).unwrap()
    };
    let key = fx.path("backend");
    let public = keygen(&key);
    let reader = keygen(&fx.path("reader"));
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let site = format!(
        "[control]\nlisten = \"127.0.0.1:{port}\"\nbackend = [\"127.0.0.1/32\"]\n[[control.keys]]\nkey = \"{}\"\nscopes = [\"update:write\"]\ncomment = \"test backend\"\n[[control.keys]]\nkey = \"{}\"\nscopes = [\"health:read\"]\ncomment = \"reader\"\n",
        public.trim(),
        reader.trim()
    );
    std::fs::write(fx.path("site.toml"), site).unwrap();
    let ctx = gwos_core::ServiceContext::load(
        "control",
        Some(&fx.path("site.toml")),
        Some(state_c),
        Some(run),
    )
    .unwrap();
    std::thread::spawn(move || gwos_control::run(ctx));
    let t0 = Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            t0.elapsed() < Duration::from_secs(20),
            "control never listened"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    Gateway { fx, port, key }
}

fn my_uid() -> u32 {
    std::os::unix::fs::MetadataExt::uid(&std::fs::metadata("/proc/self").unwrap())
}

impl Gateway {
    fn ssh(&self, command: &str, stdin: &Path) -> (Value, String, Output) {
        self.ssh_as(&self.key, command, stdin)
    }

    fn ssh_as(&self, key: &Path, command: &str, stdin: &Path) -> (Value, String, Output) {
        let o = Command::new("ssh")
            .arg("-i")
            .arg(key)
            .args(["-p", &self.port.to_string()])
            .args([
                "-o",
                "StrictHostKeyChecking=no",
                "-o",
                "UserKnownHostsFile=/dev/null",
            ])
            .args(["-o", "LogLevel=ERROR", "-o", "BatchMode=yes"])
            .arg("gwctl@127.0.0.1")
            .arg(command)
            .stdin(Stdio::from(std::fs::File::open(stdin).unwrap()))
            .output()
            .expect("ssh (openssh-client)");
        let out = String::from_utf8_lossy(&o.stdout).into_owned();
        let v: Value = serde_json::from_str(out.trim()).unwrap_or_else(|e| {
            panic!(
                "{command}: not one JSON answer on stdout ({e}): {out:?} stderr {}",
                String::from_utf8_lossy(&o.stderr)
            )
        });
        (v, String::from_utf8_lossy(&o.stderr).into_owned(), o)
    }
}

#[test]
fn openssh_update_apply_refuses_tampered_then_writes_slot_b() {
    let gw = start();
    let good = gw.fx.v2();
    let mut bad = good.clone();
    let mid = bad.len() / 2;
    bad[mid] ^= 0x5a;
    std::fs::write(gw.fx.path("v2.update"), &good).unwrap();
    std::fs::write(gw.fx.path("bad.update"), &bad).unwrap();

    let before = gw.fx.slot_b_and_esp();
    let (v, _, o) = gw.ssh("update_apply", &gw.fx.path("bad.update"));
    assert_eq!(v["ok"], false, "{v}");
    assert!(
        v["error"].as_str().unwrap().contains("sha256 mismatch"),
        "{v}"
    );
    assert_eq!(o.status.code(), Some(1));
    assert_eq!(
        gw.fx.slot_b_and_esp(),
        before,
        "tampered bundle touched slot B or the ESP"
    );

    let (v, stderr, o) = gw.ssh("update_apply", &gw.fx.path("v2.update"));
    assert_eq!(v["ok"], true, "{v} {stderr}");
    assert_eq!(o.status.code(), Some(0));
    assert_eq!(
        (v["slot"].as_str(), v["version_id"].as_str()),
        (Some("B"), Some("0.2.0")),
        "{v}"
    );
    assert!(v["seconds"].as_f64().is_some(), "{v}");
    assert_eq!(v["bytes"], good.len() as u64, "{v}");
    assert!(
        stderr.contains("update: ") && stderr.contains("verified over the disk"),
        "progress on stderr: {stderr}"
    );

    let (v, _, _) = gw.ssh("update_status", Path::new("/dev/null"));
    assert_eq!(v["ok"], true, "{v}");
    assert_eq!(v["slots"][1]["version_id"], "0.2.0", "{v}");
    assert_eq!(v["slots"][1]["state"], "trial", "{v}");
    assert_eq!(v["last_update"]["result"], "ok", "{v}");

    // Audit: the applied call names the bundle's version and sha256.
    let audit = std::fs::read_to_string(gw.fx.path("state-control/audit.log")).unwrap();
    let rec: Value = audit
        .lines()
        .rev()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .find(|r| r["command"] == "update_apply" && r["result"] == "ok")
        .unwrap_or_else(|| panic!("no update_apply record in {audit}"));
    assert_eq!(
        rec["bundle_sha256"],
        hex::encode(Sha256::digest(&good)),
        "{rec}"
    );
    assert_eq!(rec["arguments"]["version_id"], "0.2.0", "{rec}");
    assert_eq!(rec["bundle_bytes"], good.len() as u64, "{rec}");
}

/// A key without `update:write` is refused at once, before anything reaches
/// the update service, even while it keeps streaming a bundle far larger
/// than control's queue (the SSH side must not wait on a queue nobody reads).
#[test]
fn openssh_update_apply_without_scope_is_refused_before_streaming() {
    let gw = start();
    let before = gw.fx.slot_b_and_esp();
    let big = [gw.fx.v2(), gw.fx.v2(), gw.fx.v2()].concat();
    std::fs::write(gw.fx.path("big.update"), &big).unwrap();
    let (v, _, o) = gw.ssh_as(
        &gw.fx.path("reader"),
        "update_apply",
        &gw.fx.path("big.update"),
    );
    assert_eq!(v["ok"], false, "{v}");
    assert!(
        v["error"]
            .as_str()
            .unwrap()
            .contains("lacks scope update:write"),
        "{v}"
    );
    assert_eq!(o.status.code(), Some(1));
    assert_eq!(gw.fx.slot_b_and_esp(), before);
    assert!(
        !gw.fx.path("state-update/last.json").exists(),
        "the update service was reached"
    );
    let audit = std::fs::read_to_string(gw.fx.path("state-control/audit.log")).unwrap();
    let rec: Value = audit
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .find(|r| r["command"] == "update_apply")
        .unwrap_or_else(|| panic!("no update_apply record in {audit}"));
    assert_eq!(
        (rec["result"].as_str(), rec["key_comment"].as_str()),
        (Some("denied"), Some("reader")),
        "{rec}"
    );
    assert!(rec.get("arguments").is_some(), "{rec}");
}
