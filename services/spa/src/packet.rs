//! Parsing and verifying one SPA datagram (SPA-SPEC §2–§10), in fwknopd's
//! order: cheap transport checks, HMAC (constant time), decrypt, digest,
//! field parsing. Pure functions over bytes: the fuzz target `spa_packet`
//! drives [`preprocess`] and [`decode_with`] with arbitrary input.

use std::net::Ipv4Addr;

use crate::crypto::{self, b64d_lenient, b64e_nopad, ct_eq, HashType, Mode};

pub const MIN_PKT: usize = 140;
pub const MAX_PKT: usize = 1500;
pub const SALT_B64_PREFIX: &str = "U2FsdGVkX1";
const MIN_ENCODED: usize = 36;
/// fwknopd treats ≥ 400 chars as GnuPG and never tries Rijndael (§2.5).
pub const GPG_THRESHOLD: usize = 400;

/// Where a packet was refused; names follow decode.py's stages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    Transport,
    Hmac,
    Decrypt,
    Decode,
    Digest,
    Age,
    Replay,
    Policy,
    RateLimit,
}

impl Stage {
    pub fn as_str(self) -> &'static str {
        match self {
            Stage::Transport => "transport",
            Stage::Hmac => "hmac",
            Stage::Decrypt => "decrypt",
            Stage::Decode => "decode",
            Stage::Digest => "digest",
            Stage::Age => "age",
            Stage::Replay => "replay",
            Stage::Policy => "policy",
            Stage::RateLimit => "rate_limit",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reject {
    pub stage: Stage,
    pub reason: String,
}

impl std::fmt::Display for Reject {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.stage.as_str(), self.reason)
    }
}

fn rej<T>(stage: Stage, reason: impl Into<String>) -> Result<T, Reject> {
    Err(Reject {
        stage,
        reason: reason.into(),
    })
}

/// Keys and algorithms of one stanza.
#[derive(Clone)]
pub struct Keys {
    pub key: Vec<u8>,
    pub hmac_key: Option<Vec<u8>>,
    pub hmac_type: HashType,
    pub mode: Mode,
}

impl std::fmt::Debug for Keys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Keys")
            .field("hmac_type", &self.hmac_type)
            .field("mode", &self.mode)
            .finish_non_exhaustive()
    }
}

impl Drop for Keys {
    fn drop(&mut self) {
        zeroize::Zeroize::zeroize(&mut self.key);
        if let Some(h) = self.hmac_key.as_mut() {
            zeroize::Zeroize::zeroize(h);
        }
    }
}

/// A requested `proto/port`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ProtoPort {
    pub tcp: bool,
    pub port: u16,
}

impl ProtoPort {
    pub fn parse(s: &str) -> Option<Self> {
        let (p, n) = s.split_once('/')?;
        let tcp = match p {
            "tcp" => true,
            "udp" => false,
            _ => return None,
        };
        if n.is_empty() || n.len() > 5 || !n.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        let port: u32 = n.parse().ok()?;
        if !(1..=65535).contains(&port) {
            return None;
        }
        Some(Self {
            tcp,
            port: port as u16,
        })
    }
}

impl std::fmt::Display for ProtoPort {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", if self.tcp { "tcp" } else { "udp" }, self.port)
    }
}

/// The decoded fields of a valid packet.
#[derive(Debug, Clone, PartialEq)]
pub struct Fields {
    pub random_value: String,
    pub username: String,
    pub timestamp: i64,
    pub version: String,
    pub message_type: u8,
    pub message: String,
    pub allow_ip: Ipv4Addr,
    /// For types 1–6; empty for commands.
    pub access: Vec<ProtoPort>,
    pub command: Option<String>,
    pub nat_access: Option<String>,
    pub server_auth: Option<String>,
    pub client_timeout: u32,
    pub digest_type: HashType,
    pub digest: String,
    pub encoded_data: String,
}

/// What the transport stage hands on: the SPA string and its replay key.
#[derive(Debug, Clone)]
pub struct Spa {
    pub data: String,
    /// b64u(SHA-256(S)), fwknopd's digest-cache key (§9).
    pub replay_digest: String,
}

