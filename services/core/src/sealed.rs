//! Sealed state files: authorization state on `/var` (control's runtime keys
//! and runtime overrides) carries an HMAC-SHA256 under a per-service key
//! that an offline edit of the disk cannot recompute.
//!
//! Keys: PID 1 holds a 32-byte machine secret (in an EFI variable when the
//! firmware has them, else on the state partition, which it says loudly).
//! Before starting services it writes each service's key,
//! [`SealKey::derive`]`(secret, service)` = HMAC-SHA256(secret,
//! `"gwos-state-v1/" ‖ service`), to [`key_path`] (`/run/gwos/keys/<service>.key`,
//! tmpfs, mode 0400, owned by the service's uid). A service never sees the
//! machine secret or another service's key.
//!
//! File layout (bytes):
//!
//! ```text
//! "gwos-sealed-v1 " ‖ purpose ‖ " " ‖ hex(mac) (64 lowercase hex digits) ‖ "\n" ‖ payload
//! mac = HMAC-SHA256(key, "gwos-sealed-v1\0" ‖ purpose ‖ "\0" ‖ payload)
//! ```
//!
//! `purpose` names the file (`control/keys.json`), so one sealed file cannot
//! be swapped in for another of the same service. The MAC is checked in
//! constant time (`hmac`'s `verify_slice`) before the payload is parsed.
//! Writes are atomic ([`crate::state::write_atomic`]). What sealing does not
//! stop: deleting a file, or putting back an older sealed copy of it.

use std::path::{Path, PathBuf};

use hmac::{Hmac, Mac};
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;

const MAGIC: &str = "gwos-sealed-v1";
const DOMAIN: &[u8] = b"gwos-sealed-v1\0";
const KEY_DOMAIN: &str = "gwos-state-v1/";
const MAC_HEX: usize = 64;

/// A per-service sealing key (32 bytes); its `Debug` shows nothing of it.
#[derive(Clone)]
pub struct SealKey([u8; 32]);

impl std::fmt::Debug for SealKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SealKey(..)")
    }
}

/// Where PID 1 puts `service`'s key: `<run_dir>/keys/<service>.key`.
pub fn key_path(run_dir: &Path, service: &str) -> PathBuf {
    run_dir.join("keys").join(format!("{service}.key"))
}

/// A fresh 32-byte secret from the OS's random source.
pub fn new_secret() -> [u8; 32] {
    use rand::RngCore;
    let mut s = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut s);
    s
}

impl SealKey {
    /// `service`'s key from the machine secret.
    pub fn derive(machine_secret: &[u8; 32], service: &str) -> Self {
        let mut m = mac(machine_secret);
        m.update(KEY_DOMAIN.as_bytes());
        m.update(service.as_bytes());
        Self(m.finalize().into_bytes().into())
    }

    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        Self(bytes)
    }

    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// Reads a key file written by PID 1 (exactly 32 bytes).
    pub fn load(path: &Path) -> Result<Self, SealError> {
        let bytes = std::fs::read(path).map_err(|source| SealError::Io {
            path: path.into(),
            source,
        })?;
        let key: [u8; 32] = bytes.try_into().map_err(|b: Vec<u8>| SealError::KeyFile {
            path: path.into(),
            len: b.len(),
        })?;
        Ok(Self(key))
    }
}

fn mac(key: &[u8]) -> HmacSha256 {
    HmacSha256::new_from_slice(key).expect("HMAC takes a key of any length")
}

fn payload_mac(key: &SealKey, purpose: &str) -> HmacSha256 {
    let mut m = mac(&key.0);
    m.update(DOMAIN);
    m.update(purpose.as_bytes());
    m.update(b"\0");
    m
}

/// Why a sealed file was refused.
#[derive(Debug, thiserror::Error)]
pub enum SealError {
    #[error("reading {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("key file {path} holds {len} bytes, not 32")]
    KeyFile { path: PathBuf, len: usize },
    #[error(
        "{path} is not sealed (no {MAGIC} header): written by something other than this gateway"
    )]
    NotSealed { path: PathBuf },
    #[error("{path} is sealed for {found:?}, not {want:?}")]
    Purpose {
        path: PathBuf,
        found: String,
        want: String,
    },
    #[error("{path}: MAC does not match: the file was changed outside this gateway (offline edit?) or sealed under another machine's key")]
    BadMac { path: PathBuf },
    #[error("{path}: sealed contents are not valid: {source}")]
    Parse {
        path: PathBuf,
        source: serde_json::Error,
    },
}

