//! Power cuts at every write and sync point of a scripted workload, through
//! the simulated filesystem: after a reboot (unsynced writes dropped, kept,
//! or torn sector by sector) the log opens, every acknowledged event is
//! there in order with its exact bytes, every batch is all-or-nothing, the
//! hash chain verifies, and the log accepts writes again.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use ed25519_dalek::SigningKey;
use eventlog::file::sim::{CrashMode, SimVfs};
use eventlog::file::{FileLog, FileLogConfig, verify_log};
use eventlog::{
    AppendResult, DeleteMode, Direction, EventFilter, EventLog, ExpectedVersion, LogError, ManualClock, NewEvent,
    ReadFrom, StreamAppend, StreamMetadata,
};

const DIR: &str = "/disk/log";

fn key() -> SigningKey {
    SigningKey::from_bytes(&[42; 32])
}

fn config(vfs: &SimVfs) -> FileLogConfig {
    let mut c = FileLogConfig::new(key());
    c.vfs = Arc::new(vfs.clone());
    c.segment_size = 4096;
    c.checkpoint_every_frames = 3;
    c.checkpoint_interval = Duration::from_secs(3600);
    c.clock = Arc::new(ManualClock::new(1_800_000_000_000_000));
    c
}

/// What the workload saw acknowledged.
#[derive(Default)]
struct Acked {
    appends: Vec<(Vec<StreamAppend>, Vec<AppendResult>)>,
    /// Appends sent but not acknowledged: may be present, whole, or absent.
    unacked: Vec<Vec<StreamAppend>>,
    hard_deleted_gone: bool,
    metadata_set: bool,
}

fn event(stream: &str, i: usize) -> NewEvent {
    let mut e = NewEvent::new("Written", format!("{stream}:{i}:{}", "x".repeat(40 + i * 7 % 90)).into_bytes());
    e.schema_version = 1 + (i % 3) as u32;
    e
}

/// Eight appends at once, so groups go through the syncer thread.
async fn burst(log: &Arc<FileLog>, round: usize, acked: &mut Acked) -> Result<(), LogError> {
    let mut tasks = Vec::new();
    for w in 0..8 {
        let stream = format!("burst-{w}");
        let appends = vec![StreamAppend {
            stream: stream.clone(),
            expected: ExpectedVersion::Any,
            events: vec![event(&stream, round * 10 + w)],
        }];
        let log = log.clone();
        tasks.push(tokio::spawn(async move { (appends.clone(), log.append_multi(appends).await) }));
    }
    let mut first_error = None;
    for t in tasks {
        let (appends, result) = t.await.expect("task");
        match result {
            Ok(results) => acked.appends.push((appends, results)),
            Err(e) => {
                acked.unacked.push(appends);
                first_error.get_or_insert(e);
            }
        }
    }
    first_error.map_or(Ok(()), Err)
}

async fn workload(log: &Arc<FileLog>, acked: &mut Acked) -> Result<(), LogError> {
    let mut n = 0;
    for round in 0..14 {
        let appends = if round % 4 == 3 {
            vec![
                StreamAppend { stream: "a".into(), expected: ExpectedVersion::Any, events: vec![event("a", n)] },
                StreamAppend {
                    stream: "multi".into(),
                    expected: ExpectedVersion::Any,
                    events: vec![event("multi", n + 1)],
                },
            ]
        } else {
            let stream = ["a", "b", "c"][round % 3];
            let events = (0..1 + round % 3).map(|i| event(stream, n + i)).collect();
            vec![StreamAppend { stream: stream.into(), expected: ExpectedVersion::Any, events }]
        };
        n += 4;
        match log.append_multi(appends.clone()).await {
            Ok(results) => acked.appends.push((appends, results)),
            Err(e) => {
                acked.unacked.push(appends);
                return Err(e);
            }
        }
        match round {
            4 => {
                let gone = vec![StreamAppend {
                    stream: "gone".into(),
                    expected: ExpectedVersion::Any,
                    events: vec![event("gone", 0), event("gone", 1)],
                }];
                // Checked for all-or-nothing only: the stream is deleted next.
                acked.unacked.push(gone.clone());
                log.append_multi(gone).await?;
                log.delete_stream("gone", ExpectedVersion::Any, DeleteMode::Hard).await?;
                acked.hard_deleted_gone = true;
            }
            7 => {
                log.scavenge().await?;
            }
            9 => {
                log.set_stream_metadata("meta", StreamMetadata { max_count: Some(2), ..Default::default() }).await?;
                acked.metadata_set = true;
            }
            11 => log.checkpoint().await?,
            2 | 6 | 12 => burst(log, round, acked).await?,
            _ => {}
        }
    }
    Ok(())
}

