//! Load generator for pypes. Every figure is printed next to a baseline
//! measured in the same run on the same disk, because the machine's fsync
//! rate moves with whatever else runs on it.
//!
//! `loadgen log-append`: a raw write+fdatasync group-commit loop versus the
//! file log at 1, 16, 256 and 1024 concurrent writers.
//! `loadgen log-read`: `$all` read and subscription catch-up rates, and the
//! time (and memory) to open a log of N events.
//! `loadgen seal`: the keystore's seal/open, cache-miss, key-creation,
//! shred and rotation costs against bare AES-GCM and raw fsync.
//! `loadgen send-message`: PostMessage over gRPC against a bare tonic echo.
//! `loadgen actors-memory`: RSS per live Session actor, activation latency.

mod activation;
mod apibench;
mod crashcycles;
mod grpc_peers;
mod keybench;
mod mediabench;
mod peers;
mod peers_common;
mod rebuild;
mod soak;
mod webhookbench;

/// The allocator the `pypes` binary uses, so figures are the product's.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};
use ed25519_dalek::SigningKey;
use eventlog::file::{FileLog, FileLogConfig};
use eventlog::{
    EventFilter, EventLog, ExpectedVersion, NewEvent, SubscribeFrom, SubscriptionMessage, SubscriptionOptions,
    subscribe_all,
};
use tokio::sync::oneshot;