/// Header plus payload, ready to write.
pub fn seal(key: &SealKey, purpose: &str, payload: &[u8]) -> Vec<u8> {
    assert!(
        !purpose.contains([' ', '\n']),
        "a seal purpose is one word: {purpose:?}"
    );
    let mut m = payload_mac(key, purpose);
    m.update(payload);
    let tag = hex::encode(m.finalize().into_bytes());
    let mut out = format!("{MAGIC} {purpose} {tag}\n").into_bytes();
    out.extend_from_slice(payload);
    out
}

/// Checks the header and MAC of `bytes` (read from `path`); the payload.
pub fn open<'a>(
    key: &SealKey,
    purpose: &str,
    path: &Path,
    bytes: &'a [u8],
) -> Result<&'a [u8], SealError> {
    let not_sealed = || SealError::NotSealed { path: path.into() };
    let nl = bytes
        .iter()
        .take(MAGIC.len() + purpose.len() + MAC_HEX + 64)
        .position(|b| *b == b'\n')
        .ok_or_else(not_sealed)?;
    let header = std::str::from_utf8(&bytes[..nl]).map_err(|_| not_sealed())?;
    let mut parts = header.split(' ');
    let (Some(MAGIC), Some(found), Some(tag), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(not_sealed());
    };
    if found != purpose {
        return Err(SealError::Purpose {
            path: path.into(),
            found: found.into(),
            want: purpose.into(),
        });
    }
    let bad = || SealError::BadMac { path: path.into() };
    if tag.len() != MAC_HEX {
        return Err(bad());
    }
    let tag = hex::decode(tag).map_err(|_| bad())?;
    let payload = &bytes[nl + 1..];
    let mut m = payload_mac(key, purpose);
    m.update(payload);
    m.verify_slice(&tag).map_err(|_| bad())?;
    Ok(payload)
}

/// Reads sealed JSON; a missing file is `None`, anything unsealed,
/// tampered with or unparsable an error.
pub fn read_json<T: serde::de::DeserializeOwned>(
    key: &SealKey,
    purpose: &str,
    path: &Path,
) -> Result<Option<T>, SealError> {
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => {
            return Err(SealError::Io {
                path: path.into(),
                source,
            })
        }
    };
    let payload = open(key, purpose, path, &bytes)?;
    serde_json::from_slice(payload)
        .map(Some)
        .map_err(|source| SealError::Parse {
            path: path.into(),
            source,
        })
}

/// Writes `value` as sealed pretty JSON, atomically (mode 0600).
pub fn write_json<T: serde::Serialize>(
    key: &SealKey,
    purpose: &str,
    path: &Path,
    value: &T,
) -> anyhow::Result<()> {
    let mut payload = serde_json::to_vec_pretty(value)?;
    payload.push(b'\n');
    crate::state::write_atomic(path, &seal(key, purpose, &payload))
}

/// Moves a refused file aside to `<name>.refused` (kept for inspection; the
/// next write starts a fresh sealed file); the new path.
pub fn quarantine(path: &Path) -> std::io::Result<PathBuf> {
    let mut to = path.as_os_str().to_owned();
    to.push(".refused");
    let to = PathBuf::from(to);
    std::fs::rename(path, &to)?;
    Ok(to)
}

/// A service loading its sealed state at start: the value, or `None` when
/// the file is missing or refused. A refused file (unsealed, tampered with,
/// sealed for something else, or no key to check it with) is reported loudly
/// (event `<service>.state_refused` and a stderr line, both on the console)
/// and, when its MAC or format is wrong, moved aside to `<name>.refused`.
pub fn read_json_or_refuse<T: serde::de::DeserializeOwned>(
    key: Option<&SealKey>,
    service: &str,
    purpose: &str,
    path: &Path,
) -> Option<T> {
    let Some(key) = key else {
        if path.exists() {
            refused(
                service,
                path,
                "no sealing key from PID 1 to check it with",
                None,
            );
        }
        return None;
    };
    match read_json(key, purpose, path) {
        Ok(v) => v,
        Err(e @ SealError::Io { .. }) => {
            refused(service, path, &e.to_string(), None);
            None
        }
        Err(e) => {
            let moved = quarantine(path).ok();
            refused(service, path, &e.to_string(), moved.as_deref());
            None
        }
    }
}

