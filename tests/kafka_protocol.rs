//! The Kafka listener at the byte level: version negotiation, frames that
//! cannot be requests, bad batches, and a group held by one protocol at a
//! time. Requests are encoded with the same codec crate the listener uses;
//! the hostile ones by hand.

mod common;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use kafka_protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
use kafka_protocol::messages::*;
use kafka_protocol::protocol::{Decodable, Encodable, StrBytes};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use strata::proto;
use strata::storage::batch::{self, Record};

/// Sends one request and reads its response body (after the header).
async fn call<Req: Encodable, Resp: Decodable>(
    stream: &mut TcpStream,
    key: ApiKey,
    version: i16,
    correlation_id: i32,
    request: &Req,
) -> Resp {
    let header = RequestHeader::default()
        .with_request_api_key(key as i16)
        .with_request_api_version(version)
        .with_correlation_id(correlation_id)
        .with_client_id(Some(StrBytes::from_static_str("strata-test")));
    let mut body = BytesMut::new();
    header.encode(&mut body, key.request_header_version(version)).unwrap();
    request.encode(&mut body, version).unwrap();
    let mut frame = BytesMut::new();
    frame.put_i32(body.len() as i32);
    frame.extend_from_slice(&body);
    stream.write_all(&frame).await.unwrap();
    let mut response = read_frame(stream).await.expect("a response");
    let header = ResponseHeader::decode(&mut response, key.response_header_version(version)).unwrap();
    assert_eq!(header.correlation_id, correlation_id);
    Resp::decode(&mut response, version).unwrap()
}

/// One response frame, or None once the broker closed the connection.
async fn read_frame(stream: &mut TcpStream) -> Option<Bytes> {
    let mut len = [0u8; 4];
    stream.read_exact(&mut len).await.ok()?;
    let mut body = vec![0u8; i32::from_be_bytes(len) as usize];
    stream.read_exact(&mut body).await.ok()?;
    Some(body.into())
}

/// Whether the broker closes the connection (within 5 s) after `bytes`.
async fn closes_after(kafka: std::net::SocketAddr, bytes: &[u8]) -> bool {
    let mut s = TcpStream::connect(kafka).await.unwrap();
    s.write_all(bytes).await.unwrap();
    let mut buf = [0u8; 64];
    matches!(tokio::time::timeout(std::time::Duration::from_secs(5), s.read(&mut buf)).await, Ok(Ok(0)) | Ok(Err(_)))
}

fn topic(name: &str) -> TopicName {
    TopicName(StrBytes::from_string(name.to_string()))
}

fn produce_request(name: &str, partition: i32, records: Bytes) -> ProduceRequest {
    ProduceRequest::default().with_acks(-1).with_timeout_ms(5000).with_topic_data(vec![TopicProduceData::default()
        .with_name(topic(name))
        .with_partition_data(vec![PartitionProduceData::default().with_index(partition).with_records(Some(records))])])
}

fn one_batch(value: &[u8]) -> Bytes {
    let record = Record {
        key: Bytes::from_static(b"k"),
        value: Bytes::copy_from_slice(value),
        headers: vec![],
        timestamp_ms: 1_790_000_000_000,
    };
    batch::encode(&[record], None).into()
}

