//! Backend-side helpers behind `gwos ctl` (the image CLI calls these): run a
//! command through the system OpenSSH client, and sign approval tokens with
//! a second admin key.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{bail, Context, Result};
use serde_json::{Map, Value};

/// Where and as whom to connect.
#[derive(Debug, Clone)]
pub struct Target {
    pub host: String,
    pub port: u16,
    /// ed25519 private key file (`ssh -i`).
    pub identity: PathBuf,
    /// `known_hosts` file to pin the gateway's host key; `None` = accept any
    /// (only for tests and first contact; compare the `health` fingerprint).
    pub known_hosts: Option<PathBuf>,
}

/// The `ssh` arguments for one call.
pub fn ssh_args(t: &Target, command: &str) -> Vec<String> {
    let mut a: Vec<String> = vec![
        "-p".into(),
        t.port.to_string(),
        "-i".into(),
        t.identity.display().to_string(),
    ];
    for o in [
        "BatchMode=yes",
        "IdentitiesOnly=yes",
        "PasswordAuthentication=no",
        "ForwardAgent=no",
        "ForwardX11=no",
        "ClearAllForwardings=yes",
        "RequestTTY=no",
    ] {
        a.push("-o".into());
        a.push(o.into());
    }
    match &t.known_hosts {
        Some(k) => {
            a.push("-o".into());
            a.push(format!("UserKnownHostsFile={}", k.display()));
            a.push("-o".into());
            a.push("StrictHostKeyChecking=yes".into());
        }
        None => {
            a.extend(
                [
                    "-o",
                    "UserKnownHostsFile=/dev/null",
                    "-o",
                    "StrictHostKeyChecking=no",
                ]
                .map(String::from),
            );
        }
    }
    a.push(format!("{}@{}", crate::server::USER, t.host));
    a.push(command.into());
    a
}

/// Runs `command` with `request` on stdin; returns the response and ssh's exit status.
pub fn call(t: &Target, command: &str, request: &Value) -> Result<(Value, i32)> {
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
    match serde_json::from_slice(&out.stdout) {
        Ok(v) => Ok((v, code)),
        Err(_) => bail!(
            "ssh exited {code} without a JSON answer: {}",
            String::from_utf8_lossy(&out.stderr).trim()
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
            known_hosts: Some("/kh".into()),
        };
        let a = ssh_args(&t, "health");
        assert_eq!(&a[..4], ["-p", "2222", "-i", "/k"]);
        assert!(
            a.contains(&"StrictHostKeyChecking=yes".to_string())
                && a.contains(&"ClearAllForwardings=yes".to_string())
        );
        assert_eq!(&a[a.len() - 2..], ["gwctl@gw", "health"]);
    }
}
