//! `loadgen rebuild`: how fast the projections rebuild from a log of N
//! events (a realistic mix: Sessions with a join, many sealed messages and
//! a close), against a raw `$all` read of the same log in the same run;
//! the time from a purge event to every projection's acknowledgement; and
//! the shred time for a subject whose key sealed 10 fields and 100,000.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Result;
use bytes::Bytes;
use eventlog::file::FileLog;
use eventlog::{EventFilter, EventLog, ExpectedVersion, NewEvent, SealedField};
use projections::{Runner, RunnerConfig, ViewStore, rebuild_all};
use prost::Message;
use proto::events as pb;
use uuid::Uuid;

fn ev(t: &str, tenant: Uuid, p: impl Message) -> NewEvent {
    let mut e = NewEvent::new(t, Bytes::from(p.encode_to_vec()));
    e.tenant_id = Some(tenant);
    e
}

fn id(u: Uuid) -> Bytes {
    Bytes::copy_from_slice(u.as_bytes())
}

pub async fn fill(log: &Arc<FileLog>, events: u64, sessions: u64, tenant: Uuid) -> Result<Vec<(Uuid, Uuid)>> {
    let pype = Uuid::now_v7();
    let ids: Vec<(Uuid, Uuid)> = (0..sessions).map(|_| (Uuid::now_v7(), Uuid::now_v7())).collect();
    let per_session = (events / sessions).max(4);
    let body = SealedField {
        field: "body".into(),
        key_id: Bytes::from(vec![9u8; 16]),
        nonce: Bytes::from(vec![7u8; 12]),
        ciphertext: Bytes::from(vec![0x5au8; 256 + 16]),
    };
    let t0 = 1_795_996_800_000_000i64;
    // Rounds of 50 events per Session, Sessions interleaved, 4 writers.
    let chunk = 50u64;
    let rounds = per_session.div_ceil(chunk);
    let writers = 4;
    let mut tasks = Vec::new();
    for w in 0..writers {
        let log = log.clone();
        let ids = ids.clone();
        let body = body.clone();
        tasks.push(tokio::spawn(async move {
            for round in 0..rounds {
                for (i, (session, user)) in ids.iter().enumerate() {
                    if i % writers != w {
                        continue;
                    }
                    let agent = Uuid::from_u128(7);
                    let mut batch = Vec::new();
                    for k in round * chunk..((round + 1) * chunk).min(per_session) {
                        let at = t0 + (i as i64) * 1_000_000 + k as i64 * 10_000_000;
                        let e = match k {
                            0 => ev(
                                "SessionStarted",
                                tenant,
                                pb::SessionStarted {
                                    session_id: id(*session),
                                    tenant_id: id(tenant),
                                    pype_id: id(pype),
                                    end_user_id: id(*user),
                                    timers: None,
                                    at_micros: at,
                                    ..Default::default()
                                },
                            ),
                            1 => ev(
                                "ParticipantJoined",
                                tenant,
                                pb::ParticipantJoined {
                                    participant_id: id(agent),
                                    kind: pb::ParticipantKind::Agent as i32,
                                    at_micros: at,
                                },
                            ),
                            k if k == per_session - 1 => ev(
                                "SessionClosed",
                                tenant,
                                pb::SessionStateChanged { reason: pb::ChangeReason::Api as i32, at_micros: at },
                            ),
                            k => {
                                let end_user = k % 2 == 0;
                                let mut m = ev(
                                    "MessagePosted",
                                    tenant,
                                    pb::MessagePosted {
                                        seq: k - 1,
                                        sender_id: id(if end_user { *user } else { agent }),
                                        sent_at_micros: at,
                                        has_device: false,
                                        sender_kind: if end_user {
                                            pb::ParticipantKind::EndUser as i32
                                        } else {
                                            pb::ParticipantKind::Agent as i32
                                        },
                                        attachment_count: 0,
                                    },
                                );
                                m.sealed_fields = vec![body.clone()];
                                m
                            }
                        };
                        batch.push(e);
                    }
                    if !batch.is_empty() {
                        log.append(&format!("session-{tenant}-{session}"), ExpectedVersion::Any, batch).await?;
                    }
                }
            }
            anyhow::Ok(())
        }));
    }
    for t in tasks {
        t.await??;
    }
    Ok(ids)
}

