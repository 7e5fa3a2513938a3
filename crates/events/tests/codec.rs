//! Every event variant of every entity survives the codec: encode (seal),
//! append to a log, read back, decode (open) gives the same event; the
//! Clear-only decoder used at start (timers) accepts every Session event.

use std::sync::Arc;

use domain::pype::{Pype, PypeEvent};
use domain::session::{Reason, Session, SessionEvent};
use domain::subject::{Birth, Subject, SubjectEvent};
use domain::tenant::{Tenant, TenantEvent};
use domain::{Aggregate, FieldClass, Timers};
use eventlog::mem::MemLog;
use eventlog::{Direction, EventLog, ExpectedVersion, ReadFrom};
use events::Codec;
use events::codec::decode_session_clear;
use keystore::crypto::SecretKey;
use keystore::{EmbeddedRootProvider, KeyPolicy, Keyring, LocalKeyStore, ShredTarget};
use uuid::Uuid;

fn keyring() -> Keyring {
    let provider = EmbeddedRootProvider::in_memory(SecretKey::random().unwrap(), 0).unwrap();
    let store = LocalKeyStore::in_memory(Arc::new(provider), Arc::new(eventlog::SystemClock));
    Keyring::new(Arc::new(store), KeyPolicy::default()).unwrap()
}

async fn round_trip<A: Codec + Aggregate>(state: &mut A, tenant: Uuid, stream: &str, events: Vec<A::Event>)
where
    A::Event: PartialEq + std::fmt::Debug,
{
    let keys = keyring();
    let log = MemLog::new();
    for e in &events {
        let stored = state.encode(e, tenant, stream, &keys).await.unwrap();
        log.append(stream, ExpectedVersion::Any, vec![stored]).await.unwrap();
        state.evolve(e);
    }
    let read = log.read_stream(stream, ReadFrom::Start, Direction::Forward, 1000).await.unwrap();
    assert_eq!(read.len(), events.len());
    for (r, e) in read.iter().zip(&events) {
        assert_eq!(&A::decode(r, &keys).await.unwrap_or_else(|err| panic!("{}: {err}", r.event_type())), e);
    }
}

struct Samples {
    tenant: Uuid,
    subject: Uuid,
    session: Uuid,
    pype: Uuid,
    session_events: Vec<SessionEvent>,
    subject_events: Vec<SubjectEvent>,
    tenant_events: Vec<TenantEvent>,
    pype_events: Vec<PypeEvent>,
}

