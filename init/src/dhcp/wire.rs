//! DHCP messages on the wire, through `dhcproto`: the requests the client
//! sends and the replies it accepts. A reply is accepted only when it is a
//! BOOTREPLY for our transaction id and hardware address with a known
//! message type; an OFFER or ACK must carry a server identifier, an address
//! and a subnet mask, and an ACK a lease time of at least
//! [`MIN_LEASE_SECS`]. Anything else is an error naming what was wrong.

use std::net::Ipv4Addr;

use dhcproto::v4::{self, DhcpOption, MessageType, OptionCode};
use dhcproto::{Decodable, Decoder, Encodable, Encoder};
use ipnet::Ipv4Net;

use super::lease::{Lease, MIN_LEASE_SECS};

/// What a request is for: it decides ciaddr and options 50/54 (RFC 2131 table 5).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Request {
    Discover,
    /// SELECTING: requested address and the chosen server, broadcast.
    Select {
        address: Ipv4Addr,
        server: Ipv4Addr,
    },
    /// INIT-REBOOT: requested address, no server id, broadcast.
    Reboot {
        address: Ipv4Addr,
    },
    /// RENEWING (unicast) or REBINDING (broadcast): ciaddr only.
    Extend {
        address: Ipv4Addr,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Offer,
    Ack,
    Nak,
}

/// A reply that passed every check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    pub kind: Kind,
    pub xid: u32,
    pub address: Ipv4Addr,
    pub server: Ipv4Addr,
    pub prefix: u8,
    pub routers: Vec<Ipv4Addr>,
    pub classless_routes: Vec<(Ipv4Net, Ipv4Addr)>,
    pub dns: Vec<Ipv4Addr>,
    pub ntp: Vec<Ipv4Addr>,
    pub lease_secs: u32,
    pub t1: Option<u32>,
    pub t2: Option<u32>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum WireError {
    #[error("not a DHCP message: {0}")]
    Decode(String),
    #[error("not a BOOTREPLY")]
    NotReply,
    #[error("transaction id {got:#x}, expected {want:#x}")]
    Xid { got: u32, want: u32 },
    #[error("reply for another hardware address")]
    Chaddr,
    #[error("no or unknown DHCP message type")]
    MessageType,
    #[error("{0} has no {1}")]
    Missing(&'static str, &'static str),
    #[error("subnet mask {0} is not a prefix")]
    Mask(Ipv4Addr),
    #[error("lease of {0} s is shorter than {MIN_LEASE_SECS} s")]
    ShortLease(u32),
}

const PARAMS: [OptionCode; 8] = [
    OptionCode::SubnetMask,
    OptionCode::Router,
    OptionCode::DomainNameServer,
    OptionCode::NtpServers,
    OptionCode::AddressLeaseTime,
    OptionCode::Renewal,
    OptionCode::Rebinding,
    OptionCode::ClasslessStaticRoute,
];

/// Encodes a request for transaction `xid` from hardware address `mac`.
pub fn request(req: Request, xid: u32, mac: [u8; 6]) -> Vec<u8> {
    let mut m = v4::Message::default();
    m.set_xid(xid).set_chaddr(&mac);
    let ty = match req {
        Request::Discover => MessageType::Discover,
        _ => MessageType::Request,
    };
    let opts = m.opts_mut();
    opts.insert(DhcpOption::MessageType(ty));
    let mut client_id = vec![1u8];
    client_id.extend_from_slice(&mac);
    opts.insert(DhcpOption::ClientIdentifier(client_id));
    opts.insert(DhcpOption::ParameterRequestList(PARAMS.to_vec()));
    opts.insert(DhcpOption::MaxMessageSize(1500));
    match req {
        Request::Discover => {}
        Request::Select { address, server } => {
            opts.insert(DhcpOption::RequestedIpAddress(address));
            opts.insert(DhcpOption::ServerIdentifier(server));
        }
        Request::Reboot { address } => {
            opts.insert(DhcpOption::RequestedIpAddress(address));
        }
        Request::Extend { address } => {
            m.set_ciaddr(address);
        }
    }
    let mut buf = Vec::with_capacity(300);
    m.encode(&mut Encoder::new(&mut buf))
        .expect("encoding a DHCP message into a Vec cannot fail");
    buf
}

