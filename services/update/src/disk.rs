//! The partitions the writer touches, found by GPT label the way stage 1
//! finds them (`PARTNAME=` in `/sys/class/block/<dev>/uevent`), and a
//! window over one partition that reads and writes with pread/pwrite. On
//! the gateway a window is a whole `/dev/vdXN`; in host tests it is a byte
//! range of a file-backed disk image with the same GPT layout.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::FileExt;
use std::path::PathBuf;

use anyhow::{Context, Result};
use gwos_signing::Slot;

/// One partition: a file (block device or disk image) and a byte range in it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Part {
    pub label: String,
    pub path: PathBuf,
    pub offset: u64,
    pub size: u64,
}

impl Part {
    pub fn open_rw(&self) -> Result<Window> {
        let f = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&self.path)
            .with_context(|| {
                format!(
                    "opening {} ({}) for writing",
                    self.path.display(),
                    self.label
                )
            })?;
        Ok(Window::new(f, self))
    }
    pub fn open_ro(&self) -> Result<Window> {
        let f = File::open(&self.path)
            .with_context(|| format!("opening {} ({})", self.path.display(), self.label))?;
        Ok(Window::new(f, self))
    }
}

/// The disk as the writer sees it: the ESP and both slots' partitions.
#[derive(Debug, Clone)]
pub struct Disk {
    pub esp: Part,
    pub root: [Part; 2],
    pub verity: [Part; 2],
}

impl Disk {
    pub fn root(&self, s: Slot) -> &Part {
        &self.root[s as usize]
    }
    pub fn verity(&self, s: Slot) -> &Part {
        &self.verity[s as usize]
    }
    /// [`gwos_signing::bundle::layout_id`] of this disk (slot A's sizes; a
    /// disk whose slots differ in size gets a layout no bundle matches).
    pub fn layout_id(&self) -> String {
        let (r, v) = (&self.root, &self.verity);
        if r[0].size != r[1].size || v[0].size != v[1].size {
            return format!(
                "uneven slots: root {}/{}, verity {}/{}",
                r[0].size, r[1].size, v[0].size, v[1].size
            );
        }
        gwos_signing::bundle::layout_id(self.esp.size, r[0].size, v[0].size)
    }

    /// The gateway's disk: partitions by label from sysfs, sizes from
    /// `/sys/class/block/<dev>/size`. Two devices with one label are refused.
    pub fn from_sysfs() -> Result<Disk> {
        let all = scan_sysfs();
        let find = |label: &str| -> Result<Part> {
            let hits: Vec<&(String, String)> = all.iter().filter(|(l, _)| l == label).collect();
            anyhow::ensure!(
                hits.len() <= 1,
                "partition label {label:?} is on more than one device; refusing to guess"
            );
            let (_, dev) = hits
                .first()
                .with_context(|| format!("no partition labelled {label}"))?;
            let sectors: u64 = std::fs::read_to_string(format!("/sys/class/block/{dev}/size"))
                .with_context(|| format!("size of {dev}"))?
                .trim()
                .parse()
                .with_context(|| format!("size of {dev}"))?;
            Ok(Part {
                label: label.into(),
                path: PathBuf::from(format!("/dev/{dev}")),
                offset: 0,
                size: sectors * 512,
            })
        };
        Ok(Disk {
            esp: find("esp")?,
            root: [find("root-a")?, find("root-b")?],
            verity: [find("verity-a")?, find("verity-b")?],
        })
    }
}

