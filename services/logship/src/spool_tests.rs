//! Spool unit tests: commit, reopen, torn tails, the bound and its gap record.

use std::fs;
use std::io::Write;
use std::path::Path;

use crate::record::Kind;
use crate::spool::{self, Filter, Reader, Writer};

const BOOT: [u8; 16] = [0xab; 16];

fn ev(i: u64) -> Vec<u8> {
    format!(r#"{{"time":"t","service":"spa","kind":"spa.deny","i":{i},"trace_id":"t{i}"}}"#)
        .into_bytes()
}

fn segs(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut v: Vec<_> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "seg"))
        .collect();
    v.sort();
    v
}

fn read_all(shared: &std::sync::Arc<spool::Shared>, from: u64) -> Vec<crate::record::Record> {
    let mut r = Reader::new(shared.clone());
    r.seek(from).unwrap();
    let mut v = Vec::new();
    while let Some((_, rec)) = r.next_record().unwrap() {
        v.push(rec);
    }
    v
}

#[test]
fn records_are_invisible_until_committed_and_survive_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let (mut w, shared) = Writer::open(dir.path(), 1 << 20, BOOT, 0).unwrap();
    for i in 1..=10 {
        assert_eq!(w.append("spa", &ev(i), 1000).unwrap(), i);
    }
    assert!(
        read_all(&shared, 1).is_empty(),
        "uncommitted records visible"
    );
    w.commit().unwrap();
    let got = read_all(&shared, 1);
    assert_eq!(got.len(), 10);
    assert_eq!(got[9].seq, 10);
    assert_eq!(got[0].boot_id, BOOT);
    drop(w);
    let (mut w, shared) = Writer::open(dir.path(), 1 << 20, [1; 16], 4).unwrap();
    assert_eq!(shared.lock().committed, 10);
    assert_eq!(shared.lock().confirmed, 4);
    assert_eq!(w.append("spa", &ev(11), 1000).unwrap(), 11, "seq continues");
    w.commit().unwrap();
    let got = read_all(&shared, 5);
    assert_eq!(
        got.iter().map(|r| r.seq).collect::<Vec<_>>(),
        (5..=11).collect::<Vec<_>>()
    );
}

#[test]
fn commit_is_due_after_256_records_or_100_ms() {
    let dir = tempfile::tempdir().unwrap();
    let (mut w, _s) = Writer::open(dir.path(), 1 << 20, BOOT, 0).unwrap();
    let t = std::time::Instant::now();
    assert!(!w.commit_due(t));
    for i in 0..255 {
        w.append("spa", &ev(i), 0).unwrap();
    }
    assert!(!w.commit_due(t));
    w.append("spa", &ev(256), 0).unwrap();
    assert!(w.commit_due(t));
    w.commit().unwrap();
    w.append("spa", &ev(1), 0).unwrap();
    assert!(!w.commit_due(std::time::Instant::now()));
    assert!(w.commit_due(std::time::Instant::now() + spool::COMMIT_AFTER));
}

/// A power cut in the middle of a group commit: every prefix of the last
/// batch's bytes, and garbage after it, is cut back to the last whole record.
#[test]
fn torn_tail_is_truncated_at_every_cut_point() {
    let dir = tempfile::tempdir().unwrap();
    let (mut w, _s) = Writer::open(dir.path(), 1 << 20, BOOT, 0).unwrap();
    for i in 1..=3 {
        w.append("spa", &ev(i), 0).unwrap();
    }
    w.commit().unwrap();
    drop(w);
    let seg = segs(dir.path()).remove(0);
    let good = fs::read(&seg).unwrap();
    // the next record as it would have been written
    let mut next = Vec::new();
    crate::record::Record {
        seq: 4,
        time_ms: 0,
        boot_id: BOOT,
        kind: Kind::Event,
        service: "spa".into(),
        payload: ev(4),
    }
    .encode_into(&mut next);
    for cut in (1..next.len()).step_by(7).chain([next.len() - 1]) {
        fs::write(&seg, [&good[..], &next[..cut]].concat()).unwrap();
        let (w, shared) = Writer::open(dir.path(), 1 << 20, BOOT, 0).unwrap();
        assert_eq!(
            fs::metadata(&seg).unwrap().len(),
            good.len() as u64,
            "cut {cut}"
        );
        assert_eq!(shared.lock().torn_bytes, cut as u64);
        assert_eq!(shared.lock().committed, 3);
        assert_eq!(w.next_seq(), 4);
        drop(w);
    }
    // garbage (a zero-filled block after a crash) is cut too
    fs::write(&seg, [&good[..], &[0u8; 4096][..]].concat()).unwrap();
    let (_w, shared) = Writer::open(dir.path(), 1 << 20, BOOT, 0).unwrap();
    assert_eq!(shared.lock().torn_bytes, 4096);
    assert_eq!(read_all(&shared, 1).len(), 3);
}

