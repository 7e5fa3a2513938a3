//! Golden files of the on-disk format (v1). A change to the bytes the file
//! log writes fails `writes_the_v1_format_byte_for_byte`: a format change
//! needs a new version, a reader for the old one, and an update of
//! docs/event-log-format.md. `reads_the_committed_v1_log` keeps that reader.
//! Regenerate only for a deliberate new format: `PYPES_BLESS=1 cargo test`.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use ed25519_dalek::SigningKey;
use eventlog::file::vfs::OsVfs;
use eventlog::file::{FileLog, FileLogConfig, verify_log};
use eventlog::{
    DeleteMode, Direction, EventFilter, EventLog, ExpectedVersion, ManualClock, NewEvent, ReadFrom, SealedField,
    StreamMetadata,
};
use uuid::Uuid;

const FILES: [&str; 2] = ["segments/0000000000.seg", "head.sig"];

fn golden_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden/v1")
}

fn key() -> SigningKey {
    SigningKey::from_bytes(&[0x42; 32])
}

fn config() -> FileLogConfig {
    let mut c = FileLogConfig::new(key());
    c.clock = Arc::new(ManualClock::new(1_767_225_600_000_000)); // 2026-01-01T00:00:00Z
    c.checkpoint_every_frames = 1000;
    c.checkpoint_interval = Duration::from_secs(3600);
    c
}

fn event(n: u128, kind: &str, payload: &str) -> NewEvent {
    NewEvent {
        id: Uuid::from_u128(0x0190_0000_0000_7000_8000_0000_0000_0000 + n),
        event_type: kind.into(),
        schema_version: 1,
        tenant_id: Some(Uuid::from_u128(0xAAAA)),
        correlation_id: Some(Uuid::from_u128(0xC0)),
        causation_id: None,
        payload: payload.as_bytes().to_vec().into(),
        sealed_fields: vec![],
    }
}

async fn write_golden_log(dir: &Path) {
    let log = FileLog::open(dir, config()).unwrap();
    log.append("pype-1", ExpectedVersion::NoStream, vec![event(1, "PypeCreated", "acme support")]).await.unwrap();
    let mut sealed = event(2, "MessagePosted", "seq=1");
    sealed.sealed_fields = vec![SealedField {
        field: "body".into(),
        key_id: Uuid::from_u128(0xBEEF).as_bytes().to_vec().into(),
        nonce: vec![7; 12].into(),
        ciphertext: vec![0xC1; 21].into(),
    }];
    log.append("session-1", ExpectedVersion::NoStream, vec![sealed, event(3, "SessionClosed", "timer")]).await.unwrap();
    log.set_stream_metadata("session-1", StreamMetadata { max_count: Some(10), ..Default::default() }).await.unwrap();
    log.append("tmp-1", ExpectedVersion::Any, vec![event(4, "Scratch", "gone")]).await.unwrap();
    log.delete_stream("tmp-1", ExpectedVersion::Any, DeleteMode::Hard).await.unwrap();
    log.close();
}

#[tokio::test]
async fn writes_the_v1_format_byte_for_byte() {
    let tmp = tempfile::tempdir().unwrap();
    write_golden_log(tmp.path()).await;
    if std::env::var_os("PYPES_BLESS").is_some() {
        for f in FILES {
            let to = golden_dir().join(f);
            std::fs::create_dir_all(to.parent().unwrap()).unwrap();
            std::fs::copy(tmp.path().join(f), to).unwrap();
        }
    }
    for f in FILES {
        let written = std::fs::read(tmp.path().join(f)).unwrap();
        let golden = std::fs::read(golden_dir().join(f))
            .unwrap_or_else(|e| panic!("golden file {f} missing ({e}); see this file's header"));
        assert!(
            written == golden,
            "{f}: the file log no longer writes format v1 byte for byte; a format change needs a new \
             format version, a reader for v1 and docs/event-log-format.md updated"
        );
    }
}

#[tokio::test]
async fn reads_the_committed_v1_log() {
    let tmp = tempfile::tempdir().unwrap();
    for f in FILES {
        let to = tmp.path().join(f);
        std::fs::create_dir_all(to.parent().unwrap()).unwrap();
        std::fs::copy(golden_dir().join(f), to).unwrap();
    }
    verify_log(&OsVfs, tmp.path(), &key().verifying_key()).unwrap();
    let log = FileLog::open(tmp.path(), config()).unwrap();
    let all = log.read_all(0, 100, &EventFilter::all()).await.unwrap();
    assert_eq!(all.head, 4);
    let types: Vec<_> = all.events.iter().map(|e| e.event_type().to_owned()).collect();
    assert_eq!(types, ["PypeCreated", "MessagePosted", "SessionClosed"]);
    let session = log.read_stream("session-1", ReadFrom::Start, Direction::Forward, 10).await.unwrap();
    assert_eq!(session[0].event.sealed_fields[0].field, "body");
    assert_eq!(session[0].event.tenant_id, Some(Uuid::from_u128(0xAAAA)));
    assert_eq!(session[1].recorded_at_micros, 1_767_225_600_000_000);
    assert_eq!(log.stream_metadata("session-1").await.unwrap().max_count, Some(10));
    assert!(log.read_stream("tmp-1", ReadFrom::Start, Direction::Forward, 1).await.is_err());
}
