//! PID 1's event pipe (review finding F2). Every service gets two pipes
//! instead of the console: its stdout (one JSON event per line, written
//! non-blocking by `gwos_core::emit`) and its stderr (diagnostics). A thread
//! of PID 1 drains them all with `poll`, never blocking on any of them, and
//!
//! - forwards each event line, prefixed with the service's name (which the
//!   service cannot choose), to logship's ingest socket, through a bounded
//!   in-memory queue ([`QUEUE_BYTES`]); when logship is down or slow the
//!   queue fills and further lines are dropped and counted, and an
//!   `init.events_dropped` event says how many once there is room again;
//! - keeps a human summary on the console: at most [`PER_KIND_BURST`] lines
//!   per (service, kind) per [`SUMMARY_EVERY`], at most [`CONSOLE_PER_SEC`]
//!   lines a second overall, and every [`SUMMARY_EVERY`] one line naming
//!   what was suppressed and how often. The console is opened non-blocking:
//!   a slow UART loses summary lines (counted), it never stalls PID 1.
//!
//! Stderr lines become `<service>.stderr` events with the text.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use nix::fcntl::{fcntl, FcntlArg, OFlag};

/// Bytes of event lines PID 1 holds for logship at most.
pub const QUEUE_BYTES: usize = 4 << 20;
/// Longest line taken from a service (longer ones are cut).
pub const MAX_LINE: usize = 16 * 1024;
/// Console lines per (service, kind) per summary period.
pub const PER_KIND_BURST: u32 = 3;
/// Console lines per second, all sources.
pub const CONSOLE_PER_SEC: u32 = 20;
pub const SUMMARY_EVERY: Duration = Duration::from_secs(10);
const POLL: Duration = Duration::from_millis(100);
const RECONNECT_EVERY: Duration = Duration::from_secs(1);

/// Where summary lines go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConsoleTarget {
    /// `/dev/console`, non-blocking (PID 1).
    Console,
    /// stderr (host tests, `gwosd` outside PID 1).
    Stderr,
}

enum Msg {
    Add {
        service: String,
        out: OwnedFd,
        err: OwnedFd,
    },
}

/// The handle the supervisor keeps; the draining thread starts with the
/// first [`Events::pipes`] call.
pub struct Events {
    run_dir: PathBuf,
    console: ConsoleTarget,
    tx: Mutex<Option<Sender<Msg>>>,
}

impl Default for Events {
    fn default() -> Self {
        Self::new(
            PathBuf::from(gwos_core::context::RUN_DIR),
            ConsoleTarget::Console,
        )
    }
}

fn nonblocking(fd: &impl AsRawFd) -> nix::Result<()> {
    let flags = OFlag::from_bits_truncate(fcntl(fd.as_raw_fd(), FcntlArg::F_GETFL)?);
    fcntl(fd.as_raw_fd(), FcntlArg::F_SETFL(flags | OFlag::O_NONBLOCK))?;
    Ok(())
}

impl Events {
    pub fn new(run_dir: PathBuf, console: ConsoleTarget) -> Self {
        Self {
            run_dir,
            console,
            tx: Mutex::new(None),
        }
    }

    /// Two fresh pipes for `service`: (stdout, stderr) to give the child.
    /// PID 1 keeps the read ends (close-on-exec, non-blocking).
    pub fn pipes(&self, service: &str) -> io::Result<(Stdio, Stdio)> {
        let (out_r, out_w) = nix::unistd::pipe2(OFlag::O_CLOEXEC)?;
        let (err_r, err_w) = nix::unistd::pipe2(OFlag::O_CLOEXEC)?;
        nonblocking(&out_r)?;
        nonblocking(&err_r)?;
        let mut tx = self.tx.lock().unwrap_or_else(|p| p.into_inner());
        if tx.is_none() {
            let (t, rx) = channel();
            let drain = Drain::new(self.run_dir.join("logship-ingest.sock"), self.console);
            std::thread::Builder::new()
                .name("gwos-events".into())
                .spawn(move || drain.run(rx))?;
            *tx = Some(t);
        }
        let msg = Msg::Add {
            service: service.to_owned(),
            out: out_r,
            err: err_r,
        };
        if let Some(t) = tx.as_ref() {
            t.send(msg)
                .map_err(|_| io::Error::other("the event thread of PID 1 has stopped"))?;
        }
        Ok((Stdio::from(out_w), Stdio::from(err_w)))
    }
}

struct Source {
    service: String,
    stderr: bool,
    file: File,
    buf: Vec<u8>,
}

/// The console summary: decisions only, time passed in (unit-tested).
#[derive(Debug, Default)]
pub struct Summary {
    period_start: Option<Instant>,
    shown: HashMap<(String, String), u32>,
    suppressed: BTreeMap<(String, String), u64>,
    second_start: Option<Instant>,
    second_count: u32,
}

