//! Preparing slot B of a disk image from the host, as the updater would:
//! a variant of the suite's test image is built with the same release key,
//! its root and verity tree are written to `root-b`/`verity-b`, its manifest
//! is re-signed for slot `b` and written at the end of `verity-b`, and its
//! UKI (command line switched to `gwos.slot=b`) is copied to the ESP under a
//! boot-counted name (`gwos-<version_id>-b+N.efi`), so systemd-boot tries it
//! next and falls back on its own once the tries are used up.

use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, ensure, Context, Result};

use crate::{gpt, out_dir, test_image, workspace};

/// Builds a variant of `qemu-tests/test-image.toml` into `<out>/qemu-test-<name>`,
/// signed by the suite's release key; `edit` changes the config table.
pub fn build_variant(name: &str, edit: impl FnOnce(&mut toml::Table)) -> Result<PathBuf> {
    let base = test_image()?;
    let ws = workspace();
    let text = std::fs::read_to_string(ws.join("qemu-tests/test-image.toml"))?;
    let mut cfg: toml::Table = text.parse()?;
    let image = cfg
        .get_mut("image")
        .and_then(|v| v.as_table_mut())
        .context("[image] in test-image.toml")?;
    image.insert(
        "rootfs_dir".into(),
        toml::Value::String(ws.join("rootfs").display().to_string()),
    );
    edit(&mut cfg);
    let out = out_dir().join(format!("qemu-test-{name}"));
    let _ = std::fs::remove_dir_all(&out);
    std::fs::create_dir_all(out.join("keys"))?;
    for f in std::fs::read_dir(base.join("keys"))? {
        let f = f?;
        std::fs::copy(f.path(), out.join("keys").join(f.file_name()))?;
    }
    let cfg_path = out_dir().join(format!("qemu-test-{name}.toml"));
    std::fs::write(&cfg_path, toml::to_string(&cfg)?)?;
    let gwos = std::env::var_os("GWOS_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| ws.join("target/release/gwos"));
    let gwosd = std::env::var_os("GWOSD")
        .map(PathBuf::from)
        .unwrap_or_else(|| ws.join("target/x86_64-unknown-linux-gnu/release/gwosd"));
    let o = Command::new(&gwos)
        .arg("build")
        .arg("--config")
        .arg(&cfg_path)
        .arg("--kernel")
        .arg(out_dir().join("bzImage"))
        .arg("--gwosd")
        .arg(&gwosd)
        .arg("--out")
        .arg(&out)
        .arg("--no-qcow2")
        // A test variant signed with the base image's keys, which are the
        // development keys (F15: a release then needs the explicit flag).
        .arg("--allow-dev-keys")
        .output()?;
    if !o.status.success() {
        bail!(
            "gwos build of variant {name} failed:\n{}",
            String::from_utf8_lossy(&o.stderr)
        );
    }
    Ok(out)
}

/// A variant that is release `version` named `version_id` (with `floor`, if
/// given, as its security floor), blessing after 5 s of healthy services;
/// `edit` changes more.
pub fn build_release(
    name: &str,
    version: i64,
    version_id: &str,
    floor: Option<i64>,
    edit: impl FnOnce(&mut toml::Table),
) -> Result<PathBuf> {
    build_variant(name, |c| {
        set(c, &["image"], "version", toml::Value::Integer(version));
        set(
            c,
            &["image"],
            "version_id",
            toml::Value::String(version_id.into()),
        );
        if let Some(f) = floor {
            set(c, &["image"], "security_floor", toml::Value::Integer(f));
        }
        set(
            c,
            &["site", "boot"],
            "bless_after_secs",
            toml::Value::Integer(5),
        );
        edit(c);
    })
}

/// Sets `[table] key = value` in a config table (creating the table).
pub fn set(cfg: &mut toml::Table, table: &[&str], key: &str, value: toml::Value) {
    let mut t = cfg;
    for name in table {
        t = t
            .entry(name.to_string())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()))
            .as_table_mut()
            .expect("a table");
    }
    t.insert(key.into(), value);
}

fn write_at(file: &Path, offset: u64, bytes: &[u8]) -> Result<()> {
    let mut f = std::fs::OpenOptions::new().write(true).open(file)?;
    f.seek(SeekFrom::Start(offset))?;
    f.write_all(bytes)?;
    f.sync_all()?;
    Ok(())
}

/// Reads `len` bytes at `offset` of `file`.
pub fn read_at(file: &Path, offset: u64, len: usize) -> Result<Vec<u8>> {
    let mut f = std::fs::File::open(file)?;
    f.seek(SeekFrom::Start(offset))?;
    let mut b = vec![0u8; len];
    f.read_exact(&mut b)?;
    Ok(b)
}

