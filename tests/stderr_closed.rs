//! A broker whose stderr is gone (the terminal closed, the log pipe's reader
//! died) keeps working: logging never takes a request or a background task
//! down with it, retention keeps running, and SIGTERM still stops it
//! cleanly (exit 0).

mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::process::BIN;
use strata::proto;

// Multi-threaded, so the client connection closes while the test waits for the
// broker (an unanswered connection would hold its graceful stop).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_with_a_broken_stderr_serves_retains_commits_and_stops_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("strata.toml"), "\"retention.check.interval.ms\" = 50\n").unwrap();
    let mut child = Command::new(BIN)
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--kafka-listen",
            "127.0.0.1:0",
            "--http-listen",
            "127.0.0.1:0",
            "--config",
            "strata.toml",
        ])
        .current_dir(dir.path())
        .env("RUST_LOG", "debug")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Nobody reads the broker's stderr any more: every write to it fails.
    drop(child.stderr.take());
    let url = format!("http://{}", common::process::listening(&mut child));
    let mut c = strata::proto::broker_client::BrokerClient::connect(url).await.unwrap();

    let config = [("segment.bytes", "1024"), ("retention.ms", "1")].map(|(k, v)| (k.to_string(), v.to_string()));
    c.create_topic(proto::CreateTopicRequest { name: "logs".into(), partitions: 1, config: config.into() })
        .await
        .expect("CreateTopic works with stderr gone");
    for i in 0..40 {
        let value = format!("{i:0200}");
        let r = proto::Record { value: value.into_bytes().into(), timestamp_ms: 1, ..Default::default() };
        c.produce(proto::ProduceRequest { topic: "logs".into(), records: vec![r], ..Default::default() })
            .await
            .expect("Produce works with stderr gone");
    }
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let d = c.describe_topic(proto::DescribeTopicRequest { name: "logs".into() }).await.unwrap().into_inner();
        if d.partition_descriptions[0].log_start_offset > 0 {
            break;
        }
        assert!(Instant::now() < deadline, "retention stopped: {d:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let commit = proto::OffsetCommit { topic: "logs".into(), partition: 0, offset: 40, metadata: String::new() };
    c.commit_offsets(proto::CommitOffsetsRequest { group: "g".into(), offsets: vec![commit], ..Default::default() })
        .await
        .expect("CommitOffsets works with stderr gone");
    drop(c);
    let status = Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap();
    assert!(status.success());
    let exit = child.wait().unwrap();
    assert_eq!(exit.code(), Some(0), "SIGTERM stops the broker cleanly: {exit:?}");
    assert!(dir.path().join("data/logs/0/clean.shutdown").exists(), "the log was closed cleanly");
}
