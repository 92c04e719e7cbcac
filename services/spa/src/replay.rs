//! The replay cache (SPA-SPEC §9): b64u(SHA-256(S)) of every packet that
//! decrypted, kept on `/var` so a restart does not reopen the window. An
//! append-only file of `<digest> <epoch>` lines; entries older than the
//! retention (2 × age window + slack: the longest a captured packet could still
//! pass the age check) are dropped; the file is compacted (atomic rewrite)
//! when it holds too many dead lines. Bounded: when `max_entries` live
//! entries exist, new packets are refused (fail closed) rather than evicting.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

pub struct ReplayCache {
    path: PathBuf,
    file: File,
    entries: HashMap<String, i64>,
    retention: i64,
    max_entries: usize,
    lines: usize,
}

#[derive(Debug, PartialEq, Eq)]
pub enum Full {
    Full,
}

impl ReplayCache {
    /// Opens (or creates) the cache; `max_age` is the packet age window in seconds.
    pub fn open(path: &Path, max_age: i64, max_entries: usize) -> Result<Self> {
        let retention = 2 * max_age + 30;
        let now = now();
        let mut entries = HashMap::new();
        let mut lines = 0;
        if let Ok(f) = File::open(path) {
            for line in BufReader::new(f).lines() {
                let Ok(line) = line else { break }; // a torn last line after a crash
                lines += 1;
                let mut it = line.split(' ');
                let (Some(d), Some(t)) = (it.next(), it.next()) else {
                    continue;
                };
                let Ok(t) = t.parse::<i64>() else { continue };
                if d.len() == 43 && now - t <= retention {
                    entries.insert(d.to_string(), t);
                }
            }
        }
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o600)
            .open(path)
            .with_context(|| format!("opening replay cache {}", path.display()))?;
        let mut c = Self {
            path: path.to_owned(),
            file,
            entries,
            retention,
            max_entries,
            lines,
        };
        c.compact_if_needed(now)?;
        Ok(c)
    }

    pub fn contains(&self, digest: &str) -> bool {
        self.entries.contains_key(digest)
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Records `digest`; `Ok(false)` if it was already there (a replay).
    /// Errors when the cache is full or the disk write fails (fail closed).
    pub fn insert(&mut self, digest: &str, now: i64) -> Result<bool> {
        if self.entries.contains_key(digest) {
            return Ok(false);
        }
        if self.entries.len() >= self.max_entries {
            self.expire(now);
            anyhow::ensure!(
                self.entries.len() < self.max_entries,
                "replay cache full ({} entries)",
                self.max_entries
            );
        }
        writeln!(self.file, "{digest} {now}").context("appending to the replay cache")?;
        self.file.sync_data().context("syncing the replay cache")?;
        self.entries.insert(digest.to_string(), now);
        self.lines += 1;
        self.compact_if_needed(now)?;
        Ok(true)
    }

    fn expire(&mut self, now: i64) {
        let r = self.retention;
        self.entries.retain(|_, t| now - *t <= r);
    }

    fn compact_if_needed(&mut self, now: i64) -> Result<()> {
        if self.lines & 511 == 0 {
            self.expire(now);
        }
        if self.lines <= 2 * self.entries.len() + 1024 {
            return Ok(());
        }
        self.expire(now);
        let mut text = String::with_capacity(self.entries.len() * 56);
        for (d, t) in &self.entries {
            text.push_str(&format!("{d} {t}\n"));
        }
        gwos_core::state::write_atomic(&self.path, text.as_bytes())?;
        self.file = OpenOptions::new().append(true).open(&self.path)?;
        self.lines = self.entries.len();
        Ok(())
    }
}

pub fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(i: usize) -> String {
        format!("{i:043}")
    }

    #[test]
    fn survives_reopen_expires_and_compacts() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("replay.log");
        let t = now();
        {
            let mut c = ReplayCache::open(&p, 120, 100_000).unwrap();
            assert!(c.insert(&d(1), t).unwrap());
            assert!(!c.insert(&d(1), t).unwrap());
            assert!(c.insert(&d(2), t - 10_000).unwrap()); // long expired
        }
        let mut c = ReplayCache::open(&p, 120, 100_000).unwrap();
        assert!(c.contains(&d(1)), "lost across restart");
        assert!(!c.contains(&d(2)), "expired entry kept");
        assert!(!c.insert(&d(1), t).unwrap());
        // churn over simulated time: old entries expire and the file is compacted
        for i in 10..3000 {
            c.insert(&d(i), t + i as i64).unwrap();
        }
        let lines = std::fs::read_to_string(&p).unwrap().lines().count();
        assert!(lines < 2000, "file not compacted: {lines} lines");
        assert!(c.len() < 800, "expired entries kept: {}", c.len());
        assert!(c.contains(&d(2999)));
    }

    #[test]
    fn bounded_fails_closed() {
        let dir = tempfile::tempdir().unwrap();
        let mut c = ReplayCache::open(&dir.path().join("r"), 120, 3).unwrap();
        let t = now();
        for i in 0..3 {
            c.insert(&d(i), t).unwrap();
        }
        let e = c.insert(&d(9), t).unwrap_err().to_string();
        assert!(e.contains("replay cache full (3 entries)"), "{e}");
    }
}
