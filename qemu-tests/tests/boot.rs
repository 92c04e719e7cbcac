//! The QEMU boot suite: real kernel, real initramfs, real dm-verity, TCG.
//! Few boots, many checks each (CI budget). Needs root (network namespaces),
//! qemu-system-x86_64, OVMF, nmap; the images from `make image`.
//!
//! Test-only behaviour used here, honestly: direct boots add
//! `gwos.test=supervisor` to the command line, which makes PID 1 add two
//! built-in services (`selftest`, `selftest-crash`) and SIGKILL `selftest`
//! once after the ready line. The OVMF boot uses the shipped image untouched.

use std::time::{Duration, Instant};

use gwos_qemu_tests::{copy_image, direct_boot, flip_byte, gpt, need_tool, out_dir, qemu::boot_times, test_image, Boot, NetNs, Qemu};

const BOOT: Duration = Duration::from_secs(120);
const FAIL: Duration = Duration::from_secs(90);

fn workdir() -> tempfile::TempDir {
    tempfile::Builder::new().prefix("gwos-boot").tempdir_in(out_dir()).unwrap()
}

/// The STATE column of nmap's line for `port` (e.g. "2222/tcp").
fn port_state(scan: &str, port: &str) -> Option<String> {
    scan.lines().find(|l| l.starts_with(port)).and_then(|l| l.split_whitespace().nth(1)).map(str::to_string)
}

fn line_with<'a>(console: &'a str, pat: &str) -> Option<&'a str> {
    console.lines().find(|l| l.contains(pat))
}

