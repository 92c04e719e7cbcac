//! A small write-back block cache between `fatfs` and the ESP partition.
//! fatfs reads and writes a sector or a cluster at a time and updates both
//! FATs for every cluster it allocates (a 16 MiB UKI was ~175 000 pread and
//! pwrite calls); this keeps 4 KiB blocks in memory, merges the writes and
//! writes dirty blocks back in order, adjacent ones in one call. At most
//! [`MAX_CACHED`] bytes are held; beyond that it writes back and starts
//! over. [`BlockCache::flush`] must be called before the device is fsynced
//! (`with_fs` in [`crate::esp`] does; fatfs' `unmount` flushes through it).

use std::collections::BTreeMap;
use std::io::{self, Read, Seek, SeekFrom, Write};

use crate::disk::Window;

const BLOCK: u64 = 4096;
pub const MAX_CACHED: usize = 8 << 20;

pub struct BlockCache<'a> {
    dev: &'a mut Window,
    blocks: BTreeMap<u64, (Box<[u8]>, bool)>,
    pos: u64,
}

impl<'a> BlockCache<'a> {
    pub fn new(dev: &'a mut Window) -> Self {
        BlockCache {
            dev,
            blocks: BTreeMap::new(),
            pos: 0,
        }
    }

    fn block(&mut self, n: u64) -> io::Result<&mut (Box<[u8]>, bool)> {
        if !self.blocks.contains_key(&n) {
            if self.blocks.len() * BLOCK as usize >= MAX_CACHED {
                self.write_back()?;
                self.blocks.clear();
            }
            let len = (self.dev.len() - n * BLOCK).min(BLOCK) as usize;
            let mut b = vec![0u8; len].into_boxed_slice();
            self.dev.read_at(&mut b, n * BLOCK)?;
            self.blocks.insert(n, (b, false));
        }
        Ok(self.blocks.get_mut(&n).expect("just inserted"))
    }

    /// Writes every dirty block, runs of adjacent blocks in one pwrite.
    fn write_back(&mut self) -> io::Result<()> {
        let mut run: Option<(u64, Vec<u8>)> = None;
        for (n, (data, dirty)) in self.blocks.iter_mut() {
            if !*dirty {
                continue;
            }
            *dirty = false;
            match &mut run {
                Some((start, buf)) if *start + buf.len() as u64 == n * BLOCK => {
                    buf.extend_from_slice(data)
                }
                _ => {
                    if let Some((start, buf)) = run.take() {
                        self.dev.write_at(&buf, start)?;
                    }
                    run = Some((n * BLOCK, data.to_vec()));
                }
            }
        }
        if let Some((start, buf)) = run {
            self.dev.write_at(&buf, start)?;
        }
        Ok(())
    }
}

impl Read for BlockCache<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.pos >= self.dev.len() || buf.is_empty() {
            return Ok(0);
        }
        let (n, off) = (self.pos / BLOCK, (self.pos % BLOCK) as usize);
        let b = &self.block(n)?.0;
        let k = (b.len() - off).min(buf.len());
        buf[..k].copy_from_slice(&b[off..off + k]);
        self.pos += k as u64;
        Ok(k)
    }
}

impl Write for BlockCache<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        if self.pos >= self.dev.len() {
            return Err(io::Error::new(
                io::ErrorKind::WriteZero,
                "end of the partition",
            ));
        }
        let (n, off) = (self.pos / BLOCK, (self.pos % BLOCK) as usize);
        let entry = self.block(n)?;
        let k = (entry.0.len() - off).min(buf.len());
        entry.0[off..off + k].copy_from_slice(&buf[..k]);
        entry.1 = true;
        self.pos += k as u64;
        Ok(k)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.write_back()
    }
}

impl Seek for BlockCache<'_> {
    fn seek(&mut self, to: SeekFrom) -> io::Result<u64> {
        let new = match to {
            SeekFrom::Start(o) => Some(o),
            SeekFrom::End(d) => self.dev.len().checked_add_signed(d),
            SeekFrom::Current(d) => self.pos.checked_add_signed(d),
        };
        match new {
            Some(p) if p <= self.dev.len() => {
                self.pos = p;
                Ok(p)
            }
            _ => Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "seek outside the partition",
            )),
        }
    }
}

impl Drop for BlockCache<'_> {
    fn drop(&mut self) {
        // Callers flush explicitly and check the result; this only keeps a
        // forgotten flush from losing writes.
        let _ = self.write_back();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::disk::Part;

    #[test]
    fn writes_reach_the_device_only_on_flush_and_match_direct_writes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("dev");
        std::fs::write(&path, vec![7u8; 5 * 4096 + 100]).unwrap();
        let part = Part {
            label: "esp".into(),
            path: path.clone(),
            offset: 100,
            size: 5 * 4096,
        };
        let mut w = part.open_rw().unwrap();
        let mut want = vec![7u8; 5 * 4096];
        {
            let mut c = BlockCache::new(&mut w);
            for (at, len, val) in [
                (10u64, 5000usize, 1u8),
                (4090, 20, 2),
                (16384, 4096, 3),
                (0, 1, 4),
            ] {
                c.seek(SeekFrom::Start(at)).unwrap();
                c.write_all(&vec![val; len]).unwrap();
                want[at as usize..at as usize + len].fill(val);
            }
            let mut back = vec![0u8; 5 * 4096];
            c.seek(SeekFrom::Start(0)).unwrap();
            c.read_exact(&mut back).unwrap();
            assert_eq!(back, want, "reads see the cached writes");
            assert_eq!(
                std::fs::read(&path).unwrap()[100..],
                vec![7u8; 5 * 4096][..],
                "nothing written before flush"
            );
            c.flush().unwrap();
        }
        let disk = std::fs::read(&path).unwrap();
        assert_eq!(
            &disk[..100],
            &[7u8; 100][..],
            "bytes before the partition untouched"
        );
        assert_eq!(&disk[100..], &want[..]);
        w.seek(SeekFrom::Start(0)).unwrap();
    }
}
