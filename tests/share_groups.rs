//! Share groups through gRPC: records shared one at a time, per-record
//! acknowledgement, redelivery after backoff or lock expiry, dead letters
//! with their headers, redrive, and state that survives a crash.

mod common;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::{Duration, Instant};

use common::{client, create, produce, record, start, Client};
use strata::proto;
use tonic::Code;

async fn alter(client: &mut Client, group: &str, config: &[(&str, &str)]) -> proto::ShareGroupDescription {
    let config = config.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
    client.alter_share_group(proto::AlterShareGroupRequest { group: group.into(), config }).await.unwrap().into_inner()
}

async fn share_fetch(
    client: &mut Client,
    group: &str,
    pattern: &str,
    max: u32,
    wait_ms: u32,
) -> Vec<proto::ShareRecord> {
    let request = proto::ShareFetchRequest {
        group: group.into(),
        topic_pattern: pattern.into(),
        max_records: max,
        max_wait_ms: wait_ms,
        ..Default::default()
    };
    client.share_fetch(request).await.unwrap().into_inner().records
}

fn ack_of(r: &proto::ShareRecord, kind: proto::AckType, reason: &str) -> proto::Acknowledgement {
    let s = r.record.as_ref().unwrap();
    proto::Acknowledgement {
        topic: s.topic.clone(),
        partition: s.partition,
        offset: s.offset,
        r#type: kind as i32,
        delay_ms: None,
        reason: reason.into(),
    }
}

async fn ack(client: &mut Client, group: &str, acks: Vec<proto::Acknowledgement>) -> Vec<proto::AcknowledgeResult> {
    let request = proto::AcknowledgeRequest { group: group.into(), acknowledgements: acks };
    client.acknowledge(request).await.unwrap().into_inner().results
}

fn value(r: &proto::ShareRecord) -> String {
    String::from_utf8(r.record.as_ref().unwrap().value.to_vec()).unwrap()
}