/// Direct boot of the test image with a network: ready line, sysctl report,
/// sandbox, supervisor restart and flap detection, firewall from outside,
/// clean power-off on the ACPI power button.
#[test]
fn direct_boot_ready_supervise_firewall_shutdown() {
    need_tool("nmap");
    let img = test_image().unwrap();
    let wd = workdir();
    let disk = copy_image(&img.join("gwos.img"), wd.path()).unwrap();
    // 10.0.2.2 = the guest's gateway, .100 = backend, .50 = some other host.
    let ns = NetNs::new("direct", &["10.0.2.2/24", "10.0.2.100/24", "10.0.2.50/24"]).unwrap();
    let t = Instant::now();
    let mut q = Qemu::start(&disk, direct_boot(&img, "gwos.test=supervisor").unwrap(), Some(&ns)).unwrap();
    let c = q.wait_for("gwos: ready slot=A version=0.1.0 boot_ms=", BOOT).unwrap();
    let wall = t.elapsed();
    let (k, r) = boot_times(&c).expect("boot times on the console");
    eprintln!("DIRECT BOOT: kernel->PID1 {k} ms, PID1->ready {r} ms (guest clock), wall {:.1} s", wall.as_secs_f64());

    // Verified root and hardening report.
    assert!(c.contains("gwos: manifest verified"), "{c}");
    assert!(c.contains("mounted read-only (panic_on_corruption)"), "{c}");
    for want in [
        "sysctl kernel.kptr_restrict=2", "sysctl kernel.dmesg_restrict=1", "sysctl kernel.yama.ptrace_scope=3",
        "sysctl fs.protected_regular=2", "sysctl net.ipv4.tcp_syncookies=1", "sysctl kernel.randomize_va_space=2",
        "sysctl net.ipv4.conf.all.rp_filter=1", "sysctl fs.suid_dumpable=0", "sysctl net.ipv4.ip_forward=1",
        "sysctl kernel.unprivileged_bpf_disabled=1", "sysctl kernel.perf_event_paranoid=3",
        "sysctl kernel.kexec_load_disabled absent (feature compiled out)",
    ] {
        assert!(c.contains(want), "missing {want:?} in console:\n{c}");
    }
    assert!(c.contains("firewall: base ruleset loaded"), "{c}");
    assert!(c.contains("network: eth0 10.0.2.15/24 via 10.0.2.2") || c.contains("10.0.2.15/24 via 10.0.2.2"), "{c}");

    // The sandbox as the service sees it.
    let st = line_with(&c, "selftest: uid=").unwrap_or_else(|| panic!("no selftest report:\n{c}"));
    assert!(st.contains("uid=899 899 899 899"), "{st}");
    assert!(st.contains("CapEff=0000000000000000") && st.contains("CapBnd=0000000000000000"), "{st}");
    assert!(st.contains("NoNewPrivs=1") && st.contains("Seccomp=2"), "{st}");
    assert!(st.contains("write /etc: Read-only file system"), "{st}");
    assert!(st.contains("write /var/lib/gwos: Read-only file system"), "{st}");
    assert!(st.contains("own state dir: writable"), "{st}");

    // SIGKILLed service is restarted and healthy again; the crash loop is marked failed; PID 1 lives on.
    let c = q.wait_for("service selftest-crash FAILED: 5 failures within 60s", BOOT).unwrap();
    let kill = c.find("TEST: sending SIGKILL to selftest").expect("kill line");
    let c = q.wait_for_from(kill, "service selftest healthy", Duration::from_secs(60)).unwrap();
    assert!(c[kill..].contains("exited: killed by SIGKILL"), "{}", &c[kill..]);
    assert!(c[kill..].contains("service selftest restarting in"), "{}", &c[kill..]);

    // Firewall seen from the remote network: nothing open for a non-backend host except
    // the SPA port (udp/62201 is let through; with no spa listening the kernel answers
    // port-unreachable = "closed"), tcp/2222 reaches the gateway only from the backend.
    let scan = |src: &str, args: &[&str]| -> String {
        let mut a = vec!["-n", "-Pn", "-S", src, "-e", "tap0", "--max-retries", "1", "--host-timeout", "120s"];
        a.extend_from_slice(args);
        a.push("10.0.2.15");
        let o = ns.exec("nmap", &a).unwrap();
        String::from_utf8_lossy(&o.stdout).into_owned()
    };
    let other_tcp = scan("10.0.2.50", &["-sS", "-p", "1-1024,2222,8080,51820"]);
    eprintln!("nmap tcp from 10.0.2.50:\n{other_tcp}");
    assert!(!other_tcp.contains("/tcp open") && !other_tcp.contains("/tcp closed"), "{other_tcp}");
    assert!(other_tcp.contains("filtered"), "{other_tcp}");
    let backend_tcp = scan("10.0.2.100", &["-sS", "-p", "22,2222"]);
    eprintln!("nmap tcp from backend 10.0.2.100:\n{backend_tcp}");
    // No control service in the table yet: the SYN reaches the kernel, which answers RST ("closed").
    assert!(matches!(port_state(&backend_tcp, "2222/tcp").as_deref(), Some("closed") | Some("open")), "{backend_tcp}");
    assert_eq!(port_state(&backend_tcp, "22/tcp").as_deref(), Some("filtered"), "{backend_tcp}");
    let other_2222 = port_state(&other_tcp, "2222/tcp");
    assert!(other_2222.is_none() || other_2222.as_deref() == Some("filtered"), "{other_tcp}");
    let other_udp = scan("10.0.2.50", &["-sU", "-p", "53,62201,51820"]);
    eprintln!("nmap udp from 10.0.2.50:\n{other_udp}");
    assert!(matches!(port_state(&other_udp, "62201/udp").as_deref(), Some("closed") | Some("open")), "{other_udp}");
    assert_eq!(port_state(&other_udp, "53/udp").as_deref(), Some("open|filtered"), "{other_udp}");

    // ACPI power button → clean shutdown, QEMU exits.
    let before = q.console_text().len();
    q.monitor("system_powerdown").unwrap();
    let c = q.wait_exit(Duration::from_secs(60)).unwrap();
    let tail = &c[before..];
    assert!(tail.contains("gwos: power button pressed"), "{tail}");
    assert!(tail.contains("gwos: shutdown (PowerOff)"), "{tail}");
    assert!(tail.contains("gwos: powering off"), "{tail}");
}

