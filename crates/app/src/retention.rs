//! The privacy scheduler: every `privacy.sweep_secs` it
//!
//! - **retention**: finds closed Sessions (from the sessions view) whose
//!   Pype's retention (or else the tenant's) has run out, shreds each one's
//!   content key and records `SessionContentExpired` on the Session (plus an
//!   audit entry `retention.purge`); messages then list as `[erased]`;
//! - **offboarding**: finds cancelled tenants whose grace period is over,
//!   shreds the tenant's KEK (every key of the tenant goes with it), records
//!   `TenantKeysShredded` with the key fingerprints and a signed
//!   certificate `TenantOffboardingCertified`.
//!
//! All its state is in the log and the views (in memory it keeps only how
//! far it has read `$all` for cancellations), so a restart simply runs the
//! sweep again: each step is idempotent, and each shred happens before the
//! event that records it (a crash in between shreds again, harmlessly).

use std::collections::HashMap;

use std::sync::Arc;
use std::time::Duration;

use actors::Registry;
use domain::pype::Pype;
use domain::session::{Session, SessionCommand};
use domain::tenant::{Tenant, TenantCommand};
use ed25519_dalek::SigningKey;
use eventlog::{Clock, EventFilter, EventLog};
use keystore::{Keyring, ShredTarget};
use uuid::Uuid;

use crate::erasure::key_fingerprint;
use crate::error::AppError;
use audit::{AuditLog, Record};

const DAY_MICROS: i64 = 86_400_000_000;
pub const CERTIFICATE_FORMAT: &str = crate::certificate::OFFBOARDING_FORMAT;

pub struct Scheduler {
    pub registry: Arc<Registry>,
    pub log: Arc<dyn EventLog>,
    pub keyring: Keyring,
    pub views: Arc<crate::views::Views>,
    pub audit: AuditLog,
    pub clock: Arc<dyn Clock>,
    pub signing: SigningKey,
    pub grace_days: u32,
    /// Expired Sessions' and offboarded tenants' media are deleted here.
    pub blobs: Arc<dyn media::BlobStore>,
    /// Cancelled tenants not yet certified, and how far `$all` was read
    /// for them: each sweep reads only what was appended since.
    pub pending: tokio::sync::Mutex<Pending>,
    /// Data residency: the tenants of other regions, and those moving
    /// between regions, are not swept here.
    pub regions: Option<Arc<crate::regions::Regions>>,
}

/// The offboarding work the scheduler knows of.
#[derive(Debug, Default)]
pub struct Pending {
    pub read_to: u64,
    pub tenants: std::collections::BTreeSet<Uuid>,
}

/// What one sweep did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Swept {
    pub sessions_expired: usize,
    pub tenants_shredded: usize,
}

impl Scheduler {
    /// Sweeps every `every`, forever.
    pub async fn run(self: Arc<Self>, every: Duration) {
        loop {
            match self.sweep().await {
                Ok(s) if s != Swept::default() => tracing::info!(?s, "privacy sweep"),
                Ok(_) => {}
                Err(e) => tracing::error!(error = %e, "privacy sweep failed; retried at the next"),
            }
            tokio::time::sleep(every).await;
        }
    }

    pub async fn sweep(&self) -> Result<Swept, AppError> {
        let tenants_shredded = self.offboard().await?;
        let sessions_expired = self.expire().await?;
        Ok(Swept { sessions_expired, tenants_shredded })
    }

    async fn expire(&self) -> Result<usize, AppError> {
        let now = self.clock.now_micros();
        let mut tenants: HashMap<Uuid, Tenant> = HashMap::new();
        let mut pypes: HashMap<(Uuid, Uuid), Option<u32>> = HashMap::new();
        let mut expired = 0;
        let mut after = None;
        loop {
            let view = self.views.read(projections::sessions::NAME).await?;
            let page = projections::sessions::closed_with_content(&view, after, 1024)
                .map_err(|e| AppError::Internal(e.to_string()))?;
            drop(view);
            let Some(last) = page.last() else { break };
            after = Some(last.1);
            let full = page.len() == 1024;
            for (tenant, session, pype, closed) in page {
                if crate::regions::gate(self.regions.as_deref(), tenant)? != crate::regions::Gate::Go {
                    continue;
                }
                let t = match tenants.entry(tenant) {
                    std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
                    std::collections::hash_map::Entry::Vacant(e) => {
                        e.insert(self.registry.read::<Tenant>(tenant, tenant).await?.into_state())
                    }
                };
                if t.shredded.is_some() {
                    continue;
                }
                let own = match pypes.get(&(tenant, pype)) {
                    Some(d) => *d,
                    None => {
                        let d = self.registry.read::<Pype>(tenant, pype).await?.state.retention_days;
                        pypes.insert((tenant, pype), d);
                        d
                    }
                };
                let days = own.unwrap_or(t.settings.retention_days);
                if days == 0 || closed + i64::from(days) * DAY_MICROS > now {
                    continue;
                }
                // The view may lag the log: a Session it still shows with
                // content may have expired already (the last sweep).
                let state = self.registry.read::<Session>(tenant, session).await?.into_state();
                if state.content_expired {
                    continue;
                }
                let report = self.keyring.shred(tenant, ShredTarget::Session { session }).await?;
                // Before the event: once it is recorded the Session is not
                // swept again.
                let blobs = self.blobs.delete_session(tenant, session).await?;
                // The audit entry is durable before the event: a crash
                // between them sweeps the Session again and writes the
                // entry twice, never not at all (the event ends the sweeps).
                self.audit
                    .record(
                        Record::new("retention.purge", "pypes", "ok")
                            .tenant(tenant)
                            .target(format!("session:{session}"))
                            .detail(format!("retention_days={days} keys={} blobs={blobs}", report.keys.len())),
                    )
                    .await?;
                match self
                    .registry
                    .execute::<Session>(tenant, session, SessionCommand::ExpireContent { retention_days: days })
                    .await
                {
                    Ok(_) | Err(actors::ActorError::Rejected(domain::Rejection::NotFound { .. })) => {}
                    Err(e) => return Err(e.into()),
                }
                expired += 1;
            }
            if !full {
                break;
            }
        }
        Ok(expired)
    }

