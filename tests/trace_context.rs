//! W3C trace context: a produce's `traceparent`/`tracestate` metadata is
//! stored on its records (unless they carry their own) and read back by
//! consumers; with `OTEL_EXPORTER_OTLP_ENDPOINT` set the broker exports a
//! `publish` span that is a child of it, over OTLP http/protobuf and gRPC,
//! to a collector run by this test.

mod common;

use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{client, create, fetch_all, record, start};
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{TraceService, TraceServiceServer};
use opentelemetry_proto::tonic::collector::trace::v1::{ExportTraceServiceRequest, ExportTraceServiceResponse};
use prost::Message;
use strata::proto;

const TRACE_ID: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const PARENT_ID: &str = "00f067aa0ba902b7";

fn traceparent() -> String {
    format!("00-{TRACE_ID}-{PARENT_ID}-01")
}

fn traced<T>(message: T, traceparent: &str, tracestate: Option<&str>) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request.metadata_mut().insert("traceparent", traceparent.parse().unwrap());
    if let Some(state) = tracestate {
        request.metadata_mut().insert("tracestate", state.parse().unwrap());
    }
    request
}

#[tokio::test]
async fn traceparent_metadata_is_stored_on_records_that_lack_one() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path()).await;
    let mut c = client(&server).await;
    create(&mut c, "policy.updated", 1).await;
    let own = "00-11111111111111111111111111111111-2222222222222222-01";
    let mut with_own = record("k", "has its own");
    with_own.headers.insert("traceparent".into(), own.as_bytes().to_vec().into());
    let message = proto::ProduceRequest {
        topic: "policy.updated".into(),
        records: vec![record("k", "plain"), with_own],
        ..Default::default()
    };
    c.produce(traced(message, &traceparent(), Some("vendor=abc"))).await.unwrap();
    // A malformed traceparent is not stored.
    let message = proto::ProduceRequest {
        topic: "policy.updated".into(),
        records: vec![record("k", "bad")],
        ..Default::default()
    };
    c.produce(traced(message, "00-not-a-trace-01", None)).await.unwrap();

    let records = fetch_all(&mut c, "policy.updated", 0, 0).await;
    assert_eq!(records.len(), 3);
    let header = |i: usize, k: &str| records[i].headers.get(k).map(|v| String::from_utf8_lossy(v).into_owned());
    assert_eq!(header(0, "traceparent"), Some(traceparent()));
    assert_eq!(header(0, "tracestate").as_deref(), Some("vendor=abc"));
    assert_eq!(header(1, "traceparent").as_deref(), Some(own), "a record's own context is kept");
    assert_eq!(header(2, "traceparent"), None);

    // Kafka consumers get the same header.
    let kafka =
        rskafka::client::ClientBuilder::new(vec![server.kafka_addr().unwrap().to_string()]).build().await.unwrap();
    let pc = kafka
        .partition_client("policy.updated", 0, rskafka::client::partition::UnknownTopicHandling::Error)
        .await
        .unwrap();
    let (got, _) = pc.fetch_records(0, 1..1_000_000, 100).await.unwrap();
    assert_eq!(got[0].record.headers.get("traceparent").map(|v| v.as_slice()), Some(traceparent().as_bytes()));
    server.shutdown().await.unwrap();
}

/// Spans the collector received, as (trace id, parent span id, name, attributes) in hex.
type Received = Arc<Mutex<Vec<(String, String, String, Vec<(String, String)>)>>>;

fn keep(received: &Received, request: ExportTraceServiceRequest) {
    let hex = |b: &[u8]| b.iter().map(|x| format!("{x:02x}")).collect::<String>();
    for rs in request.resource_spans {
        for ss in rs.scope_spans {
            for span in ss.spans {
                let attributes = span
                    .attributes
                    .iter()
                    .map(|kv| {
                        let v = kv.value.as_ref().and_then(|v| v.value.as_ref()).map(|v| format!("{v:?}"));
                        (kv.key.clone(), v.unwrap_or_default())
                    })
                    .collect();
                received.lock().unwrap().push((hex(&span.trace_id), hex(&span.parent_span_id), span.name, attributes));
            }
        }
    }
}

struct Collector(Received);

#[tonic::async_trait]
impl TraceService for Collector {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        keep(&self.0, request.into_inner());
        Ok(tonic::Response::new(ExportTraceServiceResponse { partial_success: None }))
    }
}

/// An OTLP collector on 127.0.0.1: `grpc` or `http/protobuf`. Returns its endpoint.
async fn collector(protocol: &str, received: Received) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    if protocol == "grpc" {
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(TraceServiceServer::new(Collector(received)))
                .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
        );
    } else {
        let app = axum::Router::new().route(
            "/v1/traces",
            axum::routing::post(move |body: axum::body::Bytes| {
                let received = received.clone();
                async move {
                    keep(&received, ExportTraceServiceRequest::decode(body).expect("OTLP protobuf"));
                    (
                        [("content-type", "application/x-protobuf")],
                        ExportTraceServiceResponse::default().encode_to_vec(),
                    )
                }
            }),
        );
        tokio::spawn(async move { axum::serve(listener, app).await });
    }
    format!("http://{addr}")
}

async fn publish_span_reaches_the_collector(protocol: &str) {
    let received: Received = Arc::default();
    let endpoint = collector(protocol, received.clone()).await;
    let dir = tempfile::tempdir().unwrap();
    let mut broker = Command::new(common::process::BIN)
        .args(["serve", "--listen", "127.0.0.1:0", "--kafka-listen", "none", "--http-listen", "none"])
        .env("OTEL_EXPORTER_OTLP_ENDPOINT", &endpoint)
        .env("OTEL_EXPORTER_OTLP_PROTOCOL", protocol)
        .env("OTEL_BSP_SCHEDULE_DELAY", "100")
        .current_dir(dir.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let url = format!("http://{}", common::process::listening(&mut broker));
    let mut c = strata::proto::broker_client::BrokerClient::connect(url).await.unwrap();
    create(&mut c, "payments.sent", 1).await;
    let message =
        proto::ProduceRequest { topic: "payments.sent".into(), records: vec![record("k", "v")], ..Default::default() };
    c.produce(traced(message, &traceparent(), None)).await.unwrap();

    let deadline = Instant::now() + Duration::from_secs(20);
    let span = loop {
        let found = received.lock().unwrap().iter().find(|s| s.0 == TRACE_ID).cloned();
        if let Some(span) = found {
            break span;
        }
        assert!(Instant::now() < deadline, "no span of trace {TRACE_ID} reached the {protocol} collector");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    common::process::kill9(&mut broker);
    let (_, parent, name, attributes) = span;
    assert_eq!(parent, PARENT_ID, "the publish span is a child of the producer's span");
    assert_eq!(name, "publish payments.sent");
    let attribute = |k: &str| attributes.iter().find(|(key, _)| key == k).map(|(_, v)| v.clone());
    assert!(attribute("messaging.system").is_some_and(|v| v.contains("strata")), "{attributes:?}");
    assert!(attribute("messaging.destination.name").is_some_and(|v| v.contains("payments.sent")), "{attributes:?}");
    assert!(attribute("messaging.destination.partition.id").is_some(), "{attributes:?}");
    assert!(attribute("messaging.strata.offset").is_some(), "{attributes:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_span_is_exported_over_otlp_http() {
    publish_span_reaches_the_collector("http/protobuf").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_span_is_exported_over_otlp_grpc() {
    publish_span_reaches_the_collector("grpc").await;
}