#[tokio::test(flavor = "multi_thread")]
async fn api_versions_answers_an_unknown_version_with_the_ranges() {
    let dir = tempfile::tempdir().unwrap();
    let server = common::start(dir.path()).await;
    let mut s = TcpStream::connect(server.kafka_addr().unwrap()).await.unwrap();
    let r: ApiVersionsResponse = call(&mut s, ApiKey::ApiVersions, 3, 1, &ApiVersionsRequest::default()).await;
    assert_eq!(r.error_code, 0);
    let produce = r.api_keys.iter().find(|k| k.api_key == ApiKey::Produce as i16).expect("Produce listed");
    assert!(produce.min_version <= 3 && produce.max_version >= 9, "{produce:?}");

    // A version from the future: v0 with UNSUPPORTED_VERSION and the ranges (KIP-511).
    let mut frame = BytesMut::new();
    frame.put_i32(12);
    frame.put_i16(ApiKey::ApiVersions as i16);
    frame.put_i16(99);
    frame.put_i32(7);
    frame.put_i16(-1); // null client id
    frame.put_i16(0);
    s.write_all(&frame).await.unwrap();
    let mut body = read_frame(&mut s).await.unwrap();
    assert_eq!(body.get_i32(), 7);
    let r = ApiVersionsResponse::decode(&mut body, 0).unwrap();
    assert_eq!(r.error_code, 35, "UNSUPPORTED_VERSION");
    assert!(r.api_keys.iter().any(|k| k.api_key == ApiKey::Fetch as i16));
    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn frames_that_cannot_be_requests_close_only_their_connection() {
    let dir = tempfile::tempdir().unwrap();
    let server = common::start(dir.path()).await;
    let kafka = server.kafka_addr().unwrap();
    let mut bystander = TcpStream::connect(kafka).await.unwrap();

    assert!(closes_after(kafka, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").await, "HTTP on the Kafka port");
    assert!(closes_after(kafka, &[0, 0, 0, 4, 0, 0, 0, 0]).await, "a frame too short for a header");
    assert!(closes_after(kafka, &[0xff, 0xff, 0xff, 0xf0]).await, "a negative length");
    let mut unknown = BytesMut::new();
    unknown.put_i32(10);
    unknown.put_i16(999);
    unknown.put_i16(0);
    unknown.put_i32(1);
    unknown.put_i16(-1);
    assert!(closes_after(kafka, &unknown).await, "an unknown API key");
    // Metadata v1 claiming 2^31-1 topics in a 14-byte frame: refused
    // without allocating for them.
    let mut lying = BytesMut::new();
    lying.put_i32(14);
    lying.put_i16(ApiKey::Metadata as i16);
    lying.put_i16(1);
    lying.put_i32(2);
    lying.put_i16(-1);
    lying.put_i32(i32::MAX);
    assert!(closes_after(kafka, &lying).await, "a lying array length");
    // A request cut short: the client goes away mid-frame.
    {
        let mut s = TcpStream::connect(kafka).await.unwrap();
        s.write_all(&[0, 0, 0, 100, 0, 3, 0, 1]).await.unwrap();
    }

    // The bystander and new connections are served.
    let r: MetadataResponse = call(&mut bystander, ApiKey::Metadata, 12, 1, &MetadataRequest::default()).await;
    assert_eq!(r.brokers.len(), 1);
    assert_eq!(r.brokers[0].port, kafka.port() as i32, "the listener advertises its own address");
    let mut fresh = TcpStream::connect(kafka).await.unwrap();
    let _: ApiVersionsResponse = call(&mut fresh, ApiKey::ApiVersions, 3, 2, &ApiVersionsRequest::default()).await;
    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_batches_get_kafka_error_codes_and_nothing_is_appended() {
    let dir = tempfile::tempdir().unwrap();
    let server = common::start(dir.path()).await;
    let mut client = common::client(&server).await;
    common::create(&mut client, "t", 1).await;
    let mut s = TcpStream::connect(server.kafka_addr().unwrap()).await.unwrap();
    let code_of = |r: &ProduceResponse| r.responses[0].partition_responses[0].error_code;

    let mut corrupt = one_batch(b"hello").to_vec();
    let last = corrupt.len() - 1;
    corrupt[last] ^= 0x40;
    let r: ProduceResponse = call(&mut s, ApiKey::Produce, 9, 1, &produce_request("t", 0, corrupt.into())).await;
    assert_eq!(code_of(&r), 2, "CORRUPT_MESSAGE: {r:?}");
    let mut lying = one_batch(b"hello").to_vec();
    lying[8..12].copy_from_slice(&10_000i32.to_be_bytes());
    let r: ProduceResponse = call(&mut s, ApiKey::Produce, 9, 2, &produce_request("t", 0, lying.into())).await;
    assert_eq!(code_of(&r), 2, "CORRUPT_MESSAGE for a lying length: {r:?}");
    let big = vec![7u8; 2 << 20];
    let r: ProduceResponse = call(&mut s, ApiKey::Produce, 9, 3, &produce_request("t", 0, one_batch(&big))).await;
    assert_eq!(code_of(&r), 10, "MESSAGE_TOO_LARGE: {r:?}");
    let r: ProduceResponse = call(&mut s, ApiKey::Produce, 9, 4, &produce_request("nosuch", 0, one_batch(b"x"))).await;
    assert_eq!(code_of(&r), 3, "UNKNOWN_TOPIC_OR_PARTITION: {r:?}");
    let r: ProduceResponse = call(&mut s, ApiKey::Produce, 9, 5, &produce_request("t", 7, one_batch(b"x"))).await;
    assert_eq!(code_of(&r), 3, "UNKNOWN_TOPIC_OR_PARTITION for a partition: {r:?}");
    let info = client.describe_topic(proto::DescribeTopicRequest { name: "t".into() }).await.unwrap().into_inner();
    assert_eq!(info.partition_descriptions[0].high_watermark, 0, "nothing appended");

    let r: ProduceResponse = call(&mut s, ApiKey::Produce, 9, 6, &produce_request("t", 0, one_batch(b"ok"))).await;
    assert_eq!((code_of(&r), r.responses[0].partition_responses[0].base_offset), (0, 0));
    // Fetch returns the stored batch byte for byte.
    let fetch = FetchRequest::default().with_max_wait_ms(0).with_max_bytes(1 << 20).with_topics(vec![
        fetch_request::FetchTopic::default().with_topic(topic("t")).with_partitions(vec![
            fetch_request::FetchPartition::default()
                .with_partition(0)
                .with_fetch_offset(0)
                .with_partition_max_bytes(1 << 20),
        ]),
    ]);
    let r: FetchResponse = call(&mut s, ApiKey::Fetch, 12, 7, &fetch).await;
    let p = &r.responses[0].partitions[0];
    assert_eq!((p.error_code, p.high_watermark), (0, 1));
    let stored = p.records.clone().unwrap();
    let sent = one_batch(b"ok");
    assert_eq!(stored.len(), sent.len());
    assert_eq!(stored[17..], sent[17..], "everything from the CRC on is the client's");
    server.shutdown().await.unwrap();
}

fn kafka_join(member: &str) -> JoinGroupRequest {
    JoinGroupRequest::default()
        .with_group_id(GroupId(StrBytes::from_static_str("shared")))
        .with_session_timeout_ms(10_000)
        .with_rebalance_timeout_ms(10_000)
        .with_member_id(StrBytes::from_string(member.to_string()))
        .with_protocol_type(StrBytes::from_static_str("consumer"))
        .with_protocols(vec![join_group_request::JoinGroupRequestProtocol::default()
            .with_name(StrBytes::from_static_str("range"))
            .with_metadata(Bytes::from_static(b"\0\0\0\0\0\x01\0\x01t\0\0\0\0"))])
}

#[tokio::test(flavor = "multi_thread")]
async fn a_group_is_held_by_one_protocol_at_a_time() {
    let dir = tempfile::tempdir().unwrap();
    let server = common::start(dir.path()).await;
    let mut client = common::client(&server).await;
    common::create(&mut client, "t", 2).await;
    let mut s = TcpStream::connect(server.kafka_addr().unwrap()).await.unwrap();

    // A gRPC member holds "shared": a Kafka member is refused.
    let join = proto::JoinGroupRequest { group: "shared".into(), topic_pattern: "t".into(), ..Default::default() };
    let member = client.join_group(join).await.unwrap().into_inner().member_id;
    let r: JoinGroupResponse = call(&mut s, ApiKey::JoinGroup, 9, 1, &kafka_join("")).await;
    assert_eq!(r.error_code, 23, "INCONSISTENT_GROUP_PROTOCOL");
    client.leave_group(proto::LeaveGroupRequest { group: "shared".into(), member_id: member }).await.unwrap();

    // Now a Kafka member holds it (KIP-394: first join asks for an id).
    let r: JoinGroupResponse = call(&mut s, ApiKey::JoinGroup, 9, 2, &kafka_join("")).await;
    assert_eq!(r.error_code, 79, "MEMBER_ID_REQUIRED");
    let id = r.member_id.to_string();
    let r: JoinGroupResponse = call(&mut s, ApiKey::JoinGroup, 9, 3, &kafka_join(&id)).await;
    assert_eq!((r.error_code, r.generation_id, r.leader.as_str()), (0, 1, id.as_str()));
    let join = proto::JoinGroupRequest { group: "shared".into(), topic_pattern: "t".into(), ..Default::default() };
    let refused = client.join_group(join).await.unwrap_err();
    assert_eq!(refused.code(), tonic::Code::FailedPrecondition);
    assert!(refused.message().contains("Kafka"), "{}", refused.message());
    let sync = SyncGroupRequest::default()
        .with_group_id(GroupId(StrBytes::from_static_str("shared")))
        .with_generation_id(1)
        .with_member_id(StrBytes::from_string(id.clone()));
    let r: SyncGroupResponse = call(&mut s, ApiKey::SyncGroup, 5, 9, &sync).await;
    assert_eq!(r.error_code, 0);
    // The Kafka member's commit is the group's, over gRPC too.
    let commit = OffsetCommitRequest::default()
        .with_group_id(GroupId(StrBytes::from_static_str("shared")))
        .with_generation_id_or_member_epoch(1)
        .with_member_id(StrBytes::from_string(id.clone()))
        .with_topics(vec![offset_commit_request::OffsetCommitRequestTopic::default()
            .with_name(topic("t"))
            .with_partitions(vec![offset_commit_request::OffsetCommitRequestPartition::default()
                .with_partition_index(1)
                .with_committed_offset(0)])]);
    let r: OffsetCommitResponse = call(&mut s, ApiKey::OffsetCommit, 8, 4, &commit).await;
    assert_eq!(r.topics[0].partitions[0].error_code, 0);
    let stale = commit.clone().with_generation_id_or_member_epoch(0);
    let r: OffsetCommitResponse = call(&mut s, ApiKey::OffsetCommit, 8, 5, &stale).await;
    assert_eq!(r.topics[0].partitions[0].error_code, 22, "ILLEGAL_GENERATION");
    let described =
        client.describe_group(proto::DescribeGroupRequest { group: "shared".into() }).await.unwrap().into_inner();
    assert_eq!(described.members.len(), 1);
    assert!(described.partitions.iter().any(|p| p.partition == 1 && p.committed_offset == Some(0)), "{described:?}");
    server.shutdown().await.unwrap();
}
