//! What a projection is: a name, a version, the events it wants and how
//! each changes its tables.

use eventlog::{EventFilter, RecordedEvent};

use crate::error::ViewError;
use crate::store::WriteView;

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
