//! SIEM shipping from a booted gateway (issue 13): PID 1 and every service
//! hand their events to logship, which ships them as RFC 5424 over TLS
//! (RFC 5425) to a real rsyslogd (imtcp + gtls) on the test's backend host,
//! and keeps what it could not send in its spool through an outage. Inside
//! the guest logship runs under its sandbox (uid, seccomp, egress rules), so
//! this catches what the host tests of logship cannot. Needs root,
//! rsyslogd, openssl, ssh, `make image`.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use gwos_qemu_tests::{
    backend_key, copy_image, direct_boot, need_tool, out_dir, test_image, NetNs, Qemu,
};

const BOOT: Duration = Duration::from_secs(300);
const PORT: u16 = 6514;

fn openssl(dir: &Path, args: &str) {
    let st = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "cd {} && openssl {args} 2>/dev/null",
            dir.display()
        ))
        .status()
        .unwrap();
    assert!(st.success(), "openssl {args} failed");
}

/// A CA and a server certificate for `siem.test`.
fn pki(dir: &Path) -> String {
    openssl(dir, "req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout ca.key -out ca.pem -days 2 -subj /CN=test-ca");
    openssl(dir, "req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout srv.key -out srv.csr -subj /CN=siem.test");
    std::fs::write(dir.join("ext"), "subjectAltName=DNS:siem.test\n").unwrap();
    openssl(dir, "x509 -req -in srv.csr -CA ca.pem -CAkey ca.key -CAcreateserial -out srv.pem -days 2 -extfile ext");
    std::fs::read_to_string(dir.join("ca.pem")).unwrap()
}

/// rsyslogd, killed when dropped (also when an assertion fails).
struct Rsyslogd(Child);

impl Drop for Rsyslogd {
    fn drop(&mut self) {
        // SIGTERM, so rsyslogd flushes its file as it stops.
        let _ = Command::new("kill").arg(self.0.id().to_string()).status();
        let _ = self.0.wait();
    }
}

/// rsyslogd in the namespace, listening with TLS on 10.0.2.2:PORT, writing
/// every raw message to `siem.log`.
fn rsyslogd(ns: &NetNs, dir: &Path) -> Rsyslogd {
    let d = dir.display();
    std::fs::create_dir_all(dir.join("work")).unwrap();
    std::fs::write(
        dir.join("rs.conf"),
        format!(
            "global(workDirectory=\"{d}/work\" DefaultNetstreamDriver=\"gtls\" DefaultNetstreamDriverCAFile=\"{d}/ca.pem\"\n\
             DefaultNetstreamDriverCertFile=\"{d}/srv.pem\" DefaultNetstreamDriverKeyFile=\"{d}/srv.key\")\n\
             module(load=\"imtcp\" StreamDriver.Name=\"gtls\" StreamDriver.Mode=\"1\" StreamDriver.AuthMode=\"anon\")\n\
             input(type=\"imtcp\" port=\"{PORT}\" address=\"10.0.2.2\")\n\
             template(name=\"raw\" type=\"string\" string=\"%rawmsg%\\n\")\n\
             action(type=\"omfile\" file=\"{d}/siem.log\" template=\"raw\")\n"
        ),
    )
    .unwrap();
    let _ = std::fs::remove_file(dir.join("rs.pid"));
    let c = Command::new("ip")
        .args(["netns", "exec", &ns.name, "rsyslogd", "-n", "-f"])
        .arg(dir.join("rs.conf"))
        .arg("-i")
        .arg(dir.join("rs.pid"))
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.join("rs.err")).unwrap())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_secs(2));
    Rsyslogd(c)
}

/// How many distinct `<prefix><n>` trace ids the SIEM has received.
fn received(dir: &Path, prefix: &str) -> usize {
    let log = std::fs::read_to_string(dir.join("siem.log")).unwrap_or_default();
    let mut ids: Vec<&str> = log
        .match_indices(prefix)
        .map(|(i, _)| {
            let rest = &log[i..];
            &rest[..rest.find('"').unwrap_or(rest.len())]
        })
        .collect();
    ids.sort_unstable();
    ids.dedup();
    ids.len()
}

