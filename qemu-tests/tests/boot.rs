//! The QEMU boot suite: real kernel, real initramfs, real dm-verity, TCG.
//! Few boots, many checks each (CI budget). Needs root (network namespaces),
//! qemu-system-x86_64, OVMF, nmap; the images from `make image`.
//!
//! Test-only behaviour used here, honestly: direct boots add
//! `gwos.test=supervisor` to the command line, which makes PID 1 add two
//! built-in services (`selftest`, `selftest-crash`) and SIGKILL `selftest`
//! once after the ready line. The OVMF boot uses the shipped image untouched.

use std::time::{Duration, Instant};

use gwos_qemu_tests::{
    copy_image, direct_boot, flip_byte, gpt, need_tool, out_dir, qemu::boot_times, test_image,
    Boot, NetNs, Qemu,
};

const BOOT: Duration = Duration::from_secs(120);
const FAIL: Duration = Duration::from_secs(90);

fn workdir() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("gwos-boot")
        .tempdir_in(out_dir())
        .unwrap()
}

/// The STATE column of nmap's line for `port` (e.g. "2222/tcp").
fn port_state(scan: &str, port: &str) -> Option<String> {
    scan.lines()
        .find(|l| l.starts_with(port))
        .and_then(|l| l.split_whitespace().nth(1))
        .map(str::to_string)
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
    let mut q = Qemu::start(
        &disk,
        direct_boot(&img, "gwos.test=supervisor").unwrap(),
        Some(&ns),
    )
    .unwrap();
    let c = q
        .wait_for("gwos: ready slot=A version=0.1.0 boot_ms=", BOOT)
        .unwrap();
    let wall = t.elapsed();
    let (k, r) = boot_times(&c).expect("boot times on the console");
    eprintln!(
        "DIRECT BOOT: kernel->PID1 {k} ms, PID1->ready {r} ms (guest clock), wall {:.1} s",
        wall.as_secs_f64()
    );

    // Verified root and hardening report.
    assert!(c.contains("gwos: manifest verified"), "{c}");
    assert!(c.contains("mounted read-only (panic_on_corruption)"), "{c}");
    for want in [
        "sysctl kernel.kptr_restrict=2",
        "sysctl kernel.dmesg_restrict=1",
        "sysctl kernel.yama.ptrace_scope=3",
        "sysctl fs.protected_regular=2",
        "sysctl net.ipv4.tcp_syncookies=1",
        "sysctl kernel.randomize_va_space=2",
        "sysctl net.ipv4.conf.all.rp_filter=1",
        "sysctl fs.suid_dumpable=0",
        "sysctl net.ipv4.ip_forward=1",
        "sysctl kernel.unprivileged_bpf_disabled=1",
        "sysctl kernel.perf_event_paranoid=3",
        "sysctl kernel.kexec_load_disabled absent (feature compiled out)",
    ] {
        assert!(c.contains(want), "missing {want:?} in console:\n{c}");
    }
    assert!(c.contains("firewall: base ruleset loaded"), "{c}");
    assert!(
        c.contains("network: eth0 10.0.2.15/24 via 10.0.2.2")
            || c.contains("10.0.2.15/24 via 10.0.2.2"),
        "{c}"
    );

    // The sandbox as the service sees it.
    let st = line_with(&c, "selftest: uid=").unwrap_or_else(|| panic!("no selftest report:\n{c}"));
    assert!(st.contains("uid=899 899 899 899"), "{st}");
    assert!(
        st.contains("CapEff=0000000000000000") && st.contains("CapBnd=0000000000000000"),
        "{st}"
    );
    assert!(
        st.contains("NoNewPrivs=1") && st.contains("Seccomp=2"),
        "{st}"
    );
    let probe = line_with(&c, "selftest: seccomp probe:")
        .unwrap_or_else(|| panic!("no seccomp probe:\n{c}"));
    assert!(
        probe.contains("unshare=EPERM")
            && probe.contains("getpriority=EPERM")
            && probe.contains("getppid=ok"),
        "{probe}"
    );
    assert!(st.contains("write /etc: Read-only file system"), "{st}");
    assert!(
        st.contains("write /var/lib/gwos: Read-only file system"),
        "{st}"
    );
    assert!(st.contains("own state dir: writable"), "{st}");

    // SIGKILLed service is restarted and healthy again; the crash loop is marked failed; PID 1 lives on.
    let c = q
        .wait_for("service selftest-crash FAILED: 5 failures within 60s", BOOT)
        .unwrap();
    let kill = c
        .find("TEST: sending SIGKILL to selftest")
        .expect("kill line");
    let c = q
        .wait_for_from(kill, "service selftest healthy", Duration::from_secs(60))
        .unwrap();
    assert!(
        c[kill..].contains("exited: killed by SIGKILL"),
        "{}",
        &c[kill..]
    );
    assert!(
        c[kill..].contains("service selftest restarting in"),
        "{}",
        &c[kill..]
    );

    // Firewall seen from the remote network: nothing open for a non-backend host (tcp/443
    // too stays filtered without a knock; udp/62201 reaches the silent spa listener, see
    // gateway_services_knock_tls_control), tcp/2222 reaches control only from the backend.
    let scan = |src: &str, args: &[&str]| -> String {
        let mut a = vec![
            "-n",
            "-Pn",
            "-S",
            src,
            "-e",
            "tap0",
            "--max-retries",
            "1",
            "--host-timeout",
            "120s",
        ];
        a.extend_from_slice(args);
        a.push("10.0.2.15");
        let o = ns.exec("nmap", &a).unwrap();
        String::from_utf8_lossy(&o.stdout).into_owned()
    };
    let other_tcp = scan("10.0.2.50", &["-sS", "-p", "1-1024,2222,8080,51820"]);
    eprintln!("nmap tcp from 10.0.2.50:\n{other_tcp}");
    assert!(
        !other_tcp.contains("/tcp open") && !other_tcp.contains("/tcp closed"),
        "{other_tcp}"
    );
    assert!(other_tcp.contains("filtered"), "{other_tcp}");
    let backend_tcp = scan("10.0.2.100", &["-sS", "-p", "22,2222"]);
    eprintln!("nmap tcp from backend 10.0.2.100:\n{backend_tcp}");
    // The control service listens on tcp/2222 and the backend may reach it.
    assert_eq!(
        port_state(&backend_tcp, "2222/tcp").as_deref(),
        Some("open"),
        "{backend_tcp}"
    );
    assert_eq!(
        port_state(&backend_tcp, "22/tcp").as_deref(),
        Some("filtered"),
        "{backend_tcp}"
    );
    let other_2222 = port_state(&other_tcp, "2222/tcp");
    assert!(
        other_2222.is_none() || other_2222.as_deref() == Some("filtered"),
        "{other_tcp}"
    );
    let other_udp = scan("10.0.2.50", &["-sU", "-p", "53,62201,51820"]);
    eprintln!("nmap udp from 10.0.2.50:\n{other_udp}");
    // spa listens on udp/62201 and never answers: nmap cannot tell it from a filtered port
    // (the knock test shows datagrams reach it); what matters is that it is not "closed".
    assert_eq!(
        port_state(&other_udp, "62201/udp").as_deref(),
        Some("open|filtered"),
        "{other_udp}"
    );
    assert_eq!(
        port_state(&other_udp, "53/udp").as_deref(),
        Some("open|filtered"),
        "{other_udp}"
    );

    // ACPI power button → clean shutdown, QEMU exits.
    let before = q.console_text().len();
    q.monitor("system_powerdown").unwrap();
    let c = q.wait_exit(Duration::from_secs(60)).unwrap();
    let tail = &c[before..];
    assert!(tail.contains("gwos: power button pressed"), "{tail}");
    assert!(tail.contains("gwos: shutdown (PowerOff)"), "{tail}");
    assert!(
        !tail.contains("ignored SIGTERM"),
        "services did not stop on SIGTERM:\n{tail}"
    );
    assert!(tail.contains("gwos: powering off"), "{tail}");
}

