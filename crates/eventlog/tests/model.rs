//! Property test: the file backend (with reopens and scavenges thrown in)
//! behaves exactly like the in-memory backend, the simplest model of the
//! contract, for any sequence of operations.

use std::sync::Arc;

use ed25519_dalek::SigningKey;
use eventlog::file::sim::SimVfs;
use eventlog::file::{FileLog, FileLogConfig};
use eventlog::mem::MemLog;
use eventlog::{
    DeleteMode, Direction, EventFilter, EventLog, ExpectedVersion, LogError, ManualClock, NewEvent, ReadFrom,
    StreamAppend, StreamMetadata,
};
use proptest::prelude::*;

const STREAMS: [&str; 4] = ["a", "b", "c-1", "c-2"];

#[derive(Debug, Clone)]
enum Op {
    Append { stream: usize, expected: u8, version: u64, events: Vec<String>, retry: bool },
    Multi { first: usize, second: usize, payload: String },
    Delete { stream: usize, hard: bool },
    Meta { stream: usize, max_count: Option<u64>, truncate_before: Option<u64> },
    Reopen,
    Scavenge,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (0..4usize, 0..4u8, 0..6u64, prop::collection::vec("[a-z]{0,12}", 1..4), any::<bool>())
            .prop_map(|(stream, expected, version, events, retry)| Op::Append { stream, expected, version, events, retry }),
        2 => (0..4usize, 0..4usize, "[a-z]{1,8}").prop_map(|(first, second, payload)| Op::Multi { first, second, payload }),
        1 => (0..4usize, any::<bool>()).prop_map(|(stream, hard)| Op::Delete { stream, hard }),
        1 => (0..4usize, prop::option::of(1..4u64), prop::option::of(0..5u64))
            .prop_map(|(stream, max_count, truncate_before)| Op::Meta { stream, max_count, truncate_before }),
        1 => Just(Op::Reopen),
        1 => Just(Op::Scavenge),
    ]
}

fn expected(kind: u8, version: u64) -> ExpectedVersion {
    match kind {
        0 => ExpectedVersion::Any,
        1 => ExpectedVersion::NoStream,
        2 => ExpectedVersion::StreamExists,
        _ => ExpectedVersion::Exact(version),
    }
}

fn same_outcome<T: PartialEq + std::fmt::Debug>(
    a: &Result<T, LogError>,
    b: &Result<T, LogError>,
) -> Result<(), String> {
    match (a, b) {
        (Ok(x), Ok(y)) if x == y => Ok(()),
        (Err(x), Err(y)) if std::mem::discriminant(x) == std::mem::discriminant(y) => Ok(()),
        _ => Err(format!("model {a:?} != file {b:?}")),
    }
}

fn config(vfs: &SimVfs, clock: &ManualClock) -> FileLogConfig {
    let mut c = FileLogConfig::new(SigningKey::from_bytes(&[5; 32]));
    c.vfs = Arc::new(vfs.clone());
    c.clock = Arc::new(clock.clone());
    c.segment_size = 4096;
    c.checkpoint_every_frames = 5;
    c
}

async fn compare_reads(model: &MemLog, file: &FileLog) -> Result<(), String> {
    let all_m = model.read_all(0, usize::MAX, &EventFilter::all()).await.map(|p| p.events);
    let all_f = file.read_all(0, usize::MAX, &EventFilter::all()).await.map(|p| p.events);
    same_outcome(&all_m, &all_f)?;
    let filter = EventFilter::stream_prefix("c-");
    let page_m = model.read_all(1, 3, &filter).await.map(|p| (p.events, p.next_position));
    let page_f = file.read_all(1, 3, &filter).await.map(|p| (p.events, p.next_position));
    same_outcome(&page_m, &page_f)?;
    for s in STREAMS {
        for (from, dir) in [
            (ReadFrom::Start, Direction::Forward),
            (ReadFrom::End, Direction::Backward),
            (ReadFrom::Version(2), Direction::Forward),
            (ReadFrom::Version(3), Direction::Backward),
        ] {
            same_outcome(&model.read_stream(s, from, dir, 3).await, &file.read_stream(s, from, dir, 3).await)?;
        }
        same_outcome(&model.stream_metadata(s).await, &file.stream_metadata(s).await)?;
    }
    if model.head() != file.head() {
        return Err(format!("head: model {} file {}", model.head(), file.head()));
    }
    Ok(())
}

