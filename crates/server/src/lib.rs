//! The `pypes` server: configuration, wiring, the gRPC services (tonic),
//! health and metrics (actix-web) and the demo client. Only this crate
//! knows tonic, actix-web and the wire types; no other crate imports it.

pub mod api;
pub mod app;
pub mod audit_tool;
pub mod auth;
pub mod config;
pub mod demo;
pub mod end_user_auth;
pub mod erasure;
pub mod error;
pub mod export;
pub mod http;
pub mod integrity;
pub mod media;
pub mod metrics;
pub mod read_api;
pub mod retention;
pub mod staff;
pub mod staff_api;
pub mod views;
