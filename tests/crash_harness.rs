//! Crash harness: the real `strata` binary under concurrent load (keyed and
//! keyless producers, a pipelined ProduceStream producer, an idempotent
//! producer, a consumer that commits what it reads) is SIGKILLed at random moments, restarted,
//! and checked every time: every acknowledged record is at its acknowledged
//! offset with identical bytes, offsets are dense, nothing appears that was
//! never produced, acknowledged commits are there, idempotent retries after
//! the restart append nothing twice; every few cycles it is stopped with
//! SIGTERM instead and `strata log verify` must be clean.
//!
//! `STRATA_CRASH_CYCLES=200 cargo test --test crash_harness -- --nocapture`
//! runs it longer (default 24 cycles, well under a minute).

mod common;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use common::process::{kill9, run, serve};
use strata::proto::broker_client::BrokerClient;
use strata::proto::{self};
use strata::storage::simfs::Rng;
use tokio_stream::StreamExt;
use tonic::transport::Channel;

const TOPICS: [(&str, u32); 2] = [("crash.a", 3), ("crash.b", 2)];

type Tp = (String, u32);

/// What the test knows: acknowledged records, and every value ever sent.
#[derive(Default)]
struct Ledger {
    acked: HashMap<(Tp, u64), Bytes>,
    sent: HashSet<Bytes>,
    idempotent: HashSet<Bytes>,
    /// Per partition: last acknowledged commit and attempts after it.
    commits: HashMap<Tp, (Option<u64>, Vec<u64>)>,
    records_acked: u64,
    commits_acked: u64,
}

