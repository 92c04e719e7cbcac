//! The u16-BE length-prefixed datagram framing tls-front and `gwos connect`
//! read from the TLS stream: arbitrary bytes in arbitrary pieces must never
//! panic, and every frame decoded re-encodes to the bytes it came from.
#![no_main]
use gwos_tls_front::frame::{encode, Decoder};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if data.is_empty() {
        return;
    }
    let step = (data[0] as usize % 17) + 1;
    let body = &data[1..];
    let mut d = Decoder::default();
    let mut consumed = Vec::new();
    'outer: for chunk in body.chunks(step) {
        // at most one partial frame is pending while frames are drained
        d.push(chunk).expect("a drained decoder has room for 17 bytes");
        loop {
            match d.next_frame() {
                Ok(Some(f)) => {
                    assert!(!f.is_empty());
                    encode(f, &mut consumed).unwrap();
                }
                Ok(None) => break,
                Err(_) => break 'outer,
            }
        }
    }
    assert!(body.starts_with(&consumed));
});