#[test]
fn torn_record_with_whole_records_after_it_is_still_the_end() {
    let dir = tempfile::tempdir().unwrap();
    let (mut w, _s) = Writer::open(dir.path(), 1 << 20, BOOT, 0).unwrap();
    for i in 1..=5 {
        w.append("spa", &ev(i), 0).unwrap();
    }
    w.commit().unwrap();
    drop(w);
    let seg = segs(dir.path()).remove(0);
    let mut b = fs::read(&seg).unwrap();
    let one = b.len() / 5;
    b[2 * one + 20] ^= 0xff; // record 3 damaged, 4 and 5 intact
    fs::write(&seg, &b).unwrap();
    let (_w, shared) = Writer::open(dir.path(), 1 << 20, BOOT, 0).unwrap();
    assert_eq!(
        shared.lock().committed,
        2,
        "records after a torn one are never trusted"
    );
    assert_eq!(read_all(&shared, 1).len(), 2);
}

#[test]
fn full_spool_drops_oldest_and_writes_a_gap_record() {
    let dir = tempfile::tempdir().unwrap();
    let max = 8 * (64 << 10); // 8 segments of 64 KiB
    let (mut w, shared) = Writer::open(dir.path(), max, BOOT, 0).unwrap();
    let n = 8000u64; // ~120 bytes each: ~1 MB, twice the bound
    for i in 1..=n {
        w.append("spa", &ev(i), i as i64).unwrap();
        if w.commit_due(std::time::Instant::now()) {
            w.commit().unwrap();
        }
    }
    w.commit().unwrap();
    let st_bytes = shared.lock().bytes();
    assert!(st_bytes <= max, "spool {st_bytes} > bound {max}");
    let on_disk: u64 = segs(dir.path())
        .iter()
        .map(|p| fs::metadata(p).unwrap().len())
        .sum();
    assert!(on_disk <= max, "{on_disk}");
    let recs = read_all(&shared, 1);
    let gaps: Vec<_> = recs.iter().filter(|r| r.kind == Kind::Gap).collect();
    assert!(!gaps.is_empty());
    // gaps and surviving events account for every sequence number
    let mut covered = std::collections::BTreeSet::new();
    let dropped_total: u64 = shared.lock().dropped;
    for g in &gaps {
        let v: serde_json::Value = serde_json::from_slice(&g.payload).unwrap();
        assert_eq!(v["kind"], "logship.gap");
        let (a, b) = (
            v["first_seq"].as_u64().unwrap(),
            v["last_seq"].as_u64().unwrap(),
        );
        assert_eq!(v["dropped"].as_u64().unwrap(), b - a + 1);
        assert!(v["reason"]
            .as_str()
            .unwrap()
            .contains(&format!("events dropped, seq {a}..{b}")));
        covered.extend(a..=b);
    }
    assert_eq!(covered.len() as u64, dropped_total);
    covered.extend(recs.iter().map(|r| r.seq));
    let last = recs.last().unwrap().seq;
    assert_eq!(
        covered,
        (1..=last).collect(),
        "a sequence number is unaccounted for"
    );
}