fn refused(service: &str, path: &Path, reason: &str, moved: Option<&Path>) {
    let mut ev = crate::Event::new(service, &format!("{service}.state_refused"))
        .field("path", path.display().to_string())
        .field("reason", reason);
    if let Some(m) = moved {
        ev = ev.field("moved_to", m.display().to_string());
    }
    crate::emit(&ev);
    eprintln!(
        "{service}: REFUSING state file {}: {reason}; it is ignored{}",
        path.display(),
        moved.map_or(String::new(), |m| format!(" (kept as {})", m.display()))
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(b: u8) -> SealKey {
        SealKey::from_bytes([b; 32])
    }

    #[test]
    fn round_trip() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("keys.json");
        write_json(&key(1), "control/keys.json", &p, &vec!["a", "b"]).unwrap();
        let back: Option<Vec<String>> = read_json(&key(1), "control/keys.json", &p).unwrap();
        assert_eq!(back, Some(vec!["a".to_string(), "b".to_string()]));
        let none: Option<Vec<String>> =
            read_json(&key(1), "control/keys.json", &d.path().join("nope")).unwrap();
        assert_eq!(none, None);
    }

    #[test]
    fn edited_payload_is_refused() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("f");
        write_json(&key(1), "x/f", &p, &vec![1u32]).unwrap();
        let text = std::fs::read_to_string(&p)
            .unwrap()
            .replace("  1\n", "  2\n");
        std::fs::write(&p, text).unwrap();
        let e = read_json::<Vec<u32>>(&key(1), "x/f", &p).unwrap_err();
        assert!(matches!(e, SealError::BadMac { .. }), "{e}");
    }

    #[test]
    fn other_key_purpose_or_plain_file_is_refused() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("f");
        write_json(&key(1), "x/f", &p, &vec![1u32]).unwrap();
        let e = read_json::<Vec<u32>>(&key(2), "x/f", &p).unwrap_err();
        assert!(matches!(e, SealError::BadMac { .. }), "{e}");
        let e = read_json::<Vec<u32>>(&key(1), "x/g", &p).unwrap_err();
        assert!(matches!(e, SealError::Purpose { .. }), "{e}");
        std::fs::write(&p, b"[1]\n").unwrap();
        let e = read_json::<Vec<u32>>(&key(1), "x/f", &p).unwrap_err();
        assert!(matches!(e, SealError::NotSealed { .. }), "{e}");
    }

    #[test]
    fn derived_keys_differ_per_service_and_secret() {
        let a = SealKey::derive(&[7; 32], "control");
        assert_eq!(
            a.as_bytes(),
            SealKey::derive(&[7; 32], "control").as_bytes()
        );
        assert_ne!(a.as_bytes(), SealKey::derive(&[7; 32], "vpn").as_bytes());
        assert_ne!(
            a.as_bytes(),
            SealKey::derive(&[8; 32], "control").as_bytes()
        );
        assert_eq!(format!("{a:?}"), "SealKey(..)");
    }

    /// The derivation is HMAC-SHA256(secret, "gwos-state-v1/" ‖ service),
    /// checked against openssl's HMAC.
    #[test]
    fn derivation_matches_openssl() {
        let out = std::process::Command::new("sh")
            .arg("-c")
            .arg("printf 'gwos-state-v1/control' | openssl dgst -sha256 -mac HMAC -macopt hexkey:0707070707070707070707070707070707070707070707070707070707070707 -r")
            .output()
            .expect("openssl is needed");
        let want = String::from_utf8_lossy(&out.stdout);
        let want = want.split_whitespace().next().unwrap_or_default();
        assert_eq!(
            hex::encode(SealKey::derive(&[7; 32], "control").as_bytes()),
            want
        );
    }
}
