//! Control keys: ed25519 SSH public keys with scopes, from the site config
//! (baked into the image) and from state (`control_key_add`, kept in
//! `<state_dir>/keys.json`, written atomically and sealed with the key PID 1
//! gives control, [`gwos_core::sealed`]). A keys.json that is not sealed
//! under this machine's key is refused loudly; the site keys still work.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use gwos_core::sealed::SealKey;
use russh::keys::{Algorithm, HashAlg, PublicKey};
use serde::{Deserialize, Serialize};

use crate::scope::Scopes;

/// Parses one OpenSSH public key line; only `ssh-ed25519` is accepted.
pub fn parse_ed25519_line(line: &str) -> Result<PublicKey, String> {
    let line = line.trim();
    if line.contains('\n') {
        return Err("must be one line".into());
    }
    let key =
        PublicKey::from_openssh(line).map_err(|_| "not an OpenSSH public key line".to_string())?;
    if key.algorithm() != Algorithm::Ed25519 {
        return Err(format!(
            "only ssh-ed25519 keys are accepted, not {}",
            key.algorithm()
        ));
    }
    Ok(key)
}

/// `SHA256:<base64>` as `ssh-keygen -lf` prints it.
pub fn fingerprint(key: &PublicKey) -> String {
    key.fingerprint(HashAlg::Sha256).to_string()
}

/// The raw 32 public key bytes of an ed25519 key.
pub fn ed25519_bytes(key: &PublicKey) -> Option<[u8; 32]> {
    key.key_data().ed25519().map(|k| k.0)
}

/// A key entry as written in the site config or the state file.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct KeyConfig {
    /// `ssh-ed25519 AAAA... [comment]`
    pub key: String,
    pub scopes: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub comment: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub added_by: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub added_at: Option<String>,
}

/// A usable key.
#[derive(Debug, Clone)]
pub struct Key {
    pub fingerprint: String,
    pub comment: String,
    pub scopes: Scopes,
    pub ed25519: [u8; 32],
    /// `site` or `state`.
    pub source: &'static str,
    pub config: KeyConfig,
}

impl Key {
    pub fn from_config(c: &KeyConfig, source: &'static str) -> Result<Self, String> {
        let pk = parse_ed25519_line(&c.key)?;
        let scopes = Scopes::parse(&c.scopes)?;
        let comment = c.comment.clone().unwrap_or_else(|| pk.comment().to_owned());
        Ok(Self {
            fingerprint: fingerprint(&pk),
            comment,
            scopes,
            ed25519: ed25519_bytes(&pk).ok_or("not ed25519")?,
            source,
            config: c.clone(),
        })
    }

    pub fn describe(&self) -> serde_json::Value {
        serde_json::json!({
            "fingerprint": self.fingerprint,
            "comment": self.comment,
            "scopes": self.scopes.list(),
            "source": self.source,
            "added_by": self.config.added_by,
            "added_at": self.config.added_at,
        })
    }
}

/// What `keys.json` is sealed as.
const PURPOSE: &str = "control/keys.json";

/// control's sealing key from `<run_dir>/keys/control.key`; `None` (said
/// loudly) when PID 1 did not provide one: runtime keys then stay off.
pub fn state_key(run_dir: &Path) -> Option<SealKey> {
    let path = gwos_core::sealed::key_path(run_dir, "control");
    match SealKey::load(&path) {
        Ok(k) => Some(k),
        Err(e) => {
            eprintln!("control: no state sealing key ({e}): runtime keys and overrides are ignored and cannot be changed; site keys still work");
            None
        }
    }
}

/// Site keys plus state keys.
#[derive(Debug)]
pub struct KeyStore {
    site: Vec<Key>,
    state: Vec<Key>,
    path: PathBuf,
    seal: Option<SealKey>,
}

