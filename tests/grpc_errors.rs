//! Every error code in the spec's list, provoked through real gRPC, with a
//! message that names what went wrong.

mod common;

use std::sync::Arc;

use common::*;
use strata::proto;
use strata::storage::fs::{Fault, FaultyFs};
use strata::storage::SystemClock;
use tonic::Code;

fn assert_code<T: std::fmt::Debug>(r: Result<T, tonic::Status>, code: Code, mentions: &[&str]) {
    let status = r.expect_err("the call must fail");
    assert_eq!(status.code(), code, "{status:?}");
    for m in mentions {
        assert!(status.message().contains(m), "{:?} should mention {m:?}", status.message());
    }
}

fn produce_req(topic: &str, partition: Option<u32>, records: Vec<proto::Record>) -> proto::ProduceRequest {
    proto::ProduceRequest { topic: topic.into(), partition, records, ..Default::default() }
}

#[tokio::test]
async fn each_spec_error_code_is_returned_with_a_useful_message() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = config(dir.path());
    config.request_bytes_max = 256 << 10;
    let server = strata::server::start(config).await.unwrap();
    let mut c = client(&server).await;
    c.create_topic(proto::CreateTopicRequest {
        name: "small".into(),
        partitions: 2,
        config: [("max.record.bytes".to_string(), "1000".to_string())].into(),
    })
    .await
    .unwrap();

    // NOT_FOUND: unknown topic, unknown partition.
    assert_code(c.produce(produce_req("nope", None, vec![record("", "x")])).await, Code::NotFound, &["nope"]);
    assert_code(fetch(&mut c, "nope", 0, 0).await, Code::NotFound, &["nope"]);
    assert_code(fetch(&mut c, "small", 7, 0).await, Code::NotFound, &["small", "7"]);
    assert_code(c.produce(produce_req("small", Some(9), vec![record("", "x")])).await, Code::NotFound, &["9"]);
    assert_code(c.delete_topic(proto::DeleteTopicRequest { name: "nope".into() }).await, Code::NotFound, &["nope"]);

    // ALREADY_EXISTS.
    let dup = proto::CreateTopicRequest { name: "small".into(), partitions: 1, config: Default::default() };
    assert_code(c.create_topic(dup).await, Code::AlreadyExists, &["small"]);

    // INVALID_ARGUMENT: bad names, bad config, oversize record, empty produce.
    for bad in ["", "..", "has space", "__reserved", &"x".repeat(250)] {
        let req = proto::CreateTopicRequest { name: bad.into(), partitions: 1, config: Default::default() };
        assert_code(c.create_topic(req).await, Code::InvalidArgument, &["name"]);
    }
    let bad_config = proto::CreateTopicRequest {
        name: "cfg".into(),
        partitions: 1,
        config: [("segment.bytes".to_string(), "12".to_string())].into(),
    };
    assert_code(c.create_topic(bad_config).await, Code::InvalidArgument, &["segment.bytes"]);
    let unknown_key = proto::AlterTopicConfigRequest {
        name: "small".into(),
        config: [("colour".to_string(), "red".to_string())].into(),
    };
    assert_code(c.alter_topic_config(unknown_key).await, Code::InvalidArgument, &["colour"]);
    let big = proto::Record { value: vec![0u8; 2000].into(), ..Default::default() };
    assert_code(c.produce(produce_req("small", None, vec![big])).await, Code::InvalidArgument, &["2000", "1000"]);
    assert_code(c.produce(produce_req("small", None, vec![])).await, Code::InvalidArgument, &["no records"]);

    // OUT_OF_RANGE: above the high watermark; the message gives both bounds.
    c.produce(produce_req("small", Some(0), vec![record("", "a"), record("", "b")])).await.unwrap();
    assert_code(
        fetch(&mut c, "small", 0, 5).await,
        Code::OutOfRange,
        &["offset 5", "log start offset 0", "high watermark 2"],
    );

    // RESOURCE_EXHAUSTED: a request over the broker's max request size.
    let records = (0..400).map(|_| proto::Record { value: vec![1u8; 900].into(), ..Default::default() }).collect();
    assert_code(c.produce(produce_req("small", None, records)).await, Code::ResourceExhausted, &["too large"]);

    // FAILED_PRECONDITION: an idempotent sequence too old to judge.
    let pid = c.init_producer(proto::InitProducerRequest {}).await.unwrap().into_inner().producer_id;
    for seq in 0..7 {
        let mut req = produce_req("small", Some(1), vec![record("", "i")]);
        req.producer_id = Some(pid);
        req.sequence = Some(10 + seq);
        c.produce(req).await.unwrap();
    }
    let mut stale = produce_req("small", Some(1), vec![record("", "i")]);
    stale.producer_id = Some(pid);
    stale.sequence = Some(1);
    assert_code(c.produce(stale).await, Code::FailedPrecondition, &["sequence 1"]);

    // UNAVAILABLE: shutting down.
    server.broker().begin_shutdown();
    assert_code(
        c.produce(produce_req("small", None, vec![record("", "late")])).await,
        Code::Unavailable,
        &["shutting down"],
    );
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn corrupt_closed_segment_is_data_loss_and_the_rest_is_served() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path()).await;
    let mut c = client(&server).await;
    c.create_topic(proto::CreateTopicRequest {
        name: "ledger".into(),
        partitions: 1,
        config: [("segment.bytes".to_string(), "2048".to_string())].into(),
    })
    .await
    .unwrap();
    for i in 0..60 {
        produce(&mut c, "ledger", None, vec![record("", &format!("entry-{i:04}-{}", "x".repeat(60)))]).await;
    }
    // Read once while good: a broker checks a batch's CRC once per run.
    assert_eq!(fetch_all(&mut c, "ledger", 0, 0).await.len(), 60);
    server.shutdown().await.unwrap();
    // The disk flips a bit while the broker is down.
    let first_segment = dir.path().join("ledger/0/00000000000000000000.log");
    let mut bytes = std::fs::read(&first_segment).unwrap();
    // A bit inside the records of a batch in the middle (the CRC covers it).
    let mut pos = 0;
    for _ in 0..5 {
        pos += strata::storage::batch::BatchHeader::parse(&bytes[pos..], usize::MAX).unwrap().total_len;
    }
    bytes[pos + strata::storage::batch::HEADER_LEN + 10] ^= 0x5a;
    std::fs::write(&first_segment, bytes).unwrap();
    let server = start(dir.path()).await;
    let mut c = client(&server).await;

    let mut data_loss = 0;
    for offset in 0..60 {
        match fetch(&mut c, "ledger", 0, offset).await {
            Ok(r) => assert!(r
                .records
                .iter()
                .all(|rec| rec.value.starts_with(format!("entry-{:04}", rec.offset).as_bytes()))),
            Err(s) => {
                assert_eq!(s.code(), Code::DataLoss, "{s:?}");
                assert!(s.message().contains("offsets"), "names the offset range: {}", s.message());
                data_loss += 1;
            }
        }
    }
    assert!(data_loss >= 1, "the corrupt batch is reported");
    assert_eq!(data_loss, 1, "only reads starting at the corrupt batch fail");
    // A subscription gets what precedes the corrupt batch, then DATA_LOSS
    // as the stream's status (trailers after data).
    for raw_batches in [false, true] {
        let request = proto::SubscribeRequest {
            topic_pattern: "ledger".into(),
            from: at_boundary(proto::Boundary::Earliest),
            raw_batches,
            ..Default::default()
        };
        let mut stream = c.subscribe(request).await.unwrap().into_inner();
        let mut delivered = 0;
        let status = loop {
            match stream.message().await {
                Ok(Some(m)) => delivered += m.records.len() + m.record_batches.len(),
                Ok(None) => panic!("the stream ended without an error"),
                Err(status) => break status,
            }
        };
        assert_eq!(status.code(), Code::DataLoss, "{status:?}");
        assert!(delivered >= 1, "the records before the corrupt batch arrive first");
    }
    // The same through the zero-copy client.
    let channel = tonic::transport::Channel::from_shared(server.url()).unwrap().connect().await.unwrap();
    let request = proto::SubscribeRequest {
        topic_pattern: "ledger".into(),
        from: at_boundary(proto::Boundary::Earliest),
        raw_batches: true,
        ..Default::default()
    };
    let mut stream = strata::client::subscribe(&channel, request).await.unwrap();
    let mut delivered = 0;
    let status = loop {
        match stream.message().await {
            Ok(Some(m)) => delivered += m.record_batches.len(),
            Ok(None) => panic!("the stream ended without an error"),
            Err(status) => break status,
        }
    };
    assert_eq!(status.code(), Code::DataLoss, "{status:?}");
    assert!(delivered >= 1, "the batches before the corrupt one arrive first");
    // Later segments and new appends still work.
    produce(&mut c, "ledger", None, vec![record("", "after")]).await;
    assert_eq!(fetch(&mut c, "ledger", 0, 60).await.unwrap().records[0].value.as_ref(), b"after");
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn disk_faults_are_errors_never_acks_and_appends_resume_after() {
    let cases = [
        (Fault::DiskFull, Code::ResourceExhausted, "No space"),
        (Fault::SyncFails, Code::Unavailable, "fsync"),
        (Fault::WriteFails, Code::Unavailable, "I/O error"),
        (Fault::PartialWrite, Code::Unavailable, "I/O error"),
    ];
    for (fault, code, mention) in cases {
        let dir = tempfile::tempdir().unwrap();
        let fs = FaultyFs::default();
        let switch = fs.switch.clone();
        let server = strata::server::start_with(config(dir.path()), Arc::new(fs), Arc::new(SystemClock)).await.unwrap();
        let mut c = client(&server).await;
        create(&mut c, "disk", 1).await;
        produce(&mut c, "disk", None, vec![record("", "one")]).await;
        switch.set(Some(fault));
        let lost = vec![record("", "lost"), record("", "lost too")];
        assert_code(c.produce(produce_req("disk", None, lost)).await, code, &[mention]);
        assert!(switch.fired(), "{fault:?} was injected");
        let values: Vec<_> = fetch_all(&mut c, "disk", 0, 0).await.into_iter().map(|r| r.value).collect();
        assert_eq!(
            values,
            [bytes::Bytes::from_static(b"one")],
            "{fault:?}: reads work, nothing unacknowledged visible"
        );
        switch.set(None);
        let r = produce(&mut c, "disk", None, vec![record("", "two")]).await;
        assert_eq!(r[0].base_offset, 1, "{fault:?}: no hole where the failed append was");
        server.shutdown().await.unwrap();
        // And the files hold no garbage: a restart reads exactly the two.
        let server = start(dir.path()).await;
        let mut c = client(&server).await;
        let values: Vec<_> = fetch_all(&mut c, "disk", 0, 0).await.into_iter().map(|r| r.value).collect();
        assert_eq!(values, [bytes::Bytes::from_static(b"one"), bytes::Bytes::from_static(b"two")], "{fault:?}");
        server.shutdown().await.unwrap();
    }
}

