//! `/metrics` and `/healthz` on the HTTP listener: scraped and parsed as
//! Prometheus would, counters move by exactly what was produced and fetched
//! (over gRPC and Kafka), lag is DescribeGroup's, and the Grafana dashboard
//! uses only names the broker exports.

mod common;

use std::collections::BTreeSet;

use common::{client, create, fetch_all, produce, record, start};
use rskafka::client::partition::UnknownTopicHandling;
use strata::metrics::scrape::{self, sum, Sample};
use strata::proto;

async fn metrics(server: &strata::server::RunningServer) -> Vec<Sample> {
    scrape::scrape(&server.http_addr().unwrap().to_string()).await.unwrap()
}

fn topic_total(samples: &[Sample], name: &str, topic: &str) -> u64 {
    sum(samples, name, &[("topic", topic)]) as u64
}

#[tokio::test]
async fn counters_move_by_exactly_what_was_produced_and_fetched() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path()).await;
    let mut c = client(&server).await;
    create(&mut c, "payments.sent", 2).await;
    create(&mut c, "other", 1).await;
    let before = metrics(&server).await;
    assert_eq!(topic_total(&before, "strata_produce_records_total", "payments.sent"), 0);

    let mut produced = 0;
    for i in 0..7u32 {
        let records: Vec<_> = (0..=i).map(|j| record(&format!("k{j}"), &format!("value {i} {j}"))).collect();
        produced += records.len() as u64;
        produce(&mut c, "payments.sent", Some(i % 2), records).await;
    }
    let size = |d: &proto::TopicDescription| d.partition_descriptions.iter().map(|p| p.size_bytes).sum::<u64>();
    let described =
        c.describe_topic(proto::DescribeTopicRequest { name: "payments.sent".into() }).await.unwrap().into_inner();
    let stored = size(&described);

    let after = metrics(&server).await;
    assert_eq!(topic_total(&after, "strata_produce_records_total", "payments.sent"), produced);
    assert_eq!(topic_total(&after, "strata_produce_bytes_total", "payments.sent"), stored, "bytes as stored");
    assert_eq!(topic_total(&after, "strata_produce_records_total", "other"), 0);
    assert_eq!(sum(&after, "strata_request_duration_seconds_count", &[("method", "Produce")]) as u64, 7);
    assert!(
        sum(&after, "strata_fsync_duration_seconds_count", &[]) >= 7.0,
        "flush policy always: at least one fsync per produce"
    );
    for p in &described.partition_descriptions {
        let labels = [("topic", "payments.sent"), ("partition", &*p.partition.to_string())];
        assert_eq!(sum(&after, "strata_partition_high_watermark", &labels) as u64, p.high_watermark);
        assert_eq!(sum(&after, "strata_partition_log_start_offset", &labels) as u64, p.log_start_offset);
        assert_eq!(sum(&after, "strata_partition_size_bytes", &labels) as u64, p.size_bytes);
    }
    assert!(sum(&after, "strata_connections", &[("listener", "grpc")]) >= 1.0, "this client is connected");

    // Read everything once over gRPC: every record and every stored byte.
    let mut fetched = 0;
    for p in 0..2 {
        fetched += fetch_all(&mut c, "payments.sent", p, 0).await.len() as u64;
    }
    assert_eq!(fetched, produced);
    let read = metrics(&server).await;
    assert_eq!(topic_total(&read, "strata_fetch_records_total", "payments.sent"), produced);
    assert_eq!(topic_total(&read, "strata_fetch_bytes_total", "payments.sent"), stored);

    // And once more over Kafka, where the stored batches go out as they are.
    let kafka =
        rskafka::client::ClientBuilder::new(vec![server.kafka_addr().unwrap().to_string()]).build().await.unwrap();
    let mut over_kafka = 0;
    for p in 0..2 {
        let pc = kafka.partition_client("payments.sent", p, UnknownTopicHandling::Error).await.unwrap();
        let mut next = 0;
        loop {
            let (records, hw) = pc.fetch_records(next, 1..1_000_000, 100).await.unwrap();
            over_kafka += records.len() as u64;
            next = records.last().map_or(next, |r| r.offset + 1);
            if next >= hw {
                break;
            }
        }
    }
    assert_eq!(over_kafka, produced);
    let both = metrics(&server).await;
    assert_eq!(topic_total(&both, "strata_fetch_records_total", "payments.sent"), 2 * produced);
    assert_eq!(topic_total(&both, "strata_fetch_bytes_total", "payments.sent"), 2 * stored);
    assert!(sum(&both, "strata_request_duration_seconds_count", &[("listener", "kafka"), ("method", "Fetch")]) >= 2.0);

    // A deleted topic's series go away.
    c.delete_topic(proto::DeleteTopicRequest { name: "other".into() }).await.unwrap();
    let gone = metrics(&server).await;
    assert!(!gone.iter().any(|s| s.labels.get("topic").map(String::as_str) == Some("other")), "{gone:?}");
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn lag_is_what_describe_group_says() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path()).await;
    let mut c = client(&server).await;
    create(&mut c, "policy.updated", 3).await;
    for p in 0..3 {
        let records = (0..(5 + p)).map(|i| record("", &format!("v{i}"))).collect();
        produce(&mut c, "policy.updated", Some(p), records).await;
    }
    for (group, offsets) in [("auditors", [1u64, 0, 7]), ("ui", [5, 6, 2])] {
        let offsets = offsets
            .iter()
            .enumerate()
            .map(|(p, &offset)| proto::OffsetCommit {
                topic: "policy.updated".into(),
                partition: p as u32,
                offset,
                metadata: String::new(),
            })
            .collect();
        c.commit_offsets(proto::CommitOffsetsRequest {
            group: group.into(),
            member_id: String::new(),
            generation: 0,
            offsets,
        })
        .await
        .unwrap();
    }
    // A group that committed to one partition only: the others count from
    // the log start, as DescribeGroup has them.
    c.commit_offsets(proto::CommitOffsetsRequest {
        group: "sync".into(),
        member_id: String::new(),
        generation: 0,
        offsets: vec![proto::OffsetCommit {
            topic: "policy.updated".into(),
            partition: 1,
            offset: 2,
            metadata: String::new(),
        }],
    })
    .await
    .unwrap();
    let samples = metrics(&server).await;
    for group in ["auditors", "ui", "sync"] {
        let described =
            c.describe_group(proto::DescribeGroupRequest { group: group.into() }).await.unwrap().into_inner();
        assert_eq!(described.partitions.len(), 3);
        for p in &described.partitions {
            let labels = [("group", group), ("topic", p.topic.as_str()), ("partition", &*p.partition.to_string())];
            let series: Vec<_> = samples
                .iter()
                .filter(|s| {
                    s.name == "strata_consumer_group_lag"
                        && labels.iter().all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
                })
                .collect();
            assert_eq!(series.len(), 1, "one series for {labels:?}");
            assert_eq!(series[0].value as u64, p.lag, "{labels:?}");
        }
    }
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn healthz_says_ok_and_unknown_paths_are_404() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path()).await;
    let http = server.http_addr().unwrap().to_string();
    assert_eq!(scrape::http_get(&http, "/healthz").await.unwrap(), (200, "ok\n".to_string()));
    assert_eq!(scrape::http_get(&http, "/no/such/page").await.unwrap().0, 404);
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_client_that_never_sends_is_cut_off_after_the_read_timeout() {
    use tokio::io::AsyncReadExt;
    let dir = tempfile::tempdir().unwrap();
    let config = strata::config::BrokerConfig {
        request_read_timeout: std::time::Duration::from_millis(300),
        ..common::config(dir.path())
    };
    let server = strata::server::start(config).await.unwrap();
    let http = server.http_addr().unwrap();
    let mut stalled = tokio::net::TcpStream::connect(http).await.unwrap();
    let mut buf = [0u8; 64];
    let closed = tokio::time::timeout(std::time::Duration::from_secs(10), stalled.read(&mut buf)).await;
    assert!(matches!(closed, Ok(Ok(0)) | Ok(Err(_))), "the broker closes a silent connection: {closed:?}");
    let mut half = tokio::net::TcpStream::connect(http).await.unwrap();
    tokio::io::AsyncWriteExt::write_all(&mut half, b"GET /metrics HTTP/1.1\r\nHost: x\r\n").await.unwrap();
    let closed = tokio::time::timeout(std::time::Duration::from_secs(10), half.read(&mut buf)).await;
    assert!(matches!(closed, Ok(Ok(_)) | Ok(Err(_))), "and one stalled inside its headers: {closed:?}");
    assert_eq!(scrape::http_get(&http.to_string(), "/healthz").await.unwrap().0, 200);
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn garbage_on_the_http_port_leaves_it_serving() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path()).await;
    let http = server.http_addr().unwrap();
    let mut junk = tokio::net::TcpStream::connect(http).await.unwrap();
    junk.write_all(b"\x16\x03\x01\x00\xff garbage that is no HTTP request\r\n\r\n").await.unwrap();
    let mut reply = Vec::new();
    let _ = tokio::time::timeout(std::time::Duration::from_secs(5), junk.read_to_end(&mut reply)).await;
    let stalled = tokio::net::TcpStream::connect(http).await.unwrap(); // never sends a byte
    assert_eq!(scrape::http_get(&http.to_string(), "/healthz").await.unwrap().0, 200);
    drop(stalled);
    server.shutdown().await.unwrap();
}