impl KeyStore {
    pub fn load(site: &[KeyConfig], state_dir: &Path, seal: Option<SealKey>) -> Result<Self> {
        let mut site_keys = Vec::new();
        for (i, c) in site.iter().enumerate() {
            site_keys.push(
                Key::from_config(c, "site")
                    .map_err(|e| anyhow::anyhow!("site config [control] keys[{i}]: {e}"))?,
            );
        }
        let path = state_dir.join("keys.json");
        let stored: Vec<KeyConfig> =
            gwos_core::sealed::read_json_or_refuse(seal.as_ref(), "control", PURPOSE, &path)
                .unwrap_or_default();
        let mut state = Vec::new();
        for (i, c) in stored.iter().enumerate() {
            state.push(
                Key::from_config(c, "state")
                    .map_err(|e| anyhow::anyhow!("{} entry {i}: {e}", path.display()))?,
            );
        }
        Ok(Self {
            site: site_keys,
            state,
            path,
            seal,
        })
    }

    pub fn all(&self) -> impl Iterator<Item = &Key> {
        self.site.iter().chain(self.state.iter())
    }

    pub fn find(&self, fingerprint: &str) -> Option<&Key> {
        self.all().find(|k| k.fingerprint == fingerprint)
    }

    fn save(&self, keys: &[Key]) -> Result<()> {
        let configs: Vec<&KeyConfig> = keys.iter().map(|k| &k.config).collect();
        let seal = self.seal.as_ref().context(
            "runtime key changes need the sealing key PID 1 provides (/run/gwos/keys/control.key), which is missing",
        )?;
        gwos_core::sealed::write_json(seal, PURPOSE, &self.path, &configs)
            .context("writing control keys")
    }

    /// Adds a state key; an already known fingerprint is an error.
    pub fn add(&mut self, c: KeyConfig) -> Result<Key, String> {
        let key = Key::from_config(&c, "state")?;
        if self.find(&key.fingerprint).is_some() {
            return Err(format!("key {} is already present", key.fingerprint));
        }
        let mut next = self.state.clone();
        next.push(key.clone());
        self.save(&next).map_err(|e| format!("{e:#}"))?;
        self.state = next;
        Ok(key)
    }

    /// Removes a state key; site keys cannot be removed at runtime.
    pub fn remove(&mut self, fingerprint: &str) -> Result<Key, String> {
        if self.site.iter().any(|k| k.fingerprint == fingerprint) {
            return Err(format!("key {fingerprint} comes from the site config (baked into the image); it cannot be removed at runtime"));
        }
        let Some(pos) = self.state.iter().position(|k| k.fingerprint == fingerprint) else {
            return Err(format!("no control key with fingerprint {fingerprint}"));
        };
        let mut next = self.state.clone();
        let removed = next.remove(pos);
        self.save(&next).map_err(|e| format!("{e:#}"))?;
        self.state = next;
        Ok(removed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(super) const K1: &str =
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIEnnDDsPI1HfLZ3ZXVRmxXbUxaRCjtMiQvOxJSuLS0FF test@one";

    const K2: &str =
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIDXorXEB1k70trzpQRK45ImgkdRoOy781cURVug71Qz0 attacker@disk";

    /// Review F10: an admin key appended to keys.json offline was trusted
    /// at the next start.
    #[test]
    fn f10_tampered_keys_file_refused() {
        let dir = tempfile::tempdir().unwrap();
        let site = KeyConfig {
            key: K1.into(),
            scopes: vec!["admin".into()],
            comment: None,
            added_by: None,
            added_at: None,
        };
        let path = dir.path().join("keys.json");
        let k2 = fingerprint(&parse_ed25519_line(K2).unwrap());
        // Plain JSON, as an offline editor (or an older image) writes it.
        let forged = serde_json::json!([{"key": K2, "scopes": ["admin"]}]);
        std::fs::write(&path, forged.to_string()).unwrap();
        let s = KeyStore::load(std::slice::from_ref(&site), dir.path(), Some(seal())).unwrap();
        assert!(s.find(&k2).is_none(), "forged admin key accepted");
        assert_eq!(s.all().count(), 1, "site key still there");
        assert!(dir.path().join("keys.json.refused").exists());
        // A sealed file whose payload was edited offline: refused too.
        let mut s = KeyStore::load(std::slice::from_ref(&site), dir.path(), Some(seal())).unwrap();
        let mut vpn = site.clone();
        vpn.key = K2.into();
        vpn.scopes = vec!["vpn:read".into()];
        s.add(vpn).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        let edited = text.replace("\"vpn:read\"", "\"admin\"");
        assert_ne!(text, edited);
        std::fs::write(&path, edited).unwrap();
        let s = KeyStore::load(&[site], dir.path(), Some(seal())).unwrap();
        assert!(s.find(&k2).is_none(), "edited key accepted");
        assert_eq!(s.all().count(), 1, "site key still there");
    }

    /// Another machine's key (a disk moved or its state copied) does not open the file.
    #[test]
    fn keys_sealed_elsewhere_refused() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = KeyStore::load(&[], dir.path(), Some(seal())).unwrap();
        s.add(vpn_read(K1)).unwrap();
        let other = SealKey::derive(&[2; 32], "control");
        let s = KeyStore::load(&[], dir.path(), Some(other)).unwrap();
        assert_eq!(s.all().count(), 0);
    }

    /// Without a sealing key runtime keys are neither read nor written.
    #[test]
    fn no_seal_key_no_runtime_keys() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = KeyStore::load(&[], dir.path(), Some(seal())).unwrap();
        s.add(vpn_read(K1)).unwrap();
        let mut s = KeyStore::load(&[], dir.path(), None).unwrap();
        assert_eq!(s.all().count(), 0);
        let e = s.add(vpn_read(K1)).unwrap_err();
        assert!(e.contains("control.key"), "{e}");
        assert!(dir.path().join("keys.json").exists(), "left alone");
    }