/// The root hash on the command line differs from the signed one → refuses.
#[test]
fn refuses_roothash_mismatch() {
    let img = test_image().unwrap();
    let wd = workdir();
    let disk = copy_image(&img.join("gwos.img"), wd.path()).unwrap();
    let Boot::Direct {
        kernel,
        initrd,
        append,
    } = direct_boot(&img, "").unwrap()
    else {
        unreachable!()
    };
    let bad = "0".repeat(64);
    let append: String = append
        .split_whitespace()
        .map(|w| {
            if w.starts_with("gwos.roothash=") {
                format!("gwos.roothash={bad}")
            } else {
                w.to_string()
            }
        })
        .collect::<Vec<_>>()
        .join(" ");
    let mut q = Qemu::start(
        &disk,
        Boot::Direct {
            kernel,
            initrd,
            append,
        },
        None,
    )
    .unwrap();
    let c = q.wait_for("gwos: FATAL: root hash mismatch", FAIL).unwrap();
    let c2 = q.wait_exit(Duration::from_secs(30)).unwrap_or(c);
    assert!(
        !c2.contains("mounted read-only") && !c2.contains("gwos: ready"),
        "{c2}"
    );
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
    let c = q
        .wait_for("gwos: FATAL: manifest signature check failed", FAIL)
        .unwrap();
    let c2 = q.wait_exit(Duration::from_secs(30)).unwrap_or(c);
    assert!(
        !c2.contains("manifest verified")
            && !c2.contains("mounted read-only")
            && !c2.contains("gwos: ready"),
        "{c2}"
    );
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
    assert!(
        c2.contains("Kernel panic") && c2.contains("dm-verity device corrupted"),
        "{c2}"
    );
    assert!(!c2.contains("gwos: ready"), "{c2}");
}

