//! cgroup v2: one group per service under /sys/fs/cgroup/gwos.<name> with
//! memory.max, pids.max and cpu.weight.

use std::path::PathBuf;

use anyhow::{Context, Result};

pub const ROOT: &str = "/sys/fs/cgroup";

/// Enables the controllers for children of the root group.
pub fn enable_controllers() -> Result<()> {
    std::fs::write(
        format!("{ROOT}/cgroup.subtree_control"),
        "+memory +pids +cpu",
    )
    .context("enabling cgroup controllers memory, pids, cpu")
}

pub fn path(name: &str) -> PathBuf {
    PathBuf::from(format!("{ROOT}/gwos.{name}"))
}

/// Creates (or reuses) the service's group and writes its limits.
pub fn prepare(name: &str, memory_max: &str, pids_max: u32, cpu_weight: u32) -> Result<PathBuf> {
    let p = path(name);
    if !p.exists() {
        std::fs::create_dir(&p).with_context(|| format!("creating cgroup {}", p.display()))?;
    }
    let w = |f: &str, v: String| {
        std::fs::write(p.join(f), v).with_context(|| format!("cgroup {}: writing {f}", p.display()))
    };
    w("memory.max", memory_max.to_string())?;
    w("memory.swap.max", "0".into()).ok();
    w("pids.max", pids_max.to_string())?;
    w("cpu.weight", cpu_weight.to_string())?;
    Ok(p)
}

/// Moves the calling process into the group (done by the service process itself before it drops root).
pub fn join(name: &str) -> Result<()> {
    std::fs::write(path(name).join("cgroup.procs"), "0")
        .with_context(|| format!("joining cgroup gwos.{name}"))
}

/// SIGKILLs everything left in the group (after the main process died).
pub fn kill_all(name: &str) {
    let _ = std::fs::write(path(name).join("cgroup.kill"), "1");
}
