//! The event-log conformance suite on PostgreSQL (a throw-away cluster per
//! test, started with the machine's initdb and postgres), and two nodes
//! writing one database at once.

use std::collections::HashSet;
use std::sync::Arc;

use eventlog::conformance::{Fixture, MakeLog};
use eventlog::{Clock, Direction, EventFilter, EventLog, ExpectedVersion, LogError, NewEvent, ReadFrom, SystemClock};
use eventlog_postgres::PgLog;

/// Fresh logs, each in a new database of one cluster that lives as long as
/// the logs. Without PostgreSQL (and without PYPES_REQUIRE_POSTGRES) the
/// logs are in memory and the suite says it did not run.
fn make() -> MakeLog {
    let cluster = pgtest::Cluster::start().map(Arc::new);
    Arc::new(move |clock: Arc<dyn Clock>| {
        let cluster = cluster.clone();
        Box::pin(async move {
            match cluster {
                Some(pg) => {
                    let url = pg.fresh_database();
                    let log: Arc<dyn EventLog> = Arc::new(PgLog::open(&url, clock).await.unwrap());
                    Fixture { log, guard: Box::new(pg) }
                }
                None => Fixture { log: Arc::new(eventlog::mem::MemLog::with_clock(clock)), guard: Box::new(()) },
            }
        })
    })
}

eventlog::conformance_tests!(make());

/// Two nodes (two `PgLog`s on one database) append to the same streams at
/// once: the expected-version check in the database decides, nothing
/// acknowledged is lost or doubled, positions have no gaps, and each node
/// sees the other's commits live (LISTEN/NOTIFY).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_share_one_log() {
    let Some(pg) = pgtest::Cluster::start() else { return };
    let url = pg.fresh_database();
    let a = Arc::new(PgLog::open(&url, Arc::new(SystemClock)).await.unwrap());
    let b = Arc::new(PgLog::open(&url, Arc::new(SystemClock)).await.unwrap());
    let mut b_head = b.watch_head();
    let mut tasks = Vec::new();
    for (n, log) in [a.clone(), b.clone(), a.clone(), b.clone()].into_iter().enumerate() {
        tasks.push(tokio::spawn(async move {
            let mut acked = Vec::new();
            for i in 0..50 {
                let stream = format!("session-{}", i % 3);
                // Read the version, then append expecting it: a race with the
                // other writers, settled by the database.
                loop {
                    let last = log.read_stream(&stream, ReadFrom::End, Direction::Backward, 1).await;
                    let expected = match last {
                        Ok(v) if !v.is_empty() => ExpectedVersion::Exact(v[0].version),
                        _ => ExpectedVersion::NoStream,
                    };
                    let event = NewEvent::new("Posted", format!("{n}-{i}").into_bytes());
                    match log.append(&stream, expected, vec![event]).await {
                        Ok(r) => {
                            acked.push((stream.clone(), r.next_expected_version, format!("{n}-{i}")));
                            break;
                        }
                        Err(LogError::WrongExpectedVersion { .. }) => continue,
                        Err(e) => panic!("{e}"),
                    }
                }
            }
            acked
        }));
    }
    let mut acked = Vec::new();
    for t in tasks {
        acked.extend(t.await.unwrap());
    }
    assert_eq!(acked.len(), 200);
    // B saw A's commits without appending itself last.
    tokio::time::timeout(std::time::Duration::from_secs(5), b_head.wait_for(|h| *h == 200)).await.unwrap().unwrap();
    let all = a.read_all(0, 1000, &EventFilter::all()).await.unwrap();
    assert_eq!(all.events.len(), 200);
    assert_eq!(all.events.iter().map(|e| e.position).collect::<Vec<_>>(), (0..200).collect::<Vec<_>>(), "no gaps");
    let payloads: HashSet<_> =
        all.events.iter().map(|e| String::from_utf8_lossy(&e.event.payload).into_owned()).collect();
    assert_eq!(payloads.len(), 200, "nothing doubled");
    for (stream, version, payload) in &acked {
        let got = b.read_stream(stream, ReadFrom::Version(*version), Direction::Forward, 1).await.unwrap();
        assert_eq!(String::from_utf8_lossy(&got[0].event.payload), payload.as_str(), "{stream}@{version}");
    }
    for s in 0..3 {
        let events = a.read_stream(&format!("session-{s}"), ReadFrom::Start, Direction::Forward, 1000).await.unwrap();
        let versions: Vec<u64> = events.iter().map(|e| e.version).collect();
        assert_eq!(versions, (0..versions.len() as u64).collect::<Vec<_>>(), "each stream's versions are dense");
    }
}

