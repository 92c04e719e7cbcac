//! Raw nf_tables netlink through libnftnl (`nftnl::nftnl_sys`) and libmnl:
//! the safe `nftnl` crate cannot express set flags, timeouts, concatenated
//! keys or arbitrary registers, so this module builds those objects with the
//! C API. All `unsafe` of gwos-netfilter lives here.
//!
//! A [`Batch`] collects messages in one buffer between BATCH_BEGIN and
//! BATCH_END; [`Batch::commit`] sends it and reads one ack per message, so a
//! failure anywhere aborts the whole transaction and is reported.

use std::ffi::{c_char, c_void, CString};
use std::io;

use nftnl::nftnl_sys as sys;

pub const FAMILY_INET: u16 = libc::NFPROTO_INET as u16;
const BUF_SIZE: usize = 1 << 18;
const MAX_MSG: usize = 1 << 16;

pub struct Batch {
    buf: Vec<u8>,
    len: usize,
    seq: u32,
    msgs: u32,
}

fn cstr(s: &str) -> CString {
    CString::new(s).expect("no NUL in nftables names")
}

impl Batch {
    pub fn new() -> Self {
        let mut b = Batch {
            buf: vec![0u8; BUF_SIZE],
            len: 0,
            seq: 1,
            msgs: 0,
        };
        // SAFETY: the buffer has at least MAX_MSG free bytes at `len`; batch_begin writes one small header there.
        unsafe {
            let nlh = sys::nftnl_batch_begin(b.buf.as_mut_ptr().add(b.len) as *mut c_char, b.seq);
            b.advance(nlh);
        }
        b
    }

    /// Moves past the message the C code just wrote at `nlh`, and grows the
    /// buffer so at least MAX_MSG bytes stay free for the next one (`nlh`
    /// must not be used afterwards: the buffer may have moved).
    unsafe fn advance(&mut self, nlh: *mut libc::nlmsghdr) {
        // SAFETY: the caller guarantees `nlh` points at a header written inside `buf` at `len`.
        let l = unsafe { (*nlh).nlmsg_len } as usize;
        self.len += (l + 3) & !3;
        assert!(
            self.len <= self.buf.len(),
            "nftables message overran the batch buffer"
        );
        if self.len + MAX_MSG > self.buf.len() {
            self.buf.resize(self.buf.len() * 2, 0);
        }
        self.seq += 1;
    }

    fn hdr(&mut self, msg_type: i32, flags: i32) -> *mut libc::nlmsghdr {
        // SAFETY: at least MAX_MSG bytes are free at `len` (checked in advance); the header is 20 bytes.
        unsafe {
            sys::nftnl_nlmsg_build_hdr(
                self.buf.as_mut_ptr().add(self.len) as *mut c_char,
                msg_type as u16,
                FAMILY_INET,
                (flags | libc::NLM_F_ACK) as u16,
                self.seq,
            )
        }
    }

    pub fn table(&mut self, name: &str, delete: bool) {
        let n = cstr(name);
        // SAFETY: the table object is allocated, filled with valid C strings, serialized into
        // the free space of `buf` (≥ MAX_MSG bytes, far more than a table message) and freed.
        unsafe {
            let t = sys::nftnl_table_alloc();
            sys::nftnl_table_set_str(t, sys::NFTNL_TABLE_NAME as u16, n.as_ptr());
            sys::nftnl_table_set_u32(t, sys::NFTNL_TABLE_FAMILY as u16, FAMILY_INET as u32);
            let (ty, fl) = if delete {
                (libc::NFT_MSG_DELTABLE, 0)
            } else {
                (libc::NFT_MSG_NEWTABLE, libc::NLM_F_CREATE)
            };
            let nlh = self.hdr(ty, fl);
            sys::nftnl_table_nlmsg_build_payload(nlh, t);
            sys::nftnl_table_free(t);
            self.advance(nlh);
        }
        self.msgs += 1;
    }

