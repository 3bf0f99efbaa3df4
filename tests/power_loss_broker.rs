//! Power-loss simulation of the whole broker (see tests/power_loss.rs for
//! the partition log alone): topics created and deleted, records produced
//! to `always` and `never` topics, group offsets committed and producer ids
//! handed out, on `SimFs`, stopped at every N-th file system operation and
//! reopened from the image a power cut (and a process crash) would leave.
//!
//! After each reopen: a topic whose create was acknowledged (and not
//! deleted since) exists, one whose delete was acknowledged does not;
//! every acknowledged produce to an `always` topic is there (to any topic,
//! after a process crash), and no produce is half there; every partition
//! holds only records produced to it; each acknowledged commit is there
//! (or a later one that was in flight); InitProducer never hands out an id
//! it handed out before the crash.
//!
//! `STRATA_POWER_LOSS_STEP=1 STRATA_POWER_LOSS_SEEDS=10 cargo test
//! --release --test power_loss_broker -- --nocapture` tries more.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::Arc;

use bytes::Bytes;
use strata::broker::{Broker, Caller, CommitOffsets, CreateTopic, FetchRequest, Fetched, Position, ProduceRequest};
use strata::config::BrokerConfig;
use strata::group::offsets::Committed;
use strata::storage::batch::Record;
use strata::storage::simfs::{Loss, Rng, SimFs};
use strata::storage::{Clock, ManualClock};

const T0: i64 = 1_700_000_000_000;
const TOPICS: [&str; 3] = ["orders", "logs.never", "audit"];

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn caller() -> Caller {
    Caller::internal("power-loss test")
}

fn config() -> BrokerConfig {
    BrokerConfig { data_dir: PathBuf::from("/data"), ..BrokerConfig::default() }
}

/// What is known of one topic name.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
enum Known {
    /// Its last create was acknowledged (generation), nothing after it failed.
    Exists(u32),
    /// Its last delete was acknowledged, nothing after it failed.
    Gone,
    /// An operation on it failed: either may hold.
    #[default]
    Unknown,
}

/// One produce: partition, base offset (if acknowledged), values, acknowledged.
type Produced = (u32, u64, Vec<Bytes>, bool);

#[derive(Default)]
struct Ledger {
    topics: HashMap<String, Known>,
    /// Generation counter per name (each create attempt is a new one).
    generation: HashMap<String, u32>,
    /// (topic, generation) -> its produces.
    produced: HashMap<(String, u32), Vec<Produced>>,
    /// (topic, partition) -> (last acked commit, attempts after it).
    commits: BTreeMap<(String, u32), (Option<u64>, Vec<u64>)>,
    producer_ids: Vec<i64>,
}