#[tokio::test]
async fn an_unreachable_database_is_named_without_its_password() {
    let e = PgLog::open(
        "host=127.0.0.1 port=1 user=pypes password=hunter2 dbname=log connect_timeout=2",
        Arc::new(SystemClock),
    )
    .await
    .unwrap_err();
    let text = e.to_string();
    assert!(text.contains("event log database") && text.contains("port=1"), "{text}");
    assert!(!text.contains("hunter2"), "{text}");
}

/// A stream longer than one page of rows reads in pages, in both
/// directions, and hidden events are skipped, not counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn long_streams_read_in_pages() {
    use eventlog::StreamMetadata;
    let Some(pg) = pgtest::Cluster::start() else { return };
    let log = PgLog::open(&pg.fresh_database(), Arc::new(SystemClock)).await.unwrap();
    for chunk in 0..7 {
        let events = (0..100).map(|i| NewEvent::new("E", format!("{}", chunk * 100 + i).into_bytes())).collect();
        log.append("long", ExpectedVersion::Any, events).await.unwrap();
    }
    let versions = |events: Vec<eventlog::RecordedEvent>| events.iter().map(|e| e.version).collect::<Vec<_>>();
    let forward = log.read_stream("long", ReadFrom::Version(100), Direction::Forward, 1500).await.unwrap();
    assert_eq!(versions(forward), (100..700).collect::<Vec<_>>());
    let backward = log.read_stream("long", ReadFrom::End, Direction::Backward, 300).await.unwrap();
    assert_eq!(versions(backward), (400..700).rev().collect::<Vec<_>>());
    let all_back = log.read_stream("long", ReadFrom::End, Direction::Backward, 5000).await.unwrap();
    assert_eq!(all_back.len(), 700);
    assert_eq!(all_back.last().unwrap().version, 0);
    log.set_stream_metadata("long", StreamMetadata { max_count: Some(10), ..Default::default() }).await.unwrap();
    let last = log.read_stream("long", ReadFrom::Start, Direction::Forward, 5).await.unwrap();
    assert_eq!(versions(last), (690..695).collect::<Vec<_>>());
}

/// Appends that arrive together share one transaction (group commit) and
/// are decided one after the other in memory: a retry of an append of the
/// same group answers with the first result, a wrong expected version
/// fails alone, a later append sees what an earlier one of the group
/// wrote, and a retry that reuses an id for other content is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn appends_of_one_group_are_decided_in_order() {
    let Some(pg) = pgtest::Cluster::start() else { return };
    let url = pg.fresh_database();
    let log = Arc::new(PgLog::open(&url, Arc::new(SystemClock)).await.unwrap());
    for round in 0..20 {
        let (s1, s2) = (format!("a-{round}"), format!("b-{round}"));
        let x = NewEvent::new("X", b"x".to_vec());
        let mut other = x.clone();
        other.payload = b"not x".to_vec().into();
        let (first, retry, wrong, chained, reused) = tokio::join!(
            log.append(&s1, ExpectedVersion::NoStream, vec![x.clone()]),
            log.append(&s1, ExpectedVersion::NoStream, vec![x.clone()]),
            log.append(&s2, ExpectedVersion::Exact(5), vec![NewEvent::new("Y", b"y".to_vec())]),
            log.append(&s2, ExpectedVersion::Any, vec![NewEvent::new("Z", b"z".to_vec())]),
            log.append(&s1, ExpectedVersion::Any, vec![other]),
        );
        let first = first.unwrap();
        assert_eq!(retry.unwrap(), first, "a retry answers with the first result");
        assert!(matches!(wrong, Err(LogError::WrongExpectedVersion { .. })), "{wrong:?}");
        assert_eq!(chained.unwrap().next_expected_version, 0);
        assert!(matches!(reused, Err(LogError::EventIdReused { .. })), "{reused:?}");
        let events = log.read_stream(&s1, ReadFrom::Start, Direction::Forward, 10).await.unwrap();
        assert_eq!(events.len(), 1, "x is stored once");
    }
    let positions = pg.psql(&url, "SELECT count(*) = max(position) + 1 FROM pypes_log_events");
    assert_eq!(positions, "t", "gap-free positions");
}

