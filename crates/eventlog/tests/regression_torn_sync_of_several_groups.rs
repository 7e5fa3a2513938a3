//! Regression: one fdatasync covers several staged groups (the syncer takes
//! everything queued), so after a power cut an earlier group of that sync
//! can be torn while a later one landed whole. Recovery used to call this
//! corruption, because the later frame's `group_start` (then: the start of
//! its own group) lay after the torn bytes, and refused to open the log.
//! The field now holds the durable floor when the frame was staged; frames
//! of one sync share a floor at or below the torn bytes, so it is a torn
//! tail. Found by the power-cut test once bursts went through the syncer.

use ed25519_dalek::SigningKey;
use eventlog::file::format;
use eventlog::file::{FileLog, FileLogConfig};
use eventlog::{EventFilter, EventLog, NewEvent};

fn batch_frame(out: &mut Vec<u8>, floor: u64, position: u64) {
    let mut body = Vec::new();
    let event = NewEvent::new("E", format!("event {position}").into_bytes());
    format::encode_batch_entry(&mut body, &event, "s", position, position, 1_800_000_000_000_000);
    format::encode_batch_frame(out, floor, &[position as u8; 32], &body);
}

#[tokio::test]
async fn a_torn_group_followed_by_a_whole_group_of_the_same_sync_is_a_torn_tail() {
    let dir = tempfile::tempdir().unwrap();
    let segments = dir.path().join("segments");
    std::fs::create_dir_all(&segments).unwrap();
    let mut bytes = format::encode_segment_header(0).to_vec();
    let header = bytes.len() as u64;
    batch_frame(&mut bytes, header, 0); // synced and acknowledged
    let synced_end = bytes.len() as u64;
    let torn_at = bytes.len();
    batch_frame(&mut bytes, synced_end, 1); // group A of the last sync
    let b_at = bytes.len();
    batch_frame(&mut bytes, synced_end, 2); // group B of the same sync
    // A torn by the power cut: its write's sectors never reached the disk
    // (they read as zeros) while B's did.
    bytes[torn_at..b_at].fill(0);
    std::fs::write(segments.join("0000000000.seg"), &bytes).unwrap();

    let log = FileLog::open(dir.path(), FileLogConfig::new(SigningKey::from_bytes(&[1; 32])))
        .expect("a torn tail is repaired, not refused");
    let events = log.read_all(0, 10, &EventFilter::all()).await.unwrap().events;
    assert_eq!(events.len(), 1, "the acknowledged event stays, the unsynced ones go");
    assert_eq!(std::fs::metadata(segments.join("0000000000.seg")).unwrap().len(), synced_end);
}

#[tokio::test]
async fn bad_bytes_below_a_later_frames_durable_floor_are_still_corruption() {
    let dir = tempfile::tempdir().unwrap();
    let segments = dir.path().join("segments");
    std::fs::create_dir_all(&segments).unwrap();
    let mut bytes = format::encode_segment_header(0).to_vec();
    let header = bytes.len() as u64;
    let bad_at = bytes.len();
    batch_frame(&mut bytes, header, 0);
    let first_end = bytes.len() as u64;
    batch_frame(&mut bytes, first_end, 1); // staged after frame 0 was durable
    bytes[bad_at + format::FRAME_HEADER_LEN + 3] ^= 0xFF;
    std::fs::write(segments.join("0000000000.seg"), &bytes).unwrap();

    let err = FileLog::open(dir.path(), FileLogConfig::new(SigningKey::from_bytes(&[1; 32]))).unwrap_err();
    assert!(err.to_string().contains("not a torn tail"), "{err}");
}
