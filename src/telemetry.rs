//! Trace context and spans (contract: "Observability").
//!
//! - **W3C trace context on records.** A gRPC produce whose metadata
//!   carries `traceparent` (and `tracestate`) stores it in the headers of
//!   each record that has none, so consumers, over gRPC or Kafka, receive
//!   it as a header. Kafka producers put it in record headers themselves.
//!   Client-encoded batches (`record_batch`) are stored as sent.
//! - **Spans** after OpenTelemetry's messaging conventions: `publish
//!   <topic>` (kind producer, a child of the caller's `traceparent`) and
//!   `receive <topic>` (kind consumer, linked to the records' contexts),
//!   with `messaging.system = "strata"`, the destination, partition and
//!   offset. They are `debug` spans of the target `strata::otel`: with
//!   `OTEL_EXPORTER_OTLP_ENDPOINT` set they go to an OTLP collector
//!   (`OTEL_EXPORTER_OTLP_PROTOCOL` = `http/protobuf`, the default, or
//!   `grpc`), batched and sent from the tokio runtime; unset, no span is
//!   even created unless `RUST_LOG` asks for debug.

use bytes::Bytes;
use opentelemetry::propagation::TextMapPropagator;
use opentelemetry::trace::TraceContextExt;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use tracing_opentelemetry::OpenTelemetrySpanExt;

/// The header names of W3C trace context.
pub const TRACEPARENT: &str = "traceparent";
pub const TRACESTATE: &str = "tracestate";
/// The span target the OTLP exporter takes.
pub const TARGET: &str = "strata::otel";
/// Longest `tracestate` kept (W3C allows 32 members of up to 256 bytes;
/// 512 is what its implementations are asked to propagate at least).
const TRACESTATE_BYTES_MAX: usize = 512;
/// Links a receive span gets at most (one per record with a context).
pub const RECEIVE_LINKS_MAX: usize = 32;

/// A caller's trace context, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TraceContext {
    pub traceparent: Bytes,
    pub tracestate: Option<Bytes>,
}

impl TraceContext {
    /// From the two header values; `None` unless `traceparent` is well formed
    /// (`00-<32 hex>-<16 hex>-<2 hex>`, ids not all zero). A bad or oversize
    /// `tracestate` is dropped, as W3C asks.
    pub fn parse(traceparent: &[u8], tracestate: Option<&[u8]>) -> Option<TraceContext> {
        valid_traceparent(traceparent).then(|| TraceContext {
            traceparent: Bytes::copy_from_slice(traceparent),
            tracestate: tracestate
                .filter(|s| {
                    !s.is_empty() && s.len() <= TRACESTATE_BYTES_MAX && s.iter().all(|b| (0x20..0x7f).contains(b))
                })
                .map(Bytes::copy_from_slice),
        })
    }

    /// From HTTP/2 (gRPC metadata) headers.
    pub fn from_headers(headers: &http::HeaderMap) -> Option<TraceContext> {
        let parent = headers.get(TRACEPARENT)?;
        TraceContext::parse(parent.as_bytes(), headers.get(TRACESTATE).map(|v| v.as_bytes()))
    }

    /// Adds the context to `headers` unless they carry a `traceparent`.
    pub fn stamp(&self, headers: &mut Vec<(String, Bytes)>) {
        if headers.iter().any(|(k, _)| k == TRACEPARENT) {
            return;
        }
        headers.push((TRACEPARENT.to_string(), self.traceparent.clone()));
        if let Some(state) = &self.tracestate {
            if !headers.iter().any(|(k, _)| k == TRACESTATE) {
                headers.push((TRACESTATE.to_string(), state.clone()));
            }
        }
    }

    /// As an OpenTelemetry parent context.
    fn otel(&self) -> opentelemetry::Context {
        otel_context(&self.traceparent, self.tracestate.as_deref())
    }
}

fn valid_traceparent(v: &[u8]) -> bool {
    let hex = |s: &[u8]| s.iter().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(b));
    let nonzero = |s: &[u8]| s.iter().any(|&b| b != b'0');
    // Version 00 is exactly 55 bytes; later versions may append fields.
    v.len() >= 55
        && v.len() <= 256
        && hex(&v[0..2])
        && &v[0..2] != b"ff"
        && v[2] == b'-'
        && hex(&v[3..35])
        && nonzero(&v[3..35])
        && v[35] == b'-'
        && hex(&v[36..52])
        && nonzero(&v[36..52])
        && v[52] == b'-'
        && hex(&v[53..55])
        && (v.len() == 55 || (v[0..2] != *b"00" && v[55] == b'-'))
}

