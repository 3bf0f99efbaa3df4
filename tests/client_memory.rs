//! No client can take more than its bounded share of the broker's memory:
//! a produce request of millions of empty records is refused before it is
//! decoded, subscribers that stop reading hold their stream budget and no
//! more, and half-sent produce requests are budgeted broker-wide and time
//! out. Each runs the real binary and reads its memory from /proc.
//!
//! `STRATA_STALLED_SUBSCRIBES=1000 STRATA_STALLED_PRODUCERS=40 cargo test
//! --release --test client_memory -- --nocapture` measures at the sizes the
//! README quotes (`STRATA_BIN` runs another binary, to compare).

mod common;

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use bytes::Bytes;
use common::process::kill9;
use strata::proto;
use strata::proto::broker_client::BrokerClient;
use tonic::transport::Channel;

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// `strata serve` with a config file; the process and its address.
fn serve(dir: &std::path::Path, config: &str) -> (Child, String) {
    std::fs::write(dir.join("strata.toml"), config).unwrap();
    let bin = std::env::var("STRATA_BIN").unwrap_or_else(|_| common::process::BIN.to_string());
    let mut child = Command::new(bin)
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
        .current_dir(dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let addr = common::process::listening(&mut child);
    (child, addr)
}

/// A `/proc/PID/status` field in MiB (VmRSS, VmHWM, RssAnon, ...).
fn status_mib(pid: u32, field: &str) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with(&format!("{field}:"))).unwrap();
    line.split_whitespace().nth(1).unwrap().parse::<f64>().unwrap() / 1024.0
}

async fn connect(addr: &str) -> BrokerClient<Channel> {
    BrokerClient::connect(format!("http://{addr}")).await.unwrap().max_decoding_message_size(64 << 20)
}

async fn create(c: &mut BrokerClient<Channel>, name: &str) {
    c.create_topic(proto::CreateTopicRequest { name: name.into(), partitions: 1, config: Default::default() })
        .await
        .unwrap();
}

/// A codec that sends message bytes as they are.
#[derive(Debug, Clone, Default)]
struct RawCodec;

impl tonic::codec::Codec for RawCodec {
    type Encode = Bytes;
    type Decode = proto::ProduceResponse;
    type Encoder = RawCodec;
    type Decoder = tonic_prost::ProstDecoder<proto::ProduceResponse>;
    fn encoder(&mut self) -> RawCodec {
        RawCodec
    }
    fn decoder(&mut self) -> Self::Decoder {
        tonic_prost::ProstDecoder::new(tonic::codec::BufferSettings::default())
    }
}

