//! The console: every line init prints goes to each console named on the
//! kernel command line (`console=tty0 console=ttyS0,115200`: the screen and
//! the serial port), not only to /dev/console (which is just the last one),
//! and fatal lines also to the kernel log (/dev/kmsg), so an operator sees
//! why a boot stopped on whichever of them is captured.

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
    let mut written = false;
    for dev in devices(&std::fs::read_to_string("/proc/cmdline").unwrap_or_default()) {
        if let Ok(mut c) = open_tty(&dev) {
            written |= c.write_all(line.as_bytes()).is_ok();
        }
    }
    if written {
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

/// `/dev/<name>` of every `console=<name>[,options]` on the command line, in order, once each.
pub fn devices(cmdline: &str) -> Vec<String> {
    let mut v: Vec<String> = Vec::new();
    for w in cmdline.split_whitespace() {
        let Some(c) = w.strip_prefix("console=") else {
            continue;
        };
        let name = c.split(',').next().unwrap_or("");
        if name.is_empty() || !name.bytes().all(|b| b.is_ascii_alphanumeric()) {
            continue;
        }
        let dev = format!("/dev/{name}");
        if !v.contains(&dev) {
            v.push(dev);
        }
    }
    v
}

/// Opens a terminal for writing without making it PID 1's controlling
/// terminal and without waiting for a serial carrier; writes then block as usual.
fn open_tty(dev: &str) -> std::io::Result<std::fs::File> {
    use std::os::fd::AsRawFd;
    use std::os::unix::fs::OpenOptionsExt;
    let f = std::fs::OpenOptions::new()
        .write(true)
        .custom_flags(libc::O_NOCTTY | libc::O_NONBLOCK)
        .open(dev)?;
    let flags = nix::fcntl::fcntl(f.as_raw_fd(), nix::fcntl::FcntlArg::F_GETFL)?;
    let flags = nix::fcntl::OFlag::from_bits_truncate(flags) & !nix::fcntl::OFlag::O_NONBLOCK;
    nix::fcntl::fcntl(f.as_raw_fd(), nix::fcntl::FcntlArg::F_SETFL(flags))?;
    Ok(f)
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

#[cfg(test)]
mod tests {
    #[test]
    fn every_listed_console_once_in_order() {
        assert_eq!(
            super::devices(
                "console=tty0 gwos.slot=a console=ttyS0,115200 console=ttyS0 console=../x"
            ),
            vec!["/dev/tty0".to_string(), "/dev/ttyS0".to_string()]
        );
        assert!(super::devices("ro quiet").is_empty());
    }
}