    /// A chain; `hook` = (hook number, priority, policy accept?, type).
    pub fn chain(&mut self, table: &str, name: &str, hook: Option<(u32, i32, bool, &str)>) {
        let (t, n) = (cstr(table), cstr(name));
        let ty = cstr(hook.map(|h| h.3).unwrap_or("filter"));
        // SAFETY: as in `table`: valid C strings, message written into free buffer space, object freed.
        unsafe {
            let c = sys::nftnl_chain_alloc();
            sys::nftnl_chain_set_str(c, sys::NFTNL_CHAIN_TABLE as u16, t.as_ptr());
            sys::nftnl_chain_set_str(c, sys::NFTNL_CHAIN_NAME as u16, n.as_ptr());
            sys::nftnl_chain_set_u32(c, sys::NFTNL_CHAIN_FAMILY as u16, FAMILY_INET as u32);
            if let Some((num, prio, accept, _)) = hook {
                sys::nftnl_chain_set_u32(c, sys::NFTNL_CHAIN_HOOKNUM as u16, num);
                sys::nftnl_chain_set_s32(c, sys::NFTNL_CHAIN_PRIO as u16, prio);
                sys::nftnl_chain_set_u32(
                    c,
                    sys::NFTNL_CHAIN_POLICY as u16,
                    if accept { 1 } else { 0 },
                );
                sys::nftnl_chain_set_str(c, sys::NFTNL_CHAIN_TYPE as u16, ty.as_ptr());
            }
            let nlh = self.hdr(libc::NFT_MSG_NEWCHAIN, libc::NLM_F_CREATE);
            sys::nftnl_chain_nlmsg_build_payload(nlh, c);
            sys::nftnl_chain_free(c);
            self.advance(nlh);
        }
        self.msgs += 1;
    }

    /// A named set; `flags` are NFT_SET_* bits; `id` links lookups in the same batch.
    pub fn set(
        &mut self,
        table: &str,
        name: &str,
        id: u32,
        key_type: u32,
        key_len: u32,
        flags: u32,
    ) {
        let (t, n) = (cstr(table), cstr(name));
        // SAFETY: as in `table`.
        unsafe {
            let s = sys::nftnl_set_alloc();
            sys::nftnl_set_set_str(s, sys::NFTNL_SET_TABLE as u16, t.as_ptr());
            sys::nftnl_set_set_str(s, sys::NFTNL_SET_NAME as u16, n.as_ptr());
            sys::nftnl_set_set_u32(s, sys::NFTNL_SET_FAMILY as u16, FAMILY_INET as u32);
            sys::nftnl_set_set_u32(s, sys::NFTNL_SET_KEY_TYPE as u16, key_type);
            sys::nftnl_set_set_u32(s, sys::NFTNL_SET_KEY_LEN as u16, key_len);
            sys::nftnl_set_set_u32(s, sys::NFTNL_SET_FLAGS as u16, flags);
            sys::nftnl_set_set_u32(s, sys::NFTNL_SET_ID as u16, id);
            let nlh = self.hdr(libc::NFT_MSG_NEWSET, libc::NLM_F_CREATE);
            sys::nftnl_set_nlmsg_build_payload(nlh, s);
            sys::nftnl_set_free(s);
            self.advance(nlh);
        }
        self.msgs += 1;
    }