async fn workload(broker: &Arc<Broker>, fs: &SimFs, clock: &ManualClock, seed: u64) -> Ledger {
    let mut rng = Rng::new(seed);
    let mut ledger = Ledger::default();
    for name in TOPICS {
        ledger.topics.insert(name.to_string(), Known::Gone);
    }
    for _ in 0..60 {
        if fs.is_frozen() {
            break;
        }
        clock.advance(rng.below(500) as i64);
        let name = TOPICS[rng.below(TOPICS.len() as u64) as usize].to_string();
        let exists = broker.topic(&name).is_ok();
        match rng.below(10) {
            0 | 1 if !exists => {
                let generation = ledger.generation.entry(name.clone()).or_default();
                *generation += 1;
                let generation = *generation;
                let mut overrides = BTreeMap::new();
                if name.ends_with(".never") {
                    overrides.insert("flush.policy".to_string(), "never".to_string());
                }
                overrides.insert("segment.bytes".to_string(), "2048".to_string());
                let partitions = 1 + rng.below(2) as u32;
                let create = CreateTopic { name: name.clone(), partitions: Some(partitions), config: overrides };
                let known = match broker.create_topic(&caller(), create).await {
                    Ok(_) => Known::Exists(generation),
                    Err(_) => Known::Unknown,
                };
                ledger.topics.insert(name, known);
            }
            2 if exists => {
                let known = match broker.delete_topic(&caller(), &name).await {
                    Ok(()) => Known::Gone,
                    Err(_) => Known::Unknown,
                };
                // A deleted topic's committed offsets go with it (as in
                // Kafka), acknowledged or not.
                ledger.commits.retain(|(t, _), _| *t != name);
                ledger.topics.insert(name, known);
            }
            3 if exists => {
                let partitions = broker.topic(&name).unwrap().partitions.len() as u32;
                let partition = rng.below(partitions as u64) as u32;
                let hw = broker.partition(&name, partition).unwrap().log.high_watermark();
                let offset = rng.below(hw + 1);
                let entry = ledger.commits.entry((name.clone(), partition)).or_default();
                entry.1.push(offset);
                let c = Committed { offset, metadata: format!("m{offset}") };
                let commit = CommitOffsets {
                    group: "g".into(),
                    member_id: String::new(),
                    generation: 0,
                    offsets: vec![(name.clone(), partition, c)],
                };
                if broker.commit_offsets(&caller(), commit).is_ok() {
                    *entry = (Some(offset), Vec::new());
                }
            }
            4 => {
                if let Ok(id) = broker.init_producer(&caller()) {
                    ledger.producer_ids.push(id);
                }
            }
            _ if exists => {
                let generation = ledger.generation.get(&name).copied().unwrap_or(0);
                let partitions = broker.topic(&name).unwrap().partitions.len() as u32;
                let partition = rng.below(partitions as u64) as u32;
                let values: Vec<Bytes> = (0..1 + rng.below(3))
                    .map(|i| {
                        Bytes::from(format!(
                            "{name}/{generation}/{}-{i}-{}",
                            rng.next_u64(),
                            "x".repeat(rng.below(200) as usize)
                        ))
                    })
                    .collect();
                let records = values
                    .iter()
                    .map(|v| Record { value: v.clone(), timestamp_ms: clock.now_ms(), ..Record::default() })
                    .collect();
                let request = ProduceRequest {
                    topic: name.clone(),
                    partition: Some(partition),
                    records,
                    producer: None,
                    batch: None,
                };
                let Ok(pending) = broker.produce_pending(&caller(), request).await else { continue };
                let produced = ledger.produced.entry((name.clone(), generation)).or_default();
                match pending.wait().await {
                    Ok(results) => produced.push((partition, results.results[0].base_offset, values, true)),
                    // Written, maybe: its offsets are not known, its values are.
                    Err(_) => produced.push((partition, u64::MAX, values, false)),
                }
            }
            _ => {}
        }
    }
    ledger
}