    /// Cancelled tenants not yet certified: those found before, plus any
    /// cancellation appended to `$all` since the last sweep.
    async fn cancelled_tenants(&self) -> Result<Vec<Uuid>, AppError> {
        let filter = EventFilter {
            stream_prefixes: vec![events::Kind::Tenant.prefix().into()],
            event_types: vec![events::types::TENANT_CANCELLED.into()],
        };
        let mut pending = self.pending.lock().await;
        loop {
            let page = self.log.read_all(pending.read_to, 4096, &filter).await?;
            pending.tenants.extend(page.events.iter().filter_map(|e| e.event.tenant_id));
            if page.next_position <= pending.read_to {
                break;
            }
            pending.read_to = page.next_position;
            if page.next_position >= page.head {
                break;
            }
        }
        Ok(pending.tenants.iter().copied().collect())
    }

    async fn offboard(&self) -> Result<usize, AppError> {
        let now = self.clock.now_micros();
        let mut done = 0;
        for tenant in self.cancelled_tenants().await? {
            if crate::regions::gate(self.regions.as_deref(), tenant)? != crate::regions::Gate::Go {
                continue;
            }
            let t = self.registry.read::<Tenant>(tenant, tenant).await?.into_state();
            if !t.cancelled || t.certificate.is_some() {
                self.pending.lock().await.tenants.remove(&tenant);
                continue;
            }
            let due = t.cancelled_micros + i64::from(self.grace_days) * DAY_MICROS;
            if now < due {
                continue;
            }
            let fingerprints = match &t.shredded {
                Some((_, f)) => f.clone(),
                None => {
                    let keys = self.keyring.keys_of(tenant, ShredTarget::Tenant).await?;
                    let fingerprints: Vec<String> = keys.into_iter().map(|k| key_fingerprint(tenant, k)).collect();
                    self.keyring.shred(tenant, ShredTarget::Tenant).await?;
                    self.registry
                        .execute::<Tenant>(
                            tenant,
                            tenant,
                            TenantCommand::RecordKeysShredded { key_fingerprints: fingerprints.clone() },
                        )
                        .await?;
                    fingerprints
                }
            };
            // Idempotent: also after a crash between the shred and here.
            let blobs = self.blobs.delete_tenant(tenant).await?;
            if blobs > 0 {
                tracing::info!(%tenant, blobs, "offboarding: the tenant's media deleted");
            }
            let t = self.registry.read::<Tenant>(tenant, tenant).await?.into_state();
            let shredded_at = t.shredded.as_ref().map_or(now, |(at, _)| *at);
            let (cert, signature) = crate::certificate::sign(
                &crate::certificate::Offboarding {
                    format: crate::certificate::OFFBOARDING_FORMAT,
                    tenant_id: tenant.to_string(),
                    cancelled_at: audit::time::time_text(t.cancelled_micros),
                    grace_days: self.grace_days,
                    kek_shredded_at: audit::time::time_text(shredded_at),
                    issued_at: audit::time::time_text(now),
                    destroyed_key_fingerprints: &fingerprints,
                    signing_public_key: hex::encode(self.signing.verifying_key().as_bytes()),
                },
                &self.signing,
            )?;
            self.registry
                .execute::<Tenant>(tenant, tenant, TenantCommand::Certify { certificate: cert, signature })
                .await?;
            self.audit
                .record(
                    Record::new("privacy.tenant_offboarded", "pypes", "ok")
                        .tenant(tenant)
                        .detail(format!("keys={}", fingerprints.len())),
                )
                .await?;
            self.pending.lock().await.tenants.remove(&tenant);
            tracing::info!(%tenant, keys = fingerprints.len(), "tenant offboarded: KEK shredded, certificate issued");
            done += 1;
        }
        Ok(done)
    }
}
