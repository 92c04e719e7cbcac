//! The durable spool: a ring of segment files in `<state_dir>/spool/`, each
//! named after its first sequence number (`00000000000000000001.seg`) and
//! holding [`record`](crate::record)s back to back.
//!
//! - **Accepted = committed.** [`Writer::append`] only buffers; records are
//!   written and `fdatasync`ed by [`Writer::commit`], which the service calls
//!   when 256 records are pending or the oldest pending one is 100 ms old
//!   (group commit). Readers see a record only once it is committed, so the
//!   SIEM never receives a sequence number that a crash could hand out again.
//! - **Bounded.** A segment is `max_bytes / 8` (64 KiB..64 MiB). Before a new
//!   segment would push the spool over `max_bytes`, the oldest segment is
//!   deleted; if it held records that were not yet confirmed by the shipper,
//!   a gap record (`logship.gap`: "N events dropped, seq a..b") is appended
//!   and shipped like any event.
//! - **Crash safe.** On open only the newest segment is scanned: the first
//!   record whose magic, length or checksum is wrong marks a torn tail (a
//!   power cut during a group commit), and the file is truncated there. Older
//!   segments were synced before the next one was created.
//! - **Bounded memory.** Nothing is loaded at start-up but the newest
//!   segment's scan (streamed) and one record per segment (its time); the
//!   pending batch is at most 256 records of ≤ 16 KiB.

use std::collections::VecDeque;
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufReader, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};

use crate::record::{self, End, Kind, Record};

/// Commit when this many records are pending...
pub const COMMIT_RECORDS: usize = 256;
/// ... or when the oldest pending record is this old.
pub const COMMIT_AFTER: Duration = Duration::from_millis(100);
/// Default spool bound (site config `[logship] spool_max_bytes`).
pub const DEFAULT_MAX_BYTES: u64 = 512 << 20;

#[derive(Debug, Clone)]
pub(crate) struct Segment {
    pub(crate) first_seq: u64,
    pub(crate) path: PathBuf,
    pub(crate) bytes: u64,
    /// Acceptance time of its first record (None while empty).
    pub(crate) first_time_ms: Option<i64>,
}

/// What the writer, the shipper and the RPC share.
#[derive(Debug, Default)]
pub struct State {
    pub(crate) segments: Vec<Segment>,
    /// Highest committed sequence number (0: none yet).
    pub committed: u64,
    /// Highest sequence number the shipper has confirmed (see the crate doc).
    pub confirmed: u64,
    /// Events removed unshipped because the spool was full, ever (this process).
    pub dropped: u64,
    /// Bytes cut off a torn tail at start-up.
    pub torn_bytes: u64,
    /// Records skipped because a committed record failed its checksum.
    pub corrupt: u64,
}

impl State {
    pub fn bytes(&self) -> u64 {
        self.segments.iter().map(|s| s.bytes).sum()
    }
    /// First sequence number still on disk.
    pub fn oldest_seq(&self) -> u64 {
        self.segments.first().map(|s| s.first_seq).unwrap_or(1)
    }
}

/// Shared spool state plus a condition variable signalled on every commit.
#[derive(Debug, Default)]
pub struct Shared {
    state: Mutex<State>,
    committed: Condvar,
}

impl Shared {
    pub fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
    /// Waits up to `timeout` for a commit beyond `seen`; returns the committed seq.
    pub fn wait_committed(&self, seen: u64, timeout: Duration) -> u64 {
        let g = self.lock();
        let (g, _) = self
            .committed
            .wait_timeout_while(g, timeout, |s| s.committed <= seen)
            .unwrap_or_else(|p| p.into_inner());
        g.committed
    }
}

pub struct Writer {
    dir: PathBuf,
    max_bytes: u64,
    segment_bytes: u64,
    boot_id: [u8; 16],
    file: File,
    active_len: u64,
    next_seq: u64,
    batch: Vec<u8>,
    batch_records: usize,
    batch_first_time: Option<i64>,
    batch_since: Option<Instant>,
    shared: Arc<Shared>,
}

fn segment_name(first_seq: u64) -> String {
    format!("{first_seq:020}.seg")
}

/// Segment bytes for a spool bound.
pub fn segment_bytes(max_bytes: u64) -> u64 {
    (max_bytes / 8).clamp(64 << 10, 64 << 20)
}

