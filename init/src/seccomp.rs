//! The seccomp filter every service runs under: an ALLOWLIST.
//!
//! A service may make only the syscalls listed here; anything else fails
//! with `EPERM`. The list is data: [`BASE`] (what a Rust + glibc + tokio
//! program and our shared code — config loading, the RPC socket, state
//! files — need) plus [`EXTRA`], a few per-service additions keyed by the
//! service name, plus argument-checked rules for `socket` (address families
//! and netlink protocols, per service: [`SOCKETS`]), `ioctl` (request
//! numbers: [`IOCTLS`]), `prctl`
//! (options: [`PRCTLS`]) and `clone` (no namespace flags: [`CLONE_NS_FLAGS`];
//! `clone3`, whose flags seccomp cannot see, gets ENOSYS: [`CLONE3`]).
//!
//! Evidence: the union of the syscalls seen with `strace -f` on the real
//! `gwosd run <service>` (static glibc build) while the services' namespace
//! tests ran (spa `knock_netns`, tls-front `tunnel` + `knock` — which also run
//! vpn and spa — and control `ssh_channel`), plus what any Rust/tokio program
//! legitimately needs on paths those tests may not reach (panics, abort,
//! thread exit, sleeping, vDSO fallbacks). The traces (60 distinct syscalls
//! across the four services) are all covered, and the image's QEMU suite
//! runs the four services under this filter. Startup-only syscalls (execve,
//! arch_prctl, set_tid_address for the main thread, ...) are not needed: the
//! filter is installed after them, and execve in particular is NOT allowed —
//! no service runs programs.
//!
//! Default action: `EPERM` (not kill). A service that hits an unlisted
//! syscall gets an ordinary error it reports on the console (`gwosd run
//! <name>: ... Operation not permitted`) and, if fatal, exits; PID 1's restart
//! back-off and flap detection (5 failures in 60 s → `FAILED`) then handle it
//! like any other failure, and the message names what failed. Killing with
//! SIGSYS would leave only a signal number, and a kill inside a tokio worker
//! would take the whole process down without a trace of which syscall. An
//! attacker gains nothing from EPERM over SIGSYS: the call does not happen.
//!
//! [`NEVER`] (the old denylist) lists syscalls that must never be on the
//! allowlist; a unit test asserts it.

use std::collections::BTreeMap;

use anyhow::{anyhow, Result};
use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule, TargetArch,
};

