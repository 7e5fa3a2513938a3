//! Compiles `proto/` with protox (pure Rust, no protoc needed) and prost.
use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../proto");
    let files = [
        root.join("pypes/storage/v1/event.proto"),
        root.join("pypes/log/v1/frame.proto"),
        root.join("pypes/keystore/v1/keystore.proto"),
        root.join("pypes/events/v1/events.proto"),
    ];
    for f in &files {
        println!("cargo:rerun-if-changed={}", f.display());
    }
    let fds = protox::compile(&files, [&root])?;
    let mut config = prost_build::Config::new();
    config.bytes(["."]);
    config.compile_fds(fds)?;
    Ok(())
}
