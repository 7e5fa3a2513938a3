//! What the system stores and under which name. Only this crate spells a
//! stream name or an event type (a tidy test in `crates/server/tests/tidy.rs`
//! holds every other crate to that):
//!
//! - [`stream`]: the names of streams, one type ([`StreamName`]) that
//!   formats and parses the entity streams `<kind>-<tenant>-<id>`, and the
//!   functions that name the other streams (username reservations, login
//!   failures, auth sessions, the staff directory, audit trails);
//! - [`types`]: every event type, as constants;
//! - [`codec`]: domain events to stored events and back, sealing personal
//!   fields through the keyring.

pub mod codec;
pub mod stream;
pub mod types;

pub use codec::{Claim, Codec, CodecError};
pub use stream::{Kind, StreamName, stream_name};