fn list_segments(dir: &Path) -> Result<Vec<Segment>> {
    let mut v = Vec::new();
    for e in fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
        let e = e?;
        let name = e.file_name();
        let Some(first) = name
            .to_str()
            .and_then(|n| n.strip_suffix(".seg"))
            .and_then(|n| n.parse::<u64>().ok())
        else {
            continue;
        };
        let bytes = e.metadata()?.len();
        v.push(Segment {
            first_seq: first,
            path: e.path(),
            bytes,
            first_time_ms: None,
        });
    }
    v.sort_by_key(|s| s.first_seq);
    Ok(v)
}

fn first_time(path: &Path) -> Option<i64> {
    let mut r = BufReader::new(File::open(path).ok()?);
    record::read_one(&mut r).ok()?.ok().map(|r| r.time_ms)
}

fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Reads the kernel's boot id (`/proc/sys/kernel/random/boot_id`).
pub fn kernel_boot_id() -> Result<[u8; 16]> {
    let text = fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .context("reading /proc/sys/kernel/random/boot_id")?;
    let hex_text: String = text.trim().chars().filter(|c| *c != '-').collect();
    hex::decode(&hex_text)
        .ok()
        .and_then(|v| v.try_into().ok())
        .with_context(|| format!("boot id {:?} is not 16 hex bytes", text.trim()))
}

/// `8-4-4-4-12` form of a boot id.
pub fn boot_id_text(b: &[u8; 16]) -> String {
    let h = hex::encode(b);
    format!(
        "{}-{}-{}-{}-{}",
        &h[..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..]
    )
}

/// Scans `path` and truncates it after its last valid record; returns
/// (last seq, valid length, bytes cut).
fn recover_tail(path: &Path) -> Result<(Option<u64>, u64, u64)> {
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .with_context(|| format!("opening {}", path.display()))?;
    let total = f.metadata()?.len();
    let mut r = BufReader::with_capacity(64 << 10, &f);
    let (mut last, mut valid) = (None, 0u64);
    loop {
        match record::read_one(&mut r)? {
            Ok(rec) => {
                valid += rec.disk_len() as u64;
                last = Some(rec.seq);
            }
            Err(End::Eof) => break,
            Err(End::Torn(_)) => break,
        }
    }
    if valid < total {
        f.set_len(valid)
            .with_context(|| format!("truncating the torn tail of {}", path.display()))?;
        f.sync_all()?;
    }
    Ok((last, valid, total - valid))
}

impl Writer {
    /// Opens (or creates) the spool in `dir`. `confirmed` is the shipper's
    /// persisted cursor (0 if none).
    pub fn open(
        dir: &Path,
        max_bytes: u64,
        boot_id: [u8; 16],
        confirmed: u64,
    ) -> Result<(Self, Arc<Shared>)> {
        fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let mut segments = list_segments(dir)?;
        let mut torn = 0;
        let next_seq = match segments.last_mut() {
            None => confirmed + 1,
            Some(last) => {
                let (last_seq, len, cut) = recover_tail(&last.path)?;
                torn = cut;
                last.bytes = len;
                last_seq.map(|s| s + 1).unwrap_or(last.first_seq)
            }
        };
        if segments.is_empty() {
            segments.push(Self::create_segment(dir, next_seq)?);
        }
        for s in &mut segments {
            s.first_time_ms = first_time(&s.path);
        }
        let active = segments.last().expect("at least one segment");
        let file = OpenOptions::new()
            .append(true)
            .open(&active.path)
            .with_context(|| format!("opening {}", active.path.display()))?;
        let active_len = active.bytes;
        let committed = next_seq - 1;
        let shared = Arc::new(Shared::default());
        {
            let mut st = shared.lock();
            st.segments = segments;
            st.committed = committed;
            st.confirmed = confirmed.min(committed);
            st.torn_bytes = torn;
        }
        Ok((
            Self {
                dir: dir.to_owned(),
                max_bytes,
                segment_bytes: segment_bytes(max_bytes),
                boot_id,
                file,
                active_len,
                next_seq,
                batch: Vec::new(),
                batch_records: 0,
                batch_first_time: None,
                batch_since: None,
                shared: shared.clone(),
            },
            shared,
        ))
    }

