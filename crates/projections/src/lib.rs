//! Projections: the log is the truth, these are what people query.
//!
//! A [`Projection`] turns `$all` events into rows of an embedded view store
//! ([`ViewStore`], one redb file per projection). The [`runner`] reads
//! `$all` from the projection's checkpoint, applies a page of events and
//! commits the rows and the new checkpoint in one redb write transaction,
//! so a crash anywhere leaves view and checkpoint in agreement: each event
//! takes effect exactly once. Operators pause, resume, skip a poison event
//! (recorded in the store) and reset; a reset builds a new generation of
//! the tables beside the serving one and switches readers over in one
//! transaction once it has caught up (blue/green).
//!
//! Read models ([`sessions`], [`directory`]) keep personal fields and
//! content sealed exactly as the log has them (same key, same AAD): a shred
//! reaches them at once, and queries open them through the keyring.
//! [`analytics`] counts from Clear fields only and stores no subject id.
//!
//! Every projection purges on `SubjectErasureKeysShredded`; the runner
//! records an acknowledgement in the same transaction, which the erasure
//! process reads ([`ViewStore::acknowledged`]).

pub mod analytics;
mod cache;
pub mod directory;
mod error;
mod keys;
pub mod runner;
pub mod sessions;
pub mod sql;
mod store;

pub use error::ViewError;
pub use keys::{OpenedField, open_sealed, open_sealed_bytes};
pub use runner::{Control, ProjectionStatus, Runner, RunnerConfig, RunnerState, rebuild_all, rebuild_until};
pub use store::{Generation, ReadView, Rows, SetAside, ViewStore, WriteView, set_aside as store_set_aside};

use eventlog::{EventFilter, RecordedEvent};

/// Event type on which every projection purges an erased subject's rows.
pub const PURGE_EVENT: &str = events::types::SUBJECT_ERASURE_KEYS_SHREDDED;

/// What a projection's `apply` can fail with.
#[derive(Debug)]
pub enum ApplyError {
    /// The event cannot be applied (malformed payload): the runner stops
    /// at it until an operator skips it.
    Poison(String),
    /// The store failed: the runner retries after a pause.
    Store(ViewError),
}

impl From<ViewError> for ApplyError {
    fn from(e: ViewError) -> Self {
        ApplyError::Store(e)
    }
}

/// One projection: a name, a version, the events it wants and how each
/// changes its tables.
pub trait Projection: Send + Sync + 'static {
    /// Stable name; also the view store's file name.
    fn name(&self) -> &'static str;
    /// Bump when `apply` changes meaning: a store built by another version
    /// is rebuilt (blue/green) at start.
    fn version(&self) -> u32;
    /// Which events to read (applied by the log while reading). Every
    /// projection must include `subject-` streams so it sees the purge.
    fn filter(&self) -> EventFilter;
    /// Applies one event to the generation being written.
    fn apply(&self, w: &mut WriteView<'_>, event: &RecordedEvent) -> Result<(), ApplyError>;
    /// Applies a page's events in order; on failure, the index of the
    /// event that failed (what it changed is rolled back with the page).
    /// The default applies them one by one; a projection may override it
    /// to keep rows decoded across the page.
    fn apply_batch(&self, w: &mut WriteView<'_>, events: &[&RecordedEvent]) -> Result<(), (usize, ApplyError)> {
        for (i, e) in events.iter().enumerate() {
            self.apply(w, e).map_err(|err| (i, err))?;
        }
        Ok(())
    }
}

/// The three built-in projections, in the order the server runs them.
pub fn all() -> Vec<std::sync::Arc<dyn Projection>> {
    vec![
        std::sync::Arc::new(sessions::SessionsProjection),
        std::sync::Arc::new(directory::DirectoryProjection),
        std::sync::Arc::new(analytics::AnalyticsProjection),
    ]
}
