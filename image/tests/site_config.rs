//! `gwos build` refuses a `[site]` that a service would refuse at boot: an
//! unknown section, an unknown key, a value the service's parser rejects.
//! The build stops at its first step, before any image is written; the
//! shipped configs (image.toml, qemu-tests/test-image.toml) pass.

use std::path::Path;
use std::process::Command;

const GWOS: &str = env!("CARGO_BIN_EXE_gwos");

/// Runs `gwos build` on `site` (the `[site]` part of an image.toml) with
/// placeholder inputs; returns (success, stderr, whether anything was written).
fn build_with_site(site: &str) -> (bool, String, bool) {
    let dir = tempfile::tempdir().expect("tempdir");
    let p = dir.path();
    std::fs::write(p.join("bzImage"), b"kernel").expect("write");
    std::fs::write(p.join("gwosd"), b"gwosd").expect("write");
    std::fs::write(
        p.join("image.toml"),
        format!("[image]\nversion = 1\n{site}"),
    )
    .expect("write");
    let o = Command::new(GWOS)
        .env("SOURCE_DATE_EPOCH", "1700000000")
        .arg("build")
        .arg("--config")
        .arg(p.join("image.toml"))
        .arg("--kernel")
        .arg(p.join("bzImage"))
        .arg("--gwosd")
        .arg(p.join("gwosd"))
        .arg("--out")
        .arg(p.join("out"))
        .output()
        .expect("running gwos build");
    let wrote = p.join("out").join("gwos.img").exists();
    (
        o.status.success(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
        wrote,
    )
}

fn refused(site: &str) -> String {
    let (ok, err, wrote) = build_with_site(site);
    assert!(!ok, "gwos build accepted {site:?}");
    assert!(!wrote, "gwos build wrote an image for {site:?}");
    err
}

#[test]
fn build_refuses_unknown_site_section() {
    let err = refused("[site.sap]\nport = 62201\n");
    assert!(err.contains("unknown site config section [sap]"), "{err}");
}

#[test]
fn build_refuses_unknown_site_key() {
    let err = refused("[site.tls-front]\nlisen = \"0.0.0.0:443\"\n");
    assert!(
        err.contains("[site.tls-front]") && err.contains("lisen"),
        "{err}"
    );
}

#[test]
fn build_refuses_a_control_value_control_refuses() {
    let err = refused("[site.control]\nmax_sessions = 0\n");
    assert!(
        err.contains("[site.control]") && err.contains("max_sessions"),
        "{err}"
    );
}

#[test]
fn build_refuses_a_backend_network_the_firewall_refuses() {
    let err = refused("[site.control]\nbackend = [\"10.0.0.0/99\"]\n");
    assert!(
        err.contains("\"10.0.0.0/99\" is not an address or CIDR"),
        "{err}"
    );
}

#[test]
fn build_refuses_a_spa_user_spa_refuses() {
    let err = refused(
        "[[site.spa.users]]\nuser = \"alice\"\nkey_base64 = \"not base64!\"\nhmac_key_base64 = \"x\"\n",
    );
    assert!(
        err.contains("[site.spa]") && err.contains("key_base64 is not valid base64"),
        "{err}"
    );
}

#[test]
fn shipped_configs_pass_the_site_check() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    for rel in ["image.toml", "qemu-tests/test-image.toml"] {
        let path = root.join(rel);
        gwos_image::config::Config::load(Some(&path)).unwrap_or_else(|e| panic!("{rel}: {e:#}"));
    }
}