/// Every `strata_*` name in the Grafana dashboard is one the broker exports.
#[tokio::test]
async fn the_grafana_dashboard_uses_exported_names() {
    let dashboard =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/grafana-dashboard.json")).unwrap();
    let json: serde_json::Value = serde_json::from_str(&dashboard).expect("the dashboard is JSON");
    assert!(json["panels"].as_array().is_some_and(|p| p.len() >= 6), "it has panels");
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path()).await;
    let mut c = client(&server).await;
    create(&mut c, "t", 1).await;
    produce(&mut c, "t", None, vec![record("k", "v")]).await;
    fetch_all(&mut c, "t", 0, 0).await;
    c.commit_offsets(proto::CommitOffsetsRequest {
        group: "g".into(),
        member_id: String::new(),
        generation: 0,
        offsets: vec![proto::OffsetCommit { topic: "t".into(), partition: 0, offset: 0, metadata: String::new() }],
    })
    .await
    .unwrap();
    let exported: BTreeSet<String> = metrics(&server).await.into_iter().map(|s| s.name).collect();
    let mut used = BTreeSet::new();
    let mut rest = dashboard.as_str();
    while let Some(at) = rest.find("strata_") {
        let name: String = rest[at..].chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_').collect();
        rest = &rest[at + name.len()..];
        used.insert(name);
    }
    assert!(used.len() >= 8, "{used:?}");
    let missing: Vec<_> = used
        .iter()
        // Histograms parse as one series per label set (their buckets).
        .filter(|n| !exported.contains(*n) && !n.strip_suffix("_bucket").is_some_and(|h| exported.contains(h)))
        .collect();
    assert!(
        missing.is_empty(),
        "the dashboard names series the broker does not export: {missing:?}\nexported: {exported:?}"
    );
    server.shutdown().await.unwrap();
}

