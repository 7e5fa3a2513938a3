//! The tenant's event feed (`SubscribeTenantEvents`) through the API:
//! catch-up then live while writers append, resumed from a token after a
//! `kill -9` with nothing lost or repeated, the filters, another tenant's
//! events never seen, erased and restricted content.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use common::{Clients, Setup, authed, clients, post, setup, start, wait_certified};
use proto::api as pb;
use tonic::Code;
use tonic::transport::Channel;

type Feed = tonic::Streaming<pb::FeedMessage>;

fn from_start() -> Option<pb::subscribe_tenant_events_request::From> {
    Some(pb::subscribe_tenant_events_request::From::FromStart(true))
}

fn after(p: u64) -> Option<pb::subscribe_tenant_events_request::From> {
    Some(pb::subscribe_tenant_events_request::From::AfterPosition(p))
}

async fn subscribe(ch: &Channel, key: &str, request: pb::SubscribeTenantEventsRequest) -> Result<Feed, tonic::Status> {
    let mut client = pb::integration_service_client::IntegrationServiceClient::new(ch.clone());
    client.subscribe_tenant_events(authed(key, request)).await.map(|r| r.into_inner())
}

/// The next item of a feed (the test fails after 30 s without one).
async fn next(feed: &mut Feed) -> pb::feed_message::Item {
    match tokio::time::timeout(Duration::from_secs(30), feed.message()).await {
        Ok(Ok(Some(m))) => m.item.expect("an item"),
        other => panic!("no feed item: {other:?}"),
    }
}

/// Events until the `live` marker (the catch-up part of a feed).
async fn until_live(feed: &mut Feed) -> (Vec<pb::IntegrationEvent>, Option<u64>) {
    let mut events = Vec::new();
    loop {
        match next(feed).await {
            pb::feed_message::Item::Event(e) => events.push(e),
            pb::feed_message::Item::Live(l) => return (events, l.after_position),
            pb::feed_message::Item::Behind(b) => panic!("behind during catch-up: {b:?}"),
        }
    }
}

/// Events until `done` says the collection is complete.
async fn collect_until(
    feed: &mut Feed,
    mut events: Vec<pb::IntegrationEvent>,
    done: impl Fn(&[pb::IntegrationEvent]) -> bool,
) -> Vec<pb::IntegrationEvent> {
    while !done(&events) {
        if let pb::feed_message::Item::Event(e) = next(feed).await {
            events.push(e);
        }
    }
    events
}

fn bodies(events: &[pb::IntegrationEvent]) -> Vec<String> {
    events
        .iter()
        .filter_map(|e| match &e.data {
            Some(pb::integration_event::Data::MessagePosted(m)) => Some(m.body.clone()),
            _ => None,
        })
        .collect()
}

/// What every feed must hold to: positions strictly increasing, event ids
/// unique, every event the tenant's, envelope consistent with its type,
/// and each Session's sequence gapless from `first` (1, or where a resume
/// picked up).
fn check_feed(events: &[pb::IntegrationEvent], tenant: &str) {
    let mut ids = BTreeSet::new();
    let mut seqs: BTreeMap<&str, u64> = BTreeMap::new();
    for pair in events.windows(2) {
        assert!(pair[0].position < pair[1].position, "positions out of order: {pair:?}");
    }
    for e in events {
        assert_eq!(e.schema_version, 1);
        assert_eq!(e.tenant_id, tenant, "another tenant's event: {e:?}");
        assert!(ids.insert(e.event_id.clone()), "event {} twice", e.event_id);
        if e.r#type.starts_with("session.") || e.r#type.starts_with("message.") || e.r#type.starts_with("participant.")
        {
            assert!(!e.session_id.is_empty() && !e.pype_id.is_empty(), "{e:?}");
            if let Some(prev) = seqs.insert(&e.session_id, e.session_seq) {
                assert_eq!(e.session_seq, prev + 1, "a gap in session {}: {prev} then {e:?}", e.session_id);
            }
        } else {
            assert_eq!(e.session_seq, 0, "{e:?}");
        }
    }
}

