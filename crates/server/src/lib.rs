//! The `pypes` server: configuration, wiring, the gRPC adapters (tonic),
//! health, metrics and projection control (actix-web) and the operators'
//! tools (demo, audit, replay, check). Only this crate knows tonic,
//! actix-web and the API's wire types; what a call means is in `app`.

pub mod audit_tool;
pub mod backup;
pub mod client;
pub mod config;
pub mod console;
pub mod datadir;
pub mod demo;
pub mod grpc;
pub mod http;
pub mod integrity;
pub mod metrics;
pub mod regions;
pub mod telemetry;
pub mod version;
pub mod wiring;
