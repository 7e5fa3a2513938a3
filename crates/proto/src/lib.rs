//! Generated protobuf types: the stored-event envelope (`storage`) and the
//! frame body of the embedded file log (`log`), and the
//! key store's records (`keystore`), the event payloads (`events`) and the
//! gRPC API (`api`). No logic lives here.

/// `pypes.storage.v1`: the envelope every backend stores for one event.
pub mod storage {
    #![allow(clippy::all, missing_docs)]
    include!(concat!(env!("OUT_DIR"), "/pypes.storage.v1.rs"));
}

/// `pypes.log.v1`: frames of the embedded file log.
pub mod log {
    #![allow(clippy::all, missing_docs)]
    include!(concat!(env!("OUT_DIR"), "/pypes.log.v1.rs"));
}

/// `pypes.keystore.v1`: records of the embedded key store and root-key provider.
pub mod keystore {
    #![allow(clippy::all, missing_docs)]
    include!(concat!(env!("OUT_DIR"), "/pypes.keystore.v1.rs"));
}

/// `pypes.events.v1`: the Clear-field payloads of the domain events.
pub mod events {
    #![allow(clippy::all, missing_docs)]
    include!(concat!(env!("OUT_DIR"), "/pypes.events.v1.rs"));
}

/// `pypes.api.v1`: the gRPC API (messages, clients and servers).
pub mod api {
    #![allow(clippy::all, missing_docs)]
    include!(concat!(env!("OUT_DIR"), "/pypes.api.v1.rs"));
}

/// `pypes.bench.v1`: the echo service the load generator's baseline uses.
pub mod bench {
    #![allow(clippy::all, missing_docs)]
    include!(concat!(env!("OUT_DIR"), "/pypes.bench.v1.rs"));
}

/// `pypes.views.v1`: rows of the embedded read models.
pub mod views {
    #![allow(clippy::all, missing_docs)]
    include!(concat!(env!("OUT_DIR"), "/pypes.views.v1.rs"));
}

/// The file descriptors of the gRPC API (`pypes/api/`), for the reflection service.
pub const API_FILE_DESCRIPTOR_SET: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/pypes_api_descriptor.bin"));

pub use prost::Message;
