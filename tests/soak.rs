//! Bounded soak: 8 producers and 4 consumers against the real binary for a
//! minute (`STRATA_SOAK_SECS` runs it longer). No errors, no lost or
//! duplicated acknowledged record, broker RSS flat after warm-up, open file
//! descriptors bounded. Prints the figures.

mod common;

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::process::serve;
use strata::proto;
use strata::proto::broker_client::BrokerClient;

const PARTITIONS: u32 = 4;

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

/// Files under `dir` (recursively) whose extension is `ext`.
fn count_files(dir: &std::path::Path, ext: &str) -> usize {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .map(|p| if p.is_dir() { count_files(&p, ext) } else { usize::from(p.extension().is_some_and(|x| x == ext)) })
        .sum()
}

fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map(|d| d.count()).unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eight_producers_four_consumers_for_a_minute() {
    let secs: u64 = std::env::var("STRATA_SOAK_SECS").ok().and_then(|v| v.parse().ok()).unwrap_or(60);
    let dir = tempfile::tempdir().unwrap();
    let (mut broker, url) = serve(dir.path());
    let pid = broker.id();
    let mut admin = BrokerClient::connect(url.clone()).await.unwrap();
    admin
        .create_topic(proto::CreateTopicRequest {
            name: "soak".into(),
            partitions: PARTITIONS,
            config: [("segment.bytes".to_string(), (8 << 20).to_string())].into(),
        })
        .await
        .unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let producers: Vec<_> = (0..8u32)
        .map(|i| {
            let (url, stop) = (url.clone(), stop.clone());
            tokio::spawn(async move {
                let mut c = BrokerClient::connect(url).await.unwrap();
                let mut acked: Vec<(u32, u64, Bytes)> = Vec::new();
                let mut seq = 0u64;
                let started = Instant::now();
                while !stop.load(Ordering::Relaxed) {
                    let values: Vec<Bytes> = (0..50)
                        .map(|_| {
                            seq += 1;
                            Bytes::from(format!("p{i}-{seq:010}-{}", "v".repeat(180)))
                        })
                        .collect();
                    let records =
                        values.iter().map(|v| proto::Record { value: v.clone(), ..Default::default() }).collect();
                    let partition = (i + seq as u32) % PARTITIONS;
                    let r = c
                        .produce(proto::ProduceRequest {
                            topic: "soak".into(),
                            partition: Some(partition),
                            records,
                            ..Default::default()
                        })
                        .await
                        .expect("no produce errors during the soak")
                        .into_inner();
                    let base = r.results[0].base_offset;
                    acked.extend(values.into_iter().enumerate().map(|(k, v)| (partition, base + k as u64, v)));
                    // About 2,000 records/s per producer: a steady load, not a disk filler.
                    let due = Duration::from_millis(seq / 2);
                    if let Some(wait) = due.checked_sub(started.elapsed()) {
                        tokio::time::sleep(wait).await;
                    }
                }
                acked
            })
        })
        .collect();
    let consumers: Vec<_> = (0..PARTITIONS)
        .map(|partition| {
            let (url, stop) = (url.clone(), stop.clone());
            tokio::spawn(async move {
                let mut c = BrokerClient::connect(url).await.unwrap().max_decoding_message_size(64 << 20);
                let mut got: Vec<(u64, Bytes)> = Vec::new();
                let mut next = 0u64;
                loop {
                    let r = c
                        .fetch(proto::FetchRequest {
                            topic: "soak".into(),
                            partition,
                            from: common::at_offset(next),
                            max_wait_ms: 200,
                            ..Default::default()
                        })
                        .await
                        .expect("no fetch errors during the soak")
                        .into_inner();
                    if r.records.is_empty() && stop.load(Ordering::Relaxed) && next == r.high_watermark {
                        return got;
                    }
                    for rec in r.records {
                        assert_eq!(rec.offset, next, "dense offsets");
                        next += 1;
                        got.push((rec.offset, rec.value));
                    }
                }
            })
        })
        .collect();

    let warm_up = Duration::from_secs(secs / 3);
    tokio::time::sleep(warm_up).await;
    let rss_warm = rss_kib(pid);
    let mut rss_max = rss_warm;
    let mut fds_max = open_fds(pid);
    let end = Instant::now() + Duration::from_secs(secs) - warm_up;
    while Instant::now() < end {
        tokio::time::sleep(Duration::from_secs(1)).await;
        rss_max = rss_max.max(rss_kib(pid));
        fds_max = fds_max.max(open_fds(pid));
    }
    let rss_end = rss_kib(pid);
    stop.store(true, Ordering::Relaxed);
    let mut acked: HashMap<(u32, u64), Bytes> = HashMap::new();
    for p in producers {
        for (partition, offset, v) in p.await.unwrap() {
            assert!(acked.insert((partition, offset), v).is_none(), "two acks for one offset");
        }
    }
    let mut seen = HashSet::new();
    let mut consumed = 0usize;
    for (partition, c) in consumers.into_iter().enumerate() {
        for (offset, v) in c.await.unwrap() {
            assert!(seen.insert(v.clone()), "record consumed twice: {v:?}");
            assert_eq!(acked.get(&(partition as u32, offset)), Some(&v), "consumed record matches its ack");
            consumed += 1;
        }
    }
    assert_eq!(consumed, acked.len(), "every acknowledged record was consumed, nothing else");
    eprintln!(
        "soak {secs}s: {} records acked and consumed, broker RSS warm {} MiB, end {} MiB, max {} MiB, max fds {fds_max}, {} segments",
        acked.len(),
        rss_warm / 1024,
        rss_end / 1024,
        rss_max / 1024,
        count_files(dir.path(), "log")
    );
    assert!(rss_end <= rss_warm * 3 / 2 + 32 * 1024, "RSS grew from {rss_warm} KiB to {rss_end} KiB after warm-up");
    // The broker holds three descriptors per segment (log and two indexes)
    // by design, and segments accumulate with retention; anything past
    // that plus a fixed allowance (sockets, runtime) is a leak.
    let segments = count_files(dir.path(), "log");
    assert!(fds_max <= 64 + 3 * segments, "open file descriptors: {fds_max} for {segments} segments");
    broker.kill().unwrap();
    broker.wait().unwrap();
}
