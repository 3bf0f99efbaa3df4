//! A per-record consumer's decoding: an 8 MiB FetchResponse of 1 KiB
//! records (what `strata bench consume` fetches at a time) arriving in
//! HTTP/2 DATA frames, decoded by `strata::client`'s incremental decoder
//! as each frame comes, against prost decoding the whole message at once.
//!
//! Run: `cargo bench --bench codec`.

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use prost::Message;
use strata::listener::grpc::codec::{frame_plain, Frames, Incremental};
use strata::proto;

fn response(records: usize) -> proto::FetchResponse {
    proto::FetchResponse {
        records: (0..records)
            .map(|i| proto::StoredRecord {
                topic: "payments.eu".into(),
                partition: 3,
                offset: 1_000_000 + i as u64,
                timestamp_ms: 1_700_000_000_000 + i as i64,
                key: Bytes::new(),
                value: Bytes::from(vec![(i % 251) as u8; 1024]),
                headers: Default::default(),
            })
            .collect(),
        next_offset: 1_000_000 + records as u64,
        high_watermark: 2_000_000,
        log_start_offset: 0,
        record_batches: Vec::new(),
    }
}

/// The framed message cut into DATA frames of `frame` bytes, shared.
fn frames_of(message: &proto::FetchResponse, frame: usize) -> Vec<Bytes> {
    let whole: Vec<u8> = frame_plain(message).into_iter().flat_map(|c| c.to_vec()).collect();
    let whole = Bytes::from(whole);
    (0..whole.len()).step_by(frame).map(|at| whole.slice(at..(at + frame).min(whole.len()))).collect()
}

fn fetch_response(c: &mut Criterion) {
    let message = response(8000);
    let bytes = message.encoded_len() as u64;
    let mut g = c.benchmark_group("decode_fetch_response_8MiB");
    g.throughput(Throughput::Bytes(bytes));
    g.sample_size(20);
    // 16 KiB: HTTP/2's default frame size, which a tonic client asks for.
    for frame in [16 << 10, 1 << 20] {
        let chunks = frames_of(&message, frame);
        g.bench_with_input(BenchmarkId::new("incremental", frame), &chunks, |b, chunks| {
            b.iter(|| {
                let (mut frames, mut decoder) = (Frames::new(64 << 20), Incremental::<proto::FetchResponse>::default());
                let mut out = None;
                for chunk in chunks {
                    frames.push(chunk.clone());
                    if let Some(m) = decoder.feed(&mut frames).expect("well formed") {
                        out = Some(m);
                    }
                }
                assert_eq!(out.expect("complete").records.len(), 8000);
            })
        });
    }
    let chunks = frames_of(&message, 16 << 10);
    g.bench_function("prost_whole_message", |b| {
        b.iter(|| {
            let mut frames = Frames::new(64 << 20);
            for chunk in &chunks {
                frames.push(chunk.clone());
            }
            let m = frames.next_message::<proto::FetchResponse>().expect("well formed").expect("complete");
            assert_eq!(m.records.len(), 8000);
        })
    });
    g.finish();
}

criterion_group!(benches, fetch_response);
criterion_main!(benches);
