//! Supervision and state under PID 1 in QEMU (review F3, F10): control keeps
//! answering while the data plane is down, and what an offline edit of the
//! state partition can no longer do. Needs root (network namespaces, loop
//! mounts), qemu-system-x86_64, ssh, ssh-keygen; the images from `make image`.
//!
//! Test-only behaviour used here: `gwos.test=vpnfail` on the command line
//! makes every start of the vpn fail. Direct boots have no EFI variables, so
//! the machine secret is on the state partition (the console says so); the
//! offline edit below changes the sealed file without recomputing its MAC.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use gwos_qemu_tests::{copy_image, direct_boot, gpt, need_tool, out_dir, test_image, NetNs, Qemu};

const BOOT: Duration = Duration::from_secs(150);

fn workdir() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("gwos-supervision")
        .tempdir_in(out_dir())
        .unwrap()
}

/// Runs `script` with `sh -c` inside the namespace; (success, stdout+stderr).
fn ns_sh(ns: &NetNs, script: &str) -> (bool, String) {
    let o = ns.exec("sh", &["-c", script]).unwrap();
    (
        o.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        ),
    )
}

/// The backend (10.0.2.100) runs `cmd` on the control channel with `key`, `body` on stdin.
fn ctl(ns: &NetNs, key: &Path, cmd: &str, body: &str) -> (bool, serde_json::Value, String) {
    let (ok, out) = ns_sh(
        ns,
        &format!(
            "echo '{body}' | timeout 60 ssh -p 2222 -i {} -o BindAddress=10.0.2.100 -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null -o BatchMode=yes -o IdentitiesOnly=yes -o LogLevel=ERROR -o ConnectTimeout=10 gwctl@10.0.2.15 {cmd}",
            key.display()
        ),
    );
    let v = serde_json::from_str(out.trim()).unwrap_or(serde_json::Value::Null);
    (ok, v, out)
}

fn backend_key(dir: &Path) -> PathBuf {
    let key = dir.join("backend_ed25519");
    std::fs::copy(
        gwos_qemu_tests::workspace().join("qemu-tests/fixtures/backend_ed25519"),
        &key,
    )
    .unwrap();
    std::fs::set_permissions(&key, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    key
}

fn keygen(dir: &Path, name: &str) -> (PathBuf, String) {
    let p = dir.join(name);
    let st = Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-C", name, "-f"])
        .arg(&p)
        .status()
        .unwrap();
    assert!(st.success(), "ssh-keygen failed");
    let public = std::fs::read_to_string(p.with_extension("pub")).unwrap();
    (p, public.trim().to_owned())
}

/// The disk's `state` partition mounted on the host while the guest is off.
struct Offline {
    mnt: tempfile::TempDir,
    loopdev: String,
}

impl Offline {
    fn mount(disk: &Path) -> Self {
        let p = gpt::find(disk, "state").unwrap();
        let o = Command::new("losetup")
            .args([
                "--find",
                "--show",
                "--offset",
                &p.offset.to_string(),
                "--sizelimit",
                &p.size.to_string(),
            ])
            .arg(disk)
            .output()
            .unwrap();
        assert!(o.status.success(), "losetup: {o:?}");
        let loopdev = String::from_utf8_lossy(&o.stdout).trim().to_owned();
        let mnt = tempfile::tempdir().unwrap();
        let st = Command::new("mount")
            .arg(&loopdev)
            .arg(mnt.path())
            .status()
            .unwrap();
        if !st.success() {
            let _ = Command::new("losetup").args(["-d", &loopdev]).status();
            panic!("mounting the state partition failed");
        }
        Self { mnt, loopdev }
    }

    fn path(&self, p: &str) -> PathBuf {
        self.mnt.path().join(p)
    }
}

impl Drop for Offline {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(self.mnt.path()).status();
        let _ = Command::new("losetup").args(["-d", &self.loopdev]).status();
    }
}

/// Review F3 (b): vpn fails at every start; control must still start and
/// answer `health`, reporting the vpn unavailable, and the vpn is marked
/// FAILED (and retried later) while PID 1 carries on.
#[test]
fn f3_control_answers_health_while_vpn_fails() {
    need_tool("ssh");
    let img = test_image().unwrap();
    let wd = workdir();
    let disk = copy_image(&img.join("gwos.img"), wd.path()).unwrap();
    let ns = NetNs::new("f3", &["10.0.2.2/24", "10.0.2.100/24"]).unwrap();
    let boot = direct_boot(&img, "gwos.test=vpnfail").unwrap();
    let mut q = Qemu::start(&disk, boot, Some(&ns)).unwrap();
    q.wait_for("gwos: service control healthy", BOOT).unwrap();
    let c = q
        .wait_for("gwos: service vpn FAILED", Duration::from_secs(60))
        .unwrap();
    assert!(c.contains("retrying in 300 s"), "no retry announced:\n{c}");
    let key = backend_key(wd.path());
    let (ok, v, out) = ctl(&ns, &key, "health", "{}");
    assert!(
        ok,
        "control health failed: {out}\nconsole:\n{}",
        q.console_text()
    );
    assert_eq!(v["ok"], true, "{v}");
    assert_eq!(v["services"]["spa"], "ok", "{v}");
    assert_eq!(v["services"]["vpn"], "unavailable", "{v}");
    assert!(
        !q.console_text().contains("gwos: ready "),
        "ready line printed while a required service is down"
    );
    q.power_off().unwrap();
}

