//! The client side (`gwos knock`): builds SPA datagrams the stock fwknopd
//! accepts (SPA-SPEC §1, §5, §8): 16 random digits, b64u user, timestamp,
//! version `3.0.0`, message type 1 (or 3 with a client timeout), `ip,proto/port`,
//! SHA-256 digest, AES-256-CBC in the salted OpenSSL container, HMAC-SHA-256.

use std::net::{Ipv4Addr, SocketAddr, UdpSocket};

use rand::{Rng, RngCore};

use crate::crypto::{self, b64e_nopad, HashType, Mode};
use crate::packet::{ProtoPort, SALT_B64_PREFIX};

/// What the fwknop 2.6.10 client puts in the version field.
pub const CLIENT_VERSION: &str = "3.0.0";

/// One knock request.
#[derive(Debug, Clone)]
pub struct Knock {
    pub user: String,
    /// Allow IP; `0.0.0.0` = "use the packet's source address".
    pub allow_ip: Ipv4Addr,
    pub access: Vec<ProtoPort>,
    /// > 0: message type 3 with this client timeout.
    pub client_timeout: u32,
    /// Unix time to stamp (normally now).
    pub timestamp: i64,
}

/// Builds the UDP payload for `knock` with the stanza's keys (CBC, SHA-256
/// digest, HMAC-SHA-256 when `hmac_key` is set).
pub fn encode(knock: &Knock, key: &[u8], hmac_key: Option<&[u8]>) -> anyhow::Result<String> {
    anyhow::ensure!(
        !key.is_empty() && key.len() <= 32,
        "the Rijndael key must be 1..32 bytes"
    );
    anyhow::ensure!(
        !knock.access.is_empty(),
        "at least one proto/port is needed"
    );
    anyhow::ensure!(
        !knock.user.is_empty()
            && knock.user.len() < 64
            && knock
                .user
                .bytes()
                .all(|c| (0x21..=0x7e).contains(&c) && !b"\"/\\[]:;|=,+*?<>".contains(&c)),
        "user name not acceptable to fwknopd"
    );
    if let Some(h) = hmac_key {
        anyhow::ensure!(h != key, "the HMAC key must differ from the encryption key");
        anyhow::ensure!(h.len() <= 128, "HMAC key longer than 128 bytes");
    }
    let mut rng = rand::thread_rng();
    let rand16: String = (0..16)
        .map(|_| char::from(b'0' + rng.gen_range(0..10u8)))
        .collect();
    let access: Vec<String> = knock.access.iter().map(|a| a.to_string()).collect();
    let message = format!("{},{}", knock.allow_ip, access.join(","));
    let mt = if knock.client_timeout > 0 { 3 } else { 1 };
    let mut encoded = format!(
        "{rand16}:{}:{}:{CLIENT_VERSION}:{mt}:{}",
        b64e_nopad(knock.user.as_bytes()),
        knock.timestamp,
        b64e_nopad(message.as_bytes())
    );
    if mt == 3 {
        encoded.push_str(&format!(":{}", knock.client_timeout));
    }
    let digest = b64e_nopad(&HashType::Sha256.digest(encoded.as_bytes()));
    let mut pt = format!("{encoded}:{digest}").into_bytes();
    let pad = 16 - pt.len() % 16;
    pt.extend(std::iter::repeat_n(pad as u8, pad));
    let mut salt = [0u8; 8];
    rng.fill_bytes(&mut salt);
    let (mut k, mut iv) = crypto::evp_bytes_to_key(key, &salt);
    crypto::aes_apply(Mode::Cbc, &k, &iv, &mut pt, true);
    zeroize::Zeroize::zeroize(&mut k);
    zeroize::Zeroize::zeroize(&mut iv);
    let mut container = b"Salted__".to_vec();
    container.extend_from_slice(&salt);
    container.extend_from_slice(&pt);
    let full = b64e_nopad(&container);
    debug_assert!(full.starts_with(SALT_B64_PREFIX));
    let w = &full[SALT_B64_PREFIX.len()..];
    let mut spa = w.to_string();
    if let Some(h) = hmac_key {
        spa.push_str(&b64e_nopad(&HashType::Sha256.hmac(h, full.as_bytes())));
    }
    anyhow::ensure!(
        spa.len() < 400,
        "packet of {} chars: fwknopd refuses 400 or more (too many ports?)",
        spa.len()
    );
    Ok(spa)
}

/// Encodes and sends one knock to `dest` (UDP); returns the bytes sent.
pub fn send(
    knock: &Knock,
    key: &[u8],
    hmac_key: Option<&[u8]>,
    dest: SocketAddr,
) -> anyhow::Result<String> {
    let spa = encode(knock, key, hmac_key)?;
    let bind: SocketAddr = if dest.is_ipv4() {
        "0.0.0.0:0".parse()?
    } else {
        "[::]:0".parse()?
    };
    let sock = UdpSocket::bind(bind)?;
    sock.send_to(spa.as_bytes(), dest)?;
    Ok(spa)
}

