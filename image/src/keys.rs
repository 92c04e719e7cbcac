//! Which keys a build signs with and builds in. With `[keys] release_private`
//! set, that key signs; otherwise DEVELOPMENT keys are made (once) in
//! `<out>/keys/`: `dev-release.key` (+ `.pub`) and an OpenSSH ed25519 backend
//! control key `dev-control` (+ `.pub`, scope admin). Private keys stay on the
//! host: only public halves go into the image.

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
        let mut v: Vec<(String, String)> = self.publics.iter().map(|k| (format!("{}.pub", k.id_hex()), k.to_file_text())).collect();
        v.sort();
        v.dedup();
        v
    }
}

pub fn load(cfg: &Config, out: &Path) -> Result<KeySet> {
    let mut extra = Vec::new();
    for p in &cfg.keys.release_public {
        let path = cfg.resolve(p);
        extra.push(PublicKey::load(&path).with_context(|| format!("[keys] release_public {}", path.display()))?);
    }
    let (signer, dev_control, dev) = if cfg.keys.release_private.is_empty() {
        let dir = out.join("keys");
        let (k, c) = dev_keys(&dir)?;
        (k, Some(c), true)
    } else {
        let path = cfg.resolve(&cfg.keys.release_private);
        let k = ReleaseKey::load(&path).with_context(|| format!("[keys] release_private: cannot use release key {}", path.display()))?;
        (k, None, false)
    };
    let mut publics = vec![signer.public()];
    for k in extra {
        if !publics.contains(&k) {
            publics.push(k);
        }
    }
    Ok(KeySet { signer, publics, dev_control, dev })
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
        tools::run_s("ssh-keygen", &["-q", "-t", "ed25519", "-N", "", "-C", "gwos-dev-control", "-f", &p])
            .context("generating the dev control key")?;
        made = true;
    }
    eprintln!(
        "WARNING: using DEVELOPMENT keys from {} ({}). They sign this image and give admin control; never use them in production (set [keys] release_private).",
        dir.display(),
        if made { "just generated" } else { "existing" }
    );
    let k = ReleaseKey::load(&rel)?;
    let pubk = std::fs::read_to_string(ctl.with_extension("pub")).context("reading dev-control.pub")?;
    let line = pubk.split_whitespace().take(2).collect::<Vec<_>>().join(" ");
    Ok((k, line))
}

/// The [site] table with the dev control key added to [control] authorized_keys.
pub fn site_with_dev_control(site: &toml::Table, key: Option<&str>) -> toml::Table {
    let mut site = site.clone();
    if let Some(key) = key {
        let control = site.entry("control").or_insert_with(|| toml::Value::Table(Default::default()));
        if let toml::Value::Table(t) = control {
            let list = t.entry("authorized_keys").or_insert_with(|| toml::Value::Array(vec![]));
            if let toml::Value::Array(a) = list {
                let mut e = toml::Table::new();
                e.insert("name".into(), "dev-control".into());
                e.insert("key".into(), key.into());
                e.insert("scopes".into(), toml::Value::Array(vec!["admin".into()]));
                a.push(toml::Value::Table(e));
            }
        }
    }
    site
}
