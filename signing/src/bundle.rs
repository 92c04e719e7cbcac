//! The update bundle: one streamable, signed file that carries a release to
//! the inactive slot of a running gateway (`gwos build` writes it as
//! `gwos-<version_id>.update`; the `update` service reads it from the
//! control channel). All integers little endian:
//!
//! | offset | size | field |
//! |---|---|---|
//! | 0 | 8 | magic `GWOSUPD1` |
//! | 8 | 4 | header length `n` (≤ [`MAX_HEADER_LEN`]) |
//! | 12 | 8 | key id (first 8 bytes of sha256 of the signer's public key) |
//! | 20 | 64 | ed25519 signature over `"gwos-bundle-v1\0" ‖ header` |
//! | 84 | n | header: canonical JSON [`Header`] |
//! | 84 + n | Σ size | the parts, back to back, in the order [`PART_ORDER`]: `root` (EROFS image), `verity` (hash area: superblock + tree), `uki-a`, `uki-b` |
//!
//! Nothing follows the last part. The header names every part's size and
//! sha256 and holds the two signed slot manifests (`GWOSMAN1` envelopes, hex)
//! the writer puts at the end of the verity partition: one says slot `a`,
//! the other slot `b`, and each names the UKI whose command line boots that
//! slot (`gwos.slot=a|b`), so one bundle fits whichever slot is inactive.
//!
//! Trust order, which the reader enforces: the 84-byte prefix is parsed, the
//! header read (at most [`MAX_HEADER_LEN`]), the key looked up by id and the
//! signature checked; only then is the JSON parsed, and both manifests are
//! opened with the same release keys and cross-checked against the header.
//! [`VerifiedHeader::check_target`] then refuses a bundle for another
//! partition layout, below the security floor, or with a part larger than
//! its partition. A part is only trusted once [`copy_part`] has hashed all
//! of it and the hash matched; the caller must not use a part's bytes before
//! that (the update service spools them on `/var` first).

use std::io::{Read, Write};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::envelope::domain_message;
use crate::keys::{KeyId, PublicKey, ReleaseKey};
use crate::{Error, Manifest, MANIFEST_REGION_SIZE};

pub const MAGIC: &[u8; 8] = b"GWOSUPD1";
pub const PREFIX_LEN: usize = 8 + 4 + 8 + 64;
pub const MAX_HEADER_LEN: usize = 64 * 1024;
pub const FORMAT: u32 = 1;
const DOMAIN: &[u8] = b"gwos-bundle-v1\0";

/// The stream order of the parts; a header must list exactly these.
pub const PART_ORDER: [PartName; 4] = [
    PartName::Root,
    PartName::Verity,
    PartName::UkiA,
    PartName::UkiB,
];

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum PartName {
    Root,
    Verity,
    UkiA,
    UkiB,
}

impl PartName {
    pub fn as_str(self) -> &'static str {
        match self {
            PartName::Root => "root",
            PartName::Verity => "verity",
            PartName::UkiA => "uki-a",
            PartName::UkiB => "uki-b",
        }
    }
}

impl std::fmt::Display for PartName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A/B slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Slot {
    A,
    B,
}

