//! Release keys on the host (private, file mode 0600) and their public halves
//! (in the image under `/etc/gwos/release-keys/`).
//!
//! File formats:
//! - private key: the 32-byte ed25519 seed as 64 hex digits and a newline, or
//!   a PKCS#8 PEM (`-----BEGIN PRIVATE KEY-----`, e.g. from
//!   `openssl genpkey -algorithm ed25519`). Refused if group/other may read it.
//! - public key: 64 hex digits, optionally followed by whitespace and a
//!   comment; or an SPKI PEM (`-----BEGIN PUBLIC KEY-----`).
//!
//! A key id is the first 8 bytes of sha256(public key), shown as 16 hex digits.

use std::fmt;
use std::path::Path;

use ed25519_dalek::pkcs8::{DecodePrivateKey, DecodePublicKey};
use ed25519_dalek::{Signer, SigningKey, VerifyingKey};
use sha2::{Digest, Sha256};

use crate::Error;

pub type KeyId = [u8; 8];

pub fn key_id(public: &[u8; 32]) -> KeyId {
    let d = Sha256::digest(public);
    let mut id = [0u8; 8];
    id.copy_from_slice(&d[..8]);
    id
}

/// A release public key.
#[derive(Clone, PartialEq, Eq)]
pub struct PublicKey(pub(crate) VerifyingKey);

impl PublicKey {
    pub fn from_bytes(b: &[u8; 32]) -> Result<Self, Error> {
        VerifyingKey::from_bytes(b)
            .map(PublicKey)
            .map_err(|_| Error::Key("not a valid ed25519 public key".into()))
    }

    pub fn parse(text: &str) -> Result<Self, Error> {
        let t = text.trim();
        if t.starts_with("-----BEGIN PUBLIC KEY-----") {
            return VerifyingKey::from_public_key_pem(t)
                .map(PublicKey)
                .map_err(|e| Error::Key(format!("public key PEM: {e}")));
        }
        let first = t.split_whitespace().next().unwrap_or("");
        let mut b = [0u8; 32];
        hex::decode_to_slice(first, &mut b)
            .map_err(|_| Error::Key("public key must be 64 hex digits (32 bytes)".into()))?;
        Self::from_bytes(&b)
    }

    pub fn load(path: &Path) -> Result<Self, Error> {
        let text = std::fs::read_to_string(path).map_err(|e| io(path, e))?;
        Self::parse(&text).map_err(|e| Error::Key(format!("{}: {e}", path.display())))
    }

    pub fn to_bytes(&self) -> [u8; 32] {
        self.0.to_bytes()
    }

    pub fn id(&self) -> KeyId {
        key_id(&self.to_bytes())
    }

    pub fn id_hex(&self) -> String {
        hex::encode(self.id())
    }

    /// The public key file text: hex and a newline.
    pub fn to_file_text(&self) -> String {
        format!("{}\n", hex::encode(self.to_bytes()))
    }

    pub(crate) fn verify(&self, msg: &[u8], sig: &[u8; 64]) -> bool {
        let sig = ed25519_dalek::Signature::from_bytes(sig);
        self.0.verify_strict(msg, &sig).is_ok()
    }
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PublicKey({})", self.id_hex())
    }
}

/// Loads every `*.pub` in `dir` (e.g. `/etc/gwos/release-keys`), sorted by
/// file name. An unreadable or malformed key file is an error, not skipped.
pub fn load_dir(dir: &Path) -> Result<Vec<PublicKey>, Error> {
    let rd = std::fs::read_dir(dir).map_err(|e| io(dir, e))?;
    let mut paths = Vec::new();
    for e in rd {
        let p = e.map_err(|e| io(dir, e))?.path();
        if p.extension().is_some_and(|x| x == "pub") {
            paths.push(p);
        }
    }
    paths.sort();
    if paths.is_empty() {
        return Err(Error::Key(format!(
            "no release keys (*.pub) in {}",
            dir.display()
        )));
    }
    paths.iter().map(|p| PublicKey::load(p)).collect()
}

/// A release private key (host only). Debug output never shows the secret.
pub struct ReleaseKey(SigningKey);

impl ReleaseKey {
    pub fn generate() -> Self {
        ReleaseKey(SigningKey::generate(&mut rand::rngs::OsRng))
    }

    pub fn from_seed(seed: &[u8; 32]) -> Self {
        ReleaseKey(SigningKey::from_bytes(seed))
    }

    pub fn parse(text: &str) -> Result<Self, Error> {
        let t = text.trim();
        if t.starts_with("-----BEGIN PRIVATE KEY-----") {
            return SigningKey::from_pkcs8_pem(t)
                .map(ReleaseKey)
                .map_err(|e| Error::Key(format!("private key PEM: {e}")));
        }
        let mut seed = [0u8; 32];
        hex::decode_to_slice(t, &mut seed)
            .map_err(|_| Error::Key("private key must be 64 hex digits or PKCS#8 PEM".into()))?;
        Ok(Self::from_seed(&seed))
    }

