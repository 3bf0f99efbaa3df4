//! The broker over real gRPC on 127.0.0.1:0: topic lifecycle, byte-exact
//! produce/fetch, key partitioning, long poll, pattern subscriptions,
//! restart, idempotence, pipelined produce, health and reflection.

mod common;

use std::time::{Duration, Instant};

use common::*;
use strata::broker::partitioner::partition_for_key;
use strata::proto;
use strata::storage::batch::{self, ProducerStamp};
use tokio_stream::StreamExt;

#[tokio::test]
async fn topic_lifecycle() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path()).await;
    let mut c = client(&server).await;
    let created = c
        .create_topic(proto::CreateTopicRequest {
            name: "payments.sent".into(),
            partitions: 3,
            config: [("retention.ms".to_string(), "86400000".to_string())].into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(created.partitions, 3);
    assert_eq!(created.partition_descriptions.len(), 3);
    assert_eq!(created.config["retention.ms"], "86400000");
    for key in strata::config::TOPIC_CONFIG_KEYS {
        assert!(created.config.contains_key(*key), "effective config lists {key}");
    }
    assert_eq!(created.config["segment.bytes"], (128u64 << 20).to_string());
    create(&mut c, "payments.refunded", 1).await;
    create(&mut c, "policy.updated", 1).await;

    let listed =
        c.list_topics(proto::ListTopicsRequest { topic_pattern: "payments.*".into() }).await.unwrap().into_inner();
    let names: Vec<_> = listed.topics.iter().map(|t| t.name.as_str()).collect();
    assert_eq!(names, ["payments.refunded", "payments.sent"]);

    let altered = c
        .alter_topic_config(proto::AlterTopicConfigRequest {
            name: "payments.sent".into(),
            config: [("flush.policy".to_string(), "interval:100".to_string())].into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(altered.config["flush.policy"], "interval:100");
    assert_eq!(altered.config["retention.ms"], "86400000", "earlier overrides stay");

    c.delete_topic(proto::DeleteTopicRequest { name: "payments.sent".into() }).await.unwrap();
    let err = c.describe_topic(proto::DescribeTopicRequest { name: "payments.sent".into() }).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::NotFound);
    // The name can be reused, and the new topic starts empty.
    let again = create(&mut c, "payments.sent", 1).await;
    assert_eq!(again.partition_descriptions[0].high_watermark, 0);
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn produce_and_fetch_are_byte_exact() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path()).await;
    let mut c = client(&server).await;
    create(&mut c, "bytes", 1).await;
    let all_bytes: Vec<u8> = (0..=255u8).collect();
    let records = vec![
        proto::Record {
            key: all_bytes.clone().into(),
            value: all_bytes.repeat(40).into(),
            headers: [("trace".to_string(), bytes::Bytes::from_static(b"\x00\xff"))].into(),
            timestamp_ms: 1_600_000_000_123,
        },
        proto::Record {
            key: Default::default(),
            value: Default::default(),
            headers: Default::default(),
            timestamp_ms: 0,
        },
    ];
    let before = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as i64;
    let results = produce(&mut c, "bytes", Some(0), records.clone()).await;
    assert_eq!((results[0].base_offset, results[0].last_offset), (0, 1));
    let got = fetch_all(&mut c, "bytes", 0, 0).await;
    assert_eq!(got.len(), 2);
    assert_eq!(got[0].key, records[0].key);
    assert_eq!(got[0].value, records[0].value);
    assert_eq!(got[0].headers, records[0].headers);
    assert_eq!(got[0].timestamp_ms, 1_600_000_000_123);
    assert_eq!((got[0].topic.as_str(), got[0].partition, got[0].offset), ("bytes", 0, 0));
    assert!(got[1].value.is_empty() && got[1].key.is_empty());
    assert!(got[1].timestamp_ms >= before, "timestamp 0 means broker time");
    // Max records is honoured, and next_offset continues from there.
    let one = c
        .fetch(proto::FetchRequest {
            topic: "bytes".into(),
            partition: 0,
            from: at_offset(0),
            max_records: 1,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!((one.records.len(), one.next_offset, one.high_watermark), (1, 1, 2));
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn keys_map_to_stable_partitions_and_keyless_records_spread() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path()).await;
    let mut c = client(&server).await;
    create(&mut c, "keyed", 4).await;
    for round in 0..3 {
        for k in 0..20 {
            let key = format!("customer-{k}");
            let r = produce(&mut c, "keyed", None, vec![record(&key, &format!("v{round}"))]).await;
            assert_eq!(r[0].partition, partition_for_key(key.as_bytes(), 4), "{key}");
        }
    }
    let mut used = std::collections::HashSet::new();
    for _ in 0..8 {
        let r = produce(&mut c, "keyed", None, vec![record("", "no key")]).await;
        used.insert(r[0].partition);
    }
    assert_eq!(used.len(), 4, "keyless records are spread over every partition");
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn long_poll_wakes_on_append_and_times_out_when_idle() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path()).await;
    let mut c = client(&server).await;
    create(&mut c, "afrh.capacity.low", 1).await;

    let started = Instant::now();
    let idle = c
        .fetch(proto::FetchRequest {
            topic: "afrh.capacity.low".into(),
            from: at_offset(0),
            max_wait_ms: 300,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(idle.records.is_empty());
    assert!(started.elapsed() >= Duration::from_millis(300), "waits the full max_wait_ms");

    let mut poller = c.clone();
    let poll = tokio::spawn(async move {
        poller
            .fetch(proto::FetchRequest {
                topic: "afrh.capacity.low".into(),
                from: at_offset(0),
                max_wait_ms: 30_000,
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner()
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    let sent = Instant::now();
    produce(&mut c, "afrh.capacity.low", None, vec![record("", "low")]).await;
    let got = poll.await.unwrap();
    assert_eq!(got.records.len(), 1, "woken by the append, not by the 30 s timeout");
    assert!(sent.elapsed() < Duration::from_secs(10));
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn pattern_subscription_sees_new_matching_topics_and_nothing_else() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path()).await;
    let mut c = client(&server).await;
    create(&mut c, "payments.sent", 2).await;
    create(&mut c, "audit", 1).await;
    produce(&mut c, "payments.sent", Some(0), vec![record("", "before")]).await;
    let mut stream = c
        .subscribe(proto::SubscribeRequest {
            topic_pattern: "payments.*".into(),
            group: None,
            from: at_boundary(proto::Boundary::Earliest),
            fallback: None,
            raw_batches: false,
        })
        .await
        .unwrap()
        .into_inner();
    create(&mut c, "payments.sent.eu", 1).await;
    produce(&mut c, "payments.sent.eu", None, vec![record("", "eu")]).await;
    produce(&mut c, "audit", None, vec![record("", "not for you")]).await;
    produce(&mut c, "payments.sent", Some(1), vec![record("", "after")]).await;

    let mut seen = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while seen.len() < 3 {
        let msg = tokio::time::timeout_at(deadline, stream.next()).await.expect("records arrive").unwrap().unwrap();
        for r in msg.records {
            seen.push((r.topic, String::from_utf8(r.value.to_vec()).unwrap()));
        }
    }
    seen.sort();
    assert_eq!(
        seen,
        [
            ("payments.sent".to_string(), "after".to_string()),
            ("payments.sent".to_string(), "before".to_string()),
            ("payments.sent.eu".to_string(), "eu".to_string()),
        ]
    );
    // Nothing else arrives (in particular nothing from "audit").
    produce(&mut c, "payments.sent", Some(0), vec![record("", "marker")]).await;
    loop {
        let msg = tokio::time::timeout(Duration::from_secs(20), stream.next()).await.unwrap().unwrap().unwrap();
        let values: Vec<_> = msg.records.iter().map(|r| r.value.clone()).collect();
        assert!(msg.records.iter().all(|r| r.topic.starts_with("payments.")));
        if values.iter().any(|v| v.as_ref() == b"marker") {
            break;
        }
    }
    drop(stream);
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn restart_on_the_same_data_dir_keeps_everything() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path()).await;
    let mut c = client(&server).await;
    create(&mut c, "policy.updated", 2).await;
    for i in 0..50 {
        produce(&mut c, "policy.updated", Some(i % 2), vec![record("", &format!("v{i}"))]).await;
    }
    server.shutdown().await.unwrap();

    let server = start(dir.path()).await;
    let mut c = client(&server).await;
    let d = c.describe_topic(proto::DescribeTopicRequest { name: "policy.updated".into() }).await.unwrap().into_inner();
    assert_eq!(d.partitions, 2);
    let p0 = fetch_all(&mut c, "policy.updated", 0, 0).await;
    let values: Vec<_> = p0.iter().map(|r| String::from_utf8(r.value.to_vec()).unwrap()).collect();
    assert_eq!(values, (0..50).step_by(2).map(|i| format!("v{i}")).collect::<Vec<_>>());
    assert_eq!(fetch_all(&mut c, "policy.updated", 1, 0).await.len(), 25);
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn idempotent_retry_returns_the_original_offsets() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path()).await;
    let mut c = client(&server).await;
    create(&mut c, "orders", 1).await;
    let pid = c.init_producer(proto::InitProducerRequest {}).await.unwrap().into_inner().producer_id;
    let other = c.init_producer(proto::InitProducerRequest {}).await.unwrap().into_inner().producer_id;
    assert_ne!(pid, other);
    let req = proto::ProduceRequest {
        topic: "orders".into(),
        records: vec![record("", "a"), record("", "b")],
        producer_id: Some(pid),
        sequence: Some(0),
        ..Default::default()
    };
    let offsets = |r: Vec<proto::ProduceResult>| {
        r.into_iter().map(|r| (r.partition, r.base_offset, r.last_offset)).collect::<Vec<_>>()
    };
    let first = offsets(c.produce(req.clone()).await.unwrap().into_inner().results);
    let retry = offsets(c.produce(req.clone()).await.unwrap().into_inner().results);
    assert_eq!(first, retry);
    assert_eq!(fetch_all(&mut c, "orders", 0, 0).await.len(), 2, "the retry appended nothing");
    server.shutdown().await.unwrap();

    // Also after a restart.
    let server = start(dir.path()).await;
    let mut c = client(&server).await;
    let retry = offsets(c.produce(req).await.unwrap().into_inner().results);
    assert_eq!(first, retry);
    assert_eq!(fetch_all(&mut c, "orders", 0, 0).await.len(), 2);
    let fresh = c.init_producer(proto::InitProducerRequest {}).await.unwrap().into_inner().producer_id;
    assert!(fresh > other, "producer ids are never reused across restarts");
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn idempotent_sequences_wrap_at_i32_max_and_unknown_producer_ids_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path()).await;
    let mut c = client(&server).await;
    create(&mut c, "orders", 1).await;
    let pid = c.init_producer(proto::InitProducerRequest {}).await.unwrap().into_inner().producer_id;
    let req = |producer_id: i64, sequence: i32, values: &[&str]| proto::ProduceRequest {
        topic: "orders".into(),
        partition: Some(0),
        records: values.iter().map(|v| record("", v)).collect(),
        producer_id: Some(producer_id),
        sequence: Some(sequence),
        ..Default::default()
    };
    let at = |r: tonic::Response<proto::ProduceResponse>| r.into_inner().results[0].base_offset;
    assert_eq!(at(c.produce(req(pid, i32::MAX - 1, &["a", "b"])).await.unwrap()), 0);
    // Kafka's sequences wrap from i32::MAX to 0.
    assert_eq!(at(c.produce(req(pid, 0, &["c"])).await.unwrap()), 2);
    assert_eq!(at(c.produce(req(pid, 0, &["c"])).await.unwrap()), 2, "a retry after the wrap");
    assert_eq!(at(c.produce(req(pid, i32::MAX - 1, &["a", "b"])).await.unwrap()), 0, "a retry before it");
    assert_eq!(fetch_all(&mut c, "orders", 0, 0).await.len(), 3);
    // A retry cut differently would append records twice.
    let overlap = c.produce(req(pid, i32::MAX, &["b"])).await.unwrap_err();
    assert_eq!(overlap.code(), tonic::Code::FailedPrecondition, "{overlap:?}");
    // An id InitProducer never handed out.
    for unknown in [0, pid + 1_000_000] {
        let s = c.produce(req(unknown, 0, &["x"])).await.unwrap_err();
        assert_eq!(s.code(), tonic::Code::FailedPrecondition, "{s:?}");
        assert!(s.message().contains("unknown producer id") && s.message().contains("InitProducer"), "{s:?}");
    }
    assert_eq!(fetch_all(&mut c, "orders", 0, 0).await.len(), 3, "nothing refused was appended");
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn produce_stream_pipelines_and_echoes_request_ids() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path()).await;
    let mut c = client(&server).await;
    create(&mut c, "stream", 1).await;
    let requests = (0..200u64).map(|i| proto::ProduceRequest {
        topic: "stream".into(),
        records: vec![record("", &format!("m{i}")), record("", &format!("n{i}"))],
        request_id: 1000 + i,
        ..Default::default()
    });
    let mut requests: Vec<_> = requests.collect();
    // One bad request in the middle fails alone, with its code.
    requests[50].topic = "no.such.topic".into();
    let mut responses = c.produce_stream(tokio_stream::iter(requests)).await.unwrap().into_inner();
    let mut by_id = std::collections::BTreeMap::new();
    while let Some(r) = responses.next().await {
        let r = r.unwrap();
        by_id.insert(r.request_id, r);
    }
    assert_eq!(by_id.len(), 200);
    assert_eq!(by_id[&1050].error_code, tonic::Code::NotFound as i32);
    let mut next = 0;
    for (id, r) in &by_id {
        if *id == 1050 {
            continue;
        }
        assert_eq!(r.results[0].base_offset, next, "stream order is log order (request {id})");
        next += 2;
    }
    let values: Vec<_> = fetch_all(&mut c, "stream", 0, 0).await.into_iter().map(|r| r.value).collect();
    assert_eq!(values.len(), 398);
    assert_eq!(values[0].as_ref(), b"m0");
    assert_eq!(values[397].as_ref(), b"n199");
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn list_offsets_by_boundary_and_time() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path()).await;
    let mut c = client(&server).await;
    create(&mut c, "timed", 1).await;
    let records = (0..10)
        .map(|i| proto::Record {
            value: vec![i].into(),
            timestamp_ms: 1_000_000 + i as i64 * 1000,
            ..Default::default()
        })
        .collect();
    produce(&mut c, "timed", None, records).await;
    let at = |p: Option<proto::Position>| proto::ListOffsetsRequest { topic: "timed".into(), partition: 0, at: p };
    let ts = |t: i64| Some(proto::Position { position: Some(proto::position::Position::TimestampMs(t)) });
    assert_eq!(c.list_offsets(at(at_boundary(proto::Boundary::Earliest))).await.unwrap().into_inner().offset, 0);
    assert_eq!(c.list_offsets(at(at_boundary(proto::Boundary::Latest))).await.unwrap().into_inner().offset, 10);
    assert_eq!(c.list_offsets(at(ts(1_004_500))).await.unwrap().into_inner().offset, 5);
    assert_eq!(
        c.list_offsets(at(ts(9_999_999))).await.unwrap().into_inner().offset,
        10,
        "past the end: high watermark"
    );
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn health_and_reflection_are_served() {
    use tonic_health::pb::health_client::HealthClient;
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::{
        server_reflection_request::MessageRequest, server_reflection_response::MessageResponse, ServerReflectionRequest,
    };

    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path()).await;
    let channel = tonic::transport::Channel::from_shared(server.url()).unwrap().connect().await.unwrap();
    let mut health = HealthClient::new(channel.clone());
    let status = health
        .check(tonic_health::pb::HealthCheckRequest { service: "strata.v1.Broker".into() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(status.status, tonic_health::pb::health_check_response::ServingStatus::Serving as i32);

    let mut reflection = ServerReflectionClient::new(channel);
    let req = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut resp = reflection.server_reflection_info(tokio_stream::iter(vec![req])).await.unwrap().into_inner();
    let msg = resp.next().await.unwrap().unwrap();
    let Some(MessageResponse::ListServicesResponse(list)) = msg.message_response else { panic!("unexpected reply") };
    assert!(list.service.iter().any(|s| s.name == "strata.v1.Broker"));

    // The v1alpha service too, which grpcurl and grpcio-reflection still use.
    use tonic_reflection::pb::v1alpha as alpha;
    let channel = tonic::transport::Channel::from_shared(server.url()).unwrap().connect().await.unwrap();
    let mut old = alpha::server_reflection_client::ServerReflectionClient::new(channel);
    let req = alpha::ServerReflectionRequest {
        host: String::new(),
        message_request: Some(alpha::server_reflection_request::MessageRequest::ListServices(String::new())),
    };
    let mut resp = old.server_reflection_info(tokio_stream::iter(vec![req])).await.unwrap().into_inner();
    let msg = resp.next().await.unwrap().unwrap();
    let Some(alpha::server_reflection_response::MessageResponse::ListServicesResponse(list)) = msg.message_response
    else {
        panic!("unexpected v1alpha reply")
    };
    assert!(list.service.iter().any(|s| s.name == "strata.v1.Broker"));
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn raw_fetch_returns_stored_batches_that_decode_to_the_same_records() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path()).await;
    let mut c = client(&server).await;
    create(&mut c, "raw", 1).await;
    for i in 0..20 {
        let records = (0..5).map(|j| record(&format!("k{i}"), &format!("v{i}-{j}"))).collect();
        produce(&mut c, "raw", None, records).await;
    }
    let expected = fetch_all(&mut c, "raw", 0, 0).await;
    let channel = tonic::transport::Channel::from_shared(server.url()).unwrap().connect().await.unwrap();
    let mut got = Vec::new();
    let mut next = 7; // the middle of a batch: earlier offsets are skipped by the client
    loop {
        let request = proto::FetchRequest {
            topic: "raw".into(),
            from: at_offset(next),
            max_bytes: 300,
            raw_batches: true,
            ..Default::default()
        };
        let r = c.fetch(request.clone()).await.unwrap().into_inner();
        assert_eq!(strata::client::fetch(&channel, request).await.unwrap(), r, "both clients read the same response");
        assert!(r.records.is_empty(), "raw fetches carry batches, not records");
        if r.record_batches.is_empty() {
            break;
        }
        for b in &r.record_batches {
            for rec in strata::storage::batch::decode_records(b).unwrap() {
                if rec.offset >= next {
                    got.push((rec.offset, rec.key, rec.value));
                }
            }
        }
        assert!(r.next_offset > next);
        next = r.next_offset;
    }
    let want: Vec<_> = expected.into_iter().skip(7).map(|r| (r.offset, r.key, r.value)).collect();
    assert_eq!(got, want);
    // Batches big enough to leave the broker as the stored bytes themselves.
    let big = "b".repeat(40_000);
    produce(&mut c, "raw", None, vec![record("big", &big), record("big", &big)]).await;
    let request =
        proto::FetchRequest { topic: "raw".into(), from: at_offset(100), raw_batches: true, ..Default::default() };
    let r = strata::client::fetch(&channel, request.clone()).await.unwrap();
    assert_eq!(r, c.fetch(request).await.unwrap().into_inner());
    let values: Vec<_> = batch::decode_records(&r.record_batches[0]).unwrap().into_iter().map(|r| r.value).collect();
    assert_eq!(values, vec![big.clone(), big.clone()]);
    // Errors arrive as statuses.
    let unknown = proto::FetchRequest { topic: "nope".into(), ..Default::default() };
    assert_eq!(strata::client::fetch(&channel, unknown).await.unwrap_err().code(), tonic::Code::NotFound);
    let above =
        proto::FetchRequest { topic: "raw".into(), from: at_offset(500), raw_batches: true, ..Default::default() };
    assert_eq!(strata::client::fetch(&channel, above).await.unwrap_err().code(), tonic::Code::OutOfRange);
    server.shutdown().await.unwrap();
}

fn client_batch(records: &[(&str, &str, i64)], producer: Option<ProducerStamp>) -> Vec<u8> {
    let records: Vec<batch::Record> = records
        .iter()
        .map(|(k, v, ts)| batch::Record {
            key: bytes::Bytes::copy_from_slice(k.as_bytes()),
            value: bytes::Bytes::copy_from_slice(v.as_bytes()),
            headers: vec![("trace".into(), bytes::Bytes::from_static(b"t-1"))],
            timestamp_ms: *ts,
        })
        .collect();
    batch::encode(&records, producer)
}

fn raw_produce(topic: &str, partition: Option<u32>, batch: &[u8]) -> proto::ProduceRequest {
    proto::ProduceRequest { topic: topic.into(), partition, record_batch: batch.to_vec().into(), ..Default::default() }
}

#[tokio::test]
async fn raw_produce_writes_client_batches_as_they_are_and_refuses_bad_ones() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path()).await;
    let mut c = client(&server).await;
    create(&mut c, "rawp", 2).await;
    const T: i64 = 1_700_000_000_000;
    let good = client_batch(&[("a", "first", T), ("b", "second", T + 5), ("", "third", T + 2)], None);
    let r = c.produce(raw_produce("rawp", Some(1), &good)).await.unwrap().into_inner().results;
    assert_eq!((r[0].partition, r[0].base_offset, r[0].last_offset), (1, 0, 2));
    let got = fetch_all(&mut c, "rawp", 1, 0).await;
    let summary: Vec<_> = got.iter().map(|r| (r.offset, r.key.clone(), r.value.clone(), r.timestamp_ms)).collect();
    assert_eq!(
        summary,
        vec![
            (0, "a".into(), "first".into(), T),
            (1, "b".into(), "second".into(), T + 5),
            (2, "".into(), "third".into(), T + 2)
        ]
    );
    assert_eq!(got[0].headers.get("trace").map(|v| v.as_ref()), Some(&b"t-1"[..]));
    // Stored as sent: a raw fetch returns the same bytes (bar the base offset).
    let stored = c
        .fetch(proto::FetchRequest { topic: "rawp".into(), partition: 1, raw_batches: true, ..Default::default() })
        .await
        .unwrap()
        .into_inner()
        .record_batches;
    assert_eq!(stored[0].as_ref(), &good[..]);

    // Every refusal is INVALID_ARGUMENT and writes nothing.
    let refused = |what: &str, req: proto::ProduceRequest| (what.to_string(), req);
    let mut bad = vec![
        refused("no partition", raw_produce("rawp", None, &good)),
        refused("garbage", raw_produce("rawp", Some(1), b"not a batch at all, just some bytes that are long enough!")),
        refused("truncated", raw_produce("rawp", Some(1), &good[..good.len() - 1])),
        refused("two batches", raw_produce("rawp", Some(1), &[good.clone(), good.clone()].concat())),
        refused(
            "records and a batch",
            proto::ProduceRequest { records: vec![record("", "x")], ..raw_produce("rawp", Some(1), &good) },
        ),
        refused(
            "producer outside the batch",
            proto::ProduceRequest { producer_id: Some(1), sequence: Some(0), ..raw_produce("rawp", Some(1), &good) },
        ),
    ];
    // Any flipped byte after the base offset (length, magic, CRC, header,
    // records) is caught, but for the leader epoch (bytes 12-15), which is
    // the broker's to stamp (Kafka producers send -1).
    for at in (8..12).chain(16..good.len()) {
        let mut flipped = good.clone();
        flipped[at] ^= 0x20;
        bad.push(refused(&format!("byte {at} flipped"), raw_produce("rawp", Some(1), &flipped)));
    }
    for (what, req) in bad {
        let err = c.produce(req).await.expect_err(&what);
        assert_eq!(err.code(), tonic::Code::InvalidArgument, "{what}: {}", err.message());
    }
    assert_eq!(fetch_all(&mut c, "rawp", 1, 0).await.len(), 3, "refused batches wrote nothing");
    let mut any_epoch = good.clone();
    any_epoch[12..16].copy_from_slice(&(-1i32).to_be_bytes());
    let r = c.produce(raw_produce("rawp", Some(1), &any_epoch)).await.unwrap().into_inner().results;
    let stored = c
        .fetch(proto::FetchRequest {
            topic: "rawp".into(),
            partition: 1,
            from: at_offset(r[0].base_offset),
            raw_batches: true,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .record_batches;
    assert_eq!(&stored[0][12..16], &0i32.to_be_bytes(), "the broker stamps its leader epoch");
    assert_eq!(&stored[0][16..], &good[16..], "and keeps the rest as it came");

    // A record timestamp of 0 means "now", as in Produce.
    let before = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as i64;
    let r = c.produce(raw_produce("rawp", Some(0), &client_batch(&[("", "now", 0)], None))).await.unwrap();
    assert_eq!(r.into_inner().results[0].base_offset, 0);
    assert!(fetch_all(&mut c, "rawp", 0, 0).await[0].timestamp_ms >= before);

    // The idempotent producer stamp travels inside the batch.
    let pid = c.init_producer(proto::InitProducerRequest {}).await.unwrap().into_inner().producer_id;
    let stamped = client_batch(
        &[("", "once", T)],
        Some(ProducerStamp { producer_id: pid, producer_epoch: 0, first_sequence: 0 }),
    );
    let first = c.produce(raw_produce("rawp", Some(0), &stamped)).await.unwrap().into_inner().results;
    let retry = c.produce(raw_produce("rawp", Some(0), &stamped)).await.unwrap().into_inner().results;
    assert_eq!((first[0].base_offset, retry[0].base_offset), (1, 1));
    assert_eq!(fetch_all(&mut c, "rawp", 0, 0).await.len(), 2, "the retry appended nothing");

    // Per-record limits hold for raw batches too.
    let config = [("max.record.bytes".to_string(), "100".to_string())].into();
    c.create_topic(proto::CreateTopicRequest { name: "small".into(), partitions: 1, config }).await.unwrap();
    let big = "x".repeat(200);
    let err = c.produce(raw_produce("small", Some(0), &client_batch(&[("", &big, T)], None))).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    assert!(err.message().contains("max.record.bytes"), "{}", err.message());
    server.shutdown().await.unwrap();
}

/// A Subscribe stream read by tonic's client or by strata's zero-copy one.
enum Sub {
    Tonic(tonic::Streaming<proto::SubscribeResponse>),
    ZeroCopy(strata::client::SubscribeStream),
}

impl Sub {
    async fn message(&mut self) -> Result<Option<proto::SubscribeResponse>, tonic::Status> {
        match self {
            Sub::Tonic(s) => s.message().await,
            Sub::ZeroCopy(s) => s.message().await,
        }
    }
}

/// Reads raw Subscribe messages until `until` offsets have arrived, checking
/// that each continues where the previous one ended; returns (offset, value).
async fn raw_deliveries(stream: &mut Sub, mut next: u64, until: u64, group: bool) -> Vec<(u64, String)> {
    let mut got = Vec::new();
    while next < until {
        let m = tokio::time::timeout(Duration::from_secs(20), stream.message())
            .await
            .expect("a message")
            .unwrap()
            .expect("the stream goes on");
        if m.record_batches.is_empty() {
            continue; // an assignment message
        }
        assert!(m.records.is_empty(), "raw messages carry batches, not records");
        assert_eq!((m.topic.as_str(), m.partition), ("raw.sub", 0));
        assert_eq!(m.first_offset, next, "each message continues where the last ended");
        assert_eq!(group, !m.member_id.is_empty());
        for b in &m.record_batches {
            for r in batch::decode_records(b).unwrap() {
                if r.offset >= m.first_offset {
                    got.push((r.offset, String::from_utf8(r.value.to_vec()).unwrap()));
                }
            }
        }
        assert_eq!(got.last().unwrap().0 + 1, m.next_offset);
        next = m.next_offset;
    }
    got
}

#[tokio::test]
async fn raw_subscription_pushes_stored_batches_alone_and_in_a_group() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path()).await;
    let mut c = client(&server).await;
    create(&mut c, "raw.sub", 1).await;
    let value = |o: u64| format!("v{o}");
    for b in 0..4u64 {
        produce(&mut c, "raw.sub", None, (0..5).map(|j| record("", &value(b * 5 + j))).collect()).await;
    }
    let request = |group: Option<&str>, from| proto::SubscribeRequest {
        topic_pattern: "raw.sub".into(),
        group: group.map(String::from),
        from,
        fallback: Some(proto::Boundary::Earliest as i32),
        raw_batches: true,
    };
    let expected = |offsets: std::ops::Range<u64>| offsets.map(|o| (o, value(o))).collect::<Vec<_>>();
    // From the middle of a batch: the message says which offset it starts
    // at. Read by tonic's client and by the zero-copy one alike.
    let channel = tonic::transport::Channel::from_shared(server.url()).unwrap().connect().await.unwrap();
    let mut alone = [
        Sub::Tonic(c.subscribe(request(None, at_offset(7))).await.unwrap().into_inner()),
        Sub::ZeroCopy(strata::client::subscribe(&channel, request(None, at_offset(7))).await.unwrap()),
    ];
    for s in &mut alone {
        assert_eq!(raw_deliveries(s, 7, 20, false).await, expected(7..20));
    }
    // A later append is pushed as it lands.
    produce(&mut c, "raw.sub", None, (20..25).map(|o| record("", &value(o))).collect()).await;
    for s in &mut alone {
        assert_eq!(raw_deliveries(s, 20, 25, false).await, expected(20..25));
    }
    // As a group member: from the committed offset (none, so the earliest).
    let mut member = Sub::Tonic(c.subscribe(request(Some("raw-group"), None)).await.unwrap().into_inner());
    assert_eq!(raw_deliveries(&mut member, 0, 25, true).await, expected(0..25));
    // Batches big enough to leave the broker as the stored bytes themselves.
    let big = |o: u64| format!("{}{}", value(o), "z".repeat(30_000));
    for b in 0..3u64 {
        produce(&mut c, "raw.sub", None, (0..4).map(|j| record("", &big(25 + b * 4 + j))).collect()).await;
    }
    for s in &mut alone {
        let got = raw_deliveries(s, 25, 37, false).await;
        assert_eq!(got, (25..37).map(|o| (o, big(o))).collect::<Vec<_>>());
    }
    drop((alone, member));
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn zero_copy_produce_clients_write_what_tonic_clients_read() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path()).await;
    let mut c = client(&server).await;
    create(&mut c, "zc", 1).await;
    let channel = tonic::transport::Channel::from_shared(server.url()).unwrap().connect().await.unwrap();
    const T: i64 = 1_700_000_000_000;
    let big = "z".repeat(30_000);
    // Unary: a client-encoded batch (sent from where it lies) and records.
    let batch = client_batch(&[("k", &big, T), ("", "small", T)], None);
    let r = strata::client::produce(&channel, raw_produce("zc", Some(0), &batch)).await.unwrap();
    assert_eq!((r.results[0].base_offset, r.results[0].last_offset), (0, 1));
    let records =
        proto::ProduceRequest { topic: "zc".into(), records: vec![record("", "as records")], ..Default::default() };
    assert_eq!(strata::client::produce(&channel, records).await.unwrap().results[0].base_offset, 2);
    // A refusal is a status, and writes nothing.
    let bad = strata::client::produce(&channel, raw_produce("zc", Some(0), &batch[..batch.len() - 1])).await;
    assert_eq!(bad.unwrap_err().code(), tonic::Code::InvalidArgument);
    // Pipelined over ProduceStream: acknowledged by request id, in order.
    let mut stream = strata::client::produce_stream(&channel, 4).await.unwrap();
    for id in 0..6u64 {
        let batch = client_batch(&[("", &format!("s{id}-{big}"), T)], None);
        stream.send(proto::ProduceRequest { request_id: id, ..raw_produce("zc", Some(0), &batch) }).await.unwrap();
    }
    stream.send(proto::ProduceRequest { request_id: 6, ..raw_produce("zc", None, &batch) }).await.unwrap();
    // Answers come by request id; a refusal needs no fsync, so it may
    // overtake acknowledgements waiting for theirs.
    let mut answers = std::collections::BTreeMap::new();
    for _ in 0..7 {
        let answer = stream.message().await.unwrap().expect("an answer");
        answers.insert(answer.request_id, answer);
    }
    for id in 0..6u64 {
        let ack = &answers[&id];
        assert_eq!((ack.error_code, ack.results[0].base_offset), (0, 3 + id), "{ack:?}");
    }
    assert_eq!(answers[&6].error_code, tonic::Code::InvalidArgument as i32);
    drop(stream);
    let got = fetch_all(&mut c, "zc", 0, 0).await;
    let values: Vec<String> = got.iter().map(|r| String::from_utf8(r.value.to_vec()).unwrap()).collect();
    let mut want = vec![big.clone(), "small".into(), "as records".into()];
    want.extend((0..6).map(|id| format!("s{id}-{big}")));
    assert_eq!(values, want);
    server.shutdown().await.unwrap();
}
