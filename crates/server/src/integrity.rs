//! `pypes check`: what a start does to a stopped server's data directory,
//! then every answer the data gives. The key store and the event log are
//! opened as `serve` opens them (a damaged copy repaired from its twin, a
//! torn tail cut, damage refused naming the file and offset); every view is
//! opened as `serve` opens it (a damaged one moved aside and rebuilt from
//! the log); then every event is decoded with its sealed fields opened,
//! every media blob is decrypted whole and checked against the SHA-256 the
//! log recorded, and every view's rows are read.
//!
//! The answers stay in memory (they hold personal data in clear); the
//! command prints counts and one SHA-256 over them, so two copies of a data
//! directory can be compared without showing their content. The integrity
//! test flips bytes of a data directory and compares these answers with
//! the pristine copy's.

use std::fmt::Write as _;
use std::path::Path;
use std::sync::Arc;

use actors::Codec;
use anyhow::Context;
use domain::pype::Pype;
use domain::session::{Session, SessionEvent};
use domain::subject::Subject;
use domain::tenant::Tenant;
use eventlog::{EventFilter, EventLog, RecordedEvent};
use keystore::embedded::OpenMode;
use keystore::{KeyId, KeyPolicy, Keyring};
use media::{BlobId, Decryptor};
use sha2::{Digest, Sha256};
use uuid::Uuid;

use crate::config::{KeysBackend, LogBackend};

/// Everything a data directory answers, and what opening it settled.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Answers {
    /// One line per event: position, stream, version, type, time and the
    /// decoded event (sealed fields opened, or `[erased]`).
    pub events: Vec<String>,
    /// One line per media blob the log recorded: its SHA-256 as read back,
    /// `erased`, or `DATA_LOSS` naming the media.
    pub media: Vec<String>,
    /// One line per view table: the serving generation's rows, digested.
    pub views: Vec<String>,
    /// What opening repaired, cut, migrated or set aside (not compared).
    pub settled: Vec<String>,
}

impl Answers {
    /// The SHA-256 of every answer (events, media, views), in hex.
    pub fn digest(&self) -> String {
        let mut h = Sha256::new();
        for line in self.events.iter().chain(&self.media).chain(&self.views) {
            h.update(line.as_bytes());
            h.update([0]);
        }
        hex::encode(h.finalize())
    }

    /// What `pypes check` prints: no personal data, only counts, what was
    /// settled, and the digest.
    pub fn summary(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(out, "events            {}", self.events.len());
        let lost = self.media.iter().filter(|m| m.contains("DATA_LOSS")).count();
        let _ = writeln!(out, "media blobs       {} ({lost} damaged)", self.media.len());
        for m in self.media.iter().filter(|m| m.contains("DATA_LOSS")) {
            let _ = writeln!(out, "  {m}");
        }
        let _ = writeln!(out, "view tables       {}", self.views.len());
        for s in &self.settled {
            let _ = writeln!(out, "settled           {s}");
        }
        let _ = writeln!(out, "answers sha256    {}", self.digest());
        out
    }

    /// [`Self::summary`] as one JSON object.
    pub fn summary_json(&self) -> serde_json::Value {
        let damaged: Vec<&String> = self.media.iter().filter(|m| m.contains("DATA_LOSS")).collect();
        serde_json::json!({
            "events": self.events.len(),
            "media_blobs": self.media.len(),
            "media_damaged": damaged,
            "view_tables": self.views.len(),
            "settled": self.settled,
            "answers_sha256": self.digest(),
        })
    }
}

/// Opens `data_dir` as a start would (embedded backends) and reads every
/// answer. An error is what would stop the start.
pub async fn check(data_dir: &Path, provider_dir: Option<&Path>) -> anyhow::Result<Answers> {
    let clock: Arc<dyn eventlog::Clock> = Arc::new(eventlog::SystemClock);
    let mut answers = Answers::default();
    let backend = KeysBackend::File { provider_dir: provider_dir.map(Path::to_path_buf) };
    let keys = crate::wiring::open_keys(&backend, data_dir, clock.clone(), OpenMode::MustExist).await?;
    for f in keys.findings() {
        answers.settled.push(format!("key store: {f}"));
    }
    let keyring = Keyring::new(keys.store.clone(), KeyPolicy::default())?;
    // The audit writer's node id, read as a start reads it.
    let node = data_dir.join(audit::NODE_FILE);
    if node.exists() {
        let text = std::fs::read_to_string(&node).with_context(|| format!("reading {}", node.display()))?;
        Uuid::parse_str(text.trim()).with_context(|| format!("{} does not hold a UUID", node.display()))?;
    }
    let signing = crate::wiring::read_signing_key(data_dir)?;
    let log = crate::wiring::open_log(
        &LogBackend::File { witness_dir: None, segment_size: None },
        data_dir,
        move || Ok(signing),
        clock,
    )
    .await?;
    // The log closes when dropped at the end (a file log writes its closing
    // checkpoint, as a stopped server's would).
    read_everything(data_dir, &log, &keyring, &mut answers).await.map(|()| answers)
}

async fn read_everything(
    data_dir: &Path,
    log: &Arc<dyn EventLog>,
    keyring: &Keyring,
    answers: &mut Answers,
) -> anyhow::Result<()> {
    let mut uploads = Vec::new();
    let mut from = 0;
    loop {
        let page = log.read_all(from, 1024, &EventFilter::all()).await?;
        for r in &page.events {
            answers.events.push(describe(r, keyring, &mut uploads).await?);
        }
        if page.events.is_empty() || page.next_position == from {
            break;
        }
        from = page.next_position;
    }
    let blobs = media::FileBlobStore::open(&data_dir.join("blobs")).context("opening the blob store")?;
    for (tenant, session, media, meta) in uploads {
        answers.media.push(read_blob(&blobs, keyring, BlobId { tenant, session, media }, &meta).await);
    }
    read_views(data_dir, log, answers)?;
    Ok(())
}

