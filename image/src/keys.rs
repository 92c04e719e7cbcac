//! Which keys a build signs with and builds in. With `[keys] release_private`
//! set, that key signs; otherwise the keys directory (`gwos build --keys
//! DIR`, default `<out>/keys/`) is used: its `release.key` if there is one
//! (a release key), else DEVELOPMENT keys, made there once if missing:
//! `dev-release.key` (+ `.pub`) and an OpenSSH ed25519 backend control key
//! `dev-control` (+ `.pub`, scope admin). A second build with the same
//! `--keys` therefore signs with the same key (an update for the first).
//! Private keys stay on the host: only public halves go into the image.
//!
//! Security review F15: a release-named image (a `version_id` without
//! "dev" in it) is not signed with development keys unless the build says
//! `--allow-dev-keys` ([`check_dev_keys`]); the manifest of a dev-key image
//! says `development: true`.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use gwos_signing::{PublicKey, ReleaseKey};

use crate::config::Config;
use crate::tools;

pub struct KeySet {
    pub signer: ReleaseKey,
    /// Every release public key built into the image (signer first).
    pub publics: Vec<PublicKey>,
    /// `ssh-ed25519 ...` line of the dev control key, when dev keys are in use.
    pub dev_control: Option<String>,
    pub dev: bool,
}

impl KeySet {
    /// (file name, contents) for /etc/gwos/release-keys/.
    pub fn release_key_files(&self) -> Vec<(String, String)> {
        let mut v: Vec<(String, String)> = self
            .publics
            .iter()
            .map(|k| (format!("{}.pub", k.id_hex()), k.to_file_text()))
            .collect();
        v.sort();
        v.dedup();
        v
    }
}

/// The release key a keys directory may hold (not a development key).
pub const RELEASE_KEY_FILE: &str = "release.key";

/// Whether a build with this config and keys directory signs with
/// development keys (decided before any key is generated).
pub fn uses_dev_keys(cfg: &Config, dir: &Path) -> bool {
    cfg.keys.release_private.is_empty() && !dir.join(RELEASE_KEY_FILE).exists()
}

/// F15: development keys only for a development-named version or with the
/// explicit `--allow-dev-keys`.
pub fn check_dev_keys(version_id: &str, dev: bool, allow: bool) -> Result<()> {
    if dev && !allow && !version_id.to_ascii_lowercase().contains("dev") {
        anyhow::bail!(
            "refusing to sign release {version_id} with DEVELOPMENT keys (no [keys] release_private and no {RELEASE_KEY_FILE} in the keys directory): \
             its image would trust the dev release key and a dev admin control key; \
             set [keys] release_private, put {RELEASE_KEY_FILE} in --keys DIR, or pass --allow-dev-keys for a test build"
        );
    }
    Ok(())
}

pub fn load(cfg: &Config, dir: &Path) -> Result<KeySet> {
    let mut extra = Vec::new();
    for p in &cfg.keys.release_public {
        let path = cfg.resolve(p);
        extra.push(
            PublicKey::load(&path)
                .with_context(|| format!("[keys] release_public {}", path.display()))?,
        );
    }
    let release_in_dir = dir.join(RELEASE_KEY_FILE);
    let (signer, dev_control, dev) = if !cfg.keys.release_private.is_empty() {
        let path = cfg.resolve(&cfg.keys.release_private);
        let k = ReleaseKey::load(&path).with_context(|| {
            format!(
                "[keys] release_private: cannot use release key {}",
                path.display()
            )
        })?;
        (k, None, false)
    } else if release_in_dir.exists() {
        let k = ReleaseKey::load(&release_in_dir)
            .with_context(|| format!("release key {}", release_in_dir.display()))?;
        (k, None, false)
    } else {
        let (k, c) = dev_keys(dir)?;
        (k, Some(c), true)
    };
    let mut publics = vec![signer.public()];
    for k in extra {
        if !publics.contains(&k) {
            publics.push(k);
        }
    }
    Ok(KeySet {
        signer,
        publics,
        dev_control,
        dev,
    })
}

