//! The conformance suite every `EventLog` backend runs (quickwit's
//! `metastore_test_suite!` idea). A backend's test file calls
//! `eventlog::conformance_tests!(make)` where `make: Fn(Arc<dyn Clock>) ->
//! BoxFuture<'static, Fixture>` builds a fresh, empty log.

use std::any::Any;
use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use uuid::Uuid;

use crate::{
    BoxFuture, Clock, CurrentVersion, DeleteMode, Direction, EventFilter, EventLog, ExpectedVersion, LogError,
    ManualClock, NewEvent, ReadFrom, StreamAppend, StreamMetadata, SubscribeFrom, SubscriptionMessage,
    SubscriptionOptions, subscribe_all,
};

/// A fresh log plus whatever must live as long as it (a temp dir, a server).
pub struct Fixture {
    pub log: Arc<dyn EventLog>,
    pub guard: Box<dyn Any + Send>,
}

/// Builds a fresh, empty log that stamps events with the given clock.
pub type MakeLog = Arc<dyn Fn(Arc<dyn Clock>) -> BoxFuture<'static, Fixture> + Send + Sync>;

/// Generates one `#[tokio::test]` per contract point for a backend.
#[macro_export]
macro_rules! conformance_tests {
    // For a backend whose server cannot run here: every test is generated
    // `#[ignore]`d with `reason` (listed as skipped, never as passed).
    (ignored: $reason:literal, $make:expr) => {
        $crate::conformance_tests!(@list ignore = $reason, $make);
    };
    ($make:expr) => {
        $crate::conformance_tests!(@list allow(unused_attributes), $make);
    };
    (@list $attr:meta, $make:expr) => {
        $crate::conformance_tests!(@each $attr, $make;
            append_then_read_forward_and_backward,
            expected_version_rules,
            idempotent_append_by_event_id,
            multi_stream_append_is_atomic,
            read_all_with_filters_and_paging,
            racing_writers_on_one_stream,
            subscription_catches_up_then_goes_live,
            subscription_from_checkpoint_and_falling_behind,
            metadata_limits_hide_events,
            soft_delete_then_write_again,
            hard_delete_is_final,
            scavenge_removes_hidden_events,
            bad_input_is_refused_with_clear_errors
        );
    };
    (@each $attr:meta, $make:expr; $($name:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            #[$attr]
            async fn $name() {
                $crate::conformance::$name($make).await;
            }
        )*
    };
}

const T0: i64 = 1_800_000_000_000_000;

fn ev(kind: &str, payload: &str) -> NewEvent {
    NewEvent::new(kind, payload.as_bytes().to_vec())
}

async fn fresh(make: &MakeLog) -> (Fixture, ManualClock) {
    let clock = ManualClock::new(T0);
    (make(Arc::new(clock.clone())).await, clock)
}

fn payloads(events: &[crate::RecordedEvent]) -> Vec<String> {
    events.iter().map(|e| String::from_utf8_lossy(&e.event.payload).into_owned()).collect()
}

