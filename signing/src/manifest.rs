//! The slot manifest: what a release key vouches for about one slot (root
//! filesystem size, dm-verity parameters and root hash, UKI hash, version).
//!
//! Canonical bytes: compact JSON with the fields in declaration order (serde
//! emits struct fields in order; no maps, no floats), no trailing newline.
//! Parsing rejects unknown fields and any input whose re-serialization is not
//! byte-identical, so one manifest has exactly one signed byte form.

use serde::{Deserialize, Serialize};

use crate::Error;

pub const FORMAT: u32 = 1;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// Manifest format, currently 1.
    pub format: u32,
    /// Monotonic release number; anti-rollback compares it to `security_floor`.
    pub version: u64,
    /// Human version string (os-release VERSION_ID), e.g. "0.1.0".
    pub version_id: String,
    /// The lowest `version` this release accepts as an update afterwards.
    pub security_floor: u64,
    /// "a" or "b" when the manifest was written for a fixed slot.
    pub slot: Option<String>,
    /// Unique id of this build (hex), also in os-release BUILD_ID.
    pub build_id: String,
    /// dm-verity parameters (veritysetup format v1, hash offset 0).
    pub hash_algorithm: String,
    pub data_block_size: u32,
    pub hash_block_size: u32,
    pub data_blocks: u64,
    /// Bytes of root filesystem covered by verity (= data_blocks * data_block_size).
    pub data_size: u64,
    /// Bytes of the verity area (superblock + tree) at offset 0 of the verity partition.
    pub hash_size: u64,
    /// Hex.
    pub salt: String,
    /// Hex, 32 bytes.
    pub root_hash: String,
    /// UUID written into the verity superblock.
    pub verity_uuid: String,
    /// sha256 (hex) of the slot's UKI on the ESP.
    pub uki_sha256: String,
    /// Root filesystem type, "erofs".
    pub fs_type: String,
    /// True when the image was signed with DEVELOPMENT keys (`gwos build`
    /// without `[keys] release_private`): such an image also trusts a dev
    /// admin control key. Omitted from the JSON when false, so manifests
    /// from before this field keep their canonical bytes.
    #[serde(default, skip_serializing_if = "is_false")]
    pub development: bool,
}

fn is_false(b: &bool) -> bool {
    !*b
}

impl Manifest {
    pub fn to_canonical_bytes(&self) -> Vec<u8> {
        // Serializing a plain struct of strings/ints cannot fail.
        serde_json::to_vec(self).expect("manifest serializes")
    }

    pub fn from_canonical_bytes(b: &[u8]) -> Result<Self, Error> {
        let m: Manifest = serde_json::from_slice(b).map_err(|e| Error::Json(e.to_string()))?;
        if m.to_canonical_bytes() != b {
            return Err(Error::NotCanonical);
        }
        m.validate()?;
        Ok(m)
    }

    /// Field checks a verifier relies on (sizes consistent, hex well formed).
    pub fn validate(&self) -> Result<(), Error> {
        let f = |s: &str| Err(Error::Field(s.to_string()));
        if self.format != FORMAT {
            return f("format: unsupported manifest format");
        }
        if self.hash_algorithm != "sha256" {
            return f("hash_algorithm: only sha256 is supported");
        }
        if self.data_block_size != 4096 || self.hash_block_size != 4096 {
            return f("block sizes must be 4096");
        }
        if self.data_blocks == 0 || self.data_blocks.checked_mul(4096) != Some(self.data_size) {
            return f("data_size must equal data_blocks * 4096 and be non-zero");
        }
        if self.hash_size == 0 || self.hash_size & 4095 != 0 {
            return f("hash_size must be a non-zero multiple of 4096");
        }
        if self.security_floor > self.version {
            return f("security_floor is above version");
        }
        if let Some(s) = &self.slot {
            if s != "a" && s != "b" {
                return f("slot must be \"a\" or \"b\"");
            }
        }
        hex_len(&self.root_hash, 32, "root_hash")?;
        hex_len(&self.uki_sha256, 32, "uki_sha256")?;
        let salt = hex::decode(&self.salt).map_err(|_| Error::Field("salt: not hex".into()))?;
        if salt.len() > 256 {
            return f("salt: longer than 256 bytes");
        }
        if self.build_id.is_empty()
            || !self
                .build_id
                .bytes()
                .all(|c| c.is_ascii_alphanumeric() || c == b'-' || c == b'.')
        {
            return f("build_id: must be non-empty [A-Za-z0-9.-]");
        }
        Ok(())
    }

    pub fn root_hash_bytes(&self) -> [u8; 32] {
        let mut b = [0u8; 32];
        // validate() checked the length and digits.
        let _ = hex::decode_to_slice(&self.root_hash, &mut b);
        b
    }

