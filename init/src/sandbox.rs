//! The sandbox a service process puts itself in before its `run` starts.
//! PID 1 spawns `gwosd run <name>` with `GWOS_SANDBOX=<json spec>`; the new
//! (single-threaded, still root) process then: joins its cgroup, sets
//! rlimits, unshares its mount namespace (everything read-only except its
//! state dir, `/run/gwos` and declared paths; a private /tmp), drops to its
//! uid/gid keeping only the declared capabilities (bounding, permitted,
//! effective, inheritable, ambient), sets no_new_privs and installs a seccomp
//! filter. Without `GWOS_SANDBOX` (host tests) nothing happens.

use std::collections::{BTreeMap, HashSet};

use anyhow::{Context, Result};
use caps::{CapSet, Capability};
use nix::mount::{mount, MsFlags};
use serde::{Deserialize, Serialize};

pub const ENV: &str = "GWOS_SANDBOX";

#[derive(Debug, Clone, Serialize, Deserialize)]
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
    let Ok(json) = std::env::var(ENV) else { return Ok(()) };
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
    seccomp()
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
    mount(none, "/", none, MsFlags::MS_REC | MsFlags::MS_PRIVATE, none).context("making / private")?;
    let state = format!("{}/{}", gwos_core::context::STATE_ROOT, s.name);
    let mut rw: Vec<String> = vec![state, gwos_core::context::RUN_DIR.to_string()];
    rw.extend(s.writable.iter().cloned());
    // Bind each writable path onto itself so it stays writable below the read-only parents.
    for p in &rw {
        std::fs::create_dir_all(p).ok();
        mount(Some(p.as_str()), p.as_str(), none, MsFlags::MS_BIND | MsFlags::MS_REC, none).with_context(|| format!("bind {p}"))?;
    }
    for p in ["/var", "/run"] {
        let flags = MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY | MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
        mount(none, p, none, flags, none).with_context(|| format!("remounting {p} read-only"))?;
    }
    mount(Some("tmpfs"), "/tmp", Some("tmpfs"), crate::mounts::SAFE, Some("mode=1777,size=16m")).context("private /tmp")?;
    Ok(())
}

fn drop_privileges(s: &Spec) -> Result<()> {
    let keep: HashSet<Capability> = s.caps.iter().map(|c| c.parse::<Capability>()).collect::<Result<_, _>>().map_err(|e| anyhow::anyhow!("{e}"))?;
    for c in caps::all() {
        if !keep.contains(&c) {
            caps::drop(None, CapSet::Bounding, c).with_context(|| format!("dropping {c} from the bounding set"))?;
        }
    }
    nix::sys::prctl::set_keepcaps(true)?;
    let (u, g) = (nix::unistd::Uid::from_raw(s.uid), nix::unistd::Gid::from_raw(s.gid));
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

/// Syscalls no gateway service needs; they fail with EPERM. This is a
/// denylist (default allow) — an allowlist per service is future work.
pub const DENIED: &[i64] = &[
    libc::SYS_mount, libc::SYS_umount2, libc::SYS_pivot_root, libc::SYS_chroot, libc::SYS_kexec_load,
    libc::SYS_kexec_file_load, libc::SYS_init_module, libc::SYS_finit_module, libc::SYS_delete_module,
    libc::SYS_reboot, libc::SYS_swapon, libc::SYS_swapoff, libc::SYS_ptrace, libc::SYS_process_vm_readv,
    libc::SYS_process_vm_writev, libc::SYS_bpf, libc::SYS_perf_event_open, libc::SYS_userfaultfd,
    libc::SYS_keyctl, libc::SYS_add_key, libc::SYS_request_key, libc::SYS_acct, libc::SYS_settimeofday,
    libc::SYS_clock_settime, libc::SYS_clock_adjtime, libc::SYS_adjtimex, libc::SYS_setns, libc::SYS_unshare,
    libc::SYS_open_by_handle_at, libc::SYS_name_to_handle_at, libc::SYS_iopl, libc::SYS_ioperm,
    libc::SYS_quotactl, libc::SYS_syslog, libc::SYS_personality, libc::SYS_vhangup, libc::SYS_sethostname,
    libc::SYS_setdomainname, libc::SYS_fsopen, libc::SYS_fsmount, libc::SYS_move_mount, libc::SYS_open_tree,
];

fn seccomp() -> Result<()> {
    use seccompiler::{BpfProgram, SeccompAction, SeccompFilter, SeccompRule, TargetArch};
    let rules: BTreeMap<i64, Vec<SeccompRule>> = DENIED.iter().map(|n| (*n, vec![])).collect();
    let filter = SeccompFilter::new(rules, SeccompAction::Allow, SeccompAction::Errno(libc::EPERM as u32), TargetArch::x86_64)
        .map_err(|e| anyhow::anyhow!("seccomp filter: {e}"))?;
    let prog: BpfProgram = filter.try_into().map_err(|e: seccompiler::BackendError| anyhow::anyhow!("seccomp compile: {e}"))?;
    seccompiler::apply_filter(&prog).map_err(|e| anyhow::anyhow!("seccomp apply: {e}"))
}

#[cfg(test)]
mod tests {
    #[test]
    fn seccomp_filter_compiles() {
        use seccompiler::{BpfProgram, SeccompAction, SeccompFilter, TargetArch};
        let rules = super::DENIED.iter().map(|n| (*n, vec![])).collect();
        let f = SeccompFilter::new(rules, SeccompAction::Allow, SeccompAction::Errno(1), TargetArch::x86_64).unwrap();
        let p: BpfProgram = f.try_into().unwrap();
        assert!(!p.is_empty());
    }
}