/// Allowed for every service, any arguments.
pub const BASE: &[i64] = &[
    // --- memory ---
    libc::SYS_brk,
    libc::SYS_mmap,
    libc::SYS_munmap,
    libc::SYS_mremap,
    libc::SYS_mprotect,
    libc::SYS_madvise,
    // --- threads (tokio workers/blocking pool, std::thread) and their exit ---
    // (`clone` only without namespace flags: see `program`; `clone3` is
    // listed here but answered ENOSYS by an earlier filter, see `CLONE3`.)
    libc::SYS_clone3,
    libc::SYS_set_robust_list,
    libc::SYS_rseq,
    libc::SYS_set_tid_address,
    libc::SYS_futex,
    libc::SYS_sched_yield,
    libc::SYS_sched_getaffinity,
    libc::SYS_membarrier,
    libc::SYS_exit,
    libc::SYS_exit_group,
    // getrlimit/prlimit64: std and tokio read RLIMIT_STACK/NOFILE; raising a
    // hard limit needs CAP_SYS_RESOURCE, which no service has.
    libc::SYS_prlimit64,
    libc::SYS_getrlimit,
    // --- signals: tokio's signal handling, panics, abort() (raise → tgkill) ---
    libc::SYS_rt_sigaction,
    libc::SYS_rt_sigprocmask,
    libc::SYS_rt_sigreturn,
    libc::SYS_sigaltstack,
    libc::SYS_restart_syscall,
    libc::SYS_tgkill,
    // --- identity and time (vDSO usually answers; these are its fallbacks) ---
    libc::SYS_getpid,
    libc::SYS_gettid,
    libc::SYS_getppid,
    libc::SYS_getuid,
    libc::SYS_geteuid,
    libc::SYS_getgid,
    libc::SYS_getegid,
    libc::SYS_uname,
    libc::SYS_sysinfo,
    libc::SYS_getrandom,
    libc::SYS_clock_gettime,
    libc::SYS_clock_getres,
    libc::SYS_gettimeofday,
    libc::SYS_clock_nanosleep,
    libc::SYS_nanosleep,
    // --- files: config, keys, state files (write + fdatasync + rename), /proc/self ---
    libc::SYS_openat,
    libc::SYS_read,
    libc::SYS_write,
    libc::SYS_readv,
    libc::SYS_writev,
    libc::SYS_pread64,
    libc::SYS_pwrite64,
    libc::SYS_lseek,
    libc::SYS_close,
    libc::SYS_close_range,
    libc::SYS_fstat,
    libc::SYS_newfstatat,
    libc::SYS_statx,
    libc::SYS_fcntl,
    libc::SYS_dup,
    libc::SYS_dup3,
    libc::SYS_pipe2,
    libc::SYS_getdents64,
    libc::SYS_readlink,
    libc::SYS_readlinkat,
    libc::SYS_access,
    libc::SYS_faccessat,
    libc::SYS_faccessat2,
    libc::SYS_getcwd,
    libc::SYS_mkdir,
    libc::SYS_mkdirat,
    libc::SYS_unlink,
    libc::SYS_unlinkat,
    libc::SYS_rename,
    libc::SYS_renameat,
    libc::SYS_renameat2,
    libc::SYS_chmod,
    libc::SYS_fchmod,
    libc::SYS_fchmodat,
    libc::SYS_fsync,
    libc::SYS_fdatasync,
    libc::SYS_ftruncate,
    // --- event loop (mio/tokio: epoll + eventfd waker) ---
    libc::SYS_epoll_create1,
    libc::SYS_epoll_ctl,
    libc::SYS_epoll_wait,
    libc::SYS_epoll_pwait,
    libc::SYS_epoll_pwait2,
    libc::SYS_eventfd2,
    libc::SYS_poll,
    libc::SYS_ppoll,
    // --- sockets (which families `socket` may create: see `SOCKETS`) ---
    libc::SYS_socketpair,
    libc::SYS_bind,
    libc::SYS_listen,
    libc::SYS_accept4,
    libc::SYS_accept,
    libc::SYS_connect,
    libc::SYS_getsockname,
    libc::SYS_getpeername,
    libc::SYS_setsockopt,
    libc::SYS_getsockopt,
    libc::SYS_sendto,
    libc::SYS_sendmsg,
    libc::SYS_sendmmsg,
    libc::SYS_recvfrom,
    libc::SYS_recvmsg,
    libc::SYS_recvmmsg,
    libc::SYS_shutdown,
];

/// Per-service additions to [`BASE`] (syscalls any arguments).
pub const EXTRA: &[(&str, &[i64])] = &[
    // control: russh keeps key material in CryptoVec buffers it mlock()s
    // (seen in the ssh_channel trace); RLIMIT_MEMLOCK bounds it.
    ("control", &[libc::SYS_mlock, libc::SYS_munlock]),
    // update: drop the page cache of a written partition before reading it
    // back (fadvise DONTNEED), and check the spool's free space (statvfs).
    (
        "update",
        &[libc::SYS_fadvise64, libc::SYS_statfs, libc::SYS_fstatfs],
    ),
];

/// One allowed shape of `socket(domain, type, protocol)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SocketRule {
    /// This address family, any type and protocol.
    Family(i32),
    /// `AF_NETLINK` with this netlink protocol only (argument 2).
    Netlink(i32),
}

use SocketRule::{Family, Netlink};

