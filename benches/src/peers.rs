//! `loadgen peers`: pypes' event log side by side with the event stores its
//! users would pick instead, on this machine, at equal durability (every
//! acknowledged append fsync'd), with the same workload, in one run, the
//! systems alternating round by round. Each point prints a `BENCH` line;
//! the whole run (machine, configuration, every round) goes to a JSON file
//! from which `benches/report.py` makes the table in docs/benchmarks.md.
//!
//! Systems (each skipped with a printed reason when it cannot run):
//! - `pypes_file`: the embedded file log, appends to the chosen stream;
//! - `postgres_table`: one `events` table with a unique (stream, version),
//!   appended as Message DB does (one function call per append: a per-stream
//!   advisory lock, the next version, one INSERT), `synchronous_commit = on`,
//!   on a throw-away cluster on the same disk; 64 connections at most;
//! - `python_eventsourcing`: the Python `eventsourcing` library on SQLite
//!   (WAL, synchronous=FULL) with its AES cipher, one writer (the library
//!   serialises saves), through `benches/peers/eventsourcing_bench.py` in
//!   the virtualenv `benches/peers/install.sh` makes.
//!
//! Workloads: `append`, 256-byte events, one per append, to one of
//! `streams` streams chosen uniformly or Zipf-skewed (s = 1) by a seeded
//! generator, from 1, 4, 16 and 256 concurrent writers; `read`, whole
//! streams (of `events_per_stream` events) by 1, 4 and 16 readers; and
//! `mixed70`, 70 % whole-stream reads and 30 % appends by 16 clients.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use eventlog::file::FileLog;
use eventlog::{EventLog, ExpectedVersion, NewEvent};
use hdrhistogram::Histogram;

pub(crate) use crate::peers_common::{Appender, Options, Round, histogram, median, round_of};

/// A seeded xorshift generator (the same streams in every run).
pub(crate) struct Rng(pub(crate) u64);

impl Rng {
    pub(crate) fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// Picks stream indexes uniformly or by Zipf's law (s = 1).
#[derive(Clone)]
enum Picker {
    Uniform(usize),
    Zipf(Arc<Vec<f64>>),
}

impl Picker {
    fn new(distribution: &str, streams: usize) -> Result<Self> {
        match distribution {
            "uniform" => Ok(Picker::Uniform(streams)),
            "zipf" => {
                let mut cdf = Vec::with_capacity(streams);
                let mut sum = 0.0;
                for k in 1..=streams {
                    sum += 1.0 / k as f64;
                    cdf.push(sum);
                }
                for c in &mut cdf {
                    *c /= sum;
                }
                Ok(Picker::Zipf(Arc::new(cdf)))
            }
            other => anyhow::bail!("--distributions: {other:?}; \"uniform\" or \"zipf\""),
        }
    }

    fn pick(&self, rng: &mut Rng) -> usize {
        match self {
            Picker::Uniform(n) => (rng.next() % *n as u64) as usize,
            Picker::Zipf(cdf) => {
                let u = rng.unit();
                cdf.partition_point(|c| *c < u).min(cdf.len() - 1)
            }
        }
    }
}

struct FileAppender(Arc<FileLog>);

impl Appender for FileAppender {
    fn append(&self, _writer: usize, stream: usize, payload: &[u8]) -> eventlog::BoxFuture<'_, Result<()>> {
        let event = NewEvent::new("Posted", payload.to_vec());
        Box::pin(async move {
            self.0.append(&format!("session-{stream}"), ExpectedVersion::Any, vec![event]).await?;
            Ok(())
        })
    }

    fn read(&self, _reader: usize, stream: usize) -> eventlog::BoxFuture<'_, Result<usize>> {
        Box::pin(async move {
            let events = self
                .0
                .read_stream(
                    &format!("session-{stream}"),
                    eventlog::ReadFrom::Start,
                    eventlog::Direction::Forward,
                    100_000,
                )
                .await?;
            Ok(events.len())
        })
    }

    fn seed(&self, streams: usize, per_stream: usize, payload: &[u8]) -> eventlog::BoxFuture<'_, Result<()>> {
        let payload = payload.to_vec();
        Box::pin(async move {
            for s in 0..streams {
                let events = (0..per_stream).map(|_| NewEvent::new("Posted", payload.clone())).collect();
                self.0.append(&format!("session-{s}"), ExpectedVersion::Any, events).await?;
            }
            Ok(())
        })
    }
}

