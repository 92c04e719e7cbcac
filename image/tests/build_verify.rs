//! Builds small real images with the `gwos` binary (real mkfs.erofs, objcopy,
//! mtools, qemu-img) and checks them with `gwos verify`, sgdisk, veritysetup
//! and `gwos ls`; then corrupts single bytes and expects `gwos verify` to fail
//! naming what changed. A placeholder file stands in for the kernel and for
//! gwosd (nothing is booted here; qemu-tests/ boots real images).

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const GWOS: &str = env!("CARGO_BIN_EXE_gwos");

struct Fixture {
    dir: tempfile::TempDir,
}

impl Fixture {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path();
        // Deterministic placeholder inputs.
        let kernel: Vec<u8> = (0..3_000_000u32)
            .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
            .collect();
        std::fs::write(p.join("bzImage"), kernel).unwrap();
        let gwosd: Vec<u8> = (0..300_000u32)
            .map(|i| (i.wrapping_mul(40503) >> 7) as u8)
            .collect();
        std::fs::write(p.join("gwosd"), gwosd).unwrap();
        std::fs::create_dir_all(p.join("rootfs/etc/gwos")).unwrap();
        std::fs::write(
            p.join("rootfs/etc/gwos/services.toml"),
            "# test service table\n",
        )
        .unwrap();
        std::fs::write(
            p.join("image.toml"),
            "[image]\nversion_id = \"9.9.9\"\nversion = 7\n[partitions]\nesp_mib = 40\nroot_mib = 8\nverity_mib = 1\nstate_mib = 1\n[site.spa]\nport = 62201\n",
        )
        .unwrap();
        Fixture { dir }
    }
    fn p(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }
    fn build(&self, out: &str, extra: &[&str]) -> Output {
        let o = Command::new(GWOS)
            .env("SOURCE_DATE_EPOCH", "1700000000")
            .arg("build")
            .arg("--config")
            .arg(self.p("image.toml"))
            .arg("--kernel")
            .arg(self.p("bzImage"))
            .arg("--gwosd")
            .arg(self.p("gwosd"))
            .arg("--out")
            .arg(self.p(out))
            // 9.9.9 is release-named: development keys need the flag (F15).
            .arg("--allow-dev-keys")
            .args(extra)
            .output()
            .unwrap();
        o
    }
}

fn ok(o: &Output) -> String {
    let s = format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(o.status.success(), "command failed: {s}");
    s
}

fn verify(img: &Path) -> Output {
    Command::new(GWOS)
        .arg("verify")
        .arg(img)
        .arg("--dev")
        .output()
        .unwrap()
}

