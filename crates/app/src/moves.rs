//! Moving a tenant to another region (docs/residency.md, "Moving a
//! tenant"): freeze, copy, verify, switch, shred; each step resumable.
//!
//! 1. **Freeze** ([`App::begin_move`], old region): the directory holds
//!    the tenant as `from>to`; neither region serves it (the old answers
//!    `UNAVAILABLE`, the new sends callers to the old). The call returns
//!    after every node of the region has seen the freeze (twice
//!    [`PLACEMENT_TTL`] plus [`DIRECTORY_REFRESH`]); the privacy processes and retention
//!    sweeps of both regions leave the tenant alone while it moves.
//! 2. **Copy** ([`App::read_move`] on the old region, [`App::write_move`]
//!    on the new, relayed by `pypes tenant move`): the tenant's keys
//!    (unwrapped, taken in under the new region's KEK with their ids and
//!    reservations), every event of its streams as stored (sealed fields
//!    as sealed: the AAD names tenant, stream, event id and key, all
//!    kept), and its blobs as stored. The new region appends each event
//!    at the version it has in the old one; what it holds already it
//!    checks by id and skips, so a copy broken anywhere is run again.
//! 3. **Verify** ([`App::move_digest`] on both): one SHA-256 over every
//!    stream's events, the keys (ids, purposes, material) and the blobs.
//! 4. **Switch** ([`App::finish_move`], old region): the old region
//!    computes its digest again, and only if it equals the new region's
//!    records `TenantMoveSwitched` (`moved-<tenant>`) and switches the
//!    directory to the new region.
//! 5. **Shred** (the same call, resumed after a crash from the record):
//!    the tenant's KEK and keys destroyed, its blobs deleted, every
//!    stream of it hard-deleted and the log scavenged (no file of the old
//!    region holds its bytes), then a signed certificate, kept as
//!    `TenantMoveCertified`.
//! 6. **Adopt** ([`App::adopt_move`], new region): webhook deliveries go
//!    on from the first event the old region had not delivered, and the
//!    privacy processes the old region left open are resumed.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use audit::Record;
use domain::tenant::Tenant;
use eventlog::{DeleteMode, Direction, EventFilter, ExpectedVersion, LogError, ReadFrom, RecordedEvent, StreamAppend};
use events::codec::MoveSwitched;
use keystore::{KeyPurpose, ShredTarget, TenantKeys};
use media::{BlobError, BlobId, BlobWriter};
use proto::Message;
use sha2::{Digest, Sha256};
use tokio::sync::mpsc;
use uuid::Uuid;

use crate::auth::{Caller, Credentials};
use crate::call::current_actor;
use crate::regions::{DIRECTORY_REFRESH, PLACEMENT_TTL, Placement, Regions, Residence};
use crate::{App, AppError, parse_id};

/// Kinds of stream a move copies: the tenant's entities and its
/// username reservations.
const MOVED: [&str; 5] = ["tenant", "pype", "session", "subject", "username"];
/// Streams of the tenant a move does not copy but deletes with the rest:
/// end users' login sessions and lockouts (end users sign in again in the
/// new region). Snapshots (`snapshot-<moved stream>`) are made again there.
const LEFT: [&str; 2] = ["authsession", "loginfail"];
/// Events in one part, at most (and at most [`PART_BYTES`] of them).
const PART_EVENTS: usize = 256;
const PART_BYTES: usize = 2 << 20;
/// Keys in one part, at most.
const PART_KEYS: usize = 1000;
/// Bytes of a blob in one part.
pub const BLOB_CHUNK: usize = 1 << 20;
/// Streams deleted at once when the old region shreds.
const DELETES_AT_ONCE: usize = 32;

pub const CERTIFICATE_FORMAT: &str = "pypes-tenant-move-certificate/v1";
const DIGEST_FORMAT: &[u8] = b"pypes-move-digest/v1";

/// One part of a move, old region to new.
#[derive(Debug)]
pub enum MovePart {
    /// Keys (the first part also lists the destroyed ones).
    Keys(TenantKeys),
    /// Events of the tenant's streams, in the old region's log order.
    Events(Vec<RecordedEvent>),
    /// A chunk of a blob, as stored (sealed).
    Blob { id: BlobId, size: u64, offset: u64, data: Vec<u8> },
}

/// What a region holds of a tenant, summed up.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MoveDigest {
    pub streams: u64,
    pub events: u64,
    pub keys: u64,
    pub keys_shredded: u64,
    pub blobs: u64,
    pub blob_bytes: u64,
    /// `sha256:<hex>` over all of it.
    pub digest: String,
}

/// What one copy wrote in the new region.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MoveWritten {
    pub events_written: u64,
    /// Events the new region held already (a resumed copy).
    pub events_present: u64,
    pub keys_added: u64,
    pub keys_present: u64,
    /// Keys destroyed in the new region because the old one had.
    pub keys_shredded: u64,
    pub blobs_written: u64,
    pub blobs_present: u64,
}