impl Slot {
    pub fn lower(self) -> &'static str {
        match self {
            Slot::A => "a",
            Slot::B => "b",
        }
    }
    pub fn upper(self) -> &'static str {
        match self {
            Slot::A => "A",
            Slot::B => "B",
        }
    }
    pub fn other(self) -> Slot {
        match self {
            Slot::A => Slot::B,
            Slot::B => Slot::A,
        }
    }
    /// "a"/"A" or "b"/"B".
    pub fn parse(s: &str) -> Option<Slot> {
        match s {
            "a" | "A" => Some(Slot::A),
            "b" | "B" => Some(Slot::B),
            _ => None,
        }
    }
    pub fn uki_part(self) -> PartName {
        match self {
            Slot::A => PartName::UkiA,
            Slot::B => PartName::UkiB,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PartInfo {
    pub name: PartName,
    pub size: u64,
    /// Hex, 32 bytes.
    pub sha256: String,
}

/// The signed header (canonical JSON: fields in declaration order, compact).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Header {
    /// Bundle format, [`FORMAT`].
    pub format: u32,
    /// Partition layout the bundle was built for ([`layout_id`]).
    pub layout: String,
    pub version: u64,
    pub version_id: String,
    pub security_floor: u64,
    pub root_hash: String,
    /// Built with development keys.
    pub development: bool,
    pub parts: Vec<PartInfo>,
    /// `GWOSMAN1` envelope (hex) for slot a.
    pub manifest_a: String,
    /// `GWOSMAN1` envelope (hex) for slot b.
    pub manifest_b: String,
}

/// The layout id of a GPT A/B disk: the byte sizes of the partitions an
/// update writes. Builder and device compute it the same way; the state
/// partition (which grows to fill the disk) is not part of it.
pub fn layout_id(esp: u64, root: u64, verity: u64) -> String {
    format!("gwos-ab1:esp={esp},root={root},verity={verity}")
}

/// Every reason a bundle is refused, one variant per cause.
#[derive(Debug, thiserror::Error)]
pub enum BundleError {
    #[error("not a gwos update bundle (bad magic; expected GWOSUPD1)")]
    BadMagic,
    #[error("bundle header length {0} exceeds the limit {1}")]
    HeaderTooLarge(usize, usize),
    #[error("truncated bundle: {what} ended after {got} of {want} bytes")]
    Truncated { what: String, got: u64, want: u64 },
    #[error("bundle signed by unknown key id {0}: not one of this gateway's release keys")]
    UnknownKey(String),
    #[error("bundle header signature does not verify with release key {0} (header tampered with)")]
    BadSignature(String),
    #[error("bundle header invalid: {0}")]
    Header(String),
    #[error("bundle's signed manifest for slot {slot} refused: {source}")]
    BadManifest { slot: &'static str, source: Error },
    #[error("bundle header and its slot manifests disagree: {0}")]
    Inconsistent(String),
    #[error("bundle is for partition layout {bundle:?} but this disk has {device:?}")]
    WrongLayout { bundle: String, device: String },
    #[error(
        "bundle version {version} is below the security floor {floor}; refusing the downgrade"
    )]
    BelowFloor { version: u64, floor: u64 },
    #[error("bundle part {part} is {size} bytes, larger than its partition ({limit} bytes)")]
    PartTooLarge {
        part: PartName,
        size: u64,
        limit: u64,
    },
    #[error("bundle part {part}: sha256 mismatch (got {got}, signed {want}); the part was corrupted or tampered with")]
    HashMismatch {
        part: PartName,
        got: String,
        want: String,
    },
    #[error("bytes after the last part of the bundle")]
    TrailingData,
    #[error("reading the bundle: {0}")]
    Read(std::io::Error),
    #[error("writing bundle part {part}: {source}")]
    Write {
        part: PartName,
        source: std::io::Error,
    },
}

/// The device a bundle is about to be written to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// [`layout_id`] of this disk.
    pub layout: String,
    /// The highest of the stored floor and the running release's floor.
    pub floor: u64,
    pub root_partition: u64,
    pub verity_partition: u64,
    pub esp_partition: u64,
}

/// A header whose signature verified and whose manifests agree with it.
#[derive(Debug, Clone)]
pub struct VerifiedHeader {
    pub header: Header,
    pub key_id: KeyId,
    /// sha256 of the prefix and header bytes (what the audit names).
    pub header_sha256: [u8; 32],
    /// Bytes of the signed header JSON (the parts start at PREFIX_LEN + this).
    pub header_len: usize,
    manifests: [Manifest; 2],
    envelopes: [Vec<u8>; 2],
}

impl VerifiedHeader {
    pub fn manifest(&self, slot: Slot) -> &Manifest {
        &self.manifests[slot as usize]
    }
    /// The signed envelope to write at the end of `slot`'s verity partition.
    pub fn envelope(&self, slot: Slot) -> &[u8] {
        &self.envelopes[slot as usize]
    }
    pub fn part(&self, name: PartName) -> &PartInfo {
        // validate() checked the parts are exactly PART_ORDER.
        &self.header.parts[PART_ORDER
            .iter()
            .position(|p| *p == name)
            .expect("every part name is in PART_ORDER")]
    }
    /// Sum of all part sizes: the payload after the header.
    pub fn payload_len(&self) -> u64 {
        self.header.parts.iter().map(|p| p.size).sum()
    }

