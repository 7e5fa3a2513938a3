//! Power cuts while concurrent bursts roll segment after segment: a sync
//! that covered groups of two segments must never leave an earlier segment
//! torn under a later one (recovery only repairs the last segment's tail),
//! so the writer seals a segment (all its frames durable) before it writes
//! to the next.

use std::sync::Arc;
use std::time::Duration;

use ed25519_dalek::SigningKey;
use eventlog::file::sim::{CrashMode, SimVfs};
use eventlog::file::{FileLog, FileLogConfig};
use eventlog::{EventFilter, EventLog, ExpectedVersion, ManualClock, NewEvent};

fn slow_disk() -> SimVfs {
    let vfs = SimVfs::new();
    vfs.set_sync_delay(Some(Duration::from_millis(2)));
    vfs
}

fn config(vfs: &SimVfs) -> FileLogConfig {
    let mut c = FileLogConfig::new(SigningKey::from_bytes(&[8; 32]));
    c.vfs = Arc::new(vfs.clone());
    c.segment_size = 4096;
    c.checkpoint_every_frames = 1_000_000;
    c.checkpoint_interval = Duration::from_secs(3600);
    c.clock = Arc::new(ManualClock::new(1_800_000_000_000_000));
    c
}

async fn bursts(log: Arc<FileLog>) -> Vec<uuid::Uuid> {
    let mut acked = Vec::new();
    for round in 0..12 {
        let mut tasks = Vec::new();
        for w in 0..16 {
            let log = log.clone();
            tasks.push(tokio::spawn(async move {
                let e = NewEvent::new("Rolled", format!("{round}/{w}/{}", "r".repeat(1500)).into_bytes());
                let id = e.id;
                log.append(&format!("s-{w}"), ExpectedVersion::Any, vec![e]).await.ok().map(|_| id)
            }));
        }
        for t in tasks {
            if let Some(id) = t.await.unwrap() {
                acked.push(id);
            }
        }
    }
    acked
}

#[test]
fn power_cuts_during_segment_rolls_leave_only_a_torn_last_segment() {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let full = slow_disk();
    rt.block_on(async {
        let log = Arc::new(FileLog::open("/r/log", config(&full)).unwrap());
        bursts(log.clone()).await;
        log.close();
    });
    let total = full.ops();
    let segments = full.all_file_bytes().iter().filter(|(p, _)| p.extension().is_some_and(|e| e == "seg")).count();
    assert!(segments > 10, "the workload rolls many segments ({segments})");
    eprintln!("ops={total} segments={segments}");
    for cut in 1..total {
        let vfs = slow_disk();
        vfs.cut_power_after(cut);
        let acked = rt.block_on(async {
            match FileLog::open("/r/log", config(&vfs)) {
                Ok(log) => {
                    let log = Arc::new(log);
                    let acked = bursts(log.clone()).await;
                    log.close();
                    acked
                }
                Err(_) => Vec::new(),
            }
        });
        for mode in [CrashMode::KeepUnsynced, CrashMode::Torn { seed: cut }, CrashMode::Torn { seed: cut * 7 + 1 }] {
            let disk = vfs.crash(mode);
            let log = FileLog::open("/r/log", config(&disk))
                .unwrap_or_else(|e| panic!("cut at {cut}/{total}, {mode:?}: reopen failed: {e}"));
            let present: std::collections::HashSet<_> = rt
                .block_on(log.read_all(0, usize::MAX, &EventFilter::all()))
                .unwrap()
                .events
                .iter()
                .map(|e| e.id())
                .collect();
            for id in &acked {
                assert!(present.contains(id), "cut at {cut}, {mode:?}: acknowledged event lost");
            }
        }
    }
}