/// The sockets each service may create (`"*"` = every service): unix for
/// all (the RPC sockets, SO_PEERCRED); IPv4/IPv6 for the services that
/// listen or talk to each other over loopback (and the vpn's interface
/// ioctls); netlink only where it is needed, by protocol: nftables
/// (`NETLINK_NETFILTER`) for spa-grant (one set element) and vpn (its
/// chains), `NETLINK_ROUTE` for vpn only. spa, which parses packets from
/// the whole internet, gets no netlink at all; spa-grant no IP sockets.
/// No AF_PACKET, no AF_ALG, no AF_KEY, no other netlink protocol, ...
pub const SOCKETS: &[(&str, &[SocketRule])] = &[
    ("*", &[Family(libc::AF_UNIX)]),
    ("spa", &[Family(libc::AF_INET), Family(libc::AF_INET6)]),
    (
        "tls-front",
        &[Family(libc::AF_INET), Family(libc::AF_INET6)],
    ),
    ("control", &[Family(libc::AF_INET), Family(libc::AF_INET6)]),
    (
        "vpn",
        &[
            Family(libc::AF_INET),
            Family(libc::AF_INET6),
            Netlink(libc::NETLINK_NETFILTER),
            Netlink(libc::NETLINK_ROUTE),
        ],
    ),
    ("spa-grant", &[Netlink(libc::NETLINK_NETFILTER)]),
    // logship: the TLS connection to the SIEM.
    ("logship", &[Family(libc::AF_INET), Family(libc::AF_INET6)]),
];

/// The socket shapes `service` may create.
pub fn sockets(service: &str) -> Vec<SocketRule> {
    SOCKETS
        .iter()
        .filter(|(n, _)| *n == "*" || *n == service)
        .flat_map(|(_, r)| r.iter().copied())
        .collect()
}

/// `ioctl(fd, request, ..)` is allowed for these requests only, per service
/// (`"*"` = every service).
pub const IOCTLS: &[(&str, &[u64])] = &[
    // std's set_nonblocking / set_cloexec on sockets and files.
    ("*", &[libc::FIONBIO, libc::FIOCLEX]),
    // vpn: create TUN gw0 (TUNSETIFF) and give it address, netmask, MTU and
    // the UP flag (services/vpn/src/tun.rs).
    (
        "vpn",
        &[
            TUNSETIFF,
            libc::SIOCSIFADDR,
            libc::SIOCSIFNETMASK,
            libc::SIOCSIFMTU,
            libc::SIOCGIFFLAGS,
            libc::SIOCSIFFLAGS,
        ],
    ),
];

/// `prctl(option, ..)` is allowed for these options only: thread names
/// (tokio workers, std::thread; the traces show PR_SET_NAME only) and
/// glibc's naming of its own mappings.
pub const PRCTLS: &[i32] = &[libc::PR_SET_NAME, libc::PR_GET_NAME, PR_SET_VMA];

const PR_SET_VMA: i32 = 0x5356_4d41;

/// `clone` flags that create namespaces. A service may not create any: with
/// CLONE_NEWUSER an unprivileged process would get a user namespace where it
/// holds every capability over new network namespaces (nf_tables, ...) —
/// the usual first step of a kernel exploit. `unshare` and `setns` are on
/// [`NEVER`] for the same reason.
pub const CLONE_NS_FLAGS: u64 = (libc::CLONE_NEWNS
    | libc::CLONE_NEWUTS
    | libc::CLONE_NEWIPC
    | libc::CLONE_NEWUSER
    | libc::CLONE_NEWPID
    | libc::CLONE_NEWNET
    | libc::CLONE_NEWCGROUP) as u64;

/// `clone3` passes its flags in a struct that seccomp cannot read, so it is
/// answered ENOSYS (by a filter installed before the allowlist; the more
/// restrictive answer of all filters wins), and glibc then creates threads
/// with `clone`, whose flags are checked. Docker's default profile does the same.
pub const CLONE3: i64 = libc::SYS_clone3;

/// `_IOW('T', 202, int)`, as in services/vpn/src/tun.rs.
const TUNSETIFF: u64 = 0x4004_54ca;

