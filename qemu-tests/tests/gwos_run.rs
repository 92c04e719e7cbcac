//! `gwos run` / `gwos stop` as a CI job uses them: the built binary, the
//! shipped image (out/gwos.img, OVMF + systemd-boot), real QEMU, real
//! OpenSSH over the forwarded control port. Needs `make image`; takes
//! minutes under TCG. Run under the heavy lock, one test at a time.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use gwos_qemu_tests::{copy_image, flip_byte, gpt, gwos_bin, need_tool, out_dir};
use sha2::Digest;

fn gwos(args: &[&str], tmpdir: &Path) -> Output {
    Command::new(gwos_bin())
        .args(args)
        .env("TMPDIR", tmpdir)
        .output()
        .expect("gwos runs")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn sha256(p: &Path) -> String {
    let mut f = std::fs::File::open(p).unwrap();
    let mut h = sha2::Sha256::new();
    std::io::copy(&mut f, &mut h).unwrap();
    hex::encode(h.finalize())
}

fn alive(pid: u64) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| {
            let st = s
                .rsplit_once(')')
                .map(|(_, r)| r.trim_start())
                .unwrap_or("");
            !st.starts_with('Z') && !st.starts_with('X')
        })
        .unwrap_or(false)
}

/// `health` over the control channel through the forwarded port, with the dev key.
fn health(port: u64) -> serde_json::Value {
    let key = out_dir().join("keys/dev-control");
    let o = Command::new("ssh")
        .args(["-p", &port.to_string(), "-i"])
        .arg(&key)
        .args([
            "-o",
            "StrictHostKeyChecking=no",
            "-o",
            "UserKnownHostsFile=/dev/null",
            "-o",
            "BatchMode=yes",
            "-o",
            "IdentitiesOnly=yes",
            "-o",
            "LogLevel=ERROR",
            "-o",
            "ConnectTimeout=30",
            "gwctl@127.0.0.1",
            "health",
        ])
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    let out = text(&o.stdout);
    serde_json::from_str(out.trim())
        .unwrap_or_else(|e| panic!("health on port {port}: {e}: {out}{}", text(&o.stderr)))
}

