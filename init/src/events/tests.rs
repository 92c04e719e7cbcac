use super::*;
use std::io::{BufRead, BufReader};
use std::process::Command;

#[test]
fn summary_limits_per_kind_and_reports_suppressed_counts() {
    let mut s = Summary::default();
    let t = Instant::now();
    let shown = (0..100).filter(|_| s.allow("spa", "spa.replay", t)).count();
    assert_eq!(shown, PER_KIND_BURST as usize);
    assert!(
        s.allow("spa", "spa.permit", t),
        "another kind has its own budget"
    );
    assert_eq!(
        s.report(t + Duration::from_secs(1)),
        None,
        "period not over"
    );
    let r = s.report(t + SUMMARY_EVERY).unwrap();
    assert!(r.contains("spa/spa.replay 97"), "{r}");
    assert!(!r.contains("spa.permit"), "{r}");
    assert!(
        s.allow("spa", "spa.replay", t + SUMMARY_EVERY),
        "budget renewed"
    );
    assert_eq!(s.report(t + SUMMARY_EVERY * 2), None, "nothing suppressed");
}

#[test]
fn summary_has_a_global_cap_per_second() {
    let mut s = Summary::default();
    let t = Instant::now();
    let shown = (0..100)
        .filter(|i| s.allow(&format!("svc{i}"), "k", t))
        .count();
    assert_eq!(shown, CONSOLE_PER_SEC as usize);
    assert!(s.allow("svc99", "k", t + Duration::from_secs(1)));
}

#[test]
fn queue_is_bounded_and_counts_drops() {
    let mut q = Queue::default();
    let line = vec![b'x'; 1024];
    let mut pushed = 0;
    for _ in 0..(QUEUE_BYTES / 1024 + 10) {
        pushed += q.push(line.clone()) as usize;
    }
    assert_eq!(pushed, QUEUE_BYTES / 1024);
    assert_eq!(q.dropped, 10);
    let mut sink = Vec::new();
    q.flush_to(&mut sink).unwrap();
    assert_eq!(sink.len(), QUEUE_BYTES);
    assert!(q.is_empty());
}

fn wait_exit(c: &mut std::process::Child, limit: Duration) -> bool {
    let t = Instant::now();
    while t.elapsed() < limit {
        if c.try_wait().unwrap().is_some() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = c.kill();
    false
}

/// F2: logship is not there at all (nobody reads the ingest socket); a
/// service that writes 200 000 event lines (~7 MB, more than the queue)
/// still finishes at once: PID 1 drains its pipe and drops, counted.
#[test]
fn f2_service_output_never_blocks_when_logship_is_down() {
    let dir = tempfile::tempdir().unwrap();
    let ev = Events::new(dir.path().to_owned(), ConsoleTarget::Stderr);
    let (out, err) = ev.pipes("flood").unwrap();
    let mut c = Command::new("sh")
        .arg("-c")
        .arg(r#"i=0; while [ $i -lt 200000 ]; do echo "{\"kind\":\"flood.x\",\"i\":$i}"; i=$((i+1)); done"#)
        .stdout(out)
        .stderr(err)
        .spawn()
        .unwrap();
    assert!(
        wait_exit(&mut c, Duration::from_secs(60)),
        "the service blocked writing its events"
    );
}

#[test]
fn lines_reach_logship_tagged_with_the_service_and_stderr_is_wrapped() {
    let dir = tempfile::tempdir().unwrap();
    let listener =
        std::os::unix::net::UnixListener::bind(dir.path().join("logship-ingest.sock")).unwrap();
    let ev = Events::new(dir.path().to_owned(), ConsoleTarget::Stderr);
    let (out, err) = ev.pipes("spa").unwrap();
    let mut c = Command::new("sh")
        .arg("-c")
        .arg(r#"echo '{"time":"t","service":"vpn","kind":"spa.permit"}'; echo 'disk on fire' >&2"#)
        .stdout(out)
        .stderr(err)
        .spawn()
        .unwrap();
    assert!(wait_exit(&mut c, Duration::from_secs(10)));
    let (s, _) = listener.accept().unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut lines: Vec<String> = BufReader::new(s)
        .lines()
        .take(2)
        .map(|l| l.unwrap())
        .collect();
    lines.sort_by_key(|l| l.contains("spa.stderr"));
    assert_eq!(
        lines[0], r#"spa {"time":"t","service":"vpn","kind":"spa.permit"}"#,
        "the prefix is PID 1's name for the pipe, whatever the event says"
    );
    let v: serde_json::Value =
        serde_json::from_str(lines[1].strip_prefix("spa ").unwrap()).unwrap();
    assert_eq!(v["kind"], "spa.stderr");
    assert_eq!(v["message"], "disk on fire");
}