/// Every connection of the log broken at once (as a failover or a
/// restarted server breaks them): the next calls connect again by
/// themselves, and the listener too (another node's commit goes live).
/// A log that reached position `p` and then finds the database's log
/// ending below it (a failover to a standby that lacked the last commits)
/// refuses appends instead of reusing positions.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broken_connections_are_made_again_and_a_log_behind_is_refused() {
    let Some(pg) = pgtest::Cluster::start() else { return };
    let url = pg.fresh_database();
    let (a, b) = (
        PgLog::open(&url, Arc::new(SystemClock)).await.unwrap(),
        PgLog::open(&url, Arc::new(SystemClock)).await.unwrap(),
    );
    a.append("s", ExpectedVersion::NoStream, vec![NewEvent::new("E", b"0".to_vec())]).await.unwrap();
    let db = url.split_whitespace().find_map(|w| w.strip_prefix("dbname=")).unwrap().to_string();
    let killed = pg.psql(
        &url,
        &format!("SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE datname = '{db}' AND pid <> pg_backend_pid()"),
    );
    assert_eq!(killed, "8", "four connections per log");
    // The first calls may still find a connection broken: they say so as
    // unreachable, never as anything else, and a retry goes through.
    let mut unreachable = 0;
    let mut version = 0;
    for i in 1..=3u8 {
        loop {
            match a.append("s", ExpectedVersion::Exact(version), vec![NewEvent::new("E", vec![i])]).await {
                Ok(r) => {
                    version = r.next_expected_version;
                    break;
                }
                Err(e) if e.is_unreachable() => unreachable += 1,
                Err(e) => panic!("{e}"),
            }
            assert!(unreachable < 10, "the appender never connected again");
        }
    }
    assert!(unreachable <= 1, "one failed append at most (the broken connection is noticed once): {unreachable}");
    assert_eq!(a.write_trouble(), None, "a commit that went through clears the trouble");
    let read = loop {
        match b.read_stream("s", ReadFrom::Start, Direction::Forward, 10).await {
            Ok(events) => break events,
            Err(e) if e.is_unreachable() => continue,
            Err(e) => panic!("{e}"),
        }
    };
    assert_eq!(read.len(), 4);
    // B's listener connected again: A's commits reach B's head.
    let mut head = b.watch_head();
    tokio::time::timeout(std::time::Duration::from_secs(5), head.wait_for(|h| *h == 4)).await.unwrap().unwrap();
    a.append("s", ExpectedVersion::Exact(version), vec![NewEvent::new("E", b"4".to_vec())]).await.unwrap();
    tokio::time::timeout(std::time::Duration::from_secs(5), head.wait_for(|h| *h == 5)).await.unwrap().unwrap();

    // The database loses its last two commits behind the logs' backs.
    pg.psql(&url, "DELETE FROM pypes_log_events WHERE position >= 3; UPDATE pypes_log_head SET next_position = 3; UPDATE pypes_log_streams SET next_version = 3");
    let e = a.append("t", ExpectedVersion::Any, vec![NewEvent::new("E", b"x".to_vec())]).await.unwrap_err();
    assert!(e.to_string().contains("committed events are missing") && e.to_string().contains("saw it reach 5"), "{e}");
    let all = a.read_all(0, 100, &EventFilter::all()).await.unwrap();
    assert_eq!(all.events.len(), 3, "nothing was written at the missing positions");
}
