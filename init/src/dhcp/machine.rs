//! The RFC 2131 client state machine, pure: it takes replies and timer ticks
//! with the time as arguments and returns what to send and what to apply, so
//! every transition is unit-tested without a network (CONVENTIONS "Tests").
//!
//! ```text
//! INIT-REBOOT --REQUEST(bcast)--> REBOOTING --ACK--> BOUND   (NAK/timeout: INIT)
//! INIT --DISCOVER--> SELECTING --OFFER/REQUEST--> REQUESTING --ACK--> BOUND
//! BOUND --T1: REQUEST(unicast to server)--> RENEWING --ACK--> BOUND
//! RENEWING --T2: REQUEST(bcast)--> REBINDING --ACK (any server)--> BOUND
//! REBINDING --lease end--> remove address and routes, INIT
//! NAK in REQUESTING/RENEWING/REBINDING: remove, INIT
//! ```

use std::net::Ipv4Addr;

use super::lease::Lease;
use super::wire::{self, Kind, Reply, Request};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    Init,
    Selecting,
    Requesting,
    Rebooting,
    Bound,
    Renewing,
    Rebinding,
}

/// An effect for the driver to carry out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Send to 255.255.255.255:67 from 0.0.0.0:68 (packet socket).
    Broadcast(Vec<u8>),
    /// Send to `server`:67 from the leased address (UDP socket).
    Unicast(Ipv4Addr, Vec<u8>),
    /// Install (or refresh) the lease's address and routes.
    Apply(Lease),
    /// Remove the lease's address and routes.
    Remove(Lease),
    /// No server answered for `FALLBACK_AFTER_MS`: use the static fallback
    /// (once per INIT cycle), while the machine keeps trying.
    Fallback,
}

/// Retransmission delays (RFC 2131 §4.1: 4 s doubling to 64 s).
const BACKOFF_MS: [u64; 5] = [4_000, 8_000, 16_000, 32_000, 64_000];
/// Requests sent in REQUESTING/REBOOTING before starting over.
const MAX_REQUESTS: u32 = 4;
/// Time without a lease after which the static fallback applies.
pub const FALLBACK_AFTER_MS: u64 = 10_000;
/// Shortest wait between renew/rebind retransmissions (RFC: 60 s; short
/// leases in tests need less).
const MIN_EXTEND_RETRY_MS: u64 = 1_000;

pub struct Machine {
    mac: [u8; 6],
    state: State,
    xid: u32,
    tries: u32,
    deadline_ms: u64,
    /// The offer being requested (SELECTING → REQUESTING).
    offer: Option<Reply>,
    lease: Option<Lease>,
    bound_ms: u64,
    init_since_ms: u64,
    fell_back: bool,
}

impl Machine {
    /// A machine for `mac`; `xid_seed` comes from the OS RNG in production.
    pub fn new(mac: [u8; 6], xid_seed: u32) -> Self {
        Self {
            mac,
            state: State::Init,
            xid: xid_seed,
            tries: 0,
            deadline_ms: 0,
            offer: None,
            lease: None,
            bound_ms: 0,
            init_since_ms: 0,
            fell_back: false,
        }
    }

    pub fn state(&self) -> State {
        self.state
    }

    pub fn lease(&self) -> Option<&Lease> {
        self.lease.as_ref()
    }

    /// When the driver must call [`Machine::on_timer`] next.
    pub fn deadline_ms(&self) -> u64 {
        self.deadline_ms
    }

    fn next_xid(&mut self) -> u32 {
        self.xid = self.xid.wrapping_mul(1_103_515_245).wrapping_add(12_345);
        self.xid
    }

    fn backoff(&self) -> u64 {
        let i = (self.tries as usize).min(BACKOFF_MS.len() - 1);
        // fixed per-transaction jitter in [-1 s, +1 s] (RFC 2131 §4.1)
        BACKOFF_MS[i] - 1_000 + u64::from(self.xid % 2_001)
    }

    /// Starts: INIT-REBOOT with a still-valid last lease, else INIT.
    pub fn start(&mut self, now_ms: u64, now_unix: u64, last: Option<Lease>) -> Vec<Action> {
        match last.filter(|l| l.valid_at(now_unix)) {
            Some(l) => {
                self.state = State::Rebooting;
                self.tries = 0;
                let xid = self.next_xid();
                self.offer = None;
                self.lease = None;
                self.deadline_ms = now_ms + self.backoff();
                self.init_since_ms = now_ms;
                vec![Action::Broadcast(wire::request(
                    Request::Reboot { address: l.address },
                    xid,
                    self.mac,
                ))]
            }
            None => self.restart(now_ms),
        }
    }