fn otel_context(traceparent: &[u8], tracestate: Option<&[u8]>) -> opentelemetry::Context {
    let mut carrier = std::collections::HashMap::new();
    carrier.insert(TRACEPARENT.to_string(), String::from_utf8_lossy(traceparent).into_owned());
    if let Some(s) = tracestate {
        carrier.insert(TRACESTATE.to_string(), String::from_utf8_lossy(s).into_owned());
    }
    TraceContextPropagator::new().extract(&carrier)
}

/// The `publish <topic>` span of one produce request, a child of the
/// caller's context. Disabled (and free) unless traces are exported or
/// logged at debug.
pub fn publish_span(topic: &str, partition: Option<u32>, parent: Option<&TraceContext>) -> tracing::Span {
    let span = tracing::debug_span!(
        target: TARGET,
        "publish",
        otel.name = %format_args!("publish {topic}"),
        otel.kind = "producer",
        messaging.system = "strata",
        messaging.operation.name = "publish",
        messaging.operation.type = "send",
        messaging.destination.name = %topic,
        messaging.destination.partition.id = tracing::field::Empty,
        messaging.strata.offset = tracing::field::Empty,
        messaging.batch.message_count = tracing::field::Empty,
        error.type = tracing::field::Empty,
    );
    if let (Some(p), false) = (partition, span.is_disabled()) {
        span.record("messaging.destination.partition.id", p);
    }
    if let (Some(parent), false) = (parent, span.is_disabled()) {
        let _ = span.set_parent(parent.otel());
    }
    span
}

/// Records where a produce went (or why it failed) on its publish span.
pub fn record_published<E: std::fmt::Display>(
    span: &tracing::Span,
    results: &Result<&[crate::broker::ProduceResult], E>,
) {
    if span.is_disabled() {
        return;
    }
    match results {
        Ok(results) => {
            if let Some(first) = results.first() {
                span.record("messaging.destination.partition.id", first.partition);
                span.record("messaging.strata.offset", first.base_offset);
            }
            let count: u64 = results.iter().map(|r| r.last_offset + 1 - r.base_offset).sum();
            span.record("messaging.batch.message_count", count);
        }
        Err(e) => {
            span.record("error.type", tracing::field::display(e));
        }
    }
}

/// The `receive <topic>` span of one fetch, linked to up to 32 of the
/// contexts the records carry.
pub fn receive_span(topic: &str, partition: u32, offset: u64) -> tracing::Span {
    tracing::debug_span!(
        target: TARGET,
        "receive",
        otel.name = %format_args!("receive {topic}"),
        otel.kind = "consumer",
        messaging.system = "strata",
        messaging.operation.name = "receive",
        messaging.operation.type = "receive",
        messaging.destination.name = %topic,
        messaging.destination.partition.id = partition,
        messaging.strata.offset = offset,
        messaging.batch.message_count = tracing::field::Empty,
    )
}

/// Adds links from `span` to the trace contexts in the records' headers.
pub fn link_records<'a>(span: &tracing::Span, headers: impl Iterator<Item = &'a [(String, Bytes)]>) {
    if span.is_disabled() {
        return;
    }
    let mut linked = 0;
    for h in headers {
        if linked == RECEIVE_LINKS_MAX {
            break;
        }
        let Some((_, parent)) = h.iter().find(|(k, _)| k == TRACEPARENT) else { continue };
        if !valid_traceparent(parent) {
            continue;
        }
        let state = h.iter().find(|(k, _)| k == TRACESTATE).map(|(_, v)| &v[..]);
        let cx = otel_context(parent, state);
        let remote = cx.span().span_context().clone();
        if remote.is_valid() {
            span.add_link(remote);
            linked += 1;
        }
    }
}

/// Ships spans to an OTLP collector until dropped (then flushes them).
pub struct Exporter(opentelemetry_sdk::trace::SdkTracerProvider);

impl std::fmt::Debug for Exporter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Exporter")
    }
}

impl Drop for Exporter {
    fn drop(&mut self) {
        if let Err(e) = self.0.shutdown() {
            tracing::debug!(error = %e, "flushing spans at exit failed");
        }
    }
}