#[derive(Parser)]
#[command(about = "pypes load generator")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
#[allow(clippy::enum_variant_names)] // command names mirror the CLI: log-append, log-read, log-open
enum Command {
    /// Append throughput and latency of the file log against raw group commit.
    LogAppend {
        /// Directory for the test files (default: a temp dir under the current directory).
        #[arg(long)]
        dir: Option<PathBuf>,
        /// Seconds measured per point.
        #[arg(long, default_value_t = 3.0)]
        seconds: f64,
        /// Concurrent writer counts, comma-separated.
        #[arg(long, value_delimiter = ',', default_value = "1,16,256,1024")]
        writers: Vec<usize>,
        /// Payload bytes per event.
        #[arg(long, default_value_t = 256)]
        event_bytes: usize,
        /// Also run each point against the PostgreSQL event log (a
        /// throw-away cluster started here) and print the ratio.
        #[arg(long)]
        postgres: bool,
    },
    /// `$all` read and catch-up rates, and the time to open a log of N events.
    LogRead {
        #[arg(long)]
        dir: Option<PathBuf>,
        /// Events in the log (the figure is for 10 M: about 3.3 GB of disk).
        #[arg(long, default_value_t = 10_000_000)]
        events: u64,
        #[arg(long, default_value_t = 256)]
        event_bytes: usize,
        /// Distinct streams the events are spread over.
        #[arg(long, default_value_t = 10_000)]
        streams: u64,
        /// Events per append while filling (1 gives one frame per event
        /// unless group commit merges them).
        #[arg(long, default_value_t = 500)]
        batch: u64,
        /// Keep the log directory afterwards (its path is printed).
        #[arg(long)]
        keep: bool,
    },
    /// Seal/open rates with a warm cache, unwrap cost on a miss, key
    /// creation, shred and rotation, each against a same-run baseline.
    Seal {
        #[arg(long)]
        dir: Option<PathBuf>,
        /// Seconds measured per round (three alternating rounds per figure).
        #[arg(long, default_value_t = 1.0)]
        seconds: f64,
        /// Field sizes in bytes, comma-separated.
        #[arg(long, value_delimiter = ',', default_value = "256,4096")]
        sizes: Vec<usize>,
        /// Keys to create (one fsync each) for the creation, miss and shred figures.
        #[arg(long, default_value_t = 3000)]
        keys: usize,
        /// Keep the data directory afterwards (its path is printed) for `pypes keys --data-dir`.
        #[arg(long)]
        keep: bool,
    },
    /// PostMessage throughput and latency against a bare tonic unary echo.
    SendMessage {
        #[arg(long)]
        dir: Option<PathBuf>,
        /// Seconds per round (three alternating rounds of each).
        #[arg(long, default_value_t = 5.0)]
        seconds: f64,
        #[arg(long, default_value_t = 10_000)]
        sessions: usize,
        #[arg(long, default_value_t = 64)]
        in_flight: usize,
        #[arg(long, default_value_t = 256)]
        body_bytes: usize,
    },
    /// Messages/s through SessionService.ImportSessions against the raw
    /// write+fdatasync loop writing records of one imported Session's size.
    Import {
        #[arg(long)]
        dir: Option<PathBuf>,
        /// Sessions imported in all.
        #[arg(long, default_value_t = 4_000)]
        sessions: usize,
        /// Messages per Session (the batch size of one append).
        #[arg(long, default_value_t = 50)]
        messages: usize,
        #[arg(long, default_value_t = 256)]
        body_bytes: usize,
        /// Concurrent ImportSessions streams.
        #[arg(long, default_value_t = 4)]
        streams: usize,
    },
    /// Activation of one Session with a long history: from its snapshot
    /// against replaying the whole stream.
    Activation {
        #[arg(long)]
        dir: Option<PathBuf>,
        #[arg(long, default_value_t = 100_000)]
        events: usize,
        #[arg(long, default_value_t = 300)]
        samples: usize,
        /// A snapshot every this many events (the server's default).
        #[arg(long, default_value_t = 256)]
        snapshot_every: u64,
    },
    /// RSS with N live Session actors; activation latency cold and warm.
    ActorsMemory {
        #[arg(long)]
        dir: Option<PathBuf>,
        #[arg(long, default_value_t = 100_000)]
        sessions: usize,
        #[arg(long, default_value_t = 64)]
        in_flight: usize,
        /// Sessions sampled for activation latency.
        #[arg(long, default_value_t = 2000)]
        samples: usize,
    },
    /// Projection rebuild rate (sessions + analytics views) from a log of N
    /// events against a raw `$all` read; purge-to-acknowledged time; shred
    /// time for 10 vs 100,000 sealed fields.
    Rebuild {
        #[arg(long)]
        dir: Option<PathBuf>,
        #[arg(long, default_value_t = 5_000_000)]
        events: u64,
        #[arg(long, default_value_t = 10_000)]
        sessions: u64,
        /// Keep the log in this directory and reuse it on the next run
        /// (filled only when empty), e.g. to profile the rebuild alone.
        #[arg(long)]
        log: Option<PathBuf>,
    },
    /// Upload and download MiB/s of a large file through MediaService
    /// against a plain file copy in the same run; small-upload latency.
    Media {
        #[arg(long)]
        dir: Option<PathBuf>,
        /// File size in MiB.
        #[arg(long, default_value_t = 100)]
        mib: u64,
        #[arg(long, default_value_t = 3)]
        rounds: usize,
        /// Small (64 KiB) uploads timed one at a time.
        #[arg(long, default_value_t = 200)]
        small: usize,
    },
    /// pypes' file log side by side with the event stores people pick
    /// instead (a PostgreSQL events table, Python eventsourcing), equal
    /// durability, alternating rounds; BENCH lines and a JSON file.
    Peers {
        /// Directory for the test files (default: the current directory).
        #[arg(long)]
        dir: Option<PathBuf>,
        /// Seconds measured per round.
        #[arg(long, default_value_t = 3.0)]
        seconds: f64,
        /// Seconds of warm-up before each round's measurement.
        #[arg(long, default_value_t = 0.5)]
        warmup: f64,
        /// Rounds per point (the median is reported; every round is in the JSON).
        #[arg(long, default_value_t = 3)]
        rounds: usize,
        #[arg(long, value_delimiter = ',', default_value = "1,4,16,256")]
        writers: Vec<usize>,
        /// Streams the events are spread over.
        #[arg(long, default_value_t = 10_000)]
        streams: usize,
        /// Stream choice: uniform, zipf or both.
        #[arg(long, value_delimiter = ',', default_value = "uniform,zipf")]
        distributions: Vec<String>,
        #[arg(long, default_value_t = 0x5eed)]
        seed: u64,
        /// The JSON file of the whole run.
        #[arg(long, default_value = "target/bench/peers.json")]
        out: PathBuf,
        /// The Python with `eventsourcing` installed (benches/peers/install.sh).
        #[arg(long, default_value = "target/bench/venv/bin/python")]
        python: PathBuf,
        /// Leave out the Python `eventsourcing` peers.
        #[arg(long)]
        no_python: bool,
        /// Concurrent readers of whole streams, comma-separated (`--readers ''`: no read workload).
        #[arg(long, default_value = "1,4,16", value_parser = counts)]
        readers: Counts,
        /// Streams, and events in each, that the read and mixed workloads start from.
        #[arg(long, default_value_t = 1000)]
        read_streams: usize,
        #[arg(long, default_value_t = 100)]
        events_per_stream: usize,
        /// Clients of the mixed workload: 70 % whole-stream reads, 30 % appends (0: none).
        #[arg(long, default_value_t = 16)]
        mixed_clients: usize,
        /// UmaDB's server (benches/peers/install.sh builds it from crates.io).
        #[arg(long, default_value = "target/bench/umadb/bin/umadb")]
        umadb: PathBuf,
        /// Leave out UmaDB.
        #[arg(long)]
        no_umadb: bool,
        /// Leave out pypes through its gRPC API (the `pypes` server).
        #[arg(long)]
        no_grpc: bool,
        /// Events the catch-up subscriber reads from the start (0: none).
        #[arg(long, default_value_t = 1_000_000)]
        catchup_events: usize,
        /// Sessions of the messaging scenario over gRPC (0: none).
        #[arg(long, default_value_t = 10_000)]
        messaging_sessions: usize,
        /// Concurrent clients of the messaging scenario (each plays whole turns).
        #[arg(long, default_value_t = 64)]
        messaging_clients: usize,
    },
    /// Webhook delivery to 100 local endpoints beside the messaging
    /// scenario, against the messaging scenario alone (alternating rounds).
    Webhooks {
        #[arg(long)]
        dir: Option<PathBuf>,
        /// Seconds per round.
        #[arg(long, default_value_t = 5.0)]
        seconds: f64,
        /// Rounds of each (the median is reported).
        #[arg(long, default_value_t = 3)]
        rounds: usize,
        #[arg(long, default_value_t = 64)]
        in_flight: usize,
        /// Sessions in each of the 100 Pypes.
        #[arg(long, default_value_t = 10)]
        sessions_per_pype: usize,
        /// Messages offered per second (0: as fast as they are answered).
        #[arg(long, default_value_t = 0.0)]
        rate: f64,
    },
    /// Kills `pypes serve` (SIGKILL) N times under load through the gRPC
    /// API, then checks every acknowledged message is there exactly once,
    /// every acknowledged erasure certified and the views whole.
    CrashCycles {
        /// Directory for the data directory (default: the current directory).
        #[arg(long)]
        dir: Option<PathBuf>,
        #[arg(long, default_value_t = 100)]
        cycles: usize,
        /// Concurrent clients posting messages.
        #[arg(long, default_value_t = 8)]
        clients: usize,
        /// Sessions the messages go to.
        #[arg(long, default_value_t = 16)]
        sessions: usize,
        /// Load before each kill: a random time between these (ms).
        #[arg(long, default_value_t = 20)]
        min_ms: u64,
        #[arg(long, default_value_t = 400)]
        max_ms: u64,
        /// The kill also waits until this many posts of the cycle were
        /// acknowledged (so a slow machine still writes as much).
        #[arg(long, default_value_t = 0)]
        min_acks: usize,
        /// Message bodies padded to this many bytes (0: short bodies).
        #[arg(long, default_value_t = 0)]
        body_bytes: usize,
        /// An end user registered and erased every this many cycles (0: none).
        #[arg(long, default_value_t = 10)]
        erase_every: usize,
        #[arg(long, default_value_t = 0x5eed)]
        seed: u64,
        /// The JSON file of the run's figures.
        #[arg(long, default_value = "target/bench/crash-cycles.json")]
        out: PathBuf,
    },
    /// Steady load at half the measured maximum for N minutes with
    /// erasures, exports, restrictions, retention changes and API key
    /// rotation mixed in; RSS, open files, threads, p99 and errors sampled
    /// into a JSON file and an SVG plot.
    Soak {
        /// Directory for the data directory (default: the current directory).
        #[arg(long)]
        dir: Option<PathBuf>,
        #[arg(long, default_value_t = 30.0)]
        minutes: f64,
        /// Seconds between samples.
        #[arg(long, default_value_t = 60.0)]
        sample_secs: f64,
        /// Sessions the messages go to.
        #[arg(long, default_value_t = 1000)]
        sessions: usize,
        /// A privacy operation every this many ms.
        #[arg(long, default_value_t = 1000)]
        mixed_every_ms: u64,
        /// Messages/s offered (default: half the measured maximum).
        #[arg(long)]
        rate: Option<f64>,
        /// The JSON file (the plot goes beside it as .svg).
        #[arg(long, default_value = "target/bench/soak.json")]
        out: PathBuf,
        /// Fail on any error, or on open files or threads that grew.
        #[arg(long)]
        check: bool,
    },
    /// The bare echo server (started by send-message).
    EchoServer,
    /// Opens an existing log and reports open time and resident memory
    /// (run in its own process by `log-read`).
    LogOpen {
        dir: PathBuf,
        /// Seed byte of the checkpoint signing key the log was written with
        /// (loadgen writes with 1, eventlog-torture with 3).
        #[arg(long, default_value_t = 1)]
        key_seed: u8,
    },
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    match cli.command {
        Command::LogAppend { dir, seconds, writers, event_bytes, postgres } => {
            let dir = work_dir(dir)?;
            let result =
                rt.block_on(log_append(dir.path(), Duration::from_secs_f64(seconds), &writers, event_bytes, postgres));
            drop(dir);
            result
        }
        Command::Rebuild { dir, events, sessions, log } => {
            let dir = work_dir(dir)?;
            rebuild::run(dir.path(), log.as_deref(), events, sessions.max(1), &rt)
        }
        Command::LogRead { dir, events, event_bytes, streams, batch, keep } => {
            let dir = work_dir(dir)?;
            let result = rt.block_on(log_read(dir.path(), events, event_bytes, streams, batch.max(1)));
            if keep {
                println!("# kept {}", dir.keep().join("log").display());
            }
            result
        }
        Command::Seal { dir, seconds, sizes, keys, keep } => {
            let dir = work_dir(dir)?;
            let result = keybench::run(dir.path(), seconds, &sizes, keys.max(3));
            if keep {
                println!("# kept {}", dir.keep().display());
            }
            result
        }
        Command::SendMessage { dir, seconds, sessions, in_flight, body_bytes } => {
            let dir = work_dir(dir)?;
            rt.block_on(apibench::send_message(
                dir.path(),
                seconds,
                sessions.max(1),
                in_flight.max(1),
                body_bytes.max(1),
            ))
        }
        Command::Import { dir, sessions, messages, body_bytes, streams } => {
            let dir = work_dir(dir)?;
            rt.block_on(apibench::import(
                dir.path(),
                sessions.max(1),
                messages.max(1),
                body_bytes.max(1),
                streams.max(1),
            ))
        }
        Command::Activation { dir, events, samples, snapshot_every } => {
            let dir = work_dir(dir)?;
            activation::run(dir.path(), events.max(1), samples.max(1), snapshot_every.max(1))
        }
        Command::ActorsMemory { dir, sessions, in_flight, samples } => {
            let dir = work_dir(dir)?;
            rt.block_on(apibench::actors_memory(dir.path(), sessions.max(1), in_flight.max(1), samples))
        }
        Command::Media { dir, mib, rounds, small } => {
            let dir = work_dir(dir)?;
            rt.block_on(mediabench::run(dir.path(), mib.max(1), rounds.max(1), small))
        }
        Command::Peers {
            dir,
            seconds,
            warmup,
            rounds,
            writers,
            streams,
            distributions,
            seed,
            out,
            python,
            no_python,
            readers,
            read_streams,
            events_per_stream,
            mixed_clients,
            umadb,
            no_umadb,
            no_grpc,
            catchup_events,
            messaging_sessions,
            messaging_clients,
        } => {
            let dir = match dir {
                Some(d) => d,
                None => std::env::current_dir()?,
            };
            rt.block_on(peers::run(peers::Options {
                dir,
                seconds,
                warmup,
                rounds: rounds.max(1),
                writers,
                streams: streams.max(1),
                distributions,
                seed,
                out,
                python: (!no_python).then_some(python),
                readers: readers.0,
                read_streams: read_streams.max(1),
                events_per_stream: events_per_stream.max(1),
                mixed_clients,
                umadb: (!no_umadb).then_some(umadb),
                grpc: !no_grpc,
                catchup_events,
                messaging_sessions,
                messaging_clients,
            }))
        }
        Command::Webhooks { dir, seconds, rounds, in_flight, sessions_per_pype, rate } => {
            let dir = work_dir(dir)?;
            rt.block_on(webhookbench::run(
                dir.path(),
                seconds,
                rounds.max(1),
                in_flight.max(1),
                sessions_per_pype.max(1),
                rate.max(0.0),
            ))
        }
        Command::CrashCycles {
            dir,
            cycles,
            clients,
            sessions,
            min_ms,
            max_ms,
            min_acks,
            body_bytes,
            erase_every,
            seed,
            out,
        } => {
            let dir = match dir {
                Some(d) => d,
                None => std::env::current_dir()?,
            };
            rt.block_on(crashcycles::run(crashcycles::Options {
                dir,
                cycles: cycles.max(1),
                clients: clients.max(1),
                sessions: sessions.max(1),
                min_ms,
                max_ms: max_ms.max(min_ms),
                min_acks,
                body_bytes,
                erase_every,
                seed,
                out,
            }))
        }
        Command::Soak { dir, minutes, sample_secs, sessions, mixed_every_ms, rate, out, check } => {
            let dir = match dir {
                Some(d) => d,
                None => std::env::current_dir()?,
            };
            rt.block_on(soak::run(soak::Options {
                dir,
                minutes: minutes.max(0.05),
                sample_secs,
                sessions,
                mixed_every_ms,
                rate,
                out,
                check,
            }))
        }
        Command::EchoServer => rt.block_on(apibench::echo_server()),
        Command::LogOpen { dir, key_seed } => {
            let started = Instant::now();
            let log = FileLog::open(&dir, FileLogConfig::new(SigningKey::from_bytes(&[key_seed; 32])))?;
            let open_ms = started.elapsed().as_secs_f64() * 1000.0;
            println!("OPEN open_ms={open_ms:.0} rss_mb={:.1} events={}", rss_mb(), log.head());
            Ok(())
        }
    }
}

