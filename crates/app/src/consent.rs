//! The consent process: a withdrawn consent for `geolocation` makes every
//! location the subject shared unreadable (their location keys are
//! shredded), including one whose consent check ran just before the
//! withdrawal and whose seal reached the log after it.
//!
//! Driven by events: the process follows the log's `LocationShared`
//! events; for each it asks whether the end user's consent held at that
//! event's position (their subject stream up to it), and when it did not,
//! shreds their location keys. Its progress is a checkpoint on the stream
//! `process-consent-locations`; after a restart it goes on from there.
//! Nothing waits for a race to pass: the late location is itself the
//! event that triggers the shred.

use std::sync::Arc;
use std::time::Duration;

use domain::subject::{Subject, SubjectEvent};
use eventlog::{Direction, EventFilter, EventLog, ExpectedVersion, LogError, ReadFrom};
use keystore::{Group, Keyring, ShredTarget};
use uuid::Uuid;

use crate::AppError;

/// The process's name (its checkpoint stream is `process-<name>`).
pub const NAME: &str = "consent-locations";
/// A checkpoint is written at least this many positions apart.
const CHECKPOINT_EVERY: u64 = 100_000;

pub struct Consents {
    log: Arc<dyn EventLog>,
    keyring: Keyring,
}

impl Consents {
    pub fn new(log: Arc<dyn EventLog>, keyring: Keyring) -> Arc<Self> {
        Arc::new(Self { log, keyring })
    }

    /// Shreds the subject's location keys; how many were destroyed.
    pub async fn shred_locations(&self, tenant: Uuid, subject: Uuid) -> Result<usize, AppError> {
        let target = ShredTarget::Subject { subject, group: Some(Group::Geo) };
        Ok(self.keyring.shred(tenant, target).await?.keys.len())
    }

    /// Whether the subject's consent to geolocation held (granted, not
    /// restricted) just before log position `position`.
    pub async fn consented_before(&self, tenant: Uuid, subject: Uuid, position: u64) -> Result<bool, AppError> {
        let stream = events::stream_name(events::Kind::Subject, tenant, subject);
        let mut state = Subject::default();
        let mut from = 0;
        loop {
            let page = match self.log.read_stream(&stream, ReadFrom::Version(from), Direction::Forward, 256).await {
                Ok(p) => p,
                Err(LogError::StreamNotFound { .. } | LogError::StreamDeleted { .. }) => return Ok(false),
                Err(e) => return Err(e.into()),
            };
            for r in &page {
                if r.position >= position {
                    return Ok(state.location_consented());
                }
                use events::types as ty;
                // Only the events consent depends on (all Clear).
                if matches!(
                    r.event_type(),
                    ty::CONSENT_GRANTED
                        | ty::CONSENT_WITHDRAWN
                        | ty::SUBJECT_PROCESSING_RESTRICTED
                        | ty::SUBJECT_RESTRICTION_LIFTED
                ) {
                    let e: SubjectEvent = <Subject as events::Codec>::decode(r, &self.keyring).await?;
                    domain::Aggregate::evolve(&mut state, &e);
                }
                from = r.version + 1;
            }
            if page.len() < 256 {
                return Ok(state.location_consented());
            }
        }
    }

    async fn checkpoint(&self) -> Result<u64, AppError> {
        let stream = events::stream::process_stream(NAME);
        match actors::write::last_event(self.log.as_ref(), &stream).await? {
            Some(r) => Ok(events::codec::decode_process_checkpoint(&r)?),
            None => Ok(0),
        }
    }

    async fn save_checkpoint(&self, position: u64) -> Result<(), AppError> {
        let stream = events::stream::process_stream(NAME);
        let event = events::codec::process_checkpoint(position);
        actors::write::append(self.log.as_ref(), &stream, ExpectedVersion::Any, vec![event]).await?;
        Ok(())
    }

    /// Handles the locations in the log from `from`; the position it
    /// reached.
    pub async fn catch_up(&self, from: u64) -> Result<u64, AppError> {
        let filter = EventFilter {
            stream_prefixes: vec![events::Kind::Session.prefix().into()],
            event_types: vec![events::types::LOCATION_SHARED.into()],
        };
        let mut at = from;
        let mut saved = from;
        loop {
            let page = self.log.read_all(at, 1024, &filter).await?;
            for r in &page.events {
                let Some(tenant) = r.event.tenant_id else { continue };
                let subject = events::codec::location_shared_by(r)?;
                if !self.consented_before(tenant, subject, r.position).await? {
                    let keys = self.shred_locations(tenant, subject).await?;
                    tracing::info!(%tenant, %subject, position = r.position, keys, "a location shared without consent (it raced a withdrawal): the subject's location keys shredded");
                }
            }
            let reached = page.next_position.max(at);
            if !page.events.is_empty() || reached - saved >= CHECKPOINT_EVERY {
                self.save_checkpoint(reached).await?;
                saved = reached;
            }
            if reached >= page.head || reached == at {
                return Ok(reached);
            }
            at = reached;
        }
    }

    /// Follows the log for the life of the process, from its checkpoint.
    pub async fn run(self: Arc<Self>) {
        let mut head = self.log.watch_head();
        let mut backoff = Duration::from_millis(200);
        let mut at = loop {
            match self.checkpoint().await {
                Ok(p) => break p,
                Err(e) => {
                    tracing::warn!(error = %e, "consent process: cannot read its checkpoint; retrying");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(60));
                }
            }
        };
        loop {
            match self.catch_up(at).await {
                Ok(p) => {
                    at = p;
                    backoff = Duration::from_millis(200);
                    if head.changed().await.is_err() {
                        return;
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "consent process failed; retrying");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(60));
                }
            }
        }
    }
}