/// Two detached runs of the shipped image at once, each on its own free ports:
/// `--wait-ready` prints the right JSON for each; each answers `health` on its
/// own control port; `gwos stop` powers both off and leaves no QEMU and no
/// temporary files; both first boots formatted /var, and the image's sha256 is
/// what it was before.
#[test]
fn detached_runs_wait_ready_json_two_at_once_stop_leaves_nothing() {
    need_tool("ssh");
    let img = out_dir().join("gwos.img");
    let before = sha256(&img);
    let tmp = tempfile::Builder::new()
        .prefix("gwos-run-test")
        .tempdir_in(out_dir())
        .unwrap();
    let tmpdir = tmp.path().join("tmp");
    std::fs::create_dir(&tmpdir).unwrap();
    let args = [
        "run",
        img.to_str().unwrap(),
        "--detach",
        "--wait-ready",
        "--timeout",
        "600",
        "--forward",
        "udp:0:62201",
        "--forward",
        "tcp:0:2222",
    ];
    let (a, b) = std::thread::scope(|s| {
        let a = s.spawn(|| gwos(&args, &tmpdir));
        let b = s.spawn(|| gwos(&args, &tmpdir));
        (a.join().unwrap(), b.join().unwrap())
    });
    let mut runs = vec![];
    for o in [&a, &b] {
        assert!(
            o.status.success(),
            "gwos run failed ({}):\n{}",
            o.status,
            text(&o.stderr)
        );
        let line = text(&o.stdout);
        assert_eq!(line.lines().count(), 1, "one JSON line: {line}");
        let v: serde_json::Value = serde_json::from_str(line.trim()).unwrap();
        eprintln!("{v}");
        assert_eq!(v["ready"], true, "{v}");
        assert_eq!(v["slot"], "A", "{v}");
        assert_eq!(v["version"], "0.1.0", "{v}");
        assert_eq!(v["firmware"], "ovmf", "{v}");
        let accel = gwos_image::run::detect_accel().0.name();
        assert_eq!(v["accel"], accel, "{v}");
        assert!(v["boot_ms"].as_u64().is_some_and(|ms| ms > 0), "{v}");
        assert!(
            v["kernel_to_pid1_ms"].as_u64().is_some_and(|ms| ms > 0),
            "{v}"
        );
        assert!(v["wall_s"].as_f64().is_some_and(|s| s > 0.0), "{v}");
        let fw = v["forwards"].as_array().unwrap();
        assert_eq!(fw.len(), 2, "{v}");
        assert_eq!(
            (fw[0]["proto"].as_str(), fw[0]["guest_port"].as_u64()),
            (Some("udp"), Some(62201))
        );
        assert_eq!(
            (fw[1]["proto"].as_str(), fw[1]["guest_port"].as_u64()),
            (Some("tcp"), Some(2222))
        );
        let console = std::fs::read_to_string(v["console_log"].as_str().unwrap()).unwrap();
        assert!(
            console.contains("was blank: formatted ext4"),
            "first boot did not format /var:\n{console}"
        );
        assert!(alive(v["pid"].as_u64().unwrap()), "{v}");
        runs.push(v);
    }
    let port = |v: &serde_json::Value| v["forwards"][1]["host_port"].as_u64().unwrap();
    assert_ne!(port(&runs[0]), port(&runs[1]), "two runs on one port");
    assert_ne!(runs[0]["pid"], runs[1]["pid"]);
    for v in &runs {
        let h = health(port(v));
        assert_eq!(h["ok"], true, "{h}");
        assert_eq!(h["services"]["spa"], "ok", "{h}");
    }
    for v in &runs {
        let o = gwos(&["stop", v["pid_file"].as_str().unwrap()], &tmpdir);
        assert!(o.status.success(), "gwos stop: {}", text(&o.stderr));
        assert!(
            text(&o.stderr).contains("powered off in"),
            "not a clean power-off: {}",
            text(&o.stderr)
        );
        assert!(
            !alive(v["pid"].as_u64().unwrap()),
            "QEMU still running: {v}"
        );
    }
    let left: Vec<PathBuf> = std::fs::read_dir(&tmpdir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert!(left.is_empty(), "temporary files left: {left:?}");
    assert_eq!(sha256(&img), before, "the original image changed");
}

/// A copy of the shipped image with one byte of root-a changed: `gwos run
/// --wait-ready` exits 4 and says dm-verity refused the root, with the console's lines.
#[test]
fn corrupted_root_exits_4_naming_verity() {
    let wd = tempfile::Builder::new()
        .prefix("gwos-run-test")
        .tempdir_in(out_dir())
        .unwrap();
    let disk = copy_image(&out_dir().join("gwos.img"), wd.path()).unwrap();
    let r = gpt::find(&disk, "root-a").unwrap();
    flip_byte(&disk, r.offset + 1024 + 100).unwrap();
    let o = gwos(
        &[
            "run",
            disk.to_str().unwrap(),
            "--direct",
            "--wait-ready",
            "--timeout",
            "300",
        ],
        wd.path(),
    );
    let err = text(&o.stderr);
    eprintln!("{err}");
    assert_eq!(o.status.code(), Some(4), "{err}");
    assert!(
        err.contains("dm-verity: the root file system is corrupted"),
        "{err}"
    );
    assert!(
        err.contains("device-mapper: verity"),
        "no console lines: {err}"
    );
    assert!(o.stdout.is_empty(), "JSON printed for a failed boot");
}

/// docs/ci.md's example CI job runs as written: qemu-tests/ci-example.sh is
/// the same steps (deps, image, `gwos run --detach --wait-ready`, fwknop
/// knock, TLS 1.3, `health` over ssh, `gwos stop`).
#[test]
fn docs_ci_example_runs_as_written() {
    let ws = gwos_qemu_tests::workspace();
    let o = std::process::Command::new("bash")
        .arg(ws.join("qemu-tests/ci-example.sh"))
        .current_dir(&ws)
        .output()
        .expect("bash runs");
    assert!(
        o.status.success(),
        "docs/ci.md's job failed ({}):\n{}\n{}",
        o.status,
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
}
