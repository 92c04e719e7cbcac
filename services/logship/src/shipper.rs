//! Ships committed spool records to the SIEM: one TLS 1.3 connection,
//! RFC 5425 frames, an in-flight window, reconnects with jittered backoff.
//!
//! **When is a record confirmed?** RFC 5425 has no application-level
//! acknowledgement and rsyslog sends none. A record counts as confirmed when
//! (1) the peer's TCP has acknowledged every byte of the TLS records that
//! carried it (`tcpi_bytes_acked` from `TCP_INFO`, compared with the bytes
//! this connection wrote), and (2) the connection was still open
//! [`CONFIRM_AFTER`] later (no EOF, reset or TLS alert seen). (1) means the
//! bytes sit in the SIEM host's socket buffer; (2) covers a receiver that
//! exits with unread data (its kernel then resets the connection, which we
//! see). Records written but not confirmed stay in the in-flight window;
//! after any reconnect the window is sent again from its oldest record.
//! Delivery is therefore at least once: duplicates are bounded by the window
//! plus the cursor's persistence lag, and a SIEM removes them by
//! (`boot_id`, `seq`).
//!
//! A dead peer is found within 90 s: TCP keepalive (idle 30 s, 3 probes 10 s
//! apart) on an idle connection, `TCP_USER_TIMEOUT` 60 s plus a heartbeat
//! message every `heartbeat_secs` (30) so that there is always data to be
//! acknowledged, and a 60 s limit without acknowledgement progress.

use std::collections::VecDeque;
use std::io::{self, Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::os::fd::AsFd;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::spool::{Pos, Reader, Shared};
use crate::tls::Target;

/// A written record is confirmed once acknowledged and the connection has
/// stayed up this long afterwards.
pub const CONFIRM_AFTER: Duration = Duration::from_millis(500);
/// Records in flight at most (and bytes, below).
pub const WINDOW_RECORDS: usize = 4096;
pub const WINDOW_BYTES: u64 = 4 << 20;
/// No acknowledgement progress for this long with data in flight: dead.
pub const STALL_LIMIT: Duration = Duration::from_secs(60);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
const IO_TIMEOUT: Duration = Duration::from_secs(30);
const TICK: Duration = Duration::from_millis(20);
const CURSOR_EVERY: Duration = Duration::from_millis(200);

/// What `health` reports about the SIEM.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Status {
    pub configured: bool,
    pub endpoint: Option<String>,
    pub server_name: Option<String>,
    pub verify: Option<&'static str>,
    pub connected: bool,
    /// Why the last connection attempt or connection failed (or why the
    /// settings cannot be used).
    pub last_error: Option<String>,
    pub last_error_at: Option<String>,
    /// When records were last confirmed (RFC 3339).
    pub last_ack: Option<String>,
    pub connects: u64,
    /// Records confirmed by this process.
    pub shipped: u64,
    /// Records written, counted again on every resend.
    pub sent: u64,
    pub in_flight: usize,
    /// Acceptance time (Unix ms) of the oldest record not yet confirmed.
    #[serde(skip)]
    pub oldest_unshipped_ms: Option<i64>,
}

/// The shipper's settings, swapped by the `siem_config` RPC.
pub struct Control {
    target: Mutex<(u64, Result<Option<Target>, String>)>,
    status: Mutex<Status>,
}

impl Control {
    pub fn new(target: Result<Option<Target>, String>) -> Arc<Self> {
        let c = Arc::new(Self {
            target: Mutex::new((0, Ok(None))),
            status: Mutex::new(Status::default()),
        });
        c.set(target);
        c
    }

    pub fn set(&self, target: Result<Option<Target>, String>) {
        {
            let mut st = self.status();
            st.configured = matches!(target, Ok(Some(_)));
            st.connected = false;
            st.endpoint = None;
            st.server_name = None;
            st.verify = None;
            st.last_error = None;
            match &target {
                Ok(Some(t)) => {
                    st.endpoint = Some(t.endpoint.clone());
                    st.server_name = Some(server_name_text(t));
                    st.verify = Some(t.verify);
                }
                Ok(None) => {}
                Err(e) => {
                    st.last_error = Some(e.clone());
                    st.last_error_at = Some(gwos_core::event::now_rfc3339());
                }
            }
        }
        let mut g = self.target.lock().unwrap_or_else(|p| p.into_inner());
        g.0 += 1;
        g.1 = target;
    }

    fn current(&self) -> (u64, Option<Target>) {
        let g = self.target.lock().unwrap_or_else(|p| p.into_inner());
        (g.0, g.1.clone().ok().flatten())
    }

