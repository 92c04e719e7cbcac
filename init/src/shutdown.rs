//! Power off / reboot: the last thing PID 1 does (after services are stopped
//! and file systems are synced and unmounted read-only).

use nix::sys::reboot::{reboot, RebootMode};

/// Syncs and powers off (or reboots). If the kernel refuses (not PID 1, no
/// CAP_SYS_BOOT) the process exits instead so it can never continue.
pub fn halt(reboot_instead: bool) -> ! {
    nix::unistd::sync();
    if nix::unistd::getpid().as_raw() == 1 {
        let mode = if reboot_instead {
            RebootMode::RB_AUTOBOOT
        } else {
            RebootMode::RB_POWER_OFF
        };
        let _ = reboot(mode);
        // reboot(2) does not return on success; if it did, hang rather than exit
        // (PID 1 exiting panics the kernel, which is also fail-closed but noisier).
        loop {
            std::thread::sleep(std::time::Duration::from_secs(3600));
        }
    }
    std::process::exit(111)
}

/// Why PID 1 is going down.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Request {
    PowerOff,
    Reboot,
}

static POWER_BUTTON: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

pub fn power_button_pressed() -> bool {
    POWER_BUTTON.load(std::sync::atomic::Ordering::SeqCst)
}

/// Watches every /dev/input/event* for KEY_POWER (ACPI power button) in
/// background threads; a press sets a flag the main loop polls.
pub fn watch_power_button() -> usize {
    const EV_KEY: u16 = 1;
    const KEY_POWER: u16 = 116;
    let Ok(rd) = std::fs::read_dir("/dev/input") else {
        return 0;
    };
    let mut n = 0;
    for e in rd.flatten() {
        if !e.file_name().to_string_lossy().starts_with("event") {
            continue;
        }
        let Ok(mut f) = std::fs::File::open(e.path()) else {
            continue;
        };
        n += 1;
        std::thread::spawn(move || {
            use std::io::Read;
            // struct input_event on x86_64: timeval (16), type u16, code u16, value i32.
            let mut ev = [0u8; 24];
            while f.read_exact(&mut ev).is_ok() {
                let ty = u16::from_ne_bytes([ev[16], ev[17]]);
                let code = u16::from_ne_bytes([ev[18], ev[19]]);
                let value = i32::from_ne_bytes(ev[20..24].try_into().expect("4 bytes"));
                if ty == EV_KEY && code == KEY_POWER && value == 1 {
                    POWER_BUTTON.store(true, std::sync::atomic::Ordering::SeqCst);
                }
            }
        });
    }
    n
}

/// Unmounts what stage 2 mounted read-write (or remounts read-only if busy).
pub fn unmount_all() {
    use nix::mount::{mount, umount2, MntFlags, MsFlags};
    nix::unistd::sync();
    for m in ["/var"] {
        if umount2(m, MntFlags::empty()).is_err() {
            let _ = mount(
                None::<&str>,
                m,
                None::<&str>,
                MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY,
                None::<&str>,
            );
        }
    }
    nix::unistd::sync();
}
