//! Control keys: ed25519 SSH public keys with scopes, from the site config
//! (baked into the image) and from state (`control_key_add`, kept in
//! `<state_dir>/keys.json`, written atomically).

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
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

/// Site keys plus state keys.
#[derive(Debug)]
pub struct KeyStore {
    site: Vec<Key>,
    state: Vec<Key>,
    path: PathBuf,
}

impl KeyStore {
    pub fn load(site: &[KeyConfig], state_dir: &Path) -> Result<Self> {
        let mut site_keys = Vec::new();
        for (i, c) in site.iter().enumerate() {
            site_keys.push(
                Key::from_config(c, "site")
                    .map_err(|e| anyhow::anyhow!("site config [control] keys[{i}]: {e}"))?,
            );
        }
        let path = state_dir.join("keys.json");
        let stored: Vec<KeyConfig> = gwos_core::state::read_json(&path)?.unwrap_or_default();
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
        gwos_core::state::write_json(&self.path, &configs).context("writing control keys")
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

    pub const K1: &str =
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIEnnDDsPI1HfLZ3ZXVRmxXbUxaRCjtMiQvOxJSuLS0FF test@one";

    #[test]
    fn parse_and_persist() {
        assert_eq!(parse_ed25519_line(K1).unwrap().comment(), "test@one");
        let rsa = "ssh-rsa AAAAB3NzaC1yc2EAAAADAQABAAAAgQDLZ4c2I5ykQ7A6l1eYBo3n0gLKyA0C6XbwCK7Hl+z4qT8hvYVjJqvJfUvPp3v0DU3cQ7O6a0M+eB6nEbjM9lF1sBJa4wF6hJ3mN0u0rjfLcqYqjEv3x4ZY1S3Ih3h3b8h0p3qH5TQnwRz3mC7E8Wc5j1qA1O8P6y8E0o1r2LhJpQ== x";
        assert_eq!(
            parse_ed25519_line(rsa).unwrap_err(),
            "only ssh-ed25519 keys are accepted, not ssh-rsa"
        );
        let dir = tempfile::tempdir().unwrap();
        let mut s = KeyStore::load(&[], dir.path()).unwrap();
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
        let s2 = KeyStore::load(&[], dir.path()).unwrap();
        assert!(s2.find(&k.fingerprint).is_some());
        let mut s3 = KeyStore::load(&[], dir.path()).unwrap();
        s3.remove(&k.fingerprint).unwrap();
        assert!(KeyStore::load(&[], dir.path())
            .unwrap()
            .find(&k.fingerprint)
            .is_none());
    }
}