/// A finished move, as the old region reports it.
#[derive(Debug, Clone)]
pub struct MoveDone {
    pub to_region: String,
    pub certificate: String,
    pub signature: String,
    /// (webhook, first event it had not delivered), for the new region.
    pub undelivered: Vec<(Uuid, Uuid)>,
}

/// What adopting a moved tenant did in the new region.
#[derive(Debug, Clone, Default)]
pub struct Adopted {
    pub webhooks: u64,
    pub erasures_resumed: u64,
    pub restrictions_resumed: u64,
}

fn prefixes(tenant: Uuid, kinds: &[&str]) -> Vec<String> {
    kinds.iter().map(|k| format!("{k}-{tenant}-")).collect()
}

/// Whether `stream` is one of the tenant's streams a move copies.
pub fn is_moved_stream(stream: &str, tenant: Uuid) -> bool {
    prefixes(tenant, &MOVED).iter().any(|p| stream.starts_with(p.as_str()))
}

fn purpose_text(p: &KeyPurpose) -> String {
    match *p {
        KeyPurpose::Subject { subject, group } => format!("subject:{subject}:{}", group.name()),
        KeyPurpose::SessionContent { session } => format!("session:{session}"),
        KeyPurpose::Media { session, media } => format!("media:{session}:{media}"),
        KeyPurpose::TenantIndex { tenant } => format!("index:{tenant}"),
    }
}

fn hash_bytes(h: &mut Sha256, bytes: &[u8]) {
    h.update((bytes.len() as u64).to_be_bytes());
    h.update(bytes);
}

/// A blob of `size` bytes as chunks (offset, length): one, empty, for an
/// empty blob (so the new region makes it too).
fn chunks(size: u64) -> impl Iterator<Item = (u64, usize)> {
    let step = BLOB_CHUNK as u64;
    (0..size.div_ceil(step).max(1)).map(move |i| (i * step, (size - i * step).min(step) as usize))
}

fn blob_error(e: BlobError) -> AppError {
    AppError::from(e)
}

impl App {
    /// The regions, for a call made with the platform's admin key: a move
    /// hands a tenant's keys over, so no staff role may.
    async fn move_regions(&self, who: &Credentials) -> Result<&Arc<Regions>, AppError> {
        // A staff member is refused (and audited) by the role table, which
        // lists none of these calls.
        if !matches!(self.platform(who).await?, Caller::Admin) {
            return Err(AppError::Forbidden(
                "moving a tenant between regions takes the platform's admin key (it hands the tenant's keys over)"
                    .into(),
            ));
        }
        self.regions.as_ref().ok_or_else(|| {
            AppError::FailedPrecondition(
                "this node has no [regions] in its configuration: there is nowhere to move a tenant".into(),
            )
        })
    }

    /// Step 1 (old region): freezes the tenant for its move to `to`.
    /// Again on a frozen tenant: nothing new (a resumed move).
    pub async fn begin_move(&self, who: &Credentials, tenant_id: &str, to: &str) -> Result<Placement, AppError> {
        let regions = self.move_regions(who).await?;
        let tenant = parse_id("tenant_id", tenant_id)?;
        regions.require_known(to, "to_region")?;
        let this = regions.this().to_string();
        if to == this {
            return Err(AppError::invalid("to_region", format!("the tenant would move from region {this} to itself")));
        }
        let moving = Placement { region: this.clone(), moving_to: Some(to.into()) };
        match regions.placement_now(tenant).await? {
            Some(p) if p == moving => {}
            Some(p) if p == Placement::settled(&this) => {
                let t = self.registry.read::<Tenant>(tenant, tenant).await?.into_state();
                if t.id.is_none() {
                    return Err(AppError::NotFound(format!("tenant {tenant}")));
                }
                if t.cancelled {
                    return Err(AppError::FailedPrecondition(format!(
                        "tenant {tenant} is cancelled (offboarding): it is shredded, not moved"
                    )));
                }
                // In the trail before the directory changes.
                self.audit
                    .record(
                        Record::new("region.move_started", current_actor(), "ok")
                            .tenant(tenant)
                            .detail(format!("from={this} to={to}")),
                    )
                    .await?;
                regions.replace(tenant, &p, &moving).await?;
                tracing::info!(%tenant, from = %this, %to, "tenant frozen for its move");
            }
            Some(p) if p == Placement::settled(to) => return Ok(p),
            Some(p) => {
                return Err(AppError::FailedPrecondition(format!(
                    "tenant {tenant} is not in this region ({this}) to move: the directory holds {p:?}"
                )));
            }
            None => {
                return Err(AppError::FailedPrecondition(format!(
                    "tenant {tenant} is not in the tenant directory (made before [regions] was configured, or \
                     unknown): it cannot be moved"
                )));
            }
        }
        // Every node of this region trusts what it read of a placement for
        // PLACEMENT_TTL (and a directory in memory lags by DIRECTORY_REFRESH
        // at most): after twice that, none serves the tenant.
        tokio::time::sleep((PLACEMENT_TTL + DIRECTORY_REFRESH) * 2).await;
        Ok(moving)
    }