/// The scrape time the issue asks to report, with as many partitions as the
/// open-file limit allows (each keeps 3 files open: 10,000 need 30,000, and
/// the hard limit here is 20,000; `STRATA_SCRAPE_TOPICS` sets the number of
/// 100-partition topics, default 60) and 1,000 groups, each committed on
/// every partition of one topic (100,000 lag series). Timings are printed,
/// never asserted:
/// `cargo test --release --test metrics -- --ignored --nocapture`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a measurement, not a check; run by hand"]
async fn scrape_time_with_many_partitions_and_1k_groups() {
    let _ = rlimit::increase_nofile_limit(u64::MAX);
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path()).await;
    let mut c = client(&server).await;
    let topics: u32 = std::env::var("STRATA_SCRAPE_TOPICS").ok().and_then(|v| v.parse().ok()).unwrap_or(60);
    let started = std::time::Instant::now();
    for t in 0..topics {
        let name = format!("topic.{t:03}");
        c.create_topic(proto::CreateTopicRequest {
            name: name.clone(),
            partitions: 100,
            config: [("flush.policy".to_string(), "never".to_string())].into(),
        })
        .await
        .unwrap();
        for p in 0..100 {
            produce(&mut c, &name, Some(p), vec![record("k", "v"), record("k", "w")]).await;
        }
    }
    for g in 0..1000 {
        let topic = format!("topic.{:03}", g % topics);
        let offsets = (0..100)
            .map(|p| proto::OffsetCommit { topic: topic.clone(), partition: p, offset: 1, metadata: String::new() })
            .collect();
        c.commit_offsets(proto::CommitOffsetsRequest {
            group: format!("group-{g:04}"),
            member_id: String::new(),
            generation: 0,
            offsets,
        })
        .await
        .unwrap();
    }
    println!("set up in {:.1} s", started.elapsed().as_secs_f64());
    let http = server.http_addr().unwrap().to_string();
    let mut times = Vec::new();
    for _ in 0..5 {
        let t = std::time::Instant::now();
        let (status, body) = scrape::http_get(&http, "/metrics").await.unwrap();
        times.push(t.elapsed().as_secs_f64() * 1000.0);
        assert_eq!(status, 200);
        let lag_series = body.lines().filter(|l| l.starts_with("strata_consumer_group_lag{")).count();
        assert_eq!(lag_series, 100_000);
        println!("scrape: {:.1} ms, {} bytes", times.last().unwrap(), body.len());
    }
    times.sort_by(f64::total_cmp);
    let mut encode = Vec::new();
    for _ in 0..5 {
        let t = std::time::Instant::now();
        let text = server.broker().metrics_text();
        encode.push(t.elapsed().as_secs_f64() * 1000.0);
        assert!(text.len() > 1000);
    }
    encode.sort_by(f64::total_cmp);
    println!("median of building the text alone: {:.1} ms", encode[2]);
    println!(
        "median scrape over HTTP: {:.1} ms ({} partitions, 1,000 groups, 100,000 lag series)",
        times[2],
        topics * 100
    );
    server.shutdown().await.unwrap();
}