/// The events table in the pattern Marten and Message DB use.
struct TableAppender {
    clients: Vec<tokio_postgres::Client>,
}

const TABLE_SCHEMA: &str = "
DROP TABLE IF EXISTS events;
CREATE TABLE events (
    global_position bigserial PRIMARY KEY,
    stream_id text NOT NULL,
    version bigint NOT NULL,
    type text NOT NULL,
    data bytea NOT NULL,
    recorded_at timestamptz NOT NULL DEFAULT now(),
    UNIQUE (stream_id, version)
);
CREATE OR REPLACE FUNCTION write_event(s text, t text, d bytea) RETURNS bigint AS $$
DECLARE v bigint;
BEGIN
    PERFORM pg_advisory_xact_lock(hashtextextended(s, 0));
    SELECT coalesce(max(version) + 1, 0) INTO v FROM events WHERE stream_id = s;
    INSERT INTO events (stream_id, version, type, data) VALUES (s, v, t, d);
    RETURN v;
END $$ LANGUAGE plpgsql;
";

impl TableAppender {
    async fn connect(url: &str, connections: usize) -> Result<Self> {
        let mut clients = Vec::with_capacity(connections);
        for _ in 0..connections {
            let (client, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls).await?;
            tokio::spawn(conn);
            clients.push(client);
        }
        let sync: String = clients[0].query_one("SHOW synchronous_commit", &[]).await?.get(0);
        let fsync: String = clients[0].query_one("SHOW fsync", &[]).await?.get(0);
        anyhow::ensure!(sync == "on" && fsync == "on", "postgres durability: synchronous_commit={sync} fsync={fsync}");
        Ok(Self { clients })
    }
}

impl Appender for TableAppender {
    fn append(&self, writer: usize, stream: usize, payload: &[u8]) -> eventlog::BoxFuture<'_, Result<()>> {
        let client = &self.clients[writer % self.clients.len()];
        let (stream, payload) = (format!("session-{stream}"), payload.to_vec());
        Box::pin(async move {
            client.query_one("SELECT write_event($1, 'Posted', $2)", &[&stream, &payload]).await?;
            Ok(())
        })
    }

    fn read(&self, reader: usize, stream: usize) -> eventlog::BoxFuture<'_, Result<usize>> {
        let client = &self.clients[reader % self.clients.len()];
        let stream = format!("session-{stream}");
        Box::pin(async move {
            let rows = client
                .query("SELECT version, data FROM events WHERE stream_id = $1 ORDER BY version", &[&stream])
                .await?;
            Ok(rows.len())
        })
    }

    fn seed(&self, streams: usize, per_stream: usize, payload: &[u8]) -> eventlog::BoxFuture<'_, Result<()>> {
        let payload = payload.to_vec();
        Box::pin(async move {
            self.clients[0]
                .execute(
                    "INSERT INTO events (stream_id, version, type, data)
                     SELECT 'session-' || s, v, 'Posted', $3
                     FROM generate_series(0, $1 - 1) s, generate_series(0, $2 - 1) v ORDER BY s, v",
                    &[&(streams as i32), &(per_stream as i32), &payload],
                )
                .await?;
            Ok(())
        })
    }
}

/// `writers` loops, each appending to streams its seeded picker chooses,
/// for `warmup` then `run`; latencies of the measured part only.
async fn drive(appender: Arc<dyn Appender>, o: &Options, writers: usize, picker: &Picker) -> Result<Round> {
    drive_mix(appender, o, writers, picker, 0).await
}