impl tonic::codec::Encoder for RawCodec {
    type Item = Bytes;
    type Error = tonic::Status;
    fn encode(&mut self, item: Bytes, buf: &mut tonic::codec::EncodeBuf<'_>) -> Result<(), tonic::Status> {
        bytes::BufMut::put(buf, item);
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn millions_of_empty_records_are_refused_before_they_are_decoded() {
    let dir = tempfile::tempdir().unwrap();
    let (mut broker, addr) = serve(dir.path(), "");
    let mut c = connect(&addr).await;
    create(&mut c, "t").await;
    // ProduceRequest { topic: "t", records: 8.4 million times Record {} }:
    // 16.8 MB on the wire, gigabytes once decoded.
    let mut body = vec![0x0a, 0x01, b't'];
    body.resize(body.len() + 2 * 8_000_000, 0);
    for pair in body[3..].chunks_exact_mut(2) {
        pair[0] = 0x1a;
    }
    let channel = Channel::from_shared(format!("http://{addr}")).unwrap().connect().await.unwrap();
    let mut grpc = tonic::client::Grpc::new(channel).max_encoding_message_size(64 << 20);
    grpc.ready().await.unwrap();
    let path = http::uri::PathAndQuery::from_static("/strata.v1.Broker/Produce");
    let status = grpc.unary(tonic::Request::new(Bytes::from(body)), path, RawCodec).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
    assert!(
        status.message().contains("8000000 records") && status.message().contains("produce_records_max"),
        "{status:?}"
    );
    let peak = status_mib(broker.id(), "VmHWM");
    eprintln!("peak RSS after the 8,000,000-record request: {peak:.0} MiB");
    assert!(peak < 300.0, "the broker decoded the request: peak RSS {peak:.0} MiB");
    // Everyone else is served, and nothing was appended.
    let r = c
        .produce(proto::ProduceRequest {
            topic: "t".into(),
            records: vec![proto::Record { value: Bytes::from_static(b"ok"), ..Default::default() }],
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(r.into_inner().results[0].base_offset, 0);
    kill9(&mut broker);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscribers_that_stop_reading_hold_their_stream_budget_and_no_more() {
    let streams = env_usize("STRATA_STALLED_SUBSCRIBES", 100);
    let dir = tempfile::tempdir().unwrap();
    let extra = std::env::var("STRATA_TEST_CONFIG").unwrap_or_default();
    let (mut broker, addr) = serve(dir.path(), &extra);
    let mut c = connect(&addr).await;
    create(&mut c, "backlog").await;
    // 32 MiB of 8 KiB records: far more than any stream may read ahead.
    for _ in 0..32 {
        let records = (0..128).map(|_| proto::Record { value: vec![7u8; 8192].into(), ..Default::default() }).collect();
        c.produce(proto::ProduceRequest { topic: "backlog".into(), records, ..Default::default() }).await.unwrap();
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let before = status_mib(broker.id(), "RssAnon");
    let mut held = Vec::new();
    for i in 0..streams {
        if i % 50 == 0 {
            held.push((connect(&addr).await, Vec::new()));
        }
        let (client, calls) = held.last_mut().unwrap();
        let request = proto::SubscribeRequest {
            topic_pattern: "backlog".into(),
            from: Some(proto::Position { position: Some(proto::position::Position::Boundary(0)) }),
            ..Default::default()
        };
        // Opened and never read: the client stops taking data.
        calls.push(client.subscribe(request).await.unwrap().into_inner());
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    let after = status_mib(broker.id(), "RssAnon");
    let per_stream = (after - before).max(0.0) / streams as f64;
    eprintln!(
        "{streams} stalled Subscribe streams: anonymous RSS {before:.0} -> {after:.0} MiB ({per_stream:.2} MiB a stream), \
         VmRSS {:.0} MiB",
        status_mib(broker.id(), "VmRSS")
    );
    // The stream budget (2 MiB by default) plus a chunk in hyper's buffer.
    assert!(per_stream < 5.0, "{per_stream:.2} MiB per stalled stream");
    drop(held);
    kill9(&mut broker);
}

/// A ProduceStream whose only message declares 16 MiB and sends 15.
async fn half_sent_produce_stream(addr: String) -> Option<String> {
    let tcp = tokio::net::TcpStream::connect(&addr).await.ok()?;
    let (mut client, connection) = h2::client::handshake(tcp).await.ok()?;
    tokio::spawn(connection);
    let request = http::Request::post(format!("http://{addr}/strata.v1.Broker/ProduceStream"))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(())
        .unwrap();
    let (response, mut send) = client.send_request(request, false).ok()?;
    let mut message = vec![0u8; 5 + (15 << 20)];
    message[1..5].copy_from_slice(&((16u32 << 20) - 1).to_be_bytes());
    send.send_data(Bytes::from(message), false).ok()?;
    let response = response.await.ok()?;
    let mut body = response.into_body();
    while let Some(data) = body.data().await {
        let _ = data;
    }
    let trailers = body.trailers().await.ok()??;
    trailers.get("grpc-status").map(|v| v.to_str().unwrap().to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn half_sent_produce_requests_share_one_budget_and_time_out() {
    let producers = env_usize("STRATA_STALLED_PRODUCERS", 40);
    let dir = tempfile::tempdir().unwrap();
    let config = "\"queued.max.request.bytes\" = 67108864\nrequest_read_timeout_ms = 3000\n";
    let (mut broker, addr) = serve(dir.path(), config);
    let base = status_mib(broker.id(), "VmRSS");
    let tasks: Vec<_> = (0..producers).map(|_| tokio::spawn(half_sent_produce_stream(addr.clone()))).collect();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let stalled = status_mib(broker.id(), "VmRSS");
    let mut statuses = Vec::new();
    for t in tasks {
        statuses.push(t.await.unwrap());
    }
    let peak = status_mib(broker.id(), "VmHWM");
    eprintln!(
        "{producers} stalled ProduceStreams (15 of 16 MiB each): RSS {base:.0} -> {stalled:.0} MiB while stalled, \
         peak {peak:.0} MiB"
    );
    // DEADLINE_EXCEEDED for every one of them.
    assert!(statuses.iter().all(|s| s.as_deref() == Some("4")), "{statuses:?}");
    // 64 MiB of budget plus each stream's 1 MiB window, not 40 x 15 MiB.
    assert!(peak < base + 64.0 + producers as f64 * 1.5 + 64.0, "peak RSS {peak:.0} MiB");
    let mut c = connect(&addr).await;
    create(&mut c, "after").await;
    kill9(&mut broker);
}
