//! Fuzzes the record decoder of the file log: any bytes either parse as a
//! frame whose re-encoding parses back to the same frame, or are reported
//! as incomplete or invalid. Never a panic, never an over-long allocation.
//! Run: `just fuzz log_frame` (docs/fuzzing.md).
#![no_main]

use eventlog::file::format::{self, FrameParse};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut at = 0;
    while at < data.len() {
        match format::parse_frame(&data[at..]) {
            FrameParse::Frame { frame, len } => {
                assert!(len >= format::FRAME_HEADER_LEN && len <= data.len() - at);
                let _ = format::frame_digest(&frame);
                let mut again = Vec::new();
                format::encode_frame(&frame, &mut again);
                match format::parse_frame(&again) {
                    FrameParse::Frame { frame: back, .. } => assert_eq!(back, frame),
                    other => panic!("re-encoded frame does not parse: {other:?}"),
                }
                at += len;
            }
            FrameParse::Incomplete | FrameParse::Invalid(_) => break,
        }
    }
    let _ = format::decode_head(data);
    let _ = format::check_segment_header(data, 0);
});