/// One event as a line; a Session's uploads are noted for the blob check.
async fn describe(
    r: &RecordedEvent,
    keyring: &Keyring,
    uploads: &mut Vec<(Uuid, Uuid, Uuid, domain::session::MediaMeta)>,
) -> anyhow::Result<String> {
    let head = format!("{} {} v{} {} {}", r.position, r.stream, r.version, r.event_type(), r.recorded_at_micros);
    let kind = r.stream.split('-').next().unwrap_or_default();
    let decoded = match kind {
        "session" => {
            let e = <Session as Codec>::decode(r, keyring).await.with_context(|| format!("decoding {head}"))?;
            if let SessionEvent::MediaUploaded { media, meta } = &e
                && let (Some(tenant), Ok(session)) = (r.event.tenant_id, session_id_of(&r.stream))
            {
                uploads.push((tenant, session, *media, meta.clone()));
            }
            format!("{e:?}")
        }
        "subject" => {
            format!("{:?}", <Subject as Codec>::decode(r, keyring).await.with_context(|| format!("decoding {head}"))?)
        }
        "pype" => {
            format!("{:?}", <Pype as Codec>::decode(r, keyring).await.with_context(|| format!("decoding {head}"))?)
        }
        "tenant" => {
            format!("{:?}", <Tenant as Codec>::decode(r, keyring).await.with_context(|| format!("decoding {head}"))?)
        }
        _ => format!("payload {}", hex::encode(Sha256::digest(&r.event.payload))),
    };
    Ok(format!("{head}: {decoded}"))
}

/// The Session id at the end of a stream name `session-<tenant>-<session>`.
fn session_id_of(stream: &str) -> Result<Uuid, uuid::Error> {
    let id = stream.get(stream.len().saturating_sub(36)..).unwrap_or_default();
    Uuid::parse_str(id)
}

/// A blob read back whole: its SHA-256, `erased`, or `DATA_LOSS` naming it.
async fn read_blob(
    blobs: &media::FileBlobStore,
    keyring: &Keyring,
    id: BlobId,
    meta: &domain::session::MediaMeta,
) -> String {
    let name = format!("media {}", id.media);
    let cipher = match keyring.media_cipher(id.tenant, KeyId(meta.key_id)).await {
        Ok(Some(c)) => c,
        Ok(None) => return format!("{name}: erased"),
        Err(e) => return format!("{name}: key error: {e}"),
    };
    let (reader, header) = match app::media::open_blob(blobs, id, meta).await {
        Ok(opened) => opened,
        // What a download answers (a missing blob of a live key included).
        Err(e) => return format!("{name}: DATA_LOSS: {e}"),
    };
    let dec = Decryptor::new(header, cipher);
    let mut hash = Sha256::new();
    for index in dec.chunks_of(0, meta.size) {
        let (at, len) = dec.stored_range(index);
        let plain = match reader.read_at(at, len).await {
            Ok(stored) => dec.open(index, stored, 0, meta.size).map_err(|e| e.to_string()),
            Err(e) => Err(e.to_string()),
        };
        match plain {
            Ok(p) => hash.update(&p),
            Err(e) => return format!("{name}: DATA_LOSS: chunk {index}: {e}"),
        }
    }
    let got = hash.finalize();
    if !meta.sha256.is_empty() && got[..] != meta.sha256[..] {
        return format!("{name}: DATA_LOSS: the plaintext's SHA-256 is not the one recorded");
    }
    format!("{name}: sha256 {}", hex::encode(got))
}

/// Every view as a start opens it, then its serving generation's rows.
fn read_views(data_dir: &Path, log: &Arc<dyn EventLog>, answers: &mut Answers) -> anyhow::Result<()> {
    let rt = tokio::runtime::Handle::current();
    for p in projections::all() {
        let path = data_dir.join("views").join(format!("{}.redb", p.name()));
        let (store, aside) = tokio::task::block_in_place(|| projections::ViewStore::open_or_set_aside(&path))
            .with_context(|| format!("opening {}", path.display()))?;
        if let Some(a) = aside {
            answers.settled.push(format!(
                "view {}: moved aside to {} ({}); rebuilt",
                p.name(),
                a.moved_to.display(),
                a.reason
            ));
        }
        // Up to the log's head from the view's checkpoint, as a start's
        // runner does before `/readyz`: a rebuild from 0 when it was set
        // aside; and when damage to the last commit made redb fall back to
        // the one before (a valid older state, checkpoint included), the
        // events since then are applied again.
        tokio::task::block_in_place(|| projections::rebuild_until(&*p, &store, log, &rt, None, 4096, &mut |_, _| {}))
            .with_context(|| format!("bringing {} up to the log's head", path.display()))?;
        let Some(view) = store.read()? else {
            answers.views.push(format!("{}: not built", p.name()));
            continue;
        };
        let prefix = format!("g{}/", view.generation().0);
        let mut tables: Vec<String> =
            store.table_names()?.into_iter().filter_map(|t| t.strip_prefix(&prefix).map(str::to_string)).collect();
        tables.sort();
        for table in tables.iter().filter(|t| *t != "meta") {
            let mut h = Sha256::new();
            let rows = view.dump(table)?;
            for (k, v) in &rows {
                h.update((k.len() as u32).to_le_bytes());
                h.update(k);
                h.update((v.len() as u32).to_le_bytes());
                h.update(v);
            }
            answers.views.push(format!("{}/{table}: {} rows {}", p.name(), rows.len(), hex::encode(h.finalize())));
        }
    }
    Ok(())
}