/// One of every event variant, with every optional field present somewhere.
fn samples() -> Samples {
    let (tenant, subject, session, pype) = (Uuid::now_v7(), Uuid::now_v7(), Uuid::now_v7(), Uuid::now_v7());
    let (agent, request) = (Uuid::now_v7(), Uuid::now_v7());
    let session_events = vec![
        SessionEvent::Started {
            session,
            tenant,
            pype,
            end_user: subject,
            timers: Timers::DEFAULT,
            at_micros: 1,
            tracking: Default::default(),
        },
        SessionEvent::ParticipantJoined {
            participant: agent,
            kind: domain::session::ParticipantKind::Agent,
            at_micros: 2,
        },
        SessionEvent::MessagePosted {
            seq: 1,
            sender: subject,
            sent_at_micros: 3,
            body: "hi".into(),
            device: Some("phone".into()),
            attachments: vec![],
        },
        SessionEvent::MediaUploaded {
            media: request,
            meta: domain::session::MediaMeta {
                uploader: subject,
                content_type: "image/png".into(),
                size: 1234,
                sha256: vec![7; 32],
                file_name: Some("cat.png".into()),
                key_id: agent,
                at_micros: 4,
            },
        },
        SessionEvent::MessagePosted {
            seq: 2,
            sender: subject,
            sent_at_micros: 4,
            body: String::new(),
            device: None,
            attachments: vec![domain::session::Attachment {
                media: request,
                content_type: "image/png".into(),
                size: 1234,
                sha256: vec![7; 32],
                file_name: Some("cat.png".into()),
            }],
        },
        SessionEvent::ReadHorizonAdvanced { participant: agent, up_to: 1, private: false },
        SessionEvent::LocationShared { participant: subject, location: "1.000000,2.000000,5".into(), at_micros: 4 },
        SessionEvent::Restricted { at_micros: 5 },
        SessionEvent::RestrictionLifted { at_micros: 6 },
        SessionEvent::BecameInactive { reason: Reason::Timer, at_micros: 7 },
        SessionEvent::Reactivated { reason: Reason::Api, at_micros: 8 },
        SessionEvent::ParticipantLeft { participant: agent, at_micros: 9 },
        SessionEvent::Closed { reason: Reason::Api, at_micros: 10 },
        SessionEvent::ContentExpired { retention_days: 3, at_micros: 11 },
        SessionEvent::Erased { request, at_micros: 12 },
    ];
    let subject_events = vec![
        SubjectEvent::Registered {
            subject,
            tenant,
            username: "ann".into(),
            email: "a@example.com".into(),
            phone: "+4915112345678".into(),
            birth: Birth::Date { year: 1990, month: 5, day: 17 },
            at_micros: 1,
        },
        SubjectEvent::Invited { subject, tenant, email: "i@example.com".into(), at_micros: 2 },
        SubjectEvent::Onboarded {
            username: "ann2".into(),
            phone: "+4915100000000".into(),
            birth: Birth::AttestedAtLeast13,
            at_micros: 2,
        },
        SubjectEvent::PasswordSet { hash: "argon2id$v=19$m=19456,t=2,p=1$00$00".into(), at_micros: 2 },
        SubjectEvent::Rectified {
            email: Some("b@example.com".into()),
            phone: None,
            birth: Some(Birth::AttestedAtLeast13),
            at_micros: 3,
        },
        SubjectEvent::Rectified { email: None, phone: Some("+4915199999999".into()), birth: None, at_micros: 4 },
        SubjectEvent::ConsentGranted { purpose: "geolocation".into(), policy_version: "v1".into(), at_micros: 5 },
        SubjectEvent::ConsentWithdrawn { purpose: "geolocation".into(), at_micros: 6 },
        SubjectEvent::ProcessingRestricted { at_micros: 7 },
        SubjectEvent::RestrictionLifted { at_micros: 8 },
        SubjectEvent::RestrictionApplied { restricted: false, sessions: 3, at_micros: 8 },
        SubjectEvent::Deactivated { at_micros: 9 },
        SubjectEvent::Reactivated { at_micros: 10 },
        SubjectEvent::ErasureRequested { request, at_micros: 11, due_micros: 12 },
    ];
    let tenant_events = vec![
        TenantEvent::Created { tenant, name: "Acme".into(), settings: Default::default(), at_micros: 1 },
        TenantEvent::WebhookCreated {
            webhook: domain::tenant::Webhook {
                id: Uuid::from_u128(7),
                url: "https://hooks.example.com/pypes".into(),
                description: "CRM".into(),
                types: vec!["message.posted".into()],
                pype: Some(Uuid::from_u128(8)),
                secret: vec![1; 32],
                previous: None,
                created_micros: 1,
                paused: None,
            },
        },
        TenantEvent::WebhookSecretRotated {
            id: Uuid::from_u128(7),
            secret: vec![2; 32],
            previous_until_micros: 9,
            at_micros: 2,
        },
        TenantEvent::WebhookPaused { id: Uuid::from_u128(7), reason: "the endpoint answered 503".into(), at_micros: 2 },
        TenantEvent::WebhookResumed { id: Uuid::from_u128(7), at_micros: 2 },
        TenantEvent::WebhookDeleted { id: Uuid::from_u128(7), at_micros: 2 },
        TenantEvent::Cancelled { at_micros: 2 },
        TenantEvent::KeysShredded { key_fingerprints: vec!["sha256:00".into()], at_micros: 3 },
        TenantEvent::OffboardingCertified { certificate: "{}".into(), signature: "00".into() },
    ];
    let pype_events = vec![
        PypeEvent::Created {
            pype,
            tenant,
            name: "P".into(),
            description: String::new(),
            timers: Timers::DEFAULT,
            at_micros: 1,
        },
        PypeEvent::RetentionSet { days: Some(3) },
        PypeEvent::RetentionSet { days: Some(0) },
        PypeEvent::RetentionSet { days: None },
    ];
    Samples { tenant, subject, session, pype, session_events, subject_events, tenant_events, pype_events }
}

