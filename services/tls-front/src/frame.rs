//! The stream framing between `gwos connect` and tls-front: each WireGuard
//! datagram is sent as a u16 big-endian length followed by that many bytes.
//! Zero-length frames are invalid (WireGuard never sends empty datagrams).

use thiserror::Error;

/// Largest datagram carried (the u16 limit).
pub const MAX_FRAME: usize = u16::MAX as usize;

/// Most bytes a [`Decoder`] ever holds: one whole frame with its header.
/// Anything that has not formed a frame by then is a protocol error.
pub const MAX_PENDING: usize = 2 + MAX_FRAME;

#[derive(Debug, Error, PartialEq)]
pub enum FrameError {
    #[error("empty frame")]
    Empty,
    #[error("datagram of {0} bytes does not fit a frame")]
    TooLarge(usize),
    #[error(
        "{pending} bytes pending and {incoming} more exceed the {MAX_PENDING}-byte frame buffer; \
         closing the connection"
    )]
    Overflow { pending: usize, incoming: usize },
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
///
/// Its buffer is [`MAX_PENDING`] bytes, allocated on first use and never
/// grown: returned frames are dropped (the unconsumed tail moves to the
/// front) before more bytes come in, so a stream whose reads never end on
/// a frame boundary costs no more memory than one that does.
#[derive(Debug, Default)]
pub struct Decoder {
    /// Empty until first use, then exactly `MAX_PENDING` long.
    buf: Vec<u8>,
    /// Start of the bytes not yet returned.
    start: usize,
    /// End of the bytes received.
    end: usize,
}

impl Decoder {
    /// Takes bytes from somewhere other than a stream (tests, fuzzing).
    /// Fails, taking nothing, if they do not fit beside what is pending.
    pub fn push(&mut self, bytes: &[u8]) -> Result<(), FrameError> {
        let free = self.make_room();
        if bytes.len() > free.len() {
            return Err(FrameError::Overflow {
                pending: self.pending(),
                incoming: bytes.len(),
            });
        }
        free[..bytes.len()].copy_from_slice(bytes);
        self.end += bytes.len();
        Ok(())
    }

    /// One read from `rd` straight into the free part of the buffer;
    /// `Ok(0)` is the end of the stream. Cancel-safe when `rd.read` is.
    pub async fn read_from<R>(&mut self, rd: &mut R) -> std::io::Result<usize>
    where
        R: tokio::io::AsyncRead + Unpin,
    {
        use tokio::io::AsyncReadExt;
        let pending = self.pending();
        let free = self.make_room();
        if free.is_empty() {
            // only if the caller stopped draining frames: a whole frame is
            // pending, so an empty read must not pass for end of stream
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                FrameError::Overflow {
                    pending,
                    incoming: 1,
                },
            ));
        }
        let n = rd.read(free).await?;
        self.end += n;
        Ok(n)
    }

    /// Drops the returned bytes and gives the free tail of the buffer.
    fn make_room(&mut self) -> &mut [u8] {
        if self.buf.is_empty() {
            self.buf = vec![0u8; MAX_PENDING];
        }
        if self.start > 0 {
            self.buf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
        &mut self.buf[self.end..]
    }

    /// The next complete datagram, `Ok(None)` if more bytes are needed.
    pub fn next_frame(&mut self) -> Result<Option<&[u8]>, FrameError> {
        let rest = &self.buf[self.start..self.end];
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
        let first = self.start + 2;
        self.start = first + len;
        Ok(Some(&self.buf[first..first + len]))
    }

    /// Bytes buffered but not yet returned.
    pub fn pending(&self) -> usize {
        self.end - self.start
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
            d.push(chunk).unwrap();
            while let Some(f) = d.next_frame().unwrap() {
                got.push(f.to_vec());
            }
        }
        assert_eq!(got, vec![b"hello".to_vec(), vec![7u8; 1500]]);
        assert_eq!(d.pending(), 0);
        assert_eq!(encode(b"", &mut wire), Err(FrameError::Empty));
        assert!(encode(&vec![0u8; 70_000], &mut wire).is_err());
        let mut z = Decoder::default();
        z.push(&[0, 0, 1]).unwrap();
        assert_eq!(z.next_frame(), Err(FrameError::Empty));
    }

    /// F1: every read ends one byte into the next header; the decoder must
    /// still free what it returned (it kept all 140 MB before).
    #[test]
    fn f1_decoder_capacity_bounded() {
        let mut chunk = vec![0u8; 1402];
        let len = 1400u16.to_be_bytes();
        chunk[0] = len[1];
        chunk[1..1401].fill(0xAA);
        chunk[1401] = len[0];
        let mut d = Decoder::default();
        d.push(&[len[0]]).unwrap();
        let mut frames = 0usize;
        for _ in 0..100_000 {
            d.push(&chunk).unwrap();
            while let Some(f) = d.next_frame().unwrap() {
                assert_eq!(f.len(), 1400);
                frames += 1;
            }
        }
        assert_eq!(frames, 100_000);
        assert_eq!(d.pending(), 1);
        assert!(
            d.buf.capacity() < 256 * 1024,
            "decoder holds {} bytes of capacity",
            d.buf.capacity()
        );
    }

    /// More than one frame's worth that never forms a frame is refused,
    /// and the refused bytes are not taken.
    #[test]
    fn f1_decoder_refuses_more_than_one_frame_pending() {
        let mut d = Decoder::default();
        // a header for the largest frame and all but its last byte
        d.push(&[0xFF, 0xFF]).unwrap();
        d.push(&vec![1u8; MAX_FRAME - 1]).unwrap();
        assert_eq!(d.next_frame(), Ok(None));
        assert_eq!(
            d.push(&[1, 2]),
            Err(FrameError::Overflow {
                pending: MAX_PENDING - 1,
                incoming: 2
            })
        );
        assert_eq!(d.pending(), MAX_PENDING - 1);
        d.push(&[1]).unwrap();
        assert_eq!(d.next_frame().unwrap().map(<[u8]>::len), Some(MAX_FRAME));
        assert_eq!(d.pending(), 0);
    }

    /// Reading from a stream goes through the same bounded buffer.
    #[tokio::test]
    async fn read_from_fills_the_free_tail_only() {
        let mut wire = Vec::new();
        for _ in 0..100 {
            encode(&[9u8; 1400], &mut wire).unwrap();
        }
        let mut rd = &wire[..];
        let mut d = Decoder::default();
        let mut frames = 0;
        loop {
            let n = d.read_from(&mut rd).await.unwrap();
            if n == 0 {
                break;
            }
            assert!(n <= MAX_PENDING);
            while let Some(f) = d.next_frame().unwrap() {
                assert_eq!(f, &[9u8; 1400][..]);
                frames += 1;
            }
        }
        assert_eq!(frames, 100);
        assert_eq!(d.buf.capacity(), MAX_PENDING);
    }
}
