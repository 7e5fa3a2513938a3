//! The index of sealed segments leaves memory (spill.rs): after the writer
//! rolls, and at open. Every read answers the same whether a place comes
//! from memory or from the scratch file, before and after a reopen and a
//! scavenge; and the scratch file is nowhere in the log's directory.

use std::sync::Arc;
use std::time::{Duration, Instant};

use ed25519_dalek::SigningKey;
use eventlog::file::sim::SimVfs;
use eventlog::file::{FileLog, FileLogConfig};
use eventlog::{
    DeleteMode, Direction, EventFilter, EventLog, ExpectedVersion, IndexStats, NewEvent, ReadFrom, RecordedEvent,
};

const STREAMS: usize = 7;

fn config() -> FileLogConfig {
    let mut c = FileLogConfig::new(SigningKey::from_bytes(&[3; 32]));
    c.segment_size = 4096;
    c.checkpoint_every_frames = 16;
    c
}

fn name(i: usize) -> String {
    format!("spill-{i}")
}

/// Appends `n` events over the streams (some appends of several events);
/// returns each stream's payloads in order.
async fn write(log: &FileLog, n: usize, written: &mut [Vec<String>]) {
    write_batches(log, n, 3, written).await
}

/// [`write`], appends of 1 to `max_batch` events.
async fn write_batches(log: &FileLog, n: usize, max_batch: usize, written: &mut [Vec<String>]) {
    let mut i = 0;
    while i < n {
        let s = (i * 5 + i / 3) % STREAMS;
        let count = 1 + i % max_batch;
        let payloads: Vec<String> =
            (0..count).map(|k| format!("{s}:{}:{}", written[s].len() + k, "x".repeat(i % 40))).collect();
        let events = payloads.iter().map(|p| NewEvent::new("Written", p.clone().into_bytes())).collect();
        log.append(&name(s), expect(written[s].len()), events)
            .await
            .map(|_| ())
            .unwrap_or_else(|e| panic!("append {i}: {e}"));
        written[s].extend(payloads);
        i += count;
    }
}

fn expect(len: usize) -> ExpectedVersion {
    if len == 0 { ExpectedVersion::NoStream } else { ExpectedVersion::Exact(len as u64 - 1) }
}

