//! The business rules of pypes, and nothing else: ids, commands, events,
//! states, and for each entity `decide(&state, command, &ctx)` (which
//! events a command produces, or why it is refused) and `evolve(&mut
//! state, &event)` (which cannot fail). No I/O, no clock, no randomness:
//! time comes in through [`Ctx`], new ids inside commands.
//!
//! Every event field has a class ([`FieldClass`]): `Clear` fields may be
//! stored as they are; `Pii` and `Content` fields are sealed by the actors
//! before anything reaches the log.

mod common;
pub mod pype;
pub mod session;
pub mod staff;
pub mod subject;
pub mod tenant;

pub use common::{Aggregate, Ctx, FieldClass, PiiGroup, QUOTE_CHARS, Rejection, Timers, check_text, quote};
