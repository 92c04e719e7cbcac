//! Reading a guest's console: the ready line and its boot figures, and why a
//! boot that never got there stopped. Pure functions over the console text,
//! so the classification is unit-tested without booting anything.
//!
//! Exit codes of `gwos run` (documented in docs/ci.md):
//!
//! | code | meaning |
//! |---|---|
//! | 0 | ready (`--wait-ready`), or the guest ran and QEMU exited cleanly |
//! | 1 | `gwos run` itself failed (missing QEMU/OVMF, bad image path, ...) |
//! | 2 | usage error |
//! | 3 | the guest powered off (QEMU exited) before the ready line |
//! | 4 | the guest refused to boot: a `gwos: FATAL:` line, or dm-verity found the root corrupted |
//! | 5 | kernel panic (other than dm-verity corruption) |
//! | 6 | no ready line within `--timeout` |

use std::time::Duration;

/// What the ready line and the boot figures on the console say.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Ready {
    pub slot: String,
    pub version: String,
    /// Stage 1 start → ready line, guest clock.
    pub boot_ms: u64,
    /// Kernel start → stage 1 (PID 1), guest clock.
    pub kernel_to_pid1_ms: Option<u64>,
}

/// Why a boot did not reach the ready line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Failure {
    /// dm-verity refused a block of the root (the console line that says so).
    Verity(String),
    /// PID 1 refused to boot (`gwos: FATAL: ...`).
    Refused(String),
    /// The kernel panicked for another reason.
    Panic(String),
    /// QEMU exited without any of the above on the console.
    PoweredOff,
    Timeout(Duration),
}

impl Failure {
    pub fn exit_code(&self) -> u8 {
        match self {
            Failure::PoweredOff => 3,
            Failure::Verity(_) | Failure::Refused(_) => 4,
            Failure::Panic(_) => 5,
            Failure::Timeout(_) => 6,
        }
    }
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Failure::Verity(l) => write!(
                f,
                "dm-verity: the root file system is corrupted, the kernel refused it ({l})"
            ),
            Failure::Refused(l) => write!(f, "the gateway refused to boot ({l})"),
            Failure::Panic(l) => write!(f, "kernel panic ({l})"),
            Failure::PoweredOff => write!(f, "the guest powered off before the ready line"),
            Failure::Timeout(d) => write!(f, "no ready line within {} s", d.as_secs()),
        }
    }
}

fn lines(console: &str) -> impl Iterator<Item = &str> {
    console.lines().map(|l| l.trim_end_matches('\r'))
}

/// The first complete ready line (`gwos: ready slot=A version=0.1.0 boot_ms=2900`).
pub fn find_ready(console: &str) -> Option<Ready> {
    // Only complete lines: the last one may still be being written.
    let complete = &console[..console.rfind('\n')? + 1];
    let line = lines(complete).find_map(|l| l.split("gwos: ready ").nth(1))?;
    let field = |k: &str| {
        line.split_whitespace()
            .find_map(|w| w.strip_prefix(k))
            .map(str::to_string)
    };
    Some(Ready {
        slot: field("slot=")?,
        version: field("version=")?,
        boot_ms: field("boot_ms=")?.parse().ok()?,
        kernel_to_pid1_ms: kernel_to_pid1_ms(complete),
    })
}

/// "stage 1 (initramfs) pid 1 started at N ms".
pub fn kernel_to_pid1_ms(console: &str) -> Option<u64> {
    lines(console).find_map(|l| {
        l.split("stage 1 (initramfs) pid 1 started at ")
            .nth(1)?
            .split(' ')
            .next()?
            .parse()
            .ok()
    })
}

/// A failure already visible on the console (the guest may still be shutting down).
pub fn failure_in(console: &str) -> Option<Failure> {
    let find = |pat: &str| lines(console).find(|l| l.contains(pat)).map(str::to_string);
    if let Some(l) = lines(console)
        .find(|l| l.contains("verity") && l.contains("corrupted"))
        .map(str::to_string)
    {
        return Some(Failure::Verity(l));
    }
    if let Some(l) = find("gwos: FATAL:") {
        return Some(Failure::Refused(l));
    }
    find("Kernel panic").map(Failure::Panic)
}

/// Why QEMU exited before the ready line.
pub fn classify_exit(console: &str) -> Failure {
    failure_in(console).unwrap_or(Failure::PoweredOff)
}

/// The last `n` lines of the console (for error output).
pub fn tail(console: &str, n: usize) -> String {
    let l: Vec<&str> = lines(console).collect();
    l[l.len().saturating_sub(n)..].join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    const BOOT: &str = "[    1.8] Run /init as init process\r\n\
        gwos: stage 1 (initramfs) pid 1 started at 1873 ms after kernel start\r\n\
        gwos: network: eth0 10.0.2.15/24 via 10.0.2.2\r\n\
        gwos: ready slot=A version=0.1.0 boot_ms=2057\r\n";

    #[test]
    fn ready_line_and_figures() {
        assert_eq!(
            find_ready(BOOT),
            Some(Ready {
                slot: "A".into(),
                version: "0.1.0".into(),
                boot_ms: 2057,
                kernel_to_pid1_ms: Some(1873),
            })
        );
    }

    #[test]
    fn half_written_ready_line_is_not_ready() {
        let partial = &BOOT[..BOOT.len() - 4];
        assert_eq!(find_ready(partial), None);
    }

    #[test]
    fn verity_corruption_names_verity_with_code_4() {
        let c = "device-mapper: verity: 253:0: data block 0 is corrupted\n\
                 Kernel panic - not syncing: dm-verity device corrupted\n";
        let f = classify_exit(c);
        assert_eq!(
            f,
            Failure::Verity("device-mapper: verity: 253:0: data block 0 is corrupted".into())
        );
        assert_eq!(f.exit_code(), 4);
        assert!(f.to_string().starts_with("dm-verity:"), "{f}");
    }

    #[test]
    fn fatal_panic_and_silent_power_off_are_told_apart() {
        let f = classify_exit("gwos: FATAL: root hash mismatch: x\ngwos: powering off\n");
        assert_eq!(
            f,
            Failure::Refused("gwos: FATAL: root hash mismatch: x".into())
        );
        let f = classify_exit("Kernel panic - not syncing: VFS: Unable to mount root\n");
        assert_eq!(f.exit_code(), 5);
        assert_eq!(classify_exit("gwos: powering off\n"), Failure::PoweredOff);
        assert_eq!(Failure::Timeout(Duration::from_secs(9)).exit_code(), 6);
    }
}