fn prefix_of(mask: Ipv4Addr) -> Result<u8, WireError> {
    let m = u32::from(mask);
    let p = m.leading_ones();
    if m.checked_shl(p).unwrap_or(0) != 0 {
        return Err(WireError::Mask(mask));
    }
    Ok(p as u8)
}

/// Decodes and checks a reply to transaction `xid` of `mac`.
pub fn reply(bytes: &[u8], xid: u32, mac: [u8; 6]) -> Result<Reply, WireError> {
    let m = v4::Message::decode(&mut Decoder::new(bytes))
        .map_err(|e| WireError::Decode(e.to_string()))?;
    if m.opcode() != v4::Opcode::BootReply {
        return Err(WireError::NotReply);
    }
    if m.xid() != xid {
        return Err(WireError::Xid {
            got: m.xid(),
            want: xid,
        });
    }
    if m.chaddr().get(..6) != Some(&mac[..]) {
        return Err(WireError::Chaddr);
    }
    let kind = match m.opts().msg_type() {
        Some(MessageType::Offer) => Kind::Offer,
        Some(MessageType::Ack) => Kind::Ack,
        Some(MessageType::Nak) => Kind::Nak,
        _ => return Err(WireError::MessageType),
    };
    let o = m.opts();
    let name = match kind {
        Kind::Offer => "OFFER",
        Kind::Ack => "ACK",
        Kind::Nak => "NAK",
    };
    let server = match o.get(OptionCode::ServerIdentifier) {
        Some(DhcpOption::ServerIdentifier(s)) => *s,
        _ => return Err(WireError::Missing(name, "server identifier (option 54)")),
    };
    let mut r = Reply {
        kind,
        xid,
        address: m.yiaddr(),
        server,
        prefix: 0,
        routers: vec![],
        classless_routes: vec![],
        dns: vec![],
        ntp: vec![],
        lease_secs: 0,
        t1: None,
        t2: None,
    };
    if kind == Kind::Nak {
        return Ok(r);
    }
    if r.address.is_unspecified() || r.address.is_broadcast() {
        return Err(WireError::Missing(name, "address (yiaddr)"));
    }
    r.prefix = match o.get(OptionCode::SubnetMask) {
        Some(DhcpOption::SubnetMask(mask)) => prefix_of(*mask)?,
        _ => return Err(WireError::Missing(name, "subnet mask (option 1)")),
    };
    for opt in o.iter().map(|(_, v)| v) {
        match opt {
            DhcpOption::Router(v) => r.routers = v.clone(),
            DhcpOption::ClasslessStaticRoute(v) => r.classless_routes = v.clone(),
            DhcpOption::DomainNameServer(v) => r.dns = v.clone(),
            DhcpOption::NtpServers(v) => r.ntp = v.clone(),
            DhcpOption::AddressLeaseTime(s) => r.lease_secs = *s,
            DhcpOption::Renewal(s) => r.t1 = Some(*s),
            DhcpOption::Rebinding(s) => r.t2 = Some(*s),
            _ => {}
        }
    }
    if kind == Kind::Ack && r.lease_secs < MIN_LEASE_SECS {
        return Err(WireError::ShortLease(r.lease_secs));
    }
    Ok(r)
}