    /// INIT: a fresh DISCOVER.
    fn restart(&mut self, now_ms: u64) -> Vec<Action> {
        self.state = State::Selecting;
        self.tries = 0;
        self.offer = None;
        self.init_since_ms = now_ms;
        self.fell_back = false;
        let xid = self.next_xid();
        self.deadline_ms = now_ms + self.backoff();
        vec![Action::Broadcast(wire::request(
            Request::Discover,
            xid,
            self.mac,
        ))]
    }

    /// Leaves a lease: its address and routes go, then INIT.
    fn drop_lease(&mut self, now_ms: u64) -> Vec<Action> {
        let mut a: Vec<Action> = self.lease.take().map(Action::Remove).into_iter().collect();
        a.extend(self.restart(now_ms));
        a
    }

    fn bind(&mut self, now_ms: u64, now_unix: u64, r: &Reply) -> Vec<Action> {
        let lease = r.lease(now_unix);
        self.state = State::Bound;
        self.bound_ms = now_ms;
        self.tries = 0;
        self.deadline_ms = now_ms + u64::from(lease.renew_secs) * 1000;
        self.lease = Some(lease.clone());
        self.offer = None;
        vec![Action::Apply(lease)]
    }

    /// One decoded packet from the socket.
    pub fn on_packet(&mut self, now_ms: u64, now_unix: u64, bytes: &[u8]) -> Vec<Action> {
        if matches!(self.state, State::Init | State::Bound) {
            return vec![];
        }
        let Ok(r) = wire::reply(bytes, self.xid, self.mac) else {
            return vec![];
        };
        match (self.state, r.kind) {
            (State::Selecting, Kind::Offer) => {
                self.state = State::Requesting;
                self.tries = 0;
                self.deadline_ms = now_ms + self.backoff();
                let req = Request::Select {
                    address: r.address,
                    server: r.server,
                };
                self.offer = Some(r);
                vec![Action::Broadcast(wire::request(req, self.xid, self.mac))]
            }
            (State::Requesting, Kind::Ack) => {
                let chosen = self.offer.as_ref().map(|o| o.server);
                if chosen.is_some_and(|s| s != r.server) {
                    return vec![]; // another server's ACK for our xid: not ours to take
                }
                self.bind(now_ms, now_unix, &r)
            }
            (State::Rebooting | State::Renewing | State::Rebinding, Kind::Ack) => {
                if self.state == State::Renewing
                    && self.lease.as_ref().is_some_and(|l| l.server != r.server)
                {
                    return vec![];
                }
                let old = self.lease.take();
                let mut a = vec![];
                if let Some(o) = old.filter(|o| o.address != r.address || o.prefix != r.prefix) {
                    a.push(Action::Remove(o));
                }
                a.extend(self.bind(now_ms, now_unix, &r));
                a
            }
            (
                State::Requesting | State::Rebooting | State::Renewing | State::Rebinding,
                Kind::Nak,
            ) => self.drop_lease(now_ms),
            _ => vec![],
        }
    }

    /// The deadline passed: retransmit, move on to RENEWING/REBINDING, or
    /// give the lease up.
    pub fn on_timer(&mut self, now_ms: u64) -> Vec<Action> {
        if now_ms < self.deadline_ms {
            return vec![];
        }
        match self.state {
            State::Init => self.restart(now_ms),
            State::Selecting => {
                self.tries += 1;
                let xid = self.next_xid();
                self.deadline_ms = now_ms + self.backoff();
                let mut a = vec![Action::Broadcast(wire::request(
                    Request::Discover,
                    xid,
                    self.mac,
                ))];
                if !self.fell_back && now_ms >= self.init_since_ms + FALLBACK_AFTER_MS {
                    self.fell_back = true;
                    a.insert(0, Action::Fallback);
                }
                a
            }
            State::Requesting | State::Rebooting => {
                self.tries += 1;
                if self.tries >= MAX_REQUESTS {
                    return self.restart(now_ms);
                }
                self.deadline_ms = now_ms + self.backoff();
                let req = match (&self.offer, self.state) {
                    (Some(o), State::Requesting) => Request::Select {
                        address: o.address,
                        server: o.server,
                    },
                    _ => return self.restart(now_ms),
                };
                vec![Action::Broadcast(wire::request(req, self.xid, self.mac))]
            }
            State::Bound | State::Renewing | State::Rebinding => self.extend(now_ms),
        }
    }