fn work_dir(dir: Option<PathBuf>) -> Result<tempfile::TempDir> {
    let base = match dir {
        Some(d) => d,
        None => std::env::current_dir()?,
    };
    std::fs::create_dir_all(&base)?;
    Ok(tempfile::Builder::new().prefix("loadgen-").tempdir_in(base)?)
}

pub(crate) fn config() -> FileLogConfig {
    FileLogConfig::new(SigningKey::from_bytes(&[1; 32]))
}

fn rss_mb() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or(0.0, |kb| kb / 1024.0)
}

pub(crate) struct Point {
    pub(crate) events_per_s: f64,
    p50_us: u64,
    p99_us: u64,
}

fn summarize(mut latencies: Vec<u32>, elapsed: Duration) -> Point {
    latencies.sort_unstable();
    let pct =
        |p: f64| latencies.get(((latencies.len() as f64 * p) as usize).min(latencies.len().saturating_sub(1))).copied();
    Point {
        events_per_s: latencies.len() as f64 / elapsed.as_secs_f64(),
        p50_us: pct(0.50).unwrap_or(0) as u64,
        p99_us: pct(0.99).unwrap_or(0) as u64,
    }
}

/// The baseline: writers hand records of the stored size to one thread that
/// copies everything queued into one buffer, writes it with one `write` and
/// one `fdatasync`, then acknowledges. No encoding, index or checksum.
pub(crate) async fn raw_group_commit(path: &Path, writers: usize, record: usize, run: Duration) -> Result<Point> {
    let file = std::fs::OpenOptions::new().create(true).truncate(true).read(true).write(true).open(path)?;
    let (tx, rx) = mpsc::channel::<(Vec<u8>, oneshot::Sender<()>)>();
    let syncer = std::thread::spawn(move || -> std::io::Result<()> {
        let mut offset = 0u64;
        let mut buf = Vec::new();
        while let Ok(first) = rx.recv() {
            let mut acks = vec![first];
            while let Ok(more) = rx.try_recv() {
                acks.push(more);
            }
            buf.clear();
            for (record, _) in &acks {
                buf.extend_from_slice(record);
            }
            file.write_all_at(&buf, offset)?;
            file.sync_data()?;
            offset += buf.len() as u64;
            for (_, ack) in acks {
                let _ = ack.send(());
            }
        }
        Ok(())
    });
    let started = Instant::now();
    let deadline = started + run;
    let mut tasks = Vec::new();
    for _ in 0..writers {
        let tx = tx.clone();
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            while Instant::now() < deadline {
                let t = Instant::now();
                let (ack, done) = oneshot::channel();
                if tx.send((vec![0xAB; record], ack)).is_err() {
                    break;
                }
                if done.await.is_err() {
                    break;
                }
                latencies.push(t.elapsed().as_micros() as u32);
            }
            latencies
        }));
    }
    drop(tx);
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await?);
    }
    let elapsed = started.elapsed();
    syncer.join().map_err(|_| anyhow::anyhow!("syncer panicked"))??;
    Ok(summarize(all, elapsed))
}