async fn check_after_reboot(vfs: &SimVfs, acked: &Acked, label: &str) {
    let log = match FileLog::open(DIR, config(vfs)) {
        Ok(log) => log,
        Err(e) => panic!("{label}: reopen failed: {e}"),
    };
    let page = log.read_all(0, 100_000, &EventFilter::all()).await.unwrap();
    let present: HashMap<uuid::Uuid, &eventlog::RecordedEvent> = page.events.iter().map(|e| (e.id(), e)).collect();
    for (appends, results) in &acked.appends {
        for (append, result) in appends.iter().zip(results) {
            for (i, e) in append.events.iter().enumerate() {
                let got = present.get(&e.id).unwrap_or_else(|| panic!("{label}: acknowledged event lost"));
                assert_eq!(&got.event, e, "{label}: bytes changed");
                assert_eq!(got.position, result.first_position + i as u64, "{label}: position changed");
                assert_eq!(&*got.stream, append.stream.as_str());
            }
        }
    }
    for appends in &acked.unacked {
        let ids: Vec<_> = appends.iter().flat_map(|a| &a.events).map(|e| e.id).collect();
        let found = ids.iter().filter(|id| present.contains_key(id)).count();
        assert!(found == 0 || found == ids.len(), "{label}: unacknowledged batch half-visible ({found}/{})", ids.len());
    }
    let positions: Vec<u64> = page.events.iter().map(|e| e.position).collect();
    assert!(positions.windows(2).all(|w| w[0] < w[1]), "{label}: $all out of order");
    let known: std::collections::HashSet<_> = acked
        .appends
        .iter()
        .flat_map(|(a, _)| a.iter())
        .chain(acked.unacked.iter().flatten())
        .flat_map(|a| &a.events)
        .map(|e| e.id)
        .collect();
    for e in &page.events {
        assert!(known.contains(&e.id()), "{label}: an event nobody wrote appeared");
    }
    if acked.hard_deleted_gone {
        assert!(
            matches!(
                log.read_stream("gone", ReadFrom::Start, Direction::Forward, 10).await,
                Err(LogError::StreamDeleted { .. })
            ),
            "{label}: acknowledged hard delete lost"
        );
    }
    if acked.metadata_set {
        assert_eq!(log.stream_metadata("meta").await.unwrap().max_count, Some(2), "{label}: metadata lost");
    }
    // Retrying an acknowledged append is recognised after the reboot.
    if let Some((appends, results)) = acked.appends.last() {
        let again = log.append_multi(appends.clone()).await.unwrap_or_else(|e| panic!("{label}: retry failed: {e}"));
        assert_eq!(&again, results, "{label}: retry not idempotent after reboot");
    }
    // The log takes writes again and the chain verifies end to end.
    log.append("after", ExpectedVersion::Any, vec![event("after", 0)]).await.unwrap();
    log.checkpoint().await.unwrap();
    verify_log(&SimVfs::clone(vfs), DIR.as_ref(), &key().verifying_key())
        .unwrap_or_else(|e| panic!("{label}: verification failed after reboot: {e}"));
    log.close();
}

fn run(cut_after: Option<u64>) -> (SimVfs, Acked, bool) {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async {
        let vfs = SimVfs::new();
        if let Some(n) = cut_after {
            vfs.cut_power_after(n);
        }
        let mut acked = Acked::default();
        let completed = match FileLog::open(DIR, config(&vfs)).map(Arc::new) {
            Ok(log) => {
                let ok = workload(&log, &mut acked).await.is_ok();
                log.close();
                ok
            }
            Err(_) => false,
        };
        (vfs, acked, completed)
    })
}

#[test]
fn every_power_cut_point_recovers_acknowledged_events() {
    let (full, acked, completed) = run(None);
    assert!(completed, "the workload runs without faults");
    let total_ops = full.ops();
    assert!(total_ops > 50, "the workload exercises many write and sync points ({total_ops})");
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(check_after_reboot(&full.crash(CrashMode::DropUnsynced), &acked, "no cut"));
    let mut cuts = 0;
    for cut in 1..=total_ops + 1 {
        let (vfs, acked, _) = run(Some(cut));
        let modes = [
            CrashMode::DropUnsynced,
            CrashMode::KeepUnsynced,
            CrashMode::Torn { seed: cut },
            CrashMode::Torn { seed: cut.wrapping_mul(0x9E37_79B9) ^ 0xABCD },
        ];
        for mode in modes {
            let label = format!("cut at op {cut}/{total_ops}, {mode:?}");
            rt.block_on(check_after_reboot(&vfs.crash(mode), &acked, &label));
        }
        cuts += 1;
    }
    assert_eq!(cuts, total_ops + 1);
}