    /// The device-mapper `verity` target line for this slot (what stage 1
    /// loads with DM_TABLE_LOAD): `<start> <length> verity <params>`, length
    /// in 512-byte sectors. The hash area starts with the superblock block,
    /// so the tree begins at hash block 1. Options such as
    /// `restart_on_corruption` are appended by the caller.
    pub fn dm_verity_table(&self, data_dev: &str, hash_dev: &str) -> (u64, String) {
        let salt = if self.salt.is_empty() {
            "-"
        } else {
            self.salt.as_str()
        };
        let params = format!(
            "1 {data_dev} {hash_dev} {} {} {} 1 {} {} {salt}",
            self.data_block_size,
            self.hash_block_size,
            self.data_blocks,
            self.hash_algorithm,
            self.root_hash
        );
        (self.data_size / 512, params)
    }

    pub fn salt_bytes(&self) -> Vec<u8> {
        hex::decode(&self.salt).unwrap_or_default()
    }
}

fn hex_len(s: &str, n: usize, what: &str) -> Result<(), Error> {
    if s.len() != 2 * n
        || !s
            .bytes()
            .all(|c| c.is_ascii_digit() || (b'a'..=b'f').contains(&c))
    {
        return Err(Error::Field(format!(
            "{what}: must be {n} bytes of lowercase hex"
        )));
    }
    Ok(())
}

#[cfg(test)]
pub(crate) fn sample() -> Manifest {
    Manifest {
        format: FORMAT,
        version: 3,
        version_id: "0.1.0".into(),
        security_floor: 1,
        slot: Some("a".into()),
        build_id: "0123456789abcdef".into(),
        hash_algorithm: "sha256".into(),
        data_block_size: 4096,
        hash_block_size: 4096,
        data_blocks: 10,
        data_size: 40960,
        hash_size: 8192,
        salt: "aa".repeat(32),
        root_hash: "bb".repeat(32),
        verity_uuid: "00000000-0000-0000-0000-000000000000".into(),
        uki_sha256: "cc".repeat(32),
        fs_type: "erofs".into(),
        development: false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn canonical_round_trip() {
        let m = sample();
        let b = m.to_canonical_bytes();
        assert_eq!(Manifest::from_canonical_bytes(&b).unwrap(), m);
        // whitespace changes the bytes → refused
        let pretty = serde_json::to_vec_pretty(&m).unwrap();
        assert!(matches!(
            Manifest::from_canonical_bytes(&pretty),
            Err(Error::NotCanonical)
        ));
        // unknown field → refused
        let mut v: serde_json::Value = serde_json::from_slice(&b).unwrap();
        v["extra"] = 1.into();
        assert!(matches!(
            Manifest::from_canonical_bytes(&serde_json::to_vec(&v).unwrap()),
            Err(Error::Json(m)) if m.contains("unknown field `extra`")
        ));
    }

    /// A manifest without `development` (every image before F15) keeps its
    /// exact signed bytes; a development manifest carries the flag.
    #[test]
    fn development_flag_is_additive() {
        let m = sample();
        let b = m.to_canonical_bytes();
        assert!(!String::from_utf8_lossy(&b).contains("development"));
        assert_eq!(Manifest::from_canonical_bytes(&b).unwrap(), m);
        let dev = Manifest {
            development: true,
            ..sample()
        };
        let b = dev.to_canonical_bytes();
        assert!(String::from_utf8_lossy(&b).ends_with(r#","development":true}"#));
        assert!(Manifest::from_canonical_bytes(&b).unwrap().development);
        // `"development":false` spelled out is not the canonical form.
        let spelled = String::from_utf8(m.to_canonical_bytes()).unwrap();
        let spelled = spelled.trim_end_matches('}').to_string() + r#","development":false}"#;
        assert!(matches!(
            Manifest::from_canonical_bytes(spelled.as_bytes()),
            Err(Error::NotCanonical)
        ));
    }

    #[test]
    fn dm_table() {
        let (sectors, p) = sample().dm_verity_table("/dev/vda2", "/dev/vda3");
        assert_eq!(sectors, 80);
        assert_eq!(
            p,
            format!(
                "1 /dev/vda2 /dev/vda3 4096 4096 10 1 sha256 {} {}",
                "bb".repeat(32),
                "aa".repeat(32)
            )
        );
    }

    #[test]
    fn field_validation() {
        let mut m = sample();
        m.data_size = 1;
        assert!(
            matches!(m.validate(), Err(Error::Field(f)) if f.starts_with("data_size must equal"))
        );
        let mut m = sample();
        m.root_hash = "BB".repeat(32);
        assert!(matches!(m.validate(), Err(Error::Field(f)) if f.starts_with("root_hash:")));
        let mut m = sample();
        m.security_floor = 4;
        assert!(
            matches!(m.validate(), Err(Error::Field(f)) if f == "security_floor is above version")
        );
    }
}