async fn check(broker: &Arc<Broker>, ledger: &Ledger, process_crash: bool, what: &str) {
    for (name, known) in &ledger.topics {
        let exists = broker.topic(name).is_ok();
        match known {
            Known::Exists(generation) => {
                assert!(exists, "{what}: topic {name} was created (acknowledged) and is gone");
                let produced = ledger.produced.get(&(name.clone(), *generation)).cloned().unwrap_or_default();
                let always = !name.ends_with(".never") || process_crash;
                let topic = broker.topic(name).unwrap();
                for p in &topic.partitions {
                    let fetch = FetchRequest {
                        topic: name.clone(),
                        partition: p.id,
                        from: Position::Earliest,
                        records_max: 100_000,
                        bytes_max: 16 << 20,
                        wait: std::time::Duration::ZERO,
                        raw: false,
                    };
                    let Fetched::Records(read) = broker.fetch(&caller(), fetch).await.unwrap() else { unreachable!() };
                    assert_eq!(read.next_offset, read.high_watermark, "{what}: {name}/{}: one read gets all", p.id);
                    let got: Vec<(u64, Bytes)> = read.records.iter().map(|r| (r.offset, r.value.clone())).collect();
                    // Each stored record belongs to a produce to this
                    // partition, and each produce is all there or not at all.
                    let mut index: HashMap<&Bytes, u64> = HashMap::new();
                    for (offset, v) in &got {
                        index.insert(v, *offset);
                    }
                    for (partition, base, values, acked) in &produced {
                        if *partition != p.id {
                            continue;
                        }
                        let present: Vec<Option<&u64>> = values.iter().map(|v| index.get(v)).collect();
                        let all = present.iter().all(|o| o.is_some());
                        let none = present.iter().all(|o| o.is_none());
                        assert!(all || none, "{what}: a produce to {name}/{} is half visible", p.id);
                        if *acked {
                            if always {
                                assert!(all, "{what}: an acknowledged produce to {name}/{} at {base} is lost", p.id);
                            }
                            if all {
                                assert_eq!(*present[0].unwrap(), *base, "{what}: moved from its acknowledged offset");
                            }
                        }
                        index.retain(|v, _| !values.contains(v));
                    }
                    assert!(index.is_empty(), "{what}: {name}/{} holds records never produced there: {index:?}", p.id);
                }
            }
            Known::Gone => assert!(!exists, "{what}: topic {name} was deleted (acknowledged) and is back"),
            Known::Unknown => {}
        }
    }
    for ((topic, partition), (acked, later)) in &ledger.commits {
        let got = broker.committed_offsets(&caller(), "g", Some(topic)).into_iter().find(|(_, p, _)| p == partition);
        let got = got.map(|(_, _, c)| c.offset);
        if let Some(acked) = acked {
            let ok = got == Some(*acked) || later.iter().any(|o| got == Some(*o));
            assert!(ok, "{what}: commit of {topic}/{partition} at {acked} acknowledged, found {got:?}");
        }
    }
    if let Some(max) = ledger.producer_ids.iter().max() {
        let id = broker.init_producer(&caller()).unwrap();
        assert!(id > *max, "{what}: producer id {id} handed out again (had {max})");
    }
}

fn simulate() -> u64 {
    let step = env_u64("STRATA_POWER_LOSS_STEP", 4).max(1);
    let seeds = env_u64("STRATA_POWER_LOSS_SEEDS", 3);
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let mut tried = 0;
    for seed in 1..=seeds {
        let total = runtime.block_on(async {
            let fs = SimFs::default();
            let clock = ManualClock::new(T0);
            let broker = Broker::open(config(), Arc::new(fs.clone()), Arc::new(clock.clone())).unwrap();
            workload(&broker, &fs, &clock, seed).await;
            fs.ops()
        });
        let mut n = 1 + seed % step;
        while n <= total {
            runtime.block_on(async {
                let fs = SimFs::default();
                let clock = ManualClock::new(T0);
                fs.crash_after(n);
                let ledger = match Broker::open(config(), Arc::new(fs.clone()), Arc::new(clock.clone())) {
                    Ok(broker) => workload(&broker, &fs, &clock, seed).await,
                    Err(_) => Ledger::default(),
                };
                let images = [
                    (fs.power_loss(Loss::Strict), false, "power loss"),
                    (fs.power_loss(Loss::Chaos(seed * 7919 + n)), false, "power loss, chaos"),
                    (fs.process_crash(), true, "process crash"),
                ];
                for (image, process_crash, kind) in images {
                    let what = format!("seed {seed}, crash at op {n} of {total}, {kind}");
                    let broker = Broker::open(config(), Arc::new(image), Arc::new(clock.clone()))
                        .unwrap_or_else(|e| panic!("{what}: reopening the broker failed: {e}"));
                    check(&broker, &ledger, process_crash, &what).await;
                }
            });
            tried += 1;
            n += step;
        }
    }
    tried
}

#[test]
fn acknowledged_topics_records_commits_and_producer_ids_survive_power_loss() {
    let tried = simulate();
    eprintln!("broker: {tried} crash points, 3 images each");
    assert!(tried > 50);
}
