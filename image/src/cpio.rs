//! A deterministic cpio "newc" writer for the initramfs: entries sorted by
//! path, inode numbers assigned in that order, one fixed mtime, uid/gid 0.

use std::collections::BTreeMap;

#[derive(Debug, Clone)]
enum Kind {
    Dir,
    File(Vec<u8>),
    CharDev(u32, u32),
}

#[derive(Debug, Default)]
pub struct Archive {
    entries: BTreeMap<String, (u32, Kind)>,
}

impl Archive {
    pub fn new() -> Self {
        Self::default()
    }

    fn norm(path: &str) -> String {
        path.trim_start_matches('/').to_string()
    }

    /// Adds a directory and any missing parents (mode 0755).
    pub fn dir(&mut self, path: &str, mode: u32) {
        let p = Self::norm(path);
        let mut acc = String::new();
        for part in p.split('/') {
            if !acc.is_empty() {
                acc.push('/');
            }
            acc.push_str(part);
            let m = if acc == p { mode } else { 0o755 };
            self.entries.entry(acc.clone()).or_insert((m, Kind::Dir));
        }
    }

    fn parent(&mut self, p: &str) {
        if let Some((parent, _)) = p.rsplit_once('/') {
            self.dir(parent, 0o755);
        }
    }

    pub fn file(&mut self, path: &str, mode: u32, data: Vec<u8>) {
        let p = Self::norm(path);
        self.parent(&p);
        self.entries.insert(p, (mode, Kind::File(data)));
    }

    pub fn char_dev(&mut self, path: &str, mode: u32, major: u32, minor: u32) {
        let p = Self::norm(path);
        self.parent(&p);
        self.entries.insert(p, (mode, Kind::CharDev(major, minor)));
    }

    pub fn to_bytes(&self, mtime: u32) -> Vec<u8> {
        let mut out = Vec::new();
        for (ino, (name, (perm, kind))) in self.entries.iter().enumerate() {
            let (fmt, nlink, data, rdev): (u32, u32, &[u8], (u32, u32)) = match kind {
                Kind::Dir => (0o040000, 2, &[], (0, 0)),
                Kind::File(d) => (0o100000, 1, d, (0, 0)),
                Kind::CharDev(a, b) => (0o020000, 1, &[], (*a, *b)),
            };
            header(
                &mut out,
                ino as u32 + 1,
                fmt | (perm & 0o7777),
                nlink,
                mtime,
                data.len() as u32,
                rdev,
                name,
            );
            out.extend_from_slice(data);
            align4(&mut out);
        }
        header(&mut out, 0, 0, 1, 0, 0, (0, 0), "TRAILER!!!");
        out
    }
}

#[allow(clippy::too_many_arguments)]
fn header(
    out: &mut Vec<u8>,
    ino: u32,
    mode: u32,
    nlink: u32,
    mtime: u32,
    size: u32,
    rdev: (u32, u32),
    name: &str,
) {
    let fields = [
        ino,
        mode,
        0,
        0,
        nlink,
        mtime,
        size,
        0,
        0,
        rdev.0,
        rdev.1,
        name.len() as u32 + 1,
        0,
    ];
    out.extend_from_slice(b"070701");
    for f in fields {
        out.extend_from_slice(format!("{f:08x}").as_bytes());
    }
    out.extend_from_slice(name.as_bytes());
    out.push(0);
    align4(out);
}

fn align4(out: &mut Vec<u8>) {
    while out.len() & 3 != 0 {
        out.push(0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::process::{Command, Stdio};

    fn sample() -> Vec<u8> {
        let mut a = Archive::new();
        a.file("/init", 0o755, b"#!fake init\n".to_vec());
        a.file("/etc/gwos/release-keys/abc.pub", 0o644, b"00ff\n".to_vec());
        a.dir("/proc", 0o755);
        a.dir("/newroot", 0o755);
        a.char_dev("/dev/console", 0o600, 5, 1);
        a.to_bytes(1_700_000_000)
    }

    fn cpio(args: &[&str], input: &[u8], dir: &std::path::Path) -> String {
        let mut c = Command::new("cpio")
            .args(args)
            .current_dir(dir)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("cpio (Debian package cpio) must be installed");
        c.stdin.take().unwrap().write_all(input).unwrap();
        let o = c.wait_with_output().unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        String::from_utf8_lossy(&o.stdout).into_owned()
    }

    #[test]
    fn deterministic_and_parsed_by_gnu_cpio() {
        let b = sample();
        assert_eq!(b, sample());
        assert_eq!(b.len() % 4, 0);
        let dir = tempfile::tempdir().unwrap();
        let list = cpio(&["-t", "--quiet"], &b, dir.path());
        let names: Vec<&str> = list.lines().collect();
        assert_eq!(
            names,
            [
                "dev",
                "dev/console",
                "etc",
                "etc/gwos",
                "etc/gwos/release-keys",
                "etc/gwos/release-keys/abc.pub",
                "init",
                "newroot",
                "proc"
            ]
        );
        let verbose = cpio(&["-tv", "--quiet"], &b, dir.path());
        assert!(
            verbose.lines().any(|l| l.starts_with("crw-------")
                && l.contains("5,")
                && l.ends_with("dev/console")),
            "{verbose}"
        );
        assert!(
            verbose
                .lines()
                .any(|l| l.starts_with("-rwxr-xr-x") && l.ends_with("init")),
            "{verbose}"
        );
        // extract regular files and check contents (device nodes need mknod; skip them)
        cpio(
            &[
                "-i",
                "--quiet",
                "-d",
                "--no-absolute-filenames",
                "init",
                "etc/*",
            ],
            &b,
            dir.path(),
        );
        assert_eq!(
            std::fs::read(dir.path().join("init")).unwrap(),
            b"#!fake init\n"
        );
        assert_eq!(
            std::fs::read(dir.path().join("etc/gwos/release-keys/abc.pub")).unwrap(),
            b"00ff\n"
        );
    }
}