fn fail_text(o: &Output) -> String {
    assert!(
        !o.status.success(),
        "expected failure, got: {}",
        String::from_utf8_lossy(&o.stdout)
    );
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn flip(img: &Path, off: u64) {
    use std::io::{Read, Seek, SeekFrom, Write};
    let mut f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(img)
        .unwrap();
    let mut b = [0u8];
    f.seek(SeekFrom::Start(off)).unwrap();
    f.read_exact(&mut b).unwrap();
    f.seek(SeekFrom::Start(off)).unwrap();
    f.write_all(&[b[0] ^ 0x01]).unwrap();
}

fn part(img: &Path, n: u32) -> (u64, u64) {
    let o = Command::new("sgdisk")
        .args(["-i", &n.to_string()])
        .arg(img)
        .output()
        .expect("sgdisk (gdisk)");
    let t = String::from_utf8_lossy(&o.stdout);
    let num = |key: &str| -> u64 {
        let l = t.lines().find(|l| l.starts_with(key)).unwrap();
        l.split(':')
            .nth(1)
            .unwrap()
            .split_whitespace()
            .next()
            .unwrap()
            .parse()
            .unwrap()
    };
    let first = num("First sector");
    let last = num("Last sector");
    (first * 512, (last - first + 1) * 512)
}

fn extract(img: &Path, n: u32, to: &Path) {
    let (off, len) = part(img, n);
    let o = Command::new("dd")
        .arg(format!("if={}", img.display()))
        .arg(format!("of={}", to.display()))
        .args([
            "bs=1M",
            &format!("skip={}", off / 1048576),
            &format!("count={}", len / 1048576),
            "status=none",
        ])
        .output()
        .unwrap();
    ok(&o);
}

#[test]
fn build_verify_reproduce_and_detect_corruption() {
    let fx = Fixture::new();
    let ws = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf();
    let log = ok(&fx.build("out1", &["--workspace", ws.to_str().unwrap()]));
    assert!(log.contains("DEVELOPMENT keys"), "{log}");
    let img = fx.p("out1/gwos.img");
    for f in [
        "gwos.qcow2",
        "manifest.json",
        "manifest.signed",
        "build-report.json",
        "keys/dev-release.key",
        "keys/dev-control.pub",
        "slot-a/initramfs.cpio",
        "slot-a/cmdline",
        "slot-a/bzImage",
        "slot-a/uki.efi",
        "slot-b/uki.efi",
        "gwos.img.bmap",
        "gwos-9.9.9.update",
    ] {
        assert!(fx.p("out1").join(f).exists(), "{f} missing");
    }
    let v = ok(&verify(&img));
    assert!(v.contains("OK:") && v.contains("DEVELOPMENT image"), "{v}");
    check_bundle_and_bmap(&fx);

    // sgdisk is happy with the table.
    let s = Command::new("sgdisk").arg("-v").arg(&img).output().unwrap();
    assert!(String::from_utf8_lossy(&s.stdout).contains("No problems found"));

    // veritysetup (the anchor) accepts our hash partition with the signed root hash.
    let m: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fx.p("out1/manifest.json")).unwrap())
            .unwrap();
    let root_hash = m["root_hash"].as_str().unwrap();
    extract(&img, 2, &fx.p("root-a"));
    extract(&img, 3, &fx.p("verity-a"));
    let vs = Command::new("veritysetup")
        .arg("verify")
        .arg(fx.p("root-a"))
        .arg(fx.p("verity-a"))
        .arg(root_hash)
        .output()
        .expect("veritysetup (cryptsetup-bin)");
    ok(&vs);
    let cmdline = std::fs::read_to_string(fx.p("out1/slot-a/cmdline")).unwrap();
    assert!(
        cmdline.contains(&format!("gwos.roothash={root_hash}"))
            && cmdline.contains("gwos.slot=a")
            && cmdline.contains("console=ttyS0,115200")
    );

    // The initramfs (GNU cpio reads it) has /init, the release key and /dev/console.
    let list = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "cpio -t --quiet < {}",
            fx.p("out1/slot-a/initramfs.cpio").display()
        ))
        .output()
        .unwrap();
    let list = ok(&list);
    for want in ["init", "dev/console", "newroot", "proc", "sys"] {
        assert!(
            list.lines().any(|l| l == want),
            "{want} not in initramfs: {list}"
        );
    }
    assert!(
        list.lines()
            .any(|l| l.starts_with("etc/gwos/release-keys/") && l.ends_with(".pub")),
        "{list}"
    );

    // The root has gwosd as /sbin/init, the rootfs files, and no shell.
    let ls = ok(&Command::new(GWOS).arg("ls").arg(&img).output().unwrap());
    for want in [
        " /sbin/init",
        " /usr/bin/gwosd",
        " /etc/os-release",
        " /etc/gwos/site.toml",
        " /etc/gwos/services.toml",
        " /proc",
    ] {
        assert!(
            ls.lines().any(|l| l.ends_with(want)),
            "{want} missing in\n{ls}"
        );
    }
    assert!(!ls.contains("/bin/sh"));
    let e = fail_text(
        &Command::new(GWOS)
            .arg("ls")
            .arg(&img)
            .arg("b")
            .output()
            .unwrap(),
    );
    assert!(e.contains("root-b") && e.contains("slot empty"), "{e}");
    // The dev control key is in the site config with scope admin.
    let rep: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fx.p("out1/build-report.json")).unwrap())
            .unwrap();
    assert_eq!(rep["sbom"]["spdxVersion"], "SPDX-2.3");
    let names: Vec<&str> = rep["sbom"]["packages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    for want in ["gwos-init", "erofs-utils", "systemd-boot-efi"] {
        assert!(names.contains(&want), "{want} not in SBOM: {names:?}");
    }

    // Reproducible: a second clean build with the same inputs and keys is byte-identical.
    std::fs::create_dir_all(fx.p("out2")).unwrap();
    ok(&Command::new("cp")
        .arg("-a")
        .arg(fx.p("out1/keys"))
        .arg(fx.p("out2/keys"))
        .output()
        .unwrap());
    ok(&fx.build("out2", &["--no-qcow2"]));
    let a = std::fs::read(&img).unwrap();
    let b = std::fs::read(fx.p("out2/gwos.img")).unwrap();
    assert!(a == b, "two builds differ");
    let same = |f: &str| {
        std::fs::read(fx.p("out1").join(f)).unwrap() == std::fs::read(fx.p("out2").join(f)).unwrap()
    };
    assert!(same("gwos-9.9.9.update"), "two builds' bundles differ");
    assert!(same("gwos.img.bmap"), "two builds' bmaps differ");

    // Wrong key: refused, naming the unknown key id.
    let other = fx.p("other.key");
    ok(&Command::new(GWOS)
        .arg("keygen")
        .arg(&other)
        .output()
        .unwrap());
    let e = fail_text(
        &Command::new(GWOS)
            .arg("verify")
            .arg(&img)
            .arg("--key")
            .arg(fx.p("other.pub"))
            .output()
            .unwrap(),
    );
    assert!(e.contains("unknown key id"), "{e}");

    // One flipped byte in root-a's data → names root-a and the block.
    let (root_off, _) = part(&img, 2);
    let bad = fx.p("out1/bad-root.img");
    std::fs::copy(&img, &bad).unwrap();
    flip(&bad, root_off + 4096 + 17);
    let e = fail_text(&verify(&bad));
    assert!(e.contains("root-a") && e.contains("data block 1"), "{e}");

    // One flipped byte in the signed manifest (end of verity-a) → signature failure.
    let (v_off, v_len) = part(&img, 3);
    let bad = fx.p("out1/bad-manifest.img");
    std::fs::copy(&img, &bad).unwrap();
    flip(&bad, v_off + v_len - 65536 + 84 + 10);
    let e = fail_text(&verify(&bad));
    assert!(e.contains("signature"), "{e}");

    // One flipped byte in the verity tree itself → names verity-a.
    let bad = fx.p("out1/bad-tree.img");
    std::fs::copy(&img, &bad).unwrap();
    flip(&bad, v_off + 4096 + 5);
    let e = fail_text(&verify(&bad));
    assert!(e.contains("verity-a") || e.contains("root-a"), "{e}");

    // One flipped byte in the UKI's command line on the ESP → UKI hash mismatch.
    let (e_off, e_len) = part(&img, 1);
    let esp = &a[e_off as usize..(e_off + e_len) as usize];
    let pos = esp
        .windows(11)
        .position(|w| w == b"gwos.slot=a")
        .expect("cmdline in ESP");
    let bad = fx.p("out1/bad-uki.img");
    std::fs::copy(&img, &bad).unwrap();
    flip(&bad, e_off + pos as u64 + 3);
    let e = fail_text(&verify(&bad));
    assert!(e.contains("esp") && e.contains("sha256"), "{e}");
}