/// The tenant and (Session, end user) pairs of a log written by [`fill`].
async fn started_sessions(log: &dyn EventLog) -> Result<(Uuid, Vec<(Uuid, Uuid)>)> {
    let (mut from, mut out, mut tenant) = (0, Vec::new(), None);
    let filter = EventFilter::event_type("SessionStarted");
    loop {
        let page = log.read_all(from, 4096, &filter).await?;
        for e in &page.events {
            let p = pb::SessionStarted::decode(e.event.payload.as_ref())?;
            tenant = tenant.or(e.event.tenant_id);
            out.push((Uuid::from_slice(&p.session_id)?, Uuid::from_slice(&p.end_user_id)?));
        }
        if page.next_position >= page.head || page.next_position <= from {
            break;
        }
        from = page.next_position;
    }
    Ok((tenant.ok_or_else(|| anyhow::anyhow!("the kept log holds no Session"))?, out))
}

fn raw_read(log: &Arc<dyn EventLog>, rt: &tokio::runtime::Handle) -> Result<(u64, Duration)> {
    let started = Instant::now();
    let mut from = 0;
    let mut n = 0;
    let filter = EventFilter { stream_prefixes: vec!["session-".into(), "subject-".into()], event_types: vec![] };
    loop {
        let page = log.read_all_on_thread(rt, from, 8192, &filter)?;
        if page.events.is_empty() && page.next_position <= from {
            break;
        }
        n += page.events.len() as u64;
        // Touch every event (the read has decoded them, as for a rebuild).
        for e in &page.events {
            std::hint::black_box(e.event.payload.len());
        }
        from = page.next_position;
    }
    Ok((n, started.elapsed()))
}