impl Reply {
    /// The lease an ACK grants, taken at unix time `now`.
    pub fn lease(&self, now_unix: u64) -> Lease {
        let (renew, rebind) = Lease::timers(self.lease_secs, self.t1, self.t2);
        Lease {
            address: self.address,
            prefix: self.prefix,
            server: self.server,
            routers: self.routers.clone(),
            classless_routes: self.classless_routes.clone(),
            dns: self.dns.clone(),
            ntp: self.ntp.clone(),
            lease_secs: self.lease_secs,
            renew_secs: renew,
            rebind_secs: rebind,
            taken_unix: now_unix,
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) const MAC: [u8; 6] = [0x52, 0x54, 0, 0x12, 0x34, 0x56];

    /// A server's reply, as a test fixture.
    pub(crate) fn server_reply(ty: MessageType, xid: u32, extra: Vec<DhcpOption>) -> Vec<u8> {
        let mut m = v4::Message::default();
        m.set_opcode(v4::Opcode::BootReply)
            .set_xid(xid)
            .set_chaddr(&MAC)
            .set_yiaddr(Ipv4Addr::new(10, 0, 2, 15));
        m.opts_mut().insert(DhcpOption::MessageType(ty));
        m.opts_mut()
            .insert(DhcpOption::ServerIdentifier(Ipv4Addr::new(10, 0, 2, 2)));
        m.opts_mut()
            .insert(DhcpOption::SubnetMask(Ipv4Addr::new(255, 255, 255, 0)));
        for o in extra {
            m.opts_mut().insert(o);
        }
        let mut b = vec![];
        m.encode(&mut Encoder::new(&mut b)).unwrap();
        b
    }

    #[test]
    fn ack_gives_a_lease_with_default_timers() {
        let b = server_reply(
            MessageType::Ack,
            7,
            vec![
                DhcpOption::AddressLeaseTime(3600),
                DhcpOption::Router(vec![Ipv4Addr::new(10, 0, 2, 2)]),
                DhcpOption::DomainNameServer(vec![Ipv4Addr::new(10, 0, 2, 3)]),
            ],
        );
        let r = reply(&b, 7, MAC).unwrap();
        assert_eq!((r.kind, r.prefix, r.lease_secs), (Kind::Ack, 24, 3600));
        let l = r.lease(5);
        assert_eq!((l.renew_secs, l.rebind_secs, l.taken_unix), (1800, 3150, 5));
        assert_eq!(l.dns, vec![Ipv4Addr::new(10, 0, 2, 3)]);
    }

    #[test]
    fn hostile_replies_are_refused_by_cause() {
        let ack = server_reply(
            MessageType::Ack,
            7,
            vec![DhcpOption::AddressLeaseTime(3600)],
        );
        assert_eq!(reply(&ack, 8, MAC), Err(WireError::Xid { got: 7, want: 8 }));
        assert_eq!(reply(&ack, 7, [1; 6]), Err(WireError::Chaddr));
        let short = server_reply(MessageType::Ack, 7, vec![DhcpOption::AddressLeaseTime(1)]);
        assert_eq!(reply(&short, 7, MAC), Err(WireError::ShortLease(1)));
        let bad_mask = server_reply(
            MessageType::Offer,
            7,
            vec![DhcpOption::SubnetMask(Ipv4Addr::new(255, 0, 255, 0))],
        );
        assert_eq!(
            reply(&bad_mask, 7, MAC),
            Err(WireError::Mask(Ipv4Addr::new(255, 0, 255, 0)))
        );
        assert!(matches!(
            reply(&[1, 2, 3], 7, MAC),
            Err(WireError::Decode(_))
        ));
        let ours = request(Request::Discover, 7, MAC);
        assert_eq!(reply(&ours, 7, MAC), Err(WireError::NotReply));
    }

    #[test]
    fn requests_carry_the_fields_of_their_state() {
        let sel = request(
            Request::Select {
                address: Ipv4Addr::new(10, 0, 2, 15),
                server: Ipv4Addr::new(10, 0, 2, 2),
            },
            9,
            MAC,
        );
        let m = v4::Message::decode(&mut Decoder::new(&sel)).unwrap();
        assert_eq!(m.opts().msg_type(), Some(MessageType::Request));
        assert!(m.opts().get(OptionCode::ServerIdentifier).is_some());
        assert!(m.ciaddr().is_unspecified());
        let ext = request(
            Request::Extend {
                address: Ipv4Addr::new(10, 0, 2, 15),
            },
            9,
            MAC,
        );
        let m = v4::Message::decode(&mut Decoder::new(&ext)).unwrap();
        assert_eq!(m.ciaddr(), Ipv4Addr::new(10, 0, 2, 15));
        assert!(m.opts().get(OptionCode::ServerIdentifier).is_none());
        assert!(m.opts().get(OptionCode::RequestedIpAddress).is_none());
    }
}