impl Summary {
    /// Whether to show a line of `kind` from `service` at `now`.
    pub fn allow(&mut self, service: &str, kind: &str, now: Instant) -> bool {
        if self
            .second_start
            .is_none_or(|t| now.duration_since(t) >= Duration::from_secs(1))
        {
            self.second_start = Some(now);
            self.second_count = 0;
        }
        self.period_start.get_or_insert(now);
        let key = (service.to_owned(), kind.to_owned());
        let n = self.shown.entry(key.clone()).or_default();
        if *n >= PER_KIND_BURST || self.second_count >= CONSOLE_PER_SEC {
            *self.suppressed.entry(key).or_default() += 1;
            return false;
        }
        *n += 1;
        self.second_count += 1;
        true
    }

    /// The suppression report when a period is over (None if nothing was suppressed).
    pub fn report(&mut self, now: Instant) -> Option<String> {
        let start = self.period_start?;
        if now.duration_since(start) < SUMMARY_EVERY {
            return None;
        }
        self.period_start = Some(now);
        self.shown.clear();
        if self.suppressed.is_empty() {
            return None;
        }
        let parts: Vec<String> = std::mem::take(&mut self.suppressed)
            .into_iter()
            .map(|((s, k), n)| format!("{s}/{k} {n}"))
            .collect();
        Some(format!(
            "events suppressed on the console in the last {} s (all are in the spool): {}",
            SUMMARY_EVERY.as_secs(),
            parts.join(", ")
        ))
    }
}

/// The bounded queue of lines for logship.
#[derive(Debug, Default)]
pub struct Queue {
    lines: VecDeque<Vec<u8>>,
    bytes: usize,
    /// Offset into the front line already written to the socket.
    sent: usize,
    pub dropped: u64,
}

impl Queue {
    /// Queues one `<service> <json>\n` line, or counts it as dropped.
    pub fn push(&mut self, line: Vec<u8>) -> bool {
        if self.bytes + line.len() > QUEUE_BYTES {
            self.dropped += 1;
            return false;
        }
        self.bytes += line.len();
        self.lines.push_back(line);
        true
    }

    pub fn len(&self) -> usize {
        self.lines.len()
    }

    pub fn is_empty(&self) -> bool {
        self.lines.is_empty()
    }

