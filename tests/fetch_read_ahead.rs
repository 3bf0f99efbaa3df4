//! Fetch read-ahead (`listener/grpc/ahead.rs`) serves exactly what a fetch
//! asked for at that moment would: a consumer fetching a partition through
//! in small steps on one connection gets every record once and in order;
//! records appended after a response was read ahead are not missed; a
//! topic deleted and created again is read from the new one; the fetch
//! counters count records served, not read ahead; a principal on the
//! same connection without rights is refused, whatever was read ahead; and
//! a response read ahead (encoded from the stored batches as they are read)
//! is the very message a fetch on a fresh connection gets.

mod common;

use common::{at_offset, client, create, produce, record, start, Client};
use strata::metrics::scrape::{self, sum};
use strata::proto;
use strata::security::acl::{token_sha256, AclEntry, UserEntry};
use strata::security::SecurityFile;
use tonic::Code;

fn request(topic: &str, from: u64, max_records: u32) -> proto::FetchRequest {
    proto::FetchRequest {
        topic: topic.into(),
        partition: 0,
        from: at_offset(from),
        max_records,
        max_bytes: 0,
        max_wait_ms: 0,
        raw_batches: false,
    }
}

async fn fetch(c: &mut Client, topic: &str, from: u64, max_records: u32) -> proto::FetchResponse {
    c.fetch(request(topic, from, max_records)).await.unwrap().into_inner()
}

async fn produce_values(c: &mut Client, topic: &str, prefix: &str, range: std::ops::Range<u32>) {
    // In requests of 50, so fetches of 30 end inside batches too.
    let values: Vec<u32> = range.collect();
    for chunk in values.chunks(50) {
        let records = chunk.iter().map(|i| record("", &format!("{prefix}-{i}"))).collect();
        produce(c, topic, Some(0), records).await;
    }
}

