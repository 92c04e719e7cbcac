//! Shared helpers of the host integration tests: namespaces with a Drop
//! guard, child processes that are always killed, locating the binaries.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

pub fn require_root_and_tools(tools: &[&str]) {
    assert!(
        std::fs::metadata("/proc/self")
            .map(|m| std::os::unix::fs::MetadataExt::uid(&m))
            .unwrap_or(1)
            == 0,
        "this test creates network namespaces and must run as root"
    );
    for t in tools {
        let ok = Command::new("sh")
            .arg("-c")
            .arg(format!("command -v {t}"))
            .stdout(Stdio::null())
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        assert!(
            ok,
            "tool {t:?} is missing (Debian packages in .ci/debian-packages.txt)"
        );
    }
}

pub fn sh(cmd: &[&str]) -> Output {
    Command::new(cmd[0])
        .args(&cmd[1..])
        .output()
        .unwrap_or_else(|e| panic!("running {cmd:?}: {e}"))
}

pub fn must(cmd: &[&str]) -> String {
    let o = sh(cmd);
    assert!(
        o.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// Network namespaces deleted on drop (also on panic).
pub struct Netns(pub Vec<String>);

impl Netns {
    pub fn new(names: &[&str]) -> Self {
        let ns = Netns(names.iter().map(|s| s.to_string()).collect());
        for n in names {
            let _ = sh(&["ip", "netns", "del", n]);
            must(&["ip", "netns", "add", n]);
            must(&["ip", "-n", n, "link", "set", "lo", "up"]);
        }
        ns
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        for n in &self.0 {
            let _ = sh(&["ip", "netns", "del", n]);
        }
    }
}

/// Children killed on drop.
#[derive(Default)]
pub struct Procs(pub Vec<Child>);

impl Procs {
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

/// target/<profile> of this test binary (…/deps/<test> → …).
pub fn target_profile_dir() -> PathBuf {
    std::env::current_exe()
        .unwrap()
        .parent()
        .unwrap()
        .parent()
        .unwrap()
        .to_path_buf()
}

/// Builds (if needed) and returns `gwosd` and `gwos-nft-base`: $GWOSD /
/// $GWOS_NFT_BASE if set, else `cargo build -p gwos-init -p gwos-netfilter`
/// into this test's target dir.
pub fn binaries() -> (PathBuf, PathBuf) {
    let dir = target_profile_dir();
    let target_root = dir.parent().unwrap().to_path_buf();
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

pub fn wait_until(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    let t = Instant::now();
    while t.elapsed() < timeout {
        if f() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("timed out after {timeout:?} waiting for {what}");
}