async fn file_log_appends(dir: &Path, writers: usize, event_bytes: usize, run: Duration) -> Result<Point> {
    let log = Arc::new(FileLog::open(dir, config())?);
    let point = log_appends(log.clone(), writers, event_bytes, run).await?;
    log.close();
    Ok(point)
}

/// `writers` loops appending one event each to a stream of their own
/// until `run` is over.
async fn log_appends(log: Arc<dyn EventLog>, writers: usize, event_bytes: usize, run: Duration) -> Result<Point> {
    let payload = bytes::Bytes::from(vec![0x5Au8; event_bytes]);
    let started = Instant::now();
    let deadline = started + run;
    let mut tasks = Vec::new();
    for w in 0..writers {
        let log = log.clone();
        let payload = payload.clone();
        tasks.push(tokio::spawn(async move {
            let stream = format!("writer-{w}");
            let mut latencies = Vec::new();
            // Ids from a counter: the client's id generation (a getrandom
            // call per UUIDv7) is not what is measured here.
            let mut id = (u128::from(std::process::id()) << 96) | ((w as u128) << 64);
            while Instant::now() < deadline {
                let t = Instant::now();
                id += 1;
                let event = NewEvent {
                    id: uuid::Uuid::from_u128(id),
                    event_type: "BenchAppended".into(),
                    schema_version: 1,
                    tenant_id: None,
                    correlation_id: None,
                    causation_id: None,
                    payload: payload.clone(),
                    sealed_fields: Vec::new(),
                };
                log.append(&stream, ExpectedVersion::Any, vec![event]).await?;
                latencies.push(t.elapsed().as_micros() as u32);
            }
            anyhow::Ok(latencies)
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await??);
    }
    Ok(summarize(all, started.elapsed()))
}

/// Bytes one event of `event_bytes` payload occupies in a segment, so the
/// baseline writes as many bytes per event as the log does.
fn stored_record_len(event_bytes: usize) -> usize {
    use prost::Message;
    let event = NewEvent::new("BenchAppended", vec![0u8; event_bytes]);
    let stored = event.to_stored("writer-1000", 100_000, 10_000_000, 1_800_000_000_000_000);
    let frame = proto::log::Frame {
        group_start: 1 << 20,
        chain: vec![0; 32].into(),
        body: Some(proto::log::frame::Body::Batch(proto::log::Batch {
            entries: vec![proto::log::Entry {
                kind: Some(proto::log::entry::Kind::Event(stored.encode_to_vec().into())),
            }],
        })),
    };
    let mut out = Vec::new();
    eventlog::file::format::encode_frame(&frame, &mut out)
}

async fn log_append(
    dir: &Path,
    run: Duration,
    writer_counts: &[usize],
    event_bytes: usize,
    postgres: bool,
) -> Result<()> {
    if writer_counts.is_empty() || writer_counts.contains(&0) {
        bail!("--writers needs positive counts");
    }
    // A throw-away PostgreSQL cluster on the same disk (fsync on,
    // synchronous_commit on: every acknowledged append is durable).
    let pg = if postgres {
        let started = tokio::task::block_in_place(|| pgtest::Cluster::start_in(dir));
        Some(started.context("--postgres: no PostgreSQL found (initdb and postgres: PYPES_PG_BIN, pg_config, PATH)")?)
    } else {
        None
    };
    let record = stored_record_len(event_bytes);
    println!(
        "# log-append: {event_bytes}-byte payloads ({record} bytes per stored frame), one event per append, {:.1}s per point, dir {}",
        run.as_secs_f64(),
        dir.display()
    );
    for (i, &writers) in writer_counts.iter().enumerate() {
        // Interleave baseline and log per point so both see the same disk.
        let raw = raw_group_commit(&dir.join(format!("raw-{i}.bin")), writers, record, run).await?;
        let log_dir = dir.join(format!("log-{i}"));
        let log = file_log_appends(&log_dir, writers, event_bytes, run).await?;
        std::fs::remove_dir_all(&log_dir).ok();
        std::fs::remove_file(dir.join(format!("raw-{i}.bin"))).ok();
        println!(
            "BENCH log_append writers={writers} events_per_s={:.0} raw_events_per_s={:.0} ratio={:.2} p50_us={} p99_us={}",
            log.events_per_s,
            raw.events_per_s,
            log.events_per_s / raw.events_per_s,
            log.p50_us,
            log.p99_us
        );
        println!("# raw baseline writers={writers}: p50_us={} p99_us={}", raw.p50_us, raw.p99_us);
        if let Some(pg) = &pg {
            let url = tokio::task::block_in_place(|| pg.fresh_database());
            let pg_log = Arc::new(eventlog_postgres::PgLog::open(&url, Arc::new(eventlog::SystemClock)).await?);
            let p = log_appends(pg_log, writers, event_bytes, run).await?;
            println!(
                "BENCH log_append_postgres writers={writers} events_per_s={:.0} p50_us={} p99_us={} file_events_per_s={:.0} file_to_postgres={:.1}",
                p.events_per_s,
                p.p50_us,
                p.p99_us,
                log.events_per_s,
                log.events_per_s / p.events_per_s
            );
        }
    }
    Ok(())
}

async fn log_read(dir: &Path, events: u64, event_bytes: usize, streams: u64, per_batch: u64) -> Result<()> {
    let log_dir = dir.join("log");
    let log = Arc::new(FileLog::open(&log_dir, config())?);
    let started = Instant::now();
    let payload = bytes::Bytes::from(vec![0x33u8; event_bytes]);
    // Fill with concurrent appends (writing speed is not measured here).
    let batches = events.div_ceil(per_batch);
    let fillers = if per_batch == 1 { 512 } else { 4 };
    let mut tasks = Vec::new();
    for t in 0..fillers {
        let log = log.clone();
        let payload = payload.clone();
        tasks.push(tokio::spawn(async move {
            let mut b = t;
            while b < batches {
                let n = per_batch.min(events - b * per_batch);
                let stream = format!("stream-{}", b % streams.max(1));
                let batch = (0..n).map(|_| NewEvent::new("Filled", payload.clone())).collect();
                log.append(&stream, ExpectedVersion::Any, batch).await?;
                b += fillers;
            }
            anyhow::Ok(())
        }));
    }
    for t in tasks {
        t.await??;
    }
    let fill = started.elapsed();
    let size: u64 = std::fs::read_dir(log_dir.join("segments"))?
        .map(|e| e.map(|e| e.metadata().map(|m| m.len()).unwrap_or(0)).unwrap_or(0))
        .sum();
    println!(
        "# log-read: wrote {events} events ({:.0} MB, {per_batch} per append) in {:.1}s",
        size as f64 / 1e6,
        fill.as_secs_f64()
    );

    let started = Instant::now();
    let mut from = 0;
    let mut read = 0u64;
    let filter = EventFilter::all();
    loop {
        let page = log.read_all(from, 1000, &filter).await?;
        read += page.events.len() as u64;
        if page.events.is_empty() {
            break;
        }
        from = page.next_position;
    }
    let all_rate = read as f64 / started.elapsed().as_secs_f64();
    if read != events {
        bail!("read {read} events, expected {events}");
    }

    let started = Instant::now();
    let mut sub = subscribe_all(
        log.clone(),
        SubscribeFrom::Start,
        EventFilter::all(),
        SubscriptionOptions { page_size: 1000, ..Default::default() },
    );
    let mut seen = 0u64;
    loop {
        match sub.next().await? {
            SubscriptionMessage::Event(_) => seen += 1,
            SubscriptionMessage::CaughtUp { .. } => break,
            SubscriptionMessage::FellBehind { .. } => {}
        }
    }
    let catchup_rate = seen as f64 / started.elapsed().as_secs_f64();
    log.close();
    drop(log);

    // Open in a fresh process so its memory is the index's, not the filler's.
    let exe = std::env::current_exe()?;
    let out = std::process::Command::new(exe).arg("log-open").arg(&log_dir).output().context("running log-open")?;
    if !out.status.success() {
        bail!("log-open failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    let line = String::from_utf8_lossy(&out.stdout);
    let field = |name: &str| -> String {
        line.split_whitespace().find_map(|f| f.strip_prefix(&format!("{name}="))).unwrap_or("?").to_owned()
    };
    println!(
        "BENCH log_read events={events} all_read_events_per_s={all_rate:.0} catchup_events_per_s={catchup_rate:.0} open_ms={} open_rss_mb={}",
        field("open_ms"),
        field("rss_mb")
    );
    Ok(())
}

/// A comma-separated list of counts; empty means none.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Counts(Vec<usize>);

fn counts(text: &str) -> Result<Counts, String> {
    if text.trim().is_empty() {
        return Ok(Counts(Vec::new()));
    }
    text.split(',')
        .map(|n| n.trim().parse::<usize>().map_err(|_| format!("{n:?} is not a count (e.g. 1,4,16; '' for none)")))
        .collect::<Result<Vec<_>, _>>()
        .map(Counts)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_empty_readers_list_means_no_read_workload() {
        assert_eq!(counts(""), Ok(Counts(Vec::new())));
        assert_eq!(counts("1, 4,16"), Ok(Counts(vec![1, 4, 16])));
        assert!(counts("1,x").unwrap_err().contains("\"x\""));
        let cli = Cli::try_parse_from(["loadgen", "peers", "--readers", ""]).expect("--readers '' is accepted");
        let Command::Peers { readers, .. } = cli.command else { panic!("not peers") };
        assert!(readers.0.is_empty());
    }
}