fn values(r: &proto::FetchResponse) -> Vec<String> {
    r.records.iter().map(|x| String::from_utf8(x.value.to_vec()).unwrap()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partition_fetched_through_in_steps_gives_every_record_once_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path()).await;
    let mut c = client(&server).await;
    create(&mut c, "steps", 1).await;
    produce_values(&mut c, "steps", "v", 0..1000).await;

    let mut next = 0;
    let mut seen = Vec::new();
    loop {
        let r = fetch(&mut c, "steps", next, 30).await;
        assert_eq!(r.high_watermark, 1000);
        if r.records.is_empty() {
            break;
        }
        for (i, x) in r.records.iter().enumerate() {
            assert_eq!(x.offset, next + i as u64, "offsets follow on");
            assert_eq!((x.topic.as_str(), x.partition), ("steps", 0));
        }
        assert!(r.records.len() <= 30);
        next = r.next_offset;
        seen.extend(values(&r));
    }
    assert_eq!(seen, (0..1000).map(|i| format!("v-{i}")).collect::<Vec<_>>());

    // Fetched again from the start (a rewind): the same records.
    let again = fetch(&mut c, "steps", 0, 30).await;
    assert_eq!(values(&again), seen[..30]);
    let r = fetch(&mut c, "steps", 30, 30).await;
    assert_eq!(values(&r), seen[30..60]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_appended_after_a_read_ahead_are_not_missed() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path()).await;
    let mut c = client(&server).await;
    create(&mut c, "growing", 1).await;
    produce_values(&mut c, "growing", "a", 0..150).await;

    // 100 of 150: the next (from 100, up to 100 records) is read ahead and
    // finds the 50 left, stopping at the end of the log.
    let first = fetch(&mut c, "growing", 0, 100).await;
    assert_eq!(first.next_offset, 100);
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    produce_values(&mut c, "growing", "b", 0..100).await;

    // A fetch now returns 100 records, the new ones included.
    let second = fetch(&mut c, "growing", 100, 100).await;
    assert_eq!(second.high_watermark, 250);
    assert_eq!(second.next_offset, 200);
    let expected: Vec<String> = (100..150).map(|i| format!("a-{i}")).chain((0..50).map(|i| format!("b-{i}"))).collect();
    assert_eq!(values(&second), expected);
    let third = fetch(&mut c, "growing", 200, 100).await;
    assert_eq!(values(&third), (50..100).map(|i| format!("b-{i}")).collect::<Vec<_>>());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_topic_deleted_and_created_again_is_read_from_the_new_one() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path()).await;
    let mut c = client(&server).await;
    create(&mut c, "reborn", 1).await;
    produce_values(&mut c, "reborn", "old", 0..300).await;
    assert_eq!(fetch(&mut c, "reborn", 0, 100).await.next_offset, 100);
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;

    c.delete_topic(proto::DeleteTopicRequest { name: "reborn".into() }).await.unwrap();
    create(&mut c, "reborn", 1).await;
    produce_values(&mut c, "reborn", "new", 0..300).await;
    let r = fetch(&mut c, "reborn", 100, 100).await;
    assert_eq!(values(&r), (100..200).map(|i| format!("new-{i}")).collect::<Vec<_>>());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fetch_counters_count_records_served_not_read_ahead() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path()).await;
    let mut c = client(&server).await;
    create(&mut c, "counted", 1).await;
    produce_values(&mut c, "counted", "v", 0..1000).await;
    fetch(&mut c, "counted", 0, 100).await;
    fetch(&mut c, "counted", 100, 100).await;
    // Let whatever is read ahead finish.
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let samples = scrape::scrape(&server.http_addr().unwrap().to_string()).await.unwrap();
    assert_eq!(sum(&samples, "strata_fetch_records_total", &[("topic", "counted")]), 200.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_principal_without_rights_is_refused_on_a_connection_that_read_ahead() {
    let dir = tempfile::tempdir().unwrap();
    let user = |name: &str| UserEntry { name: name.into(), token_sha256: token_sha256(&format!("{name}-token")) };
    let security = SecurityFile {
        anonymous: None,
        users: vec![user("admin"), user("nobody")],
        acl: vec![AclEntry {
            principal: "admin".into(),
            operations: vec!["all".into()],
            topics: vec!["*".into()],
            groups: vec!["*".into()],
        }],
    };
    let config = strata::config::BrokerConfig { security: Some(security), ..common::config(dir.path()) };
    let server = strata::server::start(config).await.unwrap();
    // Both clients share one connection (one channel); each call carries
    // its own token.
    let channel = tonic::transport::Channel::from_shared(server.url()).unwrap().connect().await.unwrap();
    let as_user = |token: &str| {
        proto::broker_client::BrokerClient::with_interceptor(
            channel.clone(),
            strata::cli::Auth::bearer(Some(token)).unwrap(),
        )
    };
    let (mut admin, mut nobody) = (as_user("admin-token"), as_user("nobody-token"));
    admin
        .create_topic(proto::CreateTopicRequest { name: "secret".into(), partitions: 1, config: Default::default() })
        .await
        .unwrap();
    let records = (0..300).map(|i| record("", &format!("s-{i}"))).collect();
    admin
        .produce(proto::ProduceRequest { topic: "secret".into(), partition: Some(0), records, ..Default::default() })
        .await
        .unwrap();
    let r = admin.fetch(request("secret", 0, 100)).await.unwrap().into_inner();
    assert_eq!(r.next_offset, 100);
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    let refused = nobody.fetch(request("secret", 100, 100)).await.unwrap_err();
    assert_eq!(refused.code(), Code::PermissionDenied, "{refused:?}");
    // The admin still gets it.
    let r = admin.fetch(request("secret", 100, 100)).await.unwrap().into_inner();
    assert_eq!(r.records.first().map(|x| x.value.to_vec()), Some(b"s-100".to_vec()));
}

/// Records with every field set or left out (keys, headers with empty and
/// repeated names, negative and zero timestamps, empty, small and large
/// values): each step a consumer takes on one connection, served read
/// ahead, equals the same fetch on a connection of its own (read then), and
/// what strata's client decodes of it as it arrives.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_response_read_ahead_is_the_message_a_fetch_reads_now() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path()).await;
    let mut c = client(&server).await;
    create(&mut c, "fields", 1).await;
    let records = rich_records();
    for chunk in records.chunks(64) {
        produce(&mut c, "fields", Some(0), chunk.to_vec()).await;
    }
    // strata's own client decodes records as they arrive: the same again.
    let channel = tonic::transport::Channel::from_shared(server.url()).unwrap().connect().await.unwrap();
    let mut next = 0;
    let mut steps = 0;
    while next < 400 {
        let served = fetch(&mut c, "fields", next, 37).await;
        let mut fresh = client(&server).await;
        let read_now = fetch(&mut fresh, "fields", next, 37).await;
        assert_eq!(served, read_now, "the step from {next}");
        let zero_copy = strata::client::fetch(&channel, request("fields", next, 37)).await.unwrap();
        assert_eq!(zero_copy, read_now, "strata::client, the step from {next}");
        assert!(!served.records.is_empty());
        next = served.next_offset;
        steps += 1;
    }
    assert_eq!(steps, 11, "400 records in steps of 37");
    let sent: Vec<(Vec<u8>, Vec<u8>)> = records.iter().map(|r| (r.key.to_vec(), r.value.to_vec())).collect();
    let mut got = Vec::new();
    let mut next = 0;
    while next < 400 {
        let r = fetch(&mut c, "fields", next, 37).await;
        got.extend(r.records.iter().map(|x| (x.key.to_vec(), x.value.to_vec())));
        next = r.next_offset;
    }
    assert_eq!(got, sent);
}

