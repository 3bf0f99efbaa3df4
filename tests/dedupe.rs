//! De-duplication by event id (`dedupe.window.ms`, `dedupe.header`,
//! `dedupe.max.ids`) through gRPC, client-encoded batches and a real Kafka
//! client: a record whose id was appended within the window is not appended
//! again and the reply names the first append; inside one request too; the
//! window holds across a restart and a SIGKILL of the real binary; the
//! table is bounded and reported by DescribeTopic.

mod common;

use std::collections::HashMap;
use std::time::Duration;

use common::{client, fetch_all, record, start, Client};
use strata::proto;
use tonic::Code;

fn with_id(key: &str, value: &str, id: &str) -> proto::Record {
    let mut r = record(key, value);
    r.headers.insert("id".into(), id.as_bytes().to_vec().into());
    r
}

async fn create_deduped(c: &mut Client, name: &str, partitions: u32, config: &[(&str, &str)]) {
    let mut map: HashMap<String, String> = [("dedupe.window.ms".to_string(), "60000".to_string())].into();
    map.extend(config.iter().map(|(k, v)| (k.to_string(), v.to_string())));
    c.create_topic(proto::CreateTopicRequest { name: name.into(), partitions, config: map }).await.unwrap();
}

async fn produce(
    c: &mut Client,
    topic: &str,
    partition: Option<u32>,
    records: Vec<proto::Record>,
) -> proto::ProduceResponse {
    c.produce(proto::ProduceRequest { topic: topic.into(), partition, records, ..Default::default() })
        .await
        .unwrap()
        .into_inner()
}

fn dup(index: u32, partition: u32, offset: u64) -> proto::Duplicate {
    proto::Duplicate { index, partition, offset }
}