pub async fn append_then_read_forward_and_backward(make: MakeLog) {
    let (f, _) = fresh(&make).await;
    let log = &f.log;
    let events: Vec<NewEvent> = (0..5).map(|i| ev("Added", &format!("e{i}"))).collect();
    let r = log.append("s-1", ExpectedVersion::NoStream, events.clone()).await.unwrap();
    assert_eq!(r.next_expected_version, 4);
    assert_eq!((r.first_position, r.last_position), (0, 4));
    let r2 = log.append("s-2", ExpectedVersion::Any, vec![ev("Other", "x")]).await.unwrap();
    assert_eq!((r2.next_expected_version, r2.first_position), (0, 5));
    assert_eq!(log.head(), 6);

    let all = log.read_stream("s-1", ReadFrom::Start, Direction::Forward, 100).await.unwrap();
    assert_eq!(payloads(&all), ["e0", "e1", "e2", "e3", "e4"]);
    for (i, e) in all.iter().enumerate() {
        assert_eq!(e.version, i as u64);
        assert_eq!(e.position, i as u64);
        assert_eq!(&*e.stream, "s-1");
        assert_eq!(e.event, events[i], "the event reads back exactly as written");
        assert_eq!(e.recorded_at_micros, T0);
    }
    let mid = log.read_stream("s-1", ReadFrom::Version(2), Direction::Forward, 2).await.unwrap();
    assert_eq!(payloads(&mid), ["e2", "e3"]);
    let back = log.read_stream("s-1", ReadFrom::End, Direction::Backward, 3).await.unwrap();
    assert_eq!(payloads(&back), ["e4", "e3", "e2"]);
    let back_from = log.read_stream("s-1", ReadFrom::Version(1), Direction::Backward, 10).await.unwrap();
    assert_eq!(payloads(&back_from), ["e1", "e0"]);
    let last = log.read_stream("s-1", ReadFrom::End, Direction::Forward, 10).await.unwrap();
    assert_eq!(payloads(&last), ["e4"]);
    let past = log.read_stream("s-1", ReadFrom::Version(99), Direction::Forward, 10).await.unwrap();
    assert!(past.is_empty());
    assert!(matches!(
        log.read_stream("nope", ReadFrom::Start, Direction::Forward, 10).await,
        Err(LogError::StreamNotFound { stream }) if stream == "nope"
    ));
    let sealed = NewEvent {
        tenant_id: Some(Uuid::now_v7()),
        correlation_id: Some(Uuid::now_v7()),
        causation_id: Some(Uuid::now_v7()),
        schema_version: 3,
        sealed_fields: vec![crate::SealedField {
            field: "email".into(),
            key_id: Uuid::now_v7().as_bytes().to_vec().into(),
            nonce: vec![1; 12].into(),
            ciphertext: vec![9; 40].into(),
        }],
        ..ev("Registered", "clear")
    };
    log.append("s-3", ExpectedVersion::Any, vec![sealed.clone()]).await.unwrap();
    let back = log.read_stream("s-3", ReadFrom::Start, Direction::Forward, 1).await.unwrap();
    assert_eq!(back[0].event, sealed, "envelope fields round-trip");
}

pub async fn expected_version_rules(make: MakeLog) {
    let (f, _) = fresh(&make).await;
    let log = &f.log;
    let err = log.append("s", ExpectedVersion::StreamExists, vec![ev("A", "")]).await.unwrap_err();
    assert!(matches!(err, LogError::WrongExpectedVersion { actual: CurrentVersion::NoStream, .. }), "{err}");
    let err = log.append("s", ExpectedVersion::Exact(0), vec![ev("A", "")]).await.unwrap_err();
    assert!(matches!(err, LogError::WrongExpectedVersion { expected: ExpectedVersion::Exact(0), .. }));
    log.append("s", ExpectedVersion::NoStream, vec![ev("A", "")]).await.unwrap();
    let err = log.append("s", ExpectedVersion::NoStream, vec![ev("A", "")]).await.unwrap_err();
    match err {
        LogError::WrongExpectedVersion { stream, expected, actual } => {
            assert_eq!(stream, "s");
            assert_eq!(expected, ExpectedVersion::NoStream);
            assert_eq!(actual, CurrentVersion::Version(0));
        }
        other => panic!("expected a version conflict, got {other}"),
    }
    log.append("s", ExpectedVersion::Exact(0), vec![ev("A", ""), ev("A", "")]).await.unwrap();
    let err = log.append("s", ExpectedVersion::Exact(1), vec![ev("A", "")]).await.unwrap_err();
    assert!(matches!(err, LogError::WrongExpectedVersion { actual: CurrentVersion::Version(2), .. }));
    assert!(err.to_string().contains("expected version 1"), "{err}");
    log.append("s", ExpectedVersion::StreamExists, vec![ev("A", "")]).await.unwrap();
    let r = log.append("s", ExpectedVersion::Any, vec![ev("A", "")]).await.unwrap();
    assert_eq!(r.next_expected_version, 4);
    let n = log.read_stream("s", ReadFrom::Start, Direction::Forward, 100).await.unwrap().len();
    assert_eq!(n, 5, "refused appends wrote nothing");
}

