//! The listener-neutral broker API, called as a listener would: pipelined
//! produce (in order for Kafka, as completed for gRPC), the end of a
//! pipeline on a stream error, internal produce, and subscribe's rules.

use std::collections::BTreeMap;
use std::sync::Arc;

use bytes::Bytes;
use futures::StreamExt;
use strata::broker::budget::BudgetPermit;
use strata::broker::subscription::Delivery;
use strata::broker::{
    Broker, BrokerError, Caller, CreateTopic, PipelineItem, Position, ProduceRequest, SubscribeRequest, Via,
};
use strata::config::BrokerConfig;
use strata::storage::batch::Record;
use strata::storage::fs::StdFs;
use strata::storage::SystemClock;

fn open(dir: &std::path::Path) -> Arc<Broker> {
    let config = BrokerConfig { data_dir: dir.to_path_buf(), ..BrokerConfig::default() };
    Broker::open(config, Arc::new(StdFs), Arc::new(SystemClock)).unwrap()
}

fn caller() -> Caller {
    Caller::anonymous(Via::Grpc, None)
}

async fn create(broker: &Broker, name: &str, flush: &str) {
    let config = BTreeMap::from([("flush.policy".to_string(), flush.to_string())]);
    broker.create_topic(&caller(), CreateTopic { name: name.into(), partitions: Some(1), config }).await.unwrap();
}

