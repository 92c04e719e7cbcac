//! PID 1 of the gateway (`gwosd`): stage 1 in the initramfs verifies the slot and mounts the dm-verity root; stage 2 in the real root mounts, hardens, firewalls and supervises every service.
//!
//! Boot flow: [`stage1`] (`/init`: [`gpt_find`] → signed manifest via
//! gwos-signing → [`dm`] verity device → EROFS root → switch root) execs
//! `/sbin/init` = [`stage2`] ([`mounts`], [`state`] at /var, [`sysctl`],
//! gwos-netfilter base ruleset, [`net`], [`supervisor`] running each service
//! as `gwosd run <name>` inside [`sandbox`] + [`cgroup`], ready line,
//! [`bless`], [`shutdown`]). Every fatal path goes through [`console::fatal`].

pub mod bless;
pub mod cgroup;
pub mod cmdline;
pub mod console;
pub mod dhcp;
pub mod dm;
pub mod events;
pub mod floor;
pub mod gpt_find;
pub mod initsock;
pub mod mounts;
pub mod net;
pub mod pci;
pub mod sandbox;
pub mod seccomp;
pub mod services;
pub mod shutdown;
pub mod stage1;
pub mod stage2;
pub mod state;
pub mod supervisor;
pub mod sysctl;

/// Milliseconds since the kernel started (CLOCK_BOOTTIME), the clock of printk timestamps.
pub fn boottime_ms() -> u64 {
    nix::time::clock_gettime(nix::time::ClockId::CLOCK_BOOTTIME)
        .map(|t| t.tv_sec() as u64 * 1000 + t.tv_nsec() as u64 / 1_000_000)
        .unwrap_or(0)
}