pub async fn idempotent_append_by_event_id(make: MakeLog) {
    let (f, _) = fresh(&make).await;
    let log = &f.log;
    let batch = vec![ev("A", "1"), ev("A", "2")];
    let first = log.append("s", ExpectedVersion::NoStream, batch.clone()).await.unwrap();
    log.append("other", ExpectedVersion::Any, vec![ev("B", "x")]).await.unwrap();
    // A retry of the same ids and bytes returns the original result, even
    // with an expectation that no longer holds.
    let again = log.append("s", ExpectedVersion::NoStream, batch.clone()).await.unwrap();
    assert_eq!(again, first);
    let again_any = log.append("s", ExpectedVersion::Any, batch.clone()).await.unwrap();
    assert_eq!(again_any, first);
    assert_eq!(log.head(), 3, "retries wrote nothing");
    // The same id with other bytes is an error.
    let mut changed = batch.clone();
    changed[1].payload = b"tampered".to_vec().into();
    let err = log.append("s", ExpectedVersion::Any, changed).await.unwrap_err();
    assert!(matches!(err, LogError::EventIdReused { id, .. } if id == batch[1].id), "{err}");
    // The same ids to another stream is an error.
    let err = log.append("s2", ExpectedVersion::Any, batch.clone()).await.unwrap_err();
    assert!(matches!(err, LogError::EventIdReused { .. }), "{err}");
    // Old ids mixed with new ones is an error, and writes nothing.
    let err = log.append("s", ExpectedVersion::Any, vec![batch[0].clone(), ev("A", "3")]).await.unwrap_err();
    assert!(matches!(err, LogError::EventIdReused { .. }), "{err}");
    let err = log.append("s", ExpectedVersion::Any, vec![ev("A", "3"), batch[0].clone()]).await.unwrap_err();
    assert!(matches!(err, LogError::EventIdReused { .. }), "{err}");
    assert_eq!(log.head(), 3);
    // Retrying a subset that is exactly the original's prefix is a repeat.
    let r = log.append("s", ExpectedVersion::Any, vec![batch[0].clone()]).await.unwrap();
    assert_eq!((r.first_position, r.next_expected_version), (0, 0));
}

pub async fn multi_stream_append_is_atomic(make: MakeLog) {
    let (f, _) = fresh(&make).await;
    let log = &f.log;
    log.append("b", ExpectedVersion::Any, vec![ev("B", "b0")]).await.unwrap();
    let err = log
        .append_multi(vec![
            StreamAppend { stream: "a".into(), expected: ExpectedVersion::NoStream, events: vec![ev("A", "a0")] },
            StreamAppend { stream: "b".into(), expected: ExpectedVersion::NoStream, events: vec![ev("B", "b1")] },
        ])
        .await
        .unwrap_err();
    assert!(matches!(&err, LogError::WrongExpectedVersion { stream, .. } if stream == "b"), "{err}");
    assert!(matches!(
        log.read_stream("a", ReadFrom::Start, Direction::Forward, 10).await,
        Err(LogError::StreamNotFound { .. })
    ));
    assert_eq!(log.head(), 1, "nothing of the refused multi-stream append was written");
    let results = log
        .append_multi(vec![
            StreamAppend {
                stream: "a".into(),
                expected: ExpectedVersion::NoStream,
                events: vec![ev("A", "a0"), ev("A", "a1")],
            },
            StreamAppend { stream: "b".into(), expected: ExpectedVersion::Exact(0), events: vec![ev("B", "b1")] },
        ])
        .await
        .unwrap();
    assert_eq!(results.len(), 2);
    assert_eq!((results[0].first_position, results[0].last_position, results[0].next_expected_version), (1, 2, 1));
    assert_eq!((results[1].first_position, results[1].next_expected_version), (3, 1));
    let page = log.read_all(0, 100, &EventFilter::all()).await.unwrap();
    assert_eq!(payloads(&page.events), ["b0", "a0", "a1", "b1"]);
}