    /// Layout, floor, then sizes: refused before anything is written.
    pub fn check_target(&self, t: &Target) -> Result<(), BundleError> {
        if self.header.layout != t.layout {
            return Err(BundleError::WrongLayout {
                bundle: self.header.layout.clone(),
                device: t.layout.clone(),
            });
        }
        if self.header.version < t.floor {
            return Err(BundleError::BelowFloor {
                version: self.header.version,
                floor: t.floor,
            });
        }
        let limits = [
            (PartName::Root, t.root_partition),
            (
                PartName::Verity,
                t.verity_partition.saturating_sub(MANIFEST_REGION_SIZE),
            ),
            (PartName::UkiA, t.esp_partition),
            (PartName::UkiB, t.esp_partition),
        ];
        for (name, limit) in limits {
            let size = self.part(name).size;
            if size > limit {
                return Err(BundleError::PartTooLarge {
                    part: name,
                    size,
                    limit,
                });
            }
        }
        Ok(())
    }
}

fn read_full(r: &mut impl Read, buf: &mut [u8], what: &str) -> Result<(), BundleError> {
    let mut got = 0;
    while got < buf.len() {
        match r.read(&mut buf[got..]) {
            Ok(0) => {
                return Err(BundleError::Truncated {
                    what: what.into(),
                    got: got as u64,
                    want: buf.len() as u64,
                })
            }
            Ok(n) => got += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(BundleError::Read(e)),
        }
    }
    Ok(())
}

/// Parses the fixed prefix: (header length, key id, signature).
pub fn parse_prefix(p: &[u8; PREFIX_LEN]) -> Result<(usize, KeyId, [u8; 64]), BundleError> {
    if &p[..8] != MAGIC {
        return Err(BundleError::BadMagic);
    }
    let n = u32::from_le_bytes([p[8], p[9], p[10], p[11]]) as usize;
    if n > MAX_HEADER_LEN {
        return Err(BundleError::HeaderTooLarge(n, MAX_HEADER_LEN));
    }
    let mut key_id = [0u8; 8];
    key_id.copy_from_slice(&p[12..20]);
    let mut sig = [0u8; 64];
    sig.copy_from_slice(&p[20..84]);
    Ok((n, key_id, sig))
}

/// Reads the prefix and header from `r`, checks the signature, then parses
/// and cross-checks the header. Leaves `r` at the first part byte.
pub fn read_header(r: &mut impl Read, keys: &[PublicKey]) -> Result<VerifiedHeader, BundleError> {
    let mut prefix = [0u8; PREFIX_LEN];
    read_full(r, &mut prefix, "header prefix")?;
    let (n, key_id, sig) = parse_prefix(&prefix)?;
    let mut bytes = vec![0u8; n];
    read_full(r, &mut bytes, "header")?;
    let key = keys
        .iter()
        .find(|k| k.id() == key_id)
        .ok_or_else(|| BundleError::UnknownKey(hex::encode(key_id)))?;
    if !key.verify(&domain_message(DOMAIN, &bytes), &sig) {
        return Err(BundleError::BadSignature(key.id_hex()));
    }
    let header_sha256 = Sha256::new()
        .chain_update(prefix)
        .chain_update(&bytes)
        .finalize()
        .into();
    let header = Header::from_canonical_bytes(&bytes)?;
    let (manifests, envelopes) = open_manifests(&header, keys)?;
    Ok(VerifiedHeader {
        header,
        key_id,
        header_sha256,
        header_len: n,
        manifests,
        envelopes,
    })
}

impl Header {
    pub fn to_canonical_bytes(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("bundle header serializes")
    }