/// `clients` loops; each operation is a whole-stream read with
/// probability `read_percent`/100, else an append. Events/s counts events
/// appended plus events read.
async fn drive_mix(
    appender: Arc<dyn Appender>,
    o: &Options,
    writers: usize,
    picker: &Picker,
    read_percent: u64,
) -> Result<Round> {
    let warm_until = Instant::now() + Duration::from_secs_f64(o.warmup);
    let payload: Arc<[u8]> = (0..256u32).map(|i| i as u8).collect::<Vec<u8>>().into();
    let mut tasks = Vec::with_capacity(writers);
    let start = warm_until;
    let end = start + Duration::from_secs_f64(o.seconds);
    for w in 0..writers {
        let (appender, picker, payload) = (appender.clone(), picker.clone(), payload.clone());
        let mut rng = Rng(o.seed ^ (w as u64 + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15));
        tasks.push(tokio::spawn(async move {
            let mut h = histogram()?;
            let mut counted = 0u64;
            loop {
                let now = Instant::now();
                if now >= end {
                    return Ok::<_, anyhow::Error>((h, counted));
                }
                let stream = picker.pick(&mut rng);
                let events = if rng.next() % 100 < read_percent {
                    appender.read(w, stream).await? as u64
                } else {
                    appender.append(w, stream, &payload).await?;
                    1
                };
                if now >= start {
                    h.record((now.elapsed().as_micros() as u64).max(1))?;
                    counted += events;
                }
            }
        }));
    }
    let mut all = histogram()?;
    let mut events = 0;
    for t in tasks {
        let (h, n) = t.await??;
        all.add(h)?;
        events += n;
    }
    let mut round = round_of(&all, Duration::from_secs_f64(o.seconds));
    round.events_per_s = events as f64 / o.seconds;
    Ok(round)
}

/// The Python peer: one round through the script; `batch` aggregates per
/// save (one durable transaction), "single" mode when 1.
fn python_round(python: &Path, dir: &Path, seconds: f64, batch: usize) -> Result<Round> {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("peers/eventsourcing_bench.py");
    let out = std::process::Command::new(python)
        .arg(&script)
        .arg(dir)
        .arg(seconds.to_string())
        .arg(if batch == 1 { "single" } else { "batched" })
        .arg(batch.to_string())
        .output()
        .with_context(|| format!("running {}", script.display()))?;
    anyhow::ensure!(out.status.success(), "{}: {}", script.display(), String::from_utf8_lossy(&out.stderr));
    let line = String::from_utf8_lossy(&out.stdout).to_string();
    let field = |name: &str| -> Result<f64> {
        line.split_whitespace()
            .find_map(|w| w.strip_prefix(name))
            .and_then(|v| v.parse().ok())
            .with_context(|| format!("no {name} in {line:?}"))
    };
    anyhow::ensure!(line.contains("synchronous=FULL"), "SQLite is not at synchronous=FULL: {line}");
    Ok(Round {
        events_per_s: field("events_per_s=")?,
        p50_us: field("p50_us=")? as u64,
        p95_us: field("p95_us=")? as u64,
        p99_us: field("p99_us=")? as u64,
        p999_us: field("p999_us=")? as u64,
    })
}

/// What this machine is, for the record.
pub fn machine(dir: &Path) -> String {
    let read = |p: &str| std::fs::read_to_string(p).unwrap_or_default();
    let cpu = read("/proc/cpuinfo")
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .map_or_else(|| "unknown".to_string(), |v| v.trim_start_matches([' ', '\t', ':']).trim().to_string());
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let memory_kb: u64 = read("/proc/meminfo")
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0);
    let kernel = read("/proc/sys/kernel/osrelease").trim().to_string();
    // The filesystem under `dir`: the longest mount point that prefixes it.
    let canonical = dir.canonicalize().unwrap_or_else(|_| dir.to_path_buf());
    let fs = read("/proc/mounts")
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.len() > 2 && canonical.starts_with(f[1])).then(|| (f[1].len(), format!("{} on {}", f[2], f[1])))
        })
        .max()
        .map_or_else(|| "unknown".to_string(), |(_, s)| s);
    format!(
        "{{\"cpu\": {cpu:?}, \"cores\": {cores}, \"memory_gib\": {:.1}, \"kernel\": {kernel:?}, \"filesystem\": {fs:?}}}",
        memory_kb as f64 / (1 << 20) as f64
    )
}

pub(crate) fn round_json(r: &Round) -> String {
    format!(
        "{{\"events_per_s\": {:.1}, \"p50_us\": {}, \"p95_us\": {}, \"p99_us\": {}, \"p999_us\": {}}}",
        r.events_per_s, r.p50_us, r.p95_us, r.p99_us, r.p999_us
    )
}

/// The systems of one workload, in report order; `pypes_file` first (the
/// ratios are against it), `pypes_grpc` second (UmaDB's gRPC ratio is
/// against it).
const SYSTEMS: [&str; 7] = [
    "pypes_file",
    "pypes_grpc",
    "umadb",
    "postgres_table",
    "python_eventsourcing",
    "python_eventsourcing_batched",
    "tonic_echo",
];