    /// Loads a private key; refuses a file that group or others can access.
    pub fn load(path: &Path) -> Result<Self, Error> {
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let meta = std::fs::metadata(path).map_err(|e| io(path, e))?;
            let mode = meta.permissions().mode() & 0o777;
            if mode & 0o077 != 0 {
                return Err(Error::Key(format!(
                    "{}: private key file mode is {mode:o}; it must be 0600 (chmod 600 it)",
                    path.display()
                )));
            }
        }
        let text = std::fs::read_to_string(path).map_err(|e| io(path, e))?;
        Self::parse(&text).map_err(|e| Error::Key(format!("{}: {e}", path.display())))
    }

    /// Writes the private key (mode 0600, created new: never overwrites) and
    /// `<path>.pub` next to it.
    pub fn save(&self, path: &Path) -> Result<(), Error> {
        use std::io::Write;
        let mut opts = std::fs::OpenOptions::new();
        opts.write(true).create_new(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            opts.mode(0o600);
        }
        let mut f = opts.open(path).map_err(|e| io(path, e))?;
        f.write_all(format!("{}\n", hex::encode(self.0.to_bytes())).as_bytes())
            .and_then(|_| f.sync_all())
            .map_err(|e| io(path, e))?;
        let pub_path = path.with_extension("pub");
        std::fs::write(&pub_path, self.public().to_file_text()).map_err(|e| io(&pub_path, e))
    }

    pub fn public(&self) -> PublicKey {
        PublicKey(self.0.verifying_key())
    }

    pub(crate) fn sign(&self, msg: &[u8]) -> [u8; 64] {
        self.0.sign(msg).to_bytes()
    }
}

impl fmt::Debug for ReleaseKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "ReleaseKey(id {}, secret hidden)",
            self.public().id_hex()
        )
    }
}

fn io(path: &Path, source: std::io::Error) -> Error {
    Error::Io {
        path: path.display().to_string(),
        source,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn save_load_round_trip_and_mode() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("release.key");
        let k = ReleaseKey::generate();
        k.save(&p).unwrap();
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            std::fs::metadata(&p).unwrap().permissions().mode() & 0o777,
            0o600
        );
        let k2 = ReleaseKey::load(&p).unwrap();
        assert_eq!(k.public(), k2.public());
        let pubk = PublicKey::load(&p.with_extension("pub")).unwrap();
        assert_eq!(pubk, k.public());
        // never overwrites
        match k.save(&p) {
            Err(Error::Io { source, .. }) => {
                assert_eq!(source.kind(), std::io::ErrorKind::AlreadyExists)
            }
            other => panic!("expected AlreadyExists, got {other:?}"),
        }
        // too-open mode refused
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644)).unwrap();
        let e = ReleaseKey::load(&p).unwrap_err().to_string();
        assert!(e.contains("0600"), "{e}");
    }

    #[test]
    fn load_dir_reads_all_pub_files() {
        let dir = tempfile::tempdir().unwrap();
        let e = load_dir(dir.path()).unwrap_err();
        assert!(
            matches!(&e, Error::Key(m) if m.starts_with("no release keys (*.pub) in")),
            "{e}"
        );
        let a = ReleaseKey::from_seed(&[1; 32]).public();
        let b = ReleaseKey::from_seed(&[2; 32]).public();
        std::fs::write(
            dir.path().join(format!("{}.pub", a.id_hex())),
            a.to_file_text(),
        )
        .unwrap();
        std::fs::write(
            dir.path().join(format!("{}.pub", b.id_hex())),
            b.to_file_text(),
        )
        .unwrap();
        std::fs::write(dir.path().join("README"), "not a key").unwrap();
        let got = load_dir(dir.path()).unwrap();
        assert_eq!(got.len(), 2);
        assert!(got.contains(&a) && got.contains(&b));
        std::fs::write(dir.path().join("zz.pub"), "garbage").unwrap();
        let e = load_dir(dir.path()).unwrap_err().to_string();
        assert!(
            e.contains("zz.pub") && e.contains("public key must be 64 hex digits"),
            "{e}"
        );
    }

    #[test]
    fn pem_keys() {
        // RFC 8410 test vector shape: PKCS#8 ed25519 private key.
        let pem = "-----BEGIN PRIVATE KEY-----\nMC4CAQAwBQYDK2VwBCIEINTuctv5E1hK1bbY8fdp+K06/nwoy/HU++CXqI9EdVhC\n-----END PRIVATE KEY-----\n";
        let k = ReleaseKey::parse(pem).unwrap();
        let pub_pem = "-----BEGIN PUBLIC KEY-----\nMCowBQYDK2VwAyEAGb9ECWmEzf6FQbrBZ9w7lshQhqowtrbLDFw4rXAxZuE=\n-----END PUBLIC KEY-----\n";
        assert_eq!(PublicKey::parse(pub_pem).unwrap(), k.public());
    }

    #[test]
    fn bad_key_text() {
        assert!(matches!(
            PublicKey::parse("zz"),
            Err(Error::Key(m)) if m == "public key must be 64 hex digits (32 bytes)"
        ));
        assert!(matches!(
            ReleaseKey::parse("00"),
            Err(Error::Key(m)) if m == "private key must be 64 hex digits or PKCS#8 PEM"
        ));
        let id = ReleaseKey::from_seed(&[7; 32]).public();
        assert_eq!(
            PublicKey::parse(&(id.to_file_text().trim().to_owned() + " comment")).unwrap(),
            id
        );
    }
}