#[tokio::test]
async fn every_event_round_trips() {
    let Samples { tenant, subject, session, pype, session_events, subject_events, tenant_events, pype_events } =
        samples();
    let stream = format!("session-{tenant}-{session}");
    round_trip(&mut Session::default(), tenant, &stream, session_events.clone()).await;
    // The Clear-only decoder (timers at start) knows every type.
    let log = MemLog::new();
    let keys = keyring();
    let mut state = Session::default();
    for e in &session_events {
        log.append(&stream, ExpectedVersion::Any, vec![state.encode(e, tenant, &stream, &keys).await.unwrap()])
            .await
            .unwrap();
        state.evolve(e);
    }
    for r in log.read_stream(&stream, ReadFrom::Start, Direction::Forward, 100).await.unwrap() {
        decode_session_clear(&r).unwrap_or_else(|e| panic!("{}: {e}", r.event_type()));
    }

    round_trip(&mut Subject::default(), tenant, &format!("subject-{tenant}-{subject}"), subject_events).await;

    round_trip(&mut Tenant::default(), tenant, &format!("tenant-{tenant}-{tenant}"), tenant_events).await;

    round_trip(&mut Pype::default(), tenant, &format!("pype-{tenant}-{pype}"), pype_events).await;
}

/// The variant of an event, as the domain's `FIELDS` tables name it.
fn variant(e: &impl std::fmt::Debug) -> String {
    format!("{e:?}").split([' ', '{', '(']).next().unwrap_or_default().to_string()
}

/// Checks that what `encode` seals is what `fields` says is personal or
/// content, under the key its class names, and that nothing `fields` calls
/// personal or content goes unsealed.
async fn tie<A: Codec + Aggregate>(
    fields: &[(&str, &str, FieldClass)],
    state: &mut A,
    (tenant, subject, session): (Uuid, Uuid, Uuid),
    stream: &str,
    events: &[A::Event],
    keys: &Keyring,
) -> std::collections::BTreeSet<(String, String)> {
    let mut sealed_seen = std::collections::BTreeSet::new();
    for e in events {
        let stored = state.encode(e, tenant, stream, keys).await.unwrap();
        let name = variant(e);
        for f in &stored.sealed_fields {
            let class = fields
                .iter()
                .find(|(v, field, _)| *v == name && *field == f.field)
                .map(|(_, _, c)| *c)
                .unwrap_or_else(|| panic!("{name}.{} is sealed but not in FIELDS", f.field));
            let key = keystore::KeyId::from_slice(&f.key_id).unwrap();
            let owner = match class {
                FieldClass::Clear => panic!("{name}.{} is Clear in FIELDS but sealed", f.field),
                FieldClass::Pii(group) => ShredTarget::Subject { subject, group: Some(keystore_group(group)) },
                FieldClass::Content => ShredTarget::Session { session },
                FieldClass::TenantSecret => ShredTarget::Tenant,
            };
            let owned = keys.keys_of(tenant, owner).await.unwrap();
            assert!(owned.contains(&key), "{name}.{} is sealed under a key its class {class:?} does not name", f.field);
            sealed_seen.insert((name.clone(), f.field.clone()));
        }
        state.evolve(e);
    }
    sealed_seen
}

