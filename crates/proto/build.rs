//! Compiles `proto/` with protox (pure Rust, no protoc needed), prost and
//! tonic-build (the gRPC services of `pypes.api.v1`), and writes the
//! descriptor set the reflection service serves.
use std::path::PathBuf;

use prost::Message;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    // The manifest directory as this run sees it (not as the build script
    // was compiled: one build script serves checkouts sharing a target/).
    let root = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR")?).join("../../proto");
    let files = [
        root.join("pypes/storage/v1/event.proto"),
        root.join("pypes/log/v1/frame.proto"),
        root.join("pypes/keystore/v1/keystore.proto"),
        root.join("pypes/events/v1/events.proto"),
        root.join("pypes/api/v1/api.proto"),
        root.join("pypes/api/v1/integration.proto"),
        root.join("pypes/api/v1/region.proto"),
        root.join("pypes/bench/v1/echo.proto"),
        root.join("pypes/views/v1/views.proto"),
    ];
    for f in &files {
        println!("cargo:rerun-if-changed={}", f.display());
    }
    let fds = protox::compile(&files, [&root])?;
    let out = PathBuf::from(std::env::var("OUT_DIR")?);
    // Reflection describes what the server serves: the API, not the bench echo.
    let mut api_only = fds.clone();
    api_only.file.retain(|f| f.name().starts_with("pypes/api/"));
    std::fs::write(out.join("pypes_api_descriptor.bin"), api_only.encode_to_vec())?;
    let mut config = prost_build::Config::new();
    // Stored formats use `Bytes` (zero-copy from the log's buffers); the
    // API keeps plain types.
    // So are media chunks of the API: decoded without a copy out of the
    // receive buffer. (One call: a second `bytes` replaces the first.)
    config.bytes([
        ".pypes.storage",
        ".pypes.log",
        ".pypes.keystore",
        ".pypes.events",
        ".pypes.api.v1.UploadChunk.data",
        ".pypes.api.v1.MediaChunk.data",
    ]);
    // View rows are compared and hashed byte for byte: maps in key order.
    config.btree_map([".pypes.views"]);
    tonic_build::configure().build_server(true).build_client(true).compile_fds_with_config(config, fds)?;
    Ok(())
}
