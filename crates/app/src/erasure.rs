//! The erasure process (GDPR Art. 17), resumable at every step because
//! each step is recorded on the subject's stream and repeating a step that
//! is done changes nothing:
//!
//! 1. `SubjectErasureRequested` (due 30 days later): the subject takes no
//!    other command from now on.
//! 2. `SubjectErasureShredPlanned`: once the sessions view has seen the
//!    request, the Sessions the subject took part in as end user are closed
//!    for good (`SessionErased`, so nothing new is sealed under a key about
//!    to go), the username's reservation is soft-deleted while the name
//!    can still be read (if it is still this subject's), so the name can
//!    be registered again, and the fingerprints of every key to destroy
//!    are recorded.
//! 3. The keys are shredded (the subject's profile/device/geo keys, each
//!    Session's content and media keys), then `SubjectErasureKeysShredded`.
//! 4. Every projection purges the subject's rows on that event and
//!    acknowledges in the same transaction; when all have, the tombstone
//!    `SubjectErased` (no personal data).
//! 5. An Ed25519-signed JSON certificate, kept as `SubjectErasureCertified`.
//!
//! Open requests are found again at start (a filtered `$all` scan) and
//! driven to the end; their age shows in metrics, and requests past the
//! warning age or overdue are logged.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use actors::Registry;
use audit::time::time_text;
use domain::session::{Session, SessionCommand};
use domain::subject::{Erasure, Subject, SubjectCommand};
use ed25519_dalek::SigningKey;
use eventlog::{Direction, EventLog, ReadFrom};
use keystore::{Keyring, ShredTarget};
use proto::Message;
use sha2::{Digest, Sha256};
use uuid::Uuid;

use crate::error::AppError;
use crate::views::Views;

/// How often open requests past their warning age are reported.
const REPORT_EVERY: Duration = Duration::from_secs(3600);

/// Format tag of the certificate JSON.
pub const CERTIFICATE_FORMAT: &str = crate::certificate::ERASURE_FORMAT;

#[derive(Debug, Clone, Copy)]
pub struct ErasureConfig {
    /// Age at which an open request is reported (default 20 days).
    pub warn_after_days: u32,
}

impl Default for ErasureConfig {
    fn default() -> Self {
        Self { warn_after_days: 20 }
    }
}

pub struct Erasures {
    registry: Arc<Registry>,
    log: Arc<dyn EventLog>,
    keyring: Keyring,
    views: Arc<Views>,
    signing: SigningKey,
    config: ErasureConfig,
    /// Media of the erased Sessions are deleted after their keys are shredded.
    blobs: Arc<dyn media::BlobStore>,
    /// Open requests: (tenant, subject) → (requested µs, due µs).
    open: Mutex<HashMap<(Uuid, Uuid), (i64, i64)>>,
    running: Mutex<std::collections::HashSet<(Uuid, Uuid)>>,
    /// Data residency: a tenant moving between regions waits, another
    /// region's is left to it (set once, by `App::new`).
    regions: std::sync::OnceLock<Arc<crate::regions::Regions>>,
}

/// Where an erasure stands, for the API and the CLI.
#[derive(Debug, Clone, Default)]
pub struct Status {
    pub request: Uuid,
    pub step: &'static str,
    pub requested_micros: i64,
    pub due_micros: i64,
    pub certificate: String,
    pub signature: String,
}

pub fn status_of(e: &Erasure) -> Status {
    let step = if e.certificate.is_some() {
        "certified"
    } else if e.erased.is_some() {
        "erased"
    } else if e.shredded.is_some() {
        "keys_shredded"
    } else {
        "requested"
    };
    let (certificate, signature) = e.certificate.clone().unwrap_or_default();
    Status {
        request: e.request,
        step,
        requested_micros: e.requested_micros,
        due_micros: e.due_micros,
        certificate,
        signature,
    }
}

/// `sha256:<hex>` of a destroyed key: its tenant and id, never its material.
pub fn key_fingerprint(tenant: Uuid, key: keystore::KeyId) -> String {
    let mut h = Sha256::new();
    h.update(b"pypes/key-fingerprint/v1");
    h.update(tenant.as_bytes());
    h.update(key.as_bytes());
    format!("sha256:{}", hex::encode(h.finalize()))
}

/// Crash tests (`test-hooks` feature): `PYPES_CRASH_AT=erasure:<step>`
/// aborts the process right after that step.
fn crash_point(step: &str) {
    crate::hooks::crash_point("erasure", step, 0);
}

fn now_micros() -> i64 {
    eventlog::Clock::now_micros(&eventlog::SystemClock)
}