    async fn require_residence(&self, regions: &Regions, tenant: Uuid, leaving: bool) -> Result<String, AppError> {
        let residence = regions.residence_of(regions.placement_now(tenant).await?);
        match (&residence, leaving) {
            (Residence::Leaving { to }, true) => Ok(to.clone()),
            (Residence::Arriving { from }, false) => Ok(from.clone()),
            _ => Err(AppError::FailedPrecondition(format!(
                "tenant {tenant} is not moving {} region {} ({residence:?}); start with BeginMove on the old region",
                if leaving { "out of" } else { "into" },
                regions.this()
            ))),
        }
    }

    /// Step 2, old region: everything of the tenant, as parts.
    pub async fn read_move(
        self: &Arc<Self>,
        who: &Credentials,
        tenant_id: &str,
    ) -> Result<mpsc::Receiver<Result<MovePart, AppError>>, AppError> {
        let regions = self.move_regions(who).await?;
        let tenant = parse_id("tenant_id", tenant_id)?;
        let to = self.require_residence(regions, tenant, true).await?;
        self.audit
            .record(Record::new("region.move_read", current_actor(), "ok").tenant(tenant).detail(format!("to={to}")))
            .await?;
        let store = self.keyring.store().clone();
        let keys = tokio::task::spawn_blocking(move || store.export_tenant(tenant))
            .await
            .map_err(|e| AppError::Internal(format!("key export task: {e}")))??;
        let (tx, rx) = mpsc::channel(4);
        let app = self.clone();
        tokio::spawn(async move {
            if let Err(e) = app.send_move(tenant, keys, &tx).await {
                let _ = tx.send(Err(e)).await;
            }
        });
        Ok(rx)
    }

    async fn send_move(
        &self,
        tenant: Uuid,
        keys: TenantKeys,
        tx: &mpsc::Sender<Result<MovePart, AppError>>,
    ) -> Result<(), AppError> {
        let closed = || AppError::Unavailable("the move's reader went away".into());
        let TenantKeys { live, mut shredded } = keys;
        let mut live = live.into_iter().peekable();
        loop {
            let chunk: Vec<_> = live.by_ref().take(PART_KEYS).collect();
            let last = live.peek().is_none();
            let part = TenantKeys { live: chunk, shredded: std::mem::take(&mut shredded) };
            tx.send(Ok(MovePart::Keys(part))).await.map_err(|_| closed())?;
            if last {
                break;
            }
        }
        let mut scan = Scan::new(self.log.as_ref(), tenant, &MOVED, 0, PART_EVENTS);
        while let Some(page) = scan.next(self.log.as_ref()).await? {
            let mut part = Vec::new();
            let mut bytes = 0;
            for r in page {
                let size =
                    r.event.payload.len() + r.event.sealed_fields.iter().map(|f| f.ciphertext.len()).sum::<usize>();
                if !part.is_empty() && bytes + size > PART_BYTES {
                    tx.send(Ok(MovePart::Events(std::mem::take(&mut part)))).await.map_err(|_| closed())?;
                    bytes = 0;
                }
                bytes += size;
                part.push(r);
            }
            if !part.is_empty() {
                tx.send(Ok(MovePart::Events(part))).await.map_err(|_| closed())?;
            }
        }
        for id in self.media.store.committed_of(tenant).await.map_err(blob_error)? {
            let reader = match self.media.store.open(id).await {
                Ok(r) => r,
                // Deleted since it was listed (an erasure).
                Err(BlobError::NotFound(_)) => continue,
                Err(e) => return Err(blob_error(e)),
            };
            let size = reader.len();
            for (offset, n) in chunks(size) {
                let data = reader.read_at(offset, n).await.map_err(blob_error)?;
                tx.send(Ok(MovePart::Blob { id, size, offset, data })).await.map_err(|_| closed())?;
            }
        }
        Ok(())
    }

    /// Step 2, new region: takes the parts in. Every part names the
    /// tenant (`Err`: the stream broke, or a part that could not be read).
    pub async fn write_move(
        &self,
        who: &Credentials,
        mut parts: mpsc::Receiver<Result<(String, MovePart), AppError>>,
    ) -> Result<MoveWritten, AppError> {
        let regions = self.move_regions(who).await?;
        let mut tenant: Option<Uuid> = None;
        let mut written = MoveWritten::default();
        let mut streams: HashMap<String, Copied> = HashMap::new();
        let mut blob: Option<Incoming> = None;
        let mut event_parts = 0;
        while let Some(item) = parts.recv().await {
            let (tenant_id, part) = item?;
            let t = parse_id("tenant_id", &tenant_id)?;
            match tenant {
                None => {
                    self.require_residence(regions, t, false).await?;
                    tenant = Some(t);
                }
                Some(first) if first != t => {
                    return Err(AppError::invalid("tenant_id", "every part of a move names the same tenant"));
                }
                Some(_) => {}
            }
            match part {
                MovePart::Keys(keys) => self.take_keys(t, keys, &mut written).await?,
                MovePart::Events(events) => {
                    self.take_events(t, events, &mut streams, &mut written).await?;
                    event_parts += 1;
                    crate::hooks::crash_point("move", "events", event_parts);
                }
                MovePart::Blob { id, size, offset, data } => {
                    if id.tenant != t {
                        return Err(AppError::invalid("blob", format!("blob {id} is not tenant {t}'s")));
                    }
                    self.take_blob(&mut blob, id, size, offset, data, &mut written).await?;
                }
            }
        }
        if let Some(b) = blob {
            if let Some(w) = b.writer {
                let _ = w.abort().await;
            }
            return Err(AppError::invalid("blob", format!("the stream ended inside blob {}", b.id)));
        }
        if let Some(t) = tenant {
            self.audit
                .record(Record::new("region.move_written", current_actor(), "ok").tenant(t).detail(format!(
                    "events={} present={} keys={} blobs={}",
                    written.events_written, written.events_present, written.keys_added, written.blobs_written
                )))
                .await?;
        }
        Ok(written)
    }