    fn extend(&mut self, now_ms: u64) -> Vec<Action> {
        let Some(l) = self.lease.clone() else {
            return self.restart(now_ms);
        };
        let at = |secs: u32| self.bound_ms + u64::from(secs) * 1000;
        let (t2, end) = (at(l.rebind_secs), at(l.lease_secs));
        if now_ms >= end {
            return self.drop_lease(now_ms);
        }
        let rebinding = now_ms >= t2;
        if self.state == State::Bound || (rebinding && self.state == State::Renewing) {
            self.next_xid();
        }
        self.state = if rebinding {
            State::Rebinding
        } else {
            State::Renewing
        };
        // RFC 2131 §4.4.5: wait half the time left to T2 (or to the end), at least a minimum
        let until = if rebinding { end } else { t2 };
        let wait = ((until - now_ms) / 2).max(MIN_EXTEND_RETRY_MS);
        self.deadline_ms = (now_ms + wait).min(until);
        let msg = wire::request(Request::Extend { address: l.address }, self.xid, self.mac);
        if rebinding {
            vec![Action::Broadcast(msg)]
        } else {
            vec![Action::Unicast(l.server, msg)]
        }
    }
}

#[cfg(test)]
mod tests {
    use dhcproto::v4::{DhcpOption, MessageType};

    use super::*;
    use crate::dhcp::wire::tests::{server_reply, MAC};

    fn sent_xid(a: &Action) -> u32 {
        let b = match a {
            Action::Broadcast(b) | Action::Unicast(_, b) => b,
            other => panic!("not a send: {other:?}"),
        };
        u32::from_be_bytes(b[4..8].try_into().unwrap())
    }

    fn ack(xid: u32, lease: u32, server: Ipv4Addr) -> Vec<u8> {
        let mut b = server_reply(
            MessageType::Ack,
            xid,
            vec![DhcpOption::AddressLeaseTime(lease)],
        );
        // server identifier: rewrite option 54 through a fresh reply
        if server != Ipv4Addr::new(10, 0, 2, 2) {
            b = server_reply(
                MessageType::Ack,
                xid,
                vec![
                    DhcpOption::AddressLeaseTime(lease),
                    DhcpOption::ServerIdentifier(server),
                ],
            );
        }
        b
    }

