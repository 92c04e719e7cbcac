//! Builders for the few nf_tables expressions the gwos rules use.

use nftnl::nftnl_sys as sys;

use crate::nl::{Expr, Val};

pub(crate) const REG_VERDICT: u32 = 0;
pub(crate) const REG_1: u32 = 1;
/// 32-bit register n (NFT_REG32_00 + n); REG_1 overlaps REG32_00..03.
pub(crate) const fn reg32(n: u32) -> u32 {
    8 + n
}
const BASE_NETWORK: u32 = 1;
const BASE_TRANSPORT: u32 = 2;
const CMP_EQ: u32 = 0;
const CMP_NEQ: u32 = 1;
const META_IIFNAME: u32 = 6;
const META_OIFNAME: u32 = 7;
const META_SKUID: u32 = 10;
const META_NFPROTO: u32 = 15;
const META_L4PROTO: u32 = 16;
pub(crate) const NFPROTO_IPV4: u8 = 2;
pub(crate) const NFPROTO_IPV6: u8 = 10;
pub(crate) const CT_INVALID: u32 = 1;
pub(crate) const CT_ESTABLISHED: u32 = 2;
pub(crate) const CT_RELATED: u32 = 4;

fn e(name: &'static str, attrs: Vec<(u32, Val)>) -> Expr {
    Expr { name, attrs }
}

pub(crate) fn payload(base_network: bool, offset: u32, len: u32, dreg: u32) -> Expr {
    e(
        "payload",
        vec![
            (sys::NFTNL_EXPR_PAYLOAD_DREG, Val::U32(dreg)),
            (
                sys::NFTNL_EXPR_PAYLOAD_BASE,
                Val::U32(if base_network {
                    BASE_NETWORK
                } else {
                    BASE_TRANSPORT
                }),
            ),
            (sys::NFTNL_EXPR_PAYLOAD_OFFSET, Val::U32(offset)),
            (sys::NFTNL_EXPR_PAYLOAD_LEN, Val::U32(len)),
        ],
    )
}

fn meta(key: u32, dreg: u32) -> Expr {
    e(
        "meta",
        vec![
            (sys::NFTNL_EXPR_META_KEY, Val::U32(key)),
            (sys::NFTNL_EXPR_META_DREG, Val::U32(dreg)),
        ],
    )
}

pub(crate) fn cmp(eq: bool, data: Vec<u8>) -> Expr {
    e(
        "cmp",
        vec![
            (sys::NFTNL_EXPR_CMP_SREG, Val::U32(REG_1)),
            (
                sys::NFTNL_EXPR_CMP_OP,
                Val::U32(if eq { CMP_EQ } else { CMP_NEQ }),
            ),
            (sys::NFTNL_EXPR_CMP_DATA, Val::Bytes(data)),
        ],
    )
}

/// `meta nfproto ipv4|ipv6`
pub(crate) fn nfproto(p: u8) -> Vec<Expr> {
    vec![meta(META_NFPROTO, REG_1), cmp(true, vec![p])]
}

/// `meta l4proto N`
pub(crate) fn l4proto(p: u8) -> Vec<Expr> {
    vec![meta(META_L4PROTO, REG_1), cmp(true, vec![p])]
}

pub(crate) fn l4proto_into(dreg: u32) -> Expr {
    meta(META_L4PROTO, dreg)
}

/// `iifname "name"`
pub(crate) fn iifname(name: &str) -> Vec<Expr> {
    let mut d = name.as_bytes().to_vec();
    d.push(0);
    vec![meta(META_IIFNAME, REG_1), cmp(true, d)]
}

/// `oifname "name"` (`eq`) or `oifname != "name"`.
pub(crate) fn oifname(name: &str, eq: bool) -> Vec<Expr> {
    let mut d = name.as_bytes().to_vec();
    d.push(0);
    vec![meta(META_OIFNAME, REG_1), cmp(eq, d)]
}

/// `ip saddr NET` (`src`) or `ip daddr NET`, after `nfproto(NFPROTO_IPV4)`:
/// the address masked to the prefix and compared with the network; a /0
/// matches every IPv4 packet and needs no expression at all.
pub(crate) fn ipv4_net(src: bool, net: ipnet::Ipv4Net) -> Vec<Expr> {
    let net = net.trunc();
    if net.prefix_len() == 0 {
        return Vec::new();
    }
    let mut v = vec![payload(true, if src { 12 } else { 16 }, 4, REG_1)];
    if net.prefix_len() < 32 {
        v.push(e(
            "bitwise",
            vec![
                (sys::NFTNL_EXPR_BITWISE_SREG, Val::U32(REG_1)),
                (sys::NFTNL_EXPR_BITWISE_DREG, Val::U32(REG_1)),
                (sys::NFTNL_EXPR_BITWISE_LEN, Val::U32(4)),
                (
                    sys::NFTNL_EXPR_BITWISE_MASK,
                    Val::Bytes(net.netmask().octets().to_vec()),
                ),
                (sys::NFTNL_EXPR_BITWISE_XOR, Val::Bytes(vec![0; 4])),
            ],
        ));
    }
    v.push(cmp(true, net.network().octets().to_vec()));
    v
}