fn keystore_group(g: domain::PiiGroup) -> keystore::Group {
    match g {
        domain::PiiGroup::Profile => keystore::Group::Profile,
        domain::PiiGroup::Device => keystore::Group::Device,
        domain::PiiGroup::Geo => keystore::Group::Geo,
    }
}

/// The domain's `FIELDS` tables are read by code: every sealed field of
/// every event is listed there with a personal or content class and sealed
/// under the key that class names; every field listed as personal or
/// content is sealed by some event.
#[tokio::test]
async fn every_sealed_field_is_the_one_fields_names() {
    let s = samples();
    let keys = keyring();
    let mut seen = tie(
        domain::session::FIELDS,
        &mut Session::default(),
        (s.tenant, s.subject, s.session),
        &format!("session-{}-{}", s.tenant, s.session),
        &s.session_events,
        &keys,
    )
    .await;
    seen.extend(
        tie(
            domain::subject::FIELDS,
            &mut Subject::default(),
            (s.tenant, s.subject, s.session),
            &format!("subject-{}-{}", s.tenant, s.subject),
            &s.subject_events,
            &keys,
        )
        .await,
    );
    for table in [domain::session::FIELDS, domain::subject::FIELDS] {
        for (v, field, class) in table {
            if *class != FieldClass::Clear {
                assert!(
                    seen.contains(&(v.to_string(), field.to_string())),
                    "FIELDS says {v}.{field} is {class:?}, but no event seals it"
                );
            }
        }
    }
    seen.extend(
        tie(
            domain::tenant::FIELDS,
            &mut Tenant::default(),
            (s.tenant, s.subject, s.session),
            &format!("tenant-{}-{}", s.tenant, s.tenant),
            &s.tenant_events,
            &keys,
        )
        .await,
    );
    for (v, field, class) in domain::tenant::FIELDS {
        if *class != FieldClass::Clear {
            assert!(seen.contains(&(v.to_string(), field.to_string())), "{v}.{field} is {class:?} but never sealed");
        }
    }
    // Tenants and Pypes hold nothing personal: their tables are Clear but
    // for the tenant's own secrets (webhook signing secrets).
    for (v, field, class) in domain::tenant::FIELDS.iter().chain(domain::pype::FIELDS) {
        assert!(matches!(class, FieldClass::Clear | FieldClass::TenantSecret), "{v}.{field}");
    }
}

#[tokio::test]
async fn webhook_process_records_round_trip() {
    use events::codec::{self, WebhookRedeliveryState};
    let log = MemLog::new();
    let states = [
        WebhookRedeliveryState { from_micros: 10, to_micros: 20, after_position: None, sent: 0, done: false },
        WebhookRedeliveryState { from_micros: 10, to_micros: 20, after_position: Some(0), sent: 1, done: false },
        WebhookRedeliveryState { from_micros: -5, to_micros: 20, after_position: Some(77), sent: 9, done: true },
    ];
    let stream = events::stream::webhook_redelivery_stream(Uuid::now_v7());
    for s in &states {
        log.append(&stream, ExpectedVersion::Any, vec![codec::webhook_redelivery(s)]).await.unwrap();
    }
    let read = log.read_stream(&stream, ReadFrom::Start, Direction::Forward, 10).await.unwrap();
    let back: Vec<_> = read.iter().map(|r| codec::decode_webhook_redelivery(r).unwrap()).collect();
    assert_eq!(back, states, "position 0 and no position are told apart");
    let checkpoints = [(None, None), (Some(0), None), (Some(5), Some(123))];
    let stream = events::stream::webhook_process_stream(Uuid::now_v7());
    for (p, f) in checkpoints {
        log.append(&stream, ExpectedVersion::Any, vec![codec::webhook_checkpoint(p, f)]).await.unwrap();
    }
    let read = log.read_stream(&stream, ReadFrom::Start, Direction::Forward, 10).await.unwrap();
    let back: Vec<_> = read.iter().map(|r| codec::decode_webhook_checkpoint(r).unwrap()).collect();
    assert_eq!(back, checkpoints);
}
