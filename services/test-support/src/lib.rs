//! What the host integration tests of spa, netfilter and tls-front share:
//! root and tool checks, running commands (also inside a namespace),
//! network namespaces and child processes that are cleaned up on drop (also
//! when an assertion fails), waiting with a deadline, and locating or
//! building `gwosd` and `gwos-nft-base`. Only for tests: it panics with the
//! reason instead of returning errors.

use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// Fails the test unless it runs as root and every tool is on `PATH`.
pub fn require_root_and_tools(tools: &[&str]) {
    assert!(
        is_root(),
        "this test creates network namespaces and must run as root"
    );
    for t in tools {
        let ok = Command::new("sh")
            .arg("-c")
            .arg(format!("command -v {t}"))
            .stdout(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        assert!(
            ok,
            "tool {t:?} is missing (Debian packages in .ci/debian-packages.txt)"
        );
    }
}

/// Whether this process runs as uid 0 (read from /proc, no unsafe).
pub fn is_root() -> bool {
    std::fs::metadata("/proc/self")
        .map(|m| std::os::unix::fs::MetadataExt::uid(&m) == 0)
        .unwrap_or(false)
}

/// Runs `cmd` (program and arguments) and returns its output, success or not.
pub fn sh(cmd: &[&str]) -> Output {
    Command::new(cmd[0])
        .args(&cmd[1..])
        .output()
        .unwrap_or_else(|e| panic!("running {cmd:?}: {e}"))
}

/// Runs `cmd`, fails the test if it fails, returns its stdout.
pub fn must(cmd: &[&str]) -> String {
    let o = sh(cmd);
    assert!(
        o.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// `must` inside network namespace `ns` (`ip netns exec`).
pub fn in_ns(ns: &str, cmd: &[&str]) -> String {
    let mut v = vec!["ip", "netns", "exec", ns];
    v.extend_from_slice(cmd);
    must(&v)
}

/// Whether `cmd` succeeds inside network namespace `ns`.
pub fn ns_ok(ns: &str, cmd: &[&str]) -> bool {
    let mut v = vec!["ip", "netns", "exec", ns];
    v.extend_from_slice(cmd);
    sh(&v).status.success()
}

/// Network namespaces deleted on drop (also on panic), with `lo` up.
#[derive(Default)]
pub struct Netns(pub Vec<String>);

impl Netns {
    /// Creates each namespace (deleting a leftover of the same name first).
    pub fn new(names: &[&str]) -> Self {
        let mut ns = Netns::default();
        for n in names {
            let _ = sh(&["ip", "netns", "del", n]);
            ns.add(n.to_string());
        }
        ns
    }

    /// Creates one more namespace and returns its name.
    pub fn add(&mut self, name: String) -> String {
        must(&["ip", "netns", "add", &name]);
        self.0.push(name.clone());
        must(&["ip", "-n", &name, "link", "set", "lo", "up"]);
        name
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        for n in &self.0 {
            let _ = sh(&["ip", "netns", "del", n]);
        }
    }
}

/// Runs `f` on a thread that has joined network namespace `ns`, so netlink
/// sockets opened by a library talk to that namespace's kernel state.
pub fn in_netns<T: Send + 'static>(ns: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let path = format!("/run/netns/{ns}");
    std::thread::spawn(move || {
        let file = std::fs::File::open(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
        // SAFETY: setns(2) on a descriptor we hold open; it changes only this thread's network namespace.
        let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
        assert_eq!(rc, 0, "setns {path}: {}", std::io::Error::last_os_error());
        f()
    })
    .join()
    .expect("netns thread panicked")
}

/// Children killed and reaped on drop.
#[derive(Default)]
pub struct Procs(pub Vec<Child>);

impl Procs {
    /// Spawns `cmd` and returns its index in the list.
    pub fn spawn(&mut self, cmd: &mut Command) -> usize {
        let c = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("spawning {cmd:?}: {e}"));
        self.0.push(c);
        self.0.len() - 1
    }
}

impl Drop for Procs {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Polls `f` every 50 ms; fails the test naming `what` after `timeout`.
pub fn wait_until(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    let t = Instant::now();
    while !f() {
        assert!(
            t.elapsed() < timeout,
            "timed out after {timeout:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// target/<profile> of the running test binary (…/deps/<test> → …).
pub fn target_profile_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("current_exe");
    exe.parent()
        .and_then(Path::parent)
        .expect("a test binary lives in target/<profile>/deps")
        .to_path_buf()
}

/// `gwosd` and `gwos-nft-base`: $GWOSD / $GWOS_NFT_BASE if set, else built
/// with `cargo build -p gwos-init -p gwos-netfilter --bins` into the running
/// test's target dir.
pub fn binaries() -> (PathBuf, PathBuf) {
    let dir = target_profile_dir();
    let target_root = dir.parent().expect("target dir").to_path_buf();
    let gwosd = std::env::var_os("GWOSD").map(PathBuf::from);
    let base = std::env::var_os("GWOS_NFT_BASE").map(PathBuf::from);
    if gwosd.is_none() || base.is_none() {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let ws = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
        let st = Command::new(cargo)
            .current_dir(&ws)
            .env("CARGO_TARGET_DIR", &target_root)
            .args([
                "build",
                "-q",
                "-j2",
                "-p",
                "gwos-init",
                "-p",
                "gwos-netfilter",
                "--bins",
            ])
            .status()
            .expect("running cargo build for gwosd");
        assert!(st.success(), "building gwosd and gwos-nft-base failed");
    }
    (
        gwosd.unwrap_or(dir.join("gwosd")),
        base.unwrap_or(dir.join("gwos-nft-base")),
    )
}

/// `gwosd` alone (see [`binaries`]).
pub fn gwosd() -> PathBuf {
    binaries().0
}