#[test]
fn confirmed_records_are_dropped_without_a_gap() {
    let dir = tempfile::tempdir().unwrap();
    let max = 8 * (64 << 10);
    let (mut w, shared) = Writer::open(dir.path(), max, BOOT, 0).unwrap();
    for i in 1..=8000u64 {
        w.append("spa", &ev(i), 0).unwrap();
        if w.commit_due(std::time::Instant::now()) {
            w.commit().unwrap();
            let mut st = shared.lock();
            st.confirmed = st.committed; // shipped as fast as written
        }
    }
    w.commit().unwrap();
    assert_eq!(shared.lock().dropped, 0);
    assert!(read_all(&shared, 1).iter().all(|r| r.kind == Kind::Event));
}

#[test]
fn query_filters_by_time_service_kind_and_trace_id() {
    let dir = tempfile::tempdir().unwrap();
    let (mut w, shared) = Writer::open(dir.path(), 1 << 20, BOOT, 0).unwrap();
    for i in 1..=20u64 {
        let svc = if i % 2 == 0 { "spa" } else { "control" };
        w.append(svc, &ev(i), i as i64 * 1000).unwrap();
    }
    w.commit().unwrap();
    let all = Filter {
        since_ms: 0,
        until_ms: i64::MAX,
        ..Default::default()
    };
    assert_eq!(
        spool::query(&shared, &all, 100, 1 << 20)
            .unwrap()
            .records
            .len(),
        20
    );
    let f = Filter {
        since_ms: 5000,
        until_ms: 11000,
        service: Some("spa".into()),
        ..all.clone()
    };
    let got = spool::query(&shared, &f, 100, 1 << 20).unwrap();
    let is: Vec<_> = got
        .records
        .iter()
        .map(|v| v["i"].as_u64().unwrap())
        .collect();
    assert_eq!(is, vec![6, 8, 10]);
    assert_eq!(got.records[0]["seq"], 6);
    let f = Filter {
        trace_id: Some("t7".into()),
        ..all.clone()
    };
    let got = spool::query(&shared, &f, 100, 1 << 20).unwrap();
    assert_eq!(got.records.len(), 1);
    assert_eq!(got.records[0]["service"], "control");
    let f = Filter {
        kind: Some("spa.permit".into()),
        ..all.clone()
    };
    assert!(spool::query(&shared, &f, 100, 1 << 20)
        .unwrap()
        .records
        .is_empty());
    let got = spool::query(&shared, &all, 3, 1 << 20).unwrap();
    assert!(got.truncated);
    assert_eq!(
        got.records
            .iter()
            .map(|v| v["i"].as_u64().unwrap())
            .collect::<Vec<_>>(),
        vec![18, 19, 20]
    );
}

#[test]
fn reader_returns_to_a_saved_position() {
    let dir = tempfile::tempdir().unwrap();
    let (mut w, shared) = Writer::open(dir.path(), 1 << 20, BOOT, 0).unwrap();
    for i in 1..=50 {
        w.append("spa", &ev(i), 0).unwrap();
    }
    w.commit().unwrap();
    let mut r = Reader::new(shared.clone());
    r.seek(1).unwrap();
    let mut pos = None;
    for _ in 0..30 {
        let (p, rec) = r.next_record().unwrap().unwrap();
        if rec.seq == 17 {
            pos = Some(p);
        }
    }
    r.seek_pos(pos.unwrap()).unwrap();
    assert_eq!(r.next_record().unwrap().unwrap().1.seq, 17);
    let mut f = fs::OpenOptions::new()
        .append(true)
        .open(segs(dir.path()).remove(0))
        .unwrap();
    f.write_all(b"partial batch being written").unwrap();
    let mut n = 17;
    while let Some((_, rec)) = r.next_record().unwrap() {
        n += 1;
        assert_eq!(rec.seq, n);
    }
    assert_eq!(n, 50, "bytes beyond the committed end are never read");
}
