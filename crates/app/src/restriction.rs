//! The restriction process (GDPR Art. 18): when a subject's processing is
//! restricted (or the restriction lifted), every Session they are the end
//! user of follows: a restricted Session takes no new content, is not
//! watched, listed or counted in analytics.
//!
//! Driven by the subject's events and resumable: the change itself is
//! `SubjectProcessingRestricted` / `SubjectRestrictionLifted` on the
//! subject's stream; each Session records its own `SessionRestricted` /
//! `SessionRestrictionLifted` (repeating one that is done writes nothing);
//! when all are done the subject's stream gets `SubjectRestrictionApplied`.
//! A change without that event after it is unfinished: at start a filtered
//! scan of the log finds it and the run is repeated, skipping what is done.
//!
//! Runs for one subject do not overlap in a node; each applies the
//! subject's state as it is when the run starts, so a run for an older
//! change never undoes a newer one.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use actors::{ActorError, Registry};
use domain::Rejection;
use domain::session::{Session, SessionCommand};
use domain::subject::{Subject, SubjectCommand};
use eventlog::EventLog;
use uuid::Uuid;

use crate::AppError;
use crate::views::Views;

/// Held while a run for one subject is going.
type RunLock = Arc<tokio::sync::Mutex<()>>;

pub struct Restrictions {
    registry: Arc<Registry>,
    log: Arc<dyn EventLog>,
    views: Arc<Views>,
    /// One run at a time per (tenant, subject).
    locks: Mutex<HashMap<(Uuid, Uuid), RunLock>>,
    /// Data residency: a moving tenant waits, another region's is left.
    regions: Option<Arc<crate::regions::Regions>>,
}

impl Restrictions {
    pub fn new(
        registry: Arc<Registry>,
        log: Arc<dyn EventLog>,
        views: Arc<Views>,
        regions: Option<Arc<crate::regions::Regions>>,
    ) -> Arc<Self> {
        Arc::new(Self { registry, log, views, locks: Mutex::default(), regions })
    }

    fn lock_of(&self, tenant: Uuid, subject: Uuid) -> RunLock {
        let mut locks = self.locks.lock().unwrap_or_else(|p| p.into_inner());
        if locks.len() > 10_000 {
            locks.retain(|_, l| Arc::strong_count(l) > 1);
        }
        locks.entry((tenant, subject)).or_default().clone()
    }

    /// Brings every Session of the subject to the subject's restriction
    /// state and records that it has; returns how many Sessions it checked.
    pub async fn apply(&self, tenant: Uuid, subject: Uuid) -> Result<usize, AppError> {
        match crate::regions::gate(self.regions.as_deref(), tenant)? {
            crate::regions::Gate::Go => {}
            crate::regions::Gate::Wait => {
                return Err(AppError::Unavailable(format!(
                    "tenant {tenant} is moving between regions; the restriction goes on where it lands"
                )));
            }
            crate::regions::Gate::Leave => return Ok(0),
        }
        let lock = self.lock_of(tenant, subject);
        let _one_run = lock.lock().await;
        let state = self.registry.read::<Subject>(tenant, subject).await?.into_state();
        if state.erasure.is_some() {
            // The erasure closes the Sessions for good; nothing to restrict.
            return Ok(0);
        }
        let restricted = state.restricted;
        let sessions = self.sessions_of(tenant, subject).await?;
        let cmd = if restricted { SessionCommand::Restrict } else { SessionCommand::LiftRestriction };
        for (done, s) in sessions.iter().enumerate() {
            crate::hooks::crash_point("restriction", "session", done);
            match self.registry.execute::<Session>(tenant, *s, cmd.clone()).await {
                Ok(_) | Err(ActorError::Rejected(Rejection::NotFound { .. })) => {}
                Err(e) => return Err(e.into()),
            }
        }
        let record = SubjectCommand::RecordRestrictionApplied { restricted, sessions: sessions.len() as u32 };
        match self.registry.execute::<Subject>(tenant, subject, record).await {
            Ok(_) => {}
            // Changed again meanwhile: that change's run records itself.
            Err(ActorError::Rejected(Rejection::FailedPrecondition { .. })) => {}
            Err(e) => return Err(e.into()),
        }
        Ok(sessions.len())
    }

    /// A Session started while its end user's restriction was being
    /// recorded (see `crate::sessions`): restricted on the spot.
    pub async fn restrict_late_session(&self, tenant: Uuid, subject: Uuid, session: Uuid) -> Result<(), AppError> {
        let lock = self.lock_of(tenant, subject);
        let _one_run = lock.lock().await;
        if self.registry.read::<Subject>(tenant, subject).await?.state.restricted {
            self.registry.execute::<Session>(tenant, session, SessionCommand::Restrict).await?;
        }
        Ok(())
    }

    /// The Sessions the subject is the end user of. Everything recorded
    /// before this call is in the view once it has reached the log's head.
    async fn sessions_of(&self, tenant: Uuid, subject: Uuid) -> Result<Vec<Uuid>, AppError> {
        let runner = self
            .views
            .runner(projections::sessions::NAME)
            .ok_or_else(|| AppError::Internal("no sessions view".into()))?;
        let head = self.log.head();
        tokio::time::timeout(Duration::from_secs(30), runner.wait_for(head))
            .await
            .map_err(|_| AppError::Unavailable("the sessions view is behind the log".into()))?;
        let view = self.views.read(projections::sessions::NAME).await?;
        projections::sessions::sessions_of_end_user(&view, tenant, subject)
            .map_err(|e| AppError::internal("listing the subject's sessions", e))
    }

    /// The subjects whose last restriction change has no
    /// `SubjectRestrictionApplied` after it.
    pub async fn unfinished(&self) -> Result<Vec<(Uuid, Uuid)>, AppError> {
        Ok(crate::unfinished::scan(self.log.as_ref()).await?.restrictions)
    }

    /// Finishes the changes a previous run left (found by
    /// [`crate::unfinished::scan`]), retrying a failed subject with a
    /// growing pause.
    pub async fn recover(self: Arc<Self>, mut pending: Vec<(Uuid, Uuid)>) {
        let mut backoff = Duration::from_millis(200);
        while !pending.is_empty() {
            let mut failed = Vec::new();
            for (tenant, subject) in pending {
                tracing::info!(%tenant, %subject, "resuming an unfinished restriction change");
                match self.apply(tenant, subject).await {
                    Ok(sessions) => tracing::info!(%tenant, %subject, sessions, "restriction change finished"),
                    Err(e) => {
                        tracing::warn!(%tenant, %subject, error = %e, "restriction change failed; retrying");
                        failed.push((tenant, subject));
                    }
                }
            }
            pending = failed;
            if !pending.is_empty() {
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(60));
            }
        }
    }
}
