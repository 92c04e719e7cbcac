//! Backend-side helpers behind `gwos ctl` (the image CLI calls these): run a
//! command through the system OpenSSH client, and sign approval tokens with
//! a second admin key.
//!
//! Host keys are always checked (F11). With `--known-hosts FILE` the
//! gateway's key must already be in `FILE` ([`HostKeys::Pinned`]). Without
//! it, `gwos ctl` keeps a per-user file, `~/.config/gwos/known_hosts`
//! ([`default_known_hosts`]): on first contact OpenSSH adds the key
//! (`StrictHostKeyChecking=accept-new`) and [`call`] reports it in
//! [`Reply::pinned`]; a key that differs later is refused before the request
//! is sent.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{bail, Context, Result};
use serde_json::{Map, Value};

/// How the gateway's host key is checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostKeys {
    /// The key must already be in this `known_hosts` file (`--known-hosts`).
    Pinned(PathBuf),
    /// Trust on first use: the key is added to this file on first contact;
    /// afterwards it must match.
    FirstUse(PathBuf),
}

impl HostKeys {
    fn file(&self) -> &Path {
        match self {
            HostKeys::Pinned(p) | HostKeys::FirstUse(p) => p,
        }
    }
}

/// `$XDG_CONFIG_HOME/gwos/known_hosts`, else `$HOME/.config/gwos/known_hosts`.
pub fn default_known_hosts() -> Result<PathBuf> {
    let base = match std::env::var_os("XDG_CONFIG_HOME").filter(|v| !v.is_empty()) {
        Some(x) => PathBuf::from(x),
        None => PathBuf::from(
            std::env::var_os("HOME")
                .filter(|v| !v.is_empty())
                .context("neither XDG_CONFIG_HOME nor HOME is set; pass --known-hosts")?,
        )
        .join(".config"),
    };
    Ok(base.join("gwos/known_hosts"))
}

/// Where and as whom to connect.
#[derive(Debug, Clone)]
pub struct Target {
    pub host: String,
    pub port: u16,
    /// ed25519 private key file (`ssh -i`).
    pub identity: PathBuf,
    pub host_keys: HostKeys,
}

/// The `ssh` arguments for one call.
pub fn ssh_args(t: &Target, command: &str) -> Vec<String> {
    let mut a: Vec<String> = vec![
        "-p".into(),
        t.port.to_string(),
        "-i".into(),
        t.identity.display().to_string(),
    ];
    let strict = match t.host_keys {
        HostKeys::Pinned(_) => "yes",
        HostKeys::FirstUse(_) => "accept-new",
    };
    for o in [
        "BatchMode=yes",
        "IdentitiesOnly=yes",
        "PasswordAuthentication=no",
        "ForwardAgent=no",
        "ForwardX11=no",
        "ClearAllForwardings=yes",
        "RequestTTY=no",
        "UpdateHostKeys=no",
        &format!("UserKnownHostsFile={}", t.host_keys.file().display()),
        &format!("StrictHostKeyChecking={strict}"),
    ] {
        a.push("-o".into());
        a.push(o.into());
    }
    a.push(format!("{}@{}", crate::server::USER, t.host));
    a.push(command.into());
    a
}

/// What one call returned.
#[derive(Debug, Clone)]
pub struct Reply {
    pub response: Value,
    /// ssh's exit status (0 ok, 1 refused by control).
    pub status: i32,
    /// `SHA256:` fingerprint of a host key pinned by this call (first contact).
    pub pinned: Option<String>,
}

/// Keys of the `known_hosts` lines (any host field, hashed or not).
fn known_keys(file: &Path) -> Vec<String> {
    std::fs::read_to_string(file)
        .unwrap_or_default()
        .lines()
        .filter(|l| !l.trim_start().starts_with('#'))
        .filter_map(|l| {
            let mut f = l.split_whitespace();
            let _hosts = f.next()?;
            let (algo, key) = (f.next()?, f.next()?);
            Some(format!("{algo} {key}"))
        })
        .collect()
}