fn empty_results() -> Vec<(&'static str, Vec<Round>)> {
    SYSTEMS.iter().map(|s| (*s, Vec::new())).collect()
}

/// The peers that could start, with the reasons of those that could not.
struct Peers {
    cluster: Option<pgtest::Cluster>,
    table_url: Option<String>,
    python: Option<PathBuf>,
    umadb: Option<PathBuf>,
    grpc: bool,
}

fn skipped(system: &str, why: impl std::fmt::Display) {
    println!("# {system} skipped: {why}");
}

impl Peers {
    fn find(o: &Options, work: &Path) -> Self {
        let cluster = pgtest::Cluster::start_in(work);
        let table_url = match &cluster {
            Some(pg) => Some(pg.fresh_database()),
            None => {
                skipped("postgres_table", "PostgreSQL not found");
                None
            }
        };
        let python = o.python.clone().filter(|p| {
            let ok = p.is_file();
            if !ok {
                skipped(
                    "python_eventsourcing",
                    format!("{} is not a file (run benches/peers/install.sh)", p.display()),
                );
            }
            ok
        });
        let umadb = o.umadb.clone().filter(|p| {
            let ok = p.is_file();
            if !ok {
                skipped("umadb", format!("{} is not a file (run benches/peers/install.sh)", p.display()));
            }
            ok
        });
        let grpc = o.grpc
            && match std::env::current_exe().map(|e| e.with_file_name("pypes")) {
                Ok(p) if p.exists() => true,
                _ => {
                    skipped("pypes_grpc", "no `pypes` binary next to loadgen (cargo build --release -p server)");
                    false
                }
            };
        Self { cluster, table_url, python, umadb, grpc }
    }
}

