//! Hostile bytes as the start of an update bundle (what the update service
//! reads from the control channel): the header parser must never panic, and a
//! header that verifies must round-trip to identical canonical bytes. The
//! first input byte picks a mode so the fuzzer gets past the magic and the
//! signature quickly: 0 = raw stream, 1 = `GWOSUPD1` + rest, 2 = rest as
//! header JSON behind a valid signature.
#![no_main]

use gwos_signing::bundle::{self, Header, MAGIC};
use gwos_signing::{PublicKey, ReleaseKey};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let key = ReleaseKey::from_seed(&[7; 32]);
    let keys: [PublicKey; 1] = [key.public()];
    let stream: Vec<u8> = match mode % 3 {
        0 => rest.to_vec(),
        1 => [&MAGIC[..], rest].concat(),
        _ => match bundle::sign_raw_for_fuzzing(rest, &key) {
            Some(b) => b,
            None => return,
        },
    };
    let mut r = &stream[..];
    if let Ok(h) = bundle::read_header(&mut r, &keys) {
        let bytes = h.header.to_canonical_bytes();
        assert_eq!(&stream[bundle::PREFIX_LEN..bundle::PREFIX_LEN + bytes.len()], &bytes[..]);
    }
    if let Ok(h) = Header::from_canonical_bytes(rest) {
        assert_eq!(h.to_canonical_bytes(), rest);
    }
});