/// The root hash on the command line differs from the signed one → refuses.
#[test]
fn refuses_roothash_mismatch() {
    let img = test_image().unwrap();
    let wd = workdir();
    let disk = copy_image(&img.join("gwos.img"), wd.path()).unwrap();
    let Boot::Direct { kernel, initrd, append } = direct_boot(&img, "").unwrap() else { unreachable!() };
    let bad = "0".repeat(64);
    let append: String = append.split_whitespace().map(|w| if w.starts_with("gwos.roothash=") { format!("gwos.roothash={bad}") } else { w.to_string() }).collect::<Vec<_>>().join(" ");
    let mut q = Qemu::start(&disk, Boot::Direct { kernel, initrd, append }, None).unwrap();
    let c = q.wait_for("gwos: FATAL: root hash mismatch", FAIL).unwrap();
    let c2 = q.wait_exit(Duration::from_secs(30)).unwrap_or(c);
    assert!(!c2.contains("mounted read-only") && !c2.contains("gwos: ready"), "{c2}");
    assert!(c2.contains("gwos: powering off"), "{c2}");
}

/// One byte of the manifest signature changed → refuses before mounting anything.
#[test]
fn refuses_bad_manifest_signature() {
    let img = test_image().unwrap();
    let wd = workdir();
    let disk = copy_image(&img.join("gwos.img"), wd.path()).unwrap();
    let v = gpt::find(&disk, "verity-a").unwrap();
    // Envelope: magic(8) len(4) key id(8) signature(64) manifest...
    flip_byte(&disk, v.offset + v.size - 64 * 1024 + 8 + 4 + 8 + 10).unwrap();
    let mut q = Qemu::start(&disk, direct_boot(&img, "").unwrap(), None).unwrap();
    let c = q.wait_for("gwos: FATAL: manifest signature check failed", FAIL).unwrap();
    let c2 = q.wait_exit(Duration::from_secs(30)).unwrap_or(c);
    assert!(!c2.contains("manifest verified") && !c2.contains("mounted read-only") && !c2.contains("gwos: ready"), "{c2}");
}

/// One byte of root-a changed (inside the EROFS superblock block) → dm-verity
/// refuses the block, the kernel panics naming the corruption, no ready line.
#[test]
fn corrupted_root_is_fatal() {
    let img = test_image().unwrap();
    let wd = workdir();
    let disk = copy_image(&img.join("gwos.img"), wd.path()).unwrap();
    let r = gpt::find(&disk, "root-a").unwrap();
    flip_byte(&disk, r.offset + 1024 + 100).unwrap();
    let mut q = Qemu::start(&disk, direct_boot(&img, "").unwrap(), None).unwrap();
    let c = q.wait_for("is corrupted", FAIL).unwrap();
    let c2 = q.wait_exit(Duration::from_secs(60)).unwrap_or(c);
    assert!(c2.contains("device-mapper: verity"), "{c2}");
    assert!(c2.contains("Kernel panic") && c2.contains("dm-verity device corrupted"), "{c2}");
    assert!(!c2.contains("gwos: ready"), "{c2}");
}

/// The shipped image (out/gwos.img) through OVMF + systemd-boot + UKI: ready line;
/// and `gwos ls` shows no shell in the root.
#[test]
fn ovmf_boot_shipped_image() {
    let out = out_dir();
    let wd = workdir();
    let disk = copy_image(&out.join("gwos.img"), wd.path()).unwrap();
    let t = Instant::now();
    let mut q = Qemu::start(&disk, Boot::Ovmf, None).unwrap();
    let c = q.wait_for("gwos: ready slot=A version=", Duration::from_secs(240)).unwrap();
    let (k, r) = boot_times(&c).expect("boot times");
    eprintln!("OVMF BOOT: kernel->PID1 {k} ms, PID1->ready {r} ms (guest clock), wall incl. firmware {:.1} s", t.elapsed().as_secs_f64());
    assert!(c.contains("gwos: boot blessing:"), "{c}");

    let gwos = std::env::var_os("GWOS_BIN").map(std::path::PathBuf::from).unwrap_or_else(|| gwos_qemu_tests::workspace().join("target/release/gwos"));
    let o = std::process::Command::new(&gwos).arg("ls").arg(out.join("gwos.img")).output().unwrap();
    let ls = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "gwos ls failed: {}", String::from_utf8_lossy(&o.stderr));
    assert!(ls.contains("sbin/init"), "{ls}");
    for bad in ["bin/sh", "/sh\n", "busybox", "bash"] {
        assert!(!ls.contains(bad), "{bad} in the image:\n{ls}");
    }
}