    pub fn from_canonical_bytes(b: &[u8]) -> Result<Self, BundleError> {
        let h: Header =
            serde_json::from_slice(b).map_err(|e| BundleError::Header(e.to_string()))?;
        if h.to_canonical_bytes() != b {
            return Err(BundleError::Header("not in canonical form".into()));
        }
        h.validate()?;
        Ok(h)
    }

    pub fn validate(&self) -> Result<(), BundleError> {
        let bad = |s: String| Err(BundleError::Header(s));
        if self.format != FORMAT {
            return bad(format!(
                "format {} (this reader knows {FORMAT})",
                self.format
            ));
        }
        let names: Vec<PartName> = self.parts.iter().map(|p| p.name).collect();
        if names != PART_ORDER {
            return bad(format!(
                "parts must be {:?} in that order, got {names:?}",
                PART_ORDER.map(PartName::as_str)
            ));
        }
        for p in &self.parts {
            if p.sha256.len() != 64
                || !p
                    .sha256
                    .bytes()
                    .all(|c| c.is_ascii_digit() || (b'a'..=b'f').contains(&c))
            {
                return bad(format!("part {}: sha256 must be 64 lowercase hex", p.name));
            }
            if p.size == 0 {
                return bad(format!("part {} is empty", p.name));
            }
        }
        Ok(())
    }
}

fn open_manifests(
    h: &Header,
    keys: &[PublicKey],
) -> Result<([Manifest; 2], [Vec<u8>; 2]), BundleError> {
    let mut out = Vec::new();
    for (slot, text) in [(Slot::A, &h.manifest_a), (Slot::B, &h.manifest_b)] {
        let env = hex::decode(text).map_err(|_| BundleError::BadManifest {
            slot: slot.lower(),
            source: Error::Field("envelope is not hex".into()),
        })?;
        let m = crate::open(&env, keys).map_err(|source| BundleError::BadManifest {
            slot: slot.lower(),
            source,
        })?;
        check_manifest(h, slot, &m)?;
        out.push((m, env));
    }
    let (b, a) = (out.pop(), out.pop());
    let ((ma, ea), (mb, eb)) = (a.expect("two slots"), b.expect("two slots"));
    let same = Manifest {
        slot: None,
        uki_sha256: String::new(),
        ..ma.clone()
    } == Manifest {
        slot: None,
        uki_sha256: String::new(),
        ..mb.clone()
    };
    if !same {
        return Err(BundleError::Inconsistent(
            "the slot a and slot b manifests differ in more than slot and UKI".into(),
        ));
    }
    Ok(([ma, mb], [ea, eb]))
}

fn check_manifest(h: &Header, slot: Slot, m: &Manifest) -> Result<(), BundleError> {
    let part = |n: PartName| &h.parts[PART_ORDER.iter().position(|p| *p == n).expect("known")];
    let checks: [(&str, bool); 8] = [
        ("slot", m.slot.as_deref() == Some(slot.lower())),
        ("version", m.version == h.version),
        ("version_id", m.version_id == h.version_id),
        ("security_floor", m.security_floor == h.security_floor),
        ("root_hash", m.root_hash == h.root_hash),
        ("development", m.development == h.development),
        (
            "sizes",
            m.data_size == part(PartName::Root).size && m.hash_size == part(PartName::Verity).size,
        ),
        ("uki_sha256", m.uki_sha256 == part(slot.uki_part()).sha256),
    ];
    match checks.iter().find(|(_, ok)| !ok) {
        Some((field, _)) => Err(BundleError::Inconsistent(format!(
            "slot {} manifest's {field} does not match the bundle header",
            slot.lower()
        ))),
        None => Ok(()),
    }
}

