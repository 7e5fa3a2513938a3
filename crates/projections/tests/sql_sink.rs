//! The PostgreSQL read-model sink over an in-memory log, on a throw-away
//! cluster: Sessions and messages reach SQL tables with nothing sealed in
//! them, a restart continues from the checkpoint without counting twice,
//! an erasure clears the subject, an offboarding removes the tenant, a
//! malformed event is recorded and passed, and the analyst views work.

use std::sync::Arc;

use bytes::Bytes;
use eventlog::mem::MemLog;
use eventlog::{EventLog, ExpectedVersion, NewEvent};
use projections::sql::SqlSink;
use proto::Message;
use proto::events as pb;
use uuid::Uuid;

const T0: i64 = 1_795_996_800_000_000; // 2026-12-01T00:00:00Z

fn ev(event_type: &str, tenant: Uuid, payload: impl Message) -> NewEvent {
    let mut e = NewEvent::new(event_type, Bytes::from(payload.encode_to_vec()));
    e.tenant_id = Some(tenant);
    e
}

fn id(u: Uuid) -> Bytes {
    Bytes::copy_from_slice(u.as_bytes())
}

async fn conversation(log: &Arc<dyn EventLog>, tenant: Uuid, pype: Uuid, session: Uuid, user: Uuid, n: u64) {
    let mut events = vec![ev(
        "SessionStarted",
        tenant,
        pb::SessionStarted {
            session_id: id(session),
            tenant_id: id(tenant),
            pype_id: id(pype),
            end_user_id: id(user),
            timers: None,
            at_micros: T0,
            ..Default::default()
        },
    )];
    for seq in 1..=n {
        let kind = if seq % 2 == 1 { pb::ParticipantKind::EndUser } else { pb::ParticipantKind::Agent };
        events.push(ev(
            "MessagePosted",
            tenant,
            pb::MessagePosted {
                seq,
                sender_id: id(user),
                sent_at_micros: T0 + seq as i64 * 60_000_000,
                has_device: false,
                sender_kind: kind as i32,
                attachment_count: u32::from(seq == 1),
            },
        ));
    }
    log.append(&format!("session-{tenant}-{session}"), ExpectedVersion::Any, events).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_and_messages_reach_sql_exactly_once_and_erasure_reaches_them() {
    let Some(pg) = pgtest::Cluster::start() else { return };
    let url = pg.fresh_database();
    let log: Arc<dyn EventLog> = Arc::new(MemLog::new());
    let (tenant, other, pype) = (Uuid::now_v7(), Uuid::now_v7(), Uuid::now_v7());
    let (s1, s2, s3, user) = (Uuid::now_v7(), Uuid::now_v7(), Uuid::now_v7(), Uuid::now_v7());
    conversation(&log, tenant, pype, s1, user, 4).await;
    conversation(&log, tenant, pype, s2, user, 3).await;
    conversation(&log, other, pype, s3, Uuid::now_v7(), 2).await;

    let mut sink = SqlSink::open(&url).await.unwrap();
    let at = sink.catch_up(&log).await.unwrap();
    assert_eq!(at, log.head());
    let q = |sql: &str| pg.psql(&url, sql);
    assert_eq!(q("SELECT count(*) FROM pypes_sql_sessions"), "3");
    assert_eq!(
        q(&format!(
            "SELECT messages || ' ' || end_user_messages || ' ' || agent_messages || ' ' || attachments || ' ' || \
             extract(epoch FROM first_reply_at - started_at)::int FROM pypes_sql_sessions WHERE session_id = '{s1}'"
        )),
        "4 2 2 1 120",
        "counts and the first reply two minutes in"
    );

    // More events, then a new sink (a restart): it continues from its
    // checkpoint and counts nothing twice.
    let close = ev(
        "SessionClosed",
        tenant,
        pb::SessionStateChanged { reason: pb::ChangeReason::Timer as i32, at_micros: T0 + 3_600_000_000 },
    );
    log.append(&format!("session-{tenant}-{s1}"), ExpectedVersion::Any, vec![close]).await.unwrap();
    drop(sink);
    let mut sink = SqlSink::open(&url).await.unwrap();
    assert_eq!(sink.position(), at, "the checkpoint survives a restart");
    sink.catch_up(&log).await.unwrap();
    assert_eq!(
        q(&format!(
            "SELECT state || ' ' || close_reason || ' ' || messages FROM pypes_sql_sessions WHERE session_id = '{s1}'"
        )),
        "closed timer 4"
    );
    assert_eq!(q("SELECT count(*) FROM pypes_sql_messages"), "9");

    // A malformed event is recorded and passed, not applied.
    log.append(
        &format!("session-{tenant}-{s2}"),
        ExpectedVersion::Any,
        vec![NewEvent::new("MessagePosted", Bytes::from_static(&[0xff, 0xff, 0xff]))],
    )
    .await
    .unwrap();
    // The erasure of the end user: the Sessions keep their counts and lose him.
    let purge = ev(
        projections::PURGE_EVENT,
        tenant,
        pb::SubjectErasureKeysShredded {
            subject_id: id(user),
            request_id: id(Uuid::now_v7()),
            session_ids: vec![id(s1), id(s2)],
            at_micros: T0 + 7_200_000_000,
        },
    );
    log.append(&format!("subject-{tenant}-{user}"), ExpectedVersion::Any, vec![purge]).await.unwrap();
    sink.catch_up(&log).await.unwrap();
    assert_eq!(q("SELECT count(*) FROM pypes_sql_skipped WHERE event_type = 'MessagePosted'"), "1");
    assert_eq!(q(&format!("SELECT count(*) FROM pypes_sql_sessions WHERE end_user_id = '{user}'")), "0");
    assert_eq!(q("SELECT count(*) FROM pypes_sql_sessions WHERE subject_erased"), "2");
    assert_eq!(q(&format!("SELECT messages FROM pypes_sql_sessions WHERE session_id = '{s2}'")), "3");

    // The analyst views: no end user id, daily figures per Pype.
    assert!(!q("SELECT string_agg(column_name, ',') FROM information_schema.columns WHERE table_name = 'pypes_sql_sessions_anon'").contains("end_user_id"));
    assert_eq!(
        q(&format!("SELECT sessions || ' ' || messages FROM pypes_sql_pype_daily_anon WHERE tenant_id = '{tenant}'")),
        "2 7"
    );

    // Offboarding: every row of the tenant goes; the other tenant stays.
    let shredded = ev("TenantKeysShredded", tenant, pb::TenantKeysShredded::default());
    log.append(&format!("tenant-{tenant}-{tenant}"), ExpectedVersion::Any, vec![shredded]).await.unwrap();
    sink.catch_up(&log).await.unwrap();
    assert_eq!(q(&format!("SELECT count(*) FROM pypes_sql_sessions WHERE tenant_id = '{tenant}'")), "0");
    assert_eq!(q(&format!("SELECT count(*) FROM pypes_sql_messages WHERE tenant_id = '{tenant}'")), "0");
    assert_eq!(q("SELECT count(*) FROM pypes_sql_sessions"), "1");

    // Nothing sealed or personal in any column: the end user's id is gone
    // and no table has a body or device column.
    let columns =
        q("SELECT string_agg(column_name, ',') FROM information_schema.columns WHERE table_name LIKE 'pypes_sql_%'");
    for personal in ["body", "device", "username", "email", "file_name"] {
        assert!(!columns.contains(personal), "{personal} in {columns}");
    }
}

/// Two feeders on one SQL database (two nodes with `[sql] url`, or an
/// overlap in a rolling update): every event is applied once, whichever
/// feeder gets to a page first.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_feeders_on_one_database_apply_each_event_once() {
    let Some(pg) = pgtest::Cluster::start() else { return };
    let url = pg.fresh_database();
    let log: Arc<dyn EventLog> = Arc::new(MemLog::new());
    let (tenant, pype, user) = (Uuid::now_v7(), Uuid::now_v7(), Uuid::now_v7());
    // More events than several pages of the sink; each Session with an
    // upload (its counters only add, so a page applied twice shows).
    let session_with_upload = |session: Uuid| {
        let log = log.clone();
        async move {
            conversation(&log, tenant, pype, session, user, 50).await;
            let upload = pb::MediaUploaded { media_id: id(Uuid::now_v7()), size: 1000, ..Default::default() };
            let e = ev("MediaUploaded", tenant, upload);
            log.append(&format!("session-{tenant}-{session}"), ExpectedVersion::Any, vec![e]).await.unwrap();
        }
    };
    for _ in 0..60 {
        session_with_upload(Uuid::now_v7()).await;
    }
    let (mut a, mut b) = (SqlSink::open(&url).await.unwrap(), SqlSink::open(&url).await.unwrap());
    let (ra, rb) = tokio::join!(a.catch_up(&log), b.catch_up(&log));
    assert_eq!((ra.unwrap(), rb.unwrap()), (log.head(), log.head()));
    let q = |sql: &str| pg.psql(&url, sql);
    let totals = "SELECT count(*) || ' ' || sum(messages) || ' ' || sum(media_uploads) FROM pypes_sql_sessions";
    assert_eq!(q(totals), "60 3000 60");
    assert_eq!(q("SELECT count(*) FROM pypes_sql_messages"), "3000");
    // One behind the other: a feeder opened before the other applied
    // everything applies nothing again.
    for _ in 0..10 {
        session_with_upload(Uuid::now_v7()).await;
    }
    let mut late = SqlSink::open(&url).await.unwrap();
    a.catch_up(&log).await.unwrap();
    assert_eq!(late.catch_up(&log).await.unwrap(), log.head());
    assert_eq!(q(totals), "70 3500 70");
    assert_eq!(q("SELECT count(*) FROM pypes_sql_messages"), "3500");
}

#[tokio::test]
async fn an_unreachable_database_is_named_without_its_password() {
    let Err(e) = SqlSink::open("host=127.0.0.1 port=1 user=pypes password=hunter2 dbname=x connect_timeout=2").await
    else {
        panic!("connected to nothing")
    };
    let text = e.to_string();
    assert!(text.contains("read-model database") && text.contains("port=1"), "{text}");
    assert!(!text.contains("hunter2"), "{text}");
}
