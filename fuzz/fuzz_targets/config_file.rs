//! Fuzzes the config file as `pypes serve --config` reads it: any bytes
//! as the file, resolved into the server's settings (every section, every
//! check). Any bytes: the settings or an error naming what is wrong,
//! never a panic. Host names are not resolved while fuzzing.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use server::config::{Config, ServeArgs};

fn dir() -> &'static tempfile::TempDir {
    static DIR: OnceLock<tempfile::TempDir> = OnceLock::new();
    DIR.get_or_init(|| tempfile::tempdir().expect("temp dir"))
}

fuzz_target!(|data: &[u8]| {
    let path = dir().path().join("pypes.toml");
    std::fs::write(&path, data).expect("write the config file");
    let args = ServeArgs { config: Some(path), ..ServeArgs::default() };
    let _ = Config::resolve(&args);
});