async fn second_session(c: &mut Clients, s: &Setup) -> String {
    c.sessions
        .start_session(authed(
            &s.key,
            pb::StartSessionRequest {
                pype_id: s.pype.clone(),
                end_user_id: s.user.clone(),
                timers: None,
                ..Default::default()
            },
        ))
        .await
        .unwrap()
        .into_inner()
        .session_id
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn catch_up_then_live_while_writers_append_and_resume_after_a_kill() {
    let data = tempfile::tempdir().unwrap();
    let server = start(data.path());
    let mut c = clients(&server.grpc).await;
    let ch = Channel::from_shared(server.grpc.clone()).unwrap().connect().await.unwrap();
    let a = setup(&mut c, "alpha-user").await;
    let b = setup(&mut c, "bravo-user").await;
    let a2 = second_session(&mut c, &a).await;
    for i in 0..20 {
        c.sessions.post_message(authed(&a.key, post(&a, &format!("before {i}")))).await.unwrap();
        c.sessions.post_message(authed(&b.key, post(&b, &format!("bravo {i}")))).await.unwrap();
    }

    // Two writers append to A's two Sessions (and one to B's) while the
    // feed catches up and then goes live.
    let mut feed =
        subscribe(&ch, &a.key, pb::SubscribeTenantEventsRequest { from: from_start(), ..Default::default() })
            .await
            .unwrap();
    let mut writers = Vec::new();
    for (key, session, sender, tag) in [
        (a.key.clone(), a.session.clone(), a.user.clone(), "one"),
        (a.key.clone(), a2.clone(), a.user.clone(), "two"),
        (b.key.clone(), b.session.clone(), b.user.clone(), "bravo-live"),
    ] {
        let mut s = c.sessions.clone();
        writers.push(tokio::spawn(async move {
            let mut acked = Vec::new();
            for i in 0..60 {
                let body = format!("{tag} {i}");
                let request = pb::PostMessageRequest {
                    session_id: session.clone(),
                    sender_id: sender.clone(),
                    body: body.clone(),
                    ..Default::default()
                };
                s.post_message(authed(&key, request)).await.unwrap();
                acked.push(body);
            }
            acked
        }));
    }
    let (caught_up, live_token) = until_live(&mut feed).await;
    assert!(live_token.is_some());
    let mut expected: BTreeSet<String> = (0..20).map(|i| format!("before {i}")).collect();
    for w in writers.drain(..2) {
        expected.extend(w.await.unwrap());
    }
    writers.pop().unwrap().await.unwrap();
    let first = collect_until(&mut feed, caught_up, |events| {
        bodies(events).iter().filter(|b| expected.contains(*b)).count() == expected.len()
    })
    .await;
    check_feed(&first, &a.tenant);
    let seen = bodies(&first);
    assert_eq!(seen.len(), expected.len(), "a message twice or one of B's: {seen:?}");
    assert_eq!(seen.iter().cloned().collect::<BTreeSet<_>>(), expected);
    // Each writer's messages in the order it wrote them.
    for tag in ["one", "two"] {
        let order: Vec<&String> = seen.iter().filter(|b| b.starts_with(tag)).collect();
        let want: Vec<String> = (0..60).map(|i| format!("{tag} {i}")).collect();
        assert_eq!(order, want.iter().collect::<Vec<_>>());
    }
    let types: BTreeSet<&str> = first.iter().map(|e| e.r#type.as_str()).collect();
    for t in ["pype.created", "subject.registered", "session.started", "message.posted"] {
        assert!(types.contains(t), "no {t} in {types:?}");
    }
    let started = first.iter().find(|e| e.r#type == "session.started").unwrap();
    assert_eq!((started.session_seq, started.subject_id.as_str()), (1, a.user.as_str()));
    assert!(first.iter().all(|e| !e.event_id.is_empty() && e.recorded_at_micros > 0));

    // kill -9, start again, resume from the middle: exactly the rest.
    drop(feed);
    drop(server);
    let server = start(data.path());
    let ch = Channel::from_shared(server.grpc.clone()).unwrap().connect().await.unwrap();
    let cut = first.len() / 2;
    let token = first[cut - 1].position;
    let mut feed =
        subscribe(&ch, &a.key, pb::SubscribeTenantEventsRequest { from: after(token), ..Default::default() })
            .await
            .unwrap();
    let (rest, _) = until_live(&mut feed).await;
    let ids = |events: &[pb::IntegrationEvent]| events.iter().map(|e| e.event_id.clone()).collect::<Vec<_>>();
    assert_eq!(ids(&rest), ids(&first[cut..]), "the resumed feed is not exactly the rest");
    assert_eq!(rest, first[cut..].to_vec(), "an event changed across the restart");

    // Live after the restart.
    let mut c = clients(&server.grpc).await;
    c.sessions.post_message(authed(&a.key, post(&a, "after the restart"))).await.unwrap();
    let live = collect_until(&mut feed, Vec::new(), |events| !events.is_empty()).await;
    assert_eq!(bodies(&live), ["after the restart"]);
    assert!(live[0].position > rest.last().unwrap().position);
    let prev = first.iter().filter(|e| e.session_id == a.session).map(|e| e.session_seq).max().unwrap();
    assert_eq!(live[0].session_seq, prev + 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn filters_bad_requests_and_erased_and_restricted_content() {
    let data = tempfile::tempdir().unwrap();
    let server = start(data.path());
    let mut c = clients(&server.grpc).await;
    let ch = Channel::from_shared(server.grpc.clone()).unwrap().connect().await.unwrap();
    let a = setup(&mut c, "alpha-user").await;
    let b = setup(&mut c, "bravo-user").await;
    let a2 = second_session(&mut c, &a).await;
    c.sessions.post_message(authed(&a.key, post(&a, "in one"))).await.unwrap();
    let in_two = pb::PostMessageRequest {
        session_id: a2.clone(),
        sender_id: a.user.clone(),
        body: "in two".into(),
        ..Default::default()
    };
    c.sessions.post_message(authed(&a.key, in_two)).await.unwrap();

    // By type and by Session.
    let request = pb::SubscribeTenantEventsRequest {
        from: from_start(),
        types: vec!["message.posted".into()],
        session_id: a2.clone(),
        ..Default::default()
    };
    let (events, _) = until_live(&mut subscribe(&ch, &a.key, request).await.unwrap()).await;
    assert_eq!(bodies(&events), ["in two"]);
    assert!(events.iter().all(|e| e.r#type == "message.posted" && e.session_id == a2));
    // By Pype: the Pype's own events and its Sessions', no subject events.
    let request =
        pb::SubscribeTenantEventsRequest { from: from_start(), pype_id: a.pype.clone(), ..Default::default() };
    let (events, _) = until_live(&mut subscribe(&ch, &a.key, request).await.unwrap()).await;
    check_feed(&events, &a.tenant);
    assert!(events.iter().all(|e| e.pype_id == a.pype && !e.r#type.starts_with("subject.")), "{events:?}");
    assert_eq!(bodies(&events), ["in one", "in two"]);
    assert_eq!(events[0].r#type, "pype.created");

    // From now: nothing old, the next event live.
    let mut feed = subscribe(&ch, &a.key, Default::default()).await.unwrap();
    let (old, _) = until_live(&mut feed).await;
    assert!(old.is_empty(), "{old:?}");
    c.sessions.post_message(authed(&a.key, post(&a, "said just now"))).await.unwrap();
    let live = collect_until(&mut feed, Vec::new(), |e| !e.is_empty()).await;
    assert_eq!(bodies(&live), ["said just now"]);
    drop(feed);

    // Bad requests, each named.
    let refused = |r: Result<Feed, tonic::Status>, code: Code, needle: &str| {
        let Err(e) = r else { panic!("accepted") };
        assert_eq!(e.code(), code, "{e:?}");
        assert!(e.message().contains(needle), "{needle:?} not in {:?}", e.message());
    };
    let bad_type = pb::SubscribeTenantEventsRequest { types: vec!["message.sent".into()], ..Default::default() };
    refused(subscribe(&ch, &a.key, bad_type).await, Code::InvalidArgument, "message.sent");
    let bad_id = pb::SubscribeTenantEventsRequest { pype_id: "nope".into(), ..Default::default() };
    refused(subscribe(&ch, &a.key, bad_id).await, Code::InvalidArgument, "pype_id");
    let other_tenant = pb::SubscribeTenantEventsRequest { pype_id: b.pype.clone(), ..Default::default() };
    refused(subscribe(&ch, &a.key, other_tenant).await, Code::NotFound, "pype");
    let other_session = pb::SubscribeTenantEventsRequest { session_id: b.session.clone(), ..Default::default() };
    refused(subscribe(&ch, &a.key, other_session).await, Code::NotFound, "session");
    let mismatch = pb::SubscribeTenantEventsRequest {
        session_id: b.session.clone(),
        pype_id: a.pype.clone(),
        ..Default::default()
    };
    assert!(subscribe(&ch, &a.key, mismatch).await.is_err());
    let past = pb::SubscribeTenantEventsRequest { from: after(1 << 40), ..Default::default() };
    refused(subscribe(&ch, &a.key, past).await, Code::OutOfRange, "past the log's head");
    refused(subscribe(&ch, "", Default::default()).await, Code::Unauthenticated, "");

    // A restricted end user's content is withheld; an erased one's is gone.
    let mut privacy = pb::privacy_service_client::PrivacyServiceClient::new(ch.clone());
    let subject = pb::SubjectRef { subject_id: b.user.clone(), ..Default::default() };
    c.sessions.post_message(authed(&b.key, post(&b, "bravo canary"))).await.unwrap();
    privacy.restrict_processing(authed(&b.key, subject)).await.unwrap();
    let request = pb::SubscribeTenantEventsRequest { from: from_start(), ..Default::default() };
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let (events, _) = until_live(&mut subscribe(&ch, &b.key, request.clone()).await.unwrap()).await;
        check_feed(&events, &b.tenant);
        if events.iter().any(|e| e.r#type == "session.restricted") {
            let posted = events.iter().find(|e| e.r#type == "message.posted").unwrap();
            let Some(pb::integration_event::Data::MessagePosted(m)) = &posted.data else { panic!() };
            assert!(m.withheld && !m.erased && m.body.is_empty(), "{m:?}");
            assert!(events.iter().any(|e| e.r#type == "subject.restricted"));
            assert!(!format!("{events:?}").contains("bravo canary"));
            break;
        }
        assert!(std::time::Instant::now() < deadline, "the Session was never restricted");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let erase = pb::RequestErasureRequest { subject_id: a.user.clone(), ..Default::default() };
    c.erasure.request_erasure(authed(&a.key, erase)).await.unwrap();
    let status = wait_certified(&mut c, &a.key, &a.user).await;
    let (events, _) = until_live(&mut subscribe(&ch, &a.key, request).await.unwrap()).await;
    check_feed(&events, &a.tenant);
    let text = format!("{events:?}");
    for gone in ["in one", "in two", "said just now"] {
        assert!(!text.contains(gone), "{gone:?} after the erasure");
    }
    let posted: Vec<_> = events
        .iter()
        .filter_map(|e| match &e.data {
            Some(pb::integration_event::Data::MessagePosted(m)) => Some(m),
            _ => None,
        })
        .collect();
    assert_eq!(posted.len(), 3);
    assert!(posted.iter().all(|m| m.erased && m.body.is_empty()), "{posted:?}");
    let types: Vec<&str> = events.iter().map(|e| e.r#type.as_str()).collect();
    for t in ["erasure.requested", "session.erased", "subject.erased", "erasure.certified"] {
        assert!(types.contains(&t), "no {t} in {types:?}");
    }
    let certified = events.iter().find(|e| e.r#type == "erasure.certified").unwrap();
    let Some(pb::integration_event::Data::Erasure(cert)) = &certified.data else { panic!() };
    assert_eq!(cert.certificate, status.certificate);
    assert_eq!(certified.subject_id, a.user);
}

/// A consumer that stops reading: writers never wait for it; after
/// `feed_stall_secs` it is cut off with RESOURCE_EXHAUSTED naming where to
/// resume, and resuming there gives exactly the rest. A consumer that
/// pauses for less is told it fell behind, and still gets every event once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_consumer_is_cut_off_with_its_token_and_a_slow_one_is_told_it_is_behind() {
    let data = tempfile::tempdir().unwrap();
    let config = data.path().join("pypes.toml");
    std::fs::write(&config, "[integrations]\nfeed_stall_secs = 2\nfeed_behind_positions = 5\n").unwrap();
    let server = common::start_with(&data.path().join("data"), &[("PYPES_CONFIG", config.to_str().unwrap())]);
    let mut c = clients(&server.grpc).await;
    let a = setup(&mut c, "alpha-user").await;
    // A small receive window, so that the server's buffers fill quickly.
    let ch =
        Channel::from_shared(server.grpc.clone()).unwrap().initial_stream_window_size(65_535).connect().await.unwrap();
    let big = "x".repeat(4000);
    let write = |c: &mut Clients, tag: &'static str, n: usize| {
        let mut s = c.sessions.clone();
        let (key, request) = (a.key.clone(), post(&a, ""));
        let big = big.clone();
        async move {
            let started = std::time::Instant::now();
            for i in 0..n {
                let body = format!("{tag} {i} {big}");
                s.post_message(authed(&key, pb::PostMessageRequest { body, ..request.clone() })).await.unwrap();
            }
            started.elapsed()
        }
    };
    let tagged = |events: &[pb::IntegrationEvent], tag: &str| {
        bodies(events)
            .iter()
            .filter(|b| b.starts_with(tag))
            .map(|b| b[..b.len() - 4001].to_string())
            .collect::<Vec<_>>()
    };
    let want = |tag: &str, n: usize| (0..n).map(|i| format!("{tag} {i}")).collect::<Vec<_>>();

    // Stalled: live, then nothing read while 600 big messages are written.
    let mut feed = subscribe(&ch, &a.key, Default::default()).await.unwrap();
    until_live(&mut feed).await;
    write(&mut c, "stalled", 600).await;
    tokio::time::sleep(Duration::from_secs(4)).await;
    let mut got = Vec::new();
    let cut = loop {
        match tokio::time::timeout(Duration::from_secs(30), feed.message()).await.expect("an item or the end") {
            Ok(Some(m)) => {
                if let Some(pb::feed_message::Item::Event(e)) = m.item {
                    got.push(e);
                }
            }
            Ok(None) => panic!("the stream ended without saying why after {} events", got.len()),
            Err(status) => break status,
        }
    };
    assert_eq!(cut.code(), Code::ResourceExhausted, "{cut:?}");
    assert!(got.len() < 600, "the feed was never stalled ({} events sent)", got.len());
    let last = got.last().expect("some events before the cut").position;
    assert!(cut.message().contains(&format!("after_position {last}")), "{}", cut.message());
    let mut resumed =
        subscribe(&ch, &a.key, pb::SubscribeTenantEventsRequest { from: after(last), ..Default::default() })
            .await
            .unwrap();
    let (rest, _) = until_live(&mut resumed).await;
    got.extend(rest);
    check_feed(&got, &a.tenant);
    assert_eq!(tagged(&got, "stalled"), want("stalled", 600));
    drop(resumed);

    // Slow: live, a pause shorter than the stall limit while writers run
    // ahead, then reading again: "behind", and every event once. (The
    // server starts again with a stall limit longer than any pause here,
    // however slow the machine.)
    drop(server);
    std::fs::write(&config, "[integrations]\nfeed_stall_secs = 600\nfeed_behind_positions = 5\n").unwrap();
    let server = common::start_with(&data.path().join("data"), &[("PYPES_CONFIG", config.to_str().unwrap())]);
    let mut c = clients(&server.grpc).await;
    let ch =
        Channel::from_shared(server.grpc.clone()).unwrap().initial_stream_window_size(65_535).connect().await.unwrap();
    let mut feed = subscribe(&ch, &a.key, Default::default()).await.unwrap();
    until_live(&mut feed).await;
    write(&mut c, "slow", 600).await;
    let mut got = Vec::new();
    let mut behind = 0;
    while tagged(&got, "slow").len() < 600 {
        match next(&mut feed).await {
            pb::feed_message::Item::Event(e) => got.push(e),
            pb::feed_message::Item::Behind(b) => {
                assert!(b.head > b.position + 5, "{b:?}");
                behind += 1;
            }
            pb::feed_message::Item::Live(_) => {}
        }
    }
    assert!(behind >= 1, "never told it was behind");
    check_feed(&got, &a.tenant);
    assert_eq!(tagged(&got, "slow"), want("slow", 600));
}