    async fn take_keys(&self, tenant: Uuid, keys: TenantKeys, written: &mut MoveWritten) -> Result<(), AppError> {
        let store = self.keyring.store().clone();
        let report = tokio::task::spawn_blocking(move || store.import_tenant(tenant, &keys))
            .await
            .map_err(|e| AppError::Internal(format!("key import task: {e}")))??;
        written.keys_added += report.added as u64;
        written.keys_present += report.present as u64;
        for id in report.to_shred {
            // Through the keyring, so its cache forgets the key too.
            self.keyring.shred(tenant, ShredTarget::Key(id)).await?;
            written.keys_shredded += 1;
        }
        Ok(())
    }

    async fn take_events(
        &self,
        tenant: Uuid,
        events: Vec<RecordedEvent>,
        streams: &mut HashMap<String, Copied>,
        written: &mut MoveWritten,
    ) -> Result<(), AppError> {
        // Streams in the order they first appear, each with its new events.
        let mut order: Vec<String> = Vec::new();
        let mut new: HashMap<String, Vec<eventlog::NewEvent>> = HashMap::new();
        for r in events {
            let stream = r.stream.to_string();
            if !is_moved_stream(&stream, tenant) {
                return Err(AppError::invalid(
                    "events",
                    format!("stream {} is not one of tenant {tenant}'s streams a move copies", domain::quote(&stream)),
                ));
            }
            if r.event.tenant_id.is_some_and(|t| t != tenant) {
                return Err(AppError::invalid(
                    "events",
                    format!("event {} of {stream} names another tenant", r.event.id),
                ));
            }
            if !streams.contains_key(&stream) {
                let copied = Copied::load(self.log.as_ref(), &stream).await?;
                streams.insert(stream.clone(), copied);
            }
            let Some(c) = streams.get_mut(&stream) else { continue };
            if c.seen < c.ids.len() {
                if c.ids[c.seen] != r.event.id {
                    return Err(AppError::DataLoss(format!(
                        "stream {stream} in this region holds event {} where the old region has {} (event {} of the \
                         stream): the copies differ; abort the move",
                        c.ids[c.seen], r.event.id, c.seen
                    )));
                }
                c.seen += 1;
                written.events_present += 1;
                continue;
            }
            c.seen += 1;
            if !new.contains_key(&stream) {
                order.push(stream.clone());
            }
            new.entry(stream).or_default().push(r.event);
        }
        if order.is_empty() {
            return Ok(());
        }
        let mut appends = Vec::with_capacity(order.len());
        for stream in &order {
            let events = new.remove(stream).unwrap_or_default();
            let c = &streams[stream];
            let expected = match c.last_version {
                None => ExpectedVersion::NoStream,
                Some(v) => ExpectedVersion::Exact(v),
            };
            appends.push(StreamAppend { stream: stream.clone(), expected, events });
        }
        let counts: Vec<(String, u64)> = appends.iter().map(|a| (a.stream.clone(), a.events.len() as u64)).collect();
        actors::write::append_copied(self.log.as_ref(), appends).await?;
        for (stream, n) in counts {
            if let Some(c) = streams.get_mut(&stream) {
                c.last_version = Some(c.last_version.map_or(n - 1, |v| v + n));
            }
            written.events_written += n;
        }
        Ok(())
    }