/// Whether the environment asks for OTLP export.
pub fn export_requested() -> bool {
    ["OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"]
        .iter()
        .any(|k| std::env::var_os(k).is_some_and(|v| !v.is_empty()))
}

/// The OTLP exporter the environment asks for, as a tracing layer (for
/// `strata::otel` spans only), and the handle that flushes it. Call inside
/// the tokio runtime that will send the spans.
pub fn otlp_layer<S>(
    service: &'static str,
) -> anyhow::Result<(impl tracing_subscriber::Layer<S> + Send + Sync, Exporter)>
where
    S: tracing::Subscriber + for<'span> tracing_subscriber::registry::LookupSpan<'span> + Send + Sync,
{
    use opentelemetry::trace::TracerProvider as _;
    use tracing_subscriber::Layer as _;
    let protocol = std::env::var("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL")
        .or_else(|_| std::env::var("OTEL_EXPORTER_OTLP_PROTOCOL"))
        .unwrap_or_else(|_| "http/protobuf".to_string());
    let exporter = match protocol.as_str() {
        "grpc" => opentelemetry_otlp::SpanExporter::builder().with_tonic().build()?,
        "http/protobuf" => opentelemetry_otlp::SpanExporter::builder().with_http().build()?,
        other => anyhow::bail!("OTEL_EXPORTER_OTLP_PROTOCOL={other:?}: strata exports `http/protobuf` or `grpc`"),
    };
    let processor = opentelemetry_sdk::trace::span_processor_with_async_runtime::BatchSpanProcessor::builder(
        exporter,
        opentelemetry_sdk::runtime::Tokio,
    )
    .build();
    // OTEL_SERVICE_NAME (and OTEL_RESOURCE_ATTRIBUTES) win, as everywhere.
    let resource = match std::env::var_os("OTEL_SERVICE_NAME") {
        Some(_) => opentelemetry_sdk::Resource::builder().build(),
        None => opentelemetry_sdk::Resource::builder().with_service_name(service).build(),
    };
    let provider = opentelemetry_sdk::trace::SdkTracerProvider::builder()
        .with_span_processor(processor)
        .with_resource(resource)
        .build();
    let tracer = provider.tracer("strata");
    let filter = tracing_subscriber::filter::Targets::new().with_target(TARGET, tracing::Level::DEBUG);
    let layer = tracing_opentelemetry::layer().with_tracer(tracer).with_filter(filter);
    tracing::info!(%protocol, "exporting spans over OTLP");
    Ok((layer, Exporter(provider)))
}

#[cfg(test)]
mod tests {
    use super::*;

    const PARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn traceparent_is_validated() {
        assert!(TraceContext::parse(PARENT.as_bytes(), None).is_some());
        for bad in [
            "",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
        ] {
            assert!(TraceContext::parse(bad.as_bytes(), None).is_none(), "{bad}");
        }
        let future = format!("01{}-more", &PARENT[2..]);
        assert!(TraceContext::parse(future.as_bytes(), None).is_some(), "later versions may add fields");
    }

    #[test]
    fn stamp_keeps_a_record_s_own_context() {
        let cx = TraceContext::parse(PARENT.as_bytes(), Some(b"vendor=1")).unwrap();
        let mut none = vec![("id".to_string(), Bytes::from_static(b"e1"))];
        cx.stamp(&mut none);
        assert_eq!(none.len(), 3);
        assert_eq!(none[1], (TRACEPARENT.to_string(), Bytes::from_static(PARENT.as_bytes())));
        assert_eq!(none[2], (TRACESTATE.to_string(), Bytes::from_static(b"vendor=1")));
        let own = Bytes::from_static(b"00-11111111111111111111111111111111-2222222222222222-01");
        let mut has = vec![(TRACEPARENT.to_string(), own.clone())];
        cx.stamp(&mut has);
        assert_eq!(has, vec![(TRACEPARENT.to_string(), own)]);
    }

    #[test]
    fn a_bad_tracestate_is_dropped_not_the_parent() {
        let long = vec![b'a'; TRACESTATE_BYTES_MAX + 1];
        let cx = TraceContext::parse(PARENT.as_bytes(), Some(&long)).unwrap();
        assert_eq!(cx.tracestate, None);
        let cx = TraceContext::parse(PARENT.as_bytes(), Some(b"a=\n")).unwrap();
        assert_eq!(cx.tracestate, None);
    }
}