fn request(topic: &str, value: &str) -> ProduceRequest {
    let record = Record { value: Bytes::from(value.to_string()), ..Record::default() };
    ProduceRequest { topic: topic.into(), partition: Some(0), records: vec![record], producer: None, batch: None }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ordered_pipeline_answers_in_request_order_whatever_completes_first() {
    let dir = tempfile::tempdir().unwrap();
    let broker = open(dir.path());
    create(&broker, "durable", "always").await;
    create(&broker, "fast", "never").await;
    // Every other request needs an fsync; the others are done at once.
    let items: Vec<_> = (0..40u64)
        .map(|i| {
            let topic = if i % 2 == 0 { "durable" } else { "fast" };
            Ok(PipelineItem { tag: i, request: Ok(request(topic, &format!("v{i}"))), permit: BudgetPermit::none() })
        })
        .collect();
    let mut done = broker.produce_pipeline(caller(), futures::stream::iter(items), true);
    let mut tags = Vec::new();
    while let Some(c) = done.recv().await {
        let c = c.unwrap();
        c.result.unwrap();
        tags.push(c.tag);
    }
    assert_eq!(tags, (0..40).collect::<Vec<_>>(), "in request order");
    broker.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_error_ends_the_pipeline_after_every_pending_answer() {
    let dir = tempfile::tempdir().unwrap();
    let broker = open(dir.path());
    create(&broker, "t", "always").await;
    let mut items: Vec<_> = (0..10u64)
        .map(|i| Ok(PipelineItem { tag: i, request: Ok(request("t", "x")), permit: BudgetPermit::none() }))
        .collect();
    // A refused request is answered in its turn; the stream goes on.
    items.insert(
        3,
        Ok(PipelineItem { tag: 99, request: Err(BrokerError::Busy("retry".into())), permit: BudgetPermit::none() }),
    );
    items.push(Err(BrokerError::ConnectionFailed("reset".into())));
    for ordered in [false, true] {
        let copies: Vec<_> = items.iter().map(clone_item).collect();
        let mut done = broker.produce_pipeline(caller(), futures::stream::iter(copies), ordered);
        let mut answered = Vec::new();
        let mut ended = None;
        while let Some(c) = done.recv().await {
            match c {
                Ok(c) => answered.push((c.tag, c.result.is_ok())),
                Err(e) => ended = Some(e),
            }
        }
        answered.sort();
        let mut expected: Vec<_> = (0..10).map(|i| (i, true)).collect();
        expected.push((99, false));
        assert_eq!(answered, expected, "every request answered (ordered {ordered})");
        assert!(matches!(ended, Some(BrokerError::ConnectionFailed(_))), "then the stream's error");
    }
    broker.shutdown().await;
}

fn clone_item(item: &Result<PipelineItem<u64>, BrokerError>) -> Result<PipelineItem<u64>, BrokerError> {
    match item {
        Ok(PipelineItem { tag, request: Ok(r), .. }) => {
            Ok(PipelineItem { tag: *tag, request: Ok(r.clone()), permit: BudgetPermit::none() })
        }
        Ok(PipelineItem { tag, .. }) => Ok(PipelineItem {
            tag: *tag,
            request: Err(BrokerError::Busy("retry".into())),
            permit: BudgetPermit::none(),
        }),
        Err(_) => Err(BrokerError::ConnectionFailed("reset".into())),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn internal_produce_takes_the_same_checks_and_subscribe_refuses_a_bad_fallback() {
    let dir = tempfile::tempdir().unwrap();
    let broker = open(dir.path());
    let unknown = broker.produce_internal("dead letters", request("nowhere", "x")).await.unwrap_err();
    assert!(matches!(unknown, BrokerError::UnknownTopic(_)), "{unknown}");
    create(&broker, "alerts", "always").await;
    let r = broker.produce_internal("alerts", request("alerts", "fired")).await.unwrap();
    assert_eq!(r.results[0].base_offset, 0);
    let bad = SubscribeRequest {
        pattern: "alerts".into(),
        group: None,
        from: None,
        fallback: Some(Position::Offset(3)),
        delivery: Delivery::Records,
    };
    assert!(matches!(broker.subscribe(&caller(), bad), Err(BrokerError::InvalidRequest(_))));
    // No group: COMMITTED means the fallback (here the earliest record).
    let from_committed = SubscribeRequest {
        pattern: "alerts".into(),
        group: None,
        from: Some(Position::Committed),
        fallback: Some(Position::Earliest),
        delivery: Delivery::Records,
    };
    let mut messages = broker.subscribe(&caller(), from_committed).unwrap();
    let mut values = Vec::new();
    while values.is_empty() {
        let m = messages.next().await.unwrap().unwrap();
        if let Some(strata::broker::subscription::SubscriptionEvent::Records { records, .. }) = m.delivery {
            values.extend(records.into_iter().map(|r| r.value));
        }
    }
    assert_eq!(values, [Bytes::from_static(b"fired")]);
    drop(messages);
    broker.shutdown().await;
}

/// A client batch produced to an append-time topic is stored as sent
/// (still compressed) with the append time in its header, as Kafka stores
/// it, and every record reads back with that time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_batch_on_an_append_time_topic_keeps_its_compression_and_takes_the_append_time() {
    use strata::broker::fetch::Fetched;
    use strata::broker::FetchRequest;
    use strata::storage::batch::{self, BatchHeader};
    use strata::storage::compression::Compression;
    let dir = tempfile::tempdir().unwrap();
    let broker = open(dir.path());
    let config = BTreeMap::from([("timestamp.type".to_string(), "append".to_string())]);
    broker.create_topic(&caller(), CreateTopic { name: "stamped".into(), partitions: Some(1), config }).await.unwrap();
    let records: Vec<Record> = (0..20)
        .map(|i| Record {
            value: Bytes::from(format!("value {i} ").repeat(20)),
            timestamp_ms: 1_000 + i,
            ..Record::default()
        })
        .collect();
    let sent = Bytes::from(batch::encode_compressed(&records, None, Compression::Gzip));
    let before = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as i64;
    let produce = ProduceRequest { batch: Some(sent.clone()), records: vec![], ..request("stamped", "") };
    broker.produce(&caller(), produce).await.unwrap();
    let fetch = |raw| FetchRequest {
        topic: "stamped".into(),
        partition: 0,
        from: Position::Offset(0),
        records_max: 0,
        bytes_max: 0,
        wait: std::time::Duration::ZERO,
        raw,
    };
    let Fetched::Batches { read, .. } = broker.fetch(&caller(), fetch(true)).await.unwrap() else {
        panic!("raw fetch")
    };
    let stored = &read.batches[0];
    let header = BatchHeader::parse(stored, usize::MAX).unwrap();
    batch::verify_crc(&header, stored).unwrap();
    assert_eq!(header.compression(), Some(Compression::Gzip), "stored compressed, as sent");
    assert!(header.is_log_append_time());
    assert!(header.max_timestamp >= before, "append time {} vs {before}", header.max_timestamp);
    assert_eq!(&stored[61..], &sent[61..], "the records are the client's bytes");
    let Fetched::Records(read) = broker.fetch(&caller(), fetch(false)).await.unwrap() else { panic!("fetch") };
    assert_eq!(read.records.len(), 20);
    for (r, sent) in read.records.iter().zip(&records) {
        assert_eq!(r.timestamp_ms, header.max_timestamp);
        assert_eq!(r.value, sent.value);
    }
    broker.shutdown().await;
}

/// A client batch whose max_timestamp disagrees with its records is stored
/// with the right one (Kafka sets it right rather than refusing the batch),
/// so lookups by time still find its records.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_batch_with_a_wrong_max_timestamp_is_stored_with_the_right_one() {
    use strata::broker::fetch::Fetched;
    use strata::broker::FetchRequest;
    use strata::storage::batch::{self, BatchHeader};
    let dir = tempfile::tempdir().unwrap();
    let broker = open(dir.path());
    create(&broker, "times", "always").await;
    let t0 = 1_700_000_000_000i64;
    let records: Vec<Record> = (0..5)
        .map(|i| Record { value: Bytes::from(format!("v{i}")), timestamp_ms: t0 + i * 1000, ..Record::default() })
        .collect();
    let mut sent = batch::encode(&records, None);
    batch::set_max_timestamp(&mut sent, t0); // a client that got it wrong
    let produce = ProduceRequest { batch: Some(Bytes::from(sent)), records: vec![], ..request("times", "") };
    broker.produce(&caller(), produce).await.unwrap();
    let fetch = FetchRequest {
        topic: "times".into(),
        partition: 0,
        from: Position::Offset(0),
        records_max: 0,
        bytes_max: 0,
        wait: std::time::Duration::ZERO,
        raw: true,
    };
    let Fetched::Batches { read, .. } = broker.fetch(&caller(), fetch).await.unwrap() else { panic!("raw fetch") };
    let header = BatchHeader::parse(&read.batches[0], usize::MAX).unwrap();
    batch::verify_crc(&header, &read.batches[0]).unwrap();
    assert_eq!(header.max_timestamp, t0 + 4000);
    let found = broker.list_offsets(&caller(), "times", 0, Position::Timestamp(t0 + 3500)).await.unwrap();
    assert_eq!(found.offset, 4, "the first record at or after the time");
    broker.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_topic_created_again_starts_without_the_old_committed_offsets() {
    use strata::broker::CommitOffsets;
    use strata::group::offsets::Committed;
    let dir = tempfile::tempdir().unwrap();
    let broker = open(dir.path());
    create(&broker, "orders", "always").await;
    broker.produce(&caller(), request("orders", "a")).await.unwrap();
    broker.produce(&caller(), request("orders", "b")).await.unwrap();
    let commit = CommitOffsets {
        group: "billing".into(),
        member_id: String::new(),
        generation: 0,
        offsets: vec![("orders".into(), 0, Committed { offset: 2, metadata: String::new() })],
    };
    let b = broker.clone();
    tokio::task::spawn_blocking(move || b.commit_offsets(&caller(), commit)).await.unwrap().unwrap();
    assert_eq!(broker.committed_offsets(&caller(), "billing", None).len(), 1);
    broker.delete_topic(&caller(), "orders").await.unwrap();
    create(&broker, "orders", "always").await;
    // Kafka forgets them too: else a consumer of the new topic would skip
    // its first two records.
    assert!(broker.committed_offsets(&caller(), "billing", None).is_empty());
    broker.shutdown().await;
    drop(broker);
    let broker = open(dir.path());
    assert!(broker.committed_offsets(&caller(), "billing", None).is_empty(), "still forgotten after a restart");
    broker.shutdown().await;
}