    fn generation(&self) -> u64 {
        self.target.lock().unwrap_or_else(|p| p.into_inner()).0
    }

    pub fn status(&self) -> MutexGuard<'_, Status> {
        self.status.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn fail(&self, e: String) {
        let mut st = self.status();
        st.connected = false;
        st.last_error = Some(e);
        st.last_error_at = Some(gwos_core::event::now_rfc3339());
    }
}

fn server_name_text(t: &Target) -> String {
    match &t.server_name {
        rustls::pki_types::ServerName::DnsName(d) => d.as_ref().to_owned(),
        rustls::pki_types::ServerName::IpAddress(a) => std::net::IpAddr::from(*a).to_string(),
        _ => "?".into(),
    }
}

/// Tunables (site config `[logship]`).
#[derive(Debug, Clone)]
pub struct Options {
    pub hostname: String,
    pub boot_id: [u8; 16],
    pub heartbeat: Duration,
    pub reconnect_max: Duration,
    pub cursor_path: PathBuf,
}

/// The persisted shipping cursor.
#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Cursor {
    pub confirmed_seq: u64,
}

pub fn load_cursor(path: &std::path::Path) -> u64 {
    gwos_core::state::read_json::<Cursor>(path)
        .ok()
        .flatten()
        .map(|c| c.confirmed_seq)
        .unwrap_or(0)
}

struct InFlight {
    pos: Pos,
    time_ms: i64,
    /// Bytes written on the connection once this record was out.
    end: u64,
    acked_at: Option<Instant>,
}

/// Counts the bytes written to the socket (TLS records included), to compare
/// with the peer's acknowledgements.
struct Counted<'a> {
    sock: &'a TcpStream,
    written: &'a mut u64,
}

impl Read for Counted<'_> {
    fn read(&mut self, b: &mut [u8]) -> io::Result<usize> {
        (&*self.sock).read(b)
    }
}