    /// DORA: DISCOVER → OFFER → REQUEST → ACK → BOUND, T1 at half the lease.
    fn bound(m: &mut Machine, lease: u32) -> Lease {
        let a = m.start(0, 1000, None);
        let xid = sent_xid(&a[0]);
        let a = m.on_packet(10, 1000, &server_reply(MessageType::Offer, xid, vec![]));
        assert_eq!(m.state(), State::Requesting);
        assert_eq!(sent_xid(&a[0]), xid);
        let a = m.on_packet(20, 1000, &ack(xid, lease, Ipv4Addr::new(10, 0, 2, 2)));
        assert_eq!(m.state(), State::Bound);
        match &a[..] {
            [Action::Apply(l)] => l.clone(),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn dora_then_renew_by_unicast_at_t1() {
        let mut m = Machine::new(MAC, 42);
        let l = bound(&mut m, 100);
        assert_eq!(m.deadline_ms(), 20 + 50_000);
        assert_eq!(m.on_timer(20 + 49_999), vec![]);
        let a = m.on_timer(20 + 50_000);
        assert_eq!(m.state(), State::Renewing);
        assert!(
            matches!(&a[..], [Action::Unicast(s, _)] if *s == l.server),
            "{a:?}"
        );
        let xid = sent_xid(&a[0]);
        let a = m.on_packet(20 + 50_100, 1050, &ack(xid, 100, l.server));
        assert_eq!(m.state(), State::Bound);
        assert!(matches!(&a[..], [Action::Apply(_)]), "{a:?}");
    }

    #[test]
    fn rebind_at_t2_accepts_another_server() {
        let mut m = Machine::new(MAC, 7);
        bound(&mut m, 100);
        m.on_timer(20 + 50_000); // RENEWING, unanswered
        let a = m.on_timer(20 + 87_500);
        assert_eq!(m.state(), State::Rebinding);
        assert!(matches!(&a[..], [Action::Broadcast(_)]), "{a:?}");
        let xid = sent_xid(&a[0]);
        let other = Ipv4Addr::new(10, 0, 2, 9);
        let a = m.on_packet(20 + 88_000, 1088, &ack(xid, 100, other));
        assert_eq!(m.state(), State::Bound);
        assert_eq!(m.lease().unwrap().server, other);
        assert!(matches!(&a[..], [Action::Apply(_)]), "{a:?}");
    }

    #[test]
    fn lease_end_removes_address_and_restarts() {
        let mut m = Machine::new(MAC, 9);
        let l = bound(&mut m, 100);
        m.on_timer(20 + 50_000);
        m.on_timer(20 + 87_500);
        let mut t = 20 + 87_500;
        let mut a = vec![];
        while m.state() == State::Rebinding {
            t = m.deadline_ms();
            a = m.on_timer(t);
        }
        assert!(t <= 20 + 100_000, "kept the lease past its end: {t}");
        assert_eq!(a[0], Action::Remove(l));
        assert_eq!(m.state(), State::Selecting);
    }

    #[test]
    fn nak_while_requesting_or_renewing_starts_over() {
        let mut m = Machine::new(MAC, 3);
        let a = m.start(0, 0, None);
        let xid = sent_xid(&a[0]);
        m.on_packet(1, 0, &server_reply(MessageType::Offer, xid, vec![]));
        let a = m.on_packet(2, 0, &server_reply(MessageType::Nak, xid, vec![]));
        assert_eq!(m.state(), State::Selecting);
        assert!(matches!(&a[..], [Action::Broadcast(_)]));
        let l = bound(&mut Machine::new(MAC, 4), 100);
        let mut m = Machine::new(MAC, 4);
        bound(&mut m, 100);
        let a = m.on_timer(20 + 50_000);
        let a = m.on_packet(
            20 + 50_001,
            0,
            &server_reply(MessageType::Nak, sent_xid(&a[0]), vec![]),
        );
        assert_eq!(a[0], Action::Remove(l));
        assert_eq!(m.state(), State::Selecting);
    }

    #[test]
    fn init_reboot_requests_the_last_address() {
        let mut m = Machine::new(MAC, 5);
        let last = bound(&mut Machine::new(MAC, 5), 3600);
        let a = m.start(0, 1000 + 10, Some(last.clone()));
        assert_eq!(m.state(), State::Rebooting);
        let xid = sent_xid(&a[0]);
        let a = m.on_packet(5, 1010, &ack(xid, 3600, last.server));
        assert_eq!(m.state(), State::Bound);
        assert!(matches!(&a[..], [Action::Apply(l)] if l.address == last.address));
        // an expired last lease is not used
        let mut m = Machine::new(MAC, 5);
        m.start(0, 1000 + 3600, Some(last));
        assert_eq!(m.state(), State::Selecting);
    }

    #[test]
    fn silence_backs_off_and_falls_back_once() {
        let mut m = Machine::new(MAC, 11);
        m.start(0, 0, None);
        let mut fallbacks = 0;
        let mut last = 0;
        for _ in 0..6 {
            let t = m.deadline_ms();
            assert!(t > last);
            let gap = t - last;
            last = t;
            let a = m.on_timer(t);
            fallbacks += a.iter().filter(|x| **x == Action::Fallback).count();
            assert!(gap <= 65_000, "{gap}");
        }
        assert_eq!(fallbacks, 1);
        assert_eq!(m.state(), State::Selecting);
    }

    #[test]
    fn replies_for_other_transactions_or_junk_are_ignored() {
        let mut m = Machine::new(MAC, 13);
        let a = m.start(0, 0, None);
        let xid = sent_xid(&a[0]);
        assert_eq!(
            m.on_packet(1, 0, &server_reply(MessageType::Offer, xid ^ 1, vec![])),
            vec![]
        );
        assert_eq!(m.on_packet(1, 0, &[0x60; 64]), vec![]);
        assert_eq!(m.state(), State::Selecting);
    }
}
