//! The data plane: one boringtun `Tunn` per user, driven by our own threads —
//! one per UDP socket (datagrams from tls-front or the public port), one for
//! the TUN device, one for timers and idle teardown. Decrypted packets are
//! checked before they reach the kernel: the inner source must be the peer's
//! own /32 and the destination the gateway or one of the peer's allowed
//! networks (never another client); DNS (udp/tcp 53, DoT 853) may go only to
//! the configured resolvers, and every other DNS packet is dropped and counted.

use std::collections::HashMap;
use std::fs::File;
use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, UdpSocket};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use boringtun::noise::handshake::parse_handshake_anon;
use boringtun::noise::{Packet, Tunn, TunnResult};
use boringtun::x25519::{PublicKey, StaticSecret};
use ipnet::Ipv4Net;

use crate::users::{parse_key, User};

const BUF: usize = 65_535 + 256;

pub struct Peer {
    pub user: User,
    key: [u8; 32],
    slot: u32,
    tunn: Tunn,
    endpoint: Option<(usize, SocketAddr)>,
    /// Last time this peer sent a data packet (not a keepalive) or handshook.
    last_active: Instant,
    pub dropped_spoofed: u64,
    pub dropped_policy: u64,
    /// DNS packets to an address that is not one of the resolvers.
    pub dropped_dns: u64,
}

#[derive(Default)]
pub struct Peers {
    by_slot: HashMap<u32, Peer>,
    by_key: HashMap<[u8; 32], u32>,
    by_addr: HashMap<Ipv4Addr, u32>,
    next_slot: u32,
}

pub struct Engine {
    secret: StaticSecret,
    public: PublicKey,
    pub gateway: Ipv4Addr,
    pub pool: Ipv4Net,
    pub idle: Duration,
    peers: Mutex<Peers>,
    socks: Vec<UdpSocket>,
    tun: File,
    service: String,
    /// The resolvers tunnel clients may send DNS to.
    dns: std::sync::RwLock<Vec<Ipv4Addr>>,
}

/// Whether boringtun's answer is a cookie reply (message type 3).
fn is_cookie_reply(pkt: &[u8]) -> bool {
    matches!(
        Tunn::parse_incoming_packet(pkt),
        Ok(Packet::PacketCookieReply(_))
    )
}

fn new_tunn(secret: &StaticSecret, key: [u8; 32], slot: u32) -> Tunn {
    Tunn::new(secret.clone(), PublicKey::from(key), None, None, slot, None)
}

impl Engine {
    pub fn new(
        secret: StaticSecret,
        gateway: Ipv4Addr,
        pool: Ipv4Net,
        idle: Duration,
        socks: Vec<UdpSocket>,
        tun: File,
        service: &str,
    ) -> Self {
        let public = PublicKey::from(&secret);
        Self {
            secret,
            public,
            gateway,
            pool,
            idle,
            peers: Mutex::new(Peers {
                next_slot: 1,
                ..Default::default()
            }),
            socks,
            tun,
            service: service.into(),
            dns: std::sync::RwLock::new(Vec::new()),
        }
    }

    /// Sets the resolvers DNS may go to (the users' allowed networks must
    /// include them: see `users::effective_allowed`).
    pub fn set_dns(&self, dns: &[Ipv4Addr]) {
        *self.dns.write().unwrap_or_else(|p| p.into_inner()) = dns.to_vec();
    }

    /// DNS packets dropped across all peers (for `vpn_status`).
    pub fn dns_dropped(&self) -> u64 {
        self.lock().by_slot.values().map(|p| p.dropped_dns).sum()
    }

    fn lock(&self) -> MutexGuard<'_, Peers> {
        self.peers.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Adds or replaces a user's peer (a replaced key loses its session).
    pub fn upsert(&self, user: &User) -> anyhow::Result<()> {
        let key = parse_key(&user.public_key)?;
        let mut p = self.lock();
        if let Some(slot) = p.by_key.get(&key).copied() {
            let old_addr = p.by_slot[&slot].user.address;
            p.by_addr.remove(&old_addr);
            p.by_addr.insert(user.address, slot);
            p.by_slot.get_mut(&slot).unwrap().user = user.clone();
            return Ok(());
        }
        if let Some(old) = p
            .by_slot
            .values()
            .find(|x| x.user.name == user.name)
            .map(|x| x.key)
        {
            drop(p);
            self.remove_key(&old);
            p = self.lock();
        }
        let slot = p.next_slot;
        p.next_slot = (p.next_slot % 0x00ff_ffff) + 1;
        p.by_key.insert(key, slot);
        p.by_addr.insert(user.address, slot);
        let peer = Peer {
            user: user.clone(),
            key,
            slot,
            tunn: new_tunn(&self.secret, key, slot),
            endpoint: None,
            last_active: Instant::now(),
            dropped_spoofed: 0,
            dropped_policy: 0,
            dropped_dns: 0,
        };
        p.by_slot.insert(slot, peer);
        Ok(())
    }

