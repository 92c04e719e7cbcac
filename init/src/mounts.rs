//! Mount helpers for both stages (thin wrappers over mount(2) via nix).

use anyhow::{Context, Result};
use nix::mount::{mount, MsFlags};

pub const SAFE: MsFlags = MsFlags::MS_NOSUID
    .union(MsFlags::MS_NODEV)
    .union(MsFlags::MS_NOEXEC);

/// Mounts `fstype` at `target` (created 0755 if missing).
pub fn fs(
    source: &str,
    target: &str,
    fstype: &str,
    flags: MsFlags,
    data: Option<&str>,
) -> Result<()> {
    let _ = std::fs::create_dir_all(target);
    mount(Some(source), target, Some(fstype), flags, data)
        .with_context(|| format!("mounting {fstype} on {target}"))
}

/// Like [`fs`] but an already-mounted target is left as it is.
pub fn fs_once(
    source: &str,
    target: &str,
    fstype: &str,
    flags: MsFlags,
    data: Option<&str>,
) -> Result<()> {
    if is_mounted(target) {
        return Ok(());
    }
    let _ = std::fs::create_dir_all(target);
    match mount(Some(source), target, Some(fstype), flags, data) {
        Ok(()) | Err(nix::errno::Errno::EBUSY) => Ok(()),
        Err(e) => Err(e).with_context(|| format!("mounting {fstype} on {target}")),
    }
}

/// Moves mount `from` to `to` (MS_MOVE).
pub fn move_mount(from: &str, to: &str) -> Result<()> {
    mount(Some(from), to, None::<&str>, MsFlags::MS_MOVE, None::<&str>)
        .with_context(|| format!("moving mount {from} to {to}"))
}

/// Is `path` a mount point (listed in /proc/self/mountinfo)?
pub fn is_mounted(path: &str) -> bool {
    std::fs::read_to_string("/proc/self/mountinfo")
        .map(|t| t.lines().any(|l| l.split(' ').nth(4) == Some(path)))
        .unwrap_or(false)
}
