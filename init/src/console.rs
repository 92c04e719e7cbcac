//! The console: every line init prints goes to /dev/console (the serial
//! port on a VM) and to the kernel log (/dev/kmsg), so an operator sees why a
//! boot stopped even when only one of them is captured.

use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};

/// Set once stage 1/2 is PID 1; off in `gwosd run` and host tests (stderr only).
static AS_INIT: AtomicBool = AtomicBool::new(false);

pub fn set_init_mode() {
    AS_INIT.store(true, Ordering::SeqCst);
}

/// Prints `gwos: <msg>` on the console.
pub fn say(msg: &str) {
    let line = format!("gwos: {msg}\n");
    if !AS_INIT.load(Ordering::SeqCst) {
        let _ = std::io::stderr().write_all(line.as_bytes());
        return;
    }
    match std::fs::OpenOptions::new().write(true).open("/dev/console") {
        Ok(mut c) => {
            let _ = c.write_all(line.as_bytes());
        }
        Err(_) => {
            let _ = std::io::stderr().write_all(line.as_bytes());
        }
    }
}

/// Also records the line in the kernel log (best effort; /dev/kmsg may not exist yet).
pub fn kmsg(msg: &str) {
    if let Ok(mut k) = std::fs::OpenOptions::new().write(true).open("/dev/kmsg") {
        let _ = k.write_all(format!("<3>gwos: {msg}\n").as_bytes());
    }
}

/// `gwos: FATAL: <why>` on the console and in kmsg, then power off (or reboot
/// with `gwos.on_fail=reboot`). Never returns; never continues unverified.
pub fn fatal(why: &str) -> ! {
    let msg = format!("FATAL: {why}");
    say(&msg);
    kmsg(&msg);
    let reboot = crate::cmdline::get("gwos.on_fail").as_deref() == Some("reboot");
    say(if reboot {
        "rebooting (gwos.on_fail=reboot)"
    } else {
        "powering off"
    });
    crate::shutdown::halt(reboot)
}
