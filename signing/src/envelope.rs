//! The signed-manifest envelope (all integers little endian):
//!
//! | offset | size | field |
//! |---|---|---|
//! | 0 | 8 | magic `GWOSMAN1` |
//! | 8 | 4 | manifest length `n` (≤ [`MAX_MANIFEST_LEN`]) |
//! | 12 | 8 | key id (first 8 bytes of sha256 of the signer's public key) |
//! | 20 | 64 | ed25519 signature over `"gwos-manifest-v1\0" ‖ manifest` |
//! | 84 | n | canonical manifest JSON |
//!
//! Anything after the manifest must be zero bytes (the envelope sits in a
//! zero-padded 64 KiB region at the end of the verity partition), so the
//! whole region can be handed to [`SignedManifest::parse`] as it is.

use crate::keys::{KeyId, PublicKey, ReleaseKey};
use crate::{Error, Manifest};

pub const MAGIC: &[u8; 8] = b"GWOSMAN1";
pub const ENVELOPE_HEADER_LEN: usize = 8 + 4 + 8 + 64;
pub const MAX_MANIFEST_LEN: usize = 16 * 1024;
const DOMAIN: &[u8] = b"gwos-manifest-v1\0";

/// A parsed but not yet verified envelope.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignedManifest {
    pub key_id: KeyId,
    pub signature: [u8; 64],
    pub manifest_bytes: Vec<u8>,
}

fn signed_message(manifest: &[u8]) -> Vec<u8> {
    domain_message(DOMAIN, manifest)
}

/// `domain ‖ bytes`: what a signature of this crate covers, so a signature
/// made for one format (manifest, bundle header) never verifies as another.
pub(crate) fn domain_message(domain: &[u8], bytes: &[u8]) -> Vec<u8> {
    let mut m = Vec::with_capacity(domain.len() + bytes.len());
    m.extend_from_slice(domain);
    m.extend_from_slice(bytes);
    m
}

impl SignedManifest {
    pub fn parse(buf: &[u8]) -> Result<Self, Error> {
        if buf.len() < ENVELOPE_HEADER_LEN {
            return Err(Error::Truncated(buf.len(), ENVELOPE_HEADER_LEN));
        }
        if &buf[..8] != MAGIC {
            return Err(Error::BadMagic);
        }
        let n = u32::from_le_bytes([buf[8], buf[9], buf[10], buf[11]]) as usize;
        if n > MAX_MANIFEST_LEN {
            return Err(Error::Oversize(n, MAX_MANIFEST_LEN));
        }
        let end = ENVELOPE_HEADER_LEN + n;
        if buf.len() < end {
            return Err(Error::Truncated(buf.len(), end));
        }
        if buf[end..].iter().any(|&b| b != 0) {
            return Err(Error::TrailingGarbage);
        }
        let mut key_id = [0u8; 8];
        key_id.copy_from_slice(&buf[12..20]);
        let mut signature = [0u8; 64];
        signature.copy_from_slice(&buf[20..84]);
        Ok(SignedManifest {
            key_id,
            signature,
            manifest_bytes: buf[84..end].to_vec(),
        })
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(ENVELOPE_HEADER_LEN + self.manifest_bytes.len());
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&(self.manifest_bytes.len() as u32).to_le_bytes());
        out.extend_from_slice(&self.key_id);
        out.extend_from_slice(&self.signature);
        out.extend_from_slice(&self.manifest_bytes);
        out
    }

    /// Checks the signature with the key whose id matches, then parses the
    /// manifest. Nothing in the manifest is looked at before the signature
    /// verifies.
    pub fn verify(&self, keys: &[PublicKey]) -> Result<Manifest, Error> {
        let key = keys
            .iter()
            .find(|k| k.id() == self.key_id)
            .ok_or_else(|| Error::UnknownKey(hex::encode(self.key_id)))?;
        if !key.verify(&signed_message(&self.manifest_bytes), &self.signature) {
            return Err(Error::BadSignature(key.id_hex()));
        }
        Manifest::from_canonical_bytes(&self.manifest_bytes)
    }
}

/// Signs `manifest` and returns the envelope bytes.
pub fn seal(manifest: &Manifest, key: &ReleaseKey) -> Result<Vec<u8>, Error> {
    manifest.validate()?;
    let bytes = manifest.to_canonical_bytes();
    if bytes.len() > MAX_MANIFEST_LEN {
        return Err(Error::Oversize(bytes.len(), MAX_MANIFEST_LEN));
    }
    let signature = key.sign(&signed_message(&bytes));
    Ok(SignedManifest {
        key_id: key.public().id(),
        signature,
        manifest_bytes: bytes,
    }
    .to_bytes())
}