/// §2: length, prefix, optional HTTP unwrapping, base64 alphabet. No key is used.
pub fn preprocess(payload: &[u8], allow_http: bool) -> Result<Spa, Reject> {
    if payload.len() < MIN_PKT || payload.len() > MAX_PKT {
        return rej(
            Stage::Transport,
            format!("payload length {} outside [140,1500]", payload.len()),
        );
    }
    if payload.starts_with(SALT_B64_PREFIX.as_bytes()) {
        return rej(Stage::Transport, "payload starts with U2FsdGVkX1");
    }
    let spa: Vec<u8> = if payload.len() >= 5 && payload[..5].eq_ignore_ascii_case(b"GET /") {
        if !allow_http {
            return rej(Stage::Transport, "SPA over HTTP is not enabled");
        }
        let path = &payload[5..];
        let end = path
            .iter()
            .position(|c| c.is_ascii_whitespace())
            .unwrap_or(path.len());
        let s: Vec<u8> = path[..end]
            .iter()
            .map(|&c| match c {
                b'-' => b'+',
                b'_' => b'/',
                c => c,
            })
            .collect();
        if s.len() < MIN_PKT {
            return rej(Stage::Transport, "HTTP SPA data shorter than 140");
        }
        s
    } else {
        payload.to_vec()
    };
    if !spa
        .iter()
        .all(|&c| c.is_ascii_alphanumeric() || c == b'+' || c == b'/' || c == b'=')
    {
        return rej(Stage::Transport, "not base64 text");
    }
    if spa.len() >= GPG_THRESHOLD {
        // fwknopd guesses GnuPG here and never tries a Rijndael stanza (§2.5)
        return rej(
            Stage::Transport,
            format!(
                "SPA data of {} chars (400 or more is never accepted)",
                spa.len()
            ),
        );
    }
    let data = String::from_utf8(spa).expect("checked ASCII");
    let replay_digest = b64e_nopad(&HashType::Sha256.digest(data.as_bytes()));
    Ok(Spa {
        data,
        replay_digest,
    })
}

/// §3: verify the trailing tag; returns the ciphertext part W.
pub fn check_hmac<'a>(spa: &'a str, hmac_key: &[u8], t: HashType) -> Result<&'a str, Reject> {
    let l = t.b64_len();
    if spa.len() < l + MIN_ENCODED {
        return rej(
            Stage::Hmac,
            format!("packet too short for a {} HMAC", t.name()),
        );
    }
    let (ct, tag) = spa.split_at(spa.len() - l);
    let mut authed = Vec::with_capacity(ct.len() + 10);
    if !ct.starts_with(SALT_B64_PREFIX) {
        authed.extend_from_slice(SALT_B64_PREFIX.as_bytes());
    }
    authed.extend_from_slice(ct.as_bytes());
    let want = b64e_nopad(&t.hmac(hmac_key, &authed));
    if !ct_eq(want.as_bytes(), tag.as_bytes()) {
        return rej(Stage::Hmac, "HMAC mismatch");
    }
    Ok(ct)
}

/// §4: base64 → `Salted__` container → AES → unpad → 16 digits + ':'.
pub fn decrypt(ct_b64: &str, key: &[u8], mode: Mode) -> Result<Vec<u8>, Reject> {
    let k = crypto::effective_key(key, mode);
    if k.is_empty() || k.len() > 32 {
        return rej(Stage::Decrypt, "Rijndael key must be 1..32 bytes");
    }
    if SALT_B64_PREFIX.len() + ct_b64.len() >= GPG_THRESHOLD {
        return rej(
            Stage::Decrypt,
            "ciphertext of 400 chars or more (libfko refuses it)",
        );
    }
    let mut text = Vec::with_capacity(ct_b64.len() + 10);
    if !ct_b64.starts_with(SALT_B64_PREFIX) {
        text.extend_from_slice(SALT_B64_PREFIX.as_bytes());
    }
    text.extend_from_slice(ct_b64.as_bytes());
    let Some(mut raw) = b64d_lenient(&text) else {
        return rej(Stage::Decrypt, "bad base64");
    };
    if raw.len() % 16 != 0 || raw.len() < 32 {
        return rej(
            Stage::Decrypt,
            format!(
                "ciphertext length {} not a whole number of blocks",
                raw.len()
            ),
        );
    }
    if &raw[..8] != b"Salted__" {
        return rej(Stage::Decrypt, "missing Salted__ header");
    }
    let (mut aes_key, mut iv) = crypto::evp_bytes_to_key(&k, &raw[8..16]);
    let mut body = raw.split_off(16);
    crypto::aes_apply(mode, &aes_key, &iv, &mut body, false);
    zeroize::Zeroize::zeroize(&mut aes_key);
    zeroize::Zeroize::zeroize(&mut iv);
    if let Some(&p) = body.last() {
        let p = p as usize;
        if (1..=16).contains(&p) && body[body.len() - p..].iter().all(|&b| b as usize == p) {
            body.truncate(body.len() - p);
        }
    }
    if let Some(nul) = body.iter().position(|&b| b == 0) {
        body.truncate(nul);
    }
    if body.len() < 17 || !body[..16].iter().all(u8::is_ascii_digit) || body[16] != b':' {
        return rej(Stage::Decrypt, "decryption failed (wrong key or mode)");
    }
    Ok(body)
}