/// Runs `command` with `request` on stdin.
pub fn call(t: &Target, command: &str, request: &Value) -> Result<Reply> {
    let file = t.host_keys.file();
    if let HostKeys::FirstUse(_) = t.host_keys {
        if let Some(dir) = file.parent() {
            std::fs::create_dir_all(dir)
                .with_context(|| format!("creating {} for the pinned host keys", dir.display()))?;
        }
    }
    let before = known_keys(file);
    let mut child = Command::new("ssh")
        .args(ssh_args(t, command))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("running ssh (OpenSSH client)")?;
    child
        .stdin
        .take()
        .context("ssh stdin")?
        .write_all(&serde_json::to_vec(request)?)?;
    let out = child.wait_with_output()?;
    let code = out.status.code().unwrap_or(255);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let pinned = known_keys(file)
        .into_iter()
        .find(|k| !before.contains(k))
        .and_then(|k| russh::keys::PublicKey::from_openssh(&k).ok())
        .map(|k| crate::keys::fingerprint(&k));
    match serde_json::from_slice(&out.stdout) {
        Ok(response) => Ok(Reply {
            response,
            status: code,
            pinned,
        }),
        Err(_) if stderr.contains("REMOTE HOST IDENTIFICATION HAS CHANGED") => bail!(
            "the host key of {}:{} does not match the key pinned in {}; refusing to send the request. \
             If the gateway was reinstalled, compare its new key with `host_key_fingerprint` from its console or \
             `control.started`, then remove the old line with `ssh-keygen -R '[{}]:{}' -f {}`",
            t.host,
            t.port,
            file.display(),
            t.host,
            t.port,
            file.display()
        ),
        Err(_) if stderr.contains("Host key verification failed") => bail!(
            "the host key of {}:{} is not in {}; refusing to connect (add it there, or leave out \
             --known-hosts to pin it on first contact)",
            t.host,
            t.port,
            file.display()
        ),
        Err(_) => bail!(
            "ssh exited {code} without a JSON answer: {}",
            stderr.trim()
        ),
    }
}

/// Reads an OpenSSH ed25519 private key file: (seed, `SHA256:` fingerprint).
pub fn read_ed25519_identity(path: &Path) -> Result<([u8; 32], String)> {
    let pem =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let key = russh::keys::PrivateKey::from_openssh(pem.as_bytes())
        .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    let kp = key
        .key_data()
        .ed25519()
        .with_context(|| format!("{} is not an ed25519 key", path.display()))?;
    Ok((
        kp.private.to_bytes(),
        crate::keys::fingerprint(key.public_key()),
    ))
}

/// Returns `request` with an `approval` by the key at `approver_identity`
/// for the key `requester` (its `SHA256:` fingerprint; only that key can
/// use it, once), valid for `valid_secs`. `request` must be an object with a
/// `trace_id`.
pub fn approve(
    approver_identity: &Path,
    requester: &str,
    command: &str,
    request: &Value,
    valid_secs: i64,
) -> Result<Value> {
    let mut obj: Map<String, Value> = request
        .as_object()
        .context("request must be a JSON object")?
        .clone();
    let trace = obj
        .get("trace_id")
        .and_then(Value::as_str)
        .context("request needs a trace_id to be approved")?
        .to_owned();
    obj.remove("approval");
    let mut params = obj.clone();
    params.remove("trace_id");
    let (seed, fp) = read_ed25519_identity(approver_identity)?;
    let expires = time::OffsetDateTime::now_utc().unix_timestamp()
        + valid_secs.clamp(1, crate::approval::MAX_VALIDITY_SECS);
    obj.insert(
        "approval".into(),
        crate::approval::sign(
            &seed,
            &fp,
            &crate::approval::Subject {
                command,
                requester,
                params: &params,
                trace_id: &trace,
            },
            &crate::approval::new_nonce(),
            expires,
        ),
    );
    Ok(Value::Object(obj))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ssh_args_pin_and_disable_forwarding() {
        let t = Target {
            host: "gw".into(),
            port: 2222,
            identity: "/k".into(),
            host_keys: HostKeys::Pinned("/kh".into()),
        };
        let a = ssh_args(&t, "health");
        assert_eq!(&a[..4], ["-p", "2222", "-i", "/k"]);
        assert!(
            a.contains(&"StrictHostKeyChecking=yes".to_string())
                && a.contains(&"ClearAllForwardings=yes".to_string())
        );
        assert_eq!(&a[a.len() - 2..], ["gwctl@gw", "health"]);
    }

    #[test]
    fn known_keys_reads_hashed_and_plain_lines() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("kh");
        std::fs::write(
            &f,
            "# comment\n[gw]:2222 ssh-ed25519 AAAAone\n|1|c2FsdA==|aGFzaA== ssh-ed25519 AAAAtwo\n",
        )
        .unwrap();
        assert_eq!(
            known_keys(&f),
            ["ssh-ed25519 AAAAone", "ssh-ed25519 AAAAtwo"]
        );
        assert_eq!(
            known_keys(&dir.path().join("missing")),
            Vec::<String>::new()
        );
    }
}