pub async fn run(o: Options) -> Result<()> {
    std::fs::create_dir_all(&o.dir)?;
    let work = tempfile::Builder::new().prefix("peers-").tempdir_in(&o.dir)?;
    let machine = machine(work.path());
    println!(
        "# peers: 256-byte events, one per append, {} streams, {:.1} s warm-up, {} rounds of {:.1} s, seed {}",
        o.streams, o.warmup, o.rounds, o.seconds, o.seed
    );
    println!("# machine: {machine}");
    let peers = Peers::find(&o, work.path());
    let mut points = String::new();
    // pypes over gRPC: one server for all the append rounds, with a Session
    // per stream (made, and its content key with its first message, before
    // anything is measured).
    let api = if peers.grpc && !o.writers.is_empty() {
        let started = Instant::now();
        let api = crate::grpc_peers::PypesGrpc::start(&work.path().join("pypes-append"), o.streams).await?;
        println!("# pypes_grpc: {} Sessions ready in {:.1} s", o.streams, started.elapsed().as_secs_f64());
        Some(Arc::new(api))
    } else {
        None
    };
    // The ceiling of a unary gRPC call here: a bare echo, same clients.
    let echo = if api.is_some() { Some(Arc::new(crate::grpc_peers::Echo::start().await?)) } else { None };
    for distribution in &o.distributions {
        let picker = Picker::new(distribution, o.streams)?;
        for &writers in &o.writers {
            let mut results = empty_results();
            for round in 0..o.rounds {
                // pypes: a fresh log each round.
                let dir = work.path().join(format!("file-{distribution}-{writers}-{round}"));
                let log = Arc::new(FileLog::open(&dir, crate::config())?);
                let r = drive(Arc::new(FileAppender(log.clone())), &o, writers, &picker).await?;
                log.close();
                std::fs::remove_dir_all(&dir)?;
                results[0].1.push(r);
                if let Some(api) = &api {
                    results[1].1.push(drive(api.clone(), &o, writers, &picker).await?);
                }
                if let Some(echo) = &echo {
                    results[6].1.push(drive(echo.clone(), &o, writers, &picker).await?);
                }
                if let Some(binary) = &peers.umadb {
                    let dir = work.path().join(format!("uma-{distribution}-{writers}-{round}"));
                    let server = crate::grpc_peers::UmaDb::start(binary, &dir).await?;
                    results[2].1.push(drive(Arc::new(server.client().await?), &o, writers, &picker).await?);
                    drop(server);
                    std::fs::remove_dir_all(&dir)?;
                }
                if let Some(url) = &peers.table_url {
                    let setup = TableAppender::connect(url, 1).await?;
                    setup.clients[0].batch_execute(TABLE_SCHEMA).await?;
                    drop(setup);
                    let table = TableAppender::connect(url, writers.min(64)).await?;
                    results[3].1.push(drive(Arc::new(table), &o, writers, &picker).await?);
                }
                // The library saves one aggregate at a time (one writer);
                // "batched" gives it as many events per save as there are
                // writers, the most a group commit of pypes could gather.
                if let (Some(python), "uniform") = (&peers.python, distribution.as_str()) {
                    let slot = if writers == 1 { 4 } else { 5 };
                    results[slot].1.push(python_round(python, work.path(), o.seconds, writers)?);
                }
            }
            emit(&mut points, "append", distribution, writers, &results);
        }
    }
    drop((api, echo));
    // Reads of whole streams, and a 70/30 read/append mix, from a seeded
    // starting state (the same in every system).
    if !o.readers.is_empty() || o.mixed_clients > 0 {
        let payload: Vec<u8> = (0..256u32).map(|i| i as u8).collect();
        let seeded =
            Seeded::start(&peers, work.path(), "read", true, (o.read_streams, o.events_per_stream), &payload).await?;
        let picker = Picker::new("uniform", o.read_streams)?;
        let mut workloads: Vec<(&str, usize, u64)> = o.readers.iter().map(|&r| ("read", r, 100)).collect();
        if o.mixed_clients > 0 {
            workloads.push(("mixed70", o.mixed_clients, 70));
        }
        for (workload, clients, read_percent) in workloads {
            let mut results = empty_results();
            for _ in 0..o.rounds {
                for (i, system) in seeded.systems.iter().enumerate() {
                    if let Some(system) = system {
                        results[i].1.push(drive_mix(system.clone(), &o, clients, &picker, read_percent).await?);
                    }
                }
            }
            emit(&mut points, workload, "uniform", clients, &results);
        }
        seeded.close();
    }
    // Catch-up: one subscriber reads the whole log from the start.
    if o.catchup_events > 0 {
        catch_up(&o, &peers, work.path(), &mut points).await?;
    }
    // End users and agents talking in many Sessions, against a bare echo.
    if peers.grpc && o.messaging_sessions > 0 {
        let (talk, echo, talk_rounds, echo_rounds) =
            crate::grpc_peers::messaging(work.path(), o.messaging_sessions, o.messaging_clients, &o).await?;
        let ratio = talk.events_per_s / echo.events_per_s.max(f64::MIN_POSITIVE);
        for (system, m, rounds) in [("pypes_grpc", &talk, &talk_rounds), ("tonic_echo", &echo, &echo_rounds)] {
            let point = Point { workload: "messaging", system, distribution: "uniform", clients: o.messaging_clients };
            let extra = [("sessions", o.messaging_sessions as f64, 0), ("echo_ratio", ratio, 3)];
            point.emit(&mut points, m, rounds, &extra);
        }
    }
    let json = format!(
        "{{\n  \"run_at_unix\": {},\n  \"machine\": {machine},\n  \"config\": {{\"event_bytes\": 256, \"streams\": {}, \"warmup_s\": {}, \
         \"seconds\": {}, \"rounds\": {}, \"seed\": {}, \"read_streams\": {}, \"events_per_stream\": {}, \"catchup_events\": {}, \"messaging_sessions\": {}, \"messaging_clients\": {}, \
         \"postgres\": \"synchronous_commit=on, fsync=on, Message DB pattern, <=64 connections\", \
         \"eventsourcing\": \"SQLite WAL synchronous=FULL, AESCipher, 1 writer; batched: as many aggregates per save as pypes has writers\", \
         \"umadb\": \"umadb 0.7.8 server on loopback (fdatasync per commit), {} HTTP/2 connections, no append condition\", \
         \"pypes_grpc\": \"pypes serve on the file log, PostMessage to a Session per stream, ListMessages pages of 500, {} HTTP/2 connections\"}},\n  \"points\": [\n{points}\n  ]\n}}\n",
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs()),
        o.streams,
        o.warmup,
        o.seconds,
        o.rounds,
        o.seed,
        o.read_streams,
        o.events_per_stream,
        o.catchup_events,
        o.messaging_sessions,
        o.messaging_clients,
        crate::grpc_peers::CONNECTIONS,
        crate::grpc_peers::CONNECTIONS,
    );
    if let Some(parent) = o.out.parent() {
        std::fs::create_dir_all(parent)?;
    }
    std::fs::write(&o.out, json).with_context(|| format!("writing {}", o.out.display()))?;
    println!("# results: {}", o.out.display());
    drop(peers.cluster);
    Ok(())
}