async fn produce_values(client: &mut Client, topic: &str, values: impl IntoIterator<Item = String>) {
    for v in values {
        produce(client, topic, None, vec![record("", &v)]).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_are_shared_one_at_a_time_and_accepted_ones_never_return() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path()).await;
    let mut c = client(&server).await;
    create(&mut c, "payments.sent", 2).await;
    alter(&mut c, "workers", &[("auto.offset.reset", "earliest")]).await;
    produce_values(&mut c, "payments.sent", (0..10).map(|i| format!("p{i}"))).await;

    let first = share_fetch(&mut c, "workers", "payments.*", 4, 0).await;
    let second = share_fetch(&mut c, "workers", "payments.*", 100, 0).await;
    assert_eq!(first.len(), 4);
    assert_eq!(second.len(), 6, "the rest, none of the first fetch's");
    let all: BTreeSet<String> = first.iter().chain(&second).map(value).collect();
    assert_eq!(all.len(), 10, "every record handed out once: {all:?}");
    assert!(first.iter().chain(&second).all(|r| r.delivery_count == 1));
    assert!(share_fetch(&mut c, "workers", "payments.*", 100, 0).await.is_empty(), "all are held");

    let acks = first.iter().chain(&second).map(|r| ack_of(r, proto::AckType::Accept, "")).collect();
    let results = ack(&mut c, "workers", acks).await;
    assert!(results.iter().all(|r| r.ok), "{results:?}");
    let started = Instant::now();
    assert!(share_fetch(&mut c, "workers", "payments.*", 100, 300).await.is_empty(), "accepted records never return");
    assert!(started.elapsed() >= Duration::from_millis(250), "an empty share fetch long-polls");

    // A record produced while a fetch waits wakes it.
    let mut waiter = c.clone();
    let waiting = tokio::spawn(async move { share_fetch(&mut waiter, "workers", "payments.*", 10, 10_000).await });
    tokio::time::sleep(Duration::from_millis(100)).await;
    produce_values(&mut c, "payments.sent", ["late".to_string()]).await;
    let got = tokio::time::timeout(Duration::from_secs(5), waiting).await.unwrap().unwrap();
    assert_eq!(got.iter().map(value).collect::<Vec<_>>(), ["late"]);

    let d = c
        .describe_share_group(proto::DescribeShareGroupRequest { group: "workers".into() })
        .await
        .unwrap()
        .into_inner();
    let acquired: u64 = d.partitions.iter().map(|p| p.acquired).sum();
    assert_eq!((d.partitions.len(), acquired), (2, 1));
    assert_eq!(d.members.len(), 1);
    // Prometheus sees the same: one record held, none other pending.
    let samples = strata::metrics::scrape::scrape(&server.http_addr().unwrap().to_string()).await.unwrap();
    let of = |name: &str| strata::metrics::scrape::sum(&samples, name, &[("group", "workers")]) as u64;
    assert_eq!((of("strata_share_group_acquired"), of("strata_share_group_lag")), (1, 1));
    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_share_groups_each_get_every_record_and_a_new_group_starts_at_the_end() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path()).await;
    let mut c = client(&server).await;
    create(&mut c, "policy.updated", 1).await;
    produce_values(&mut c, "policy.updated", ["old".to_string()]).await;
    // `latest` (the default): a new group sees only what comes after it.
    assert!(share_fetch(&mut c, "ui", "policy.updated", 10, 0).await.is_empty());
    alter(&mut c, "audit", &[("auto.offset.reset", "earliest")]).await;
    produce_values(&mut c, "policy.updated", ["new".to_string()]).await;
    let ui: Vec<String> = share_fetch(&mut c, "ui", "policy.updated", 10, 0).await.iter().map(value).collect();
    let audit: Vec<String> = share_fetch(&mut c, "audit", "policy.updated", 10, 0).await.iter().map(value).collect();
    assert_eq!(ui, ["new"]);
    assert_eq!(audit, ["old", "new"]);
    let groups = c.list_share_groups(proto::ListShareGroupsRequest {}).await.unwrap().into_inner().groups;
    assert_eq!(groups, ["audit", "ui"]);
    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_release_comes_back_after_its_backoff_with_a_higher_delivery_count() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path()).await;
    let mut c = client(&server).await;
    create(&mut c, "jobs", 1).await;
    alter(&mut c, "g", &[("auto.offset.reset", "earliest"), ("backoff.ms", "300")]).await;
    produce_values(&mut c, "jobs", ["j".to_string()]).await;
    let got = share_fetch(&mut c, "g", "jobs", 10, 0).await;
    let released = Instant::now();
    assert!(ack(&mut c, "g", vec![ack_of(&got[0], proto::AckType::Release, "busy")]).await[0].ok);
    assert!(share_fetch(&mut c, "g", "jobs", 10, 0).await.is_empty(), "not before its backoff");
    let again = share_fetch(&mut c, "g", "jobs", 10, 5000).await;
    assert!(released.elapsed() >= Duration::from_millis(280), "{:?}", released.elapsed());
    assert!(released.elapsed() < Duration::from_millis(4000), "the long poll woke when it was due");
    assert_eq!((value(&again[0]), again[0].delivery_count), ("j".to_string(), 2));

    // A RELEASE with its own delay.
    let mut a = ack_of(&again[0], proto::AckType::Release, "");
    a.delay_ms = Some(0);
    assert!(ack(&mut c, "g", vec![a]).await[0].ok);
    assert_eq!(share_fetch(&mut c, "g", "jobs", 10, 0).await[0].delivery_count, 3);
    server.shutdown().await.unwrap();
}