async fn wait_spilled(log: &FileLog) -> IndexStats {
    let started = Instant::now();
    loop {
        let stats = log.index_stats().unwrap();
        if stats.spilled_segments == stats.sealed_segments {
            return stats;
        }
        assert!(started.elapsed() < Duration::from_secs(30), "sealed segments not spilled: {stats:?}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn payload(e: &RecordedEvent) -> String {
    String::from_utf8(e.event.payload.to_vec()).unwrap()
}

/// Every stream read forwards and backwards from several places, and `$all`
/// from every position (whole and a page at a time, filtered), against what
/// was written.
async fn check_reads(log: &FileLog, written: &[Vec<String>], hidden: &[usize]) {
    check_reads_every(log, written, hidden, 1).await
}

/// [`check_reads`], `$all` read from every `step`-th position only.
async fn check_reads_every(log: &FileLog, written: &[Vec<String>], hidden: &[usize], step: usize) {
    let all = log.read_all(0, usize::MAX, &EventFilter::all()).await.unwrap().events;
    let visible: usize = (0..STREAMS).filter(|s| !hidden.contains(s)).map(|s| written[s].len()).sum();
    assert_eq!(all.len(), visible, "$all holds every visible event");
    for (k, e) in all.iter().enumerate() {
        if k > 0 {
            assert!(e.position > all[k - 1].position);
        }
        let s: usize = e.stream.strip_prefix("spill-").unwrap().parse().unwrap();
        assert_eq!(payload(e), written[s][e.version as usize], "$all at {}", e.position);
    }
    for (s, want) in written.iter().enumerate() {
        let stream = name(s);
        if hidden.contains(&s) {
            let gone = log.read_stream(&stream, ReadFrom::Start, Direction::Forward, usize::MAX).await;
            assert!(gone.map(|v| v.is_empty()).unwrap_or(true), "{stream} was deleted");
            continue;
        }
        let fwd = log.read_stream(&stream, ReadFrom::Start, Direction::Forward, usize::MAX).await.unwrap();
        assert_eq!(fwd.iter().map(payload).collect::<Vec<_>>(), *want, "{stream} forwards");
        let back = log.read_stream(&stream, ReadFrom::End, Direction::Backward, usize::MAX).await.unwrap();
        assert_eq!(back.iter().rev().map(payload).collect::<Vec<_>>(), *want, "{stream} backwards");
        for v in [0, want.len() / 3, want.len() / 2, want.len() - 1] {
            let page = log.read_stream(&stream, ReadFrom::Version(v as u64), Direction::Forward, 5).await.unwrap();
            let expect: Vec<_> = want[v..(v + 5).min(want.len())].to_vec();
            assert_eq!(page.iter().map(payload).collect::<Vec<_>>(), expect, "{stream} from {v}");
            let page = log.read_stream(&stream, ReadFrom::Version(v as u64), Direction::Backward, 4).await.unwrap();
            let expect: Vec<_> = want[v.saturating_sub(3)..=v].iter().rev().cloned().collect();
            assert_eq!(page.iter().map(payload).collect::<Vec<_>>(), expect, "{stream} back from {v}");
        }
    }
    // `$all` from every position: the first event at or after it.
    let head = log.head();
    for from in (0..head).step_by(step) {
        let page = log.read_all(from, 2, &EventFilter::all()).await.unwrap();
        let expect: Vec<u64> = all.iter().map(|e| e.position).filter(|&p| p >= from).take(2).collect();
        assert_eq!(page.events.iter().map(|e| e.position).collect::<Vec<_>>(), expect, "$all from {from}");
    }
    // A filtered walk, a page at a time.
    let filter = EventFilter::stream_prefix("spill-3");
    let mut from = 0;
    let mut seen = Vec::new();
    loop {
        let page = log.read_all(from, 7, &filter).await.unwrap();
        seen.extend(page.events.iter().map(payload));
        if page.events.is_empty() || page.next_position >= head {
            break;
        }
        from = page.next_position;
    }
    let expect: Vec<String> = if hidden.contains(&3) { Vec::new() } else { written[3].clone() };
    assert_eq!(seen, expect, "filtered walk");
}

#[tokio::test]
async fn sealed_segments_are_read_from_the_scratch_file_before_and_after_a_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("log");
    let mut written = vec![Vec::new(); STREAMS];
    let log = FileLog::open(&path, config()).unwrap();
    write(&log, 1500, &mut written).await;
    let stats = wait_spilled(&log).await;
    assert!(stats.segments > 20, "{stats:?}");
    assert!(stats.frames_in_memory * 10 < stats.frames, "most frames left memory: {stats:?}");
    assert!(stats.versions_in_memory * 10 < 1500, "most versions left memory: {stats:?}");
    assert!(stats.scratch_bytes >= 16 * 1500, "{stats:?}");
    check_reads(&log, &written, &[]).await;
    // The scratch file has no name in the log's directory.
    for entry in walk(&path) {
        assert!(!entry.contains("scratch"), "{entry} is in the log's directory");
    }
    // An idempotent retry of an event in a spilled segment finds it there.
    let first = log.read_stream(&name(0), ReadFrom::Start, Direction::Forward, 1).await.unwrap().remove(0);
    let retry = NewEvent { id: first.event.id, ..NewEvent::new("Written", first.event.payload.to_vec()) };
    let head = log.head();
    let again = log.append(&name(0), ExpectedVersion::Any, vec![retry]).await.unwrap();
    assert_eq!((again.first_position, log.head()), (first.position, head), "the retry is answered, not written");
    drop(log);

    // At open every sealed segment is spilled as its scan ends.
    let log = FileLog::open(&path, config()).unwrap();
    let stats = log.index_stats().unwrap();
    assert_eq!(stats.spilled_segments, stats.sealed_segments, "spilled at open: {stats:?}");
    assert!(stats.sealed_segments + 2 >= stats.segments, "{stats:?}");
    check_reads(&log, &written, &[]).await;
    // Writing on: new segments are spilled after each roll.
    write(&log, 400, &mut written).await;
    wait_spilled(&log).await;
    check_reads(&log, &written, &[]).await;

    // A scavenge rewrites spilled segments; their records are written again.
    log.delete_stream(&name(2), ExpectedVersion::Any, DeleteMode::Soft).await.unwrap();
    let report = log.scavenge().await.unwrap();
    assert!(report.segments_rewritten > 5, "{report:?}");
    wait_spilled(&log).await;
    check_reads(&log, &written, &[2]).await;
    drop(log);
    let log = FileLog::open(&path, config()).unwrap();
    check_reads(&log, &written, &[2]).await;
}

fn walk(dir: &std::path::Path) -> Vec<String> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let e = e.unwrap();
        if e.file_type().unwrap().is_dir() {
            out.extend(walk(&e.path()));
        } else {
            out.push(e.path().display().to_string());
        }
    }
    out
}

