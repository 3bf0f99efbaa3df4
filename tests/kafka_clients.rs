//! Real Kafka clients against the Kafka listener: librdkafka (the Python
//! `confluent-kafka` wheel) and an independent client (`kafka-python`),
//! installed into `target/pyenv` on first run. The Python side is
//! `tests/python/kafka_clients.py`; each mode checks what a user relies on
//! and prints "<MODE> OK" last.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::python::{kafka_clients_python as python, run_kafka_script as run};
use strata::proto;

/// The JSON after `prefix` on its line of `stdout`.
fn json_line(stdout: &str, prefix: &str) -> serde_json::Value {
    let line = stdout.lines().find_map(|l| l.strip_prefix(prefix)).unwrap_or_else(|| panic!("no {prefix}in {stdout}"));
    serde_json::from_str(line).unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn librdkafka_admin_idempotent_produce_groups_that_resume_and_split_and_offsets_for_times() {
    let dir = tempfile::tempdir().unwrap();
    let server = common::start(dir.path()).await;
    let kafka = server.kafka_addr().unwrap().to_string();
    run("librdkafka", &kafka, &[], "LIBRDKAFKA OK").await;
    // The group's commits are the broker's, visible over gRPC too.
    let mut client = common::client(&server).await;
    let group =
        client.describe_group(proto::DescribeGroupRequest { group: "billing".into() }).await.unwrap().into_inner();
    let committed: u64 = group.partitions.iter().map(|p| p.committed_offset.unwrap_or(0)).sum();
    assert_eq!(committed, 300, "{group:?}");
    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn kafka_python_produces_consumes_commits_and_administers() {
    let dir = tempfile::tempdir().unwrap();
    let server = common::start(dir.path()).await;
    let kafka = server.kafka_addr().unwrap().to_string();
    run("kafka-python", &kafka, &[], "KAFKA-PYTHON OK").await;
    server.shutdown().await.unwrap();
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn records_cross_between_grpc_and_kafka_byte_exact() {
    let dir = tempfile::tempdir().unwrap();
    let server = common::start(dir.path()).await;
    let kafka = server.kafka_addr().unwrap().to_string();
    let mut client = common::client(&server).await;
    common::create(&mut client, "from-grpc", 1).await;
    common::create(&mut client, "from-kafka", 1).await;
    let records: Vec<proto::Record> = (0..4u8)
        .map(|i| proto::Record {
            key: vec![i, 0, 0xff].into(),
            value: (0..=255u8).map(|b| b.wrapping_mul(i + 1)).collect::<Vec<u8>>().into(),
            headers: [
                ("bin".to_string(), vec![0u8, i, 0x80].into()),
                ("traceparent".to_string(), b"00-ab-cd-01".to_vec().into()),
            ]
            .into_iter()
            .collect(),
            timestamp_ms: 1_790_000_000_000 + i as i64,
        })
        .collect();
    common::produce(&mut client, "from-grpc", Some(0), records.clone()).await;
    let stdout = run("exchange", &kafka, &["4"], "EXCHANGE OK").await;

    // gRPC -> Kafka.
    let read = json_line(&stdout, "READ ");
    let read = read.as_array().unwrap();
    assert_eq!(read.len(), 4);
    for (i, (r, sent)) in read.iter().zip(&records).enumerate() {
        assert_eq!(r["offset"], i as u64);
        assert_eq!(r["key"], hex(&sent.key));
        assert_eq!(r["value"], hex(&sent.value));
        assert_eq!(r["timestamp"], sent.timestamp_ms);
        let mut headers: Vec<(String, String)> = r["headers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|h| (h[0].as_str().unwrap().to_string(), h[1].as_str().unwrap().to_string()))
            .collect();
        headers.sort();
        let mut expected: Vec<(String, String)> = sent.headers.iter().map(|(k, v)| (k.clone(), hex(v))).collect();
        expected.sort();
        assert_eq!(headers, expected);
    }

    // Kafka -> gRPC.
    let sent = json_line(&stdout, "SENT ");
    let stored = common::fetch_all(&mut client, "from-kafka", 0, 0).await;
    assert_eq!(stored.len(), 5);
    for (s, r) in sent.as_array().unwrap().iter().zip(&stored) {
        let record = r;
        assert_eq!(s["key"], hex(&record.key));
        assert_eq!(s["value"], hex(&record.value));
        assert_eq!(s["timestamp"], record.timestamp_ms);
        let headers: Vec<(String, String)> = record.headers.iter().map(|(k, v)| (k.clone(), hex(v))).collect();
        for h in s["headers"].as_array().unwrap() {
            let pair = (h[0].as_str().unwrap().to_string(), h[1].as_str().unwrap().to_string());
            assert!(headers.contains(&pair), "{pair:?} not in {headers:?}");
        }
    }
    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn an_acks_all_produce_survives_sigkill() {
    let dir = tempfile::tempdir().unwrap();
    let grpc = "127.0.0.1:0";
    let (mut child, url, kafka) = common::process::serve_with_kafka(dir.path(), grpc);
    let (ok, _, err) = common::process::run(dir.path(), &url, "strata topic create durable --partitions 2");
    assert!(ok, "{err}");
    let stdout = run("produce", &kafka, &["2000"], "PRODUCE OK").await;
    let acked = json_line(&stdout, "ACKED ");
    assert_eq!(acked.as_array().unwrap().len(), 2000, "every record acknowledged before the kill");
    common::process::kill9(&mut child);

    let (mut child, _, kafka) = common::process::serve_with_kafka(dir.path(), grpc);
    let stdout = run("verify", &kafka, &[], "VERIFY OK").await;
    let stored = json_line(&stdout, "RECORDS ");
    let stored: std::collections::HashSet<String> = stored.as_array().unwrap().iter().map(|r| r.to_string()).collect();
    for a in acked.as_array().unwrap() {
        assert!(stored.contains(&a.to_string()), "acknowledged {a} lost after SIGKILL");
    }
    common::process::kill9(&mut child);
}

#[tokio::test(flavor = "multi_thread")]
async fn readme_kcat_quick_check_works_as_written() {
    tokio::task::spawn_blocking(|| common::process::debian_tool("kcat", "-V", "kcat")).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let server = common::start(dir.path()).await;
    let kafka = server.kafka_addr().unwrap().to_string();
    let lines: Vec<String> =
        common::readme_block("kafka").lines().map(|l| l.replace("127.0.0.1:9092", &kafka)).collect();
    assert!(lines.len() >= 4, "{lines:?}");
    let (cwd, url) = (dir.path().to_path_buf(), server.url());
    let outputs = tokio::task::spawn_blocking(move || {
        lines
            .iter()
            .map(|line| {
                let (ok, stdout, stderr) = common::process::run(&cwd, &url, line);
                assert!(ok, "`{line}` failed: {stdout}{stderr}");
                (line.clone(), stdout)
            })
            .collect::<Vec<_>>()
    })
    .await
    .unwrap();
    let out = |prefix: &str| outputs.iter().find(|(l, _)| l.starts_with(prefix)).map(|(_, o)| o.clone()).unwrap();
    let consumed = out("kcat -C");
    assert!(consumed.contains(r#"cust-42 {"amount": 120}"#) && consumed.starts_with("orders "), "{consumed}");
    assert!(out("kcat -L").contains(r#"topic "orders" with 3 partitions"#), "{}", out("kcat -L"));
    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn readme_python_kafka_example_works_as_pasted_and_again() {
    let python = tokio::task::spawn_blocking(python).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let server = common::start(dir.path()).await;
    let code =
        common::readme_block("kafka-python").replace("127.0.0.1:9092", &server.kafka_addr().unwrap().to_string());
    let script = dir.path().join("example.py");
    std::fs::write(&script, code).unwrap();
    let mut runs = Vec::new();
    for _ in 0..2 {
        let (python, script) = (python.clone(), script.clone());
        let out =
            tokio::task::spawn_blocking(move || Command::new(python).arg(script).output().unwrap()).await.unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(out.status.success(), "{stdout}{}", String::from_utf8_lossy(&out.stderr));
        runs.push(stdout);
    }
    for (i, run) in runs.iter().enumerate() {
        let lines: Vec<&str> = run.lines().collect();
        // Each run prints the one record it produced: the group resumes after the first.
        assert_eq!(lines.len(), 1, "run {i}: {run}");
        assert!(lines[0].starts_with("policy.updated ") && lines[0].contains("b'policy-7'"), "run {i}: {run}");
        assert!(lines[0].contains("[('id', b'evt-1')]"), "run {i}: {run}");
        assert!(lines[0].contains(&format!(" {i} b'policy-7'")), "run {i} reads offset {i}: {run}");
    }
    server.shutdown().await.unwrap();
}

/// Node.js with KafkaJS in `target/nodeenv` (Debian's nodejs and npm are
/// installed if node is missing; a failure fails the test with the reason).
fn kafkajs() -> PathBuf {
    static INSTALL: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _guard = INSTALL.lock().unwrap_or_else(|e| e.into_inner());
    let node_ok = || Command::new("node").arg("--version").output().is_ok_and(|o| o.status.success());
    if !node_ok() {
        let apt = |args: &[&str]| Command::new("apt-get").args(args).status().is_ok_and(|s| s.success());
        let installed = apt(&["install", "-y", "-q", "nodejs", "npm"])
            || (apt(&["update", "-q"]) && apt(&["install", "-y", "-q", "nodejs", "npm"]));
        assert!(installed && node_ok(), "Node.js is needed for the KafkaJS test: `apt-get install nodejs npm` failed");
    }
    let prefix = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/nodeenv");
    let modules = prefix.join("node_modules");
    if !modules.join("kafkajs/package.json").exists() {
        let status = Command::new("npm")
            .args(["install", "--silent", "--no-audit", "--no-fund", "--prefix"])
            .arg(&prefix)
            .arg("kafkajs@2.2.4")
            .status()
            .expect("npm is installed with node");
        assert!(status.success(), "npm install kafkajs@2.2.4 failed (is the npm registry reachable?)");
    }
    modules
}

#[tokio::test(flavor = "multi_thread")]
async fn kafkajs_admin_idempotent_produce_and_a_consumer_group() {
    let modules = tokio::task::spawn_blocking(kafkajs).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let server = common::start(dir.path()).await;
    let kafka = server.kafka_addr().unwrap().to_string();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/js/kafkajs_test.js");
    let out = tokio::task::spawn_blocking(move || {
        Command::new("node")
            .arg(script)
            .arg(kafka)
            .env("NODE_PATH", modules)
            .env("KAFKAJS_NO_PARTITIONER_WARNING", "1")
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success() && stdout.contains("KAFKAJS OK"), "KafkaJS failed:\n{stdout}\n{stderr}");
    server.shutdown().await.unwrap();
}
