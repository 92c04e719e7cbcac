//! One spool record on disk. Layout (little endian):
//!
//! ```text
//! magic    4  "GWL1"
//! len      4  length of the body (≤ MAX_BODY)
//! crc      4  crc32 (IEEE) over len ‖ body
//! body:
//!   seq       8  spool sequence number (1, 2, ...; never reused)
//!   time_ms   8  acceptance time, Unix milliseconds
//!   boot_id  16  the kernel boot id of the boot that accepted it
//!   kind      1  0 = event, 1 = gap (records dropped because the spool was full)
//!   svc_len   1  length of the service name
//!   service   svc_len bytes (ASCII, from PID 1, never from the event itself)
//!   payload   rest: the event's JSON line (no newline)
//! ```
//!
//! A record whose magic, length or checksum does not match ends the valid
//! part of a segment: that is how a torn tail (power cut in the middle of a
//! group commit) is found and cut off.

use std::io::{self, Read};

pub(crate) const MAGIC: [u8; 4] = *b"GWL1";
pub(crate) const HEADER: usize = 12;
/// Largest event accepted (longer lines are cut by ingest).
pub const MAX_EVENT: usize = 16 * 1024;
const FIXED: usize = 8 + 8 + 16 + 1 + 1;
pub(crate) const MAX_BODY: usize = FIXED + 255 + MAX_EVENT;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Event,
    Gap,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub seq: u64,
    pub time_ms: i64,
    pub boot_id: [u8; 16],
    pub kind: Kind,
    pub service: String,
    pub payload: Vec<u8>,
}

impl Record {
    /// Bytes this record takes on disk.
    pub fn disk_len(&self) -> usize {
        HEADER + FIXED + self.service.len() + self.payload.len()
    }

    /// Appends the encoded record to `out`.
    pub fn encode_into(&self, out: &mut Vec<u8>) {
        let svc = &self.service.as_bytes()[..self.service.len().min(255)];
        let payload = &self.payload[..self.payload.len().min(MAX_EVENT)];
        let len = (FIXED + svc.len() + payload.len()) as u32;
        let start = out.len();
        out.extend_from_slice(&MAGIC);
        out.extend_from_slice(&len.to_le_bytes());
        out.extend_from_slice(&[0; 4]);
        out.extend_from_slice(&self.seq.to_le_bytes());
        out.extend_from_slice(&self.time_ms.to_le_bytes());
        out.extend_from_slice(&self.boot_id);
        out.push(match self.kind {
            Kind::Event => 0,
            Kind::Gap => 1,
        });
        out.push(svc.len() as u8);
        out.extend_from_slice(svc);
        out.extend_from_slice(payload);
        let crc = checksum(&out[start + 4..start + 8], &out[start + HEADER..]);
        out[start + 8..start + 12].copy_from_slice(&crc.to_le_bytes());
    }
}

fn checksum(len: &[u8], body: &[u8]) -> u32 {
    let mut h = crc32fast::Hasher::new();
    h.update(len);
    h.update(body);
    h.finalize()
}

/// Why a segment's valid part ends where it does.
#[derive(Debug, PartialEq, Eq)]
pub enum End {
    /// Clean end of file.
    Eof,
    /// A partial or corrupt record starts here (torn write or damage).
    Torn(&'static str),
}

/// Reads the next record; `Err(End)` when there is none that is valid.
pub fn read_one(r: &mut impl Read) -> io::Result<Result<Record, End>> {
    let mut hdr = [0u8; HEADER];
    match read_full(r, &mut hdr)? {
        0 => return Ok(Err(End::Eof)),
        n if n < HEADER => return Ok(Err(End::Torn("short header"))),
        _ => {}
    }
    if hdr[..4] != MAGIC {
        return Ok(Err(End::Torn("bad magic")));
    }
    let len = u32::from_le_bytes([hdr[4], hdr[5], hdr[6], hdr[7]]) as usize;
    if !(FIXED..=MAX_BODY).contains(&len) {
        return Ok(Err(End::Torn("bad length")));
    }
    let mut body = vec![0u8; len];
    if read_full(r, &mut body)? < len {
        return Ok(Err(End::Torn("short body")));
    }
    let crc = u32::from_le_bytes([hdr[8], hdr[9], hdr[10], hdr[11]]);
    if checksum(&hdr[4..8], &body) != crc {
        return Ok(Err(End::Torn("checksum mismatch")));
    }
    Ok(decode_body(&body).ok_or(End::Torn("bad body")))
}

fn decode_body(b: &[u8]) -> Option<Record> {
    let u64_at =
        |i: usize| -> Option<u64> { Some(u64::from_le_bytes(b.get(i..i + 8)?.try_into().ok()?)) };
    let seq = u64_at(0)?;
    let time_ms = u64_at(8)? as i64;
    let boot_id: [u8; 16] = b.get(16..32)?.try_into().ok()?;
    let kind = match *b.get(32)? {
        0 => Kind::Event,
        1 => Kind::Gap,
        _ => return None,
    };
    let svc_len = *b.get(33)? as usize;
    let service = std::str::from_utf8(b.get(34..34 + svc_len)?)
        .ok()?
        .to_owned();
    Some(Record {
        seq,
        time_ms,
        boot_id,
        kind,
        service,
        payload: b.get(34 + svc_len..)?.to_vec(),
    })
}

fn read_full(r: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(seq: u64) -> Record {
        Record {
            seq,
            time_ms: 1_700_000_000_000,
            boot_id: [7; 16],
            kind: Kind::Event,
            service: "spa".into(),
            payload: br#"{"kind":"spa.permit"}"#.to_vec(),
        }
    }

    #[test]
    fn round_trip_and_length() {
        let mut b = Vec::new();
        rec(1).encode_into(&mut b);
        rec(2).encode_into(&mut b);
        assert_eq!(b.len(), 2 * rec(1).disk_len());
        let mut r = b.as_slice();
        assert_eq!(read_one(&mut r).unwrap(), Ok(rec(1)));
        assert_eq!(read_one(&mut r).unwrap(), Ok(rec(2)));
        assert_eq!(read_one(&mut r).unwrap(), Err(End::Eof));
    }

    #[test]
    fn every_truncation_and_bit_flip_is_detected() {
        let mut b = Vec::new();
        rec(9).encode_into(&mut b);
        for cut in 1..b.len() {
            let got = read_one(&mut &b[..cut]).unwrap();
            assert!(matches!(got, Err(End::Torn(_))), "cut at {cut}: {got:?}");
        }
        for i in 0..b.len() {
            let mut c = b.clone();
            c[i] ^= 0x10;
            let got = read_one(&mut c.as_slice()).unwrap();
            assert!(matches!(got, Err(End::Torn(_))), "flip at {i}: {got:?}");
        }
    }
}
