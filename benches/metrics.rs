//! What observability adds to one request on the hot path, next to the
//! encoding of the request's records (the cheapest part of a produce the
//! broker already does): the duration timer and histogram, the topic
//! counters, the trace-context lookup in the metadata, and the (disabled)
//! publish span. Per request, never per record.
//!
//! Run: `cargo bench --bench metrics`.

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, Criterion};
use strata::metrics::{Metrics, Timer};
use strata::storage::batch::{self, Record};
use strata::telemetry::{self, TraceContext};

fn per_request(c: &mut Criterion) {
    let metrics = Metrics::new();
    let counters = metrics.topic("t");
    let histogram = metrics.request_histogram("grpc", "Produce");
    let mut headers = http::HeaderMap::new();
    headers.insert("content-type", "application/grpc".parse().unwrap());
    headers.insert("te", "trailers".parse().unwrap());
    let mut g = c.benchmark_group("per_request");
    g.bench_function("observability_total", |b| {
        b.iter(|| {
            let timer = Timer::start(histogram.clone());
            let trace = TraceContext::from_headers(std::hint::black_box(&headers));
            let span = telemetry::publish_span("t", Some(0), trace.as_ref());
            counters.produced(100, 102_400);
            drop(span);
            drop(timer);
        })
    });
    let records: Vec<Record> = (0..100)
        .map(|i| Record {
            key: Bytes::new(),
            value: Bytes::from(vec![(i % 251) as u8; 1024]),
            headers: vec![],
            timestamp_ms: 1_700_000_000_000,
        })
        .collect();
    g.bench_function("encode_100_records_of_1KiB", |b| b.iter(|| batch::encode(std::hint::black_box(&records), None)));
    g.finish();
}

criterion_group!(benches, per_request);
criterion_main!(benches);