impl Disk {
    /// A disk image file (offline use and benchmarks): the GPT's partition
    /// entries by name. Only what the writer needs is read: entry LBA,
    /// count, size; each entry's first/last LBA and UTF-16 name.
    pub fn from_image(path: &std::path::Path) -> Result<Disk> {
        let f = File::open(path).with_context(|| format!("opening {}", path.display()))?;
        let mut hdr = [0u8; 92];
        f.read_exact_at(&mut hdr, 512)
            .context("reading the GPT header")?;
        anyhow::ensure!(
            &hdr[..8] == b"EFI PART",
            "{}: no GPT header at LBA 1",
            path.display()
        );
        let le64 = |b: &[u8]| u64::from_le_bytes(b[..8].try_into().expect("8 bytes"));
        let le32 = |b: &[u8]| u32::from_le_bytes(b[..4].try_into().expect("4 bytes"));
        let (lba, count, size) = (
            le64(&hdr[72..]),
            le32(&hdr[80..]),
            le32(&hdr[84..]) as usize,
        );
        anyhow::ensure!(
            (128..=4096).contains(&size) && count <= 1024,
            "GPT entry size {size} / count {count} unsupported"
        );
        let mut entries = vec![0u8; size * count as usize];
        f.read_exact_at(&mut entries, lba * 512)
            .context("reading the GPT entries")?;
        let mut parts = Vec::new();
        for e in entries.chunks(size) {
            let (first, last) = (le64(&e[32..]), le64(&e[40..]));
            if first == 0 && last == 0 {
                continue;
            }
            let units: Vec<u16> = e[56..128]
                .chunks(2)
                .map(|c| u16::from_le_bytes([c[0], c[1]]))
                .take_while(|&u| u != 0)
                .collect();
            let label = String::from_utf16_lossy(&units);
            parts.push(Part {
                label,
                path: path.to_path_buf(),
                offset: first * 512,
                size: (last - first + 1) * 512,
            });
        }
        let find = |l: &str| {
            parts
                .iter()
                .find(|p| p.label == l)
                .cloned()
                .with_context(|| format!("{}: no partition {l}", path.display()))
        };
        Ok(Disk {
            esp: find("esp")?,
            root: [find("root-a")?, find("root-b")?],
            verity: [find("verity-a")?, find("verity-b")?],
        })
    }
}

/// (PARTNAME, DEVNAME) of every labelled block device.
fn scan_sysfs() -> Vec<(String, String)> {
    let mut out = Vec::new();
    let Ok(rd) = std::fs::read_dir("/sys/class/block") else {
        return out;
    };
    for e in rd.flatten() {
        let Ok(t) = std::fs::read_to_string(e.path().join("uevent")) else {
            continue;
        };
        let get = |k: &str| t.lines().find_map(|l| l.strip_prefix(k)).map(str::to_owned);
        if let (Some(label), Some(dev)) = (get("PARTNAME="), get("DEVNAME=")) {
            out.push((label, dev));
        }
    }
    out.sort();
    out
}

/// A partition as a Read + Write + Seek stream (what fatfs and io::copy
/// want), bounded to the partition.
pub struct Window {
    file: File,
    base: u64,
    len: u64,
    pos: u64,
}

impl Window {
    fn new(file: File, p: &Part) -> Self {
        Window {
            file,
            base: p.offset,
            len: p.size,
            pos: 0,
        }
    }
    pub fn len(&self) -> u64 {
        self.len
    }
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
    pub fn file(&self) -> &File {
        &self.file
    }
    pub fn base(&self) -> u64 {
        self.base
    }
    pub fn read_at(&self, buf: &mut [u8], off: u64) -> io::Result<()> {
        self.check(off, buf.len())?;
        self.file.read_exact_at(buf, self.base + off)
    }
    pub fn write_at(&self, buf: &[u8], off: u64) -> io::Result<()> {
        self.check(off, buf.len())?;
        self.file.write_all_at(buf, self.base + off)
    }
    fn check(&self, off: u64, n: usize) -> io::Result<()> {
        if off.checked_add(n as u64).is_none_or(|end| end > self.len) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "{n} bytes at {off} cross the end of the partition ({} bytes)",
                    self.len
                ),
            ));
        }
        Ok(())
    }
    /// fsync, then drop the cached pages so the next read comes from the disk.
    pub fn sync_and_drop_cache(&self) -> io::Result<()> {
        self.file.sync_all()?;
        rustix::fs::fadvise(
            &self.file,
            self.base,
            std::num::NonZeroU64::new(self.len),
            rustix::fs::Advice::DontNeed,
        )
        .map_err(io::Error::from)
    }
}

impl Read for Window {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = (buf.len() as u64).min(self.len.saturating_sub(self.pos)) as usize;
        if n == 0 {
            return Ok(0);
        }
        let got = self.file.read_at(&mut buf[..n], self.base + self.pos)?;
        self.pos += got as u64;
        Ok(got)
    }
}

impl Write for Window {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = (buf.len() as u64).min(self.len.saturating_sub(self.pos)) as usize;
        if n == 0 && !buf.is_empty() {
            return Err(io::Error::new(
                io::ErrorKind::WriteZero,
                "end of the partition",
            ));
        }
        let put = self.file.write_at(&buf[..n], self.base + self.pos)?;
        self.pos += put as u64;
        Ok(put)
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Seek for Window {
    fn seek(&mut self, to: SeekFrom) -> io::Result<u64> {
        let new = match to {
            SeekFrom::Start(o) => Some(o),
            SeekFrom::End(d) => self.len.checked_add_signed(d),
            SeekFrom::Current(d) => self.pos.checked_add_signed(d),
        };
        match new {
            Some(p) if p <= self.len => {
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