/// `ip daddr != ADDR`, after `nfproto(NFPROTO_IPV4)`.
pub(crate) fn ipv4_daddr_not(addr: std::net::Ipv4Addr) -> Vec<Expr> {
    vec![
        payload(true, 16, 4, REG_1),
        cmp(false, addr.octets().to_vec()),
    ]
}

/// `masquerade` (nat chains at the postrouting hook only).
pub(crate) fn masquerade() -> Expr {
    e("masq", vec![])
}

/// `meta skuid N`: the packet's local socket belongs to a process with
/// (fs)uid N. Packets without a socket or file (kernel-made RSTs and ICMP
/// errors, time-wait answers) never match.
pub(crate) fn skuid(uid: u32) -> Vec<Expr> {
    vec![
        meta(META_SKUID, REG_1),
        cmp(true, uid.to_ne_bytes().to_vec()),
    ]
}

/// `th sport N` (after an l4proto match).
pub(crate) fn sport(port: u16) -> Vec<Expr> {
    vec![
        payload(false, 0, 2, REG_1),
        cmp(true, port.to_be_bytes().to_vec()),
    ]
}

/// `th dport N` (after an l4proto match).
pub(crate) fn dport(port: u16) -> Vec<Expr> {
    vec![
        payload(false, 2, 2, REG_1),
        cmp(true, port.to_be_bytes().to_vec()),
    ]
}

/// First byte of the transport header (ICMP type) equals `t`.
pub(crate) fn icmp_type(t: u8) -> Vec<Expr> {
    vec![payload(false, 0, 1, REG_1), cmp(true, vec![t])]
}

/// `ct state & mask != 0`
pub(crate) fn ct_state(mask: u32) -> Vec<Expr> {
    vec![
        e(
            "ct",
            vec![
                (sys::NFTNL_EXPR_CT_KEY, Val::U32(0)),
                (sys::NFTNL_EXPR_CT_DREG, Val::U32(REG_1)),
            ],
        ),
        e(
            "bitwise",
            vec![
                (sys::NFTNL_EXPR_BITWISE_SREG, Val::U32(REG_1)),
                (sys::NFTNL_EXPR_BITWISE_DREG, Val::U32(REG_1)),
                (sys::NFTNL_EXPR_BITWISE_LEN, Val::U32(4)),
                (
                    sys::NFTNL_EXPR_BITWISE_MASK,
                    Val::Bytes(mask.to_ne_bytes().to_vec()),
                ),
                (sys::NFTNL_EXPR_BITWISE_XOR, Val::Bytes(vec![0; 4])),
            ],
        ),
        cmp(false, vec![0; 4]),
    ]
}

/// Lookup of register `sreg` in the named set (created in the same batch with `set_id`).
pub(crate) fn lookup(set: &str, set_id: u32, sreg: u32) -> Expr {
    e(
        "lookup",
        vec![
            (sys::NFTNL_EXPR_LOOKUP_SREG, Val::U32(sreg)),
            (sys::NFTNL_EXPR_LOOKUP_SET, Val::Str(set.into())),
            (sys::NFTNL_EXPR_LOOKUP_SET_ID, Val::U32(set_id)),
        ],
    )
}

/// `limit rate N/second burst N packets`
pub(crate) fn limit_per_sec(rate: u64) -> Expr {
    e(
        "limit",
        vec![
            (sys::NFTNL_EXPR_LIMIT_RATE, Val::U64(rate)),
            (sys::NFTNL_EXPR_LIMIT_UNIT, Val::U64(1)),
            (sys::NFTNL_EXPR_LIMIT_BURST, Val::U32(rate as u32)),
            (sys::NFTNL_EXPR_LIMIT_TYPE, Val::U32(0)),
            (sys::NFTNL_EXPR_LIMIT_FLAGS, Val::U32(0)),
        ],
    )
}

pub(crate) fn log(prefix: &str) -> Expr {
    e(
        "log",
        vec![(sys::NFTNL_EXPR_LOG_PREFIX, Val::Str(prefix.into()))],
    )
}

pub(crate) fn counter() -> Expr {
    e("counter", vec![])
}

pub(crate) fn accept() -> Expr {
    e(
        "immediate",
        vec![
            (sys::NFTNL_EXPR_IMM_DREG, Val::U32(REG_VERDICT)),
            (sys::NFTNL_EXPR_IMM_VERDICT, Val::U32(1)),
        ],
    )
}

pub(crate) fn drop() -> Expr {
    e(
        "immediate",
        vec![
            (sys::NFTNL_EXPR_IMM_DREG, Val::U32(REG_VERDICT)),
            (sys::NFTNL_EXPR_IMM_VERDICT, Val::U32(0)),
        ],
    )
}

pub(crate) fn jump(chain: &str) -> Expr {
    e(
        "immediate",
        vec![
            (sys::NFTNL_EXPR_IMM_DREG, Val::U32(REG_VERDICT)),
            (sys::NFTNL_EXPR_IMM_VERDICT, Val::U32((-3i32) as u32)),
            (sys::NFTNL_EXPR_IMM_CHAIN, Val::Str(chain.into())),
        ],
    )
}