    fn seal() -> SealKey {
        SealKey::derive(&[1; 32], "control")
    }

    fn vpn_read(key: &str) -> KeyConfig {
        KeyConfig {
            key: key.into(),
            scopes: vec!["vpn:read".into()],
            comment: None,
            added_by: None,
            added_at: None,
        }
    }

    #[test]
    fn parse_and_persist() {
        assert_eq!(parse_ed25519_line(K1).unwrap().comment(), "test@one");
        let rsa = "ssh-rsa AAAAB3NzaC1yc2EAAAADAQABAAAAgQDLZ4c2I5ykQ7A6l1eYBo3n0gLKyA0C6XbwCK7Hl+z4qT8hvYVjJqvJfUvPp3v0DU3cQ7O6a0M+eB6nEbjM9lF1sBJa4wF6hJ3mN0u0rjfLcqYqjEv3x4ZY1S3Ih3h3b8h0p3qH5TQnwRz3mC7E8Wc5j1qA1O8P6y8E0o1r2LhJpQ== x";
        assert_eq!(
            parse_ed25519_line(rsa).unwrap_err(),
            "only ssh-ed25519 keys are accepted, not ssh-rsa"
        );
        let dir = tempfile::tempdir().unwrap();
        let mut s = KeyStore::load(&[], dir.path(), Some(seal())).unwrap();
        let c = KeyConfig {
            key: K1.into(),
            scopes: vec!["vpn:read".into()],
            comment: None,
            added_by: None,
            added_at: None,
        };
        let k = s.add(c.clone()).unwrap();
        assert_eq!(k.comment, "test@one");
        assert!(k.fingerprint.starts_with("SHA256:"));
        let e = s.add(c).unwrap_err();
        assert!(e.ends_with("is already present"), "{e}");
        let s2 = KeyStore::load(&[], dir.path(), Some(seal())).unwrap();
        assert!(s2.find(&k.fingerprint).is_some());
        let mut s3 = KeyStore::load(&[], dir.path(), Some(seal())).unwrap();
        s3.remove(&k.fingerprint).unwrap();
        assert!(KeyStore::load(&[], dir.path(), Some(seal()))
            .unwrap()
            .find(&k.fingerprint)
            .is_none());
    }
}