/// Entry point for the `gwos knock` CLI: parses its arguments and sends.
/// `gwos knock <gateway[:port]> --user U --key-base64 K --hmac-key-base64 H
///  [--access tcp/443,...] [--allow-ip A.B.C.D|--source] [--timeout N]`
pub fn cli(args: &[String]) -> anyhow::Result<()> {
    let mut dest = None;
    let (mut user, mut key, mut hkey) = (None, None, None);
    let mut access = vec![ProtoPort {
        tcp: true,
        port: 443,
    }];
    let mut allow_ip = None;
    let mut timeout = 0u32;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let mut val = || {
            it.next()
                .cloned()
                .ok_or_else(|| anyhow::anyhow!("{a} needs a value"))
        };
        match a.as_str() {
            "--user" => user = Some(val()?),
            "--key-base64" => {
                key = Some(zeroize::Zeroizing::new(
                    crypto::b64d_strict(&val()?)
                        .ok_or_else(|| anyhow::anyhow!("--key-base64 is not base64"))?,
                ))
            }
            "--hmac-key-base64" => {
                hkey = Some(zeroize::Zeroizing::new(
                    crypto::b64d_strict(&val()?)
                        .ok_or_else(|| anyhow::anyhow!("--hmac-key-base64 is not base64"))?,
                ))
            }
            // Keys on the command line are visible to other local users (ps); a file is not.
            "--key-file" => {
                let k = crate::keyfile::KnockKeys::load(std::path::Path::new(&val()?))?;
                key = Some(zeroize::Zeroizing::new(k.key().to_vec()));
                hkey = Some(zeroize::Zeroizing::new(k.hmac().to_vec()));
            }
            "--access" => {
                access = val()?
                    .split(',')
                    .map(|s| {
                        ProtoPort::parse(s).ok_or_else(|| anyhow::anyhow!("bad proto/port {s:?}"))
                    })
                    .collect::<anyhow::Result<_>>()?
            }
            "--allow-ip" => allow_ip = Some(val()?.parse::<Ipv4Addr>()?),
            "--source" => allow_ip = Some(Ipv4Addr::UNSPECIFIED),
            "--timeout" => timeout = val()?.parse()?,
            s if !s.starts_with("--") && dest.is_none() => dest = Some(s.to_string()),
            other => anyhow::bail!("unknown argument {other:?}"),
        }
    }
    let dest = dest.ok_or_else(|| anyhow::anyhow!("usage: gwos knock <gateway[:port]> --user U (--key-file F | --key-base64 K --hmac-key-base64 H) [--access tcp/443] [--allow-ip IP|--source]"))?;
    let dest: SocketAddr = match dest.parse() {
        Ok(sa) => sa,
        Err(_) => {
            use std::net::ToSocketAddrs;
            let with_port = if dest.contains(':') {
                dest.clone()
            } else {
                format!("{dest}:62201")
            };
            with_port
                .to_socket_addrs()?
                .next()
                .ok_or_else(|| anyhow::anyhow!("cannot resolve {dest}"))?
        }
    };
    let allow_ip = match allow_ip {
        Some(a) => a,
        None => match dest.ip() {
            std::net::IpAddr::V4(_) => {
                // the address this host would use toward the gateway
                let s = UdpSocket::bind("0.0.0.0:0")?;
                s.connect(dest)?;
                match s.local_addr()?.ip() {
                    std::net::IpAddr::V4(a) => a,
                    _ => Ipv4Addr::UNSPECIFIED,
                }
            }
            _ => Ipv4Addr::UNSPECIFIED,
        },
    };
    let knock = Knock {
        user: user.ok_or_else(|| anyhow::anyhow!("--user is required"))?,
        allow_ip,
        access,
        client_timeout: timeout,
        timestamp: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)?
            .as_secs() as i64,
    };
    let key = key.ok_or_else(|| anyhow::anyhow!("--key-file or --key-base64 is required"))?;
    send(&knock, &key, hkey.as_ref().map(|h| h.as_slice()), dest)?;
    eprintln!(
        "knocked {dest} as {} for {} (allow ip {allow_ip})",
        knock.user,
        knock
            .access
            .iter()
            .map(|a| a.to_string())
            .collect::<Vec<_>>()
            .join(",")
    );
    Ok(())
}

#[cfg(test)]
mod cli_tests {
    const K: &str = "PLJiB9FhMc635yVDYsXCvEgWl7Q60iCQNQBvN1inQ04=";
    const H: &str =
        "YTMMjQ9STIx2+a0R1557B7q8N8jd3Zt1ryxkCDxe1g6mRlhD9YheNvRXhDIYy8tOmVId8lrSScZlygiX0bsRxA==";

    /// `gwos knock --key-file` sends a packet the gateway's decoder accepts with those keys.
    #[test]
    fn knock_with_key_file() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("knock.keys");
        std::fs::write(&f, format!("KEY_BASE64: {K}\nHMAC_KEY_BASE64: {H}\n")).unwrap();
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o600)).unwrap();
        let rx = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        rx.set_read_timeout(Some(std::time::Duration::from_secs(5)))
            .unwrap();
        let args: Vec<String> = [
            &rx.local_addr().unwrap().to_string(),
            "--user",
            "alice",
            "--access",
            "tcp/8443",
            "--key-file",
            f.to_str().unwrap(),
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        super::cli(&args).unwrap();
        let mut buf = [0u8; 2048];
        let (n, _) = rx.recv_from(&mut buf).unwrap();
        let spa = crate::packet::preprocess(&buf[..n], false).unwrap();
        let keys = crate::packet::Keys {
            key: crate::crypto::b64d_strict(K).unwrap(),
            hmac_key: Some(crate::crypto::b64d_strict(H).unwrap()),
            hmac_type: crate::crypto::HashType::Sha256,
            mode: crate::crypto::Mode::Cbc,
        };
        let p = crate::packet::decode_with(&spa, &keys).unwrap();
        assert_eq!(p.username, "alice");
        assert_eq!(
            p.access,
            vec![crate::packet::ProtoPort {
                tcp: true,
                port: 8443
            }]
        );
        // A readable key file is refused before anything is sent.
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o640)).unwrap();
        let e = format!("{:#}", super::cli(&args).unwrap_err());
        assert!(e.contains("chmod 600"), "{e}");
    }
}