    async fn take_blob(
        &self,
        current: &mut Option<Incoming>,
        id: BlobId,
        size: u64,
        offset: u64,
        data: Vec<u8>,
        written: &mut MoveWritten,
    ) -> Result<(), AppError> {
        if offset == 0 {
            if let Some(b) = current.take() {
                if let Some(w) = b.writer {
                    let _ = w.abort().await;
                }
                return Err(AppError::invalid("blob", format!("blob {} ended early, blob {id} began", b.id)));
            }
            let here = match self.media.store.open(id).await {
                Ok(r) => r.len() == size,
                Err(BlobError::NotFound(_)) => false,
                Err(e) => return Err(blob_error(e)),
            };
            let writer = match here {
                true => None,
                false => Some(self.media.store.create(id).await.map_err(blob_error)?),
            };
            *current = Some(Incoming { id, size, next: 0, writer });
        }
        let Some(b) = current.as_mut() else {
            return Err(AppError::invalid("blob", format!("a chunk of blob {id} at {offset} without its start")));
        };
        if b.id != id || b.size != size || b.next != offset || offset + data.len() as u64 > size {
            return Err(AppError::invalid(
                "blob",
                format!(
                    "chunk of blob {id} at {offset} ({} bytes) does not follow blob {} at {}",
                    data.len(),
                    b.id,
                    b.next
                ),
            ));
        }
        b.next += data.len() as u64;
        if let Some(w) = b.writer.as_mut() {
            w.write(data).await.map_err(blob_error)?;
        }
        if b.next == size {
            let Some(b) = current.take() else { return Ok(()) };
            match b.writer {
                Some(w) => {
                    w.commit().await.map_err(blob_error)?;
                    // Its events are in the log already (they come first).
                    self.media.store.confirm(id).await.map_err(blob_error)?;
                    written.blobs_written += 1;
                }
                None => written.blobs_present += 1,
            }
        }
        Ok(())
    }

    /// Step 3, either region: the digest of what it holds of the tenant.
    pub async fn move_digest(&self, who: &Credentials, tenant_id: &str) -> Result<MoveDigest, AppError> {
        self.move_regions(who).await?;
        let tenant = parse_id("tenant_id", tenant_id)?;
        self.digest_of(tenant).await
    }

    async fn digest_of(&self, tenant: Uuid) -> Result<MoveDigest, AppError> {
        let mut d = MoveDigest::default();
        let mut streams: BTreeMap<String, (u64, Sha256)> = BTreeMap::new();
        let mut scan = Scan::new(self.log.as_ref(), tenant, &MOVED, 0, 1024);
        while let Some(page) = scan.next(self.log.as_ref()).await? {
            for r in &page {
                let (n, h) = streams.entry(r.stream.to_string()).or_insert_with(|| (0, Sha256::new()));
                // As stored, less where this log put it.
                hash_bytes(h, &r.event.to_stored(&r.stream, 0, 0, 0).encode_to_vec());
                *n += 1;
            }
        }
        let mut all = Sha256::new();
        all.update(DIGEST_FORMAT);
        for (name, (n, h)) in streams {
            hash_bytes(&mut all, name.as_bytes());
            all.update(n.to_be_bytes());
            all.update(h.finalize());
            d.streams += 1;
            d.events += n;
        }
        let store = self.keyring.store().clone();
        let keys = tokio::task::spawn_blocking(move || store.export_tenant(tenant))
            .await
            .map_err(|e| AppError::Internal(format!("key export task: {e}")))?;
        match keys {
            Ok(keys) => {
                all.update(b"keys");
                for k in &keys.live {
                    all.update(k.id.as_bytes());
                    hash_bytes(&mut all, purpose_text(&k.purpose).as_bytes());
                    all.update(Sha256::digest(k.material.expose()));
                }
                all.update(b"shredded");
                for id in &keys.shredded {
                    all.update(id.as_bytes());
                }
                d.keys = keys.live.len() as u64;
                d.keys_shredded = keys.shredded.len() as u64;
            }
            Err(keystore::KeyError::TenantShredded { .. }) => all.update(b"kek destroyed"),
            Err(e) => return Err(e.into()),
        }
        all.update(b"blobs");
        for id in self.media.store.committed_of(tenant).await.map_err(blob_error)? {
            let reader = match self.media.store.open(id).await {
                Ok(r) => r,
                Err(BlobError::NotFound(_)) => continue,
                Err(e) => return Err(blob_error(e)),
            };
            let size = reader.len();
            let mut h = Sha256::new();
            for (offset, n) in chunks(size) {
                h.update(reader.read_at(offset, n).await.map_err(blob_error)?);
            }
            hash_bytes(&mut all, id.to_string().as_bytes());
            all.update(size.to_be_bytes());
            all.update(h.finalize());
            d.blobs += 1;
            d.blob_bytes += size;
        }
        d.digest = format!("sha256:{}", hex::encode(all.finalize()));
        Ok(d)
    }