    /// Drops the peer and its live session at once.
    pub fn remove_key(&self, key: &[u8; 32]) -> bool {
        let mut p = self.lock();
        let Some(slot) = p.by_key.remove(key) else {
            return false;
        };
        if let Some(peer) = p.by_slot.remove(&slot) {
            p.by_addr.remove(&peer.user.address);
        }
        true
    }

    pub fn status(&self) -> Vec<serde_json::Value> {
        let p = self.lock();
        let mut out: Vec<_> = p
            .by_slot
            .values()
            .map(|peer| {
                let (hs, tx, rx, _, _) = peer.tunn.stats();
                serde_json::json!({
                    "name": peer.user.name,
                    "address": peer.user.address.to_string(),
                    "allowed": peer.user.allowed.iter().map(|n| n.to_string()).collect::<Vec<_>>(),
                    "session": hs.is_some(),
                    "handshake_age_secs": hs.map(|d| d.as_secs()),
                    "idle_secs": peer.last_active.elapsed().as_secs(),
                    "endpoint": peer.endpoint.map(|(_, a)| a.to_string()),
                    "tx_bytes": tx,
                    "rx_bytes": rx,
                    "dropped_spoofed": peer.dropped_spoofed,
                    "dropped_policy": peer.dropped_policy,
                    "dropped_dns": peer.dropped_dns,
                })
            })
            .collect();
        out.sort_by(|a, b| a["name"].as_str().cmp(&b["name"].as_str()));
        out
    }

    /// Whether a decrypted packet from `peer` may go to the kernel.
    fn inner_allowed(&self, peer: &Peer, pkt: &[u8]) -> Result<(), &'static str> {
        if pkt.len() < 20 || pkt[0] >> 4 != 4 {
            return Err("policy");
        }
        let src = Ipv4Addr::new(pkt[12], pkt[13], pkt[14], pkt[15]);
        let dst = Ipv4Addr::new(pkt[16], pkt[17], pkt[18], pkt[19]);
        if src != peer.user.address {
            return Err("spoofed");
        }
        if is_dns(pkt)
            && !self
                .dns
                .read()
                .unwrap_or_else(|p| p.into_inner())
                .contains(&dst)
        {
            return Err("dns");
        }
        if dst == self.gateway {
            return Ok(());
        }
        if self.pool.contains(&dst) {
            return Err("policy");
        }
        if peer.user.allowed.iter().any(|n| n.contains(&dst)) {
            Ok(())
        } else {
            Err("policy")
        }
    }
}

/// A UDP or TCP packet (first fragment) to a DNS port (53, DoT 853).
fn is_dns(pkt: &[u8]) -> bool {
    let ihl = usize::from(pkt[0] & 0x0f) * 4;
    let proto = pkt[9];
    let frag_offset = u16::from_be_bytes([pkt[6], pkt[7]]) & 0x1fff;
    if (proto != 6 && proto != 17) || frag_offset != 0 || pkt.len() < ihl + 4 {
        return false;
    }
    let dport = u16::from_be_bytes([pkt[ihl + 2], pkt[ihl + 3]]);
    crate::users::DNS_PORTS.contains(&dport)
}

impl Engine {
    fn send(&self, ep: (usize, SocketAddr), data: &[u8]) {
        if let Some(s) = self.socks.get(ep.0) {
            let _ = s.send_to(data, ep.1);
        }
    }

