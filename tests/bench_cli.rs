//! `strata bench` runs against an embedded broker and prints one JSON object
//! with the documented keys. Figures are recorded by people, never asserted.

mod common;

use common::process::{kill9, run, serve};

#[test]
fn bench_modes_print_a_json_summary() {
    let dir = tempfile::tempdir().unwrap();
    for mode in [
        "produce --records 3000 --producers 2 --partitions 2",
        "consume --records 3000 --partitions 2 --consumers 2",
        "e2e --duration 1s --rate 2000 --record-bytes 64",
        "produce --records 1000 --flush never --batch 10",
        // Pipelined over ProduceStream, with client-encoded batches.
        "produce --records 3000 --producers 2 --partitions 2 --in-flight 4 --raw --batch 7",
        // One request in flight, on a ProduceStream instead of unary calls.
        "produce --records 3000 --producers 2 --partitions 2 --stream --batch 7",
        "consume --records 3000 --raw",
        // Over Subscribe: alone, raw, and two consumers sharing a group.
        "consume --records 3000 --raw --subscribe",
        "consume --records 3000 --partitions 2 --consumers 2 --subscribe",
        // Through the Kafka listener with librdkafka.
        "produce --records 3000 --producers 2 --partitions 2 --in-flight 4 --protocol kafka",
        "consume --records 3000 --partitions 2 --consumers 2 --protocol kafka",
        "produce --records 3000 --partitions 2 --protocol kafka -X enable.idempotence=true -X linger.ms=1",
        // ... and with rskafka, which encodes whole batches as --raw does.
        "produce --records 3000 --producers 2 --partitions 2 --in-flight 4 --protocol kafka --client rskafka",
        "consume --records 3000 --partitions 2 --consumers 2 --protocol kafka --client rskafka",
        // Share group workers draining a filled topic, pulling and pushed,
        // and at a rate with releases (redelivery lateness reported).
        "share --records 3000 --partitions 2 --workers 3 --ack-every 50",
        "share --records 3000 --workers 3 --push",
        "share --rate 2000 --batch 10 --duration 1s --workers 2 --release-every 10 --release-delay 20ms",
        // An alert per record, with idle rules beside the matching one.
        "alert --rate 200 --duration 1s --rules 5",
        // Over TLS, with security on (1,000 ACL entries), with unique event
        // ids into a de-dup topic, and with idle alert rules.
        "produce --records 3000 --producers 2 --tls",
        "consume --records 3000 --raw --subscribe --tls",
        "produce --records 3000 --producers 2 --acl-rules 1000",
        "produce --records 3000 --producers 2 --ids --dedupe --idle-rules 10",
    ] {
        let (ok, out, err) = run(dir.path(), "http://unused", &format!("strata bench {mode} --embedded --json"));
        assert!(ok, "bench {mode}: {err}");
        let summary: serde_json::Value = serde_json::from_str(out.trim().lines().last().unwrap()).unwrap();
        for key in ["records_per_s", "mb_per_s", "p50_ms", "p99_ms", "p999_ms", "max_ms"] {
            assert!(summary[key].is_number(), "bench {mode}: {key} in {summary}");
        }
        assert!(summary["records"].as_u64().unwrap() > 0, "bench {mode} moved records: {summary}");
        if mode.starts_with("produce --records 3000") && !mode.contains("--protocol kafka") {
            let stream = mode.contains("--stream") || mode.contains("--in-flight 4");
            assert_eq!(summary["config"]["produce_stream"], stream, "bench {mode}: {summary}");
        }
        if mode.starts_with("produce --records 3000") && mode.contains("--dedupe") {
            assert_eq!(summary["config"]["dedupe"], true, "{summary}");
        }
        if mode.starts_with("produce --records 3000")
            || mode.starts_with("consume --records 3000 --partitions 2 --consumers 2 --protocol")
            || mode.contains("enable.idempotence")
        {
            assert_eq!(summary["records"].as_u64(), Some(3000), "every record acknowledged once: {summary}");
        }
        if mode.starts_with("share --records 3000") {
            assert_eq!(summary["records"].as_u64(), Some(3000), "every record acknowledged once: {summary}");
            assert!(summary["delivery_p99_ms"].is_number(), "{summary}");
        }
        if mode.starts_with("alert") {
            let sent = summary["records_sent"].as_u64().unwrap();
            assert_eq!(summary["records"].as_u64(), Some(sent), "one alert per record: {summary}");
        }
        if mode.contains("--release-every") {
            assert!(summary["redeliveries"].as_u64().unwrap() > 0, "released records came back: {summary}");
            assert!(summary["redelivery_late_p99_ms"].is_number(), "{summary}");
        }
        if mode.ends_with("--subscribe") {
            // A group rebalance may deliver a record twice (at least once).
            assert!(summary["records"].as_u64().unwrap() >= 3000, "every record delivered: {summary}");
        }
        if mode.contains("--protocol kafka") {
            let client = summary["config"]["client"].as_str().unwrap_or_default();
            let want = if mode.contains("rskafka") { "rskafka" } else { "librdkafka" };
            assert!(client.starts_with(want), "bench {mode}: client {client:?}");
        }
        if mode.contains(" -X ") {
            let props = summary["config"]["kafka_properties"].to_string();
            assert!(props.contains("enable.idempotence=true"), "bench {mode}: {props}");
        }
        if mode == "produce --records 3000 --producers 2 --partitions 2" {
            // 30 requests of 100 records, each acknowledged after a
            // group-commit fsync that covered it (one may cover several;
            // a partition's close may add one).
            assert_eq!(summary["produce_requests"].as_u64(), Some(30), "{summary}");
            let fsyncs = summary["fsyncs"].as_u64().unwrap();
            assert!((1..=32).contains(&fsyncs), "{summary}");
            let per_fsync = summary["requests_per_fsync"].as_f64().unwrap();
            assert!((per_fsync - 30.0 / fsyncs as f64).abs() < 1e-9, "{summary}");
        }
        assert!(summary["p50_ms"].as_f64().unwrap() <= summary["max_ms"].as_f64().unwrap());
        // Embedded: the CPU of this whole process (broker and load) per GB.
        assert_eq!(summary["cpu_scope"], "process", "bench {mode}: {summary}");
        // /proc counts CPU in 10 ms ticks: a run of a few ms may see none.
        let cpu = summary["cpu_s_per_gb"].as_f64();
        let long_enough = summary["seconds"].as_f64().unwrap() >= 0.1;
        assert!(cpu.is_some_and(|c| c > 0.0 || (c == 0.0 && !long_enough)), "bench {mode}: {summary}");
    }
    // The embedded broker's temp dirs are cleaned up.
    let left: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
    assert!(left.is_empty(), "{left:?}");
}

/// Against a broker in another process, `cpu_s_per_gb` is that process's
/// CPU (found by the port it listens on), not the bench's.
#[test]
fn bench_against_a_server_reports_the_broker_s_cpu_per_gb() {
    let dir = tempfile::tempdir().unwrap();
    let (mut broker, url) = serve(dir.path());
    let (ok, out, err) =
        run(dir.path(), &url, &format!("strata bench produce --server {url} --records 20000 --producers 2 --json"));
    kill9(&mut broker);
    assert!(ok, "{err}");
    let summary: serde_json::Value = serde_json::from_str(out.trim().lines().last().unwrap()).unwrap();
    assert_eq!(summary["cpu_scope"], "broker", "{summary}");
    // Another process's fsyncs are not counted here.
    assert!(summary["fsyncs"].is_null() && summary["requests_per_fsync"].is_null(), "{summary}");
    assert!(summary["cpu_s_per_gb"].as_f64().is_some_and(|c| c > 0.0), "{summary}");
}