/// A spill that cannot be written (the scratch file's filesystem is full)
/// leaves the index in memory: reads stay right, and once space is back the
/// next roll spills every segment that waited.
#[tokio::test]
async fn a_spill_that_cannot_be_written_leaves_the_index_in_memory() {
    let vfs = SimVfs::new();
    let mut c = config();
    c.vfs = Arc::new(vfs.clone());
    let log = FileLog::open("/s/log", c.clone()).unwrap();
    let mut written = vec![Vec::new(); STREAMS];
    write(&log, 300, &mut written).await;
    let before = wait_spilled(&log).await;
    vfs.set_scratch_full(true);
    write(&log, 400, &mut written).await;
    let stats = log.index_stats().unwrap();
    assert!(stats.segments > before.segments + 5, "the log rolled on: {stats:?}");
    assert_eq!(stats.spilled_segments, before.spilled_segments, "nothing could be spilled: {stats:?}");
    assert!(stats.frames_in_memory > before.frames_in_memory, "{stats:?}");
    check_reads(&log, &written, &[]).await;
    vfs.set_scratch_full(false);
    write(&log, 100, &mut written).await;
    let after = wait_spilled(&log).await;
    assert!(after.spilled_segments > stats.spilled_segments, "{after:?}");
    check_reads(&log, &written, &[]).await;
}

/// A segment whose index is larger than a spill's piece (16 Ki records)
/// spills in pieces while appends go on; a spill that fails after its
/// first piece gives that scratch space back, leaves the segment in memory,
/// and is done whole once space is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_segment_spills_in_pieces_and_a_spill_failing_midway_is_undone() {
    let vfs = SimVfs::new();
    let mut c = config();
    c.segment_size = 2 << 20;
    c.checkpoint_every_frames = 4096;
    c.vfs = Arc::new(vfs.clone());
    let log = FileLog::open("/s/log", c.clone()).unwrap();
    let mut written = vec![Vec::new(); STREAMS];
    write_batches(&log, 90_000, 41, &mut written).await;
    let before = wait_spilled(&log).await;
    assert!(before.spilled_segments >= 2, "{before:?}");
    let records = before.scratch_bytes / 16 / before.spilled_segments as u64;
    assert!(records > 16 * 1024, "each segment's index takes several pieces ({records} records): {before:?}");

    // The next spill writes its first piece, then finds the disk full.
    vfs.set_scratch_writes_left(1);
    let segments = before.segments;
    while log.index_stats().unwrap().segments < segments + 2 {
        write_batches(&log, 2_000, 41, &mut written).await;
    }
    let started = Instant::now();
    while vfs.scratch_write_failures() == 0 || log.index_stats().unwrap().scratch_bytes != before.scratch_bytes {
        assert!(started.elapsed() < Duration::from_secs(30), "no failed spill undone: {:?}", log.index_stats());
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let failed = log.index_stats().unwrap();
    assert_eq!(failed.spilled_segments, before.spilled_segments, "{failed:?}");
    assert!(failed.sealed_segments > before.sealed_segments, "{failed:?}");
    check_reads_every(&log, &written, &[], 97).await;

    vfs.set_scratch_full(false);
    write_batches(&log, 40_000, 41, &mut written).await;
    let after = wait_spilled(&log).await;
    assert!(after.spilled_segments > failed.sealed_segments, "{after:?}");
    check_reads_every(&log, &written, &[], 97).await;
    drop(log);
    let log = FileLog::open("/s/log", c).unwrap();
    assert_eq!(wait_spilled(&log).await.spilled_segments, after.spilled_segments);
    check_reads_every(&log, &written, &[], 97).await;
}