pub fn run(
    dir: &Path,
    keep_log: Option<&Path>,
    events: u64,
    sessions: u64,
    rt: &tokio::runtime::Runtime,
) -> Result<()> {
    let log_dir = keep_log.map(Path::to_path_buf).unwrap_or_else(|| dir.join("log"));
    let log = Arc::new(FileLog::open(&log_dir, crate::config())?);
    let started = Instant::now();
    let (tenant, ids) = if log.head() == 0 {
        let tenant = Uuid::now_v7();
        (tenant, rt.block_on(fill(&log, events, sessions, tenant))?)
    } else {
        rt.block_on(started_sessions(log.as_ref()))?
    };
    let total = log.head();
    println!("# rebuild: {total} events over {} Sessions ready in {:.1}s", ids.len(), started.elapsed().as_secs_f64());
    let log: Arc<dyn EventLog> = log;
    let handle = rt.handle().clone();

    let mut rows = Vec::new();
    for round in 0..2 {
        let cpu = crate::apibench::cpu_seconds(None);
        let (n, raw) = raw_read(&log, &handle)?;
        let raw_cpu = crate::apibench::cpu_seconds(None) - cpu;
        // Sessions and analytics views together from one read of the log.
        let views = dir.join(format!("views-{round}"));
        let built: Vec<Arc<dyn projections::Projection>> = vec![
            Arc::new(projections::sessions::SessionsProjection),
            Arc::new(projections::analytics::AnalyticsProjection),
        ];
        let stores = built
            .iter()
            .map(|p| ViewStore::open(&views.join(format!("{}.redb", p.name()))))
            .collect::<Result<Vec<_>, _>>()?;
        let targets: Vec<(&dyn projections::Projection, &ViewStore)> =
            built.iter().zip(&stores).map(|(p, s)| (p.as_ref(), s)).collect();
        let (started, cpu) = (Instant::now(), crate::apibench::cpu_seconds(None));
        rebuild_all(&targets, &log, &handle, None, 8192, &mut |_, _| {})?;
        let both = started.elapsed();
        let cpu = crate::apibench::cpu_seconds(None) - cpu;
        let rate = n as f64 / both.as_secs_f64();
        let raw_rate = n as f64 / raw.as_secs_f64();
        let size: u64 = stores.iter().filter_map(|s| std::fs::metadata(s.path()).ok()).map(|m| m.len()).sum();
        println!(
            "BENCH rebuild round={round} events={n} seconds={:.2} events_per_s={rate:.0} raw_read_events_per_s={raw_rate:.0} ratio={:.2} cpu_us_per_event={:.2} raw_read_cpu_us_per_event={:.2} views_mib={:.1}",
            both.as_secs_f64(),
            rate / raw_rate,
            cpu * 1e6 / n as f64,
            raw_cpu * 1e6 / n as f64,
            size as f64 / (1 << 20) as f64
        );
        rows.push(rate);
    }

    // Purge → every projection acknowledged, with live runners caught up.
    let views = dir.join("views-live");
    let mut runners = Vec::new();
    for p in projections::all() {
        let store = Arc::new(ViewStore::open(&views.join(format!("{}.redb", p.name())))?);
        runners.push(Runner::start(p, store, log.clone(), RunnerConfig::default(), handle.clone())?);
    }
    let head = log.head();
    rt.block_on(async {
        for r in &runners {
            r.wait_for(head).await;
        }
    });
    for (i, (session, user)) in ids.iter().take(5).enumerate() {
        let request = Uuid::now_v7();
        let purge = ev(
            projections::PURGE_EVENT,
            tenant,
            pb::SubjectErasureKeysShredded {
                subject_id: id(*user),
                request_id: id(request),
                session_ids: vec![id(*session)],
                at_micros: 0,
            },
        );
        let t = Instant::now();
        rt.block_on(log.append(&format!("subject-{tenant}-{user}"), ExpectedVersion::Any, vec![purge]))?;
        loop {
            let done = runners.iter().all(|r| r.store().acknowledged(request).ok().flatten().is_some());
            if done {
                break;
            }
            std::thread::sleep(Duration::from_micros(200));
        }
        println!(
            "BENCH purge sample={i} messages_in_session={} ms_to_all_acknowledged={:.1}",
            total / ids.len().max(1) as u64 - 3,
            t.elapsed().as_secs_f64() * 1e3
        );
    }
    for r in &runners {
        r.stop();
    }

    // Shred time: a subject whose key sealed 10 fields, and 100,000.
    let keydir = dir.join("keys");
    let keys = keystore::embedded::open_embedded(
        &keydir,
        Some(&"11".repeat(32)),
        Arc::new(eventlog::SystemClock),
        keystore::embedded::OpenMode::CreateIfEmpty,
    )?;
    let keyring = keystore::Keyring::new(keys.store.clone(), keystore::KeyPolicy::default())?;
    for sealed in [10u64, 100_000] {
        let mut samples = Vec::new();
        for _ in 0..5 {
            let subject = Uuid::now_v7();
            let purpose = keystore::KeyPurpose::Subject { subject, group: keystore::Group::Profile };
            let stream = format!("subject-{tenant}-{subject}");
            for _ in 0..sealed {
                let aad = keystore::Aad { tenant, stream: &stream, event_id: Uuid::now_v7() };
                keyring.seal_blocking("email", b"someone@example.com", &purpose, &aad)?;
            }
            let t = Instant::now();
            keyring.shred_blocking(tenant, &keystore::ShredTarget::Subject { subject, group: None })?;
            samples.push(t.elapsed().as_secs_f64() * 1e3);
        }
        samples.sort_by(f64::total_cmp);
        println!("BENCH shred sealed_fields={sealed} median_ms={:.2} max_ms={:.2}", samples[2], samples[4]);
    }
    Ok(())
}