/// Every value stored in the topic, partition by partition.
async fn values(c: &mut Client, topic: &str, partitions: u32) -> Vec<String> {
    let mut out = Vec::new();
    for p in 0..partitions {
        for r in fetch_all(c, topic, p, 0).await {
            out.push(String::from_utf8(r.value.to_vec()).unwrap());
        }
    }
    out.sort();
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_repeated_id_is_not_appended_and_the_reply_names_the_first_append() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path()).await;
    let mut c = client(&server).await;
    create_deduped(&mut c, "payments", 3, &[]).await;
    let first = produce(&mut c, "payments", None, vec![with_id("cust-1", "charge-1", "evt-1")]).await;
    assert!(first.duplicates.is_empty());
    let (p1, o1) = (first.results[0].partition, first.results[0].base_offset);

    // A retry with another key (so maybe another partition), an id repeated
    // inside the request, and records without ids (always appended).
    let retry = produce(
        &mut c,
        "payments",
        None,
        vec![
            with_id("cust-9", "charge-1 again", "evt-1"),
            with_id("cust-2", "charge-2", "evt-2"),
            with_id("cust-2", "charge-2 again", "evt-2"),
            record("cust-3", "no id"),
            record("cust-3", "no id"),
        ],
    )
    .await;
    assert_eq!(retry.duplicates.len(), 2, "{retry:?}");
    assert_eq!(retry.duplicates[0], dup(0, p1, o1));
    // The in-request repeat names where its first went in this request.
    let d = &retry.duplicates[1];
    assert_eq!(d.index, 2);
    let stored = fetch_all(&mut c, "payments", d.partition, d.offset).await;
    assert_eq!(&stored[0].value[..], b"charge-2");
    assert_eq!(values(&mut c, "payments", 3).await, ["charge-1", "charge-2", "no id", "no id"]);

    // A request of only duplicates appends nothing and says so.
    let all = produce(&mut c, "payments", Some(0), vec![with_id("", "x", "evt-2"), with_id("", "y", "evt-1")]).await;
    assert!(all.results.is_empty(), "{all:?}");
    assert_eq!(all.duplicates.iter().map(|d| d.index).collect::<Vec<_>>(), [0, 1]);
    assert_eq!(all.duplicates[1], dup(1, p1, o1));

    // A duplicate ahead of a new id in one partition's batch: the new one's
    // offset (and its repeat's) is where it went, not where it stood.
    let mixed = produce(
        &mut c,
        "payments",
        Some(0),
        vec![with_id("", "x", "evt-1"), with_id("", "charge-3", "evt-3"), with_id("", "y", "evt-3")],
    )
    .await;
    let r = &mixed.results[0];
    assert_eq!(r.base_offset, r.last_offset, "one record appended: {mixed:?}");
    assert_eq!(mixed.duplicates, [dup(0, p1, o1), dup(2, 0, r.base_offset)]);
    assert_eq!(&fetch_all(&mut c, "payments", 0, r.base_offset).await[0].value[..], b"charge-3");

    // DescribeTopic reports the table.
    let t = c.describe_topic(proto::DescribeTopicRequest { name: "payments".into() }).await.unwrap().into_inner();
    let ids: u64 = t.partition_descriptions.iter().map(|p| p.dedupe_ids).sum();
    let bytes: u64 = t.partition_descriptions.iter().map(|p| p.dedupe_memory_bytes).sum();
    assert_eq!(ids, 3);
    assert!(bytes > 0);
    assert_eq!(t.config["dedupe.header"], "id");
    assert_eq!(t.config["dedupe.max.ids"], "1000000");
    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn de_dup_is_off_by_default_and_bad_ids_and_configs_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path()).await;
    let mut c = client(&server).await;
    common::create(&mut c, "plain", 1).await;
    for _ in 0..2 {
        let r = produce(&mut c, "plain", None, vec![with_id("", "same", "evt-1")]).await;
        assert!(r.duplicates.is_empty());
    }
    assert_eq!(values(&mut c, "plain", 1).await.len(), 2, "off by default: nothing dropped");

    create_deduped(&mut c, "orders", 1, &[("dedupe.header", "event-id")]).await;
    // Only the configured header counts.
    let mut r = record("", "a");
    r.headers.insert("event-id".into(), b"e1".to_vec().into());
    produce(&mut c, "orders", None, vec![r.clone(), with_id("", "b", "e1")]).await;
    let again = produce(&mut c, "orders", None, vec![r]).await;
    assert_eq!(again.duplicates, [dup(0, 0, 0)]);

    let long = "x".repeat(257);
    let e = c
        .produce(proto::ProduceRequest {
            topic: "orders".into(),
            records: vec![with_id("", "fine", "e9"), {
                let mut r = record("", "too long");
                r.headers.insert("event-id".into(), long.into_bytes().into());
                r
            }],
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
    assert!(e.message().contains("event id") && e.message().contains("256"), "{}", e.message());
    assert_eq!(values(&mut c, "orders", 1).await, ["a", "b"], "a refused request appends nothing");

    for (key, value) in [("dedupe.window.ms", "-1"), ("dedupe.max.ids", "0"), ("dedupe.header", "")] {
        let config = [(key.to_string(), value.to_string())].into();
        let e =
            c.create_topic(proto::CreateTopicRequest { name: "bad".into(), partitions: 1, config }).await.unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument);
        assert!(e.message().contains(key), "{}", e.message());
    }
    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_encoded_batches_keep_their_other_records_and_the_table_is_bounded() {
    use strata::storage::batch::{encode, Record};
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path()).await;
    let mut c = client(&server).await;
    create_deduped(&mut c, "events", 1, &[("dedupe.max.ids", "3")]).await;
    let rec = |v: &str, id: &str| Record {
        key: Default::default(),
        value: v.as_bytes().to_vec().into(),
        headers: vec![("id".into(), id.as_bytes().to_vec().into())],
        timestamp_ms: 1_700_000_000_000,
    };
    let send = |records: Vec<Record>| proto::ProduceRequest {
        topic: "events".into(),
        partition: Some(0),
        record_batch: encode(&records, None).into(),
        ..Default::default()
    };
    let r = c.produce(send(vec![rec("a", "1"), rec("b", "2")])).await.unwrap().into_inner();
    assert_eq!((r.results[0].base_offset, r.results[0].last_offset), (0, 1));
    // 2 is a duplicate; 3 twice in the batch: the second is.
    let r = c.produce(send(vec![rec("b2", "2"), rec("c", "3"), rec("c2", "3"), rec("d", "4")])).await.unwrap();
    let r = r.into_inner();
    assert_eq!(r.duplicates, [dup(0, 0, 1), dup(2, 0, 2)]);
    assert_eq!((r.results[0].base_offset, r.results[0].last_offset), (2, 3));
    let stored = fetch_all(&mut c, "events", 0, 0).await;
    let got: Vec<(&[u8], &[u8])> = stored.iter().map(|r| (&r.value[..], &r.headers["id"][..])).collect();
    assert_eq!(got, [(&b"a"[..], &b"1"[..]), (b"b", b"2"), (b"c", b"3"), (b"d", b"4")]);
    assert!(stored.iter().all(|r| r.timestamp_ms == 1_700_000_000_000), "timestamps kept");

    // At most 3 ids per partition: the oldest ("1") is forgotten.
    let t = c.describe_topic(proto::DescribeTopicRequest { name: "events".into() }).await.unwrap().into_inner();
    assert_eq!(t.partition_descriptions[0].dedupe_ids, 3);
    let r = c.produce(send(vec![rec("a again", "1")])).await.unwrap().into_inner();
    assert!(r.duplicates.is_empty() && r.results[0].base_offset == 4, "{r:?}");
    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ids_outlive_the_window_only_as_long_as_it_and_turning_de_dup_on_reads_the_log() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path()).await;
    let mut c = client(&server).await;
    create_deduped(&mut c, "short", 1, &[("dedupe.window.ms", "300")]).await;
    produce(&mut c, "short", None, vec![with_id("", "a", "e1")]).await;
    assert_eq!(produce(&mut c, "short", None, vec![with_id("", "a", "e1")]).await.duplicates.len(), 1);
    tokio::time::sleep(Duration::from_millis(400)).await;
    let later = produce(&mut c, "short", None, vec![with_id("", "a later", "e1")]).await;
    assert!(later.duplicates.is_empty(), "the window passed: {later:?}");

    // Off at first: both appended. Turned on: the log's last window is read,
    // so the id is a duplicate of its first append.
    common::create(&mut c, "late", 1).await;
    produce(&mut c, "late", None, vec![with_id("", "a", "e7")]).await;
    produce(&mut c, "late", None, vec![with_id("", "a", "e7")]).await;
    let config = [("dedupe.window.ms".to_string(), "60000".to_string())].into();
    c.alter_topic_config(proto::AlterTopicConfigRequest { name: "late".into(), config }).await.unwrap();
    let r = produce(&mut c, "late", None, vec![with_id("", "a", "e7"), with_id("", "b", "e8")]).await;
    assert_eq!(r.duplicates, [dup(0, 0, 0)]);
    // And off again: nothing is dropped.
    let config = [("dedupe.window.ms".to_string(), "0".to_string())].into();
    c.alter_topic_config(proto::AlterTopicConfigRequest { name: "late".into(), config }).await.unwrap();
    assert!(produce(&mut c, "late", None, vec![with_id("", "b", "e8")]).await.duplicates.is_empty());
    server.shutdown().await.unwrap();
}