/// Every system that can run, each seeded with the same streams (in
/// `SYSTEMS` order; `None` where a system is absent or has no such API).
struct Seeded {
    systems: Vec<Option<Arc<dyn Appender>>>,
    log: Arc<FileLog>,
    table_url: Option<String>,
    uma: Option<crate::grpc_peers::UmaDb>,
}

impl Seeded {
    /// `with_grpc`: also pypes through its API (a Session per stream).
    async fn start(
        peers: &Peers,
        work: &Path,
        name: &str,
        with_grpc: bool,
        (streams, per_stream): (usize, usize),
        payload: &[u8],
    ) -> Result<Self> {
        let mut systems: Vec<Option<Arc<dyn Appender>>> = SYSTEMS.iter().map(|_| None).collect();
        let log = Arc::new(FileLog::open(work.join(format!("file-{name}")), crate::config())?);
        let file: Arc<dyn Appender> = Arc::new(FileAppender(log.clone()));
        file.seed(streams, per_stream, payload).await?;
        systems[0] = Some(file);
        if peers.grpc && with_grpc {
            let started = Instant::now();
            let api = crate::grpc_peers::PypesGrpc::start(&work.join(format!("pypes-{name}")), streams).await?;
            // `start` posted one message per Session already.
            if per_stream > 1 {
                api.seed(streams, per_stream - 1, payload).await?;
            }
            println!(
                "# pypes_grpc: {streams} Sessions of {per_stream} messages in {:.1} s",
                started.elapsed().as_secs_f64()
            );
            systems[1] = Some(Arc::new(api));
        }
        let uma = match &peers.umadb {
            Some(binary) => {
                let server = crate::grpc_peers::UmaDb::start(binary, &work.join(format!("uma-{name}"))).await?;
                let client = server.client().await?;
                client.seed(streams, per_stream, payload).await?;
                systems[2] = Some(Arc::new(client));
                Some(server)
            }
            None => None,
        };
        if let Some(url) = &peers.table_url {
            let setup = TableAppender::connect(url, 1).await?;
            setup.clients[0].batch_execute(TABLE_SCHEMA).await?;
            setup.seed(streams, per_stream, payload).await?;
            setup.clients[0].batch_execute("VACUUM ANALYZE events").await?;
            systems[3] = Some(Arc::new(TableAppender::connect(url, 64).await?));
        }
        Ok(Self { systems, log, table_url: peers.table_url.clone(), uma })
    }

    fn close(self) {
        self.log.close();
    }
}

/// A subscriber that starts at the beginning of a log of
/// `o.catchup_events` events (100 per stream) and reads to its end, in
/// pages of 1,000, the way a projection catches up: the file log's
/// `read_all`, UmaDB's `Read` of everything, and the table in
/// `global_position` order (keyset pages). pypes' gRPC API has no
/// whole-log read (its projections run inside the server).
async fn catch_up(o: &Options, peers: &Peers, work: &Path, points: &mut String) -> Result<()> {
    let payload: Vec<u8> = (0..256u32).map(|i| i as u8).collect();
    let per_stream = 100;
    let streams = o.catchup_events.div_ceil(per_stream);
    let total = streams * per_stream;
    let started = Instant::now();
    let seeded = Seeded::start(peers, work, "catchup", false, (streams, per_stream), &payload).await?;
    println!("# catch-up: {total} events seeded in every system in {:.1} s", started.elapsed().as_secs_f64());
    let mut results = empty_results();
    for _ in 0..o.rounds {
        let t = Instant::now();
        let mut from = 0;
        let mut n = 0usize;
        let filter = eventlog::EventFilter::all();
        let mut h = histogram()?;
        while n < total {
            let t0 = Instant::now();
            let page = seeded.log.read_all(from, 1000, &filter).await?;
            h.record((t0.elapsed().as_micros() as u64).max(1))?;
            anyhow::ensure!(!page.events.is_empty(), "pypes_file: the log ended at {n} of {total}");
            n += page.events.len();
            from = page.next_position;
        }
        results[0].1.push(caught_up(&h, n, t.elapsed()));
        if let Some(server) = &seeded.uma {
            let client = server.client().await?;
            let t = Instant::now();
            let n = client.read_count(0, None, 1000).await?;
            anyhow::ensure!(n == total, "umadb: read {n} of {total}");
            let h = histogram()?;
            results[2].1.push(caught_up(&h, n, t.elapsed()));
        }
        if let Some(url) = &seeded.table_url {
            let table = TableAppender::connect(url, 1).await?;
            let client = &table.clients[0];
            let t = Instant::now();
            let (mut after, mut n) = (0i64, 0usize);
            let mut h = histogram()?;
            loop {
                let t0 = Instant::now();
                let rows = client
                    .query(
                        "SELECT global_position, stream_id, version, type, data FROM events \
                         WHERE global_position > $1 ORDER BY global_position LIMIT 1000",
                        &[&after],
                    )
                    .await?;
                h.record((t0.elapsed().as_micros() as u64).max(1))?;
                let Some(last) = rows.last() else { break };
                after = last.get(0);
                n += rows.len();
            }
            anyhow::ensure!(n == total, "postgres_table: read {n} of {total}");
            results[3].1.push(caught_up(&h, n, t.elapsed()));
        }
    }
    emit(points, "catchup", "all", 1, &results);
    seeded.close();
    Ok(())
}