fn mtools(args: &[&str]) -> String {
    need_tool("mdir");
    let o = std::process::Command::new(args[0])
        .args(&args[1..])
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// The shipped image (out/gwos.img) through OVMF + systemd-boot + UKI: ready line,
/// boot blessing of a counted (trial) boot, clean power-off; `gwos ls` shows no shell.
/// The copy's UKI is renamed to `+3` first, as the updater does for a trial boot.
#[test]
fn ovmf_boot_shipped_image() {
    let out = out_dir();
    let wd = workdir();
    let disk = copy_image(&out.join("gwos.img"), wd.path()).unwrap();
    let esp = gpt::find(&disk, "esp").unwrap();
    let fat = format!("{}@@{}", disk.display(), esp.offset);
    let listing = mtools(&["mdir", "-b", "-i", &fat, "::/EFI/Linux"]);
    let uki = listing
        .lines()
        .map(|l| l.trim().rsplit('/').next().unwrap_or("").to_string())
        .find(|n| n.ends_with(".efi"))
        .expect("a UKI on the ESP");
    let counted = uki.replace(".efi", "+3.efi");
    mtools(&[
        "mren",
        "-i",
        &fat,
        &format!("::/EFI/Linux/{uki}"),
        &format!("::/EFI/Linux/{counted}"),
    ]);
    let t = Instant::now();
    let mut q = Qemu::start(&disk, Boot::Ovmf, None).unwrap();
    let c = q
        .wait_for("gwos: ready slot=A version=", Duration::from_secs(240))
        .unwrap();
    let (k, r) = boot_times(&c).expect("boot times");
    eprintln!("OVMF BOOT: kernel->PID1 {k} ms, PID1->ready {r} ms (guest clock), wall incl. firmware {:.1} s", t.elapsed().as_secs_f64());
    let c = q
        // The shipped image blesses after the default window: 60 s of healthy services.
        .wait_for(
            &format!("-> {uki} (services healthy for"),
            Duration::from_secs(150),
        )
        .unwrap();
    let bless = line_with(&c, "gwos: boot blessing:").unwrap();
    eprintln!("{bless}");
    assert!(bless.contains(&format!("-> {uki}")), "{bless}");
    assert!(c.contains("gwos: state: "), "{c}");
    q.monitor("system_powerdown").unwrap();
    let c = q.wait_exit(Duration::from_secs(60)).unwrap();
    assert!(c.contains("gwos: powering off"), "{c}");
    let after = mtools(&["mdir", "-b", "-i", &fat, "::/EFI/Linux"]);
    assert!(
        after.contains(&format!("/{uki}")) && !after.contains('+'),
        "ESP after the blessed boot:\n{after}"
    );

    let gwos = std::env::var_os("GWOS_BIN")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| gwos_qemu_tests::workspace().join("target/release/gwos"));
    let o = std::process::Command::new(&gwos)
        .arg("ls")
        .arg(out.join("gwos.img"))
        .output()
        .unwrap();
    let ls = String::from_utf8_lossy(&o.stdout);
    assert!(
        o.status.success(),
        "gwos ls failed: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(ls.contains("sbin/init"), "{ls}");
    for bad in ["bin/sh", "/sh\n", "busybox", "bash"] {
        assert!(!ls.contains(bad), "{bad} in the image:\n{ls}");
    }
}

/// Runs `script` with `sh -c` inside the namespace; (success, stdout+stderr).
fn ns_sh(ns: &NetNs, script: &str) -> (bool, String) {
    let o = ns.exec("sh", &["-c", script]).unwrap();
    (
        o.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        ),
    )
}

/// Whether a TCP connection from `src` to the guest's `port` is accepted (4 s bound).
/// Round trips of `count` pings (0.5 s apart) from `ns` to `dst`.
#[derive(Debug)]
#[allow(dead_code)] // the fields are printed
struct PingStats {
    replies: usize,
    loss_pct: f64,
    median_ms: f64,
    max_ms: f64,
    /// Longest time between two consecutive replies.
    max_gap_ms: f64,
}

fn ping_stats(ns: &NetNs, dst: &str, count: u32) -> (PingStats, String) {
    let (_, out) = ns_sh(ns, &format!("ping -n -D -c {count} -i 0.5 -W 2 {dst}"));
    // "[1764780000.123456] 64 bytes from …: icmp_seq=1 ttl=64 time=1.23 ms"
    let mut at = Vec::new();
    let mut rtt = Vec::new();
    for l in out.lines().filter(|l| l.contains(" time=")) {
        let t: f64 = l[1..l.find(']').unwrap()].parse().unwrap();
        let ms: f64 = l
            .rsplit("time=")
            .next()
            .unwrap()
            .trim_end_matches(" ms")
            .parse()
            .unwrap();
        at.push(t);
        rtt.push(ms);
    }
    rtt.sort_by(f64::total_cmp);
    let gap = at
        .windows(2)
        .map(|w| (w[1] - w[0]) * 1000.0)
        .fold(0.0, f64::max);
    let n = rtt.len();
    (
        PingStats {
            replies: n,
            loss_pct: 100.0 * (count as f64 - n as f64) / count as f64,
            median_ms: if n > 0 { rtt[n / 2] } else { f64::NAN },
            max_ms: rtt.last().copied().unwrap_or(f64::NAN),
            max_gap_ms: if n > 1 { gap } else { f64::INFINITY },
        },
        out,
    )
}

