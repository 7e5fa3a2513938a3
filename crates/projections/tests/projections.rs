//! The runner and the three projections over an in-memory log with
//! hand-built events: rebuild equals live, store failures at every event
//! leave view and checkpoint consistent, poison events stall and are
//! skipped on request, pause/resume, blue/green reset, erasure purge and
//! acknowledgement, analytics without subject ids and with small cells
//! suppressed.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use eventlog::mem::MemLog;
use eventlog::{EventFilter, EventLog, ExpectedVersion, NewEvent, RecordedEvent, SealedField};
use projections::analytics::{self, Granularity};
use projections::{
    ApplyError, Projection, Runner, RunnerConfig, RunnerState, ViewStore, WriteView, directory, rebuild_until, sessions,
};
use proto::Message;
use proto::events as pb;
use uuid::Uuid;

const T0: i64 = 1_795_996_800_000_000; // 2026-12-01T00:00:00Z

fn ev(event_type: &str, tenant: Uuid, payload: impl Message) -> NewEvent {
    let mut e = NewEvent::new(event_type, Bytes::from(payload.encode_to_vec()));
    e.tenant_id = Some(tenant);
    e
}

fn sealed(field: &str, text: &str) -> SealedField {
    // Stand-in ciphertext: the projections copy sealed fields verbatim.
    SealedField {
        field: field.into(),
        key_id: Bytes::from(vec![7u8; 16]),
        nonce: Bytes::from(vec![1u8; 12]),
        ciphertext: Bytes::from(text.as_bytes().iter().map(|b| b ^ 0x5a).collect::<Vec<u8>>()),
    }
}

struct World {
    log: Arc<dyn EventLog>,
    tenant: Uuid,
    pype: Uuid,
}

impl World {
    fn new() -> Self {
        Self { log: Arc::new(MemLog::new()), tenant: Uuid::now_v7(), pype: Uuid::now_v7() }
    }

    async fn append(&self, stream: String, events: Vec<NewEvent>) {
        self.log.append(&stream, ExpectedVersion::Any, events).await.unwrap();
    }

    fn session_stream(&self, s: Uuid) -> String {
        format!("session-{}-{s}", self.tenant)
    }

    async fn register(&self, subject: Uuid) {
        let mut e = ev(
            "SubjectRegistered",
            self.tenant,
            pb::SubjectRegistered {
                subject_id: Bytes::copy_from_slice(subject.as_bytes()),
                tenant_id: Bytes::copy_from_slice(self.tenant.as_bytes()),
                at_micros: T0,
            },
        );
        e.sealed_fields = vec![sealed("username", "canary-user"), sealed("email", "canary@example.com")];
        self.append(format!("subject-{}-{subject}", self.tenant), vec![e]).await;
    }

    /// A Session: start at `at`, an agent joins, `n` messages alternating
    /// end user / agent one minute apart, then closed by `reason`.
    async fn conversation(
        &self,
        session: Uuid,
        end_user: Uuid,
        agent: Uuid,
        at: i64,
        n: u64,
        reason: pb::ChangeReason,
    ) {
        let id = |u: Uuid| Bytes::copy_from_slice(u.as_bytes());
        let mut events = vec![
            ev(
                "SessionStarted",
                self.tenant,
                pb::SessionStarted {
                    session_id: id(session),
                    tenant_id: id(self.tenant),
                    pype_id: id(self.pype),
                    end_user_id: id(end_user),
                    timers: None,
                    at_micros: at,
                    ..Default::default()
                },
            ),
            ev(
                "ParticipantJoined",
                self.tenant,
                pb::ParticipantJoined {
                    participant_id: id(agent),
                    kind: pb::ParticipantKind::Agent as i32,
                    at_micros: at,
                },
            ),
        ];
        for seq in 1..=n {
            let (sender, kind) = if seq % 2 == 1 {
                (end_user, pb::ParticipantKind::EndUser)
            } else {
                (agent, pb::ParticipantKind::Agent)
            };
            let mut m = ev(
                "MessagePosted",
                self.tenant,
                pb::MessagePosted {
                    seq,
                    sender_id: id(sender),
                    sent_at_micros: at + seq as i64 * 60_000_000,
                    has_device: false,
                    sender_kind: kind as i32,
                    attachment_count: 0,
                },
            );
            m.sealed_fields = vec![sealed("body", &format!("canary body {seq}"))];
            events.push(m);
        }
        events.push(ev(
            "SessionClosed",
            self.tenant,
            pb::SessionStateChanged { reason: reason as i32, at_micros: at + (n as i64 + 1) * 60_000_000 },
        ));
        self.append(self.session_stream(session), events).await;
    }
}