pub async fn read_all_with_filters_and_paging(make: MakeLog) {
    let (f, _) = fresh(&make).await;
    let log = &f.log;
    for i in 0..30 {
        let stream = if i % 3 == 0 { format!("session-{}", i % 2) } else { format!("pype-{}", i % 2) };
        let kind = if i % 2 == 0 { "Even" } else { "Odd" };
        log.append(&stream, ExpectedVersion::Any, vec![ev(kind, &i.to_string())]).await.unwrap();
    }
    let mut seen = Vec::new();
    let mut from = 0;
    loop {
        let page = log.read_all(from, 7, &EventFilter::all()).await.unwrap();
        assert_eq!(page.head, 30);
        assert!(page.next_position > from || page.events.is_empty());
        seen.extend(page.events.iter().map(|e| e.position));
        if page.events.len() < 7 {
            assert_eq!(page.next_position, 30);
            break;
        }
        from = page.next_position;
    }
    assert_eq!(seen, (0..30).collect::<Vec<_>>(), "paging visits every position once, in order");
    let sessions = log.read_all(0, 100, &EventFilter::stream_prefix("session-")).await.unwrap();
    assert_eq!(sessions.events.len(), 10);
    assert!(sessions.events.iter().all(|e| e.stream.starts_with("session-")));
    let odd = log.read_all(0, 100, &EventFilter::event_type("Odd")).await.unwrap();
    assert_eq!(odd.events.len(), 15);
    let both = EventFilter { stream_prefixes: vec!["pype-".into()], event_types: vec!["Even".into()] };
    let page = log.read_all(0, 100, &both).await.unwrap();
    assert!(page.events.iter().all(|e| e.stream.starts_with("pype-") && e.event_type() == "Even"));
    assert_eq!(page.events.len(), 10);
    // A filter that matches little still moves the cursor past what it read.
    let none = log.read_all(0, 5, &EventFilter::stream_prefix("nothing-")).await.unwrap();
    assert!(none.events.is_empty());
    assert_eq!(none.next_position, 30);
    let from_middle = log.read_all(17, 3, &EventFilter::all()).await.unwrap();
    assert_eq!(from_middle.events.iter().map(|e| e.position).collect::<Vec<_>>(), [17, 18, 19]);
    assert_eq!(from_middle.next_position, 20);
    let past_head = log.read_all(31, 3, &EventFilter::all()).await.unwrap();
    assert!(past_head.events.is_empty());
}

pub async fn racing_writers_on_one_stream(make: MakeLog) {
    let (f, _) = fresh(&make).await;
    let log = f.log.clone();
    const WRITERS: usize = 64;
    const ROUNDS: usize = 8;
    let mut tasks = Vec::new();
    for w in 0..WRITERS {
        let log = log.clone();
        tasks.push(tokio::spawn(async move {
            let mut wins = Vec::new();
            let mut expected = ExpectedVersion::NoStream;
            let mut attempts = 0;
            while wins.len() < ROUNDS && attempts < 10_000 {
                attempts += 1;
                let event = ev("Raced", &format!("w{w}-{}", wins.len()));
                match log.append("race", expected, vec![event.clone()]).await {
                    Ok(r) => {
                        wins.push((r.next_expected_version, event.id));
                        expected = ExpectedVersion::Exact(r.next_expected_version);
                    }
                    Err(LogError::WrongExpectedVersion { actual, .. }) => {
                        expected = match actual {
                            CurrentVersion::NoStream => ExpectedVersion::NoStream,
                            CurrentVersion::Version(v) => ExpectedVersion::Exact(v),
                        };
                    }
                    Err(e) => panic!("unexpected error: {e}"),
                }
                tokio::task::yield_now().await;
            }
            wins
        }));
    }
    let mut by_version = BTreeMap::new();
    for t in tasks {
        for (version, id) in t.await.unwrap() {
            assert!(by_version.insert(version, id).is_none(), "two writers won version {version}");
        }
    }
    let total = WRITERS * ROUNDS;
    assert_eq!(by_version.len(), total);
    let events = log.read_stream("race", ReadFrom::Start, Direction::Forward, total + 10).await.unwrap();
    assert_eq!(events.len(), total, "no event lost or duplicated");
    for e in &events {
        assert_eq!(by_version[&e.version], e.id(), "version {} holds the winner's event", e.version);
    }
}