/// Signs arbitrary bytes as if they were a manifest (no validation), so the
/// fuzz target can reach the JSON parser behind a valid signature. Returns
/// None when the bytes exceed the size limit. Not for production use.
#[doc(hidden)]
pub fn sign_raw_for_fuzzing(manifest_bytes: &[u8], key: &ReleaseKey) -> Option<Vec<u8>> {
    if manifest_bytes.len() > MAX_MANIFEST_LEN {
        return None;
    }
    let signature = key.sign(&signed_message(manifest_bytes));
    Some(
        SignedManifest {
            key_id: key.public().id(),
            signature,
            manifest_bytes: manifest_bytes.to_vec(),
        }
        .to_bytes(),
    )
}

/// Parses and verifies an envelope (or a zero-padded region holding one).
pub fn open(buf: &[u8], keys: &[PublicKey]) -> Result<Manifest, Error> {
    SignedManifest::parse(buf)?.verify(keys)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manifest::sample;

    fn setup() -> (ReleaseKey, Vec<u8>) {
        let k = ReleaseKey::from_seed(&[1; 32]);
        let env = seal(&sample(), &k).unwrap();
        (k, env)
    }

    #[test]
    fn round_trip_and_padded_region() {
        let (k, env) = setup();
        assert_eq!(open(&env, &[k.public()]).unwrap(), sample());
        let mut region = env.clone();
        region.resize(64 * 1024, 0);
        let other = ReleaseKey::from_seed(&[9; 32]).public();
        assert_eq!(open(&region, &[other, k.public()]).unwrap(), sample());
    }

    #[test]
    fn wrong_key_is_unknown_id() {
        let (_, env) = setup();
        let other = ReleaseKey::from_seed(&[2; 32]).public();
        assert!(matches!(open(&env, &[other]), Err(Error::UnknownKey(_))));
        assert!(matches!(open(&env, &[]), Err(Error::UnknownKey(_))));
    }

    #[test]
    fn same_id_different_key_fails_signature() {
        let (k, env) = setup();
        // Re-label the envelope with another key's id and signature: must not verify.
        let other = ReleaseKey::from_seed(&[3; 32]);
        let mut sm = SignedManifest::parse(&env).unwrap();
        sm.key_id = other.public().id();
        assert!(matches!(
            sm.verify(&[other.public(), k.public()]),
            Err(Error::BadSignature(_))
        ));
    }

    #[test]
    fn flipped_manifest_byte_fails() {
        let (k, env) = setup();
        for i in [ENVELOPE_HEADER_LEN, ENVELOPE_HEADER_LEN + 40, env.len() - 1] {
            let mut e = env.clone();
            e[i] ^= 0x01;
            let r = open(&e, &[k.public()]);
            assert!(matches!(r, Err(Error::BadSignature(_))), "byte {i}: {r:?}");
        }
    }

    #[test]
    fn flipped_signature_byte_fails() {
        let (k, env) = setup();
        for i in [20, 50, 83] {
            let mut e = env.clone();
            e[i] ^= 0x80;
            assert!(
                matches!(open(&e, &[k.public()]), Err(Error::BadSignature(_))),
                "byte {i}"
            );
        }
        let mut e = env.clone();
        e[12] ^= 1; // key id
        assert!(matches!(open(&e, &[k.public()]), Err(Error::UnknownKey(_))));
    }

    #[test]
    fn truncated_magic_oversize_trailing() {
        let (k, env) = setup();
        for n in [0, 7, 83, 84, env.len() - 1] {
            assert!(
                matches!(open(&env[..n], &[k.public()]), Err(Error::Truncated(..))),
                "len {n}"
            );
        }
        let mut e = env.clone();
        e[0] = b'X';
        assert!(matches!(open(&e, &[k.public()]), Err(Error::BadMagic)));
        let mut e = env.clone();
        e[8..12].copy_from_slice(&(MAX_MANIFEST_LEN as u32 + 1).to_le_bytes());
        assert!(matches!(open(&e, &[k.public()]), Err(Error::Oversize(..))));
        let mut e = env.clone();
        e[8..12].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(matches!(open(&e, &[k.public()]), Err(Error::Oversize(..))));
        let mut e = env.clone();
        e.extend_from_slice(&[0, 0, 1]);
        assert!(matches!(
            open(&e, &[k.public()]),
            Err(Error::TrailingGarbage)
        ));
    }

    #[test]
    fn oversize_manifest_is_not_sealed() {
        let k = ReleaseKey::from_seed(&[1; 32]);
        let mut m = sample();
        m.version_id = "x".repeat(MAX_MANIFEST_LEN);
        assert!(matches!(seal(&m, &k), Err(Error::Oversize(..))));
    }

    #[test]
    fn signed_but_invalid_fields_refused() {
        let k = ReleaseKey::from_seed(&[1; 32]);
        let bytes = br#"{"format":1}"#.to_vec();
        let sig = k.sign(&signed_message(&bytes));
        let env = SignedManifest {
            key_id: k.public().id(),
            signature: sig,
            manifest_bytes: bytes,
        }
        .to_bytes();
        assert!(matches!(open(&env, &[k.public()]), Err(Error::Json(_))));
    }
}