    /// Writes as much as `w` takes without blocking.
    pub fn flush_to(&mut self, w: &mut impl Write) -> io::Result<()> {
        while let Some(front) = self.lines.front() {
            match w.write(&front[self.sent..]) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => {
                    self.sent += n;
                    if self.sent == front.len() {
                        self.bytes -= front.len();
                        self.lines.pop_front();
                        self.sent = 0;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// The connection broke: the front line is sent again whole.
    pub fn restart_line(&mut self) {
        self.sent = 0;
    }
}

struct Drain {
    ingest: PathBuf,
    console_target: ConsoleTarget,
    console: Option<File>,
    console_dropped: u64,
    sources: Vec<Source>,
    queue: Queue,
    reported_dropped: u64,
    sock: Option<UnixStream>,
    next_connect: Instant,
    summary: Summary,
}

fn kind_of(line: &[u8]) -> Option<String> {
    let v: serde_json::Value = serde_json::from_slice(line).ok()?;
    v.get("kind")?.as_str().map(str::to_owned)
}

/// One short human line for the console.
fn human(service: &str, line: &[u8]) -> String {
    let text = String::from_utf8_lossy(line);
    let mut s: String = text.chars().take(300).collect();
    if text.len() > s.len() {
        s.push('…');
    }
    format!("gwos: [{service}] {s}\n")
}

impl Drain {
    fn new(ingest: PathBuf, console_target: ConsoleTarget) -> Self {
        Self {
            ingest,
            console_target,
            console: None,
            console_dropped: 0,
            sources: Vec::new(),
            queue: Queue::default(),
            reported_dropped: 0,
            sock: None,
            next_connect: Instant::now(),
            summary: Summary::default(),
        }
    }

    fn run(mut self, rx: Receiver<Msg>) {
        loop {
            while let Ok(Msg::Add { service, out, err }) = rx.try_recv() {
                for (fd, stderr) in [(out, false), (err, true)] {
                    self.sources.push(Source {
                        service: service.clone(),
                        stderr,
                        file: File::from(fd),
                        buf: Vec::new(),
                    });
                }
            }
            self.poll_once();
            self.forward();
            let now = Instant::now();
            if let Some(r) = self.summary.report(now) {
                self.say(&format!("gwos: {r}\n"));
            }
        }
    }

    fn poll_once(&mut self) {
        use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
        let ready: Vec<bool> = {
            let mut fds: Vec<PollFd> = self
                .sources
                .iter()
                .map(|s| PollFd::new(s.file.as_fd(), PollFlags::POLLIN))
                .collect();
            let timeout =
                PollTimeout::try_from(POLL.as_millis() as i32).unwrap_or(PollTimeout::ZERO);
            if fds.is_empty() {
                std::thread::sleep(POLL);
                return;
            }
            if poll(&mut fds, timeout).is_err() {
                return;
            }
            fds.iter()
                .map(|f| f.revents().is_some_and(|r| !r.is_empty()))
                .collect()
        };
        let mut closed = Vec::new();
        let mut buf = vec![0u8; 64 << 10];
        for (i, r) in ready.into_iter().enumerate() {
            if !r {
                continue;
            }
            loop {
                match self.sources[i].file.read(&mut buf) {
                    Ok(0) => {
                        closed.push(i);
                        break;
                    }
                    Ok(n) => {
                        self.sources[i].buf.extend_from_slice(&buf[..n]);
                        self.take_lines(i, false);
                    }
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(_) => {
                        closed.push(i);
                        break;
                    }
                }
            }
        }
        for i in closed.into_iter().rev() {
            self.take_lines(i, true);
            self.sources.remove(i);
        }
    }

    /// Handles the complete lines in source `i`'s buffer (all of it at EOF).
    fn take_lines(&mut self, i: usize, eof: bool) {
        let mut buf = std::mem::take(&mut self.sources[i].buf);
        let mut start = 0;
        loop {
            let rest = &buf[start..];
            let end = match rest.iter().position(|b| *b == b'\n') {
                Some(p) => p,
                None if rest.len() > MAX_LINE || (eof && !rest.is_empty()) => rest.len(),
                None => break,
            };
            let line = rest[..end.min(MAX_LINE)].to_vec();
            start += (end + 1).min(rest.len());
            let (service, stderr) = (self.sources[i].service.clone(), self.sources[i].stderr);
            self.line(&service, stderr, &line);
        }
        buf.drain(..start);
        self.sources[i].buf = buf;
    }

    fn line(&mut self, service: &str, stderr: bool, line: &[u8]) {
        if line.iter().all(u8::is_ascii_whitespace) {
            return;
        }
        let now = Instant::now();
        let (payload, kind) = match (stderr, kind_of(line)) {
            (false, Some(k)) => (line.to_vec(), k),
            _ => {
                let kind = format!("{service}.stderr");
                let ev = gwos_core::Event::new(service, &kind)
                    .field("message", String::from_utf8_lossy(line).into_owned());
                (ev.to_line().into_bytes(), kind)
            }
        };
        let mut out = Vec::with_capacity(service.len() + payload.len() + 2);
        out.extend_from_slice(service.as_bytes());
        out.push(b' ');
        out.extend_from_slice(&payload);
        out.push(b'\n');
        self.queue.push(out);
        if self.summary.allow(service, &kind, now) {
            self.say(&human(service, line));
        }
    }

    fn forward(&mut self) {
        if self.queue.dropped > self.reported_dropped && self.queue.len() < 1024 {
            let n = self.queue.dropped - self.reported_dropped;
            self.reported_dropped = self.queue.dropped;
            let ev = gwos_core::Event::new("init", "init.events_dropped")
                .field("dropped", n)
                .field(
                    gwos_core::event::REASON,
                    "PID 1's queue for logship was full (logship down or slow)",
                );
            self.queue
                .push(format!("init {}\n", ev.to_line()).into_bytes());
            self.say(&format!(
                "gwos: {n} events dropped: PID 1's queue for logship was full\n"
            ));
        }
        if self.queue.is_empty() {
            return;
        }
        if self.sock.is_none() && Instant::now() >= self.next_connect {
            self.next_connect = Instant::now() + RECONNECT_EVERY;
            if let Ok(s) = UnixStream::connect(&self.ingest) {
                if s.set_nonblocking(true).is_ok() {
                    self.sock = Some(s);
                    self.queue.restart_line();
                }
            }
        }
        if let Some(s) = self.sock.as_mut() {
            if self.queue.flush_to(s).is_err() {
                self.sock = None;
                self.queue.restart_line();
            }
        }
    }

    /// Writes to the console without ever blocking; drops (counted) when the
    /// console is busy.
    fn say(&mut self, text: &str) {
        if self.console_target == ConsoleTarget::Stderr {
            let _ = io::stderr().write_all(text.as_bytes());
            return;
        }
        if self.console.is_none() {
            self.console = std::fs::OpenOptions::new()
                .write(true)
                .custom_flags_nonblock()
                .open("/dev/console")
                .ok();
        }
        let Some(c) = self.console.as_mut() else {
            return;
        };
        if self.console_dropped > 0 {
            let note = format!(
                "gwos: {} console lines dropped (console busy)\n",
                self.console_dropped
            );
            if c.write(note.as_bytes()).is_ok_and(|n| n == note.len()) {
                self.console_dropped = 0;
            }
        }
        if !c.write(text.as_bytes()).is_ok_and(|n| n == text.len()) {
            self.console_dropped += 1;
        }
    }
}

trait NonblockOpen {
    fn custom_flags_nonblock(&mut self) -> &mut Self;
}

impl NonblockOpen for std::fs::OpenOptions {
    fn custom_flags_nonblock(&mut self) -> &mut Self {
        use std::os::unix::fs::OpenOptionsExt;
        self.custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY)
    }
}

#[cfg(test)]
mod tests;