impl Erasures {
    pub fn new(
        registry: Arc<Registry>,
        log: Arc<dyn EventLog>,
        keyring: Keyring,
        views: Arc<Views>,
        signing: SigningKey,
        config: ErasureConfig,
        blobs: Arc<dyn media::BlobStore>,
    ) -> Arc<Self> {
        Arc::new(Self {
            registry,
            log,
            keyring,
            views,
            signing,
            config,
            blobs,
            open: Mutex::default(),
            running: Mutex::default(),
            regions: std::sync::OnceLock::new(),
        })
    }

    pub(crate) fn set_regions(&self, regions: Arc<crate::regions::Regions>) {
        let _ = self.regions.set(regions);
    }

    pub fn public_key_hex(&self) -> String {
        hex::encode(self.signing.verifying_key().as_bytes())
    }

    /// Records the request (idempotent: a second request returns the first)
    /// and starts the process.
    pub async fn request(self: &Arc<Self>, tenant: Uuid, subject: Uuid) -> Result<Status, AppError> {
        let before = self.registry.read::<Subject>(tenant, subject).await?.into_state();
        before.require_exists().map_err(|r| AppError::Actor(actors::ActorError::Rejected(r)))?;
        let request = before.erasure.as_ref().map_or_else(Uuid::now_v7, |e| e.request);
        let done =
            self.registry.execute::<Subject>(tenant, subject, SubjectCommand::RequestErasure { request }).await?;
        let e = done.into_state().erasure.ok_or_else(|| AppError::Internal("erasure not recorded".into()))?;
        tracing::info!(%tenant, %subject, request = %e.request, "erasure requested");
        self.spawn(tenant, subject, &e);
        Ok(status_of(&e))
    }

    /// A Session started while the subject's erasure was being requested
    /// (see `crate::sessions`): its start reached the log after the request,
    /// so the erasure's plan may not name it. It is closed for good and its
    /// keys shredded and media deleted now, as the plan's Sessions are.
    pub async fn erase_late_session(
        &self,
        tenant: Uuid,
        subject: Uuid,
        session: Uuid,
        request: Uuid,
    ) -> Result<(), AppError> {
        match self.registry.execute::<Session>(tenant, session, SessionCommand::Erase { request }).await {
            Ok(_) | Err(actors::ActorError::Rejected(domain::Rejection::NotFound { .. })) => {}
            Err(e) => return Err(e.into()),
        }
        let keys = self.keyring.shred(tenant, ShredTarget::Session { session }).await?;
        let blobs = self.blobs.delete_session(tenant, session).await?;
        tracing::info!(%tenant, %subject, %session, %request, keys = keys.keys.len(), blobs, "erasure: a late session erased");
        Ok(())
    }

    pub async fn status(&self, tenant: Uuid, subject: Uuid) -> Result<Option<Status>, AppError> {
        let s = self.registry.read::<Subject>(tenant, subject).await?.into_state();
        s.require_exists().map_err(|r| AppError::Actor(actors::ActorError::Rejected(r)))?;
        Ok(s.erasure.as_ref().map(status_of))
    }

    fn spawn(self: &Arc<Self>, tenant: Uuid, subject: Uuid, e: &Erasure) {
        if e.certificate.is_some() {
            return;
        }
        self.open
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert((tenant, subject), (e.requested_micros, e.due_micros));
        if !self.running.lock().unwrap_or_else(|p| p.into_inner()).insert((tenant, subject)) {
            return;
        }
        let me = self.clone();
        tokio::spawn(async move {
            let mut backoff = Duration::from_millis(200);
            loop {
                match me.drive(tenant, subject).await {
                    Ok(()) => break,
                    Err(err) => {
                        tracing::warn!(%tenant, %subject, error = %err, "erasure step failed; retrying");
                        tokio::time::sleep(backoff).await;
                        backoff = (backoff * 2).min(Duration::from_secs(60));
                    }
                }
            }
            me.running.lock().unwrap_or_else(|p| p.into_inner()).remove(&(tenant, subject));
            me.open.lock().unwrap_or_else(|p| p.into_inner()).remove(&(tenant, subject));
        });
    }

    /// Resumes the requests a previous run left open (found by
    /// [`crate::unfinished::scan`]); then reports overdue ones every hour.
    pub async fn recover(self: Arc<Self>, open: Vec<(Uuid, Uuid)>) {
        self.resume(open).await;
        // Every hour, the age of what is open.
        let mut hourly = tokio::time::interval(REPORT_EVERY);
        loop {
            hourly.tick().await;
            self.report_age();
        }
    }