/// `rebuild_until` blocks; tests call it from a multi-threaded runtime.
fn rebuild(
    p: &dyn Projection,
    store: &ViewStore,
    log: &Arc<dyn EventLog>,
    rt: &tokio::runtime::Handle,
    until: Option<i64>,
    page: usize,
    progress: &mut dyn FnMut(u64, u64),
) -> Result<Vec<proto::views::SkippedEvent>, projections::ViewError> {
    tokio::task::block_in_place(|| rebuild_until(p, store, log, rt, until, page, progress))
}

fn rt() -> tokio::runtime::Handle {
    tokio::runtime::Handle::current()
}

fn store(dir: &tempfile::TempDir, name: &str) -> Arc<ViewStore> {
    Arc::new(ViewStore::open(&dir.path().join(format!("{name}.redb"))).unwrap())
}

/// Every table of the serving generation, for comparisons.
fn dump(store: &ViewStore, tables: &[&str]) -> Vec<(String, projections::Rows)> {
    let view = store.read().unwrap().unwrap();
    tables.iter().map(|t| (t.to_string(), view.dump(t).unwrap())).collect()
}

const SESSION_TABLES: &[&str] = &["sessions", "msg_index", "by_pype", "by_end_user", "pypes", "acks"];
const ANALYTICS_TABLES: &[&str] = &["cells", "open", "acks"];
const DIRECTORY_TABLES: &[&str] = &["subjects", "acks"];
const CATALOG_TABLES: &[&str] = &["tenants", "pypes", "privacy", "erasures", "acks"];

async fn wait_until(what: &str, f: impl FnMut() -> bool) {
    wait_within(what, Duration::from_secs(5), f).await
}

/// For what takes longer: a runner's back-off after a failed write grows
/// to 10 s.
async fn wait_long(what: &str, f: impl FnMut() -> bool) {
    wait_within(what, Duration::from_secs(30), f).await
}

