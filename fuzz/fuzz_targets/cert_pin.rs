//! The DER walker `gwos connect` runs on the gateway's certificate (network
//! input, before the pin is compared): no panic, and an SPKI found lies
//! inside the input.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Some(spki) = gwos_tls_front::pin::spki_of_cert(data) {
        let start = spki.as_ptr() as usize - data.as_ptr() as usize;
        assert!(start + spki.len() <= data.len());
        assert_eq!(spki[0], 0x30);
    }
});