    /// Drives the given open requests to the end (in the background).
    pub async fn resume(self: &Arc<Self>, open: Vec<(Uuid, Uuid)>) {
        for (tenant, subject) in open {
            match self.registry.read::<Subject>(tenant, subject).await {
                Ok(s) => {
                    if let Some(e) = &s.state.erasure {
                        tracing::info!(%tenant, %subject, request = %e.request, "resuming an open erasure");
                        self.spawn(tenant, subject, e);
                    }
                }
                Err(e) => tracing::error!(%tenant, %subject, error = %e, "cannot load a subject with an open erasure"),
            }
        }
    }

    /// (open, past the warning age, overdue) requests right now.
    pub fn ages(&self) -> (usize, usize, usize) {
        let now = now_micros();
        let warn = i64::from(self.config.warn_after_days) * 86_400_000_000;
        let open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        let warned = open.values().filter(|(req, _)| now - req >= warn).count();
        let overdue = open.values().filter(|(_, due)| now >= *due).count();
        (open.len(), warned, overdue)
    }

    fn report_age(&self) {
        let now = now_micros();
        let warn = i64::from(self.config.warn_after_days) * 86_400_000_000;
        for ((tenant, subject), (req, due)) in self.open.lock().unwrap_or_else(|p| p.into_inner()).iter() {
            if now >= *due {
                tracing::error!(%tenant, %subject, "erasure request is OVERDUE (past its 30-day due date)");
            } else if now - req >= warn {
                tracing::warn!(%tenant, %subject, days = (now - req) / 86_400_000_000, "erasure request past its warning age");
            }
        }
    }

    /// Soft-deletes the reservation of `username` if it is still this
    /// subject's (a crash and a new registration of the name in between
    /// leave the new owner's alone); the log's scavenging then drops the
    /// reservation event, and the name can be registered again.
    async fn release_username(&self, tenant: Uuid, subject: Uuid, username: &str) -> Result<(), AppError> {
        if username.is_empty() {
            return Ok(());
        }
        match self.registry.username_owner(tenant, username).await? {
            Some((owner, stream, version)) if owner == subject => {
                let expected = eventlog::ExpectedVersion::Exact(version);
                match self.log.delete_stream(&stream, expected, eventlog::DeleteMode::Soft).await {
                    // Taken over at this moment by a new registration: leave it.
                    Ok(()) | Err(eventlog::LogError::WrongExpectedVersion { .. }) => Ok(()),
                    Err(e) => Err(e.into()),
                }
            }
            _ => Ok(()),
        }
    }