fn wait_received(dir: &Path, prefix: &str, n: usize, timeout: Duration) -> usize {
    let t = Instant::now();
    loop {
        let got = received(dir, prefix);
        if got >= n || t.elapsed() > timeout {
            return got;
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

fn health_calls(ns: &NetNs, key: &Path, dir: &Path, prefix: &str, n: usize) {
    for i in 1..=n {
        let body = dir.join("body.json");
        std::fs::write(&body, format!("{{\"trace_id\":\"{prefix}{i}\"}}")).unwrap();
        let (ok, out) = ns.control_file(key, "10.0.2.100", "health", &body);
        assert!(ok, "health {prefix}{i}: {out}");
    }
}

/// What both tests start from: the tools checked, a work dir with a CA and
/// the SIEM's certificate, the backend key, a disk copy, the namespace, and
/// the `config_set` body that points logship at 10.0.2.2:PORT.
struct Setup {
    img: std::path::PathBuf,
    dir: std::path::PathBuf,
    key: std::path::PathBuf,
    disk: std::path::PathBuf,
    ns: std::sync::Arc<NetNs>,
    siem_body: std::path::PathBuf,
    _wd: tempfile::TempDir,
}

fn setup(tag: &str) -> Setup {
    for t in ["rsyslogd", "openssl", "ssh"] {
        need_tool(t);
    }
    let img = test_image().unwrap();
    let wd = tempfile::Builder::new()
        .prefix(&format!("gwos-{tag}"))
        .tempdir_in(out_dir())
        .unwrap();
    let dir = wd.path().to_path_buf();
    let ca = pki(&dir);
    let key = backend_key(&dir).unwrap();
    let disk = copy_image(&img.join("gwos.img"), &dir).unwrap();
    let ns = std::sync::Arc::new(NetNs::new(tag, &["10.0.2.2/24", "10.0.2.100/24"]).unwrap());
    let siem_body = dir.join("siem.json");
    std::fs::write(
        &siem_body,
        serde_json::json!({
            "siem_endpoint": format!("10.0.2.2:{PORT}"),
            "siem_ca_pem": ca,
            "siem_server_name": "siem.test",
        })
        .to_string(),
    )
    .unwrap();
    Setup {
        img,
        dir,
        key,
        disk,
        ns,
        siem_body,
        _wd: wd,
    }
}

/// Events made while the SIEM is up arrive as RFC 5424 with a sequenceId;
/// the 20 made while it is down all arrive once it is back.
#[test]
fn logship_ships_rfc5424_over_tls_and_keeps_events_through_an_outage() {
    let su = setup("logship");
    let (dir, key, ns) = (su.dir.as_path(), &su.key, &*su.ns);
    let rs = rsyslogd(ns, dir);
    let mut q = Qemu::start(&su.disk, direct_boot(&su.img, "").unwrap(), Some(ns)).unwrap();
    q.wait_for("gwos: ready slot=A", BOOT).unwrap();
    let (ok, out) = ns.control_file(key, "10.0.2.100", "config_set", &su.siem_body);
    assert!(ok && out.contains("\"ok\":true"), "config_set siem: {out}");

    health_calls(ns, key, dir, "ls-up-", 5);
    let got = wait_received(dir, "ls-up-", 5, Duration::from_secs(60));
    let (_, health) = ns.control(key, "10.0.2.100", "health");
    assert_eq!(
        got, 5,
        "events reached the SIEM while it was up; health: {health}"
    );
    let log = std::fs::read_to_string(dir.join("siem.log")).unwrap();
    let rec = log.lines().find(|l| l.contains("ls-up-1\"")).unwrap();
    assert!(
        rec.starts_with('<')
            && rec
                .split_once('>')
                .is_some_and(|(_, r)| r.starts_with("1 ")),
        "not RFC 5424: {rec}"
    );
    assert!(
        rec.contains("[meta ") && rec.contains("sequenceId=\""),
        "no sequenceId: {rec}"
    );

    drop(rs);
    health_calls(ns, key, dir, "ls-down-", 20);
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(received(dir, "ls-down-",), 0, "the SIEM was down");
    let rs = rsyslogd(ns, dir);
    let got = wait_received(dir, "ls-down-", 20, Duration::from_secs(120));
    let (_, health) = ns.control(key, "10.0.2.100", "health");
    assert_eq!(
        got, 20,
        "events made during the outage lost; health: {health}"
    );
    drop(rs);

    q.power_off().unwrap();
}

/// The `sequenceId`s the SIEM has received (with repeats: delivery is at least once).
fn received_seqs(dir: &Path) -> Vec<u64> {
    let log = std::fs::read_to_string(dir.join("siem.log")).unwrap_or_default();
    log.lines()
        .filter_map(|l| {
            let rest = &l[l.find("sequenceId=\"")? + 12..];
            rest[..rest.find('"')?].parse().ok()
        })
        .collect()
}

/// Power cuts while events flow: 10 times, QEMU is killed a few seconds
/// into a boot while a backend makes audited control calls (every other
/// time with the SIEM down, so the spool holds a backlog at the cut). Every
/// sequence number logship reported as committed (`health`'s
/// `siem.committed_seq`) before any cut reaches the SIEM in the end.
#[test]
fn logship_power_cuts_lose_no_committed_event() {
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    use std::sync::Arc;
    let su = setup("logcut");
    let (img, dir, key, d, body, ns) = (
        su.img.clone(),
        su.dir.clone(),
        su.key.clone(),
        su.disk.clone(),
        su.siem_body.clone(),
        su.ns.clone(),
    );
    let mut rs = Some(rsyslogd(&ns, &dir));
    let committed = Arc::new(AtomicU64::new(0));
    let answered = Arc::new(AtomicU64::new(0));
    for cut in 1..=10u32 {
        let mut q = Qemu::start(&d, direct_boot(&img, "").unwrap(), Some(&ns)).unwrap();
        q.wait_for("gwos: ready slot=A", BOOT).unwrap();
        if cut == 1 {
            let (ok, out) = ns.control_file(&key, "10.0.2.100", "config_set", &body);
            assert!(ok && out.contains("\"ok\":true"), "config_set siem: {out}");
        }
        // The SIEM is down during even cycles (and the boot after them).
        if cut % 2 == 0 {
            rs = None;
        } else if rs.is_none() {
            rs = Some(rsyslogd(&ns, &dir));
        }
        // The backend's calls run on until the cut. The call in flight at the
        // cut hangs until its ssh times out, so the thread is not waited
        // for: it stops at its next turn, and no answer can come from a
        // machine that is off.
        let stop = Arc::new(AtomicBool::new(false));
        {
            let (ns, key, dir, stop, committed, answered) = (
                ns.clone(),
                key.clone(),
                dir.clone(),
                stop.clone(),
                committed.clone(),
                answered.clone(),
            );
            std::thread::spawn(move || {
                for i in 0.. {
                    if stop.load(Ordering::SeqCst) {
                        break;
                    }
                    let b = dir.join(format!("call-{cut}-{i}.json"));
                    std::fs::write(&b, format!("{{\"trace_id\":\"pc-{cut}-{i}\"}}")).unwrap();
                    let (ok, out) = ns.control_file(&key, "10.0.2.100", "health", &b);
                    let seq = out
                        .lines()
                        .find_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
                        .and_then(|v| v["siem"]["committed_seq"].as_u64());
                    if let (true, Some(s), false) = (ok, seq, stop.load(Ordering::SeqCst)) {
                        committed.fetch_max(s, Ordering::SeqCst);
                        answered.fetch_add(1, Ordering::SeqCst);
                    }
                }
            });
        }
        // A cut 3..=9 s into the flow, a different delay each cycle.
        std::thread::sleep(Duration::from_secs(3 + u64::from(cut * 5 % 7)));
        stop.store(true, Ordering::SeqCst);
        drop(q); // the plug
        eprintln!(
            "cut {cut}: committed_seq seen before the cut {}, SIEM {}",
            committed.load(Ordering::SeqCst),
            if rs.is_some() { "up" } else { "down" }
        );
    }
    if rs.is_none() {
        rs = Some(rsyslogd(&ns, &dir));
    }
    // The last boot drains the spool.
    let mut q = Qemu::start(&d, direct_boot(&img, "").unwrap(), Some(&ns)).unwrap();
    q.wait_for("gwos: ready slot=A", BOOT).unwrap();
    let want = committed.load(Ordering::SeqCst);
    assert!(want > 0, "no committed_seq seen at all");
    let t = Instant::now();
    let missing = loop {
        let got: std::collections::BTreeSet<u64> = received_seqs(&dir).into_iter().collect();
        let missing: Vec<u64> = (1..=want).filter(|s| !got.contains(s)).collect();
        if missing.is_empty() || t.elapsed() > Duration::from_secs(180) {
            break missing;
        }
        std::thread::sleep(Duration::from_secs(1));
    };
    let all = received_seqs(&dir);
    let distinct: std::collections::BTreeSet<u64> = all.iter().copied().collect();
    let (_, health) = ns.control(&key, "10.0.2.100", "health");
    eprintln!(
        "logship power cuts: 10 cuts, {} calls answered before cuts, committed_seq \
         reached {want}; SIEM received {} distinct sequence numbers ({} messages, {} repeats), \
         missing of 1..={want}: {}",
        answered.load(Ordering::SeqCst),
        distinct.len(),
        all.len(),
        all.len() - distinct.len(),
        missing.len()
    );
    assert!(
        missing.is_empty(),
        "committed events never reached the SIEM: {missing:?}; health: {health}"
    );
    drop(rs);
    q.power_off().unwrap();
}