fn dev_keys(dir: &Path) -> Result<(ReleaseKey, String)> {
    std::fs::create_dir_all(dir)?;
    let rel = dir.join("dev-release.key");
    let ctl: PathBuf = dir.join("dev-control");
    let mut made = false;
    if !rel.exists() {
        ReleaseKey::generate().save(&rel)?;
        made = true;
    }
    if !ctl.exists() {
        let p = ctl.display().to_string();
        tools::run_s(
            "ssh-keygen",
            &[
                "-q",
                "-t",
                "ed25519",
                "-N",
                "",
                "-C",
                "gwos-dev-control",
                "-f",
                &p,
            ],
        )
        .context("generating the dev control key")?;
        made = true;
    }
    eprintln!(
        "WARNING: using DEVELOPMENT keys from {} ({}). They sign this image and give admin control; never use them in production (set [keys] release_private).",
        dir.display(),
        if made { "just generated" } else { "existing" }
    );
    let k = ReleaseKey::load(&rel)?;
    let pubk =
        std::fs::read_to_string(ctl.with_extension("pub")).context("reading dev-control.pub")?;
    let line = pubk
        .split_whitespace()
        .take(2)
        .collect::<Vec<_>>()
        .join(" ");
    Ok((k, line))
}

/// QEMU user networking's host address as the guest sees it (`make run`).
pub const DEV_BACKEND: &str = "10.0.2.2/32";

/// The [site] table with the dev control key added to `[[control.keys]]`
/// (admin). When the site names no backend network, the dev image also
/// accepts the control channel from [`DEV_BACKEND`] (firewall and control),
/// so `make run` can be administered from the host; a site that sets
/// `backend` keeps exactly its own list.
pub fn site_with_dev_control(site: &toml::Table, key: Option<&str>) -> toml::Table {
    let mut site = site.clone();
    let Some(key) = key else { return site };
    let mut entry = toml::Table::new();
    entry.insert("key".into(), format!("{key} gwos-dev-control").into());
    entry.insert("scopes".into(), toml::Value::Array(vec!["admin".into()]));
    entry.insert(
        "comment".into(),
        "DEVELOPMENT key (out/keys/dev-control)".into(),
    );
    push(&mut site, "control", "keys", toml::Value::Table(entry));
    for section in ["firewall", "control"] {
        let empty = site
            .get(section)
            .and_then(|t| t.get("backend"))
            .and_then(|b| b.as_array())
            .is_none_or(|a| a.is_empty());
        if empty {
            push(&mut site, section, "backend", DEV_BACKEND.into());
        }
    }
    site
}

fn push(site: &mut toml::Table, section: &str, key: &str, v: toml::Value) {
    let t = site
        .entry(section)
        .or_insert_with(|| toml::Value::Table(Default::default()));
    if let toml::Value::Table(t) = t {
        if let toml::Value::Array(a) = t.entry(key).or_insert_with(|| toml::Value::Array(vec![])) {
            a.push(v);
        }
    }
}

#[cfg(test)]
mod dev_site_tests {
    use super::*;

    #[test]
    fn dev_key_lands_in_control_keys_and_backend_only_when_unset() {
        let s = site_with_dev_control(&toml::Table::new(), Some("ssh-ed25519 AAAA"));
        let c = s["control"].as_table().unwrap();
        assert_eq!(
            c["keys"][0]["key"].as_str(),
            Some("ssh-ed25519 AAAA gwos-dev-control")
        );
        assert_eq!(c["keys"][0]["scopes"][0].as_str(), Some("admin"));
        assert_eq!(c["backend"][0].as_str(), Some(DEV_BACKEND));
        assert_eq!(s["firewall"]["backend"][0].as_str(), Some(DEV_BACKEND));
        let site: toml::Table = toml::from_str(
            "[firewall]\nbackend = [\"192.0.2.9/32\"]\n[control]\nbackend = [\"192.0.2.9/32\"]\n",
        )
        .unwrap();
        let s = site_with_dev_control(&site, Some("ssh-ed25519 AAAA"));
        assert_eq!(s["control"]["backend"].as_array().unwrap().len(), 1);
        assert_eq!(s["firewall"]["backend"].as_array().unwrap().len(), 1);
        assert_eq!(site_with_dev_control(&site, None), site);
    }
}