#[test]
fn configured_release_key_and_clear_errors() {
    let fx = Fixture::new();
    ok(&Command::new(GWOS)
        .arg("keygen")
        .arg(fx.p("release.key"))
        .output()
        .unwrap());
    let mut cfg = std::fs::read_to_string(fx.p("image.toml")).unwrap();
    cfg.push_str("[keys]\nrelease_private = \"release.key\"\n");
    std::fs::write(fx.p("image.toml"), &cfg).unwrap();
    ok(&fx.build("out", &["--no-qcow2"]));
    assert!(
        !fx.p("out/keys").exists(),
        "dev keys must not be made when a release key is set"
    );
    let o = Command::new(GWOS)
        .arg("verify")
        .arg(fx.p("out/gwos.img"))
        .arg("--key")
        .arg(fx.p("release.pub"))
        .output()
        .unwrap();
    ok(&o);
    // A world-readable private key is refused.
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(fx.p("release.key"), std::fs::Permissions::from_mode(0o644)).unwrap();
    let e = fail_text(&fx.build("out3", &["--no-qcow2"]));
    assert!(e.contains("0600"), "{e}");
    // Missing kernel and bad config keys are named.
    std::fs::remove_file(fx.p("bzImage")).unwrap();
    let e = fail_text(&fx.build("out4", &[]));
    assert!(e.contains("kernel") && e.contains("not found"), "{e}");
    std::fs::write(fx.p("image.toml"), "[partitions]\nroot_mb = 3\n").unwrap();
    let e = fail_text(&fx.build("out5", &[]));
    assert!(e.contains("root_mb"), "{e}");
}