fn valid_ipv4(s: &str) -> Option<Ipv4Addr> {
    if !(7..=15).contains(&s.len()) || s.bytes().filter(|&b| b == b'.').count() != 3 {
        return None;
    }
    if !s.bytes().all(|b| b.is_ascii_digit() || b == b'.') {
        return None;
    }
    s.parse().ok() // Rust's parser refuses leading zeros (no octal surprises)
}

fn valid_username(u: &str) -> bool {
    !u.is_empty()
        && u.len() < 64
        && u.bytes()
            .all(|c| (0x20..=0x7e).contains(&c) && !b"\"/\\[]:;|=,+*?<>".contains(&c))
}

fn b64_text(field: &str, what: &str) -> Result<String, Reject> {
    let raw = b64d_lenient(field.as_bytes()).ok_or(Reject {
        stage: Stage::Decode,
        reason: format!("{what} not base64"),
    })?;
    String::from_utf8(raw).map_err(|_| Reject {
        stage: Stage::Decode,
        reason: format!("{what} not ASCII"),
    })
}

/// §5–§8: digest check and field parsing of the plaintext.
pub fn parse_plaintext(pt: &[u8]) -> Result<Fields, Reject> {
    if !pt.iter().all(|&c| (0x20..=0x7e).contains(&c)) {
        return rej(Stage::Decode, "non-printable plaintext");
    }
    let s = std::str::from_utf8(pt).expect("printable ASCII");
    if !(MIN_ENCODED..MAX_PKT).contains(&s.len()) {
        return rej(Stage::Decode, "plaintext length out of range");
    }
    if s.bytes().filter(|&b| b == b':').count() < 6 {
        return rej(Stage::Decode, "too few ':'-separated fields");
    }
    let (body, digest) = s.rsplit_once(':').expect("has ':'");
    let candidates: &[HashType] = match digest.len() {
        22 => &[HashType::Md5],
        27 => &[HashType::Sha1],
        43 => &[HashType::Sha256, HashType::Sha3_256],
        64 => &[HashType::Sha384],
        86 => &[HashType::Sha512, HashType::Sha3_512],
        n => {
            return rej(
                Stage::Digest,
                format!("digest length {n} matches no algorithm"),
            )
        }
    };
    let digest_type = candidates
        .iter()
        .copied()
        .find(|t| {
            ct_eq(
                b64e_nopad(&t.digest(body.as_bytes())).as_bytes(),
                digest.as_bytes(),
            )
        })
        .ok_or(Reject {
            stage: Stage::Digest,
            reason: "digest mismatch".into(),
        })?;

    let f: Vec<&str> = body.split(':').collect();
    let rand = f[0];
    if rand.len() < 16 || !rand.as_bytes()[..16].iter().all(u8::is_ascii_digit) {
        return rej(Stage::Decode, "bad random value");
    }
    if f[1].is_empty() || f[1].len() > 64 {
        return rej(
            Stage::Decode,
            "username field empty or longer than 64 chars",
        );
    }
    let username = b64_text(f[1], "username")?;
    if !valid_username(&username) {
        return rej(Stage::Decode, "invalid username");
    }
    if f[2].is_empty() || f[2].len() > 12 || !f[2].bytes().all(|b| b.is_ascii_digit()) {
        return rej(Stage::Decode, "bad timestamp");
    }
    let timestamp: i64 = f[2].parse().map_err(|_| Reject {
        stage: Stage::Decode,
        reason: "bad timestamp".into(),
    })?;
    if timestamp > i32::MAX as i64 {
        return rej(
            Stage::Decode,
            "timestamp >= 2^31 (rejected by fwknopd 2.6.x)",
        );
    }
    if f[3].is_empty() || f[3].len() > 8 {
        return rej(Stage::Decode, "bad version");
    }
    if f[4].is_empty() || f[4].len() > 2 || !f[4].bytes().all(|b| b.is_ascii_digit()) {
        return rej(Stage::Decode, "bad message type");
    }
    let mt: u8 = f[4].parse().unwrap_or(99);
    if mt > 6 {
        return rej(Stage::Decode, "bad message type");
    }
    let rest = &f[5..];
    let max_rest = match mt {
        0 | 1 => 2,
        2 | 3 | 5 => 3,
        _ => 4,
    };
    if rest.len() > max_rest {
        return rej(
            Stage::Decode,
            format!("too many fields for message type {mt}"),
        );
    }
    if rest.is_empty() || rest[0].is_empty() {
        return rej(Stage::Decode, "missing message");
    }
    if rest[0].len() > 256 {
        return rej(Stage::Decode, "message field longer than 256 chars");
    }
    let message = b64_text(rest[0], "message")?;
    let (ip, tail) = message.split_once(',').unwrap_or((&message, ""));
    let Some(allow_ip) = valid_ipv4(ip) else {
        return rej(Stage::Decode, "message must be '<ipv4>,<...>'");
    };
    if tail.is_empty() {
        return rej(Stage::Decode, "message must be '<ipv4>,<...>'");
    }
    let (mut access, mut command) = (Vec::new(), None);
    if mt == 0 {
        command = Some(tail.to_string());
    } else {
        for spec in tail.split(',') {
            match ProtoPort::parse(spec) {
                Some(pp) => access.push(pp),
                None => return rej(Stage::Decode, "bad proto/port list"),
            }
        }
    }
    let mut idx = 1;
    let mut nat_access = None;
    if matches!(mt, 2 | 4 | 5 | 6) {
        let Some(field) = rest.get(idx).filter(|x| !x.is_empty()) else {
            return rej(Stage::Decode, "missing NAT access field");
        };
        if field.len() > 256 {
            return rej(Stage::Decode, "NAT field longer than 256 chars");
        }
        let nat = b64_text(field, "NAT access")?;
        let ok = match nat.split_once(',') {
            Some((host, port)) => {
                !port.contains(',')
                    && !host.is_empty()
                    && host.len() <= 70
                    && !host.chars().any(|c| " /?\"'\\".contains(c))
                    && !port.is_empty()
                    && port.len() <= 5
                    && port.bytes().all(|b| b.is_ascii_digit())
                    && (1..=65535).contains(&port.parse::<u32>().unwrap_or(0))
            }
            None => false,
        };
        if !ok {
            return rej(Stage::Decode, "bad NAT access");
        }
        nat_access = Some(nat);
        idx += 1;
    }
    let remaining = &rest[idx..];
    let (mut server_auth, mut client_timeout) = (None, 0u32);
    if matches!(mt, 3 | 4 | 6) {
        let Some(to) = remaining.last().filter(|x| !x.is_empty()) else {
            return rej(Stage::Decode, "missing client timeout");
        };
        if remaining.len() == 2 {
            server_auth = Some(b64_text(remaining[0], "server auth")?);
        }
        if to.len() > 5 || !to.bytes().all(|b| b.is_ascii_digit()) {
            return rej(Stage::Decode, "bad client timeout");
        }
        client_timeout = to.parse().unwrap_or(u32::MAX);
        if client_timeout > 65536 {
            return rej(Stage::Decode, "bad client timeout");
        }
    } else if !remaining.is_empty() {
        let joined = remaining.join(":");
        let raw = b64d_lenient(joined.as_bytes()).ok_or(Reject {
            stage: Stage::Decode,
            reason: "server auth not base64".into(),
        })?;
        server_auth = Some(String::from_utf8_lossy(&raw).into_owned());
    }
    Ok(Fields {
        random_value: rand[..16].to_string(),
        username,
        timestamp,
        version: f[3].to_string(),
        message_type: mt,
        message,
        allow_ip,
        access,
        command,
        nat_access,
        server_auth,
        client_timeout,
        digest_type,
        digest: digest.to_string(),
        encoded_data: body.to_string(),
    })
}

/// HMAC (if the stanza has a key), decrypt, digest and fields for one stanza.
pub fn decode_with(spa: &Spa, keys: &Keys) -> Result<Fields, Reject> {
    let ct = match &keys.hmac_key {
        Some(hk) => check_hmac(&spa.data, hk, keys.hmac_type)?,
        None => spa.data.as_str(),
    };
    let pt = decrypt(ct, &keys.key, keys.mode)?;
    parse_plaintext(&pt)
}

/// Age window check (§10): |now − timestamp| ≤ max_age.
pub fn check_age(fields: &Fields, now: i64, max_age: i64) -> Result<(), Reject> {
    let age = (now - fields.timestamp).abs();
    if age > max_age {
        return rej(
            Stage::Age,
            format!("SPA data time difference is too great ({age} seconds)"),
        );
    }
    Ok(())
}