/// Never on the allowlist, for any service (asserted by a unit test): mounts
/// and namespaces, tracing other processes, BPF and perf, kernel modules and
/// kexec, keyrings, the clock, reboot/swap, raw port I/O, handle-based opens
/// that bypass the mount namespace, and running programs at all.
pub const NEVER: &[i64] = &[
    libc::SYS_mount,
    libc::SYS_umount2,
    libc::SYS_pivot_root,
    libc::SYS_chroot,
    libc::SYS_kexec_load,
    libc::SYS_kexec_file_load,
    libc::SYS_init_module,
    libc::SYS_finit_module,
    libc::SYS_delete_module,
    libc::SYS_reboot,
    libc::SYS_swapon,
    libc::SYS_swapoff,
    libc::SYS_ptrace,
    libc::SYS_process_vm_readv,
    libc::SYS_process_vm_writev,
    libc::SYS_bpf,
    libc::SYS_perf_event_open,
    libc::SYS_userfaultfd,
    libc::SYS_keyctl,
    libc::SYS_add_key,
    libc::SYS_request_key,
    libc::SYS_acct,
    libc::SYS_settimeofday,
    libc::SYS_clock_settime,
    libc::SYS_clock_adjtime,
    libc::SYS_adjtimex,
    libc::SYS_setns,
    libc::SYS_unshare,
    libc::SYS_open_by_handle_at,
    libc::SYS_name_to_handle_at,
    libc::SYS_iopl,
    libc::SYS_ioperm,
    libc::SYS_quotactl,
    libc::SYS_syslog,
    libc::SYS_personality,
    libc::SYS_vhangup,
    libc::SYS_sethostname,
    libc::SYS_setdomainname,
    libc::SYS_fsopen,
    libc::SYS_fsmount,
    libc::SYS_move_mount,
    libc::SYS_open_tree,
    libc::SYS_fsconfig,
    libc::SYS_fspick,
    libc::SYS_mount_setattr,
    libc::SYS_execve,
    libc::SYS_execveat,
    libc::SYS_kcmp,
    libc::SYS_pidfd_getfd,
    libc::SYS_setuid,
    libc::SYS_setgid,
    libc::SYS_setresuid,
    libc::SYS_setresgid,
    libc::SYS_setgroups,
    libc::SYS_capset,
    libc::SYS_seccomp,
    libc::SYS_lookup_dcookie,
    libc::SYS_io_uring_setup,
    libc::SYS_io_uring_enter,
    libc::SYS_io_uring_register,
];

/// Every syscall number `service` may make with any arguments.
pub fn allowed(service: &str) -> Vec<i64> {
    let mut v: Vec<i64> = BASE.to_vec();
    for (name, extra) in EXTRA {
        if *name == service {
            v.extend_from_slice(extra);
        }
    }
    v.sort_unstable();
    v.dedup();
    v
}

/// The ioctl requests `service` may make.
pub fn ioctls(service: &str) -> Vec<u64> {
    let mut v: Vec<u64> = IOCTLS
        .iter()
        .filter(|(n, _)| *n == "*" || *n == service)
        .flat_map(|(_, r)| r.iter().copied())
        .collect();
    v.sort_unstable();
    v.dedup();
    v
}

fn rule(arg: u8, op: SeccompCmpOp, value: u64) -> Result<SeccompRule> {
    let c = SeccompCondition::new(arg, SeccompCmpArgLen::Dword, op, value)
        .map_err(|e| anyhow!("seccomp condition: {e}"))?;
    SeccompRule::new(vec![c]).map_err(|e| anyhow!("seccomp rule: {e}"))
}

fn arg_eq(arg: u8, value: u64) -> Result<SeccompRule> {
    rule(arg, SeccompCmpOp::Eq, value)
}

fn compile(
    rules: BTreeMap<i64, Vec<SeccompRule>>,
    mismatch: SeccompAction,
    matched: SeccompAction,
) -> Result<BpfProgram> {
    let filter = SeccompFilter::new(rules, mismatch, matched, TargetArch::x86_64)
        .map_err(|e| anyhow!("seccomp filter: {e}"))?;
    filter
        .try_into()
        .map_err(|e: seccompiler::BackendError| anyhow!("seccomp compile: {e}"))
}

/// The first filter: `clone3` → ENOSYS, everything else passes on to the allowlist.
pub fn clone3_program() -> Result<BpfProgram> {
    compile(
        [(CLONE3, vec![])].into_iter().collect(),
        SeccompAction::Allow,
        SeccompAction::Errno(libc::ENOSYS as u32),
    )
}