    /// One datagram from socket `idx`.
    ///
    /// The peer's endpoint moves to `src` only once boringtun authenticated
    /// the datagram: a data packet (keepalives too), or a handshake init or
    /// response it accepted. A cookie reply (what a peer under handshake load
    /// answers before checking anything but mac1) goes back to `src` and
    /// changes nothing, as in WireGuard itself.
    pub fn on_datagram(&self, idx: usize, src: SocketAddr, data: &[u8], out: &mut [u8]) {
        let (slot, is_data) = match Tunn::parse_incoming_packet(data) {
            Ok(Packet::HandshakeInit(ref init)) => {
                match parse_handshake_anon(&self.secret, &self.public, init) {
                    Ok(half) => match self.lock().by_key.get(&half.peer_static_public) {
                        Some(s) => (*s, false),
                        None => return,
                    },
                    Err(_) => return,
                }
            }
            Ok(Packet::HandshakeResponse(p)) => (p.receiver_idx >> 8, false),
            Ok(Packet::PacketCookieReply(p)) => (p.receiver_idx >> 8, false),
            Ok(Packet::PacketData(p)) => (p.receiver_idx >> 8, true),
            Err(_) => return,
        };
        let mut guard = self.lock();
        let Some(peer) = guard.by_slot.get_mut(&slot) else {
            return;
        };
        let had_session = peer.tunn.stats().0.is_some();
        let mut authenticated = false;
        let mut first = true;
        loop {
            let input: &[u8] = if first { data } else { &[] };
            let res = peer.tunn.decapsulate(Some(src.ip()), input, out);
            let was_first = std::mem::replace(&mut first, false);
            match res {
                TunnResult::Done => {
                    // a keepalive: decrypted, so authenticated
                    authenticated |= was_first && is_data;
                    break;
                }
                TunnResult::Err(_) => break,
                TunnResult::WriteToNetwork(pkt) if was_first && is_cookie_reply(pkt) => {
                    self.send((idx, src), pkt);
                    return;
                }
                TunnResult::WriteToNetwork(pkt) => {
                    // a handshake response or keepalive for an accepted
                    // handshake message, then any queued packets
                    authenticated = true;
                    self.send((idx, src), pkt);
                    continue;
                }
                TunnResult::WriteToTunnelV4(pkt, _) => {
                    authenticated = true;
                    match self.inner_allowed(peer, pkt) {
                        Ok(()) => {
                            peer.last_active = Instant::now();
                            let _ = (&self.tun).write(pkt);
                        }
                        Err("spoofed") => peer.dropped_spoofed += 1,
                        Err("dns") => peer.dropped_dns += 1,
                        Err(_) => peer.dropped_policy += 1,
                    }
                    break;
                }
                TunnResult::WriteToTunnelV6(..) => {
                    authenticated = true;
                    peer.dropped_policy += 1;
                    break;
                }
            }
        }
        if authenticated {
            peer.endpoint = Some((idx, src));
        }
        if !had_session && peer.tunn.stats().0.is_some() {
            peer.last_active = Instant::now();
            let name = peer.user.name.clone();
            let addr = peer.user.address;
            drop(guard);
            gwos_core::emit(
                &gwos_core::Event::new(&self.service, "vpn.handshake")
                    .field("user", name)
                    .field("address", addr.to_string())
                    .field("endpoint", src.to_string()),
            );
        }
    }

    /// One packet read from the TUN device.
    pub fn on_tun(&self, pkt: &[u8], out: &mut [u8]) {
        let Some(IpAddr::V4(dst)) = Tunn::dst_address(pkt) else {
            return;
        };
        let mut guard = self.lock();
        let Some(slot) = guard.by_addr.get(&dst).copied() else {
            return;
        };
        let Some(peer) = guard.by_slot.get_mut(&slot) else {
            return;
        };
        if let TunnResult::WriteToNetwork(p) = peer.tunn.encapsulate(pkt, out) {
            if let Some(ep) = peer.endpoint {
                self.send(ep, p);
            }
        }
    }

    /// Timers and idle teardown; call a few times a second.
    pub fn tick(&self, out: &mut [u8]) {
        let mut guard = self.lock();
        let mut torn = Vec::new();
        for peer in guard.by_slot.values_mut() {
            if peer.tunn.stats().0.is_some() && peer.last_active.elapsed() >= self.idle {
                peer.tunn = new_tunn(&self.secret, peer.key, peer.slot);
                peer.endpoint = None;
                torn.push(peer.user.name.clone());
                continue;
            }
            if let TunnResult::WriteToNetwork(p) = peer.tunn.update_timers(out) {
                if let Some(ep) = peer.endpoint {
                    self.send(ep, p);
                }
            }
        }
        drop(guard);
        for name in torn {
            gwos_core::emit(
                &gwos_core::Event::new(&self.service, "vpn.idle_teardown").field("user", name),
            );
        }
    }

    /// Starts the data-plane threads; they run for the life of the process.
    pub fn start(self: &Arc<Self>) -> anyhow::Result<()> {
        for idx in 0..self.socks.len() {
            let me = self.clone();
            std::thread::Builder::new()
                .name(format!("vpn-udp{idx}"))
                .spawn(move || {
                    let mut buf = vec![0u8; BUF];
                    let mut out = vec![0u8; BUF];
                    loop {
                        match me.socks[idx].recv_from(&mut buf) {
                            Ok((n, src)) => me.on_datagram(idx, src, &buf[..n], &mut out),
                            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                            Err(e) => {
                                eprintln!("vpn: udp socket {idx}: {e}");
                                std::thread::sleep(Duration::from_millis(50));
                            }
                        }
                    }
                })?;
        }
        let me = self.clone();
        std::thread::Builder::new()
            .name("vpn-tun".into())
            .spawn(move || {
                let mut buf = vec![0u8; BUF];
                let mut out = vec![0u8; BUF];
                loop {
                    match (&me.tun).read(&mut buf) {
                        Ok(n) => me.on_tun(&buf[..n], &mut out),
                        Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                        Err(e) => {
                            eprintln!("vpn: tun read: {e}");
                            std::thread::sleep(Duration::from_millis(50));
                        }
                    }
                }
            })?;
        let me = self.clone();
        std::thread::Builder::new()
            .name("vpn-timers".into())
            .spawn(move || {
                let mut out = vec![0u8; BUF];
                loop {
                    std::thread::sleep(Duration::from_millis(250));
                    me.tick(&mut out);
                }
            })?;
        Ok(())
    }
}

#[cfg(test)]
#[path = "engine_tests.rs"]
mod tests;