async fn collect_subscription(
    log: Arc<dyn EventLog>,
    from: SubscribeFrom,
    filter: EventFilter,
    until: usize,
) -> (Vec<crate::RecordedEvent>, usize) {
    let mut sub = subscribe_all(
        log,
        from,
        filter,
        SubscriptionOptions { page_size: 16, fall_behind_threshold: u64::MAX, ..Default::default() },
    );
    let mut events = Vec::new();
    let mut caught_up = 0;
    while events.len() < until {
        match tokio::time::timeout(Duration::from_secs(30), sub.next()).await.expect("subscription stalled").unwrap() {
            SubscriptionMessage::Event(e) => events.push(e),
            SubscriptionMessage::CaughtUp { .. } => caught_up += 1,
            SubscriptionMessage::FellBehind { .. } => {}
        }
    }
    (events, caught_up)
}

pub async fn subscription_catches_up_then_goes_live(make: MakeLog) {
    let (f, _) = fresh(&make).await;
    let log = f.log.clone();
    for i in 0..50 {
        log.append(&format!("pre-{}", i % 5), ExpectedVersion::Any, vec![ev("Pre", &i.to_string())]).await.unwrap();
    }
    const WRITERS: usize = 8;
    const PER_WRITER: usize = 50;
    let total = 50 + WRITERS * PER_WRITER;
    let subscriber = tokio::spawn(collect_subscription(log.clone(), SubscribeFrom::Start, EventFilter::all(), total));
    let filtered = tokio::spawn(collect_subscription(
        log.clone(),
        SubscribeFrom::Start,
        EventFilter::stream_prefix("live-3"),
        PER_WRITER,
    ));
    let mut writers = Vec::new();
    for w in 0..WRITERS {
        let log = log.clone();
        writers.push(tokio::spawn(async move {
            for i in 0..PER_WRITER {
                log.append(&format!("live-{w}"), ExpectedVersion::Any, vec![ev("Live", &i.to_string())]).await.unwrap();
                if i % 10 == 0 {
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
            }
        }));
    }
    for w in writers {
        w.await.unwrap();
    }
    let (events, caught_up) = subscriber.await.unwrap();
    assert!(caught_up >= 1, "the subscription reported catching up");
    let positions: Vec<u64> = events.iter().map(|e| e.position).collect();
    assert_eq!(positions, (0..total as u64).collect::<Vec<_>>(), "every event exactly once, in order");
    let (only3, _) = filtered.await.unwrap();
    assert_eq!(only3.len(), PER_WRITER);
    assert!(only3.iter().all(|e| &*e.stream == "live-3"));
    assert_eq!(payloads(&only3), (0..PER_WRITER).map(|i| i.to_string()).collect::<Vec<_>>());
}

pub async fn subscription_from_checkpoint_and_falling_behind(make: MakeLog) {
    let (f, _) = fresh(&make).await;
    let log = f.log.clone();
    for i in 0..10 {
        log.append("s", ExpectedVersion::Any, vec![ev("E", &i.to_string())]).await.unwrap();
    }
    let mut sub = subscribe_all(
        log.clone(),
        SubscribeFrom::After(6),
        EventFilter::all(),
        SubscriptionOptions { page_size: 2, fall_behind_threshold: 5, ..Default::default() },
    );
    let mut got = Vec::new();
    loop {
        match sub.next().await.unwrap() {
            SubscriptionMessage::Event(e) => got.push(e.position),
            SubscriptionMessage::CaughtUp { position } => {
                assert_eq!(position, 10);
                break;
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(got, [7, 8, 9], "resumes after the checkpoint");
    // While live, a burst larger than the threshold is reported.
    for i in 0..20 {
        log.append("s", ExpectedVersion::Any, vec![ev("E", &i.to_string())]).await.unwrap();
    }
    let mut saw_behind = false;
    let mut positions = Vec::new();
    while positions.len() < 20 {
        match sub.next().await.unwrap() {
            SubscriptionMessage::FellBehind { position, head } => {
                assert_eq!((position, head), (10, 30));
                saw_behind = true;
            }
            SubscriptionMessage::Event(e) => positions.push(e.position),
            SubscriptionMessage::CaughtUp { .. } => {}
        }
    }
    assert!(saw_behind);
    assert_eq!(positions, (10..30).collect::<Vec<_>>());
    assert!(matches!(sub.next().await.unwrap(), SubscriptionMessage::CaughtUp { position: 30 }));
}

pub async fn metadata_limits_hide_events(make: MakeLog) {
    let (f, clock) = fresh(&make).await;
    let log = &f.log;
    for i in 0..10 {
        log.append("mc", ExpectedVersion::Any, vec![ev("E", &i.to_string())]).await.unwrap();
    }
    assert_eq!(log.stream_metadata("mc").await.unwrap(), StreamMetadata::default());
    let meta = StreamMetadata { max_count: Some(3), ..Default::default() };
    log.set_stream_metadata("mc", meta).await.unwrap();
    assert_eq!(log.stream_metadata("mc").await.unwrap(), meta);
    let read = log.read_stream("mc", ReadFrom::Start, Direction::Forward, 100).await.unwrap();
    assert_eq!(payloads(&read), ["7", "8", "9"]);
    let back = log.read_stream("mc", ReadFrom::End, Direction::Backward, 100).await.unwrap();
    assert_eq!(payloads(&back), ["9", "8", "7"]);

    for i in 0..6 {
        log.append("tb", ExpectedVersion::Any, vec![ev("E", &i.to_string())]).await.unwrap();
    }
    log.set_stream_metadata("tb", StreamMetadata { truncate_before: Some(4), ..Default::default() }).await.unwrap();
    let read = log.read_stream("tb", ReadFrom::Start, Direction::Forward, 100).await.unwrap();
    assert_eq!(payloads(&read), ["4", "5"]);

    log.append("age", ExpectedVersion::Any, vec![ev("E", "old")]).await.unwrap();
    clock.advance_secs(100);
    log.append("age", ExpectedVersion::Any, vec![ev("E", "new")]).await.unwrap();
    log.set_stream_metadata("age", StreamMetadata { max_age_secs: Some(50), ..Default::default() }).await.unwrap();
    let read = log.read_stream("age", ReadFrom::Start, Direction::Forward, 100).await.unwrap();
    assert_eq!(payloads(&read), ["new"]);
    let all = log.read_all(0, 1000, &EventFilter::stream_prefix("age")).await.unwrap();
    assert_eq!(payloads(&all.events), ["new"], "$all hides expired events too");
    // Metadata may be set before the stream exists.
    log.set_stream_metadata("later", StreamMetadata { max_count: Some(1), ..Default::default() }).await.unwrap();
    log.append("later", ExpectedVersion::NoStream, vec![ev("E", "a"), ev("E", "b")]).await.unwrap();
    let read = log.read_stream("later", ReadFrom::Start, Direction::Forward, 100).await.unwrap();
    assert_eq!(payloads(&read), ["b"]);
}

pub async fn soft_delete_then_write_again(make: MakeLog) {
    let (f, _) = fresh(&make).await;
    let log = &f.log;
    log.append("s", ExpectedVersion::NoStream, vec![ev("E", "0"), ev("E", "1")]).await.unwrap();
    let err = log.delete_stream("s", ExpectedVersion::Exact(0), DeleteMode::Soft).await.unwrap_err();
    assert!(matches!(err, LogError::WrongExpectedVersion { .. }));
    log.delete_stream("s", ExpectedVersion::Exact(1), DeleteMode::Soft).await.unwrap();
    assert!(matches!(
        log.read_stream("s", ReadFrom::Start, Direction::Forward, 10).await,
        Err(LogError::StreamNotFound { .. })
    ));
    let all = log.read_all(0, 100, &EventFilter::all()).await.unwrap();
    assert!(all.events.is_empty(), "soft-deleted events are hidden from $all");
    let r = log.append("s", ExpectedVersion::NoStream, vec![ev("E", "2")]).await.unwrap();
    assert_eq!(r.next_expected_version, 2, "versions continue after a soft delete");
    let read = log.read_stream("s", ReadFrom::Start, Direction::Forward, 10).await.unwrap();
    assert_eq!(payloads(&read), ["2"]);
    assert_eq!(read[0].version, 2);
}

pub async fn hard_delete_is_final(make: MakeLog) {
    let (f, _) = fresh(&make).await;
    let log = &f.log;
    log.append("h", ExpectedVersion::NoStream, vec![ev("E", "0")]).await.unwrap();
    log.delete_stream("h", ExpectedVersion::Any, DeleteMode::Hard).await.unwrap();
    let deleted = |r: Result<(), LogError>| matches!(r, Err(LogError::StreamDeleted { stream }) if stream == "h");
    assert!(deleted(log.read_stream("h", ReadFrom::Start, Direction::Forward, 10).await.map(|_| ())));
    assert!(deleted(log.append("h", ExpectedVersion::Any, vec![ev("E", "1")]).await.map(|_| ())));
    assert!(deleted(log.append("h", ExpectedVersion::NoStream, vec![ev("E", "1")]).await.map(|_| ())));
    assert!(deleted(log.set_stream_metadata("h", StreamMetadata::default()).await));
    assert!(deleted(log.delete_stream("h", ExpectedVersion::Any, DeleteMode::Soft).await));
    assert!(deleted(log.stream_metadata("h").await.map(|_| ())));
    let err = log.append("h", ExpectedVersion::Any, vec![ev("E", "1")]).await.unwrap_err();
    assert!(err.to_string().contains("deleted"), "{err}");
    assert!(log.read_all(0, 10, &EventFilter::all()).await.unwrap().events.is_empty());
}

pub async fn scavenge_removes_hidden_events(make: MakeLog) {
    let (f, clock) = fresh(&make).await;
    let log = &f.log;
    log.append("keep", ExpectedVersion::Any, vec![ev("E", "keep-0")]).await.unwrap();
    log.append("soft", ExpectedVersion::Any, vec![ev("E", "soft-0"), ev("E", "soft-1")]).await.unwrap();
    log.append("hard", ExpectedVersion::Any, vec![ev("E", "hard-0")]).await.unwrap();
    log.append("count", ExpectedVersion::Any, (0..4).map(|i| ev("E", &format!("count-{i}"))).collect()).await.unwrap();
    log.append("age", ExpectedVersion::Any, vec![ev("E", "age-old")]).await.unwrap();
    clock.advance_secs(120);
    log.append("age", ExpectedVersion::Any, vec![ev("E", "age-new")]).await.unwrap();
    log.append("keep", ExpectedVersion::Any, vec![ev("E", "keep-1")]).await.unwrap();
    log.delete_stream("soft", ExpectedVersion::Any, DeleteMode::Soft).await.unwrap();
    log.delete_stream("hard", ExpectedVersion::Any, DeleteMode::Hard).await.unwrap();
    log.set_stream_metadata("count", StreamMetadata { max_count: Some(1), ..Default::default() }).await.unwrap();
    log.set_stream_metadata("age", StreamMetadata { max_age_secs: Some(60), ..Default::default() }).await.unwrap();
    let head = log.head();

    let report = log.scavenge().await.unwrap();
    assert_eq!(report.events_removed, 2 + 1 + 3 + 1, "{report:?}");
    assert_eq!(log.head(), head, "scavenging does not renumber");
    // Relaxing the limits after the scavenge cannot bring the bytes back.
    log.set_stream_metadata("count", StreamMetadata::default()).await.unwrap();
    log.set_stream_metadata("age", StreamMetadata::default()).await.unwrap();
    let all = log.read_all(0, 1000, &EventFilter::all()).await.unwrap();
    assert_eq!(payloads(&all.events), ["keep-0", "count-3", "age-new", "keep-1"]);
    let count = log.read_stream("count", ReadFrom::Start, Direction::Forward, 10).await.unwrap();
    assert_eq!(payloads(&count), ["count-3"]);
    let age = log.read_stream("age", ReadFrom::Start, Direction::Forward, 10).await.unwrap();
    assert_eq!(payloads(&age), ["age-new"]);
    // The log keeps working and numbering after a scavenge.
    let r = log.append("soft", ExpectedVersion::Exact(1), vec![ev("E", "soft-2")]).await.unwrap();
    assert_eq!((r.next_expected_version, r.first_position), (2, head));
    let again = log.scavenge().await.unwrap();
    assert_eq!(again.events_removed, 0, "nothing new to reclaim");
}

pub async fn bad_input_is_refused_with_clear_errors(make: MakeLog) {
    let (f, _) = fresh(&make).await;
    let log = &f.log;
    let e = log.append("", ExpectedVersion::Any, vec![ev("E", "")]).await.unwrap_err();
    assert!(matches!(e, LogError::InvalidStreamName { .. }) && e.to_string().contains("empty"), "{e}");
    let long = "x".repeat(crate::MAX_STREAM_NAME_LEN + 1);
    let e = log.append(&long, ExpectedVersion::Any, vec![ev("E", "")]).await.unwrap_err();
    assert!(e.to_string().contains("limit is 255"), "{e}");
    let e = log.append("$all", ExpectedVersion::Any, vec![ev("E", "")]).await.unwrap_err();
    assert!(e.to_string().contains("reserved"), "{e}");
    let e = log.append("a b", ExpectedVersion::Any, vec![ev("E", "")]).await.unwrap_err();
    assert!(e.is_invalid_argument(), "{e}");
    let e = log.append("s", ExpectedVersion::Any, vec![]).await.unwrap_err();
    assert!(e.to_string().contains("no events"), "{e}");
    let e = log.append("s", ExpectedVersion::Any, vec![ev("", "")]).await.unwrap_err();
    assert!(e.to_string().contains("event type must not be empty"), "{e}");
    let e =
        log.append("s", ExpectedVersion::Any, vec![ev("E", &"p".repeat(crate::MAX_EVENT_BYTES))]).await.unwrap_err();
    assert!(matches!(e, LogError::EventTooLarge { index: 0, .. }), "{e}");
    let dup = ev("E", "");
    let e = log.append("s", ExpectedVersion::Any, vec![dup.clone(), dup]).await.unwrap_err();
    assert!(e.to_string().contains("appears twice"), "{e}");
    let e = log.append("s", ExpectedVersion::Any, vec![NewEvent { id: Uuid::nil(), ..ev("E", "") }]).await.unwrap_err();
    assert!(e.to_string().contains("nil"), "{e}");
    let e =
        log.append("s", ExpectedVersion::Any, vec![NewEvent { schema_version: 0, ..ev("E", "") }]).await.unwrap_err();
    assert!(e.to_string().contains("schema version"), "{e}");
    let e =
        log.set_stream_metadata("s", StreamMetadata { max_count: Some(0), ..Default::default() }).await.unwrap_err();
    assert!(e.to_string().contains("max_count"), "{e}");
    let e = log.read_stream("", ReadFrom::Start, Direction::Forward, 1).await.unwrap_err();
    assert!(e.is_invalid_argument());
    let big: Vec<NewEvent> = (0..20).map(|_| ev("E", &"p".repeat(1_000_000))).collect();
    let e = log.append("s", ExpectedVersion::Any, big).await.unwrap_err();
    assert!(e.to_string().contains("limit is"), "{e}");
    assert_eq!(log.head(), 0, "nothing was written by refused input");
    // The log still works.
    log.append("s", ExpectedVersion::Any, vec![ev("E", "ok")]).await.unwrap();
    let ids: HashSet<_> =
        log.read_all(0, 10, &EventFilter::all()).await.unwrap().events.iter().map(|e| e.id()).collect();
    assert_eq!(ids.len(), 1);
}