async fn run(ops: Vec<Op>) -> Result<(), String> {
    let clock = ManualClock::new(1_800_000_000_000_000);
    let model = MemLog::with_clock(Arc::new(clock.clone()));
    let vfs = SimVfs::new();
    let mut file = FileLog::open("/m/log", config(&vfs, &clock)).map_err(|e| e.to_string())?;
    let mut last_batch: Option<(String, Vec<NewEvent>)> = None;
    for (step, op) in ops.into_iter().enumerate() {
        let at = |e: String| format!("step {step} ({op:?}): {e}");
        match &op {
            Op::Append { stream, expected: kind, version, events, retry } => {
                let (name, batch) = match (&last_batch, retry) {
                    (Some((name, batch)), true) => (name.clone(), batch.clone()),
                    _ => {
                        let batch: Vec<NewEvent> =
                            events.iter().map(|p| NewEvent::new("E", p.clone().into_bytes())).collect();
                        (STREAMS[*stream].to_owned(), batch)
                    }
                };
                last_batch = Some((name.clone(), batch.clone()));
                let exp = expected(*kind, *version);
                let m = model.append(&name, exp, batch.clone()).await;
                let f = file.append(&name, exp, batch).await;
                same_outcome(&m, &f).map_err(at)?;
            }
            Op::Multi { first, second, payload } => {
                let appends = vec![
                    StreamAppend {
                        stream: STREAMS[*first].into(),
                        expected: ExpectedVersion::Any,
                        events: vec![NewEvent::new("M", payload.clone().into_bytes())],
                    },
                    StreamAppend {
                        stream: STREAMS[*second].into(),
                        expected: ExpectedVersion::Any,
                        events: vec![NewEvent::new("M", payload.clone().into_bytes())],
                    },
                ];
                same_outcome(&model.append_multi(appends.clone()).await, &file.append_multi(appends).await)
                    .map_err(at)?;
            }
            Op::Delete { stream, hard } => {
                let mode = if *hard { DeleteMode::Hard } else { DeleteMode::Soft };
                let m = model.delete_stream(STREAMS[*stream], ExpectedVersion::Any, mode).await;
                let f = file.delete_stream(STREAMS[*stream], ExpectedVersion::Any, mode).await;
                same_outcome(&m, &f).map_err(at)?;
            }
            Op::Meta { stream, max_count, truncate_before } => {
                let meta =
                    StreamMetadata { max_count: *max_count, truncate_before: *truncate_before, max_age_secs: None };
                let m = model.set_stream_metadata(STREAMS[*stream], meta).await;
                let f = file.set_stream_metadata(STREAMS[*stream], meta).await;
                same_outcome(&m, &f).map_err(at)?;
            }
            Op::Reopen => {
                file.close();
                drop(file);
                file = FileLog::open("/m/log", config(&vfs, &clock)).map_err(|e| at(e.to_string()))?;
            }
            Op::Scavenge => {
                let m = model.scavenge().await.map(|r| r.events_removed);
                let f = file.scavenge().await.map(|r| r.events_removed);
                same_outcome(&m, &f).map_err(at)?;
            }
        }
        compare_reads(&model, &file).await.map_err(|e| format!("after step {step} ({op:?}): {e}"))?;
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 96, ..ProptestConfig::default() })]

    #[test]
    fn file_backend_matches_the_model(ops in prop::collection::vec(op(), 1..40)) {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        if let Err(e) = rt.block_on(run(ops)) {
            prop_assert!(false, "{}", e);
        }
    }
}