impl Write for Counted<'_> {
    fn write(&mut self, b: &[u8]) -> io::Result<usize> {
        let n = (&*self.sock).write(b)?;
        *self.written += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

pub struct Shipper {
    shared: Arc<Shared>,
    ctl: Arc<Control>,
    opts: Options,
    reader: Reader,
    inflight: VecDeque<InFlight>,
    cursor_saved: u64,
    cursor_at: Instant,
}

fn now_ms() -> i64 {
    (time::OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000) as i64
}

impl Shipper {
    pub fn new(shared: Arc<Shared>, ctl: Arc<Control>, opts: Options) -> anyhow::Result<Self> {
        let mut reader = Reader::new(shared.clone());
        let confirmed = shared.lock().confirmed;
        reader.seek(confirmed + 1)?;
        Ok(Self {
            shared,
            ctl,
            opts,
            reader,
            inflight: VecDeque::new(),
            cursor_saved: confirmed,
            cursor_at: Instant::now(),
        })
    }

    /// Runs forever: connect, ship, back off, reconnect.
    pub fn run(mut self) {
        let mut backoff = Duration::from_millis(500);
        loop {
            self.update_oldest();
            let (generation, target) = self.ctl.current();
            let Some(target) = target else {
                std::thread::sleep(Duration::from_millis(200));
                continue;
            };
            match self.session(&target, generation) {
                Ok(()) => backoff = Duration::from_millis(500),
                Err(e) => {
                    let was_up = self.ctl.status().connected;
                    self.ctl.fail(format!("{}: {e}", target.endpoint));
                    if was_up {
                        backoff = Duration::from_millis(500);
                    }
                    self.rewind();
                    // full jitter in [backoff/2, backoff]
                    let half = backoff.as_millis() as u64 / 2;
                    let wait = Duration::from_millis(half + rand::random::<u64>() % (half + 1));
                    let until = Instant::now() + wait;
                    while Instant::now() < until && self.ctl.generation() == generation {
                        self.update_oldest();
                        std::thread::sleep(Duration::from_millis(50));
                    }
                    backoff = (backoff * 2).min(self.opts.reconnect_max);
                }
            }
            self.rewind();
        }
    }

    /// After a connection ends: everything unconfirmed is sent again.
    fn rewind(&mut self) {
        if let Some(first) = self.inflight.front() {
            let pos = first.pos;
            self.inflight.clear();
            if let Err(e) = self.reader.seek_pos(pos) {
                self.ctl.fail(format!("spool: {e:#}"));
            }
        }
        self.ctl.status().in_flight = 0;
    }

    fn update_oldest(&mut self) {
        let oldest = match self.inflight.front() {
            Some(f) => Some(f.time_ms),
            None => {
                let (confirmed, committed) = {
                    let s = self.shared.lock();
                    (s.confirmed, s.committed)
                };
                if committed > confirmed {
                    let mut r = Reader::new(self.shared.clone());
                    r.seek(confirmed + 1)
                        .ok()
                        .and_then(|_| r.next_record().ok().flatten())
                        .map(|(_, rec)| rec.time_ms)
                } else {
                    None
                }
            }
        };
        self.ctl.status().oldest_unshipped_ms = oldest;
    }

    fn connect(&self, t: &Target) -> Result<TcpStream, String> {
        let addrs: Vec<_> = (t.host.as_str(), t.port)
            .to_socket_addrs()
            .map_err(|e| format!("resolving {}: {e}", t.host))?
            .collect();
        let mut last = format!("{} resolves to no address", t.host);
        for a in addrs {
            match TcpStream::connect_timeout(&a, CONNECT_TIMEOUT) {
                Ok(s) => return Ok(s),
                Err(e) => last = format!("connecting to {a}: {e}"),
            }
        }
        Err(last)
    }

    fn session(&mut self, t: &Target, generation: u64) -> Result<(), String> {
        let sock = self.connect(t)?;
        tune(&sock).map_err(|e| format!("socket options: {e}"))?;
        let mut written = 0u64;
        let mut conn = rustls::ClientConnection::new(t.tls.clone(), t.server_name.clone())
            .map_err(|e| format!("TLS setup: {e}"))?;
        sock.set_read_timeout(Some(IO_TIMEOUT)).ok();
        while conn.is_handshaking() {
            conn.complete_io(&mut Counted {
                sock: &sock,
                written: &mut written,
            })
            .map_err(|e| format!("TLS handshake with {} failed: {e}", t.endpoint))?;
        }
        {
            let mut st = self.ctl.status();
            st.connected = true;
            st.last_error = None;
            st.connects += 1;
        }
        gwos_core::emit(
            &gwos_core::Event::new("logship", "logship.connected")
                .field("endpoint", t.endpoint.clone())
                .field("verify", t.verify),
        );
        let mut last_write = Instant::now();
        let (mut last_acked, mut acked_progress_at) = (0u64, Instant::now());
        let mut plain = Vec::with_capacity(64 << 10);
        loop {
            if self.ctl.generation() != generation {
                conn.send_close_notify();
                let _ = conn.write_tls(&mut Counted {
                    sock: &sock,
                    written: &mut written,
                });
                return Ok(());
            }
            // 1. send what is committed, within the window
            plain.clear();
            let mut batch = Vec::new();
            let in_bytes = written.saturating_sub(last_acked);
            while self.inflight.len() + batch.len() < WINDOW_RECORDS
                && in_bytes + (plain.len() as u64) < WINDOW_BYTES
                && plain.len() < (256 << 10)
            {
                match self.reader.next_record() {
                    Ok(Some((pos, rec))) => {
                        crate::syslog::frame(
                            &crate::syslog::message(&rec, &self.opts.hostname),
                            &mut plain,
                        );
                        batch.push((pos, rec.time_ms));
                    }
                    Ok(None) => break,
                    Err(e) => return Err(format!("reading the spool: {e:#}")),
                }
            }
            if batch.is_empty() && last_write.elapsed() >= self.opts.heartbeat {
                crate::syslog::frame(
                    &crate::syslog::heartbeat(&self.opts.hostname, &self.opts.boot_id, now_ms()),
                    &mut plain,
                );
            }
            if !plain.is_empty() {
                // in the window before the first byte goes out: a failed
                // write is sent again after the reconnect
                let first_new = self.inflight.len();
                let n = batch.len();
                for (pos, time_ms) in batch {
                    self.inflight.push_back(InFlight {
                        pos,
                        time_ms,
                        end: u64::MAX,
                        acked_at: None,
                    });
                }
                // rustls buffers a bounded amount: hand it over in pieces
                let mut off = 0;
                while off < plain.len() {
                    off += conn
                        .writer()
                        .write(&plain[off..])
                        .map_err(|e| format!("TLS write: {e}"))?;
                    while conn.wants_write() {
                        conn.write_tls(&mut Counted {
                            sock: &sock,
                            written: &mut written,
                        })
                        .map_err(|e| format!("sending to {}: {e}", t.endpoint))?;
                    }
                }
                last_write = Instant::now();
                for f in self.inflight.iter_mut().skip(first_new) {
                    f.end = written;
                }
                let mut st = self.ctl.status();
                st.sent += n as u64;
                st.in_flight = self.inflight.len();
            }
            // 2. is the peer still there? (it never sends data; EOF, reset or an alert end the session)
            let idle = plain.is_empty();
            check_alive(&sock, &mut conn, if idle { TICK } else { Duration::ZERO })
                .map_err(|e| format!("connection to {} lost: {e}", t.endpoint))?;
            // 3. what has the peer acknowledged?
            let acked = crate::sys::bytes_acked(&sock).map_err(|e| format!("TCP_INFO: {e}"))?;
            let now = Instant::now();
            if acked > last_acked {
                last_acked = acked;
                acked_progress_at = now;
            } else if !self.inflight.is_empty()
                && written > acked
                && now.duration_since(acked_progress_at) > STALL_LIMIT
            {
                return Err(format!(
                    "no acknowledgement from {} for {} s with {} bytes in flight",
                    t.endpoint,
                    STALL_LIMIT.as_secs(),
                    written - acked
                ));
            }
            self.confirm(acked, now);
            if idle && self.inflight.is_empty() {
                self.update_oldest();
            }
        }
    }

    fn confirm(&mut self, acked: u64, now: Instant) {
        for f in self.inflight.iter_mut() {
            if f.end > acked {
                break;
            }
            f.acked_at.get_or_insert(now);
        }
        let mut last = None;
        while let Some(f) = self.inflight.front() {
            match f.acked_at {
                Some(t) if now.duration_since(t) >= CONFIRM_AFTER => {
                    last = Some(f.pos.seq);
                    self.inflight.pop_front();
                }
                _ => break,
            }
        }
        if let Some(seq) = last {
            let mut shipped = 0;
            {
                let mut s = self.shared.lock();
                if seq > s.confirmed {
                    shipped = seq - s.confirmed;
                    s.confirmed = seq;
                }
            }
            let mut st = self.ctl.status();
            st.shipped += shipped;
            st.in_flight = self.inflight.len();
            st.last_ack = Some(gwos_core::event::now_rfc3339());
            st.oldest_unshipped_ms = self.inflight.front().map(|f| f.time_ms);
        }
        self.save_cursor(false);
    }

    fn save_cursor(&mut self, force: bool) {
        let confirmed = self.shared.lock().confirmed;
        if confirmed == self.cursor_saved || (!force && self.cursor_at.elapsed() < CURSOR_EVERY) {
            return;
        }
        let c = Cursor {
            confirmed_seq: confirmed,
        };
        if gwos_core::state::write_json(&self.opts.cursor_path, &c).is_ok() {
            self.cursor_saved = confirmed;
            self.cursor_at = Instant::now();
        }
    }
}

/// Keepalive and user timeout: a silent peer is declared dead in < 90 s.
fn tune(sock: &TcpStream) -> nix::Result<()> {
    use nix::sys::socket::{setsockopt, sockopt};
    sock.set_nodelay(true).ok();
    setsockopt(sock, sockopt::KeepAlive, &true)?;
    setsockopt(sock, sockopt::TcpKeepIdle, &30)?;
    setsockopt(sock, sockopt::TcpKeepInterval, &10)?;
    setsockopt(sock, sockopt::TcpKeepCount, &3)?;
    setsockopt(sock, sockopt::TcpUserTimeout, &60_000)?;
    sock.set_write_timeout(Some(IO_TIMEOUT)).ok();
    Ok(())
}

/// Waits up to `wait` for input; the SIEM sends nothing but TLS session
/// tickets, so EOF, a reset, an alert or close_notify means the session is over.
fn check_alive(
    sock: &TcpStream,
    conn: &mut rustls::ClientConnection,
    wait: Duration,
) -> Result<(), String> {
    use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
    let timeout = PollTimeout::try_from(wait.as_millis() as i32).unwrap_or(PollTimeout::ZERO);
    let mut fds = [PollFd::new(sock.as_fd(), PollFlags::POLLIN)];
    let n = poll(&mut fds, timeout).map_err(|e| format!("poll: {e}"))?;
    if n == 0 {
        return Ok(());
    }
    match conn.read_tls(&mut &*sock) {
        Ok(0) => return Err("closed by the peer".into()),
        Ok(_) => {}
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
        Err(e) => return Err(e.to_string()),
    }
    let state = conn
        .process_new_packets()
        .map_err(|e| format!("TLS: {e}"))?;
    if state.peer_has_closed() {
        return Err("the peer sent close_notify".into());
    }
    let mut sink = [0u8; 4096];
    loop {
        match conn.reader().read(&mut sink) {
            Ok(0) => return Err("the peer closed the TLS stream".into()),
            Ok(_) => continue,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
            Err(e) => return Err(format!("TLS: {e}")),
        }
    }
}
