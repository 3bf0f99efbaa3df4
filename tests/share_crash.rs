//! Share groups under SIGKILL: four workers fetch and accept, release and
//! reject at random while the real `strata` binary is killed with SIGKILL
//! and restarted, again and again. After every restart: no record whose
//! ACCEPT was acknowledged is handed out again, and every delivery count is
//! higher than the last one seen for that record (counts are kept). In the
//! end every record is either accepted or dead-lettered, and every dead
//! letter is the source record byte for byte plus its `dlq.*` headers.
//!
//! `STRATA_SHARE_CRASH_CYCLES=50 cargo test --test share_crash -- --nocapture`
//! runs it longer (default 8 cycles).

mod common;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::process::{kill9, serve};
use strata::proto::broker_client::BrokerClient;
use strata::proto::{self};
use strata::storage::simfs::Rng;
use tonic::transport::Channel;

const TOPIC: &str = "work";
const PARTITIONS: u32 = 2;
/// Records produced before each cycle's workers start.
const RECORDS_PER_CYCLE: u64 = 100;
const GROUP: &str = "workers";

type Key = (u32, u64);

async fn connect(url: &str) -> Option<BrokerClient<Channel>> {
    for _ in 0..100 {
        if let Ok(c) = BrokerClient::connect(url.to_string()).await {
            return Some(c.max_decoding_message_size(64 << 20));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    None
}

/// Produces one cycle's records, each with an `id` header.
async fn produce(c: &mut BrokerClient<Channel>, first: u64) {
    for i in first..first + RECORDS_PER_CYCLE {
        let mut record =
            common::record(&format!("k{}", i % 7), &format!("record-{i}-{}", "v".repeat((i % 50) as usize)));
        record.headers.insert("id".into(), format!("evt-{i}").into_bytes().into());
        c.produce(proto::ProduceRequest { topic: TOPIC.into(), records: vec![record], ..Default::default() })
            .await
            .unwrap();
    }
}

/// What one worker saw in one cycle.
#[derive(Default)]
struct Seen {
    /// Every delivery: record, delivery count.
    deliveries: Vec<(Key, u32)>,
    /// ACCEPTs the broker confirmed.
    accepted: Vec<Key>,
    /// ACCEPTs sent whose answer was lost (the broker died): maybe done.
    maybe_accepted: Vec<Key>,
}

async fn worker(url: String, stop: Arc<AtomicBool>, seed: u64, accept_all: bool) -> Seen {
    let mut seen = Seen::default();
    let Some(mut c) = connect(&url).await else { return seen };
    let mut rng = Rng::new(seed);
    while !stop.load(Ordering::Relaxed) {
        let request = proto::ShareFetchRequest {
            group: GROUP.into(),
            topic_pattern: TOPIC.into(),
            max_records: 1 + rng.below(20) as u32,
            max_wait_ms: 100,
            ..Default::default()
        };
        let Ok(records) = c.share_fetch(request).await else { break };
        let records = records.into_inner().records;
        if records.is_empty() && accept_all {
            break;
        }
        let mut acks = Vec::new();
        let mut accepts = Vec::new();
        for r in records {
            let s = r.record.unwrap();
            let key = (s.partition, s.offset);
            seen.deliveries.push((key, r.delivery_count));
            let roll = if accept_all { 0 } else { rng.below(10) };
            let kind = match roll {
                0..=5 => proto::AckType::Accept,
                6..=8 => proto::AckType::Release,
                _ => proto::AckType::Reject,
            };
            if kind == proto::AckType::Accept {
                accepts.push(key);
            }
            acks.push(proto::Acknowledgement {
                topic: s.topic,
                partition: s.partition,
                offset: s.offset,
                r#type: kind as i32,
                delay_ms: Some(rng.below(50)),
                reason: format!("{kind:?} by worker"),
            });
        }
        if acks.is_empty() {
            continue;
        }
        if !accept_all {
            // The work each record stands for, so that a kill finds records held.
            tokio::time::sleep(Duration::from_millis(rng.below(30))).await;
        }
        let kinds: Vec<i32> = acks.iter().map(|a| a.r#type).collect();
        match c.acknowledge(proto::AcknowledgeRequest { group: GROUP.into(), acknowledgements: acks }).await {
            Ok(r) => {
                let results = r.into_inner().results;
                let mut accepts = accepts.into_iter();
                for (kind, result) in kinds.iter().zip(&results) {
                    if *kind == proto::AckType::Accept as i32 {
                        let key = accepts.next().unwrap();
                        if result.ok {
                            seen.accepted.push(key);
                        }
                    }
                }
            }
            Err(_) => {
                seen.maybe_accepted.extend(accepts);
                break;
            }
        }
    }
    seen
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_accepts_survive_sigkill_and_every_record_ends_accepted_or_dead_lettered() {
    let cycles: u64 = std::env::var("STRATA_SHARE_CRASH_CYCLES").ok().and_then(|v| v.parse().ok()).unwrap_or(8);
    let dir = tempfile::tempdir().unwrap();
    let cwd = dir.path().to_path_buf();
    let mut rng = Rng::new(0x5ba2_e0c4_a5e1_0001);
    let (mut broker, mut url) = serve(&cwd);
    let mut sources: HashMap<Key, proto::StoredRecord> = HashMap::new();
    {
        let mut c = connect(&url).await.unwrap();
        let req = proto::CreateTopicRequest { name: TOPIC.into(), partitions: PARTITIONS, config: Default::default() };
        c.create_topic(req).await.unwrap();
        let config: HashMap<String, String> = [
            ("auto.offset.reset", "earliest"),
            ("ack.wait.ms", "400"),
            ("max.deliveries", "4"),
            ("backoff.ms", "0,20,50"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        c.alter_share_group(proto::AlterShareGroupRequest { group: GROUP.into(), config }).await.unwrap();
    }

    let mut accepted: HashSet<Key> = HashSet::new();
    let mut maybe_accepted: HashSet<Key> = HashSet::new();
    let mut last_count: HashMap<Key, u32> = HashMap::new();
    let mut deliveries = 0u64;
    // One cycle's deliveries, from all its workers: none of a record
    // accepted in an earlier cycle, and per record distinct counts, all
    // above the counts seen in earlier cycles.
    let mut check = |seen: Vec<Seen>, accepted_before: &HashSet<Key>, accepted: &mut HashSet<Key>| {
        let mut counts: BTreeMap<Key, Vec<u32>> = BTreeMap::new();
        for s in seen {
            for (key, count) in s.deliveries {
                assert!(!accepted_before.contains(&key), "{key:?} was accepted before the crash and delivered again");
                counts.entry(key).or_default().push(count);
                deliveries += 1;
            }
            accepted.extend(s.accepted);
            maybe_accepted.extend(s.maybe_accepted);
        }
        for (key, mut c) in counts {
            c.sort_unstable();
            let before = last_count.get(&key).copied().unwrap_or(0);
            assert!(c[0] > before, "{key:?} delivered with count {} after count {before}: counts must be kept", c[0]);
            assert!(c.windows(2).all(|w| w[0] < w[1]), "{key:?} delivered twice with one count: {c:?}");
            last_count.insert(key, *c.last().unwrap());
        }
    };
    for cycle in 0..cycles {
        let mut c = connect(&url).await.unwrap();
        produce(&mut c, cycle * RECORDS_PER_CYCLE).await;
        let stop = Arc::new(AtomicBool::new(false));
        let seed = rng.next_u64();
        let workers: Vec<_> =
            (0..4u64).map(|i| tokio::spawn(worker(url.clone(), stop.clone(), seed ^ i, false))).collect();
        tokio::time::sleep(Duration::from_millis(200 + rng.below(500))).await;
        kill9(&mut broker);
        stop.store(true, Ordering::Relaxed);
        let accepted_before = accepted.clone();
        let mut seen = Vec::new();
        for w in workers {
            seen.push(w.await.unwrap());
        }
        check(seen, &accepted_before, &mut accepted);
        (broker, url) = serve(&cwd);
        if cycle % 4 == 0 {
            eprintln!("cycle {cycle}: {} accepted so far", accepted.len());
        }
    }
    // Drain: one worker accepts whatever is left (held records come back
    // once their locks, kept across the crash, run out).
    let accepted_before = accepted.clone();
    let mut idle = 0;
    while idle < 3 {
        let seen = worker(url.clone(), Arc::new(AtomicBool::new(false)), 1, true).await;
        idle = if seen.deliveries.is_empty() { idle + 1 } else { 0 };
        check(vec![seen], &accepted_before, &mut accepted);
        tokio::time::sleep(Duration::from_millis(250)).await;
    }

    // Dead letters are appended by the ack that rejected them, or by the
    // background pass for the last lock expiry: wait until the group has
    // nothing left in flight.
    let mut c = connect(&url).await.unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let d = c
            .describe_share_group(proto::DescribeShareGroupRequest { group: GROUP.into() })
            .await
            .unwrap()
            .into_inner();
        let busy: u64 = d.partitions.iter().map(|p| p.acquired + p.available + p.dead_lettering).sum();
        let behind = d.partitions.iter().any(|p| p.start_offset < p.high_watermark);
        if busy == 0 && !behind {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "the group never finished: {d:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    for p in 0..PARTITIONS {
        for r in common::fetch_all(&mut c, TOPIC, p, 0).await {
            sources.insert((p, r.offset), r);
        }
    }
    assert_eq!(sources.len() as u64, cycles * RECORDS_PER_CYCLE);
    let dead = common::fetch_all(&mut c, &format!("{GROUP}.dlq"), 0, 0).await;
    let mut dead_lettered: BTreeMap<Key, u64> = BTreeMap::new();
    for d in &dead {
        let h: HashMap<&str, &[u8]> = d.headers.iter().map(|(k, v)| (k.as_str(), v.as_ref())).collect();
        let partition: u32 = std::str::from_utf8(h["dlq.partition"]).unwrap().parse().unwrap();
        let offset: u64 = std::str::from_utf8(h["dlq.offset"]).unwrap().parse().unwrap();
        assert_eq!(h["dlq.topic"], TOPIC.as_bytes());
        assert_eq!(h["dlq.group"], GROUP.as_bytes());
        let source = &sources[&(partition, offset)];
        assert_eq!((&d.key, &d.value, d.timestamp_ms), (&source.key, &source.value, source.timestamp_ms));
        assert_eq!(h["id"], source.headers["id"].as_ref(), "the source's headers are kept");
        let reason = std::str::from_utf8(h["dlq.reason"]).unwrap();
        assert!(["Reject by worker", "Release by worker", "ack timeout"].contains(&reason), "{reason}");
        *dead_lettered.entry((partition, offset)).or_default() += 1;
    }
    let duplicates: u64 = dead_lettered.values().map(|n| n - 1).sum();
    for key in sources.keys() {
        let done = accepted.contains(key) || maybe_accepted.contains(key) || dead_lettered.contains_key(key);
        assert!(done, "{key:?} was neither accepted nor dead-lettered");
    }
    for key in &accepted {
        assert!(!dead_lettered.contains_key(key), "{key:?} was accepted and dead-lettered");
    }
    eprintln!(
        "share crash: {cycles} SIGKILLs, {deliveries} deliveries, {} accepted, {} dead-lettered ({duplicates} repeated by a crash), lost = 0",
        accepted.len(),
        dead_lettered.len()
    );
    assert!(!dead_lettered.is_empty() && !accepted.is_empty());
    kill9(&mut broker);
}