    /// Steps 4 and 5 (old region): switch, then shred and certify.
    /// `destination_digest` is the new region's [`MoveDigest::digest`].
    /// Resumable: after the switch it goes on from the record.
    pub async fn finish_move(
        &self,
        who: &Credentials,
        tenant_id: &str,
        destination_digest: &str,
    ) -> Result<MoveDone, AppError> {
        let regions = self.move_regions(who).await?;
        let tenant = parse_id("tenant_id", tenant_id)?;
        let record = events::stream::moved_stream(tenant);
        let (switched, certified) = self.move_record(&record).await?;
        if let (Some(s), Some((certificate, signature))) = (&switched, certified) {
            return Ok(MoveDone {
                to_region: s.to_region.clone(),
                certificate,
                signature,
                undelivered: s.undelivered.clone(),
            });
        }
        let placement = regions.placement_now(tenant).await?;
        let switched = match (regions.residence_of(placement.clone()), switched) {
            (Residence::Leaving { to }, _) => {
                let mine = self.digest_of(tenant).await?;
                if mine.digest != destination_digest {
                    return Err(AppError::FailedPrecondition(format!(
                        "the new region's copy ({destination_digest}) is not this region's ({}: {} streams, {} \
                         events, {} keys, {} blobs): copy again and compare",
                        mine.digest, mine.streams, mine.events, mine.keys, mine.blobs
                    )));
                }
                let keys = self.keyring.keys_of(tenant, ShredTarget::Tenant).await?;
                let s = MoveSwitched {
                    to_region: to.clone(),
                    digest: mine.digest,
                    key_fingerprints: keys.into_iter().map(|k| crate::erasure::key_fingerprint(tenant, k)).collect(),
                    at_micros: self.clock.now_micros(),
                    undelivered: self.undelivered(tenant).await?,
                    streams: mine.streams,
                    events: mine.events,
                    keys: mine.keys,
                    blobs: mine.blobs,
                };
                actors::write::append(
                    self.log.as_ref(),
                    &record,
                    ExpectedVersion::Any,
                    vec![events::codec::move_switched(&s)],
                )
                .await?;
                let Some(p) = placement else { return Err(AppError::Internal("placement vanished".into())) };
                regions.replace(tenant, &p, &Placement::settled(&to)).await?;
                self.audit
                    .record(
                        Record::new("region.move_switched", current_actor(), "ok")
                            .tenant(tenant)
                            .detail(format!("to={to} events={} keys={} blobs={}", s.events, s.keys, s.blobs)),
                    )
                    .await?;
                tracing::info!(%tenant, %to, "tenant moved: the directory names its new region");
                crate::hooks::crash_point("move", "switched", 0);
                s
            }
            (Residence::Elsewhere { region }, Some(s)) if s.to_region == region => s,
            (residence, _) => {
                return Err(AppError::FailedPrecondition(format!(
                    "tenant {tenant} is not moving out of region {} ({residence:?}); start with BeginMove",
                    regions.this()
                )));
            }
        };
        // This node's deliveries for the tenant stop now (others within
        // PLACEMENT_TTL: a worker checks the tenant's region as it goes).
        // (After a crash past the deletes the tenant's stream is gone: nothing runs for it.)
        if let Ok(t) = self.registry.read::<Tenant>(tenant, tenant).await {
            self.deliveries.reconcile(tenant, &t.state);
        }
        let done = self.shred_moved(tenant, &switched).await?;
        let (certificate, signature) = done;
        actors::write::append(
            self.log.as_ref(),
            &record,
            ExpectedVersion::Any,
            vec![events::codec::move_certified(&certificate, &signature)],
        )
        .await?;
        self.audit
            .record(Record::new("region.tenant_moved", current_actor(), "ok").tenant(tenant).detail(format!(
                "to={} keys={}",
                switched.to_region,
                switched.key_fingerprints.len()
            )))
            .await?;
        Ok(MoveDone { to_region: switched.to_region, certificate, signature, undelivered: switched.undelivered })
    }

    /// The move's record in this region: its switch and its certificate.
    async fn move_record(&self, record: &str) -> Result<(Option<MoveSwitched>, Option<(String, String)>), AppError> {
        let events = match self.log.read_stream(record, ReadFrom::Start, Direction::Forward, 1024).await {
            Ok(e) => e,
            Err(LogError::StreamNotFound { .. }) => Vec::new(),
            Err(e) => return Err(e.into()),
        };
        let mut switched = None;
        let mut certified = None;
        for r in &events {
            match r.event_type() {
                events::types::TENANT_MOVE_SWITCHED => switched = Some(events::codec::decode_move_switched(r)?),
                events::types::TENANT_MOVE_CERTIFIED => certified = Some(events::codec::decode_move_certified(r)?),
                _ => {}
            }
        }
        Ok((switched, certified))
    }

    /// Per webhook endpoint of the tenant, the first event of its streams
    /// past the endpoint's checkpoint (none: all delivered).
    async fn undelivered(&self, tenant: Uuid) -> Result<Vec<(Uuid, Uuid)>, AppError> {
        let t = self.registry.read::<Tenant>(tenant, tenant).await?.into_state();
        let mut out = Vec::new();
        for (id, webhook) in &t.webhooks {
            let checkpoint =
                match actors::write::last_event(self.log.as_ref(), &events::stream::webhook_process_stream(*id)).await?
                {
                    Some(r) => events::codec::decode_webhook_checkpoint(&r)?.0,
                    None => None,
                };
            let mut scan = Scan::new(self.log.as_ref(), tenant, &MOVED, checkpoint.map_or(0, |p| p + 1), 256);
            while let Some(page) = scan.next(self.log.as_ref()).await? {
                // Without a checkpoint, what came before the endpoint is not its to deliver.
                let first =
                    page.iter().find(|r| checkpoint.is_some() || r.recorded_at_micros >= webhook.created_micros);
                if let Some(r) = first {
                    out.push((*id, r.event.id));
                    break;
                }
            }
        }
        Ok(out)
    }

