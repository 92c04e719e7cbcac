//! SPA client keys from a file, for `gwos knock --key-file` and
//! `gwos connect --knock-key-file`: the format `fwknop --key-gen` prints (or
//! fwknoprc style), mode 0600, never echoed in errors or Debug output, wiped
//! from memory on drop.

use std::path::Path;

use anyhow::{Context, Result};
use zeroize::Zeroizing;

/// SPA keys (Rijndael and HMAC-SHA-256), as the gateway's stanza has them.
#[derive(Clone)]
pub struct KnockKeys {
    key: Zeroizing<Vec<u8>>,
    hmac: Zeroizing<Vec<u8>>,
}

impl std::fmt::Debug for KnockKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("KnockKeys(<redacted>)")
    }
}

impl KnockKeys {
    /// The Rijndael (AES) key.
    pub fn key(&self) -> &[u8] {
        &self.key
    }

    /// The HMAC-SHA-256 key.
    pub fn hmac(&self) -> &[u8] {
        &self.hmac
    }

    pub fn new(key: Vec<u8>, hmac: Vec<u8>) -> Self {
        Self {
            key: Zeroizing::new(key),
            hmac: Zeroizing::new(hmac),
        }
    }

    /// Reads a key file: `fwknop --key-gen` output (`KEY_BASE64: <b64>`,
    /// `HMAC_KEY_BASE64: <b64>`), also with a space or `=` instead of the
    /// colon (fwknoprc style); `#` comments; optional `HMAC_DIGEST_TYPE`
    /// and `ENCRYPTION_MODE`, which must be `sha256` and `cbc` (what the
    /// encoder sends). Refuses files that group or others may read.
    pub fn load(path: &Path) -> Result<Self> {
        use std::os::unix::fs::PermissionsExt;
        let meta = std::fs::metadata(path)
            .with_context(|| format!("reading knock key file {}", path.display()))?;
        let mode = meta.permissions().mode();
        anyhow::ensure!(
            mode & 0o077 == 0,
            "knock key file {} is accessible by group or others (mode {:o}); chmod 600 it",
            path.display(),
            mode & 0o777
        );
        let text = Zeroizing::new(
            std::fs::read_to_string(path)
                .with_context(|| format!("reading knock key file {}", path.display()))?,
        );
        Self::parse(&text).with_context(|| format!("knock key file {}", path.display()))
    }

