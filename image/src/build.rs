//! `gwos build`: every step from inputs to `out/gwos.img`, in order, each a
//! progress step. Outputs (all under `--out`):
//!
//! - `gwos.img` (raw GPT disk), `gwos.qcow2`
//! - `manifest.json` (readable copy), `manifest.signed` (GWOSMAN1 envelope)
//! - `slot-a/{bzImage,initramfs.cpio,cmdline,uki.efi,root.erofs,verity.img}`
//! - `gwos.img.bmap` (bmaptool XML: the mapped block ranges of gwos.img)
//! - `gwos-<version_id>.update` (the signed update bundle, [`crate::bundle`])
//! - `slot-b/uki.efi` (the same release's UKI booting slot b, for the bundle)
//! - `build-report.json` (sizes, hashes, versions, SPDX 2.3 SBOM)
//! - `keys/` (development keys, only when no release key is configured;
//!   `--keys DIR` puts them elsewhere)

use std::fs::File;
use std::io::{Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use anyhow::{bail, ensure, Context, Result};
use gwos_signing::{Manifest, MANIFEST_REGION_SIZE};
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::json;
use sha2::{Digest, Sha256};

use crate::{config::Config, cpio, erofs, esp, gpt, keys, report, rootfs, tools, uki, verity};

pub const SYSTEMD_BOOT: &str = "/usr/lib/systemd/boot/efi/systemd-bootx64.efi";
const MIB: u64 = 1024 * 1024;

pub struct Args {
    pub config: Option<PathBuf>,
    pub kernel: PathBuf,
    pub gwosd: PathBuf,
    pub out: PathBuf,
    /// Cargo workspace for the SBOM (default: the config file's directory).
    pub workspace: Option<PathBuf>,
    pub qcow2: bool,
    /// Keys directory (default `<out>/keys`): `release.key`, or dev keys made there.
    pub keys_dir: Option<PathBuf>,
    /// Override `[image] version`, `version_id`, `security_floor`.
    pub version: Option<u64>,
    pub version_id: Option<String>,
    pub security_floor: Option<u64>,
    /// Sign a release-named image with development keys anyway (F15).
    pub allow_dev_keys: bool,
}

pub struct Built {
    pub image: PathBuf,
    pub image_sha256: String,
    pub root_hash: String,
    pub build_id: String,
    pub bundle: PathBuf,
    pub development: bool,
}

fn sha256_file(p: &Path) -> Result<[u8; 32]> {
    let mut f = File::open(p).with_context(|| format!("reading {}", p.display()))?;
    let mut h = Sha256::new();
    std::io::copy(&mut f, &mut h)?;
    Ok(h.finalize().into())
}

fn derive(build_id: &str, what: &str) -> [u8; 32] {
    Sha256::new_with_prefix(b"gwos-derive-v1\0")
        .chain_update(build_id)
        .chain_update([0])
        .chain_update(what)
        .finalize()
        .into()
}

pub fn source_date_epoch() -> Result<u64> {
    match std::env::var("SOURCE_DATE_EPOCH") {
        Ok(s) => s
            .trim()
            .parse()
            .with_context(|| format!("SOURCE_DATE_EPOCH={s:?} is not a unix time")),
        Err(_) => {
            eprintln!(
                "note: SOURCE_DATE_EPOCH not set; using 1700000000 (set it for release builds)"
            );
            Ok(1_700_000_000)
        }
    }
}

struct Steps(ProgressBar);
impl Steps {
    fn new(n: u64) -> Self {
        let pb = ProgressBar::new(n);
        pb.set_style(
            ProgressStyle::with_template("[{pos}/{len}] {elapsed:>4} {wide_msg}")
                .expect("valid template"),
        );
        Steps(pb)
    }
    fn step(&self, msg: &str) {
        self.0.inc(1);
        self.0.set_message(msg.to_string());
        if self.0.is_hidden() {
            eprintln!(
                "[{}/{}] {msg}",
                self.0.position(),
                self.0.length().unwrap_or(0)
            );
        }
    }
}

pub fn build(a: &Args) -> Result<Built> {
    let steps = Steps::new(14);
    steps.step("checking inputs and tools");
    let mut cfg = Config::load(a.config.as_deref())?;
    apply_overrides(&mut cfg, a)?;
    let keys_dir = a.keys_dir.clone().unwrap_or_else(|| a.out.join("keys"));
    keys::check_dev_keys(
        &cfg.image.version_id,
        keys::uses_dev_keys(&cfg, &keys_dir),
        a.allow_dev_keys,
    )?;
    let epoch = source_date_epoch()?;
    for t in ["mkfs.erofs", "objcopy", "mformat", "mmd", "mcopy"] {
        tools::find(t)?;
    }
    if a.qcow2 {
        tools::find("qemu-img")?;
    }
    ensure!(
        a.kernel.is_file(),
        "kernel {} not found (make kernel builds out/bzImage)",
        a.kernel.display()
    );
    ensure!(
        a.gwosd.is_file(),
        "gwosd binary {} not found (make gwosd builds it)",
        a.gwosd.display()
    );
    for p in [uki::STUB, SYSTEMD_BOOT] {
        ensure!(
            Path::new(p).is_file(),
            "{p} not found: apt-get install systemd-boot-efi"
        );
    }
    std::fs::create_dir_all(&a.out).with_context(|| format!("creating {}", a.out.display()))?;
    let out = a.out.canonicalize()?;
    let work = out.join(".work");
    if work.exists() {
        std::fs::remove_dir_all(&work)?;
    }
    std::fs::create_dir_all(&work)?;
    let slot_dir = out.join("slot-a");
    std::fs::create_dir_all(&slot_dir)?;

    steps.step("keys");
    let keys = keys::load(&cfg, &keys_dir)?;
    let site = keys::site_with_dev_control(&cfg.site, keys.dev_control.as_deref());
    let site_toml = format!(
        "# generated by gwos build from image.toml [site]\n{}",
        toml::to_string(&site)?
    );
    let key_files = keys.release_key_files();
    let rootfs_dir = cfg.resolve(&cfg.image.rootfs_dir);
    let extra_dir = rootfs_dir.is_dir().then_some(rootfs_dir.as_path());

    // Build id: a digest of every input, so equal inputs give equal images.
    let kernel_sha = sha256_file(&a.kernel)?;
    let gwosd_sha = sha256_file(&a.gwosd)?;
    let mut h = Sha256::new_with_prefix(b"gwos-build-id-v1\0");
    h.update(kernel_sha);
    h.update(gwosd_sha);
    h.update(rootfs::tree_digest(&rootfs_dir)?);
    h.update(site_toml.as_bytes());
    for (n, t) in &key_files {
        h.update(n.as_bytes());
        h.update(t.as_bytes());
    }
    h.update(
        format!(
            "{:?}{:?}{epoch}{}",
            cfg.image,
            cfg.partitions,
            env!("CARGO_PKG_VERSION")
        )
        .as_bytes(),
    );
    let build_id = hex::encode(&h.finalize()[..8]);
    let im = &cfg.image;

    steps.step("staging the root file system");
    let mut os_release = format!(
        "NAME=gwos\nID=gwos\nPRETTY_NAME=\"gwos {v}\"\nVERSION_ID={v}\nBUILD_ID={build_id}\nIMAGE_VERSION={v}\nHOME_URL=\"https://gwos.invalid/\"\n",
        v = im.version_id
    );
    if keys.dev {
        os_release.push_str("GWOS_DEVELOPMENT=1\n");
    }
    let staging = work.join("rootfs");
    let owners = rootfs::stage(
        &staging,
        &rootfs::Input {
            gwosd: &a.gwosd,
            extra_dir,
            os_release: &os_release,
            site_toml: &site_toml,
            release_keys: &key_files,
        },
    )?;

    // PID 1 formats a blank state partition from this (gwos_core::state_template).
    let state_uuid =
        uuid::Builder::from_random_bytes(derive(&build_id, "state-uuid")[..16].try_into()?)
            .into_uuid();
    let tpl = staging.join(crate::statefs::template_path());
    std::fs::create_dir_all(tpl.parent().expect("template has a parent"))?;
    std::fs::write(&tpl, crate::statefs::template(&work, epoch, state_uuid)?)?;
    std::fs::set_permissions(&tpl, std::os::unix::fs::PermissionsExt::from_mode(0o644))?;
    // The running release as the update service sees it (inside the verified root).
    let release = staging.join("etc/gwos/release.json");
    std::fs::create_dir_all(release.parent().expect("has a parent"))?;
    std::fs::write(
        &release,
        serde_json::to_string_pretty(&json!({
            "version": im.version,
            "version_id": im.version_id,
            "security_floor": im.security_floor,
            "development": keys.dev,
        }))? + "\n",
    )?;
    std::fs::set_permissions(
        &release,
        std::os::unix::fs::PermissionsExt::from_mode(0o644),
    )?;

    steps.step("mkfs.erofs");
    let erofs_path = slot_dir.join("root.erofs");
    let fs_uuid =
        uuid::Builder::from_random_bytes(derive(&build_id, "erofs-uuid")[..16].try_into()?)
            .into_uuid();
    let data_size = erofs::mkfs(
        &staging,
        &erofs_path,
        epoch,
        fs_uuid,
        &im.erofs_compression,
        &owners,
    )?;
    let root_part = cfg.partitions.root_mib * MIB;
    ensure!(
        data_size <= root_part,
        "root file system is {data_size} bytes but [partitions] root_mib is {} MiB; raise root_mib",
        cfg.partitions.root_mib
    );

    steps.step("dm-verity hash tree");
    let salt = derive(&build_id, "verity-salt");
    let verity_uuid =
        uuid::Builder::from_random_bytes(derive(&build_id, "verity-uuid")[..16].try_into()?)
            .into_uuid();
    let data_blocks = data_size / 4096;
    let tree = verity::build_file(
        &File::open(&erofs_path)?,
        0,
        data_blocks,
        &salt,
        verity_uuid.as_bytes(),
    )?;
    let verity_part = cfg.partitions.verity_mib * MIB;
    ensure!(
        tree.hash_area.len() as u64 + MANIFEST_REGION_SIZE <= verity_part,
        "verity tree ({} bytes) + manifest region do not fit verity_mib = {}",
        tree.hash_area.len(),
        cfg.partitions.verity_mib
    );
    std::fs::write(slot_dir.join("verity.img"), &tree.hash_area)?;
    let root_hash = hex::encode(tree.root_hash);

    steps.step("initramfs");
    let mut ar = cpio::Archive::new();
    ar.file("/init", 0o755, std::fs::read(&a.gwosd)?);
    for d in [
        "/dev",
        "/proc",
        "/sys",
        "/newroot",
        "/run",
        "/etc/gwos/release-keys",
    ] {
        ar.dir(d, 0o755);
    }
    ar.char_dev("/dev/console", 0o600, 5, 1);
    for (n, t) in &key_files {
        ar.file(
            &format!("/etc/gwos/release-keys/{n}"),
            0o644,
            t.as_bytes().to_vec(),
        );
    }
    let initrd = slot_dir.join("initramfs.cpio");
    std::fs::write(&initrd, ar.to_bytes(epoch as u32))?;

    steps.step("unified kernel images (slot a, slot b)");
    let cmdline = kernel_cmdline(im, "a", &root_hash);
    std::fs::write(slot_dir.join("cmdline"), format!("{cmdline}\n"))?;
    std::fs::copy(&a.kernel, slot_dir.join("bzImage"))?;
    let uki_path = slot_dir.join("uki.efi");
    let slot_b_dir = out.join("slot-b");
    std::fs::create_dir_all(&slot_b_dir)?;
    let uki_b_path = slot_b_dir.join("uki.efi");
    for (slot, path) in [("a", &uki_path), ("b", &uki_b_path)] {
        let slot_work = work.join(format!("uki-{slot}"));
        std::fs::create_dir_all(&slot_work)?;
        uki::build(
            Path::new(uki::STUB),
            &a.kernel,
            &initrd,
            &kernel_cmdline(im, slot, &root_hash),
            &os_release,
            epoch,
            &slot_work,
            path,
        )?;
    }
    let uki_bytes = std::fs::read(&uki_path)?;
    let uki_sha = hex::encode(Sha256::digest(&uki_bytes));

    steps.step("signing the slot manifest");
    let manifest = Manifest {
        format: gwos_signing::manifest::FORMAT,
        version: im.version,
        version_id: im.version_id.clone(),
        security_floor: im.security_floor,
        slot: Some("a".into()),
        build_id: build_id.clone(),
        hash_algorithm: "sha256".into(),
        data_block_size: 4096,
        hash_block_size: 4096,
        data_blocks,
        data_size,
        hash_size: tree.hash_area.len() as u64,
        salt: hex::encode(salt),
        root_hash: root_hash.clone(),
        verity_uuid: verity_uuid.to_string(),
        uki_sha256: uki_sha.clone(),
        fs_type: "erofs".into(),
        development: keys.dev,
    };
    let envelope = gwos_signing::seal(&manifest, &keys.signer)?;
    std::fs::write(out.join("manifest.signed"), &envelope)?;
    std::fs::write(
        out.join("manifest.json"),
        serde_json::to_string_pretty(&manifest)? + "\n",
    )?;

    steps.step("EFI system partition");
    let esp_size = cfg.partitions.esp_mib * MIB;
    let boot = std::fs::read(SYSTEMD_BOOT)?;
    let uki_name = format!("gwos-{}-a.efi", im.version_id);
    let files = vec![
        ("EFI/BOOT/BOOTX64.EFI".to_string(), boot.clone()),
        ("EFI/systemd/systemd-bootx64.efi".to_string(), boot),
        (
            "loader/loader.conf".to_string(),
            b"timeout 0\ndefault gwos-*\neditor no\nauto-entries no\nauto-firmware no\n".to_vec(),
        ),
        (format!("EFI/Linux/{uki_name}"), uki_bytes),
    ];
    let vol_id = u32::from_le_bytes(derive(&build_id, "esp-volume-id")[..4].try_into()?);
    let esp_bytes = esp::build(esp_size, vol_id, epoch, &files, &work)?;

    steps.step("GPT disk image");
    let disk = gpt::layout(
        &[
            ("esp", gpt::TYPE_ESP, esp_size),
            ("root-a", gpt::TYPE_ROOT_X86_64, root_part),
            ("verity-a", gpt::TYPE_ROOT_VERITY_X86_64, verity_part),
            ("root-b", gpt::TYPE_ROOT_X86_64, root_part),
            ("verity-b", gpt::TYPE_ROOT_VERITY_X86_64, verity_part),
            ("state", gpt::TYPE_VAR, cfg.partitions.state_mib * MIB),
        ],
        build_id.as_bytes(),
    )?;
    let img_path = out.join("gwos.img");
    let tmp = out.join("gwos.img.tmp");
    {
        let _ = std::fs::remove_file(&tmp);
        let mut f = File::create(&tmp)?;
        f.set_len(disk.size())?;
        gpt::write(&mut f, &disk)?;
        // Writes only non-zero 4 KiB chunks so the image stays sparse.
        let put = |f: &mut File, off: u64, b: &[u8]| -> Result<()> {
            for (i, c) in b.chunks(4096).enumerate() {
                if c.iter().any(|&x| x != 0) {
                    f.seek(SeekFrom::Start(off + (i * 4096) as u64))?;
                    f.write_all(c)?;
                }
            }
            Ok(())
        };
        put(&mut f, disk.find("esp")?.offset(), &esp_bytes)?;
        let ra = disk.find("root-a")?;
        f.seek(SeekFrom::Start(ra.offset()))?;
        std::io::copy(&mut File::open(&erofs_path)?, &mut f)?;
        let va = disk.find("verity-a")?;
        put(&mut f, va.offset(), &tree.hash_area)?;
        put(
            &mut f,
            va.offset() + va.size() - MANIFEST_REGION_SIZE,
            &envelope,
        )?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, &img_path)?;
    let image_sha = hex::encode(sha256_file(&img_path)?);

    steps.step("block map (gwos.img.bmap)");
    let bmap = crate::bmap::write_for(&img_path)?;

    steps.step("update bundle");
    let layout = gwos_signing::bundle::layout_id(esp_size, root_part, verity_part);
    let bundle_path = out.join(format!("gwos-{}.update", im.version_id));
    let bundle = crate::bundle::write(
        &bundle_path,
        &manifest,
        &layout,
        [
            &erofs_path,
            &slot_dir.join("verity.img"),
            &uki_path,
            &uki_b_path,
        ],
        &keys.signer,
    )?;

    steps.step("qcow2");
    let qcow = out.join("gwos.qcow2");
    if a.qcow2 {
        let _ = std::fs::remove_file(&qcow);
        tools::run_s(
            "qemu-img",
            &[
                "convert",
                "-f",
                "raw",
                "-O",
                "qcow2",
                &img_path.display().to_string(),
                &qcow.display().to_string(),
            ],
        )?;
    }

    steps.step("build report and SBOM");
    let workspace = a.workspace.clone().unwrap_or_else(|| cfg.base_dir.clone());
    let (crates, sbom_note) = match report::crates_of(&workspace, "gwos-init") {
        Ok(c) => (c, None),
        Err(e) => (vec![], Some(format!("crate list unavailable: {e:#}"))),
    };
    let debs: Vec<(String, String)> = report::DEBIAN_PACKAGES
        .iter()
        .map(|p| {
            (
                p.to_string(),
                report::dpkg_version(p).unwrap_or_else(|| "NOASSERTION".into()),
            )
        })
        .collect();
    let parts: Vec<_> = disk.partitions.iter().map(|p| json!({"name": p.name, "type": p.type_guid.to_string(), "guid": p.guid.to_string(), "offset": p.offset(), "size": p.size()})).collect();
    let rep = json!({
        "build_id": build_id,
        "version_id": im.version_id,
        "version": im.version,
        "security_floor": im.security_floor,
        "source_date_epoch": epoch,
        "image": {"path": "gwos.img", "size": disk.size(), "sha256": image_sha, "disk_guid": disk.guid.to_string()},
        "partitions": parts,
        "root": {"fs": "erofs", "size": data_size, "compression": im.erofs_compression, "uuid": fs_uuid.to_string()},
        "verity": {"root_hash": root_hash, "salt": hex::encode(salt), "hash_size": tree.hash_area.len(), "data_blocks": data_blocks, "uuid": verity_uuid.to_string()},
        "uki": {"name": uki_name, "sha256": uki_sha, "cmdline": cmdline},
        "bmap": {"path": "gwos.img.bmap", "mapped_bytes": bmap.mapped_bytes},
        "bundle": {"path": bundle_path.file_name().map(|n| n.to_string_lossy().into_owned()), "size": bundle.size, "sha256": bundle.sha256, "layout": layout},
        "inputs": report::inputs(&report::Inputs { kernel: &a.kernel, gwosd: &a.gwosd, rootfs_dir: &rootfs_dir, site_toml: &site_toml, release_keys: &key_files, efi_files: &[uki::STUB, SYSTEMD_BOOT] })?,
        "keys": {"signer": keys.signer.public().id_hex(), "release_keys": key_files.iter().map(|k| &k.0).collect::<Vec<_>>(), "development_keys": keys.dev},
        "debian_packages": debs.iter().map(|(n, v)| json!({"name": n, "version": v})).collect::<Vec<_>>(),
        "sbom_note": sbom_note,
        "sbom": report::sbom(&build_id, epoch, &crates, &debs),
    });
    std::fs::write(
        out.join("build-report.json"),
        serde_json::to_string_pretty(&rep)? + "\n",
    )?;
    std::fs::remove_dir_all(&work)?;
    steps.0.finish_and_clear();
    if sbom_note.is_some() {
        eprintln!("warning: SBOM has no crate list (cargo metadata failed; see build-report.json sbom_note)");
    }
    if !img_path.exists() {
        bail!("image was not written");
    }
    Ok(Built {
        image: img_path,
        image_sha256: image_sha,
        root_hash,
        build_id,
        bundle: bundle_path,
        development: keys.dev,
    })
}

/// `--version`, `--version-id`, `--security-floor` over `[image]`.
fn apply_overrides(cfg: &mut Config, a: &Args) -> Result<()> {
    if let Some(v) = a.version {
        cfg.image.version = v;
    }
    if let Some(v) = &a.version_id {
        cfg.image.version_id = v.clone();
    }
    if let Some(f) = a.security_floor {
        cfg.image.security_floor = f;
    }
    let im = &cfg.image;
    ensure!(
        !im.version_id.is_empty()
            && im
                .version_id
                .bytes()
                .all(|c| c.is_ascii_alphanumeric() || b"._~".contains(&c) || c == b'-'),
        "version_id {:?} must be non-empty [A-Za-z0-9._~-] (it names the UKI and the bundle file)",
        im.version_id
    );
    ensure!(
        im.security_floor <= im.version,
        "security_floor {} is above version {}: an image must accept itself",
        im.security_floor,
        im.version
    );
    Ok(())
}

fn kernel_cmdline(im: &crate::config::Image, slot: &str, root_hash: &str) -> String {
    let mut cmdline = format!(
        "{} gwos.slot={slot} gwos.roothash={root_hash} ro panic=-1 lockdown=integrity",
        im.console_args()
    );
    if !im.extra_cmdline.trim().is_empty() {
        cmdline.push(' ');
        cmdline.push_str(im.extra_cmdline.trim());
    }
    cmdline
}
