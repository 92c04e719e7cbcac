//! The sandbox a service process puts itself in before its `run` starts.
//! PID 1 spawns `gwosd run <name>` with `GWOS_SANDBOX=<json spec>`; the new
//! (single-threaded, still root) process then: joins its cgroup, sets
//! rlimits, unshares its mount namespace (everything read-only except its
//! state dir, `/run/gwos` and declared paths; a private /tmp), drops to its
//! uid/gid keeping only the declared capabilities (bounding, permitted,
//! effective, inheritable, ambient), sets no_new_privs and installs the
//! seccomp allowlist ([`crate::seccomp`]) last. Without `GWOS_SANDBOX` (host
//! tests) nothing happens.

use std::collections::HashSet;

use anyhow::{Context, Result};
use caps::{CapSet, Capability};
use nix::mount::{mount, MsFlags};
use serde::{Deserialize, Serialize};

pub const ENV: &str = "GWOS_SANDBOX";

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Spec {
    pub name: String,
    pub uid: u32,
    pub gid: u32,
    pub caps: Vec<String>,
    pub writable: Vec<String>,
    pub nofile: u64,
}

/// Applies the sandbox if PID 1 asked for one.
pub fn apply_from_env() -> Result<()> {
    let Ok(json) = std::env::var(ENV) else {
        return Ok(());
    };
    std::env::remove_var(ENV);
    let spec: Spec = serde_json::from_str(&json).context("bad GWOS_SANDBOX spec")?;
    apply(&spec).with_context(|| format!("sandboxing service {}", spec.name))
}

fn apply(s: &Spec) -> Result<()> {
    crate::cgroup::join(&s.name)?;
    rlimits(s.nofile)?;
    mount_namespace(s)?;
    drop_privileges(s)?;
    nix::sys::prctl::set_no_new_privs().context("no_new_privs")?;
    // Last: every syscall above (cgroup, rlimits, unshare, mount, setres*id,
    // capset, prctl) is on the seccomp NEVER list, so nothing may come after it.
    crate::seccomp::install(&s.name)
}

fn rlimits(nofile: u64) -> Result<()> {
    use nix::sys::resource::{setrlimit, Resource};
    setrlimit(Resource::RLIMIT_NOFILE, nofile, nofile).context("RLIMIT_NOFILE")?;
    setrlimit(Resource::RLIMIT_CORE, 0, 0).context("RLIMIT_CORE")?;
    Ok(())
}

fn mount_namespace(s: &Spec) -> Result<()> {
    nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNS).context("unshare(CLONE_NEWNS)")?;
    let none = None::<&str>;
    mount(none, "/", none, MsFlags::MS_REC | MsFlags::MS_PRIVATE, none)
        .context("making / private")?;
    let state = format!("{}/{}", gwos_core::context::STATE_ROOT, s.name);
    let mut rw: Vec<String> = vec![state, gwos_core::context::RUN_DIR.to_string()];
    rw.extend(s.writable.iter().cloned());
    // Bind each writable path onto itself so it stays writable below the read-only parents.
    for p in &rw {
        std::fs::create_dir_all(p).ok();
        mount(
            Some(p.as_str()),
            p.as_str(),
            none,
            MsFlags::MS_BIND | MsFlags::MS_REC,
            none,
        )
        .with_context(|| format!("bind {p}"))?;
    }
    for p in ["/var", "/run"] {
        let flags = MsFlags::MS_BIND
            | MsFlags::MS_REMOUNT
            | MsFlags::MS_RDONLY
            | MsFlags::MS_NOSUID
            | MsFlags::MS_NODEV
            | MsFlags::MS_NOEXEC;
        mount(none, p, none, flags, none).with_context(|| format!("remounting {p} read-only"))?;
    }
    mount(
        Some("tmpfs"),
        "/tmp",
        Some("tmpfs"),
        crate::mounts::SAFE,
        Some("mode=1777,size=16m"),
    )
    .context("private /tmp")?;
    Ok(())
}

fn drop_privileges(s: &Spec) -> Result<()> {
    let keep: HashSet<Capability> = s
        .caps
        .iter()
        .map(|c| c.parse::<Capability>())
        .collect::<Result<_, _>>()
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    for c in caps::all() {
        if !keep.contains(&c) {
            caps::drop(None, CapSet::Bounding, c)
                .with_context(|| format!("dropping {c} from the bounding set"))?;
        }
    }
    nix::sys::prctl::set_keepcaps(true)?;
    let (u, g) = (
        nix::unistd::Uid::from_raw(s.uid),
        nix::unistd::Gid::from_raw(s.gid),
    );
    nix::unistd::setgroups(&[]).context("setgroups")?;
    nix::unistd::setresgid(g, g, g).context("setresgid")?;
    nix::unistd::setresuid(u, u, u).context("setresuid")?;
    let set: caps::CapsHashSet = keep.iter().copied().collect();
    caps::set(None, CapSet::Permitted, &set)?;
    caps::set(None, CapSet::Effective, &set)?;
    caps::set(None, CapSet::Inheritable, &set)?;
    caps::clear(None, CapSet::Ambient)?;
    for c in &keep {
        caps::raise(None, CapSet::Ambient, *c)?;
    }
    nix::sys::prctl::set_keepcaps(false)?;
    Ok(())
}