    /// The text form of [`KnockKeys::load`]. Errors name lines, never values.
    pub fn parse(text: &str) -> Result<Self> {
        let (mut key, mut hmac) = (None, None);
        for (i, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let cut = line
                .find(|c: char| c == ':' || c == '=' || c.is_whitespace())
                .unwrap_or(line.len());
            let (name, rest) = line.split_at(cut);
            let value = rest
                .trim_start_matches(|c: char| c == ':' || c == '=' || c.is_whitespace())
                .trim();
            let n = i + 1;
            let decode = |v: &str| {
                crate::crypto::b64d_strict(v)
                    .map(Zeroizing::new)
                    .ok_or_else(|| anyhow::anyhow!("line {n}: {name} is not base64"))
            };
            match name {
                "KEY_BASE64" => {
                    anyhow::ensure!(key.is_none(), "line {n}: KEY_BASE64 given twice");
                    key = Some(decode(value)?);
                }
                "HMAC_KEY_BASE64" => {
                    anyhow::ensure!(hmac.is_none(), "line {n}: HMAC_KEY_BASE64 given twice");
                    hmac = Some(decode(value)?);
                }
                "HMAC_DIGEST_TYPE" => {
                    anyhow::ensure!(
                        value.eq_ignore_ascii_case("sha256"),
                        "line {n}: only HMAC_DIGEST_TYPE sha256 is supported"
                    )
                }
                "ENCRYPTION_MODE" => {
                    anyhow::ensure!(
                        value.eq_ignore_ascii_case("cbc"),
                        "line {n}: only ENCRYPTION_MODE cbc is supported"
                    )
                }
                _ => anyhow::bail!("line {n}: unknown setting {name:?}"),
            }
        }
        let key = key.context("no KEY_BASE64 line")?;
        let hmac = hmac.context("no HMAC_KEY_BASE64 line (the gateway requires HMAC)")?;
        anyhow::ensure!(
            !key.is_empty() && key.len() <= 32,
            "KEY_BASE64 must decode to 1..32 bytes"
        );
        anyhow::ensure!(
            !hmac.is_empty() && hmac.len() <= 128,
            "HMAC_KEY_BASE64 must decode to 1..128 bytes"
        );
        anyhow::ensure!(
            *key != *hmac,
            "the HMAC key must differ from the encryption key"
        );
        Ok(Self { key, hmac })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const K: &str = "PLJiB9FhMc635yVDYsXCvEgWl7Q60iCQNQBvN1inQ04=";
    const H: &str =
        "YTMMjQ9STIx2+a0R1557B7q8N8jd3Zt1ryxkCDxe1g6mRlhD9YheNvRXhDIYy8tOmVId8lrSScZlygiX0bsRxA==";

    #[test]
    fn key_file_formats_and_refusals() {
        // `fwknop --key-gen` output
        let k = KnockKeys::parse(&format!("KEY_BASE64: {K}\nHMAC_KEY_BASE64: {H}\n")).unwrap();
        assert_eq!(*k.key, crate::crypto::b64d_strict(K).unwrap());
        assert_eq!(*k.hmac, crate::crypto::b64d_strict(H).unwrap());
        // fwknoprc style, comments, digest and mode lines
        let k2 = KnockKeys::parse(&format!(
            "# gw1\nKEY_BASE64      {K}\n\nHMAC_KEY_BASE64 {H}\nHMAC_DIGEST_TYPE sha256\nENCRYPTION_MODE CBC\n"
        ))
        .unwrap();
        assert_eq!(*k2.key, *k.key);
        assert_eq!(format!("{k:?}"), "KnockKeys(<redacted>)");
        for (text, what) in [
            (format!("KEY_BASE64: {K}\n"), "no HMAC_KEY_BASE64"),
            (format!("HMAC_KEY_BASE64: {H}\n"), "no KEY_BASE64"),
            (
                format!("KEY_BASE64: {K}\nHMAC_KEY_BASE64: {K}\n"),
                "must differ",
            ),
            (
                format!("KEY_BASE64: {K}\nKEY_BASE64: {K}\nHMAC_KEY_BASE64: {H}\n"),
                "twice",
            ),
            (
                format!("KEY_BASE64: {K}!\nHMAC_KEY_BASE64: {H}\n"),
                "not base64",
            ),
            (
                format!("KEY_BASE64: {K}\nHMAC_KEY_BASE64: {H}\nHMAC_DIGEST_TYPE sha512\n"),
                "sha256",
            ),
            (
                format!("KEY_BASE64: {K}\nHMAC_KEY_BASE64: {H}\nSPA_SERVER 1.2.3.4\n"),
                "unknown setting",
            ),
            (
                format!(
                    "KEY_BASE64: {}\nHMAC_KEY_BASE64: {H}\n",
                    crate::crypto::b64e_nopad(&[1u8; 33])
                ),
                "1..32",
            ),
        ] {
            let e = format!("{:#}", KnockKeys::parse(&text).unwrap_err());
            assert!(e.contains(what), "{what}: {e}");
            assert!(
                !e.contains(K) && !e.contains(H) && !e.contains(&K[..20]),
                "key material in the error: {e}"
            );
        }
    }

    #[test]
    fn key_file_must_be_private() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("knock.keys");
        std::fs::write(&p, format!("KEY_BASE64: {K}\nHMAC_KEY_BASE64: {H}\n")).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644)).unwrap();
        let e = format!("{:#}", KnockKeys::load(&p).unwrap_err());
        assert!(e.contains("chmod 600") && !e.contains(K), "{e}");
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
        KnockKeys::load(&p).unwrap();
    }
}