async fn wait_within(what: &str, within: Duration, mut f: impl FnMut() -> bool) {
    let started = std::time::Instant::now();
    while !f() {
        assert!(started.elapsed() < within, "timed out ({within:?}) waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn fast() -> RunnerConfig {
    RunnerConfig { page_size: 7, idle_poll: Duration::from_millis(20), disk_reserve: None }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rebuild_equals_live() {
    let w = World::new();
    let dir = tempfile::tempdir().unwrap();
    let mut runners = Vec::new();
    for p in projections::all() {
        let s = store(&dir, p.name());
        runners.push(Runner::start(p, s, w.log.clone(), fast(), rt()).unwrap());
    }
    // Events arrive while the runners run.
    let agent = Uuid::now_v7();
    for i in 0..12 {
        let user = Uuid::now_v7();
        w.register(user).await;
        let reason = if i % 3 == 0 { pb::ChangeReason::Timer } else { pb::ChangeReason::Api };
        w.conversation(Uuid::now_v7(), user, agent, T0 + i * 600_000_000, 4 + i as u64 % 3, reason).await;
        tokio::time::sleep(Duration::from_millis(3)).await;
    }
    let head = w.log.head();
    for r in &runners {
        wait_until("runners to catch up", || r.status().next_position >= head).await;
        assert_eq!(r.status().state, RunnerState::Live);
    }
    for (p, tables) in
        projections::all().into_iter().zip([SESSION_TABLES, DIRECTORY_TABLES, ANALYTICS_TABLES, CATALOG_TABLES])
    {
        let fresh = store(&dir, &format!("{}-rebuilt", p.name()));
        let skipped = rebuild(p.as_ref(), &fresh, &w.log, &rt(), None, 1000, &mut |_, _| {}).unwrap();
        assert!(skipped.is_empty());
        let live = runners.iter().find(|r| r.name() == p.name()).unwrap();
        let live_dump = dump(live.store(), tables);
        assert!(live_dump.iter().any(|(_, rows)| !rows.is_empty()), "{} built nothing", p.name());
        assert_eq!(live_dump, dump(&fresh, tables), "{}: rebuilt view differs from live", p.name());
    }
    for r in &runners {
        r.stop();
    }
}

/// Wraps a projection and fails with a store error at the `fail_at`-th
/// event it is given (counting across calls).
struct Flaky {
    inner: Arc<dyn Projection>,
    seen: AtomicUsize,
    fail_at: usize,
}

impl Projection for Flaky {
    fn name(&self) -> &'static str {
        self.inner.name()
    }
    fn version(&self) -> u32 {
        self.inner.version()
    }
    fn filter(&self) -> EventFilter {
        self.inner.filter()
    }
    fn apply(&self, w: &mut WriteView<'_>, e: &RecordedEvent) -> Result<(), ApplyError> {
        self.inner.apply(w, e)?;
        if self.seen.fetch_add(1, Ordering::SeqCst) + 1 == self.fail_at {
            return Err(ApplyError::Store(projections::ViewError::Store("injected failure".into())));
        }
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failure_at_any_event_leaves_view_and_checkpoint_consistent() {
    let w = World::new();
    let agent = Uuid::now_v7();
    for i in 0..3 {
        w.conversation(Uuid::now_v7(), Uuid::now_v7(), agent, T0 + i * 60_000_000, 3, pb::ChangeReason::Api).await;
    }
    let total = w.log.head() as usize;
    let dir = tempfile::tempdir().unwrap();
    let reference = store(&dir, "reference");
    rebuild(&sessions::SessionsProjection, &reference, &w.log, &rt(), None, 1000, &mut |_, _| {}).unwrap();
    let expected = dump(&reference, SESSION_TABLES);
    for fail_at in 1..=total {
        let s = store(&dir, &format!("flaky-{fail_at}"));
        let flaky = Flaky { inner: Arc::new(sessions::SessionsProjection), seen: AtomicUsize::new(0), fail_at };
        let err = rebuild(&flaky, &s, &w.log, &rt(), None, 4, &mut |_, _| {});
        assert!(err.is_err(), "failure at event {fail_at} was not reported");
        // What is committed is a prefix: the checkpoint's events, no more.
        let meta = s.generations().unwrap().0.unwrap();
        let prefix = store(&dir, &format!("prefix-{fail_at}"));
        let log_prefix: Arc<dyn EventLog> = Arc::new(MemLog::new());
        let page = w.log.read_all(0, meta.next_position as usize, &EventFilter::all()).await.unwrap();
        for e in page.events {
            log_prefix.append(&e.stream, ExpectedVersion::Any, vec![e.event]).await.unwrap();
        }
        rebuild(&sessions::SessionsProjection, &prefix, &log_prefix, &rt(), None, 1000, &mut |_, _| {}).unwrap();
        assert_eq!(dump(&s, SESSION_TABLES), dump(&prefix, SESSION_TABLES), "failure at event {fail_at}");
        // Resuming (the failure is gone) ends where a clean build ends.
        let ok =
            Flaky { inner: Arc::new(sessions::SessionsProjection), seen: AtomicUsize::new(0), fail_at: usize::MAX };
        rebuild(&ok, &s, &w.log, &rt(), None, 4, &mut |_, _| {}).unwrap();
        assert_eq!(dump(&s, SESSION_TABLES), expected, "resumed after a failure at event {fail_at}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poison_event_stalls_until_skipped_and_the_skip_is_recorded() {
    let w = World::new();
    let agent = Uuid::now_v7();
    let s1 = Uuid::now_v7();
    w.conversation(s1, Uuid::now_v7(), agent, T0, 2, pb::ChangeReason::Api).await;
    // Not a SessionStarted payload.
    let s2 = Uuid::now_v7();
    w.append(w.session_stream(s2), vec![NewEvent::new("SessionStarted", Bytes::from_static(&[0xff, 0xff, 0xff]))])
        .await;
    let bad_position = w.log.head() - 1;
    let s3 = Uuid::now_v7();
    w.conversation(s3, Uuid::now_v7(), agent, T0, 2, pb::ChangeReason::Api).await;
    let dir = tempfile::tempdir().unwrap();
    let r =
        Runner::start(Arc::new(sessions::SessionsProjection), store(&dir, "s"), w.log.clone(), fast(), rt()).unwrap();
    wait_until("stall", || matches!(r.status().state, RunnerState::Stalled { .. })).await;
    match r.status().state {
        RunnerState::Stalled { position, error } => {
            assert_eq!(position, bad_position);
            assert!(error.contains("SessionStarted"), "{error}");
        }
        other => panic!("{other:?}"),
    }
    // Everything before the poison event is applied; nothing after.
    assert_eq!(r.status().next_position, bad_position);
    {
        let view = r.store().read().unwrap().unwrap();
        assert!(sessions::get_session(&view, w.tenant, s1).unwrap().is_some());
        assert!(sessions::get_session(&view, w.tenant, s3).unwrap().is_none());
    }
    assert_eq!(r.skip().unwrap(), bad_position);
    let head = w.log.head();
    wait_until("catch up after skip", || r.status().next_position >= head).await;
    let view = r.store().read().unwrap().unwrap();
    assert!(sessions::get_session(&view, w.tenant, s3).unwrap().is_some());
    let skipped = r.store().skipped().unwrap();
    assert_eq!(skipped.len(), 1);
    assert_eq!(skipped[0].position, bad_position);
    assert!(r.skip().is_err(), "skip when not stalled must be refused");
    r.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pause_holds_the_checkpoint_and_resume_catches_up() {
    let w = World::new();
    let dir = tempfile::tempdir().unwrap();
    let r =
        Runner::start(Arc::new(analytics::AnalyticsProjection), store(&dir, "a"), w.log.clone(), fast(), rt()).unwrap();
    r.pause().unwrap();
    wait_until("paused", || r.status().state == RunnerState::Paused).await;
    w.conversation(Uuid::now_v7(), Uuid::now_v7(), Uuid::now_v7(), T0, 2, pb::ChangeReason::Api).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(r.status().next_position, 0);
    assert!(r.status().next_position < w.log.head(), "the view lags the log");
    r.resume().unwrap();
    let head = w.log.head();
    wait_until("resumed", || r.status().next_position >= head).await;
    assert_eq!(r.status().lag_positions, 0);
    r.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reset_rebuilds_beside_the_serving_generation_and_switches_whole() {
    let w = World::new();
    let agent = Uuid::now_v7();
    for i in 0..20 {
        w.conversation(Uuid::now_v7(), Uuid::now_v7(), agent, T0 + i, 3, pb::ChangeReason::Api).await;
    }
    let dir = tempfile::tempdir().unwrap();
    let s = store(&dir, "s");
    let r = Runner::start(Arc::new(sessions::SessionsProjection), s.clone(), w.log.clone(), fast(), rt()).unwrap();
    let head = w.log.head();
    wait_until("built", || r.status().next_position >= head).await;
    let before = dump(&s, SESSION_TABLES);
    let gen_before = r.status().serving_generation;
    r.reset();
    // While the build runs, every read sees a whole generation: the old
    // one until the switch, then the new one, never a partial one.
    let mut saw_building = false;
    for _ in 0..2000 {
        let st = r.status();
        saw_building |= st.building.is_some();
        assert_eq!(dump(&s, SESSION_TABLES), before, "a reader saw a partial view");
        if st.serving_generation != gen_before && st.building.is_none() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    assert!(r.status().serving_generation > gen_before, "reset never switched");
    // The old generation's tables are gone, and no step after the switch recreated them.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let old = format!("g{gen_before}/");
    let names = s.table_names().unwrap();
    assert!(names.iter().all(|n| !n.starts_with(&old)), "old generation left behind: {names:?}");
    assert!(saw_building || r.status().serving_generation > gen_before);
    assert_eq!(dump(&s, SESSION_TABLES), before);
    r.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn purge_removes_the_subjects_rows_and_every_projection_acknowledges() {
    let w = World::new();
    let (erased, kept, agent) = (Uuid::now_v7(), Uuid::now_v7(), Uuid::now_v7());
    w.register(erased).await;
    w.register(kept).await;
    let (s_erased, s_kept) = (Uuid::now_v7(), Uuid::now_v7());
    w.conversation(s_erased, erased, agent, T0, 4, pb::ChangeReason::Api).await;
    w.conversation(s_kept, kept, agent, T0, 4, pb::ChangeReason::Api).await;
    let request = Uuid::now_v7();
    let id = |u: Uuid| Bytes::copy_from_slice(u.as_bytes());
    w.append(
        format!("subject-{}-{erased}", w.tenant),
        vec![ev(
            projections::PURGE_EVENT,
            w.tenant,
            pb::SubjectErasureKeysShredded {
                subject_id: id(erased),
                request_id: id(request),
                session_ids: vec![id(s_erased)],
                at_micros: T0,
            },
        )],
    )
    .await;
    let purge_position = w.log.head() - 1;
    let dir = tempfile::tempdir().unwrap();
    let mut runners = Vec::new();
    for p in projections::all() {
        let s = store(&dir, p.name());
        runners.push(Runner::start(p, s, w.log.clone(), fast(), rt()).unwrap());
    }
    for r in &runners {
        wait_until("acknowledgement", || r.store().acknowledged(request).unwrap().is_some()).await;
        assert_eq!(r.store().acknowledged(request).unwrap(), Some(purge_position), "{}", r.name());
    }
    let sessions_view = runners[0].store().read().unwrap().unwrap();
    let row = sessions::get_session(&sessions_view, w.tenant, s_erased).unwrap().unwrap();
    assert!(row.erased && row.end_user_id.is_empty());
    assert!(row.participants.iter().all(|p| p.participant_id != erased.as_bytes()));
    let cursor = sessions::message_cursor(&sessions_view, &row, 0).unwrap();
    let messages = sessions::list_messages(w.log.as_ref(), &cursor, 100).await.unwrap();
    assert_eq!(messages.len(), 4);
    assert!(messages.iter().all(|m| m.erased && m.body.is_none() && m.sender_id != erased.as_bytes()));
    assert!(sessions::sessions_of_end_user(&sessions_view, w.tenant, erased).unwrap().is_empty());
    // The other subject's Session is untouched.
    let kept_row = sessions::get_session(&sessions_view, w.tenant, s_kept).unwrap().unwrap();
    let cursor = sessions::message_cursor(&sessions_view, &kept_row, 0).unwrap();
    let other = sessions::list_messages(w.log.as_ref(), &cursor, 100).await.unwrap();
    assert_eq!(other.len(), kept_row.messages as usize);
    assert!(other.iter().all(|m| !m.erased && m.body.is_some()));
    assert_eq!(sessions::sessions_of_end_user(&sessions_view, w.tenant, kept).unwrap(), vec![s_kept]);
    let dir_view = runners[1].store().read().unwrap().unwrap();
    assert!(directory::get(&dir_view, w.tenant, erased).unwrap().is_none());
    assert!(directory::get(&dir_view, w.tenant, kept).unwrap().is_some());
    for r in &runners {
        r.stop();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn analytics_hold_no_subject_ids_and_suppress_small_cells() {
    let w = World::new();
    let agent = Uuid::now_v7();
    let mut ids = vec![agent];
    // Hour 0: 6 Sessions (shown at k = 5); hour 1: 2 Sessions (suppressed).
    for i in 0..8 {
        let (s, u) = (Uuid::now_v7(), Uuid::now_v7());
        ids.extend([s, u]);
        let at = if i < 6 { T0 + i * 1_000_000 } else { T0 + 3_600_000_000 + i * 1_000_000 };
        let reason = if i % 2 == 0 { pb::ChangeReason::Api } else { pb::ChangeReason::Timer };
        w.conversation(s, u, agent, at, 2, reason).await;
    }
    let dir = tempfile::tempdir().unwrap();
    let s = store(&dir, "analytics");
    rebuild(&analytics::AnalyticsProjection, &s, &w.log, &rt(), None, 1000, &mut |_, _| {}).unwrap();
    let view = s.read().unwrap().unwrap();
    let hours = analytics::query(&view, w.tenant, w.pype, Granularity::Hour, T0, T0 + 2 * 3_600_000_000, 5).unwrap();
    assert_eq!(hours.len(), 2);
    let first = hours[0].cell.as_ref().expect("6 Sessions: shown");
    assert_eq!((first.sessions, first.started, first.closed_by_api, first.closed_by_timer), (6, 6, 3, 3));
    assert_eq!((first.messages_end_user, first.messages_agent, first.first_response_count), (6, 6, 6));
    // Agent answered 2 minutes after the start in every Session.
    assert_eq!(first.first_response_micros_sum, 6 * 120_000_000);
    assert_eq!(first.handle_count, 6);
    assert!(hours[1].cell.is_none(), "2 Sessions: suppressed at k = 5");
    let shown_at_2 =
        analytics::query(&view, w.tenant, w.pype, Granularity::Hour, T0, T0 + 2 * 3_600_000_000, 2).unwrap();
    assert!(shown_at_2[1].cell.is_some());
    let days = analytics::query(&view, w.tenant, w.pype, Granularity::Day, T0, T0 + 86_400_000_000, 5).unwrap();
    assert_eq!(days.len(), 1);
    assert_eq!(days[0].cell.as_ref().unwrap().sessions, 8);
    drop(view);
    // No id of a subject, Session or participant anywhere in the file.
    let bytes = std::fs::read(s.path()).unwrap();
    for id in ids {
        assert!(!bytes.windows(16).any(|win| win == id.as_bytes()), "id {id} found in the analytics store");
    }
}

/// Messages are listed from the Session's stream, starting at the sparse
/// index entry for the page: every start and page size gives exactly the
/// next messages, with other events interleaved, and never one the view
/// has not applied yet.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_page_from_the_log_through_the_sparse_index() {
    let w = World::new();
    let (session, end_user, agent) = (Uuid::now_v7(), Uuid::now_v7(), Uuid::now_v7());
    let id = |u: Uuid| Bytes::copy_from_slice(u.as_bytes());
    w.conversation(session, end_user, agent, T0, 0, pb::ChangeReason::Api).await;
    // The conversation helper closed it; reopen and post 300 messages, each
    // followed by a read horizon, in appends of 25 events.
    let post = |seq: u64| {
        let mut m = ev(
            "MessagePosted",
            w.tenant,
            pb::MessagePosted {
                seq,
                sender_id: id(end_user),
                sent_at_micros: T0 + seq as i64,
                has_device: false,
                sender_kind: pb::ParticipantKind::EndUser as i32,
                attachment_count: 0,
            },
        );
        m.sealed_fields = vec![sealed("body", &format!("body {seq}"))];
        m
    };
    let horizon = |seq: u64| {
        ev(
            "ReadHorizonAdvanced",
            w.tenant,
            pb::ReadHorizonAdvanced { participant_id: id(agent), up_to: seq, private: false },
        )
    };
    let mut events = Vec::new();
    for seq in 1..=300 {
        events.push(post(seq));
        events.push(horizon(seq));
        if events.len() >= 25 {
            w.append(w.session_stream(session), std::mem::take(&mut events)).await;
        }
    }
    w.append(w.session_stream(session), events).await;
    let dir = tempfile::tempdir().unwrap();
    let s = store(&dir, "sessions");
    rebuild(&sessions::SessionsProjection, &s, &w.log, &rt(), None, 50, &mut |_, _| {}).unwrap();
    // Posted after the build: not in the view, so not listed.
    w.append(w.session_stream(session), vec![post(301)]).await;

    let view = s.read().unwrap().unwrap();
    let row = sessions::get_session(&view, w.tenant, session).unwrap().unwrap();
    assert_eq!((row.messages, row.last_seq), (300, 300));
    for after in [0u64, 1, 62, 63, 64, 65, 127, 128, 200, 299, 300, 301, 5000] {
        for limit in [1usize, 7, 100, 1000] {
            let cursor = sessions::message_cursor(&view, &row, after).unwrap();
            let got: Vec<u64> =
                sessions::list_messages(w.log.as_ref(), &cursor, limit).await.unwrap().iter().map(|m| m.seq).collect();
            let want: Vec<u64> = (after + 1..=300).take(limit).collect();
            assert_eq!(got, want, "after {after}, limit {limit}");
        }
    }
    // Paging through with a page size that does not divide the index step.
    let (mut after, mut all) = (0, Vec::new());
    loop {
        let cursor = sessions::message_cursor(&view, &row, after).unwrap();
        let page = sessions::list_messages(w.log.as_ref(), &cursor, 37).await.unwrap();
        let Some(last) = page.last() else { break };
        after = last.seq;
        all.extend(page.iter().map(|m| (m.seq, m.body.is_some(), m.sender_id == end_user.as_bytes())));
    }
    assert_eq!(all, (1..=300).map(|seq| (seq, true, true)).collect::<Vec<_>>());
    // The index holds one entry per 64 messages, not one per message.
    assert_eq!(view.dump("msg_index").unwrap().len(), 300usize.div_ceil(sessions::INDEX_EVERY as usize));
}

/// The catalog lists a tenant, its Pypes, its end users' privacy rows and
/// erasure requests, and forgets all of them when the tenant moves to
/// another region (its move record here); another tenant stays.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_catalog_forgets_a_tenant_that_moved_away() {
    let w = World::new();
    let other = World { log: w.log.clone(), tenant: Uuid::now_v7(), pype: Uuid::now_v7() };
    for x in [&w, &other] {
        let created = pb::TenantCreated {
            tenant_id: Bytes::copy_from_slice(x.tenant.as_bytes()),
            name: "Acme".into(),
            at_micros: T0,
            ..Default::default()
        };
        x.append(format!("tenant-{}-{}", x.tenant, x.tenant), vec![ev("TenantCreated", x.tenant, created)]).await;
        let pype = pb::PypeCreated {
            pype_id: Bytes::copy_from_slice(x.pype.as_bytes()),
            tenant_id: Bytes::copy_from_slice(x.tenant.as_bytes()),
            name: "Support".into(),
            at_micros: T0,
            ..Default::default()
        };
        x.append(format!("pype-{}-{}", x.tenant, x.pype), vec![ev("PypeCreated", x.tenant, pype)]).await;
    }
    let log = w.log.clone();
    let user = Uuid::now_v7();
    w.register(user).await;
    let requested = pb::SubjectErasureRequested {
        subject_id: Bytes::copy_from_slice(user.as_bytes()),
        request_id: Bytes::copy_from_slice(Uuid::now_v7().as_bytes()),
        at_micros: T0,
        due_micros: T0 + 30 * 86_400_000_000,
    };
    w.append(format!("subject-{}-{user}", w.tenant), vec![ev("SubjectErasureRequested", w.tenant, requested)]).await;
    let dir = tempfile::tempdir().unwrap();
    let s = store(&dir, "catalog");
    let catalog = projections::catalog::CatalogProjection;
    rebuild(&catalog, &s, &log, &rt(), None, 1000, &mut |_, _| {}).unwrap();
    {
        let view = s.read().unwrap().unwrap();
        assert_eq!(projections::catalog::tenants(&view, None, 10).unwrap().len(), 2);
        let row = projections::catalog::tenant(&view, w.tenant).unwrap().unwrap();
        assert_eq!((row.pypes, row.subjects, row.created_micros), (1, 1, T0));
        assert_eq!(projections::catalog::erasures(&view, w.tenant).unwrap().len(), 1);
        assert_eq!(projections::catalog::open_erasures(&view).unwrap().len(), 1);
        assert_eq!(projections::catalog::privacy(&view, w.tenant).unwrap().subjects, 1);
    }
    let switched = pb::TenantMoveSwitched { to_region: "us".into(), at_micros: T0 + 1, ..Default::default() };
    w.append(events::stream::moved_stream(w.tenant), vec![ev("TenantMoveSwitched", w.tenant, switched)]).await;
    let fresh = store(&dir, "catalog-after");
    rebuild(&catalog, &fresh, &log, &rt(), None, 1000, &mut |_, _| {}).unwrap();
    let view = fresh.read().unwrap().unwrap();
    assert!(projections::catalog::tenant(&view, w.tenant).unwrap().is_none());
    assert!(projections::catalog::pypes(&view, w.tenant, None, 10).unwrap().is_empty());
    assert!(projections::catalog::erasures(&view, w.tenant).unwrap().is_empty());
    assert_eq!(projections::catalog::privacy(&view, w.tenant).unwrap().subjects, 0);
    assert_eq!(projections::catalog::tenants(&view, None, 10).unwrap().len(), 1, "the other tenant stays");
    assert_eq!(projections::catalog::pypes(&view, other.tenant, None, 10).unwrap().len(), 1);
}

/// A view store on a small filesystem of its own that fills up (root: a
/// tmpfs). `reserve` is the runner's free-space reserve. Returns the
/// mount, the runner (caught up with a first batch of conversations) and
/// the world.
async fn view_on_small_disk(
    dir: &tempfile::TempDir,
    reserve: Option<u64>,
) -> Option<(pgtest::Tmpfs, Arc<Runner>, World)> {
    let mount = pgtest::Tmpfs::mount(&dir.path().join("views"), "4m")?;
    let w = World::new();
    let store = Arc::new(ViewStore::open(&mount.path().join("sessions.redb")).unwrap());
    let config = RunnerConfig { disk_reserve: reserve, ..fast() };
    let r = Runner::start(Arc::new(sessions::SessionsProjection), store, w.log.clone(), config, rt()).unwrap();
    for i in 0..5 {
        w.conversation(Uuid::now_v7(), Uuid::now_v7(), Uuid::now_v7(), T0 + i * 60_000_000, 5, pb::ChangeReason::Api)
            .await;
    }
    let head = w.log.head();
    wait_long("the first conversations", || r.status().next_position >= head).await;
    Some((mount, r, w))
}

/// Appends conversations until the runner stops following the log; returns
/// the runner's failure.
async fn append_until_the_view_stops(w: &World, r: &Runner) -> String {
    for i in 0..2_000 {
        w.conversation(Uuid::now_v7(), Uuid::now_v7(), Uuid::now_v7(), T0 + i * 60_000_000, 20, pb::ChangeReason::Api)
            .await;
        tokio::time::sleep(Duration::from_millis(5)).await;
        if let RunnerState::Failing(why) = r.status().state {
            return why;
        }
    }
    panic!("the view never stopped on its full disk: {:?}", r.status());
}

/// Removes the filler: the view catches up by itself (reopened first when
/// a write had failed) and equals one rebuilt from the log on a disk with
/// room.
async fn space_returns(filler: &std::path::Path, r: &Runner, w: &World) {
    std::fs::remove_file(filler).unwrap();
    let head = w.log.head();
    wait_long("the view to catch up once space was freed", || {
        let st = r.status();
        st.next_position >= head && st.state == RunnerState::Live
    })
    .await;
    let elsewhere = tempfile::tempdir().unwrap();
    let fresh = store(&elsewhere, "rebuilt");
    rebuild(&sessions::SessionsProjection, &fresh, &w.log, &rt(), None, 1000, &mut |_, _| {}).unwrap();
    assert_eq!(dump(r.store(), SESSION_TABLES), dump(&fresh, SESSION_TABLES), "the view differs from a rebuild");
    r.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_view_whose_disk_fills_keeps_serving_what_it_holds_and_catches_up_when_space_returns() {
    let dir = tempfile::tempdir().unwrap();
    let Some((mount, r, w)) = view_on_small_disk(&dir, None).await else { return };
    let before = dump(r.store(), SESSION_TABLES);
    // Another writer takes the disk down to under the reserve (5 % of it).
    let filler = mount.path().join("filler");
    pgtest::Tmpfs::fill(&filler, u64::MAX);
    let why = append_until_the_view_stops(&w, &r).await;
    assert!(why.contains("disk nearly full") && why.contains("sessions.redb"), "{why}");
    // Nothing was written: the store still reads, whole, as it was.
    assert_eq!(dump(r.store(), SESSION_TABLES), before);
    assert!(r.status().next_position < w.log.head(), "the view lags the log");
    space_returns(&filler, &r, &w).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_view_write_that_fails_on_a_full_disk_is_reopened_and_reapplied_from_the_log() {
    let dir = tempfile::tempdir().unwrap();
    // No reserve: the commit itself meets the full disk.
    let Some((mount, r, w)) = view_on_small_disk(&dir, Some(0)).await else { return };
    let filler = mount.path().join("filler");
    pgtest::Tmpfs::fill(&filler, u64::MAX);
    let why = append_until_the_view_stops(&w, &r).await;
    assert!(why.contains("i/o"), "{why}");
    space_returns(&filler, &r, &w).await;
}