    /// Step 5: the old region's keys, blobs and streams of the tenant
    /// destroyed; the certificate (text, signature).
    async fn shred_moved(&self, tenant: Uuid, s: &MoveSwitched) -> Result<(String, String), AppError> {
        self.keyring.shred(tenant, ShredTarget::Tenant).await?;
        let kek_shredded_at = self.clock.now_micros();
        crate::hooks::crash_point("move", "shredded", 0);
        let blobs = self.media.store.delete_tenant(tenant).await.map_err(blob_error)?;
        // Every stream of the tenant, copied or not, and their snapshots.
        let mut kinds: Vec<String> = MOVED.iter().chain(LEFT.iter()).map(|k| k.to_string()).collect();
        kinds.extend(MOVED.iter().map(|k| format!("snapshot-{k}")));
        let kinds: Vec<&str> = kinds.iter().map(String::as_str).collect();
        let mut names: Vec<String> = Vec::new();
        let mut seen = std::collections::HashSet::new();
        let mut scan = Scan::new(self.log.as_ref(), tenant, &kinds, 0, 4096);
        while let Some(page) = scan.next(self.log.as_ref()).await? {
            for r in &page {
                if seen.insert(r.stream.clone()) {
                    names.push(r.stream.to_string());
                }
            }
        }
        let deleted = names.len();
        for chunk in names.chunks(DELETES_AT_ONCE) {
            let mut deletes = tokio::task::JoinSet::new();
            for name in chunk {
                let (log, name) = (self.log.clone(), name.clone());
                deletes.spawn(async move {
                    match log.delete_stream(&name, ExpectedVersion::Any, DeleteMode::Hard).await {
                        Ok(()) | Err(LogError::StreamDeleted { .. }) | Err(LogError::StreamNotFound { .. }) => Ok(()),
                        Err(e) => Err(e),
                    }
                });
            }
            while let Some(r) = deletes.join_next().await {
                r.map_err(|e| AppError::Internal(format!("stream delete task: {e}")))??;
            }
        }
        let scavenged = self.log.scavenge().await?;
        tracing::info!(%tenant, streams = deleted, blobs, ?scavenged, "moved tenant: its streams deleted and scavenged");
        let now = self.clock.now_micros();
        crate::certificate::sign(
            &crate::certificate::Move {
                format: CERTIFICATE_FORMAT,
                tenant_id: tenant.to_string(),
                from_region: self.regions.as_ref().map_or(String::new(), |r| r.this().to_string()),
                to_region: s.to_region.clone(),
                switched_at: audit::time::time_text(s.at_micros),
                kek_shredded_at: audit::time::time_text(kek_shredded_at),
                issued_at: audit::time::time_text(now),
                copy_digest: s.digest.clone(),
                streams: s.streams,
                events: s.events,
                keys: s.keys,
                blobs: s.blobs,
                streams_deleted: deleted as u64,
                destroyed_key_fingerprints: &s.key_fingerprints,
                signing_public_key: hex::encode(self.signing.verifying_key().as_bytes()),
            },
            &self.signing,
        )
    }

    /// Step 6 (new region, after the switch): webhook deliveries and the
    /// privacy processes the old region left open go on here.
    /// `undelivered` is [`MoveDone::undelivered`]. Again: nothing new.
    pub async fn adopt_move(
        &self,
        who: &Credentials,
        tenant_id: &str,
        undelivered: &[(String, String)],
    ) -> Result<Adopted, AppError> {
        let regions = self.move_regions(who).await?;
        let tenant = parse_id("tenant_id", tenant_id)?;
        let placement = regions.placement_now(tenant).await?;
        if regions.residence_of(placement.clone()) != Residence::Here || placement.is_none() {
            return Err(AppError::FailedPrecondition(format!(
                "tenant {tenant} is not this region's yet ({placement:?}): finish the move on the old region first"
            )));
        }
        let mut starts: HashMap<Uuid, Uuid> = HashMap::new();
        for (w, e) in undelivered {
            starts.insert(parse_id("webhook_id", w)?, parse_id("event_id", e)?);
        }
        let t = self.registry.read::<Tenant>(tenant, tenant).await?.into_state();
        let mut adopted = Adopted::default();
        let head = self.log.head();
        for id in t.webhooks.keys() {
            let stream = events::stream::webhook_process_stream(*id);
            if actors::write::last_event(self.log.as_ref(), &stream).await?.is_some() {
                continue;
            }
            // Delivered up to the event before the first one the old region had not.
            let after = match starts.get(id) {
                Some(event) => self.position_of(tenant, *event).await?.map(|p| p.saturating_sub(1)),
                None => None,
            };
            let checkpoint = after.unwrap_or(head.saturating_sub(1));
            crate::delivery::save_checkpoint(self, *id, Some(checkpoint), None).await?;
            adopted.webhooks += 1;
        }
        self.deliveries.reconcile(tenant, &t);
        let open = crate::unfinished::scan(self.log.as_ref()).await?;
        let erasures: Vec<(Uuid, Uuid)> = open.erasures.into_iter().filter(|(t, _)| *t == tenant).collect();
        let restrictions: Vec<(Uuid, Uuid)> = open.restrictions.into_iter().filter(|(t, _)| *t == tenant).collect();
        adopted.erasures_resumed = erasures.len() as u64;
        adopted.restrictions_resumed = restrictions.len() as u64;
        self.erasures.resume(erasures).await;
        tokio::spawn(self.restrictions.clone().recover(restrictions));
        self.audit
            .record(Record::new("region.move_adopted", current_actor(), "ok").tenant(tenant).detail(format!(
                "webhooks={} erasures={} restrictions={}",
                adopted.webhooks, adopted.erasures_resumed, adopted.restrictions_resumed
            )))
            .await?;
        Ok(adopted)
    }

