//! `loadgen activation`: how long a Session with a long history takes to
//! come back after its actor stopped (passivation, restart), with
//! snapshots (every `--snapshot-every` events) and without (the whole
//! stream replayed), on the file log and the file key store.
//!
//! In process: the registry of the `actors` crate on a `FileLog` and a
//! `LocalKeyStore` on files, a Session of `events` messages posted in
//! waves (so in batches); then `samples` times: stop the actor, read the
//! Session (activation: the snapshot, then the events after it). The
//! baseline is the same activation without snapshots (fewer samples: each
//! replays every event).

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use actors::{Metrics, Registry, RegistryConfig, Shared, TokioClock};
use anyhow::Result;
use domain::Timers;
use domain::session::{Session, SessionCommand};
use eventlog::file::FileLog;
use eventlog::{Clock, EventLog};
use keystore::{KeyPolicy, Keyring};
use uuid::Uuid;

fn pct(sorted: &[u64], p: f64) -> u64 {
    sorted.get(((sorted.len() as f64 - 1.0) * p).round() as usize).copied().unwrap_or_default()
}

async fn registry(log: Arc<FileLog>, keyring: Keyring, snapshot_every: u64) -> Result<Arc<Registry>> {
    let log: Arc<dyn EventLog> = log;
    let shared = Arc::new(Shared {
        log,
        keyring,
        clock: Arc::new(TokioClock::new(eventlog::SystemClock.now_micros())),
        metrics: Arc::new(Metrics::default()),
    });
    let config = RegistryConfig { idle: Duration::from_secs(3600), max_actors: 1000, arbiters: 1, snapshot_every };
    Ok(Registry::start(shared, config).await?)
}

async fn measure(r: &Registry, tenant: Uuid, session: Uuid, samples: usize) -> Result<Vec<u64>> {
    let mut took = Vec::with_capacity(samples);
    for _ in 0..samples {
        r.forget::<Session>(tenant, session);
        let t = Instant::now();
        let s = r.read::<Session>(tenant, session).await?;
        took.push(t.elapsed().as_micros() as u64);
        anyhow::ensure!(s.state.id == Some(session), "the Session did not load");
    }
    took.sort_unstable();
    Ok(took)
}

pub fn run(dir: &Path, events: usize, samples: usize, every: u64) -> Result<()> {
    actix_rt::System::new().block_on(async move {
        let log = Arc::new(FileLog::open(dir.join("log"), crate::config())?);
        let keys = keystore::embedded::open_embedded(
            &dir.join("keys"),
            Some(&"ab".repeat(32)),
            Arc::new(eventlog::SystemClock),
            keystore::embedded::OpenMode::CreateIfEmpty,
        )?;
        let keyring = Keyring::new(keys.store.clone(), KeyPolicy::default())?;
        let (tenant, session, user) = (Uuid::now_v7(), Uuid::now_v7(), Uuid::now_v7());
        let writer = registry(log.clone(), keyring.clone(), every).await?;
        let start = SessionCommand::Start {
            session,
            tenant,
            pype: Uuid::now_v7(),
            end_user: user,
            pype_timers: Timers::DEFAULT,
            timers: None,tracking: Default::default(),
        };
        writer.execute::<Session>(tenant, session, start).await?;
        let body = "x".repeat(256);
        let t = Instant::now();
        let mut posted = 0;
        while posted < events {
            let wave = 512.min(events - posted);
            let posts = (0..wave).map(|_| {
                writer.execute::<Session>(
                    tenant,
                    session,
                    SessionCommand::PostMessage { sender: user, body: body.clone(), device: None, attachments: vec![] },
                )
            });
            for done in futures::future::join_all(posts).await {
                done?;
            }
            posted += wave;
        }
        println!(
            "# {events} messages posted to one Session in {:.1} s (batched: {} appends)",
            t.elapsed().as_secs_f64(),
            writer.shared().metrics.appends.load(std::sync::atomic::Ordering::Relaxed)
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
        writer.forget::<Session>(tenant, session);
        tokio::time::sleep(Duration::from_millis(100)).await;

        let with = registry(log.clone(), keyring.clone(), every).await?;
        measure(&with, tenant, session, 3).await?; // warm the key cache
        let snap = measure(&with, tenant, session, samples).await?;
        // Without snapshots: the whole stream folded (what activation cost
        // before snapshots, and costs when a snapshot cannot be used).
        let without = registry(log.clone(), keyring.clone(), 0).await?;
        let full = {
            let mut took = Vec::new();
            for _ in 0..samples.clamp(1, 5) {
                let t = Instant::now();
                let s = actors::entity::replay_whole::<Session>(without.shared(), tenant, session).await?;
                took.push(t.elapsed().as_micros() as u64);
                anyhow::ensure!(s.id == Some(session), "the Session did not replay");
            }
            took.sort_unstable();
            took
        };
        println!(
            "BENCH activation events={events} snapshot_every={every} snapshot_p50_us={} snapshot_p99_us={} replay_p50_us={} replay_p99_us={} samples={samples}",
            pct(&snap, 0.5),
            pct(&snap, 0.99),
            pct(&full, 0.5),
            pct(&full, 0.99)
        );
        log.close();
        Ok(())
    })
}