    /// Adds (or deletes) elements: (key bytes, element flags, timeout ms or 0).
    pub fn elems(
        &mut self,
        table: &str,
        set: &str,
        elems: &[(Vec<u8>, u32, u64)],
        delete: bool,
        excl: bool,
    ) {
        if elems.is_empty() {
            return;
        }
        let (t, n) = (cstr(table), cstr(set));
        // SAFETY: as in `table`; key buffers outlive the call (libnftnl copies them); the
        // message of a few elements is far below MAX_MSG (callers pass small lists).
        unsafe {
            let s = sys::nftnl_set_alloc();
            sys::nftnl_set_set_str(s, sys::NFTNL_SET_TABLE as u16, t.as_ptr());
            sys::nftnl_set_set_str(s, sys::NFTNL_SET_NAME as u16, n.as_ptr());
            sys::nftnl_set_set_u32(s, sys::NFTNL_SET_FAMILY as u16, FAMILY_INET as u32);
            for (key, flags, timeout) in elems {
                let e = sys::nftnl_set_elem_alloc();
                sys::nftnl_set_elem_set(
                    e,
                    sys::NFTNL_SET_ELEM_KEY as u16,
                    key.as_ptr() as *const c_void,
                    key.len() as u32,
                );
                if *flags != 0 {
                    sys::nftnl_set_elem_set_u32(e, sys::NFTNL_SET_ELEM_FLAGS as u16, *flags);
                }
                if *timeout != 0 {
                    sys::nftnl_set_elem_set_u64(e, sys::NFTNL_SET_ELEM_TIMEOUT as u16, *timeout);
                }
                sys::nftnl_set_elem_add(s, e);
            }
            let (ty, fl) = if delete {
                (libc::NFT_MSG_DELSETELEM, 0)
            } else {
                (
                    libc::NFT_MSG_NEWSETELEM,
                    libc::NLM_F_CREATE | if excl { libc::NLM_F_EXCL } else { 0 },
                )
            };
            let nlh = self.hdr(ty, fl);
            sys::nftnl_set_elems_nlmsg_build_payload(nlh, s);
            sys::nftnl_set_free(s);
            self.advance(nlh);
        }
        self.msgs += 1;
    }

    /// Appends a rule made of `exprs` to `chain`.
    pub fn rule(&mut self, table: &str, chain: &str, exprs: &[Expr]) {
        self.rule_msg(
            libc::NFT_MSG_NEWRULE,
            libc::NLM_F_CREATE | libc::NLM_F_APPEND,
            table,
            chain,
            exprs,
        );
    }

    /// Deletes every rule of `chain` (`flush chain`: DELRULE with no handle).
    pub fn flush_chain(&mut self, table: &str, chain: &str) {
        self.rule_msg(libc::NFT_MSG_DELRULE, 0, table, chain, &[]);
    }

    /// One rule message (`ty`, `flags`) for `chain` carrying `exprs`.
    fn rule_msg(&mut self, ty: i32, flags: i32, table: &str, chain: &str, exprs: &[Expr]) {
        let (t, c) = (cstr(table), cstr(chain));
        // SAFETY: each expression is allocated by name and filled with attributes whose
        // data pointers stay valid for the call (libnftnl copies); ownership of every expr
        // passes to the rule, which is freed after serialization into free buffer space.
        unsafe {
            let r = sys::nftnl_rule_alloc();
            sys::nftnl_rule_set_str(r, sys::NFTNL_RULE_TABLE as u16, t.as_ptr());
            sys::nftnl_rule_set_str(r, sys::NFTNL_RULE_CHAIN as u16, c.as_ptr());
            sys::nftnl_rule_set_u32(r, sys::NFTNL_RULE_FAMILY as u16, FAMILY_INET as u32);
            for ex in exprs {
                let name = cstr(ex.name);
                let e = sys::nftnl_expr_alloc(name.as_ptr());
                assert!(
                    !e.is_null(),
                    "libnftnl does not know expression {}",
                    ex.name
                );
                for (attr, v) in &ex.attrs {
                    match v {
                        Val::U32(x) => sys::nftnl_expr_set_u32(e, *attr as u16, *x),
                        Val::U64(x) => sys::nftnl_expr_set_u64(e, *attr as u16, *x),
                        Val::Str(s) => {
                            let s = cstr(s);
                            sys::nftnl_expr_set_str(e, *attr as u16, s.as_ptr());
                        }
                        Val::Bytes(b) => {
                            sys::nftnl_expr_set(
                                e,
                                *attr as u16,
                                b.as_ptr() as *const c_void,
                                b.len() as u32,
                            );
                        }
                    }
                }
                sys::nftnl_rule_add_expr(r, e);
            }
            let nlh = self.hdr(ty, flags);
            sys::nftnl_rule_nlmsg_build_payload(nlh, r);
            sys::nftnl_rule_free(r);
            self.advance(nlh);
        }
        self.msgs += 1;
    }

