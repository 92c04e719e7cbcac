//! Hostile bytes as a signed-manifest region (what stage 1 reads from the end
//! of a verity partition): parsing and verifying must never panic, and
//! anything that verifies must round-trip to identical canonical bytes.
//! The first input byte picks a mode so the fuzzer gets past the magic and the
//! signature quickly: 0 = raw region, 1 = `GWOSMAN1` + rest, 2 = rest as
//! manifest JSON inside a validly signed envelope.
#![no_main]

use gwos_signing::{Manifest, PublicKey, ReleaseKey, SignedManifest, MAGIC};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let key = ReleaseKey::from_seed(&[7; 32]);
    let keys: [PublicKey; 1] = [key.public()];
    let region: Vec<u8> = match mode % 3 {
        0 => rest.to_vec(),
        1 => [&MAGIC[..], rest].concat(),
        _ => match gwos_signing::envelope::sign_raw_for_fuzzing(rest, &key) {
            Some(env) => env,
            None => return,
        },
    };
    if let Ok(sm) = SignedManifest::parse(&region) {
        let again = sm.to_bytes();
        assert_eq!(&again[..], &region[..again.len()]);
        if let Ok(m) = sm.verify(&keys) {
            assert_eq!(m.to_canonical_bytes(), sm.manifest_bytes);
        }
    }
    if let Ok(m) = Manifest::from_canonical_bytes(rest) {
        assert_eq!(m.to_canonical_bytes(), rest);
    }
});
