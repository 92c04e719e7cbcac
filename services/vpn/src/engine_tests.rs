//! The engine against real boringtun clients (no TUN: `/dev/null` stands
//! in, these tests never reach the kernel side).

use std::net::{SocketAddr, UdpSocket};
use std::time::Duration;

use base64::Engine as _;
use boringtun::noise::{Packet, Tunn, TunnResult};
use boringtun::x25519::{PublicKey, StaticSecret};

use super::*;

struct Setup {
    engine: Engine,
    victim: Tunn,
}

fn setup() -> Setup {
    let server = StaticSecret::from([7u8; 32]);
    let server_public = PublicKey::from(&server);
    let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
    let tun = File::options().write(true).open("/dev/null").unwrap();
    let engine = Engine::new(
        server,
        "10.77.0.1".parse().unwrap(),
        "10.77.0.0/24".parse().unwrap(),
        Duration::from_secs(600),
        vec![sock],
        tun,
        "vpn",
    );
    let client = StaticSecret::from([9u8; 32]);
    let user = User {
        name: "victim".into(),
        public_key: base64::engine::general_purpose::STANDARD
            .encode(PublicKey::from(&client).as_bytes()),
        address: "10.77.0.2".parse().unwrap(),
        allowed: vec![],
        created: String::new(),
        expires_at: None,
        config_dns: vec![],
    };
    engine.upsert(&user).unwrap();
    let victim = Tunn::new(client, server_public, None, None, 1, None);
    Setup { engine, victim }
}

fn endpoint(e: &Engine) -> Option<String> {
    e.status()[0]["endpoint"].as_str().map(str::to_owned)
}

/// A socket standing for one source address, with a short read timeout.
fn source() -> (UdpSocket, SocketAddr) {
    let s = UdpSocket::bind("127.0.0.1:0").unwrap();
    s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    let a = s.local_addr().unwrap();
    (s, a)
}

/// F6: a replayed handshake init gets a cookie reply once the peer's Tunn
/// is under load, before anything is authenticated; that must not point the
/// victim's downlink at whoever sent it.
#[test]
fn f6_cookie_reply_does_not_move_endpoint() {
    let mut s = setup();
    let mut buf = vec![0u8; 2048];
    let init = match s.victim.format_handshake_initiation(&mut buf, false) {
        TunnResult::WriteToNetwork(p) => p.to_vec(),
        _ => panic!("the client makes a handshake init"),
    };
    let (victim_sock, victim_addr) = source();
    let mut out = vec![0u8; BUF];
    s.engine.on_datagram(0, victim_addr, &init, &mut out);
    assert_eq!(endpoint(&s.engine), Some(victim_addr.to_string()));
    let n = victim_sock.recv(&mut buf).unwrap();
    assert!(
        matches!(
            Tunn::parse_incoming_packet(&buf[..n]),
            Ok(Packet::HandshakeResponse(_))
        ),
        "the victim gets its handshake response"
    );

    // the attacker replays the same init: mac1 is valid, the timestamp is not new
    let (attacker_sock, attacker_addr) = source();
    for _ in 0..12 {
        s.engine.on_datagram(0, attacker_addr, &init, &mut out);
    }
    assert_eq!(endpoint(&s.engine), Some(victim_addr.to_string()));
    // the cookie reply still goes to the source that asked
    let n = attacker_sock.recv(&mut buf).unwrap();
    assert!(
        matches!(
            Tunn::parse_incoming_packet(&buf[..n]),
            Ok(Packet::PacketCookieReply(_))
        ),
        "the attacker gets a cookie reply ({n} bytes, type {})",
        buf[0]
    );
}

/// Roaming still works: a data packet the peer's session decrypts, from a
/// new address, moves the endpoint there.
#[test]
fn authenticated_data_moves_endpoint() {
    let mut s = setup();
    let mut buf = vec![0u8; 2048];
    let mut out = vec![0u8; BUF];
    let init = match s.victim.format_handshake_initiation(&mut buf, false) {
        TunnResult::WriteToNetwork(p) => p.to_vec(),
        _ => panic!("the client makes a handshake init"),
    };
    let (first_sock, first_addr) = source();
    s.engine.on_datagram(0, first_addr, &init, &mut out);
    let n = first_sock.recv(&mut buf).unwrap();
    let keepalive = match s.victim.decapsulate(None, &buf[..n], &mut out) {
        TunnResult::WriteToNetwork(p) => p.to_vec(),
        _ => panic!("the client answers the handshake response with a keepalive"),
    };
    let (_roamed_sock, roamed_addr) = source();
    s.engine.on_datagram(0, roamed_addr, &keepalive, &mut out);
    assert_eq!(endpoint(&s.engine), Some(roamed_addr.to_string()));
    assert_eq!(s.engine.status()[0]["session"], true);
}
