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
pub mod catalog;
pub mod directory;
mod error;
mod keys;
mod projection;
pub mod runner;
pub mod sessions;
pub mod sql;
mod store;

pub use error::ViewError;
pub use keys::{OpenedField, open_sealed, open_sealed_bytes};
pub use projection::{ApplyError, PURGE_EVENT, Projection};
pub use runner::{Control, ProjectionStatus, Runner, RunnerConfig, RunnerState, rebuild_all, rebuild_until};
pub use store::{
    Generation, ReadView, Rows, SetAside, ViewStore, WriteView, reserve_for as view_disk_reserve,
    set_aside as store_set_aside,
};

/// The three built-in projections, in the order the server runs them.
pub fn all() -> Vec<std::sync::Arc<dyn Projection>> {
    vec![
        std::sync::Arc::new(sessions::SessionsProjection),
        std::sync::Arc::new(directory::DirectoryProjection),
        std::sync::Arc::new(analytics::AnalyticsProjection),
        std::sync::Arc::new(catalog::CatalogProjection),
    ]
}