/// Writes the variant in `variant_out` into slot B of `disk` with the UKI
/// named `gwos-<version_id>-b+<tries>.efi`; returns that name.
pub fn install_slot_b(disk: &Path, variant_out: &Path, tries: u32) -> Result<String> {
    let m: gwos_signing::Manifest =
        serde_json::from_slice(&std::fs::read(variant_out.join("manifest.json"))?)
            .context("the variant's manifest.json")?;
    let key = gwos_signing::ReleaseKey::load(&variant_out.join("keys/dev-release.key"))?;
    let mut mb = m.clone();
    mb.slot = Some("b".into());
    let envelope = gwos_signing::seal(&mb, &key)?;

    let root = gpt::find(disk, "root-b")?;
    let verity = gpt::find(disk, "verity-b")?;
    let erofs = std::fs::read(variant_out.join("slot-a/root.erofs"))?;
    let tree = std::fs::read(variant_out.join("slot-a/verity.img"))?;
    ensure!(
        erofs.len() as u64 <= root.size,
        "root.erofs larger than root-b"
    );
    ensure!(
        tree.len() as u64 + gwos_signing::MANIFEST_REGION_SIZE <= verity.size,
        "verity tree larger than verity-b"
    );
    write_at(disk, root.offset, &erofs)?;
    write_at(disk, verity.offset, &tree)?;
    let mut region = vec![0u8; gwos_signing::MANIFEST_REGION_SIZE as usize];
    region[..envelope.len()].copy_from_slice(&envelope);
    write_at(
        disk,
        verity.offset + verity.size - gwos_signing::MANIFEST_REGION_SIZE,
        &region,
    )?;

    // The UKI's .cmdline names the slot; "gwos.slot=a" -> "gwos.slot=b" keeps its length.
    let mut uki = std::fs::read(variant_out.join("slot-a/uki.efi"))?;
    let pat = b"gwos.slot=a ";
    let hits: Vec<usize> = uki
        .windows(pat.len())
        .enumerate()
        .filter(|(_, w)| *w == pat)
        .map(|(i, _)| i)
        .collect();
    ensure!(
        hits.len() == 1,
        "expected one \"gwos.slot=a \" in the UKI, found {}",
        hits.len()
    );
    uki[hits[0] + pat.len() - 2] = b'b';
    let name = format!("gwos-{}-b+{tries}.efi", m.version_id);
    let tmp = tempfile::tempdir()?;
    let src = tmp.path().join("uki.efi");
    std::fs::write(&src, &uki)?;
    let esp = gpt::find(disk, "esp")?;
    let o = Command::new("mcopy")
        .arg("-i")
        .arg(format!("{}@@{}", disk.display(), esp.offset))
        .arg(&src)
        .arg(format!("::/EFI/Linux/{name}"))
        .env("MTOOLS_SKIP_CHECK", "1")
        .output()
        .context("mcopy (Debian package mtools)")?;
    ensure!(
        o.status.success(),
        "mcopy: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    Ok(name)
}

/// The UKI file names in the ESP's EFI/Linux of `disk`.
pub fn esp_ukis(disk: &Path) -> Result<Vec<String>> {
    let esp = gpt::find(disk, "esp")?;
    let o = Command::new("mdir")
        .arg("-b")
        .arg("-i")
        .arg(format!("{}@@{}", disk.display(), esp.offset))
        .arg("::/EFI/Linux")
        .env("MTOOLS_SKIP_CHECK", "1")
        .output()?;
    ensure!(
        o.status.success(),
        "mdir: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    let mut v: Vec<String> = String::from_utf8_lossy(&o.stdout)
        .lines()
        .filter_map(|l| l.trim().rsplit('/').next().map(str::to_string))
        .filter(|n| n.ends_with(".efi"))
        .collect();
    v.sort();
    Ok(v)
}

/// The stored security floor of `disk` (two 512-byte records before 1 MiB,
/// see init/src/floor.rs): the floor of the valid copy with the highest
/// sequence number, 0 when both are empty.
pub fn stored_floor(disk: &Path) -> Result<u64> {
    use sha2::{Digest, Sha256};
    let mut best: Option<(u64, u64)> = None;
    for off in [(1u64 << 20) - 8192, (1 << 20) - 4096] {
        let b = read_at(disk, off, 512)?;
        if b.iter().all(|x| *x == 0) {
            continue;
        }
        ensure!(&b[..8] == b"GWOSFLR1", "floor record at {off}: no magic");
        ensure!(
            Sha256::digest(&b[..32])[..] == b[32..64],
            "floor record at {off}: hash mismatch"
        );
        let seq = u64::from_le_bytes(b[8..16].try_into()?);
        let floor = u64::from_le_bytes(b[16..24].try_into()?);
        if best.is_none_or(|(s, _)| seq > s) {
            best = Some((seq, floor));
        }
    }
    Ok(best.map(|(_, f)| f).unwrap_or(0))
}

/// A file from the ext4 state partition of `disk` (debugfs, e2fsprogs), or
/// None when it does not exist.
pub fn state_file(disk: &Path, path: &str) -> Result<Option<String>> {
    let st = gpt::find(disk, "state")?;
    let tmp = tempfile::tempdir()?;
    let img = tmp.path().join("state.img");
    let o = Command::new("dd")
        .arg(format!("if={}", disk.display()))
        .arg(format!("of={}", img.display()))
        .arg("bs=1M")
        .arg(format!("skip={}", st.offset >> 20))
        .arg(format!("count={}", st.size >> 20))
        .arg("conv=sparse")
        .arg("status=none")
        .output()?;
    ensure!(
        o.status.success(),
        "dd: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    let o = Command::new("debugfs")
        .arg("-R")
        .arg(format!("cat {path}"))
        .arg(&img)
        .output()
        .context("debugfs (Debian package e2fsprogs)")?;
    let err = String::from_utf8_lossy(&o.stderr);
    if err.contains("File not found") {
        return Ok(None);
    }
    ensure!(o.status.success(), "debugfs: {err}");
    Ok(Some(String::from_utf8_lossy(&o.stdout).into_owned()))
}