#[tokio::test]
async fn a_poisoned_partition_serves_again_without_a_restart_once_the_fault_clears() {
    let dir = tempfile::tempdir().unwrap();
    let fs = FaultyFs::default();
    let switch = fs.switch.clone();
    let mut config = config(dir.path());
    config.poisoned_log_retry = std::time::Duration::from_millis(50);
    let server = strata::server::start_with(config, Arc::new(fs), Arc::new(SystemClock)).await.unwrap();
    let mut c = client(&server).await;
    c.create_topic(proto::CreateTopicRequest {
        name: "bg".into(),
        partitions: 1,
        config: [("flush.policy".to_string(), "interval:20".to_string())].into(),
    })
    .await
    .unwrap();
    produce(&mut c, "bg", None, vec![record("", "seen")]).await;
    // The background fsync of data readers already saw fails: the log is
    // poisoned (it cannot cut what was seen) and refuses appends.
    switch.set(Some(Fault::SyncFails));
    let mut refused = None;
    for _ in 0..200 {
        match c.produce(produce_req("bg", None, vec![record("", "maybe")])).await {
            Err(s) if s.message().contains("refuses writes") => {
                refused = Some(s);
                break;
            }
            _ => tokio::time::sleep(std::time::Duration::from_millis(20)).await,
        }
    }
    let refused = refused.expect("the log was poisoned");
    assert_eq!(refused.code(), Code::Unavailable, "{refused:?}");
    switch.set(None);
    // Reopened in place by the broker within a few retries.
    let mut resumed = None;
    for _ in 0..200 {
        if let Ok(r) = c.produce(produce_req("bg", None, vec![record("", "after")])).await {
            resumed = Some(r.into_inner().results[0].base_offset);
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let offset = resumed.expect("appends resume once the fault clears, without a restart");
    let values: Vec<_> = fetch_all(&mut c, "bg", 0, 0).await.into_iter().map(|r| r.value).collect();
    assert_eq!(values.first().map(|v| v.as_ref()), Some(b"seen".as_ref()), "what readers saw is kept");
    assert_eq!(values.last().map(|v| v.as_ref()), Some(b"after".as_ref()));
    assert_eq!(values.len() as u64, offset + 1, "dense");
    server.shutdown().await.unwrap();
}

/// Sends `body` as the one message of a Subscribe call, bytes as they are.
async fn subscribe_with_bytes(server: &strata::server::RunningServer, body: Vec<u8>) -> tonic::Status {
    let channel = tonic::transport::Channel::from_shared(server.url()).unwrap().connect().await.unwrap();
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready().await.unwrap();
    let path = http::uri::PathAndQuery::from_static("/strata.v1.Broker/Subscribe");
    let result = grpc.server_streaming(tonic::Request::new(bytes::Bytes::from(body)), path, BytesCodec).await;
    match result {
        Err(status) => status,
        Ok(response) => response.into_inner().message().await.expect_err("the call must fail"),
    }
}

/// Sends `body` as the message of a Fetch call, bytes as they are.
async fn fetch_with_bytes(server: &strata::server::RunningServer, body: Vec<u8>) -> tonic::Status {
    let channel = tonic::transport::Channel::from_shared(server.url()).unwrap().connect().await.unwrap();
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready().await.unwrap();
    let path = http::uri::PathAndQuery::from_static("/strata.v1.Broker/Fetch");
    grpc.unary(tonic::Request::new(bytes::Bytes::from(body)), path, BytesCodec).await.expect_err("the call must fail")
}

/// A codec that sends and receives message bytes unencoded.
#[derive(Debug, Clone, Default)]
struct BytesCodec;

impl tonic::codec::Codec for BytesCodec {
    type Encode = bytes::Bytes;
    type Decode = bytes::Bytes;
    type Encoder = BytesCodec;
    type Decoder = BytesCodec;
    fn encoder(&mut self) -> Self::Encoder {
        BytesCodec
    }
    fn decoder(&mut self) -> Self::Decoder {
        BytesCodec
    }
}

impl tonic::codec::Encoder for BytesCodec {
    type Item = bytes::Bytes;
    type Error = tonic::Status;
    fn encode(&mut self, item: bytes::Bytes, buf: &mut tonic::codec::EncodeBuf<'_>) -> Result<(), tonic::Status> {
        bytes::BufMut::put(buf, item);
        Ok(())
    }
}

impl tonic::codec::Decoder for BytesCodec {
    type Item = bytes::Bytes;
    type Error = tonic::Status;
    fn decode(&mut self, buf: &mut tonic::codec::DecodeBuf<'_>) -> Result<Option<bytes::Bytes>, tonic::Status> {
        let n = bytes::Buf::remaining(buf);
        Ok(Some(bytes::Buf::copy_to_bytes(buf, n)))
    }
}

#[tokio::test]
async fn bad_subscribe_and_fetch_requests_get_a_status_and_the_broker_serves_on() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = config(dir.path());
    config.request_bytes_max = 4096;
    let server = strata::server::start(config).await.unwrap();
    let mut c = client(&server).await;
    create(&mut c, "events", 1).await;

    // Handler errors come before any message: a trailers-only response.
    let committed = proto::SubscribeRequest {
        topic_pattern: "events".into(),
        fallback: Some(proto::Boundary::Committed as i32),
        ..Default::default()
    };
    assert_code(c.subscribe(committed.clone()).await, Code::InvalidArgument, &["fallback"]);
    let channel = tonic::transport::Channel::from_shared(server.url()).unwrap().connect().await.unwrap();
    assert_code(strata::client::subscribe(&channel, committed).await, Code::InvalidArgument, &["fallback"]);
    let group_without_pattern =
        proto::SubscribeRequest { group: Some("g".into()), from: at_offset(0), ..Default::default() };
    assert!(c.subscribe(group_without_pattern).await.is_err(), "a group needs a topic pattern");

    // Bytes that are no SubscribeRequest, and one over the size limit.
    let status = fetch_with_bytes(&server, vec![0xff; 12]).await;
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert!(status.message().contains("malformed FetchRequest"), "{status:?}");
    let status = subscribe_with_bytes(&server, vec![0xff; 12]).await;
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert!(status.message().contains("malformed SubscribeRequest"), "{status:?}");
    let mut huge = Vec::new();
    prost::encoding::encode_key(1, prost::encoding::WireType::LengthDelimited, &mut huge);
    prost::encoding::encode_varint(10_000, &mut huge);
    huge.extend(std::iter::repeat_n(b'a', 10_000));
    let status = subscribe_with_bytes(&server, huge).await;
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    assert!(status.message().contains("too large"), "{status:?}");

    // The broker still serves subscriptions after all of that.
    produce(&mut c, "events", Some(0), vec![record("", "still here")]).await;
    let request = proto::SubscribeRequest {
        topic_pattern: "events".into(),
        from: at_boundary(proto::Boundary::Earliest),
        ..Default::default()
    };
    let mut stream = c.subscribe(request).await.unwrap().into_inner();
    let first = loop {
        let m = stream.message().await.unwrap().expect("a message");
        if let Some(r) = m.records.into_iter().next() {
            break r;
        }
    };
    assert_eq!(first.value.as_ref(), b"still here");
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn commit_metadata_over_the_limit_is_refused_and_later_commits_still_work() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path()).await;
    let mut c = client(&server).await;
    create(&mut c, "t", 1).await;
    produce(&mut c, "t", Some(0), vec![record("", "x")]).await;
    let commit = |metadata: String| proto::CommitOffsetsRequest {
        group: "g".into(),
        offsets: vec![proto::OffsetCommit { topic: "t".into(), partition: 0, offset: 1, metadata }],
        ..Default::default()
    };
    // Kafka's offset.metadata.max.bytes: 4096 by default.
    c.commit_offsets(commit("m".repeat(4096))).await.expect("metadata at the limit is fine");
    for _ in 0..28 {
        let r = c.commit_offsets(commit("m".repeat(1 << 20))).await;
        assert_code(r, Code::InvalidArgument, &["offset.metadata.max.bytes", "4096", "t/0"]);
    }
    c.commit_offsets(commit("ok".into())).await.expect("commits keep working");
    let other = proto::CommitOffsetsRequest { group: "other".into(), ..commit(String::new()) };
    c.commit_offsets(other).await.expect("other groups too");
    server.shutdown().await.unwrap();
}