    /// Sends the batch and waits for every ack; the first kernel error wins.
    pub fn commit(mut self) -> io::Result<()> {
        // SAFETY: batch_end writes one small header into the free space at `len`.
        unsafe {
            let nlh =
                sys::nftnl_batch_end(self.buf.as_mut_ptr().add(self.len) as *mut c_char, self.seq);
            self.advance(nlh);
        }
        let sock = mnl::Socket::new(mnl::Bus::Netfilter)?;
        set_rcv_timeout(&sock, 2)?;
        // The whole batch goes in one datagram and the kernel queues one ack per
        // message before we read any: size both buffers for large batches (as nft does).
        size_buffer(
            &sock,
            libc::SO_SNDBUF,
            libc::SO_SNDBUFFORCE,
            self.len + 4096,
        )?;
        size_buffer(
            &sock,
            libc::SO_RCVBUF,
            libc::SO_RCVBUFFORCE,
            self.msgs as usize * ACK_TRUESIZE,
        )?;
        sock.send(&self.buf[..self.len])?;
        let mut rbuf = vec![0u8; 1 << 16];
        let mut acks = 0;
        let mut first_err = None;
        while acks < self.msgs {
            let n = match sock.recv(&mut rbuf) {
                Ok(n) => n,
                Err(e) if first_err.is_some() && e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => {
                    return Err(io::Error::new(
                        e.kind(),
                        format!("waiting for nftables acks: {e}"),
                    ))
                }
            };
            let mut off = 0;
            while off + 16 <= n {
                let len = u32::from_ne_bytes(rbuf[off..off + 4].try_into().unwrap()) as usize;
                let ty = u16::from_ne_bytes(rbuf[off + 4..off + 6].try_into().unwrap());
                if len < 16 || off + len > n {
                    break;
                }
                if ty == libc::NLMSG_ERROR as u16 && len >= 20 {
                    let errno = i32::from_ne_bytes(rbuf[off + 16..off + 20].try_into().unwrap());
                    acks += 1;
                    if errno != 0 && first_err.is_none() {
                        first_err = Some(io::Error::from_raw_os_error(-errno));
                    }
                }
                off += (len + 3) & !3;
            }
        }
        match first_err {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }
}

impl Default for Batch {
    fn default() -> Self {
        Self::new()
    }
}

/// Generous kernel memory charge of one queued ack (a small skb).
const ACK_TRUESIZE: usize = 2048;
/// Below this the default socket buffers (~208 KiB) are left alone.
const DEFAULT_SOCKBUF: usize = 200 * 1024;

/// Raises a socket buffer to `want` bytes when the default is too small:
/// the FORCE option (CAP_NET_ADMIN, which every caller of this crate holds)
/// ignores net.core.[rw]mem_max; the plain one is tried if it is refused.
fn size_buffer(sock: &mnl::Socket, opt: i32, force: i32, want: usize) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    if want <= DEFAULT_SOCKBUF {
        return Ok(());
    }
    // the kernel doubles the value it is given
    let v: libc::c_int = (want / 2 + 1).min(i32::MAX as usize) as libc::c_int;
    let set = |o: i32| {
        // SAFETY: setsockopt on a socket we own with a correctly sized int.
        unsafe {
            libc::setsockopt(
                sock.as_raw_fd(),
                libc::SOL_SOCKET,
                o,
                &v as *const libc::c_int as *const c_void,
                std::mem::size_of::<libc::c_int>() as u32,
            )
        }
    };
    if set(force) == 0 || set(opt) == 0 {
        return Ok(());
    }
    Err(io::Error::last_os_error())
}

fn set_rcv_timeout(sock: &mnl::Socket, secs: i64) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    let tv = libc::timeval {
        tv_sec: secs,
        tv_usec: 0,
    };
    // SAFETY: setsockopt on a socket we own with a correctly sized timeval.
    let r = unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            &tv as *const libc::timeval as *const c_void,
            std::mem::size_of::<libc::timeval>() as u32,
        )
    };
    if r != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// One attribute value of an expression.
#[derive(Debug, Clone)]
pub enum Val {
    U32(u32),
    U64(u64),
    Str(String),
    Bytes(Vec<u8>),
}

/// An nf_tables expression: its kind and attributes (NFTNL_EXPR_* numbers).
#[derive(Debug, Clone)]
pub struct Expr {
    pub name: &'static str,
    pub attrs: Vec<(u32, Val)>,
}

