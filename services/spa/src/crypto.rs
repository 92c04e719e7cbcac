//! The primitives of the fwknop wire format (SPA-SPEC §3, §4): unpadded
//! base64, the HMAC and digest families, OpenSSL's `EVP_BytesToKey` (MD5, one
//! round) and AES-256 in the six modes fwknop supports, with PKCS#7 padding.

use aes::cipher::consts::U16;
use aes::cipher::{
    AsyncStreamCipher, BlockDecryptMut, BlockEncryptMut, KeyInit, KeyIvInit, StreamCipher,
};
use aes::Aes256;
use base64::Engine;
use hmac::{Hmac, Mac};
use md5::Md5;
use sha1::Sha1;
use sha2::{Digest, Sha256, Sha384, Sha512};
use sha3::{Sha3_256, Sha3_512};
use subtle::ConstantTimeEq;

/// Hash families used for the HMAC and the inner digest.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HashType {
    Md5,
    Sha1,
    Sha256,
    Sha384,
    Sha512,
    Sha3_256,
    Sha3_512,
}

impl HashType {
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s.to_ascii_lowercase().as_str() {
            "md5" => Self::Md5,
            "sha1" => Self::Sha1,
            "sha256" => Self::Sha256,
            "sha384" => Self::Sha384,
            "sha512" => Self::Sha512,
            "sha3_256" => Self::Sha3_256,
            "sha3_512" => Self::Sha3_512,
            _ => return None,
        })
    }
    pub fn name(self) -> &'static str {
        match self {
            Self::Md5 => "md5",
            Self::Sha1 => "sha1",
            Self::Sha256 => "sha256",
            Self::Sha384 => "sha384",
            Self::Sha512 => "sha512",
            Self::Sha3_256 => "sha3_256",
            Self::Sha3_512 => "sha3_512",
        }
    }
    /// Length of the unpadded base64 of the raw output.
    pub fn b64_len(self) -> usize {
        match self {
            Self::Md5 => 22,
            Self::Sha1 => 27,
            Self::Sha256 | Self::Sha3_256 => 43,
            Self::Sha384 => 64,
            Self::Sha512 | Self::Sha3_512 => 86,
        }
    }
    pub fn digest(self, data: &[u8]) -> Vec<u8> {
        match self {
            Self::Md5 => Md5::digest(data).to_vec(),
            Self::Sha1 => Sha1::digest(data).to_vec(),
            Self::Sha256 => Sha256::digest(data).to_vec(),
            Self::Sha384 => Sha384::digest(data).to_vec(),
            Self::Sha512 => Sha512::digest(data).to_vec(),
            Self::Sha3_256 => Sha3_256::digest(data).to_vec(),
            Self::Sha3_512 => Sha3_512::digest(data).to_vec(),
        }
    }
    pub fn hmac(self, key: &[u8], data: &[u8]) -> Vec<u8> {
        fn run<M: Mac + KeyInit>(key: &[u8], data: &[u8]) -> Vec<u8> {
            let mut m = <M as KeyInit>::new_from_slice(key).expect("HMAC takes any key length");
            m.update(data);
            m.finalize().into_bytes().to_vec()
        }
        match self {
            Self::Md5 => run::<Hmac<Md5>>(key, data),
            Self::Sha1 => run::<Hmac<Sha1>>(key, data),
            Self::Sha256 => run::<Hmac<Sha256>>(key, data),
            Self::Sha384 => run::<Hmac<Sha384>>(key, data),
            Self::Sha512 => run::<Hmac<Sha512>>(key, data),
            Self::Sha3_256 => run::<Hmac<Sha3_256>>(key, data),
            Self::Sha3_512 => run::<Hmac<Sha3_512>>(key, data),
        }
    }
}

/// Constant-time equality of two byte strings (length is not secret).
pub fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && bool::from(a.ct_eq(b))
}

pub fn b64e_nopad(raw: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD_NO_PAD.encode(raw)
}

fn b64_val(c: u8) -> Option<u8> {
    Some(match c {
        b'A'..=b'Z' => c - b'A',
        b'a'..=b'z' => c - b'a' + 26,
        b'0'..=b'9' => c - b'0' + 52,
        b'+' => 62,
        b'/' => 63,
        _ => return None,
    })
}