fn headers(r: &proto::StoredRecord) -> BTreeMap<String, String> {
    r.headers.iter().map(|(k, v)| (k.clone(), String::from_utf8_lossy(v).into_owned())).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rejected_record_is_dead_lettered_with_its_headers_and_redrive_brings_it_back() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path()).await;
    let mut c = client(&server).await;
    create(&mut c, "payments.sent", 1).await;
    alter(&mut c, "billing", &[("auto.offset.reset", "earliest")]).await;
    let mut original = record("order-7", "{\"amount\":10}");
    original.headers.insert("id".into(), b"evt-1".to_vec().into());
    produce(&mut c, "payments.sent", None, vec![original]).await;
    let got = share_fetch(&mut c, "billing", "payments.sent", 10, 0).await;
    assert!(ack(&mut c, "billing", vec![ack_of(&got[0], proto::AckType::Reject, "card declined")]).await[0].ok);

    // Dead-lettered (and durable) before Acknowledge returned.
    let dead = common::fetch_all(&mut c, "billing.dlq", 0, 0).await;
    assert_eq!(dead.len(), 1);
    let source = got[0].record.as_ref().unwrap();
    assert_eq!((&dead[0].key, &dead[0].value, dead[0].timestamp_ms), (&source.key, &source.value, source.timestamp_ms));
    let expected: BTreeMap<String, String> = [
        ("id", "evt-1"),
        ("dlq.topic", "payments.sent"),
        ("dlq.partition", "0"),
        ("dlq.offset", "0"),
        ("dlq.group", "billing"),
        ("dlq.deliveries", "1"),
        ("dlq.reason", "card declined"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    assert_eq!(headers(&dead[0]), expected);
    let d = c
        .describe_share_group(proto::DescribeShareGroupRequest { group: "billing".into() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!((d.partitions[0].dead_lettered_total, d.partitions[0].start_offset), (1, 1));
    assert!(share_fetch(&mut c, "billing", "payments.sent", 10, 0).await.is_empty(), "a dead letter is done");
    let samples = strata::metrics::scrape::scrape(&server.http_addr().unwrap().to_string()).await.unwrap();
    let dead =
        strata::metrics::scrape::sum(&samples, "strata_share_group_dead_lettered_total", &[("group", "billing")]);
    assert_eq!(dead as u64, 1);

    let moved = c
        .redrive_dead_letters(proto::RedriveDeadLettersRequest { group: "billing".into(), max_records: 0 })
        .await
        .unwrap()
        .into_inner()
        .moved;
    assert_eq!(moved, 1);
    let back = common::fetch_all(&mut c, "payments.sent", 0, 1).await;
    assert_eq!(back.len(), 1);
    assert_eq!(headers(&back[0]), BTreeMap::from([("id".to_string(), "evt-1".to_string())]));
    assert_eq!(back[0].value, source.value);
    let again = c
        .redrive_dead_letters(proto::RedriveDeadLettersRequest { group: "billing".into(), max_records: 0 })
        .await
        .unwrap()
        .into_inner()
        .moved;
    assert_eq!(again, 0, "a dead letter is redriven once");
    let redriven = share_fetch(&mut c, "billing", "payments.sent", 10, 0).await;
    assert_eq!((redriven.len(), redriven[0].delivery_count), (1, 1), "the redriven copy is a new record");
    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_lock_redelivers_and_the_last_expiry_dead_letters_with_ack_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path()).await;
    let mut c = client(&server).await;
    create(&mut c, "jobs", 1).await;
    alter(&mut c, "g", &[("auto.offset.reset", "earliest"), ("ack.wait.ms", "200"), ("max.deliveries", "2")]).await;
    produce_values(&mut c, "jobs", ["stuck".to_string()]).await;
    let first = share_fetch(&mut c, "g", "jobs", 10, 0).await;
    assert_eq!(first[0].delivery_count, 1);
    // Not acknowledged: released by expiry, so a waiting fetch gets it again.
    let second = share_fetch(&mut c, "g", "jobs", 10, 5000).await;
    assert_eq!((value(&second[0]), second[0].delivery_count), ("stuck".to_string(), 2));
    // Never acknowledged: after two deliveries it goes to the dead-letter topic.
    let deadline = Instant::now() + Duration::from_secs(10);
    let dead = loop {
        // The dead-letter topic is created on first use.
        let dead = common::fetch(&mut c, "g.dlq", 0, 0).await.map(|r| r.records).unwrap_or_default();
        if !dead.is_empty() || Instant::now() > deadline {
            break dead;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(dead.len(), 1);
    let h = headers(&dead[0]);
    assert_eq!(
        (h["dlq.reason"].as_str(), h["dlq.deliveries"].as_str(), h["dlq.offset"].as_str()),
        ("ack timeout", "2", "0")
    );
    let late = ack(&mut c, "g", vec![ack_of(&second[0], proto::AckType::Accept, "")]).await;
    assert_eq!(late[0].error_code, Code::FailedPrecondition as i32, "{late:?}");
    assert!(share_fetch(&mut c, "g", "jobs", 10, 300).await.is_empty());
    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acks_of_records_not_held_fail_one_by_one_and_bad_requests_name_the_field() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path()).await;
    let mut c = client(&server).await;
    create(&mut c, "jobs", 1).await;
    alter(&mut c, "g", &[("auto.offset.reset", "earliest")]).await;
    produce_values(&mut c, "jobs", ["a".to_string()]).await;
    let got = share_fetch(&mut c, "g", "jobs", 10, 0).await;
    let mut unknown = ack_of(&got[0], proto::AckType::Accept, "");
    unknown.offset = 99;
    let results = ack(&mut c, "g", vec![unknown, ack_of(&got[0], proto::AckType::Accept, "")]).await;
    assert_eq!((results[0].ok, results[0].error_code), (false, Code::FailedPrecondition as i32));
    assert!(results[0].error_message.contains("99"), "{}", results[0].error_message);
    assert!(results[1].ok, "the other entry still applies");
    let twice = ack(&mut c, "g", vec![ack_of(&got[0], proto::AckType::Accept, "")]).await;
    assert_eq!(twice[0].error_code, Code::FailedPrecondition as i32, "already acknowledged");

    // A release for longer than a week is refused on its own.
    produce_values(&mut c, "jobs", ["b".to_string()]).await;
    let request = proto::ShareFetchRequest {
        group: "g".into(),
        topic_pattern: "jobs".into(),
        member_id: "m".repeat(1000),
        ..Default::default()
    };
    let b = c.share_fetch(request).await.unwrap().into_inner().records;
    let mut forever = ack_of(&b[0], proto::AckType::Release, "");
    forever.delay_ms = Some(u64::MAX);
    let refused = ack(&mut c, "g", vec![forever]).await;
    assert_eq!(refused[0].error_code, Code::InvalidArgument as i32, "{refused:?}");
    assert!(refused[0].error_message.contains("delay_ms"), "{refused:?}");
    let d = c.describe_share_group(proto::DescribeShareGroupRequest { group: "g".into() }).await.unwrap().into_inner();
    assert!(d.members.iter().all(|m| m.member_id.len() <= 255), "member ids are cut");
    // A group whose default dead-letter topic could not exist is refused.
    let long = "g".repeat(246);
    let request = proto::ShareFetchRequest { group: long, topic_pattern: "jobs".into(), ..Default::default() };
    let refused = c.share_fetch(request).await.unwrap_err();
    assert_eq!(refused.code(), Code::InvalidArgument);
    assert!(refused.message().contains("dead.letter.topic"), "{}", refused.message());

    let config = HashMap::from([("max.deliveries".to_string(), "0".to_string())]);
    let bad = c.alter_share_group(proto::AlterShareGroupRequest { group: "g".into(), config }).await.unwrap_err();
    assert_eq!(bad.code(), Code::InvalidArgument);
    assert!(bad.message().contains("max.deliveries"), "{}", bad.message());
    let missing = c.describe_share_group(proto::DescribeShareGroupRequest { group: "nope".into() }).await.unwrap_err();
    assert_eq!(missing.code(), Code::NotFound);
    let unknown_group = c
        .acknowledge(proto::AcknowledgeRequest { group: "nope".into(), acknowledgements: vec![] })
        .await
        .unwrap()
        .into_inner();
    assert!(unknown_group.results.is_empty());
    let bad_name = c
        .share_fetch(proto::ShareFetchRequest {
            group: "bad name".into(),
            topic_pattern: "jobs".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(bad_name.code(), Code::InvalidArgument);
    c.delete_share_group(proto::DeleteShareGroupRequest { group: "g".into() }).await.unwrap();
    let gone = c.delete_share_group(proto::DeleteShareGroupRequest { group: "g".into() }).await.unwrap_err();
    assert_eq!(gone.code(), Code::NotFound);
    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_crash_accepted_records_stay_done_and_held_ones_return_with_their_count() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path()).await;
    let mut c = client(&server).await;
    create(&mut c, "jobs", 1).await;
    alter(&mut c, "g", &[("auto.offset.reset", "earliest"), ("ack.wait.ms", "500")]).await;
    produce_values(&mut c, "jobs", (0..6).map(|i| format!("j{i}"))).await;
    let got = share_fetch(&mut c, "g", "jobs", 6, 0).await;
    let acks = vec![
        ack_of(&got[0], proto::AckType::Accept, ""),
        ack_of(&got[1], proto::AckType::Accept, ""),
        ack_of(&got[2], proto::AckType::Reject, "bad"),
    ];
    assert!(ack(&mut c, "g", acks).await.iter().all(|r| r.ok));
    drop(c);
    server.crash().await;

    let server = start(dir.path()).await;
    let mut c = client(&server).await;
    let back = share_fetch(&mut c, "g", "jobs", 10, 5000).await;
    let values: Vec<String> = back.iter().map(value).collect();
    assert_eq!(values, ["j3", "j4", "j5"], "held records return once their locks run out; accepted ones never");
    assert!(back.iter().all(|r| r.delivery_count == 2), "their delivery count was kept");
    assert_eq!(common::fetch_all(&mut c, "g.dlq", 0, 0).await.len(), 1);
    let d = c.describe_share_group(proto::DescribeShareGroupRequest { group: "g".into() }).await.unwrap().into_inner();
    assert_eq!(d.config["ack.wait.ms"], "500", "the config survived too");
    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_push_form_delivers_within_its_in_flight_limit_and_releases_what_it_held_on_close() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path()).await;
    let mut c = client(&server).await;
    create(&mut c, "afrh.capacity.low", 1).await;
    alter(&mut c, "staffing", &[("auto.offset.reset", "earliest")]).await;
    let (tx, rx) = tokio::sync::mpsc::channel(8);
    tx.send(proto::ShareSubscribeRequest {
        group: "staffing".into(),
        topic_pattern: "afrh.*".into(),
        max_in_flight: 3,
        ..Default::default()
    })
    .await
    .unwrap();
    let mut stream = c.share_subscribe(tokio_stream::wrappers::ReceiverStream::new(rx)).await.unwrap().into_inner();
    // Records produced after the stream opened are pushed as they arrive.
    produce_values(&mut c, "afrh.capacity.low", (0..5).map(|i| format!("low-{i}"))).await;
    let mut got = Vec::new();
    while got.len() < 3 {
        let m = tokio::time::timeout(Duration::from_secs(5), stream.message()).await.unwrap().unwrap().unwrap();
        got.extend(m.records);
    }
    assert_eq!(got.iter().map(value).collect::<Vec<_>>(), ["low-0", "low-1", "low-2"]);
    assert!(
        tokio::time::timeout(Duration::from_millis(300), stream.message()).await.is_err(),
        "no more than max_in_flight held at once"
    );
    let acks = got[..2].iter().map(|r| ack_of(r, proto::AckType::Accept, "")).collect();
    tx.send(proto::ShareSubscribeRequest { acknowledgements: acks, ..Default::default() }).await.unwrap();
    let mut results = Vec::new();
    let mut more = Vec::new();
    while results.is_empty() || more.len() < 2 {
        let m = tokio::time::timeout(Duration::from_secs(5), stream.message()).await.unwrap().unwrap().unwrap();
        results.extend(m.results);
        more.extend(m.records);
    }
    assert!(results.iter().all(|r| r.ok) && results.len() == 2, "{results:?}");
    assert_eq!(more.iter().map(value).collect::<Vec<_>>(), ["low-3", "low-4"]);

    // The member goes away holding three records: they go back at once.
    drop(tx);
    drop(stream);
    let mut other = c.clone();
    let started = Instant::now();
    let mut back = Vec::new();
    while back.len() < 3 && started.elapsed() < Duration::from_secs(5) {
        back.extend(share_fetch(&mut other, "staffing", "afrh.*", 10, 1000).await);
    }
    let mut values: Vec<String> = back.iter().map(value).collect();
    values.sort();
    assert_eq!(values, ["low-2", "low-3", "low-4"]);
    assert!(back.iter().all(|r| r.delivery_count == 2));
    assert!(started.elapsed() < Duration::from_secs(5), "released on close, not after ack.wait.ms (30 s)");
    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_retention_deletes_while_held_are_dropped_and_counted_not_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let config = strata::config::BrokerConfig {
        retention_check_interval: Duration::from_millis(100),
        ..common::config(dir.path())
    };
    let server = strata::server::start(config).await.unwrap();
    let mut c = client(&server).await;
    let config = [("segment.bytes", "1024"), ("retention.bytes", "1024")]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    c.create_topic(proto::CreateTopicRequest { name: "events".into(), partitions: 1, config }).await.unwrap();
    alter(&mut c, "g", &[("auto.offset.reset", "earliest")]).await;
    let padded = |i: usize| format!("{i:04}-{}", "x".repeat(200));
    produce_values(&mut c, "events", (0..5).map(padded)).await;
    let held = share_fetch(&mut c, "g", "events", 2, 0).await;
    assert_eq!(held.len(), 2);
    produce_values(&mut c, "events", (5..60).map(padded)).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    let log_start = loop {
        let d = c.describe_topic(proto::DescribeTopicRequest { name: "events".into() }).await.unwrap().into_inner();
        let start = d.partition_descriptions[0].log_start_offset;
        if start > 5 || Instant::now() > deadline {
            break start;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(log_start > 5, "retention ran: log start {log_start}");
    // The next fetch forgets what retention took and goes on from the log start.
    let next = share_fetch(&mut c, "g", "events", 1, 0).await;
    assert_eq!(next[0].record.as_ref().unwrap().offset, log_start);
    let d = c.describe_share_group(proto::DescribeShareGroupRequest { group: "g".into() }).await.unwrap().into_inner();
    assert_eq!((d.partitions[0].dropped_total, d.partitions[0].start_offset), (2, log_start));
    let late = ack(&mut c, "g", vec![ack_of(&held[0], proto::AckType::Accept, "")]).await;
    assert_eq!(late[0].error_code, Code::FailedPrecondition as i32);
    let samples = strata::metrics::scrape::scrape(&server.http_addr().unwrap().to_string()).await.unwrap();
    let dropped = strata::metrics::scrape::sum(&samples, "strata_share_group_dropped_total", &[("group", "g")]);
    assert_eq!(dropped as u64, 2);
    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn share_groups_past_the_limit_are_refused_and_existing_ones_keep_working() {
    let dir = tempfile::tempdir().unwrap();
    let config = strata::config::BrokerConfig { share_groups_max: 2, ..common::config(dir.path()) };
    let server = strata::server::start(config).await.unwrap();
    let mut c = client(&server).await;
    create(&mut c, "jobs", 1).await;
    share_fetch(&mut c, "a", "jobs", 1, 0).await;
    alter(&mut c, "b", &[("max.deliveries", "3")]).await;
    let request = proto::ShareFetchRequest { group: "c".into(), topic_pattern: "jobs".into(), ..Default::default() };
    let refused = c.share_fetch(request).await.unwrap_err();
    assert_eq!(refused.code(), Code::ResourceExhausted);
    assert!(refused.message().contains("share_groups_max"), "{}", refused.message());
    let config = HashMap::from([("max.deliveries".to_string(), "3".to_string())]);
    let refused = c.alter_share_group(proto::AlterShareGroupRequest { group: "c".into(), config }).await.unwrap_err();
    assert_eq!(refused.code(), Code::ResourceExhausted);
    assert!(share_fetch(&mut c, "a", "jobs", 1, 0).await.is_empty(), "an existing group still fetches");
    c.delete_share_group(proto::DeleteShareGroupRequest { group: "b".into() }).await.unwrap();
    share_fetch(&mut c, "c", "jobs", 1, 0).await;
    server.shutdown().await.unwrap();
}