fn tcp_open(ns: &NetNs, src: &str, port: u16) -> bool {
    ns_sh(
        ns,
        &format!("socat -u /dev/null TCP:10.0.2.15:{port},bind={src},connect-timeout=4"),
    )
    .0
}

/// The gateway services under PID 1 in the test image (spa, tls-front,
/// control, each in its sandbox), driven from the remote network with real
/// clients: tcp/443 is closed; the stock `fwknop` client knocks from X and
/// `openssl s_client` then completes a TLS 1.3 handshake from X (a TLS 1.2
/// offer is refused) while Y still cannot connect; the backend's OpenSSH
/// client reaches the control channel, whose `health` sees spa and whose
/// `spa_user_list` is answered by spa over the local RPC; a non-backend
/// address cannot reach tcp/2222.
#[test]
fn gateway_services_knock_tls_control() {
    for t in ["fwknop", "openssl", "ssh", "socat"] {
        need_tool(t);
    }
    let img = test_image().unwrap();
    let wd = workdir();
    let disk = copy_image(&img.join("gwos.img"), wd.path()).unwrap();
    // .2 guest's gateway, .100 backend, .50 = X (knocks), .60 = Y (does not).
    let ns = NetNs::new(
        "svc",
        &[
            "10.0.2.2/24",
            "10.0.2.100/24",
            "10.0.2.50/24",
            "10.0.2.60/24",
        ],
    )
    .unwrap();
    let mut q = Qemu::start(&disk, direct_boot(&img, "").unwrap(), Some(&ns)).unwrap();
    let c = q
        .wait_for("gwos: ready slot=A version=0.1.0 boot_ms=", BOOT)
        .unwrap();
    for svc in ["spa", "tls-front", "vpn", "control"] {
        assert!(
            c.contains(&format!("service {svc} healthy")),
            "{svc} not healthy:\n{c}"
        );
    }
    // First boot: the image's blank state partition is formatted from the template and grown.
    let state = line_with(&c, "gwos: state: ").unwrap_or_else(|| panic!("no state line:\n{c}"));
    assert!(
        state.contains("was blank: formatted ext4") && state.contains("grown to 16384 blocks"),
        "{state}"
    );
    let pin_of = |c: &str| {
        c.lines()
            .find(|l| l.contains("\"tls.start\""))
            .and_then(|l| l.split("\"spki_sha256\":\"").nth(1))
            .map(|r| r[..64].to_string())
    };
    let pin = pin_of(&c).unwrap_or_else(|| panic!("no tls.start event:\n{c}"));
    assert!(
        !tcp_open(&ns, "10.0.2.50", 443),
        "tcp/443 open before any knock"
    );

    // Packets to the guest leave from X unless a test binds another address.
    let (ok, out) = ns_sh(&ns, "ip route replace 10.0.2.15/32 dev tap0 src 10.0.2.50");
    assert!(ok, "{out}");
    let home = wd.path().join("home");
    std::fs::create_dir_all(&home).unwrap();
    let tc = test_config();
    let user = &tc["site"]["spa"]["users"][0];
    let (k, h) = (
        user["key_base64"].as_str().unwrap(),
        user["hmac_key_base64"].as_str().unwrap(),
    );
    let (ok, out) = ns_sh(
        &ns,
        &format!("HOME={} fwknop --no-rc-file --no-save-args -A tcp/443 -a 10.0.2.50 -D 10.0.2.15 -U alice --key-base64-rijndael {k} --key-base64-hmac {h} --use-hmac", home.display()),
    );
    assert!(ok, "fwknop failed: {out}");
    let t = Instant::now();
    let mut tls13 = (false, String::new());
    while t.elapsed() < Duration::from_secs(15) && !tls13.0 {
        tls13 = ns_sh(
            &ns,
            "timeout 20 openssl s_client -connect 10.0.2.15:443 -tls1_3 -brief </dev/null",
        );
    }
    eprintln!(
        "knock -> TLS 1.3 handshake from X in {:.1} s:\n{}",
        t.elapsed().as_secs_f64(),
        tls13.1
    );
    assert!(
        tls13.0 && tls13.1.contains("TLSv1.3"),
        "no TLS 1.3 handshake after the knock:\n{}\nconsole:\n{}",
        tls13.1,
        q.console_text()
    );
    assert!(
        tls13.1.contains("TLS_AES_256_GCM_SHA384")
            || tls13.1.contains("TLS_CHACHA20_POLY1305_SHA256"),
        "{}",
        tls13.1
    );
    let (ok12, out12) = ns_sh(
        &ns,
        "timeout 20 openssl s_client -connect 10.0.2.15:443 -tls1_2 -brief </dev/null",
    );
    assert!(
        !ok12 && !out12.contains("Protocol version: TLSv1.2"),
        "TLS 1.2 accepted:\n{out12}"
    );
    let (ok_aes128, out_aes128) = ns_sh(&ns, "timeout 20 openssl s_client -connect 10.0.2.15:443 -tls1_3 -ciphersuites TLS_AES_128_GCM_SHA256 -brief </dev/null");
    assert!(!ok_aes128, "TLS_AES_128_GCM_SHA256 accepted:\n{out_aes128}");
    assert!(
        !tcp_open(&ns, "10.0.2.60", 443),
        "tcp/443 open for Y, which did not knock"
    );

    // Control channel from the backend (real OpenSSH client), refused elsewhere.
    let key = wd.path().join("backend_ed25519");
    std::fs::copy(
        gwos_qemu_tests::workspace().join("qemu-tests/fixtures/backend_ed25519"),
        &key,
    )
    .unwrap();
    std::fs::set_permissions(&key, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    let ssh = |src: &str, cmd: &str| {
        ns_sh(
            &ns,
            &format!(
                "echo '{{}}' | timeout 60 ssh -p 2222 -i {} -o BindAddress={src} -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null -o BatchMode=yes -o IdentitiesOnly=yes -o LogLevel=ERROR -o ConnectTimeout=10 gwctl@10.0.2.15 {cmd}",
                key.display()
            ),
        )
    };
    let (ok, out) = ssh("10.0.2.100", "health");
    eprintln!("control health from the backend: {out}");
    assert!(ok, "control health failed: {out}");
    let v: serde_json::Value =
        serde_json::from_str(out.trim()).unwrap_or_else(|e| panic!("{e}: {out}"));
    assert_eq!(v["ok"], true, "{v}");
    assert_eq!(v["services"]["spa"], "ok", "{v}");
    assert_eq!(v["services"]["vpn"], "ok", "{v}");
    assert!(v["trace_id"].as_str().is_some_and(|t| !t.is_empty()), "{v}");
    let (ok, out) = ssh("10.0.2.100", "spa_user_list");
    assert!(ok, "spa_user_list failed: {out}");
    assert!(
        out.contains("\"alice\"") && !out.contains(k) && !out.contains(h),
        "{out}"
    );
    let (ok, out) = ssh("10.0.2.50", "health");
    assert!(!ok, "control reachable from a non-backend address: {out}");

    // `reboot` over the control channel: control -> PID 1's init.sock (F12) ->
    // clean shutdown and reboot (QEMU runs with -no-reboot, so it exits).
    let before = q.console_text().len();
    let (ok, out) = ssh("10.0.2.100", "reboot");
    assert!(ok && out.contains("\"ok\":true"), "reboot failed: {out}");
    let c = q.wait_exit(Duration::from_secs(60)).unwrap();
    let after = &c[before..];
    assert!(
        after.contains("gwos: init.sock: reboot requested by uid 804")
            && after.contains("gwos: shutdown (Reboot): stopping")
            && after.contains("gwos: rebooting"),
        "{after}"
    );
    drop(q);

    // Second boot of the same disk: /var is kept (not formatted again), so is the
    // per-machine TLS key made on the first boot.
    let mut q = Qemu::start(&disk, direct_boot(&img, "").unwrap(), Some(&ns)).unwrap();
    let c = q
        .wait_for("gwos: ready slot=A version=0.1.0 boot_ms=", BOOT)
        .unwrap();
    let state = line_with(&c, "gwos: state: ").unwrap_or_else(|| panic!("no state line:\n{c}"));
    assert!(
        state.contains("ext4 at /var (16384 blocks)") && !state.contains("blank"),
        "{state}"
    );
    assert_eq!(
        pin_of(&c).as_deref(),
        Some(pin.as_str()),
        "TLS key changed across reboots"
    );
    q.monitor("system_powerdown").unwrap();
    q.wait_exit(Duration::from_secs(60)).unwrap();
}

/// qemu-tests/test-image.toml as JSON (the test reads its own fixtures from it).
fn test_config() -> serde_json::Value {
    let t =
        std::fs::read_to_string(gwos_qemu_tests::workspace().join("qemu-tests/test-image.toml"))
            .unwrap();
    serde_json::to_value(toml::from_str::<toml::Value>(&t).unwrap()).unwrap()
}

/// Child processes killed when the test ends, pass or fail.
struct Kids(Vec<std::process::Child>);
impl Drop for Kids {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// The VPN end to end in the image, as a remote user would use it: the
/// backend creates the user over the control channel (OpenSSH), the user's
/// site (a namespace behind the remote network) runs Debian's `wireguard-go`
/// with the returned config and `gwos connect`, which knocks (SPA) and then
/// carries WireGuard over TLS to tls-front → vpn in the guest. The user
/// reaches the gateway's tunnel address and the internal host its policy
/// allows (masqueraded), not another internal host; `vpn_user_delete` cuts
/// the live session.
#[test]
fn vpn_user_through_knock_tls_and_tunnel() {
    for t in ["ssh", "wireguard-go", "wg", "ping"] {
        need_tool(t);
    }
    let img = test_image().unwrap();
    let wd = workdir();
    let disk = copy_image(&img.join("gwos.img"), wd.path()).unwrap();
    // Remote network: .2 guest's gateway, .100 backend, .60 internal host the user may
    // reach, .70 one it may not. The user's site 192.168.77.0/24 is routed through it.
    let ns = NetNs::new(
        "vpn",
        &[
            "10.0.2.2/24",
            "10.0.2.100/24",
            "10.0.2.60/24",
            "10.0.2.70/24",
        ],
    )
    .unwrap();
    let site = ns
        .behind("usr", "192.168.77.1/24", "192.168.77.2/24")
        .unwrap();
    let mut q = Qemu::start(&disk, direct_boot(&img, "").unwrap(), Some(&ns)).unwrap();
    q.wait_for("gwos: ready slot=A version=0.1.0 boot_ms=", BOOT)
        .unwrap();

    let key = wd.path().join("backend_ed25519");
    std::fs::copy(
        gwos_qemu_tests::workspace().join("qemu-tests/fixtures/backend_ed25519"),
        &key,
    )
    .unwrap();
    std::fs::set_permissions(&key, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    let ctl = |cmd: &str, req: serde_json::Value| -> serde_json::Value {
        let req_file = wd.path().join("req.json");
        std::fs::write(&req_file, req.to_string()).unwrap();
        let (ok, out) = ns_sh(
            &ns,
            &format!(
                "timeout 60 ssh -p 2222 -i {} -o BindAddress=10.0.2.100 -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null -o BatchMode=yes -o IdentitiesOnly=yes -o LogLevel=ERROR gwctl@10.0.2.15 {cmd} < {}",
                key.display(),
                req_file.display()
            ),
        );
        let v: serde_json::Value =
            serde_json::from_str(out.trim()).unwrap_or_else(|e| panic!("{cmd}: {e}: {out}"));
        assert!(ok && v["ok"] == true, "{cmd} failed: {v}");
        v
    };
    let health = ctl("health", serde_json::json!({}));
    let pin = health["tls_spki_sha256"]
        .as_str()
        .unwrap_or_else(|| panic!("no TLS pin in health: {health}"))
        .to_string();

    let wg = |args: &[&str], input: &str| -> String {
        use std::io::Write;
        let mut c = std::process::Command::new("wg")
            .args(args)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        c.stdin.take().unwrap().write_all(input.as_bytes()).unwrap();
        let o = c.wait_with_output().unwrap();
        assert!(o.status.success());
        String::from_utf8(o.stdout).unwrap().trim().to_string()
    };
    let private = wg(&["genkey"], "");
    let public = wg(&["pubkey"], &private);
    let created = ctl(
        "vpn_user_create",
        serde_json::json!({"user": "bob", "public_key": public, "allowed": ["10.0.2.60/32"]}),
    );
    eprintln!("vpn_user_create: {created}");
    let cfg = created["client_config"]
        .as_str()
        .unwrap_or_else(|| panic!("no client_config: {created}"));
    assert!(
        cfg.contains("<CLIENT_PRIVATE_KEY>") && !cfg.contains(&private),
        "{cfg}"
    );
    let address = created["address"].as_str().unwrap().to_string();
    let gateway = created["gateway_address"].as_str().unwrap().to_string();

    // The user's side: gwos connect (knocking with alice's stanza) and wireguard-go.
    let tc = test_config();
    let user = &tc["site"]["spa"]["users"][0];
    let knock = wd.path().join("knock.keys");
    std::fs::write(
        &knock,
        format!(
            "KEY_BASE64: {}\nHMAC_KEY_BASE64: {}\n",
            user["key_base64"].as_str().unwrap(),
            user["hmac_key_base64"].as_str().unwrap()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&knock, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    let gwos = std::env::var_os("GWOS_BIN")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| gwos_qemu_tests::workspace().join("target/release/gwos"));
    let mut kids = Kids(vec![]);
    let connect_log = wd.path().join("connect.log");
    kids.0.push(
        std::process::Command::new("ip")
            .args(["netns", "exec", &site.name])
            .arg(&gwos)
            .args([
                "connect",
                "--server",
                "10.0.2.15:443",
                "--pin",
                &pin,
                "--knock-user",
                "alice",
                "--knock-key-file",
            ])
            .arg(&knock)
            .stdout(std::fs::File::create(&connect_log).unwrap())
            .stderr(std::fs::File::create(wd.path().join("connect.err")).unwrap())
            .spawn()
            .unwrap(),
    );
    // The client claims the whole remote network (AllowedIPs widened on purpose): the
    // gateway's policy, not the client's config, must keep it away from .70.
    let conf: String = cfg
        .replace("<CLIENT_PRIVATE_KEY>", &private)
        .lines()
        .filter(|l| !["Address", "DNS", "MTU"].iter().any(|k| l.starts_with(k)))
        .map(|l| {
            if l.starts_with("AllowedIPs") {
                format!("AllowedIPs = {gateway}/32, 10.0.2.0/24\n")
            } else {
                format!("{l}\n")
            }
        })
        .collect();
    let conf_file = wd.path().join("wg0.conf");
    std::fs::write(&conf_file, conf).unwrap();
    kids.0.push(
        std::process::Command::new("ip")
            .args(["netns", "exec", &site.name, "wireguard-go", "-f", "wg0"])
            .env("WG_I_PREFER_BUGGY_USERSPACE_TO_POLISHED_KMOD", "1")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap(),
    );
    let t = Instant::now();
    while !site
        .exec("ip", &["link", "show", "wg0"])
        .unwrap()
        .status
        .success()
    {
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "wireguard-go never made wg0"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    for script in [
        format!("wg setconf wg0 {}", conf_file.display()),
        format!("ip addr add {address} dev wg0"),
        "ip link set wg0 mtu 1380 up".to_string(),
        format!("ip route add {gateway}/32 dev wg0"),
        "ip route add 10.0.2.60/32 dev wg0".to_string(),
        "ip route add 10.0.2.70/32 dev wg0".to_string(),
    ] {
        let (ok, out) = ns_sh(&site, &script);
        assert!(ok, "{script}: {out}");
    }
    let ping = |dst: &str| ns_sh(&site, &format!("ping -n -c 2 -i 0.3 -W 3 {dst}"));
    let t = Instant::now();
    let mut first = ping(&gateway);
    while !first.0 && t.elapsed() < Duration::from_secs(30) {
        first = ping(&gateway);
    }
    eprintln!(
        "tunnel up (ping {gateway}) after {:.1} s",
        t.elapsed().as_secs_f64()
    );
    assert!(
        first.0,
        "no ping to the gateway's tunnel address:\n{}\nconnect: {}{}\nconsole:\n{}",
        first.1,
        std::fs::read_to_string(&connect_log).unwrap_or_default(),
        std::fs::read_to_string(wd.path().join("connect.err")).unwrap_or_default(),
        q.console_text()
    );
    let (ok, out) = ping("10.0.2.60");
    assert!(ok, "allowed internal host unreachable:\n{out}");
    let (ok, out) = ping("10.0.2.70");
    assert!(
        !ok,
        "internal host outside the user's policy reachable:\n{out}"
    );
    // The same packets pass once the backend widens the policy (update_ccd): the drop was the gateway's.
    ctl(
        "update_ccd",
        serde_json::json!({"user": "bob", "allowed": ["10.0.2.60/32", "10.0.2.70/32"]}),
    );
    let (ok, out) = ping("10.0.2.70");
    assert!(
        ok,
        "10.0.2.70 still unreachable after update_ccd allowed it:\n{out}"
    );
    let status = ctl("vpn_status", serde_json::json!({}));
    assert!(status.to_string().contains("\"bob\""), "{status}");

    // A replay flood (review F2): one knock made by the real fwknop client,
    // sent 1,000 times a second for 30 s from the user's site. The tunnel
    // (tls-front + vpn) keeps carrying pings with no stall, the console gets
    // a bounded summary, and the knocks are counted in the spool.
    let (pings_before, _) = ping_stats(&site, "10.0.2.60", 20);
    let pkt = wd.path().join("knock.spa");
    let fw_home = wd.path().join("fwhome");
    std::fs::create_dir_all(&fw_home).unwrap();
    let (ok, out) = ns_sh(
        &site,
        &format!(
            "HOME={} fwknop --no-rc-file --no-save-args --test -A tcp/443 -a 192.168.77.2 -D 10.0.2.15 -U alice --key-base64-rijndael {} --key-base64-hmac {} --use-hmac --save-packet {}",
            fw_home.display(),
            user["key_base64"].as_str().unwrap(),
            user["hmac_key_base64"].as_str().unwrap(),
            pkt.display()
        ),
    );
    assert!(ok && pkt.exists(), "fwknop --save-packet: {out}");
    let console_before = q.console_text().len();
    let flooder = std::process::Command::new("ip")
        .args(["netns", "exec", &site.name, "python3", "-c"])
        .arg(
            "import socket,sys,time\n\
             p=open(sys.argv[1],'rb').read().strip()\n\
             s=socket.socket(socket.AF_INET,socket.SOCK_DGRAM)\n\
             t0=time.monotonic();n=0\n\
             while True:\n\
             \x20e=time.monotonic()-t0\n\
             \x20if e>=30: break\n\
             \x20while n<e*1000:\n\
             \x20\x20s.sendto(p,('10.0.2.15',62201));n+=1\n\
             \x20time.sleep(0.002)\n\
             print(n)\n",
        )
        .arg(&pkt)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_secs(2));
    let (pings_during, raw) = ping_stats(&site, "10.0.2.60", 50);
    let sent: u64 = String::from_utf8_lossy(&flooder.wait_with_output().unwrap().stdout)
        .trim()
        .parse()
        .unwrap();
    let flood_console = q.console_text()[console_before..].to_string();
    let flood_lines = flood_console.lines().count();
    eprintln!(
        "replay flood: {sent} knocks in 30 s; tunnel ping before {pings_before:?}, during {pings_during:?}; \
         console lines during the flood: {flood_lines}"
    );
    assert!(sent >= 25_000, "the flood sent only {sent} packets");
    assert!(
        pings_during.loss_pct <= 10.0 && pings_during.max_gap_ms < 3000.0,
        "the tunnel stalled during the flood: {pings_during:?}\n{raw}"
    );
    assert!(
        flood_lines <= 60,
        "the console was flooded ({flood_lines} lines in 30 s):\n{flood_console}"
    );
    let logs = ctl(
        "pull_logs",
        serde_json::json!({"service": "spa", "since": 0, "limit": 10000}),
    );
    let mut seen = 0u64;
    for r in logs["records"].as_array().unwrap() {
        let kind = r["kind"].as_str().unwrap_or("");
        if kind == "spa.suppressed" {
            seen += r["suppressed"].as_u64().unwrap_or(0);
        } else if kind == "spa.replay" || kind == "spa.deny" || kind == "spa.permit" {
            seen += 1;
        }
    }
    eprintln!("replay flood: the spool accounts for {seen} of the {sent} knocks");
    assert!(
        seen >= sent / 2,
        "most of the flood never reached the SPA service ({seen} of {sent}): {logs}"
    );

    // DNS stays in the tunnel: a real dnsmasq on the internal host 10.0.2.60 is
    // the site's resolver (config_set dns, applied at once); it resolves a name
    // through the tunnel, while a query to another server the user may reach
    // (10.0.2.70) is dropped by the gateway and counted.
    for (addr, answer) in [("10.0.2.60", "10.0.2.61"), ("10.0.2.70", "10.0.2.71")] {
        kids.0.push(
            std::process::Command::new("ip")
                .args([
                    "netns",
                    "exec",
                    &ns.name,
                    "dnsmasq",
                    "--no-daemon",
                    "--no-resolv",
                    "--no-hosts",
                    "--bind-interfaces",
                ])
                .arg(format!("--listen-address={addr}"))
                .arg(format!("--address=/internal.test/{answer}"))
                .arg(format!(
                    "--pid-file={}/dnsmasq-{addr}.pid",
                    wd.path().display()
                ))
                .stdout(std::process::Stdio::null())
                .stderr(
                    std::fs::File::create(wd.path().join(format!("dnsmasq-{addr}.log"))).unwrap(),
                )
                .spawn()
                .unwrap(),
        );
    }
    let set = ctl("config_set", serde_json::json!({"dns": ["10.0.2.60"]}));
    eprintln!("config_set dns: {set}");
    let query = |server: &str| {
        ns_sh(
            &site,
            &format!(
                "python3 -c 'import socket,sys\nq=bytes.fromhex(\"123401000001000000000000\")+b\"\\x08internal\\x04test\\x00\\x00\\x01\\x00\\x01\"\ns=socket.socket(socket.AF_INET,socket.SOCK_DGRAM);s.settimeout(3);s.sendto(q,(sys.argv[1],53));r=s.recv(512);print(\".\".join(map(str,r[-4:])))' {server}"
            ),
        )
    };
    std::thread::sleep(Duration::from_millis(500));
    let (ok, out) = query("10.0.2.60");
    assert!(
        ok && out.trim() == "10.0.2.61",
        "no answer from the resolver through the tunnel: {out}"
    );
    let (ok, out) = query("10.0.2.70");
    assert!(
        !ok,
        "DNS to a server other than the resolver went through: {out}"
    );
    let status = ctl("vpn_status", serde_json::json!({}));
    assert!(
        status["dns_dropped"].as_u64().unwrap_or(0) >= 1,
        "the drop is not counted: {status}"
    );
    let again = ctl("vpn_user_config", serde_json::json!({"user": "bob"}));
    assert!(
        again.to_string().contains("DNS = 10.0.2.60"),
        "the client config does not push the resolver: {again}"
    );

    ctl("vpn_user_delete", serde_json::json!({"user": "bob"}));
    let (ok, out) = ping("10.0.2.60");
    assert!(!ok, "deleted user's session still carries traffic:\n{out}");
    drop(kids);

    let before = q.console_text().len();
    q.monitor("system_powerdown").unwrap();
    let c = q.wait_exit(Duration::from_secs(60)).unwrap();
    assert!(
        c[before..].contains("gwos: powering off"),
        "{}",
        &c[before..]
    );
}