    fn create_segment(dir: &Path, first_seq: u64) -> Result<Segment> {
        let path = dir.join(segment_name(first_seq));
        OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o600)
            .open(&path)
            .with_context(|| format!("creating {}", path.display()))?;
        sync_dir(dir).with_context(|| format!("syncing {}", dir.display()))?;
        Ok(Segment {
            first_seq,
            path,
            bytes: 0,
            first_time_ms: None,
        })
    }

    /// Buffers one event; returns its sequence number. It is accepted once
    /// [`Writer::commit`] returns.
    pub fn append(&mut self, service: &str, payload: &[u8], time_ms: i64) -> Result<u64> {
        self.push(Kind::Event, service, payload, time_ms)
    }

    fn push(&mut self, kind: Kind, service: &str, payload: &[u8], time_ms: i64) -> Result<u64> {
        let rec = Record {
            seq: self.next_seq,
            time_ms,
            boot_id: self.boot_id,
            kind,
            service: service.to_owned(),
            payload: payload.to_vec(),
        };
        let len = rec.disk_len() as u64;
        let used = self.active_len + self.batch.len() as u64;
        if used > 0 && used + len > self.segment_bytes {
            self.commit()?;
            self.roll(time_ms)?;
            return self.push(kind, service, payload, time_ms);
        }
        rec.encode_into(&mut self.batch);
        self.batch_records += 1;
        self.batch_first_time.get_or_insert(time_ms);
        self.batch_since.get_or_insert_with(Instant::now);
        self.next_seq += 1;
        Ok(rec.seq)
    }

    /// True when the pending batch must be committed now.
    pub fn commit_due(&self, now: Instant) -> bool {
        self.batch_records >= COMMIT_RECORDS
            || self
                .batch_since
                .is_some_and(|t| now.duration_since(t) >= COMMIT_AFTER)
    }

    /// When the pending batch becomes due (None: nothing pending).
    pub fn commit_deadline(&self) -> Option<Instant> {
        self.batch_since.map(|t| t + COMMIT_AFTER)
    }

    /// Writes and fdatasyncs the pending batch, then publishes it.
    pub fn commit(&mut self) -> Result<()> {
        if self.batch.is_empty() {
            return Ok(());
        }
        self.file
            .write_all(&self.batch)
            .and_then(|_| self.file.sync_data())
            .with_context(|| format!("writing the spool in {}", self.dir.display()))?;
        self.active_len += self.batch.len() as u64;
        let first_time = self.batch_first_time.take();
        self.batch.clear();
        self.batch_records = 0;
        self.batch_since = None;
        {
            let mut st = self.shared.lock();
            st.committed = self.next_seq - 1;
            if let Some(seg) = st.segments.last_mut() {
                seg.bytes = self.active_len;
                if seg.first_time_ms.is_none() {
                    seg.first_time_ms = first_time;
                }
            }
        }
        self.shared.committed.notify_all();
        Ok(())
    }

    /// Starts a new segment, deleting the oldest ones while the spool would
    /// exceed its bound.
    fn roll(&mut self, time_ms: i64) -> Result<()> {
        let seg = Self::create_segment(&self.dir, self.next_seq)?;
        self.file = OpenOptions::new()
            .append(true)
            .open(&seg.path)
            .with_context(|| format!("opening {}", seg.path.display()))?;
        self.active_len = 0;
        let mut gaps = VecDeque::new();
        {
            let mut st = self.shared.lock();
            st.segments.push(seg);
            while st.segments.len() > 1 && st.bytes() + self.segment_bytes > self.max_bytes {
                let old = st.segments.remove(0);
                let last = st.segments[0].first_seq - 1;
                let from = old.first_seq.max(st.confirmed + 1);
                if from <= last {
                    st.dropped += last - from + 1;
                    gaps.push_back((from, last));
                }
                let _ = fs::remove_file(&old.path);
            }
        }
        for (from, last) in gaps {
            let count = last - from + 1;
            let ev = gwos_core::Event::new("logship", "logship.gap")
                .field("dropped", count)
                .field("first_seq", from)
                .field("last_seq", last)
                .field(
                    gwos_core::event::REASON,
                    format!(
                        "{count} events dropped, seq {from}..{last}: the spool reached its bound of {} bytes before they were shipped",
                        self.max_bytes
                    ),
                );
            self.push(Kind::Gap, "logship", ev.to_line().as_bytes(), time_ms)?;
        }
        Ok(())
    }

    pub fn next_seq(&self) -> u64 {
        self.next_seq
    }
}