async fn connect(url: &str) -> Option<BrokerClient<Channel>> {
    for _ in 0..50 {
        if let Ok(c) = BrokerClient::connect(url.to_string()).await {
            return Some(c.max_decoding_message_size(64 << 20));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    None
}

fn value(worker: &str, seq: u64, rng: &mut Rng) -> Bytes {
    let pad = "x".repeat(rng.below(200) as usize);
    Bytes::from(format!("{worker}-{seq}-{pad}"))
}

/// A unary producer; returns (acked records, sent values).
async fn producer(
    url: String,
    name: String,
    keyed: bool,
    stop: Arc<AtomicBool>,
    seed: u64,
) -> (Vec<(Tp, u64, Bytes)>, Vec<Bytes>) {
    let (mut acked, mut sent) = (Vec::new(), Vec::new());
    let Some(mut c) = connect(&url).await else {
        return (acked, sent);
    };
    let mut rng = Rng::new(seed);
    let mut seq = 0;
    while !stop.load(Ordering::Relaxed) {
        let (topic, _) = TOPICS[rng.below(2) as usize];
        let n = 1 + rng.below(20);
        let records: Vec<proto::Record> = (0..n)
            .map(|_| {
                seq += 1;
                let v = value(&name, seq, &mut rng);
                sent.push(v.clone());
                proto::Record {
                    key: if keyed { Bytes::from(format!("k{}", rng.below(50))) } else { Bytes::new() },
                    value: v,
                    ..Default::default()
                }
            })
            .collect();
        let req = proto::ProduceRequest { topic: topic.into(), records: records.clone(), ..Default::default() };
        match c.produce(req).await {
            Ok(r) => {
                let results = r.into_inner().results;
                // Records of one partition keep their order within the request.
                let mut by_partition: BTreeMap<u32, Vec<Bytes>> = BTreeMap::new();
                let partitions = TOPICS.iter().find(|t| t.0 == topic).unwrap().1;
                for rec in &records {
                    let p = if rec.key.is_empty() {
                        results
                            .iter()
                            .find(|x| x.last_offset - x.base_offset + 1 == n)
                            .map(|x| x.partition)
                            .unwrap_or(0)
                    } else {
                        strata::broker::partitioner::partition_for_key(&rec.key, partitions)
                    };
                    by_partition.entry(p).or_default().push(rec.value.clone());
                }
                for res in results {
                    let values = by_partition.remove(&res.partition).unwrap_or_default();
                    assert_eq!(
                        values.len() as u64,
                        res.last_offset - res.base_offset + 1,
                        "result covers the partition's records"
                    );
                    for (i, v) in values.into_iter().enumerate() {
                        acked.push(((topic.to_string(), res.partition), res.base_offset + i as u64, v));
                    }
                }
            }
            Err(_) => break,
        }
    }
    (acked, sent)
}

/// A pipelined producer over ProduceStream to one partition.
async fn stream_producer(url: String, stop: Arc<AtomicBool>, seed: u64) -> (Vec<(Tp, u64, Bytes)>, Vec<Bytes>) {
    let (mut acked, mut sent) = (Vec::new(), Vec::new());
    let Some(mut c) = connect(&url).await else {
        return (acked, sent);
    };
    let mut rng = Rng::new(seed);
    let (tx, rx) = tokio::sync::mpsc::channel::<proto::ProduceRequest>(64);
    let mut pending: HashMap<u64, Vec<Bytes>> = HashMap::new();
    let Ok(resp) = c.produce_stream(tokio_stream::wrappers::ReceiverStream::new(rx)).await else {
        return (acked, sent);
    };
    let mut responses = resp.into_inner();
    let mut id = 0u64;
    let mut seq = 0;
    loop {
        while pending.len() < 16 && !stop.load(Ordering::Relaxed) {
            id += 1;
            let values: Vec<Bytes> = (0..1 + rng.below(10))
                .map(|_| {
                    seq += 1;
                    value(&format!("stream{seed}"), seq, &mut rng)
                })
                .collect();
            sent.extend(values.iter().cloned());
            let records = values.iter().map(|v| proto::Record { value: v.clone(), ..Default::default() }).collect();
            pending.insert(id, values);
            let req = proto::ProduceRequest {
                topic: "crash.b".into(),
                partition: Some(1),
                records,
                request_id: id,
                ..Default::default()
            };
            if tx.send(req).await.is_err() {
                return (acked, sent);
            }
        }
        if pending.is_empty() {
            return (acked, sent);
        }
        match responses.next().await {
            Some(Ok(r)) if r.error_code == 0 => {
                let values = pending.remove(&r.request_id).expect("known request id");
                let res = &r.results[0];
                for (i, v) in values.into_iter().enumerate() {
                    acked.push((("crash.b".to_string(), 1), res.base_offset + i as u64, v));
                }
            }
            _ => return (acked, sent),
        }
    }
}

/// An idempotent producer: a failed request is retried with the same
/// producer id and sequence after the restart.
struct Idempotent {
    producer_id: Option<i64>,
    sequence: i32,
    unacked: Option<proto::ProduceRequest>,
}

async fn idempotent_producer(
    url: String,
    mut state: Idempotent,
    stop: Arc<AtomicBool>,
    seed: u64,
) -> (Idempotent, Vec<(Tp, u64, Bytes)>, Vec<Bytes>) {
    let (mut acked, mut sent) = (Vec::new(), Vec::new());
    let Some(mut c) = connect(&url).await else {
        return (state, acked, sent);
    };
    let mut rng = Rng::new(seed);
    if state.producer_id.is_none() {
        match c.init_producer(proto::InitProducerRequest {}).await {
            Ok(r) => state.producer_id = Some(r.into_inner().producer_id),
            Err(_) => return (state, acked, sent),
        }
    }
    loop {
        let req = match state.unacked.take() {
            Some(retry) => retry,
            None if stop.load(Ordering::Relaxed) => return (state, acked, sent),
            None => {
                let n = 1 + rng.below(5) as i32;
                let records: Vec<proto::Record> = (0..n)
                    .map(|i| proto::Record {
                        value: Bytes::from(format!("idem-{}-{}", state.producer_id.unwrap(), state.sequence + i)),
                        ..Default::default()
                    })
                    .collect();
                sent.extend(records.iter().map(|r| r.value.clone()));
                let req = proto::ProduceRequest {
                    topic: "crash.a".into(),
                    partition: Some(0),
                    records,
                    producer_id: state.producer_id,
                    sequence: Some(state.sequence),
                    ..Default::default()
                };
                state.sequence += n;
                req
            }
        };
        match c.produce(req.clone()).await {
            Ok(r) => {
                let res = &r.into_inner().results[0];
                for (i, rec) in req.records.iter().enumerate() {
                    acked.push((("crash.a".to_string(), 0), res.base_offset + i as u64, rec.value.clone()));
                }
            }
            Err(_) => {
                state.unacked = Some(req);
                return (state, acked, sent);
            }
        }
    }
}

/// A consumer of group "crash-group": reads each partition from its
/// committed offset and commits what it read (manual assignment, so no
/// member id). Returns every commit attempt and whether it was acknowledged.
async fn committing_consumer(url: String, stop: Arc<AtomicBool>, seed: u64) -> Vec<(Tp, u64, bool)> {
    let mut log = Vec::new();
    let Some(mut c) = connect(&url).await else { return log };
    let mut rng = Rng::new(seed);
    while !stop.load(Ordering::Relaxed) {
        let (topic, partitions) = TOPICS[rng.below(2) as usize];
        let partition = rng.below(partitions as u64) as u32;
        let req = proto::FetchCommittedOffsetsRequest { group: "crash-group".into(), topic: Some(topic.into()) };
        let committed = match c.fetch_committed_offsets(req).await {
            Ok(r) => r.into_inner().offsets,
            Err(_) => break,
        };
        let from = committed.iter().find(|o| o.partition == partition).map(|o| o.offset).unwrap_or(0);
        let fetch = proto::FetchRequest {
            topic: topic.into(),
            partition,
            from: common::at_offset(from),
            max_records: 1 + rng.below(200) as u32,
            ..Default::default()
        };
        let next = match c.fetch(fetch).await {
            Ok(r) => r.into_inner().next_offset,
            Err(_) => break,
        };
        let tp = (topic.to_string(), partition);
        log.push((tp.clone(), next, false));
        let req = proto::CommitOffsetsRequest {
            group: "crash-group".into(),
            member_id: String::new(),
            generation: 0,
            offsets: vec![proto::OffsetCommit {
                topic: topic.into(),
                partition,
                offset: next,
                metadata: String::new(),
            }],
        };
        match c.commit_offsets(req).await {
            Ok(_) => log.last_mut().expect("just pushed").2 = true,
            Err(_) => break,
        }
    }
    log
}

async fn check(url: &str, ledger: &Ledger) -> u64 {
    let mut c = connect(url).await.expect("broker is back");
    let mut total = 0;
    for (topic, partitions) in TOPICS {
        for partition in 0..partitions {
            let tp = (topic.to_string(), partition);
            let mut next = 0u64;
            let mut log: Vec<Bytes> = Vec::new();
            loop {
                let r = c
                    .fetch(proto::FetchRequest {
                        topic: topic.into(),
                        partition,
                        from: common::at_offset(next),
                        ..Default::default()
                    })
                    .await
                    .unwrap()
                    .into_inner();
                if r.records.is_empty() {
                    break;
                }
                for rec in r.records {
                    assert_eq!(rec.offset, next, "{topic}/{partition}: offsets are dense");
                    next += 1;
                    log.push(rec.value);
                }
            }
            for v in &log {
                assert!(ledger.sent.contains(v), "{topic}/{partition}: a record that was never produced: {v:?}");
            }
            for ((atp, offset), v) in ledger.acked.iter().filter(|((t, _), _)| *t == tp) {
                let _ = atp;
                let got = log.get(*offset as usize);
                assert_eq!(got, Some(v), "{topic}/{partition}: acknowledged record at offset {offset} lost or changed");
            }
            let mut seen = HashSet::new();
            for v in log.iter().filter(|v| ledger.idempotent.contains(*v)) {
                assert!(seen.insert(v.clone()), "{topic}/{partition}: idempotent record appended twice: {v:?}");
            }
            total += log.len() as u64;
        }
    }
    let committed = c
        .fetch_committed_offsets(proto::FetchCommittedOffsetsRequest { group: "crash-group".into(), topic: None })
        .await
        .unwrap()
        .into_inner()
        .offsets;
    for (tp, (acked, attempts)) in &ledger.commits {
        let stored =
            committed.iter().find(|o| (o.topic.as_str(), o.partition) == (tp.0.as_str(), tp.1)).map(|o| o.offset);
        let ok = stored == *acked || stored.is_some_and(|s| attempts.contains(&s));
        assert!(ok, "{tp:?}: committed offset {stored:?}, acknowledged {acked:?}, in flight {attempts:?}");
    }
    total
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_acknowledged_is_lost_across_repeated_sigkills() {
    let cycles: u64 = std::env::var("STRATA_CRASH_CYCLES").ok().and_then(|v| v.parse().ok()).unwrap_or(24);
    let dir = tempfile::tempdir().unwrap();
    let cwd = dir.path().to_path_buf();
    let mut ledger = Ledger::default();
    let mut idem = Idempotent { producer_id: None, sequence: 0, unacked: None };
    let mut rng = Rng::new(0x5eed_1234_abcd_ef01);
    let (mut kills, mut clean_stops) = (0u64, 0u64);
    let (mut broker, mut url) = serve(&cwd);
    {
        let mut c = connect(&url).await.unwrap();
        for (name, partitions) in TOPICS {
            let req = proto::CreateTopicRequest {
                name: name.into(),
                partitions,
                config: [("segment.bytes".to_string(), "65536".to_string())].into(),
            };
            c.create_topic(req).await.unwrap();
        }
    }
    for cycle in 0..cycles {
        let stop = Arc::new(AtomicBool::new(false));
        let seed = rng.next_u64();
        let producers: Vec<_> = (0..3u64)
            .map(|i| tokio::spawn(producer(url.clone(), format!("c{cycle}p{i}"), i % 2 == 0, stop.clone(), seed ^ i)))
            .collect();
        let streamer = tokio::spawn(stream_producer(url.clone(), stop.clone(), seed ^ 99));
        let idem_task = tokio::spawn(idempotent_producer(url.clone(), idem, stop.clone(), seed ^ 7));
        let committer_task = tokio::spawn(committing_consumer(url.clone(), stop.clone(), seed ^ 3));
        tokio::time::sleep(Duration::from_millis(100 + rng.below(400))).await;
        let clean = cycle % 6 == 5;
        if clean {
            let pid = broker.id().to_string();
            std::process::Command::new("kill").args(["-TERM", &pid]).status().unwrap();
            stop.store(true, Ordering::Relaxed);
        } else {
            kill9(&mut broker);
            kills += 1;
        }
        stop.store(true, Ordering::Relaxed);
        for p in producers {
            let (acked, sent) = p.await.unwrap();
            ledger.sent.extend(sent);
            ledger.records_acked += acked.len() as u64;
            for (tp, o, v) in acked {
                ledger.acked.insert((tp, o), v);
            }
        }
        let (acked, sent) = streamer.await.unwrap();
        ledger.sent.extend(sent);
        ledger.records_acked += acked.len() as u64;
        for (tp, o, v) in acked {
            ledger.acked.insert((tp, o), v);
        }
        let (state, acked, sent) = idem_task.await.unwrap();
        idem = state;
        ledger.idempotent.extend(sent.iter().cloned());
        ledger.sent.extend(sent);
        ledger.records_acked += acked.len() as u64;
        for (tp, o, v) in acked {
            ledger.acked.insert((tp, o), v);
        }
        for (tp, offset, ok) in committer_task.await.unwrap() {
            let entry = ledger.commits.entry(tp).or_default();
            if ok {
                ledger.commits_acked += 1;
                *entry = (Some(offset), Vec::new());
            } else {
                entry.1.push(offset);
            }
        }
        if clean {
            assert!(broker.wait().unwrap().success(), "SIGTERM exits cleanly");
            clean_stops += 1;
            let (ok, out, err) = run(&cwd, &url, "strata log verify ./data");
            assert!(ok, "log verify after a clean stop:\n{out}{err}");
        }
        (broker, url) = serve(&cwd);
        let total = check(&url, &ledger).await;
        if cycle % 6 == 0 {
            eprintln!("cycle {cycle}: {total} records in the log, {} acknowledged so far", ledger.records_acked);
        }
    }
    // The idempotent producer's last retry, if any, lands exactly once.
    let (state, acked, _) = idempotent_producer(url.clone(), idem, Arc::new(AtomicBool::new(true)), 1).await;
    assert!(state.unacked.is_none());
    for (tp, o, v) in acked {
        ledger.acked.insert((tp, o), v);
    }
    check(&url, &ledger).await;
    let pid = broker.id().to_string();
    std::process::Command::new("kill").args(["-TERM", &pid]).status().unwrap();
    assert!(broker.wait().unwrap().success());
    let (ok, out, err) = run(&cwd, &url, "strata log verify ./data");
    assert!(ok, "{out}{err}");
    eprintln!(
        "crash harness: {} records acknowledged, {kills} SIGKILLs, {clean_stops} clean stops, {} commits acknowledged, lost = 0",
        ledger.records_acked,
        ledger.commits_acked
    );
    assert!(kills >= 20, "at least 20 SIGKILLs");
    assert!(ledger.records_acked > 0);
}
