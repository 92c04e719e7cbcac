//! Security review F15: development keys cannot ship unnoticed. A
//! release-named build (version_id without "dev") with no release key is
//! refused unless `--allow-dev-keys` is given, and `gwos verify` never falls
//! back to the development key without being told to (`--dev`).

use std::path::Path;
use std::process::{Command, Output};

const GWOS: &str = env!("CARGO_BIN_EXE_gwos");

fn inputs(dir: &Path, version_id: &str) {
    std::fs::write(dir.join("bzImage"), vec![0x4d; 100_000]).unwrap();
    std::fs::write(dir.join("gwosd"), vec![0x7f; 100_000]).unwrap();
    std::fs::create_dir_all(dir.join("rootfs/etc/gwos")).unwrap();
    std::fs::write(dir.join("rootfs/etc/gwos/services.toml"), "# none\n").unwrap();
    std::fs::write(
        dir.join("image.toml"),
        format!(
            "[image]\nversion_id = \"{version_id}\"\n[partitions]\nesp_mib = 40\nroot_mib = 8\nverity_mib = 1\nstate_mib = 1\n[site.control]\nbackend = [\"192.0.2.0/24\"]\n"
        ),
    )
    .unwrap();
}

fn build(dir: &Path, extra: &[&str]) -> Output {
    Command::new(GWOS)
        .env("SOURCE_DATE_EPOCH", "1700000000")
        .arg("build")
        .arg("--config")
        .arg(dir.join("image.toml"))
        .arg("--kernel")
        .arg(dir.join("bzImage"))
        .arg("--gwosd")
        .arg(dir.join("gwosd"))
        .arg("--out")
        .arg(dir.join("out"))
        .arg("--no-qcow2")
        .args(extra)
        .output()
        .unwrap()
}

#[test]
fn f15_release_named_build_with_dev_keys_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    inputs(dir.path(), "1.4.0");
    let o = build(dir.path(), &[]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        !o.status.success(),
        "a release-named dev-key build succeeded: {err}"
    );
    assert!(
        err.contains("DEVELOPMENT keys") && err.contains("--allow-dev-keys"),
        "{err}"
    );
    assert!(
        !dir.path().join("out/keys/dev-control").exists(),
        "refused build still generated a dev admin control key"
    );
}

#[test]
fn f15_verify_never_falls_back_to_the_dev_key() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("keys")).unwrap();
    std::fs::write(
        dir.path().join("keys/dev-release.pub"),
        format!("{}\n", "11".repeat(32)),
    )
    .unwrap();
    std::fs::write(dir.path().join("gwos.img"), vec![0u8; 8192]).unwrap();
    let o = Command::new(GWOS)
        .arg("verify")
        .arg(dir.path().join("gwos.img"))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success());
    assert!(
        err.contains("no release public key given") && err.contains("--dev"),
        "verify without --key must refuse and name --dev, got: {err}"
    );
}