/// libfko-style lenient decode: stops at the first `=`, rejects other
/// non-alphabet bytes, tolerates missing padding, drops a dangling 6-bit char.
pub fn b64d_lenient(text: &[u8]) -> Option<Vec<u8>> {
    let end = text.iter().position(|&c| c == b'=').unwrap_or(text.len());
    let mut out = Vec::with_capacity(end * 3 / 4 + 1);
    let (mut acc, mut bits) = (0u32, 0u32);
    for &c in &text[..end] {
        acc = (acc << 6) | b64_val(c)? as u32;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    Some(out)
}

/// Strict standard base64 (padded) for keys given by operators.
pub fn b64d_strict(text: &str) -> Option<Vec<u8>> {
    base64::engine::general_purpose::STANDARD
        .decode(text.trim())
        .ok()
}

/// `EVP_BytesToKey(MD5, 1 round)`: 32-byte AES key and 16-byte IV.
pub fn evp_bytes_to_key(secret: &[u8], salt: &[u8]) -> ([u8; 32], [u8; 16]) {
    let mut out = Vec::with_capacity(48);
    let mut prev: Vec<u8> = Vec::new();
    while out.len() < 48 {
        let mut h = Md5::new();
        h.update(&prev);
        h.update(secret);
        h.update(salt);
        prev = h.finalize().to_vec();
        out.extend_from_slice(&prev);
    }
    let mut key = [0u8; 32];
    let mut iv = [0u8; 16];
    key.copy_from_slice(&out[..32]);
    iv.copy_from_slice(&out[32..48]);
    zeroize::Zeroize::zeroize(&mut out);
    (key, iv)
}

/// fwknop `ENCRYPTION_MODE` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    Cbc,
    Ctr,
    Cfb,
    Ofb,
    Ecb,
    Legacy,
}

impl Mode {
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s.to_ascii_uppercase().as_str() {
            "CBC" => Self::Cbc,
            "CTR" => Self::Ctr,
            "CFB" => Self::Cfb,
            "OFB" => Self::Ofb,
            "ECB" => Self::Ecb,
            "LEGACY" => Self::Legacy,
            _ => return None,
        })
    }
}

/// The key K actually fed to the KDF (legacy mode cuts/pads to 16 bytes).
pub fn effective_key(key: &[u8], mode: Mode) -> Vec<u8> {
    if mode == Mode::Legacy {
        let mut k = key[..key.len().min(16)].to_vec();
        k.resize(16, b'0');
        k
    } else {
        key.to_vec()
    }
}

/// AES-256 in `mode` over whole blocks (`data.len() % 16 == 0`; the caller
/// pads with PKCS#7 in every mode, as fwknop does). The modes are RustCrypto's
/// (`cbc`, `ctr`, `cfb-mode` with 128-bit feedback, `ofb`, `ecb`); CTR is
/// the 128-bit big-endian counter of OpenSSL, which fwknop uses.
pub fn aes_apply(mode: Mode, key: &[u8; 32], iv: &[u8; 16], data: &mut [u8], encrypt: bool) {
    debug_assert_eq!(data.len() % 16, 0, "aes_apply takes whole blocks");
    let (key, iv) = (key.into(), iv.into());
    match (mode, encrypt) {
        (Mode::Cbc | Mode::Legacy, true) => {
            encrypt_blocks(cbc::Encryptor::<Aes256>::new(key, iv), data)
        }
        (Mode::Cbc | Mode::Legacy, false) => {
            decrypt_blocks(cbc::Decryptor::<Aes256>::new(key, iv), data)
        }
        (Mode::Ecb, true) => encrypt_blocks(ecb::Encryptor::<Aes256>::new(key), data),
        (Mode::Ecb, false) => decrypt_blocks(ecb::Decryptor::<Aes256>::new(key), data),
        (Mode::Cfb, true) => cfb_mode::Encryptor::<Aes256>::new(key, iv).encrypt(data),
        (Mode::Cfb, false) => cfb_mode::Decryptor::<Aes256>::new(key, iv).decrypt(data),
        // keystream modes: the same operation both ways
        (Mode::Ctr, _) => ctr::Ctr128BE::<Aes256>::new(key, iv).apply_keystream(data),
        (Mode::Ofb, _) => ofb::Ofb::<Aes256>::new(key, iv).apply_keystream(data),
    }
}

fn encrypt_blocks(mut mode: impl BlockEncryptMut<BlockSize = U16>, data: &mut [u8]) {
    for block in data.chunks_exact_mut(16) {
        mode.encrypt_block_mut(aes::Block::from_mut_slice(block));
    }
}

fn decrypt_blocks(mut mode: impl BlockDecryptMut<BlockSize = U16>, data: &mut [u8]) {
    for block in data.chunks_exact_mut(16) {
        mode.decrypt_block_mut(aes::Block::from_mut_slice(block));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lenient_b64_matches_libfko_rules() {
        assert_eq!(b64d_lenient(b"cm9vdA").unwrap(), b"root");
        assert_eq!(b64d_lenient(b"cm9vdA==junk").unwrap(), b"root");
        assert!(b64d_lenient(b"cm9v!A").is_none());
        assert_eq!(b64e_nopad(b"root"), "cm9vdA");
    }

    #[test]
    fn modes_round_trip() {
        let key = [7u8; 32];
        let iv = [9u8; 16];
        for m in [Mode::Cbc, Mode::Ctr, Mode::Cfb, Mode::Ofb, Mode::Ecb] {
            let mut d = *b"0123456789abcdef0123456789ABCDEF";
            aes_apply(m, &key, &iv, &mut d, true);
            assert_ne!(&d, b"0123456789abcdef0123456789ABCDEF");
            aes_apply(m, &key, &iv, &mut d, false);
            assert_eq!(&d, b"0123456789abcdef0123456789ABCDEF", "{m:?}");
        }
    }
}