/// The real binary, killed with SIGKILL after acknowledging: every id it
/// acknowledged is still a duplicate when it comes back (the table is
/// rebuilt from the log), twice over.
#[test]
fn an_id_acknowledged_before_a_sigkill_is_still_a_duplicate_after_it() {
    use common::process::{kill9, serve};
    let dir = tempfile::tempdir().unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let (mut child, url) = serve(dir.path());
    let mut first = HashMap::new();
    rt.block_on(async {
        let mut c = common::process_client(&url).await;
        create_deduped(&mut c, "payments", 2, &[]).await;
        for i in 0..50 {
            let r = produce(&mut c, "payments", None, vec![with_id(&format!("k{i}"), "v", &format!("evt-{i}"))]).await;
            first.insert(i, (r.results[0].partition, r.results[0].base_offset));
        }
    });
    for round in 0..2 {
        kill9(&mut child);
        let (next, url) = serve(dir.path());
        child = next;
        rt.block_on(async {
            let mut c = common::process_client(&url).await;
            // Keys changed, so some retries would land on the other partition.
            let records = (0..50).map(|i| with_id(&format!("retry{round}-{i}"), "v", &format!("evt-{i}"))).collect();
            let r = produce(&mut c, "payments", None, records).await;
            assert!(r.results.is_empty(), "round {round}: {r:?}");
            assert_eq!(r.duplicates.len(), 50);
            for d in &r.duplicates {
                assert_eq!((d.partition, d.offset), first[&d.index], "round {round}");
            }
            let fresh = produce(&mut c, "payments", Some(0), vec![with_id("", "v", &format!("new-{round}"))]).await;
            assert!(fresh.duplicates.is_empty());
            assert_eq!(values(&mut c, "payments", 2).await.len(), 51 + round);
        });
    }
    kill9(&mut child);
}

/// librdkafka with idempotence on (the Java client's default too): a batch
/// of only duplicates is answered with the original's offset and the
/// producer's next batches still fit its sequence; a batch with some
/// duplicates keeps the rest.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kafka_idempotent_producer_gets_duplicates_dropped_and_keeps_producing() {
    use rdkafka::message::{Header, OwnedHeaders};
    use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
    use rdkafka::ClientConfig;
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path()).await;
    let mut c = client(&server).await;
    create_deduped(&mut c, "kafka.events", 1, &[]).await;
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", server.kafka_addr().unwrap().to_string())
        .set("enable.idempotence", "true")
        .set("linger.ms", "50")
        .create()
        .unwrap();
    let send = |value: &'static str, id: &'static str| {
        let producer = producer.clone();
        async move {
            let headers = OwnedHeaders::new().insert(Header { key: "id", value: Some(id) });
            let record = FutureRecord::<(), _>::to("kafka.events").payload(value).headers(headers).partition(0);
            producer.send(record, Duration::from_secs(10)).await.map(|d| d.offset).map_err(|(e, _)| e.to_string())
        }
    };
    assert_eq!(send("a", "e1").await, Ok(0));
    assert_eq!(send("b", "e2").await, Ok(1));
    // Only a duplicate: nothing appended, the original's offset.
    assert_eq!(send("a again", "e1").await, Ok(0));
    assert_eq!(send("c", "e3").await, Ok(2), "the producer's sequence still fits");
    // One batch (linger) with a duplicate and a new id.
    let (x, y) = tokio::join!(send("b again", "e2"), send("d", "e4"));
    assert!(x.is_ok() && y.is_ok(), "{x:?} {y:?}");
    assert!(send("e", "e5").await.is_ok());
    producer.flush(Duration::from_secs(10)).unwrap();
    assert_eq!(values(&mut c, "kafka.events", 1).await, ["a", "b", "c", "d", "e"]);
    server.shutdown().await.unwrap();
}
