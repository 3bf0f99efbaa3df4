//! Shared helpers: a real broker on 127.0.0.1:0 over a temp dir, and a client.
#![allow(dead_code)]

pub mod process;
pub mod python;

use std::path::Path;

use strata::config::BrokerConfig;
use strata::proto::broker_client::BrokerClient;
use strata::proto::{self, position::Position as P};
use strata::server::{self, RunningServer};
use tonic::transport::Channel;

pub type Client = BrokerClient<Channel>;

pub fn config(dir: &Path) -> BrokerConfig {
    BrokerConfig {
        data_dir: dir.to_path_buf(),
        listen: "127.0.0.1:0".parse().unwrap(),
        kafka_listen: Some("127.0.0.1:0".parse().unwrap()),
        http_listen: Some("127.0.0.1:0".parse().unwrap()),
        ..BrokerConfig::default()
    }
}

pub async fn start(dir: &Path) -> RunningServer {
    server::start(config(dir)).await.unwrap()
}

pub async fn client(server: &RunningServer) -> Client {
    BrokerClient::connect(server.url()).await.unwrap().max_decoding_message_size(64 << 20)
}

pub async fn create(client: &mut Client, name: &str, partitions: u32) -> proto::TopicDescription {
    client
        .create_topic(proto::CreateTopicRequest { name: name.into(), partitions, config: Default::default() })
        .await
        .unwrap()
        .into_inner()
}

pub fn record(key: &str, value: &str) -> proto::Record {
    proto::Record { key: key.as_bytes().to_vec().into(), value: value.as_bytes().to_vec().into(), ..Default::default() }
}

pub async fn produce(
    client: &mut Client,
    topic: &str,
    partition: Option<u32>,
    records: Vec<proto::Record>,
) -> Vec<proto::ProduceResult> {
    client
        .produce(proto::ProduceRequest { topic: topic.into(), partition, records, ..Default::default() })
        .await
        .unwrap()
        .into_inner()
        .results
}

pub fn at_offset(offset: u64) -> Option<proto::Position> {
    Some(proto::Position { position: Some(P::Offset(offset)) })
}

pub fn at_boundary(b: proto::Boundary) -> Option<proto::Position> {
    Some(proto::Position { position: Some(P::Boundary(b as i32)) })
}

pub async fn fetch(
    client: &mut Client,
    topic: &str,
    partition: u32,
    from: u64,
) -> Result<proto::FetchResponse, tonic::Status> {
    client
        .fetch(proto::FetchRequest {
            topic: topic.into(),
            partition,
            from: at_offset(from),
            max_records: 0,
            max_bytes: 0,
            max_wait_ms: 0,
            raw_batches: false,
        })
        .await
        .map(|r| r.into_inner())
}

/// Every record of a partition from `from` to the high watermark.
pub async fn fetch_all(client: &mut Client, topic: &str, partition: u32, from: u64) -> Vec<proto::StoredRecord> {
    let mut out = Vec::new();
    let mut next = from;
    loop {
        let r = fetch(client, topic, partition, next).await.unwrap();
        if r.records.is_empty() {
            return out;
        }
        next = r.next_offset;
        out.extend(r.records);
    }
}

/// The README's text between `<!-- NAME:start -->` and `<!-- NAME:end -->`,
/// without the code fences.
pub fn readme_block(name: &str) -> String {
    let readme = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md")).unwrap();
    let start = readme.find(&format!("<!-- {name}:start -->")).expect("start marker");
    let end = readme.find(&format!("<!-- {name}:end -->")).expect("end marker");
    readme[start..end].lines().skip(1).filter(|l| !l.starts_with("```")).collect::<Vec<_>>().join("\n")
}

/// A client of a broker process that just said it listens (retried for 2 s).
pub async fn process_client(url: &str) -> Client {
    for _ in 0..100 {
        if let Ok(c) = BrokerClient::connect(url.to_string()).await {
            return c.max_decoding_message_size(64 << 20);
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    panic!("cannot connect to {url}");
}