    /// Where event `id` of the tenant's streams is in this region's log.
    async fn position_of(&self, tenant: Uuid, id: Uuid) -> Result<Option<u64>, AppError> {
        let mut scan = Scan::new(self.log.as_ref(), tenant, &MOVED, 0, 4096);
        while let Some(page) = scan.next(self.log.as_ref()).await? {
            if let Some(r) = page.iter().find(|r| r.event.id == id) {
                return Ok(Some(r.position));
            }
        }
        Ok(None)
    }
}

/// A read of the tenant's streams of some kinds in `$all`, page by page,
/// up to the head as it was when the read began.
struct Scan {
    filter: EventFilter,
    from: u64,
    head: u64,
    page: usize,
}

impl Scan {
    fn new(log: &dyn eventlog::EventLog, tenant: Uuid, kinds: &[&str], from: u64, page: usize) -> Self {
        Self {
            filter: EventFilter { stream_prefixes: prefixes(tenant, kinds), event_types: Vec::new() },
            from,
            head: log.head(),
            page,
        }
    }

    /// The next page (`None`: the read is done).
    async fn next(&mut self, log: &dyn eventlog::EventLog) -> Result<Option<Vec<RecordedEvent>>, AppError> {
        if self.from >= self.head {
            return Ok(None);
        }
        let page = log.read_all(self.from, self.page, &self.filter).await?;
        self.from = if page.next_position <= self.from { self.head } else { page.next_position };
        let head = self.head;
        Ok(Some(page.events.into_iter().filter(|r| r.position < head).collect()))
    }
}

/// What the new region holds of one stream, as a copy goes through it.
struct Copied {
    /// Ids of its events here when the copy began.
    ids: Vec<Uuid>,
    /// Events of the stream the copy has come to.
    seen: usize,
    /// Its last version here.
    last_version: Option<u64>,
}

impl Copied {
    async fn load(log: &dyn eventlog::EventLog, stream: &str) -> Result<Self, AppError> {
        let mut ids = Vec::new();
        let mut last_version = None;
        let mut from = ReadFrom::Start;
        loop {
            let page = match log.read_stream(stream, from, Direction::Forward, 4096).await {
                Ok(p) => p,
                Err(LogError::StreamNotFound { .. }) => break,
                Err(LogError::StreamDeleted { .. }) => {
                    return Err(AppError::FailedPrecondition(format!(
                        "stream {stream} was deleted in this region (the tenant left it before): a tenant cannot \
                         return to a region it moved out of"
                    )));
                }
                Err(e) => return Err(e.into()),
            };
            let Some(last) = page.last() else { break };
            last_version = Some(last.version);
            from = ReadFrom::Version(last.version + 1);
            let full = page.len() == 4096;
            ids.extend(page.iter().map(|r| r.event.id));
            if !full {
                break;
            }
        }
        Ok(Self { ids, seen: 0, last_version })
    }
}

/// A blob being taken in (`writer`: none when it is here whole already).
struct Incoming {
    id: BlobId,
    size: u64,
    next: u64,
    writer: Option<Box<dyn BlobWriter>>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blobs_go_in_chunks_and_an_empty_one_in_one_empty_chunk() {
        let mib = BLOB_CHUNK as u64;
        assert_eq!(chunks(0).collect::<Vec<_>>(), [(0, 0)]);
        assert_eq!(chunks(5).collect::<Vec<_>>(), [(0, 5)]);
        assert_eq!(chunks(mib).collect::<Vec<_>>(), [(0, BLOB_CHUNK)]);
        assert_eq!(chunks(mib + 1).collect::<Vec<_>>(), [(0, BLOB_CHUNK), (mib, 1)]);
    }

    #[test]
    fn a_move_copies_the_tenants_own_streams_only() {
        let (t, other) = (Uuid::now_v7(), Uuid::now_v7());
        for kind in MOVED {
            assert!(is_moved_stream(&format!("{kind}-{t}-{}", Uuid::now_v7()), t), "{kind}");
            assert!(!is_moved_stream(&format!("{kind}-{other}-{}", Uuid::now_v7()), t), "{kind}");
        }
        for left in ["authsession", "loginfail", "snapshot-session", "process-webhook", "audit"] {
            assert!(!is_moved_stream(&format!("{left}-{t}-x"), t), "{left}");
        }
        assert!(!is_moved_stream(&format!("moved-{t}"), t));
    }
}