/// The compiled filter for `service`: listed syscalls are allowed, anything
/// else returns EPERM.
pub fn program(service: &str) -> Result<BpfProgram> {
    let mut rules: BTreeMap<i64, Vec<SeccompRule>> =
        allowed(service).into_iter().map(|n| (n, vec![])).collect();
    // Each rule in a syscall's list is one alternative (OR); the request /
    // family / option / flags are compared as 32-bit values, which is how the
    // kernel reads them (the namespace flags all live in the low 32 bits).
    rules.insert(
        libc::SYS_socket,
        sockets(service)
            .into_iter()
            .map(|r| match r {
                Family(f) => arg_eq(0, f as u64),
                Netlink(p) => {
                    let c = |arg, v: i32| {
                        SeccompCondition::new(
                            arg,
                            SeccompCmpArgLen::Dword,
                            SeccompCmpOp::Eq,
                            v as u64,
                        )
                        .map_err(|e| anyhow!("seccomp condition: {e}"))
                    };
                    // both conditions hold (a rule's conditions are ANDed)
                    SeccompRule::new(vec![c(0, libc::AF_NETLINK)?, c(2, p)?])
                        .map_err(|e| anyhow!("seccomp rule: {e}"))
                }
            })
            .collect::<Result<_>>()?,
    );
    rules.insert(
        libc::SYS_ioctl,
        ioctls(service)
            .into_iter()
            .map(|r| arg_eq(1, r))
            .collect::<Result<_>>()?,
    );
    rules.insert(
        libc::SYS_prctl,
        PRCTLS
            .iter()
            .map(|o| arg_eq(0, *o as u64))
            .collect::<Result<_>>()?,
    );
    rules.insert(
        libc::SYS_clone,
        vec![rule(0, SeccompCmpOp::MaskedEq(CLONE_NS_FLAGS), 0)?],
    );
    compile(
        rules,
        SeccompAction::Errno(libc::EPERM as u32),
        SeccompAction::Allow,
    )
}

/// Installs the filters for `service` on every thread of this process (there
/// is one: it runs before the service's runtime starts): first the `clone3`
/// → ENOSYS filter, then the allowlist (installing a filter is itself a
/// syscall the allowlist does not allow, so the allowlist goes last).
/// Needs no_new_privs, which the sandbox sets first.
pub fn install(service: &str) -> Result<()> {
    let (first, allow) = (clone3_program()?, program(service)?);
    seccompiler::apply_filter_all_threads(&first)
        .map_err(|e| anyhow!("seccomp apply (clone3): {e}"))?;
    seccompiler::apply_filter_all_threads(&allow)
        .map_err(|e| anyhow!("seccomp apply (allowlist): {e}"))
}

/// One line for the selftest service: a syscall on [`NEVER`] (`unshare(0)`,
/// a no-op that normally succeeds), one on neither list (`getpriority`) and
/// an allowed one (`getppid`), each with its result.
pub fn probe() -> String {
    fn res(rc: libc::c_long) -> String {
        if rc < 0 {
            let e = std::io::Error::last_os_error();
            if e.raw_os_error() == Some(libc::EPERM) {
                "EPERM".into()
            } else {
                format!("{e}")
            }
        } else {
            "ok".into()
        }
    }
    // SAFETY: unshare(0) takes a flags word and changes nothing with no flags set.
    let never = res(unsafe { libc::syscall(libc::SYS_unshare, 0) });
    // SAFETY: getpriority(PRIO_PROCESS, 0) only reads this process's nice value.
    let unlisted = res(unsafe { libc::syscall(libc::SYS_getpriority, libc::PRIO_PROCESS, 0) });
    // SAFETY: getppid takes no arguments and cannot fail.
    let allowed = res(unsafe { libc::syscall(libc::SYS_getppid) });
    format!("unshare={never} getpriority={unlisted} getppid={allowed}")
}

#[cfg(test)]
mod tests {
    use super::*;

    const SERVICES: &[&str] = &[
        "spa",
        "spa-grant",
        "vpn",
        "tls-front",
        "control",
        "update",
        "logship",
        "selftest",
        "selftest-crash",
    ];

    #[test]
    fn nothing_on_the_never_list_is_allowed() {
        for s in SERVICES {
            let a = allowed(s);
            for n in NEVER {
                assert!(
                    !a.contains(n),
                    "{s}: syscall {n} is on NEVER and on the allowlist"
                );
            }
            // These are allowed only with checked arguments (see `program`).
            for n in [
                libc::SYS_socket,
                libc::SYS_ioctl,
                libc::SYS_prctl,
                libc::SYS_clone,
            ] {
                assert!(
                    !a.contains(&n) && !NEVER.contains(&n),
                    "{s}: {n} must be argument-checked"
                );
            }
        }
    }

