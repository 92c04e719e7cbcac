//! Hostile datagrams for the SPA gate's parser. The first byte picks how
//! deep the input goes: 0 = raw UDP payload through the transport checks and
//! a full decode with fixed keys (HMAC stanza and no-HMAC stanza); 1 = the
//! rest as decrypted plaintext (field parser and digest); 2 = the rest
//! encrypted and HMAC-signed with the fuzz keys, then decoded end to end (so
//! padding, C-string and field handling are reached through the real path).
//! Nothing may panic; anything that decodes must carry a consistent digest.
#![no_main]

use gwos_spa::crypto::{self, b64e_nopad, HashType, Mode};
use gwos_spa::packet::{self, Keys};
use libfuzzer_sys::fuzz_target;

const KEY: [u8; 32] = [0x42; 32];
const HKEY: [u8; 64] = [0x24; 64];

fn keys(hmac: bool, mode: Mode) -> Keys {
    Keys {
        key: KEY.to_vec(),
        hmac_key: hmac.then(|| HKEY.to_vec()),
        hmac_type: HashType::Sha256,
        mode,
    }
}

fn seal(pt: &[u8], mode: Mode) -> String {
    let mut body = pt.to_vec();
    let pad = 16 - body.len() % 16;
    body.extend(std::iter::repeat_n(pad as u8, pad));
    let salt = [1u8; 8];
    let (k, iv) = crypto::evp_bytes_to_key(&crypto::effective_key(&KEY, mode), &salt);
    crypto::aes_apply(mode, &k, &iv, &mut body, true);
    let mut c = b"Salted__".to_vec();
    c.extend_from_slice(&salt);
    c.extend_from_slice(&body);
    let full = b64e_nopad(&c);
    let mut s = full[10..].to_string();
    s.push_str(&b64e_nopad(&HashType::Sha256.hmac(&HKEY, full.as_bytes())));
    s
}

fuzz_target!(|data: &[u8]| {
    let Some((&sel, rest)) = data.split_first() else {
        return;
    };
    match sel % 3 {
        0 => {
            if let Ok(spa) = packet::preprocess(rest, sel & 0x80 != 0) {
                for k in [
                    keys(true, Mode::Cbc),
                    keys(false, Mode::Cbc),
                    keys(false, Mode::Ctr),
                ] {
                    let _ = packet::decode_with(&spa, &k);
                }
            }
        }
        1 => {
            if let Ok(f) = packet::parse_plaintext(rest) {
                assert_eq!(
                    b64e_nopad(&f.digest_type.digest(f.encoded_data.as_bytes())),
                    f.digest
                );
            }
        }
        _ => {
            let mode = [Mode::Cbc, Mode::Cfb, Mode::Ecb][(sel as usize / 3) % 3];
            let s = seal(rest, mode);
            if let Ok(spa) = packet::preprocess(s.as_bytes(), false) {
                if let Ok(f) = packet::decode_with(&spa, &keys(true, mode)) {
                    assert!(f.random_value.len() == 16);
                }
            }
        }
    }
});
