//! SPKI pins: sha256 of a certificate's DER SubjectPublicKeyInfo, hex. A tiny
//! DER walker finds the SPKI (Certificate → tbsCertificate → 7th field, after
//! the optional [0] version), so the client needs no X.509 library.

use sha2::{Digest, Sha256};

/// One DER TLV: (tag, whole TLV, contents, rest of the input).
type Tlv<'a> = (u8, &'a [u8], &'a [u8], &'a [u8]);

/// Reads one DER TLV at the start of `b`.
fn tlv(b: &[u8]) -> Option<Tlv<'_>> {
    let tag = *b.first()?;
    let first = *b.get(1)? as usize;
    let (len, hdr) = if first < 0x80 {
        (first, 2)
    } else {
        let n = first & 0x7f;
        if n == 0 || n > 4 {
            return None;
        }
        let mut len = 0usize;
        for i in 0..n {
            len = (len << 8) | *b.get(2 + i)? as usize;
        }
        (len, 2 + n)
    };
    let end = hdr.checked_add(len)?;
    if end > b.len() {
        return None;
    }
    Some((tag, &b[..end], &b[hdr..end], &b[end..]))
}

/// The DER SubjectPublicKeyInfo of an X.509 certificate.
pub fn spki_of_cert(der: &[u8]) -> Option<&[u8]> {
    let (tag, _, cert, _) = tlv(der)?;
    if tag != 0x30 {
        return None;
    }
    let (tag, _, tbs, _) = tlv(cert)?;
    if tag != 0x30 {
        return None;
    }
    let mut rest = tbs;
    let (tag, _, _, r) = tlv(rest)?;
    if tag == 0xa0 {
        rest = r; // explicit version
    }
    // serialNumber, signature, issuer, validity, subject
    for _ in 0..5 {
        rest = tlv(rest)?.3;
    }
    let (tag, whole, _, _) = tlv(rest)?;
    (tag == 0x30).then_some(whole)
}

/// Hex sha256 of the certificate's SPKI.
pub fn pin_of_cert(der: &[u8]) -> Option<String> {
    spki_of_cert(der).map(|spki| hex::encode(Sha256::digest(spki)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pin_matches_rcgen_spki() {
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["gwos".into()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        assert_eq!(
            spki_of_cert(cert.der()).unwrap(),
            key.public_key_der().as_slice()
        );
        assert_eq!(
            pin_of_cert(cert.der()).unwrap(),
            hex::encode(Sha256::digest(key.public_key_der()))
        );
        assert!(spki_of_cert(&cert.der()[..40]).is_none());
        assert!(spki_of_cert(b"").is_none());
    }
}