/// Review F10 on a real boot: a runtime key added over control is sealed
/// and survives a reboot; then, with the guest off, an admin key is
/// written into keys.json and /var/lib/gwos/tls-front is replaced by a
/// symlink to /run/gwos. On the next boot control refuses the file (the
/// site key still works, the forged one does not), PID 1 refuses the
/// symlink (moves it aside; tls-front starts on a fresh state dir) and
/// /run/gwos is untouched (every service binds its socket).
#[test]
fn f10_offline_edits_refused() {
    need_tool("ssh");
    need_tool("ssh-keygen");
    need_tool("losetup");
    let img = test_image().unwrap();
    let wd = workdir();
    let disk = copy_image(&img.join("gwos.img"), wd.path()).unwrap();
    let ns = NetNs::new("f10", &["10.0.2.2/24", "10.0.2.100/24"]).unwrap();
    let site = backend_key(wd.path());
    let (reader, reader_pub) = keygen(wd.path(), "reader");
    let (forger, forger_pub) = keygen(wd.path(), "forger");

    let mut q = Qemu::start(&disk, direct_boot(&img, "").unwrap(), Some(&ns)).unwrap();
    let c = q.wait_for("gwos: ready slot=A", BOOT).unwrap();
    assert!(
        c.contains("WARNING: state sealing: no EFI variables"),
        "direct boots have no EFI variables and must say so:\n{c}"
    );
    let add = serde_json::json!({"key": reader_pub, "scopes": ["vpn:read"]}).to_string();
    let (ok, v, out) = ctl(&ns, &site, "control_key_add", &add);
    assert!(ok && v["ok"] == true, "control_key_add: {out}");
    q.power_off().unwrap();

    let mut q = Qemu::start(&disk, direct_boot(&img, "").unwrap(), Some(&ns)).unwrap();
    q.wait_for("gwos: ready slot=A", BOOT).unwrap();
    let (ok, v, out) = ctl(&ns, &reader, "help", "{}");
    assert!(
        ok && v["ok"] == true,
        "the sealed runtime key did not survive a reboot: {out}"
    );
    q.power_off().unwrap();

    {
        let var = Offline::mount(&disk);
        let keys = var.path("lib/gwos/control/keys.json");
        let text = std::fs::read_to_string(&keys).unwrap();
        assert!(
            text.starts_with("gwos-sealed-v1 control/keys.json "),
            "{text}"
        );
        let forged = text.replacen(
            "[\n",
            &format!("[\n  {{\"key\": \"{forger_pub}\", \"scopes\": [\"admin\"]}},\n"),
            1,
        );
        assert_ne!(forged, text);
        std::fs::write(&keys, forged).unwrap();
        let tls = var.path("lib/gwos/tls-front");
        std::fs::remove_dir_all(&tls).unwrap();
        std::os::unix::fs::symlink("../../../run/gwos", &tls).unwrap();
    }

    let mut q = Qemu::start(&disk, direct_boot(&img, "").unwrap(), Some(&ns)).unwrap();
    q.wait_for("gwos: service control healthy", BOOT).unwrap();
    let c = q
        .wait_for("gwos: service vpn healthy", Duration::from_secs(60))
        .unwrap();
    assert!(
        c.contains("control.state_refused") && c.contains("MAC does not match"),
        "tampered keys.json not refused loudly:\n{c}"
    );
    assert!(
        c.contains("/var/lib/gwos/tls-front is a symlink"),
        "symlinked state dir not refused:\n{c}"
    );
    // Moved aside; the next start gets a fresh state dir (and /run/gwos kept its mode).
    q.wait_for("gwos: service tls-front healthy", Duration::from_secs(60))
        .unwrap();
    let (ok, _, out) = ctl(&ns, &forger, "control_key_list", "{}");
    assert!(
        !ok && out.contains("Permission denied (publickey)"),
        "forged admin key accepted: {out}"
    );
    let (ok, _, out) = ctl(&ns, &reader, "help", "{}");
    assert!(
        !ok && out.contains("Permission denied (publickey)"),
        "a key from the refused file still works: {out}"
    );
    let (ok, v, out) = ctl(&ns, &site, "control_key_list", "{}");
    assert!(ok && v["ok"] == true, "site key refused: {out}");
    let keys = v["keys"].as_array().cloned().unwrap_or_default();
    assert!(
        !keys.is_empty() && keys.iter().all(|k| k["source"] == "site"),
        "only the image's site keys remain: {v}"
    );
    let (_, v, out) = ctl(&ns, &site, "health", "{}");
    assert_eq!(v["services"]["spa"], "ok", "{out}");
    assert_eq!(v["services"]["vpn"], "ok", "{out}");
    assert_eq!(v["services"]["tls-front"], "ok", "{out}");
    q.power_off().unwrap();
}