/// Lists the elements of a set: key, NFT_SET_ELEM_* flags (an interval
/// set's end elements carry INTERVAL_END) and remaining ms.
pub fn list_elems(table: &str, set: &str) -> io::Result<Vec<(Vec<u8>, u32, u64)>> {
    let (t, n) = (cstr(table), cstr(set));
    let sock = mnl::Socket::new(mnl::Bus::Netfilter)?;
    set_rcv_timeout(&sock, 2)?;
    let mut buf = vec![0u8; MAX_MSG];
    // SAFETY: a GETSETELEM dump request is built into a MAX_MSG buffer; the set object is freed.
    let len = unsafe {
        let s = sys::nftnl_set_alloc();
        sys::nftnl_set_set_str(s, sys::NFTNL_SET_TABLE as u16, t.as_ptr());
        sys::nftnl_set_set_str(s, sys::NFTNL_SET_NAME as u16, n.as_ptr());
        let nlh = sys::nftnl_nlmsg_build_hdr(
            buf.as_mut_ptr() as *mut c_char,
            libc::NFT_MSG_GETSETELEM as u16,
            FAMILY_INET,
            (libc::NLM_F_DUMP | libc::NLM_F_ACK) as u16,
            1,
        );
        sys::nftnl_set_elems_nlmsg_build_payload(nlh, s);
        sys::nftnl_set_free(s);
        (*nlh).nlmsg_len as usize
    };
    sock.send(&buf[..len])?;
    // libmnl's callback runner walks each datagram: it checks sequence and
    // port id, stops at NLMSG_DONE or the final ack, turns an NLMSG_ERROR into
    // its errno, and hands every data message to `parse_elems`.
    let mut out = Vec::new();
    let mut rbuf = vec![0u8; 1 << 17];
    loop {
        let n = sock.recv(&mut rbuf)?;
        if let mnl::CbResult::Stop = mnl::cb_run2(&rbuf[..n], 1, 0, parse_elems, &mut out)? {
            return Ok(out);
        }
    }
}

/// One NFT_MSG_NEWSETELEM message of a dump: appends (key, flags,
/// expiration ms); absent flags and expiration read as 0.
fn parse_elems(nlh: &libc::nlmsghdr, out: &mut Vec<(Vec<u8>, u32, u64)>) -> libc::c_int {
    // SAFETY: libmnl hands us one complete netlink message it has bounds-checked
    // inside the receive buffer; the parsed set and its iterator are freed, and
    // element data is copied out before that.
    unsafe {
        let s = sys::nftnl_set_alloc();
        if sys::nftnl_set_elems_nlmsg_parse(nlh, s) >= 0 {
            let it = sys::nftnl_set_elems_iter_create(s);
            loop {
                let e = sys::nftnl_set_elems_iter_next(it);
                if e.is_null() {
                    break;
                }
                let mut klen: u32 = 0;
                let k = sys::nftnl_set_elem_get(e, sys::NFTNL_SET_ELEM_KEY as u16, &mut klen)
                    as *const u8;
                let key = if k.is_null() {
                    Vec::new()
                } else {
                    std::slice::from_raw_parts(k, klen as usize).to_vec()
                };
                // get_u64 dereferences the attribute unchecked: sets without
                // timeouts (the backend sets) have no expiration to read
                let (exp_attr, flags_attr) = (
                    sys::NFTNL_SET_ELEM_EXPIRATION as u16,
                    sys::NFTNL_SET_ELEM_FLAGS as u16,
                );
                let exp = if sys::nftnl_set_elem_is_set(e, exp_attr) {
                    sys::nftnl_set_elem_get_u64(e, exp_attr)
                } else {
                    0
                };
                let flags = if sys::nftnl_set_elem_is_set(e, flags_attr) {
                    sys::nftnl_set_elem_get_u32(e, flags_attr)
                } else {
                    0
                };
                out.push((key, flags, exp));
            }
            sys::nftnl_set_elems_iter_destroy(it);
        }
        sys::nftnl_set_free(s);
    }
    mnl::mnl_sys::MNL_CB_OK
}
