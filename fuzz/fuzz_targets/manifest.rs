//! Hostile bytes as a signed-manifest region (what stage 1 reads from the end
//! of a verity partition): parsing and verifying must never panic, and
//! anything that verifies must round-trip to identical canonical bytes.
#![no_main]

use gwos_signing::{Manifest, PublicKey, ReleaseKey, SignedManifest};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let key = ReleaseKey::from_seed(&[7; 32]).public();
    let keys: [PublicKey; 1] = [key];
    if let Ok(sm) = SignedManifest::parse(data) {
        assert_eq!(&sm.to_bytes()[..], &data[..sm.to_bytes().len()]);
        if let Ok(m) = sm.verify(&keys) {
            assert_eq!(m.to_canonical_bytes(), sm.manifest_bytes);
        }
    }
    // The manifest JSON parser on its own (after a signature would pass).
    if let Ok(m) = Manifest::from_canonical_bytes(data) {
        assert_eq!(m.to_canonical_bytes(), data);
    }
});