/// Where a record sits, so a reader can return to it without a scan.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pos {
    pub segment: u64,
    pub offset: u64,
    pub seq: u64,
}

struct Open {
    segment: u64,
    reader: BufReader<File>,
    offset: u64,
}

/// Reads committed records in sequence order from the files (one open
/// segment, a 64 KiB buffer).
pub struct Reader {
    shared: Arc<Shared>,
    cur: Option<Open>,
    next_seq: u64,
}

impl Reader {
    pub fn new(shared: Arc<Shared>) -> Self {
        Self {
            shared,
            cur: None,
            next_seq: 1,
        }
    }

    fn open_segment(seg: &Segment, offset: u64) -> io::Result<Open> {
        let mut f = File::open(&seg.path)?;
        f.seek(SeekFrom::Start(offset))?;
        Ok(Open {
            segment: seg.first_seq,
            reader: BufReader::with_capacity(64 << 10, f),
            offset,
        })
    }

    /// Positions the reader at `seq` (or the oldest record still on disk if
    /// `seq` was dropped).
    pub fn seek(&mut self, seq: u64) -> Result<()> {
        let (seg, oldest) = {
            let st = self.shared.lock();
            let seg = st
                .segments
                .iter()
                .rev()
                .find(|s| s.first_seq <= seq)
                .or(st.segments.first())
                .cloned();
            (seg, st.oldest_seq())
        };
        self.cur = None;
        self.next_seq = seq.max(oldest);
        let Some(seg) = seg else { return Ok(()) };
        let mut open = Self::open_segment(&seg, 0)
            .with_context(|| format!("opening {}", seg.path.display()))?;
        // Skip to the record: scan lengths only up to it.
        loop {
            let at = open.offset;
            match record::read_one(&mut open.reader)? {
                Ok(r) if r.seq < self.next_seq => open.offset += r.disk_len() as u64,
                _ => {
                    open.reader.seek(SeekFrom::Start(at))?;
                    open.offset = at;
                    break;
                }
            }
        }
        self.cur = Some(open);
        Ok(())
    }

    /// Positions the reader at a position a previous [`Reader::next_record`] returned.
    pub fn seek_pos(&mut self, pos: Pos) -> Result<()> {
        let seg = self
            .shared
            .lock()
            .segments
            .iter()
            .find(|s| s.first_seq == pos.segment)
            .cloned();
        match seg.and_then(|s| Self::open_segment(&s, pos.offset).ok()) {
            Some(open) => {
                self.cur = Some(open);
                self.next_seq = pos.seq;
                Ok(())
            }
            None => self.seek(pos.seq),
        }
    }

    /// The next committed record, or None when the reader has caught up.
    pub fn next_record(&mut self) -> Result<Option<(Pos, Record)>> {
        let mut retried = false;
        loop {
            let (committed, oldest) = {
                let st = self.shared.lock();
                (st.committed, st.oldest_seq())
            };
            if self.next_seq > committed {
                return Ok(None);
            }
            if self.next_seq < oldest && self.cur.is_none() {
                self.next_seq = oldest;
            }
            if self.cur.is_none() {
                self.seek(self.next_seq)?;
                if self.cur.is_none() {
                    return Ok(None);
                }
            }
            let open = self.cur.as_mut().expect("just opened");
            let at = open.offset;
            match record::read_one(&mut open.reader)? {
                Ok(rec) => {
                    open.offset += rec.disk_len() as u64;
                    if rec.seq < self.next_seq {
                        continue;
                    }
                    let pos = Pos {
                        segment: open.segment,
                        offset: at,
                        seq: rec.seq,
                    };
                    self.next_seq = rec.seq + 1;
                    if rec.seq >= committed {
                        // the buffer may hold a batch being written: drop it
                        open.reader.seek(SeekFrom::Start(open.offset))?;
                    }
                    return Ok(Some((pos, rec)));
                }
                Err(end) => {
                    if !retried {
                        // stale buffered bytes of the active segment: reread from disk
                        open.reader.seek(SeekFrom::Start(at))?;
                        retried = true;
                        continue;
                    }
                    retried = false;
                    let segment = open.segment;
                    let next = self
                        .shared
                        .lock()
                        .segments
                        .iter()
                        .find(|s| s.first_seq > segment)
                        .cloned();
                    let Some(next) = next else {
                        return Ok(None);
                    };
                    if matches!(end, End::Torn(_)) {
                        // committed data failed its checksum: skip the rest of the segment
                        let mut st = self.shared.lock();
                        st.corrupt += next.first_seq.saturating_sub(self.next_seq);
                    }
                    self.next_seq = self.next_seq.max(next.first_seq);
                    self.cur = Some(Self::open_segment(&next, 0)?);
                }
            }
        }
    }
}

