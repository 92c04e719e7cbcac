//! Driving `update_apply` over the control channel (the real OpenSSH client,
//! from the test namespace) with an optional power cut: QEMU is killed at a
//! chosen point of the apply, as a pulled plug would stop the machine. What
//! the guest had handed to its virtual disk stays; what it had not, is lost.
//!
//! The point is chosen by the stream (only the first N bytes of the bundle
//! are sent, so the writer is stalled inside that part), by the writer's own
//! progress lines (the phases after the stream: writing the slot, the UKI on
//! the ESP), or by a delay after the stream started (the random soak).

use std::io::{BufRead, BufReader, Read, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::{NetNs, Qemu};

/// Where the power is cut.
#[derive(Clone, Debug)]
pub enum Cut {
    /// Only the first N bytes of the bundle are sent; the cut comes once the
    /// guest has had `settle` to take them in (the stream stays open).
    AfterBytes(u64, Duration),
    /// As soon as a progress line containing this text arrives.
    OnProgress(String),
    /// This long after the stream started (the answer may come first: then
    /// the apply finished and the cut lands after it).
    After(Duration),
}

/// What one `update_apply` call saw.
#[derive(Debug, Default)]
pub struct Applied {
    /// The writer's `{"progress": …}` lines, in order.
    pub progress: Vec<String>,
    /// The final answer, when the call finished before any cut.
    pub answer: Option<serde_json::Value>,
    /// Bundle bytes handed to ssh.
    pub sent: u64,
    /// Did the power go (QEMU was killed)?
    pub cut: bool,
    /// Seconds from the start of the stream to the answer or the cut.
    pub seconds: f64,
}

/// Streams `bundle` to `update_apply` on the guest 10.0.2.15 from `src` in
/// `ns`. With `cut`, kills QEMU (`q` becomes `None`) at that point.
pub fn update_apply(
    ns: &NetNs,
    key: &Path,
    src: &str,
    bundle: &Path,
    q: &mut Option<Qemu>,
    cut: Option<Cut>,
) -> Result<Applied> {
    let bytes = std::fs::read(bundle).with_context(|| format!("reading {}", bundle.display()))?;
    let limit = match &cut {
        Some(Cut::AfterBytes(n, _)) => (*n).min(bytes.len() as u64),
        _ => bytes.len() as u64,
    };
    let mut child = Command::new("ip")
        // ip execs ssh: killing the child is killing the client.
        .args(["netns", "exec", &ns.name])
        .args(crate::netns::control_ssh_argv(key, src, "update_apply"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("starting ssh update_apply")?;
    let mut stdin = child.stdin.take().context("ssh stdin")?;
    let stdout = child.stdout.take().context("ssh stdout")?;
    let stderr = child.stderr.take().context("ssh stderr")?;
    let sent = Arc::new(AtomicU64::new(0));
    let hold = Arc::new(AtomicBool::new(true));
    let t0 = Instant::now();
    let writer = {
        let (sent, hold) = (sent.clone(), hold.clone());
        std::thread::spawn(move || {
            for chunk in bytes[..limit as usize].chunks(64 << 10) {
                if stdin.write_all(chunk).is_err() {
                    return;
                }
                sent.fetch_add(chunk.len() as u64, Ordering::SeqCst);
            }
            // A short stream stays open (the writer waits for more) until the cut.
            while limit < bytes.len() as u64 && hold.load(Ordering::SeqCst) {
                std::thread::sleep(Duration::from_millis(50));
            }
        })
    };
    // The answer comes on stdout; the writer's progress as "update: …" lines on stderr.
    let (tx, rx) = mpsc::channel::<(bool, String)>();
    let lines = |r: Box<dyn Read + Send>, is_progress: bool, tx: mpsc::Sender<(bool, String)>| {
        std::thread::spawn(move || {
            for line in BufReader::new(r).lines().map_while(Result::ok) {
                if tx.send((is_progress, line)).is_err() {
                    return;
                }
            }
        })
    };
    let readers = [
        lines(Box::new(stdout), false, tx.clone()),
        lines(Box::new(stderr), true, tx),
    ];
    let mut out = Applied::default();
    let mut settled_since: Option<Instant> = None;
    let deadline = Duration::from_secs(600);
    let mut finished = false;
    loop {
        match rx.recv_timeout(Duration::from_millis(20)) {
            Ok((true, line)) => {
                let p = line.strip_prefix("update: ").unwrap_or(&line).to_string();
                let hit = matches!(&cut, Some(Cut::OnProgress(pat)) if p.contains(pat.as_str()));
                out.progress.push(p);
                if hit {
                    break;
                }
            }
            Ok((false, line)) => {
                let v: serde_json::Value = serde_json::from_str(&line)
                    .with_context(|| format!("update_apply answered a non-JSON line {line:?}"))?;
                out.answer = Some(v);
                finished = true;
                break;
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                finished = true;
                break;
            }
        }
        match &cut {
            Some(Cut::AfterBytes(_, settle)) if sent.load(Ordering::SeqCst) >= limit => {
                let since = *settled_since.get_or_insert_with(Instant::now);
                if since.elapsed() >= *settle {
                    break;
                }
            }
            Some(Cut::After(d)) if t0.elapsed() >= *d => break,
            _ => {}
        }
        if t0.elapsed() > deadline {
            let _ = child.kill();
            bail!("update_apply neither answered nor reached its cut within {deadline:?}");
        }
    }
    out.seconds = t0.elapsed().as_secs_f64();
    if cut.is_some() && !finished {
        // The plug: the guest stops mid-write.
        drop(q.take());
        out.cut = true;
    }
    hold.store(false, Ordering::SeqCst);
    if out.cut {
        let _ = child.kill();
    }
    let status = child.wait()?;
    let _ = writer.join();
    for r in readers {
        let _ = r.join();
    }
    out.sent = sent.load(Ordering::SeqCst);
    if !out.cut && out.answer.is_none() {
        bail!(
            "update_apply ended without an answer ({status}); stderr lines {:?}",
            out.progress
        );
    }
    Ok(out)
}

/// A small xorshift generator for the soak's random points, seeded (and
/// printed) so a failing run can be repeated with `GWOS_SOAK_SEED`.
pub struct Rng(u64);

impl Rng {
    pub fn from_env() -> Rng {
        let seed = std::env::var("GWOS_SOAK_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| {
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_nanos() as u64)
                    .unwrap_or(1)
            })
            | 1;
        eprintln!("power-cut soak: GWOS_SOAK_SEED={seed}");
        Rng(seed)
    }

    /// Uniform in `[0, n)`.
    pub fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n.max(1)
    }
}