/// Streams exactly `part.size` bytes from `r` into `out`, hashing them, and
/// fails unless the hash matches the signed one. `progress` gets the bytes
/// done so far after each chunk. What reached `out` is untrusted until this
/// returns Ok.
pub fn copy_part(
    r: &mut impl Read,
    part: &PartInfo,
    out: &mut impl Write,
    progress: &mut dyn FnMut(u64),
) -> Result<(), BundleError> {
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut done = 0u64;
    while done < part.size {
        let want = (part.size - done).min(buf.len() as u64) as usize;
        let n = match r.read(&mut buf[..want]) {
            Ok(0) => {
                return Err(BundleError::Truncated {
                    what: format!("part {}", part.name),
                    got: done,
                    want: part.size,
                })
            }
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(BundleError::Read(e)),
        };
        h.update(&buf[..n]);
        out.write_all(&buf[..n])
            .map_err(|source| BundleError::Write {
                part: part.name,
                source,
            })?;
        done += n as u64;
        progress(done);
    }
    let got = hex::encode(h.finalize());
    if got != part.sha256 {
        return Err(BundleError::HashMismatch {
            part: part.name,
            got,
            want: part.sha256.clone(),
        });
    }
    Ok(())
}

/// After the last part: the stream must end.
pub fn expect_end(r: &mut impl Read) -> Result<(), BundleError> {
    let mut b = [0u8; 1];
    loop {
        match r.read(&mut b) {
            Ok(0) => return Ok(()),
            Ok(_) => return Err(BundleError::TrailingData),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(BundleError::Read(e)),
        }
    }
}

/// Makes and signs the header for `base` (the release's manifest; its
/// `slot` and `uki_sha256` are replaced per slot) with `parts` = (size,
/// sha256) of root, verity, uki-a, uki-b. Returns prefix ‖ header; the parts
/// follow in that order.
pub fn sealed_header(
    base: &Manifest,
    layout: &str,
    parts: [(u64, [u8; 32]); 4],
    key: &ReleaseKey,
) -> Result<Vec<u8>, BundleError> {
    let infos: Vec<PartInfo> = PART_ORDER
        .iter()
        .zip(parts)
        .map(|(name, (size, sha))| PartInfo {
            name: *name,
            size,
            sha256: hex::encode(sha),
        })
        .collect();
    let envelope = |slot: Slot| -> Result<String, BundleError> {
        let m = Manifest {
            slot: Some(slot.lower().into()),
            uki_sha256: infos[2 + slot as usize].sha256.clone(),
            ..base.clone()
        };
        crate::seal(&m, key)
            .map(hex::encode)
            .map_err(|source| BundleError::BadManifest {
                slot: slot.lower(),
                source,
            })
    };
    let header = Header {
        format: FORMAT,
        layout: layout.into(),
        version: base.version,
        version_id: base.version_id.clone(),
        security_floor: base.security_floor,
        root_hash: base.root_hash.clone(),
        development: base.development,
        manifest_a: envelope(Slot::A)?,
        manifest_b: envelope(Slot::B)?,
        parts: infos,
    };
    seal_header(&header, key)
}

/// Signs `header` and returns prefix ‖ header bytes (the parts follow).
pub fn seal_header(header: &Header, key: &ReleaseKey) -> Result<Vec<u8>, BundleError> {
    header.validate()?;
    let bytes = header.to_canonical_bytes();
    if bytes.len() > MAX_HEADER_LEN {
        return Err(BundleError::HeaderTooLarge(bytes.len(), MAX_HEADER_LEN));
    }
    Ok(prefix_and(&bytes, key))
}

fn prefix_and(bytes: &[u8], key: &ReleaseKey) -> Vec<u8> {
    let sig = key.sign(&domain_message(DOMAIN, bytes));
    let mut out = Vec::with_capacity(PREFIX_LEN + bytes.len());
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&(bytes.len() as u32).to_le_bytes());
    out.extend_from_slice(&key.public().id());
    out.extend_from_slice(&sig);
    out.extend_from_slice(bytes);
    out
}

/// Signs arbitrary bytes as a bundle header (no validation) so the fuzz
/// target can reach the JSON parser behind a valid signature. Not for
/// production use.
#[doc(hidden)]
pub fn sign_raw_for_fuzzing(header_bytes: &[u8], key: &ReleaseKey) -> Option<Vec<u8>> {
    (header_bytes.len() <= MAX_HEADER_LEN).then(|| prefix_and(header_bytes, key))
}

#[cfg(test)]
#[path = "bundle_tests.rs"]
mod tests;
