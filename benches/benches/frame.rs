//! Micro-benchmarks of the file log's per-event CPU work, each next to a
//! baseline in the same run: encoding an event (hand encoder vs prost vs a
//! plain copy of the same bytes), hashing it for the chain, and parsing a
//! frame back. Run: `cargo bench -p benches --bench frame`.

use std::hint::black_box;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use eventlog::NewEvent;
use eventlog::file::format;
use prost::Message;

fn event() -> NewEvent {
    NewEvent::new("MessagePosted", vec![0x5A; 256])
}

fn encode(c: &mut Criterion) {
    let e = event();
    let stored = e.to_stored("session-0190abcd-0000-7000-8000-000000000001", 42, 1_000_000, 1_800_000_000_000_000);
    let bytes = stored.encode_to_vec();
    let mut g = c.benchmark_group("encode_event");
    g.throughput(Throughput::Elements(1));
    g.bench_function("baseline_memcpy", |b| {
        let mut out = Vec::with_capacity(4096);
        b.iter(|| {
            out.clear();
            out.extend_from_slice(black_box(&bytes));
            black_box(&out);
        })
    });
    g.bench_function("hand_encoder", |b| {
        let mut out = Vec::with_capacity(4096);
        b.iter(|| {
            out.clear();
            format::encode_batch_entry(
                &mut out,
                black_box(&e),
                "session-0190abcd-0000-7000-8000-000000000001",
                42,
                1_000_000,
                1_800_000_000_000_000,
            );
            black_box(&out);
        })
    });
    g.bench_function("prost_to_stored", |b| {
        let mut out = Vec::with_capacity(4096);
        b.iter(|| {
            out.clear();
            let s = black_box(&e).to_stored(
                "session-0190abcd-0000-7000-8000-000000000001",
                42,
                1_000_000,
                1_800_000_000_000_000,
            );
            s.encode(&mut out).unwrap();
            black_box(&out);
        })
    });
    g.bench_function("chain_sha256", |b| b.iter(|| black_box(format::sha256(black_box(&bytes)))));
    g.finish();
}

fn parse(c: &mut Criterion) {
    let e = event();
    let mut body = Vec::new();
    for i in 0..64 {
        format::encode_batch_entry(&mut body, &e, "session-1", i, i, 1);
    }
    let mut frame = Vec::new();
    format::encode_batch_frame(&mut frame, 24, &[1; 32], &body);
    let mut g = c.benchmark_group("parse_frame_64_events");
    g.throughput(Throughput::Elements(64));
    g.bench_function("baseline_crc32c", |b| b.iter(|| black_box(crc32c::crc32c(black_box(&frame)))));
    let shared = bytes::Bytes::from(frame.clone());
    g.bench_function("parse_frame", |b| b.iter(|| black_box(format::parse_frame_shared(black_box(&shared)))));
    g.finish();
}

/// Decoding one stored event into a `RecordedEvent` (what every `$all`
/// read does per event): prost + `from_stored` against the hand decoder,
/// with a copy of the same bytes as the baseline.
fn decode(c: &mut Criterion) {
    let mut e = event();
    e.tenant_id = Some(uuid::Uuid::from_u128(7));
    e.sealed_fields = vec![proto::storage::SealedField {
        field: "body".into(),
        key_id: vec![9u8; 16].into(),
        nonce: vec![7u8; 12].into(),
        ciphertext: vec![0x5a; 272].into(),
    }];
    let stream = "session-0190abcd-0000-7000-8000-000000000001-0190abcd-0000-7000-8000-000000000002";
    let bytes = bytes::Bytes::from(e.to_stored(stream, 42, 1_000_000, 1_800_000_000_000_000).encode_to_vec());
    let mut g = c.benchmark_group("decode_event");
    g.throughput(Throughput::Elements(1));
    g.bench_function("baseline_copy", |b| b.iter(|| black_box(black_box(&bytes).to_vec())));
    g.bench_function("prost_from_stored", |b| {
        b.iter(|| {
            let stored = proto::storage::StoredEvent::decode(black_box(&bytes).clone()).unwrap();
            let name: std::sync::Arc<str> = std::sync::Arc::from(stored.stream.as_str());
            black_box(eventlog::RecordedEvent::from_stored(stored, name).unwrap())
        })
    });
    let mut last = None;
    g.bench_function("hand_decoder", |b| {
        b.iter(|| black_box(format::decode_recorded(black_box(&bytes), &mut last).unwrap()))
    });
    g.finish();
}

criterion_group!(benches, encode, parse, decode);
criterion_main!(benches);