/// `pull_logs` filter.
#[derive(Debug, Default, Clone)]
pub struct Filter {
    pub since_ms: i64,
    pub until_ms: i64,
    pub service: Option<String>,
    pub kind: Option<String>,
    pub trace_id: Option<String>,
}

impl Filter {
    fn matches(&self, rec: &Record, v: &serde_json::Value) -> bool {
        let field = |k: &str| v.get(k).and_then(|x| x.as_str());
        rec.time_ms >= self.since_ms
            && rec.time_ms < self.until_ms
            && self.service.as_deref().is_none_or(|s| s == rec.service)
            && self
                .kind
                .as_deref()
                .is_none_or(|k| Some(k) == field("kind"))
            && self
                .trace_id
                .as_deref()
                .is_none_or(|t| Some(t) == field(gwos_core::event::TRACE_ID))
    }
}

/// Result of a spool query.
#[derive(Debug)]
pub struct Found {
    pub records: Vec<serde_json::Value>,
    /// More matched than `limit`/`max_bytes` allowed (the newest are kept).
    pub truncated: bool,
}

/// Scans the spool (streaming, segment by segment) for committed records
/// matching `f`; keeps the newest `limit` whose JSON totals ≤ `max_bytes`.
pub fn query(shared: &Shared, f: &Filter, limit: usize, max_bytes: usize) -> Result<Found> {
    let (segments, committed) = {
        let st = shared.lock();
        (st.segments.clone(), st.committed)
    };
    let mut out: VecDeque<(usize, serde_json::Value)> = VecDeque::new();
    let (mut bytes, mut truncated) = (0usize, false);
    for (i, seg) in segments.iter().enumerate() {
        let next_start = segments.get(i + 1).and_then(|s| s.first_time_ms);
        if next_start.is_some_and(|t| t < f.since_ms) {
            continue; // every record of this segment is older than `since`
        }
        if seg.first_time_ms.is_some_and(|t| t >= f.until_ms) {
            break;
        }
        let Ok(file) = File::open(&seg.path) else {
            continue; // deleted by the writer meanwhile
        };
        let mut r = BufReader::with_capacity(64 << 10, file);
        while let Ok(Ok(rec)) = record::read_one(&mut r) {
            if rec.seq > committed {
                break;
            }
            let Ok(mut v) = serde_json::from_slice::<serde_json::Value>(&rec.payload) else {
                continue;
            };
            if !f.matches(&rec, &v) {
                continue;
            }
            if let Some(o) = v.as_object_mut() {
                o.insert("seq".into(), rec.seq.into());
                o.insert("boot_id".into(), boot_id_text(&rec.boot_id).into());
                o.insert("service".into(), rec.service.clone().into());
            }
            let n = rec.payload.len() + 80;
            out.push_back((n, v));
            bytes += n;
            while out.len() > limit || bytes > max_bytes {
                let (n, _) = out.pop_front().expect("non-empty");
                bytes -= n;
                truncated = true;
            }
        }
    }
    Ok(Found {
        records: out.into_iter().map(|(_, v)| v).collect(),
        truncated,
    })
}

/// Reads the whole body of a segment file (tests and tools).
pub fn read_segment(path: &Path) -> Result<Vec<Record>> {
    let mut r = BufReader::new(File::open(path)?);
    let mut v = Vec::new();
    while let Ok(rec) = record::read_one(&mut r)? {
        v.push(rec);
    }
    let mut rest = Vec::new();
    r.read_to_end(&mut rest)?;
    Ok(v)
}