/// The bundle holds the slot's parts (inspect checks signature and hashes),
/// a second build with the same --keys and new versions makes an update
/// signed by the same key, and bmaptool accepts the block map.
fn check_bundle_and_bmap(fx: &Fixture) {
    let bundle = fx.p("out1/gwos-9.9.9.update");
    let run = |args: &[&std::ffi::OsStr]| Command::new(GWOS).args(args).output().unwrap();
    let text = ok(&run(&[
        "inspect".as_ref(),
        bundle.as_os_str(),
        "--dev".as_ref(),
    ]));
    for want in [
        "signature OK",
        "version    9.9.9 (7)",
        "part root",
        "part verity",
        "part uki-a",
        "part uki-b",
        "DEVELOPMENT",
        "gwos-ab1:esp=41943040,root=8388608,verity=1048576",
    ] {
        assert!(text.contains(want), "{want} not in\n{text}");
    }
    let img_text = ok(&run(&[
        "inspect".as_ref(),
        fx.p("out1/gwos.img").as_os_str(),
        "--dev".as_ref(),
    ]));
    assert!(
        img_text.contains("slot a: version 9.9.9 (7)") && img_text.contains("slot b: empty"),
        "{img_text}"
    );
    // One flipped payload byte: inspect names the part.
    let bad = fx.p("out1/bad.update");
    std::fs::copy(&bundle, &bad).unwrap();
    let len = std::fs::metadata(&bad).unwrap().len();
    flip(&bad, len - 10);
    let e = fail_text(&run(&[
        "inspect".as_ref(),
        bad.as_os_str(),
        "--dev".as_ref(),
    ]));
    assert!(e.contains("uki-b") && e.contains("sha256 mismatch"), "{e}");
    // Without --key or --dev: no silent development key.
    let e = fail_text(&run(&["inspect".as_ref(), bundle.as_os_str()]));
    assert!(e.contains("--dev"), "{e}");

    // v2 with the same keys directory: signed by the same key, versions overridden.
    let o = fx.build(
        "v2",
        &[
            "--no-qcow2",
            "--keys",
            fx.p("out1/keys").to_str().unwrap(),
            "--version",
            "8",
            "--version-id",
            "9.9.10",
            "--security-floor",
            "8",
        ],
    );
    ok(&o);
    assert!(!fx.p("v2/keys").exists(), "--keys must not make <out>/keys");
    let text = ok(&run(&[
        "inspect".as_ref(),
        fx.p("v2/gwos-9.9.10.update").as_os_str(),
        "--key".as_ref(),
        fx.p("out1/keys/dev-release.pub").as_os_str(),
    ]));
    assert!(
        text.contains("version    9.9.10 (8)") && text.contains("floor      8"),
        "{text}"
    );

    // bmaptool (bmap-tools) copies the mapped blocks and checks their sha256.
    let target = fx.p("flashed.img");
    let o = Command::new("bmaptool")
        .arg("copy")
        .arg("--bmap")
        .arg(fx.p("out1/gwos.img.bmap"))
        .arg(fx.p("out1/gwos.img"))
        .arg(&target)
        .output()
        .expect("bmaptool (bmap-tools)");
    ok(&o);
    assert!(
        std::fs::read(&target).unwrap() == std::fs::read(fx.p("out1/gwos.img")).unwrap(),
        "bmaptool copy differs from the image"
    );
}