/// A catch-up round: events/s over the whole read; the percentiles are of
/// the page reads (UmaDB streams its pages: none recorded).
fn caught_up(pages: &Histogram<u64>, events: usize, took: Duration) -> Round {
    let mut r = round_of(pages, took);
    r.events_per_s = events as f64 / took.as_secs_f64();
    r
}

/// Prints a point's BENCH lines and adds it to the JSON. `pypes_ratio` is
/// pypes' file log over the system; for UmaDB (pypes' gRPC peer) the line
/// also gives `grpc_ratio` (pypes over gRPC ÷ UmaDB) and `grpc_p99_ratio`
/// (pypes' p99 over gRPC ÷ UmaDB's).
fn emit(points: &mut String, workload: &str, distribution: &str, writers: usize, results: &[(&str, Vec<Round>)]) {
    let pypes = median(&results[0].1);
    let grpc = (!results[1].1.is_empty()).then(|| median(&results[1].1));
    for (system, rounds) in results {
        if rounds.is_empty() {
            continue;
        }
        let m = median(rounds);
        let mut extra = vec![("pypes_ratio", pypes.events_per_s / m.events_per_s.max(f64::MIN_POSITIVE), 3)];
        if let (Some(g), "umadb") = (&grpc, *system) {
            extra.push(("grpc_ratio", g.events_per_s / m.events_per_s.max(f64::MIN_POSITIVE), 3));
            extra.push(("grpc_p99_ratio", g.p99_us as f64 / m.p99_us.max(1) as f64, 3));
        }
        Point { workload, system, distribution, clients: writers }.emit(points, &m, rounds, &extra);
    }
}

/// One figure: a system on a workload.
struct Point<'a> {
    workload: &'a str,
    system: &'a str,
    distribution: &'a str,
    clients: usize,
}

impl Point<'_> {
    /// Prints its `BENCH` line and adds it to the JSON `points`, with the
    /// median `m` of `rounds` and `extra` figures (name, value, decimals).
    fn emit(&self, points: &mut String, m: &Round, rounds: &[Round], extra: &[(&str, f64, usize)]) {
        let Point { workload, system, distribution, clients } = self;
        let text: String = extra.iter().map(|(k, v, d)| format!(" {k}={v:.0$}", (*d).min(2))).collect();
        println!(
            "BENCH peers workload={workload} system={system} distribution={distribution} clients={clients} \
             events_per_s={:.0} p50_us={} p95_us={} p99_us={} p999_us={}{text} rounds={}",
            m.events_per_s,
            m.p50_us,
            m.p95_us,
            m.p99_us,
            m.p999_us,
            rounds.len()
        );
        let json: String = extra.iter().map(|(k, v, d)| format!(", \"{k}\": {v:.0$}", *d)).collect();
        let all: Vec<String> = rounds.iter().map(round_json).collect();
        let _ = write!(
            points,
            "{}    {{\"workload\": \"{workload}\", \"system\": \"{system}\", \"distribution\": \"{distribution}\", \
             \"writers\": {clients}, \"median\": {}{json}, \"rounds\": [{}]}}",
            if points.is_empty() { "" } else { ",\n" },
            round_json(m),
            all.join(", ")
        );
    }
}