    /// Runs every step not done yet.
    async fn drive(&self, tenant: Uuid, subject: Uuid) -> Result<(), AppError> {
        match crate::regions::gate(self.regions.get().map(|r| r.as_ref()), tenant)? {
            crate::regions::Gate::Go => {}
            crate::regions::Gate::Wait => {
                return Err(AppError::Unavailable(format!(
                    "tenant {tenant} is moving between regions; its erasure goes on where it lands"
                )));
            }
            crate::regions::Gate::Leave => return Ok(()),
        }
        let state = self.registry.read::<Subject>(tenant, subject).await?.into_state();
        let Some(e) = state.erasure else { return Ok(()) };
        let request = e.request;
        let sessions_runner = self
            .views
            .runner(projections::sessions::NAME)
            .ok_or_else(|| AppError::Internal("no sessions view".into()))?;

        // Step 2: plan (which Sessions, which keys).
        let (sessions, fingerprints) = match e.planned.clone() {
            Some(p) => p,
            None => {
                // Everything the subject did before the request is in the view.
                let head = self.log.head();
                tokio::time::timeout(Duration::from_secs(30), sessions_runner.wait_for(head))
                    .await
                    .map_err(|_| AppError::Unavailable("the sessions view is behind the log".into()))?;
                let view = self.views.read(projections::sessions::NAME).await?;
                let sessions = projections::sessions::sessions_of_end_user(&view, tenant, subject)
                    .map_err(|e| AppError::Internal(e.to_string()))?;
                drop(view);
                for s in &sessions {
                    match self.registry.execute::<Session>(tenant, *s, SessionCommand::Erase { request }).await {
                        Ok(_) => {}
                        Err(actors::ActorError::Rejected(domain::Rejection::NotFound { .. })) => {}
                        Err(e) => return Err(e.into()),
                    }
                }
                let mut keys = self.keyring.keys_of(tenant, ShredTarget::Subject { subject, group: None }).await?;
                for s in &sessions {
                    keys.extend(self.keyring.keys_of(tenant, ShredTarget::Session { session: *s }).await?);
                }
                let fingerprints: Vec<String> = keys.into_iter().map(|k| key_fingerprint(tenant, k)).collect();
                // The username goes back to the pool while it can still be
                // read (its reservation is named by a keyed hash of it).
                self.release_username(tenant, subject, &state.username).await?;
                self.registry
                    .execute::<Subject>(
                        tenant,
                        subject,
                        SubjectCommand::PlanShred {
                            request,
                            sessions: sessions.clone(),
                            key_fingerprints: fingerprints.clone(),
                        },
                    )
                    .await?;
                crash_point("planned");
                (sessions, fingerprints)
            }
        };

        // Step 3: shred.
        if e.shredded.is_none() {
            self.keyring.shred(tenant, ShredTarget::Subject { subject, group: None }).await?;
            for s in &sessions {
                self.keyring.shred(tenant, ShredTarget::Session { session: *s }).await?;
            }
            crash_point("shredded");
            // The keys are gone, so the blobs are noise already; delete them
            // too (before the step is recorded, so a crash repeats it).
            let mut blobs = 0;
            for s in &sessions {
                blobs += self.blobs.delete_session(tenant, *s).await?;
            }
            self.registry.execute::<Subject>(tenant, subject, SubjectCommand::RecordKeysShredded { request }).await?;
            tracing::info!(%tenant, %subject, %request, keys = fingerprints.len(), sessions = sessions.len(), blobs, "erasure: keys shredded, media deleted");
            crash_point("recorded");
        }

        // Step 4: every projection purges and acknowledges; the tombstone.
        let mut acks = Vec::new();
        for r in &self.views.runners {
            let position = loop {
                let store = r.store().clone();
                let ack = tokio::task::spawn_blocking(move || store.acknowledged(request))
                    .await
                    .map_err(|e| AppError::Internal(e.to_string()))?
                    .map_err(|e| AppError::Internal(e.to_string()))?;
                if let Some(p) = ack {
                    break p;
                }
                let head = self.log.head();
                let _ = tokio::time::timeout(Duration::from_secs(5), r.wait_for(head)).await;
            };
            acks.push((r.name().to_string(), position));
        }
        let names: Vec<String> = acks.iter().map(|(n, _)| n.clone()).collect();
        let erased = self
            .registry
            .execute::<Subject>(tenant, subject, SubjectCommand::MarkErased { request, acknowledged_by: names })
            .await?
            .into_state()
            .erasure
            .ok_or_else(|| AppError::Internal("erasure vanished".into()))?;
        if erased.certificate.is_some() {
            return Ok(());
        }
        crash_point("tombstone");

        // Step 5: the certificate.
        let stream = actors::stream_name(events::Kind::Subject, tenant, subject);
        let tail = self.log.read_stream(&stream, ReadFrom::End, Direction::Backward, 16).await?;
        let tombstone = tail
            .iter()
            .find(|r| r.event_type() == events::types::SUBJECT_ERASED)
            .ok_or_else(|| AppError::Internal("tombstone not found in the subject's stream".into()))?;
        let erased_at = proto::events::SubjectErased::decode(tombstone.event.payload.as_ref())
            .map(|p| p.at_micros)
            .unwrap_or(tombstone.recorded_at_micros);
        let shredded_at = erased.shredded.unwrap_or_default();
        let (cert, signature) = crate::certificate::sign(
            &crate::certificate::Erasure {
                format: crate::certificate::ERASURE_FORMAT,
                request_id: request.to_string(),
                tenant_id: tenant.to_string(),
                subject_ref: subject.to_string(),
                requested_at: time_text(erased.requested_micros),
                due_at: time_text(erased.due_micros),
                keys_shredded_at: time_text(shredded_at),
                erased_at: time_text(erased_at),
                issued_at: time_text(now_micros()),
                destroyed_key_fingerprints: &fingerprints,
                sessions_erased: sessions.iter().map(Uuid::to_string).collect(),
                projections_acknowledged: acks
                    .iter()
                    .map(|(n, p)| crate::certificate::Acknowledged { projection: n.clone(), position: *p })
                    .collect(),
                tombstone: crate::certificate::Tombstone {
                    stream: stream.clone(),
                    version: tombstone.version,
                    position: tombstone.position,
                },
                signing_public_key: self.public_key_hex(),
            },
            &self.signing,
        )?;
        self.registry
            .execute::<Subject>(tenant, subject, SubjectCommand::Certify { request, certificate: cert, signature })
            .await?;
        tracing::info!(%tenant, %subject, %request, "erasure certified");
        Ok(())
    }
}

pub use crate::certificate::verify as verify_certificate;