/// 400 records with every field set or left out: keys or none, headers
/// with empty and repeated names, negative and zero timestamps, empty,
/// small and large (shared) values.
fn rich_records() -> Vec<proto::Record> {
    (0..400u32)
        .map(|i| proto::Record {
            key: if i % 3 == 0 { Default::default() } else { format!("k-{i}").into_bytes().into() },
            value: match i % 40 {
                0 => Default::default(),
                7 => vec![b'L'; 20_000 + i as usize].into(),
                _ => format!("v-{i}-{}", "x".repeat(i as usize % 90)).into_bytes().into(),
            },
            headers: match i % 4 {
                0 => Default::default(),
                1 => [("id".to_string(), format!("evt-{i}").into_bytes().into())].into(),
                2 => [("".to_string(), b"v".to_vec().into()), ("k".to_string(), Default::default())].into(),
                _ => [("trace".to_string(), vec![i as u8; 3].into())].into(),
            },
            timestamp_ms: match i % 5 {
                0 => 1_700_000_000_000 + i as i64,
                1 => -5 - i as i64,
                _ => 1_600_000_000_000,
            },
        })
        .collect()
}

/// Per-record Subscribe messages (encoded as the stored batches are read)
/// carry exactly the records produced, as Fetch returns them (on fresh
/// connections: not read ahead), with and without a group.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscribe_delivers_the_records_fetch_reads() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path()).await;
    let mut c = client(&server).await;
    create(&mut c, "pushed", 1).await;
    for chunk in rich_records().chunks(64) {
        produce(&mut c, "pushed", Some(0), chunk.to_vec()).await;
    }
    let sent: Vec<proto::StoredRecord> = rich_records()
        .into_iter()
        .enumerate()
        .map(|(i, r)| proto::StoredRecord {
            topic: "pushed".into(),
            partition: 0,
            offset: i as u64,
            timestamp_ms: r.timestamp_ms,
            key: r.key,
            value: r.value,
            headers: r.headers,
        })
        .collect();
    let mut fetched = Vec::new();
    while fetched.len() < 400 {
        let mut fresh = client(&server).await;
        fetched.extend(fetch(&mut fresh, "pushed", fetched.len() as u64, 37).await.records);
    }
    assert_eq!(fetched, sent);
    for group in [None, Some("pushed-group".to_string())] {
        let request = proto::SubscribeRequest {
            topic_pattern: "pushed".into(),
            from: if group.is_none() { at_offset(0) } else { None },
            fallback: Some(proto::Boundary::Earliest as i32),
            group: group.clone(),
            raw_batches: false,
        };
        let mut stream = c.subscribe(request).await.unwrap().into_inner();
        let mut pushed = Vec::new();
        while pushed.len() < 400 {
            let m = tokio::time::timeout(std::time::Duration::from_secs(10), stream.message())
                .await
                .expect("records within 10 s")
                .unwrap()
                .expect("the stream goes on");
            pushed.extend(m.records);
        }
        assert_eq!(pushed, sent, "group {group:?}");
    }
}