    #[test]
    fn extras_name_real_services_and_only_vpn_gets_tun() {
        for name in EXTRA
            .iter()
            .map(|(n, _)| *n)
            .chain(IOCTLS.iter().map(|(n, _)| *n))
            .chain(SOCKETS.iter().map(|(n, _)| *n))
        {
            assert!(
                name == "*" || SERVICES.contains(&name),
                "unknown service {name}"
            );
        }
        assert!(ioctls("vpn").contains(&TUNSETIFF));
        for s in ["spa", "tls-front", "control", "selftest"] {
            assert!(
                !ioctls(s).contains(&TUNSETIFF),
                "{s} may create TUN devices"
            );
        }
    }

    #[test]
    fn filters_compile_for_every_service() {
        for s in SERVICES {
            assert!(!program(s).unwrap().is_empty());
        }
    }

    const CHILD_ENV: &str = "GWOS_SECCOMP_TEST_CHILD";

    /// Runs `child_under_filter` for `svc` in a fresh process (this test
    /// binary again) so the real filters can be installed without touching
    /// the harness; its output.
    fn run_child(svc: &str) -> String {
        let out = std::process::Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "seccomp::tests::child_under_filter",
                "--ignored",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(CHILD_ENV, svc)
            .output()
            .unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            out.status.success() && text.contains("seccomp child ok"),
            "{svc}: {text}"
        );
        text
    }

    #[test]
    fn installed_filters_in_a_fresh_process() {
        for svc in ["spa", "vpn"] {
            run_child(svc);
        }
    }

    /// The `socket(…)` results `child_under_filter` printed for `svc`.
    fn sockets_line(svc: &str) -> String {
        let text = run_child(svc);
        // (the harness may print "test … ... " in front of the child's first line)
        let at = text
            .find("sockets: ")
            .unwrap_or_else(|| panic!("{svc}: no sockets line in {text}"));
        text[at..].lines().next().unwrap_or_default().to_owned()
    }

    /// F9: the internet-facing SPA parser may open no netlink socket at all
    /// (it holds no CAP_NET_ADMIN either; its grants go through spa-grant).
    #[test]
    fn f9_spa_socket_netlink_route_refused() {
        assert_eq!(
            sockets_line("spa"),
            "sockets: unix=ok inet=ok inet6=ok netlink_route=EPERM netlink_netfilter=EPERM netlink_audit=EPERM"
        );
    }

    /// F9: netlink by protocol: nftables for spa-grant and vpn, routes for
    /// vpn only; spa-grant has no IP sockets; no other service any netlink.
    #[test]
    fn f9_netlink_protocols_per_service() {
        assert_eq!(
            sockets_line("spa-grant"),
            "sockets: unix=ok inet=EPERM inet6=EPERM netlink_route=EPERM netlink_netfilter=ok netlink_audit=EPERM"
        );
        assert_eq!(
            sockets_line("vpn"),
            "sockets: unix=ok inet=ok inet6=ok netlink_route=ok netlink_netfilter=ok netlink_audit=EPERM"
        );
        // logship connects to the SIEM (it was left without IP sockets once,
        // and every connect failed with EPERM).
        for svc in ["tls-front", "control", "logship"] {
            assert_eq!(
                sockets_line(svc),
                "sockets: unix=ok inet=ok inet6=ok netlink_route=EPERM netlink_netfilter=EPERM netlink_audit=EPERM",
                "{svc}"
            );
        }
    }

    fn errno(rc: libc::c_long) -> Option<i32> {
        (rc == -1).then(|| std::io::Error::last_os_error().raw_os_error().unwrap_or(0))
    }

    #[test]
    #[ignore = "runs in its own process, started by installed_filters_in_a_fresh_process"]
    fn child_under_filter() {
        let svc =
            std::env::var(CHILD_ENV).expect("started by installed_filters_in_a_fresh_process");
        nix::sys::prctl::set_no_new_privs().unwrap();
        install(&svc).unwrap();
        let eperm = Some(libc::EPERM);
        // SAFETY: every raw syscall below has harmless arguments — a no-op unshare, reads of this
        // process's own state, sockets that are closed at exit, a clone3 with a zeroed argument
        // struct that the filter answers before the kernel reads it, and a clone that the filter
        // refuses before it runs (SIGCHLD-only flags otherwise; it never gets that far).
        unsafe {
            assert_eq!(
                errno(libc::syscall(libc::SYS_unshare, 0)),
                eperm,
                "unshare (NEVER)"
            );
            assert_eq!(
                errno(libc::syscall(libc::SYS_getpriority, libc::PRIO_PROCESS, 0)),
                eperm,
                "getpriority (unlisted)"
            );
            assert_eq!(
                errno(libc::syscall(
                    libc::SYS_socket,
                    libc::AF_PACKET,
                    libc::SOCK_DGRAM,
                    0
                )),
                eperm,
                "AF_PACKET"
            );
            assert_eq!(
                errno(libc::syscall(
                    libc::SYS_prctl,
                    libc::PR_SET_DUMPABLE,
                    1,
                    0,
                    0,
                    0
                )),
                eperm,
                "prctl(PR_SET_DUMPABLE)"
            );
            let args = [0u64; 11];
            assert_eq!(
                errno(libc::syscall(
                    libc::SYS_clone3,
                    args.as_ptr(),
                    std::mem::size_of_val(&args)
                )),
                Some(libc::ENOSYS),
                "clone3"
            );
            let userns = (libc::CLONE_NEWUSER | libc::SIGCHLD) as libc::c_ulong;
            assert_eq!(
                errno(libc::syscall(libc::SYS_clone, userns, 0, 0, 0, 0)),
                eperm,
                "clone(CLONE_NEWUSER)"
            );
            assert!(libc::syscall(libc::SYS_getppid) > 0);
            let sock = |family: i32, kind: i32, protocol: i32| {
                let fd = libc::syscall(libc::SYS_socket, family, kind, protocol);
                match errno(fd) {
                    None => {
                        libc::close(fd as i32);
                        "ok".to_string()
                    }
                    Some(libc::EPERM) => "EPERM".to_string(),
                    Some(e) => format!("errno {e}"),
                }
            };
            println!(
                "sockets: unix={} inet={} inet6={} netlink_route={} netlink_netfilter={} netlink_audit={}",
                sock(libc::AF_UNIX, libc::SOCK_STREAM, 0),
                sock(libc::AF_INET, libc::SOCK_DGRAM, 0),
                sock(libc::AF_INET6, libc::SOCK_DGRAM, 0),
                sock(libc::AF_NETLINK, libc::SOCK_RAW, libc::NETLINK_ROUTE),
                sock(libc::AF_NETLINK, libc::SOCK_RAW, libc::NETLINK_NETFILTER),
                sock(libc::AF_NETLINK, libc::SOCK_RAW, libc::NETLINK_AUDIT),
            );
            assert!(
                libc::syscall(libc::SYS_socket, libc::AF_UNIX, libc::SOCK_DGRAM, 0) >= 0,
                "AF_UNIX"
            );
            let tun = std::fs::File::open("/dev/net/tun").ok();
            if let (Some(f), false) = (&tun, svc == "vpn") {
                use std::os::fd::AsRawFd;
                let mut req = [0u8; 40];
                assert_eq!(
                    errno(libc::syscall(
                        libc::SYS_ioctl,
                        f.as_raw_fd(),
                        TUNSETIFF,
                        req.as_mut_ptr()
                    )),
                    eperm,
                    "TUNSETIFF for {svc}"
                );
            }
        }
        // Threads (glibc falls back from clone3 to clone) and a multi-threaded tokio runtime with
        // timers, a unix socket pair and a blocking-pool task, as the services use them.
        assert_eq!(std::thread::spawn(|| 7).join().unwrap(), 7);
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            let (mut a, mut b) = tokio::net::UnixStream::pair().unwrap();
            a.write_all(b"ping").await.unwrap();
            let mut buf = [0u8; 4];
            b.read_exact(&mut buf).await.unwrap();
            assert_eq!(&buf, b"ping");
            assert_eq!(tokio::task::spawn_blocking(|| 1 + 1).await.unwrap(), 2);
        });
        println!("seccomp child ok ({svc})");
    }
}
