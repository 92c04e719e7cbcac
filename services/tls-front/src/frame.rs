//! The stream framing between `gwos connect` and tls-front: each WireGuard
//! datagram is sent as a u16 big-endian length followed by that many bytes.
//! Zero-length frames are invalid (WireGuard never sends empty datagrams).

use thiserror::Error;

/// Largest datagram carried (the u16 limit).
pub const MAX_FRAME: usize = u16::MAX as usize;

#[derive(Debug, Error, PartialEq)]
pub enum FrameError {
    #[error("empty frame")]
    Empty,
    #[error("datagram of {0} bytes does not fit a frame")]
    TooLarge(usize),
}

/// Appends one framed datagram to `out`.
pub fn encode(datagram: &[u8], out: &mut Vec<u8>) -> Result<(), FrameError> {
    if datagram.is_empty() {
        return Err(FrameError::Empty);
    }
    if datagram.len() > MAX_FRAME {
        return Err(FrameError::TooLarge(datagram.len()));
    }
    out.extend_from_slice(&(datagram.len() as u16).to_be_bytes());
    out.extend_from_slice(datagram);
    Ok(())
}

/// Incremental decoder over a byte stream that arrives in arbitrary pieces.
#[derive(Debug, Default)]
pub struct Decoder {
    buf: Vec<u8>,
    pos: usize,
}

impl Decoder {
    pub fn push(&mut self, bytes: &[u8]) {
        if self.pos > 0 && self.pos == self.buf.len() {
            self.buf.clear();
            self.pos = 0;
        }
        self.buf.extend_from_slice(bytes);
    }

    /// The next complete datagram, `Ok(None)` if more bytes are needed.
    pub fn next_frame(&mut self) -> Result<Option<&[u8]>, FrameError> {
        let rest = &self.buf[self.pos..];
        if rest.len() < 2 {
            return Ok(None);
        }
        let len = u16::from_be_bytes([rest[0], rest[1]]) as usize;
        if len == 0 {
            return Err(FrameError::Empty);
        }
        if rest.len() < 2 + len {
            return Ok(None);
        }
        let start = self.pos + 2;
        self.pos = start + len;
        Ok(Some(&self.buf[start..start + len]))
    }

    /// Bytes buffered but not yet returned.
    pub fn pending(&self) -> usize {
        self.buf.len() - self.pos
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_in_pieces() {
        let mut wire = Vec::new();
        encode(b"hello", &mut wire).unwrap();
        encode(&[7u8; 1500], &mut wire).unwrap();
        let mut d = Decoder::default();
        let mut got = Vec::new();
        for chunk in wire.chunks(3) {
            d.push(chunk);
            while let Some(f) = d.next_frame().unwrap() {
                got.push(f.to_vec());
            }
        }
        assert_eq!(got, vec![b"hello".to_vec(), vec![7u8; 1500]]);
        assert_eq!(d.pending(), 0);
        assert_eq!(encode(b"", &mut wire), Err(FrameError::Empty));
        assert!(encode(&vec![0u8; 70_000], &mut wire).is_err());
        let mut z = Decoder::default();
        z.push(&[0, 0, 1]);
        assert_eq!(z.next_frame(), Err(FrameError::Empty));
    }
}
