//! `--protocol kafka --client rskafka`: the Kafka loads driven by rskafka
//! (InfluxData's pure-Rust client, the one InfluxDB 3 runs), which, like the
//! gRPC `--raw` rows, encodes whole record batches and decodes fetched ones
//! in the client with little per-record work. librdkafka spends about three
//! times the broker's CPU per byte on its side (per-message queues and
//! copies), so on a machine where client and broker share the cores its
//! rows measure librdkafka; these measure the broker's Kafka path.
//!
//! A producer keeps `--in-flight` Produce requests of `--batch` records
//! outstanding on its own connection (acks=all); latency is per request,
//! send -> acknowledged, as in the gRPC rows. A consumer reads its
//! partitions in turn with Fetch requests of up to `FETCH_BYTES`.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::stream::{FuturesUnordered, StreamExt};
use rskafka::client::partition::{Compression, PartitionClient, UnknownTopicHandling};
use rskafka::client::{Client, ClientBuilder};
use rskafka::record::Record;

use super::load::claim;
use super::report::Meter;
use super::BenchArgs;

/// Bytes one Fetch asks for (librdkafka's fetch.max.bytes is 50 MiB, its
/// per-partition default 1 MiB; raw gRPC Fetch reads up to 8 MiB).
const FETCH_BYTES: i32 = 8 << 20;

/// The version string the bench reports.
pub const CLIENT: &str = "rskafka 0.6";

async fn connect(bootstrap: &str) -> anyhow::Result<Client> {
    ClientBuilder::new(vec![bootstrap.to_string()])
        .max_message_size(FETCH_BYTES as usize + (1 << 20))
        .build()
        .await
        .map_err(|e| anyhow::anyhow!("cannot connect to {bootstrap}: {e}"))
}

async fn partition(client: &Client, topic: &str, p: i32) -> anyhow::Result<PartitionClient> {
    client
        .partition_client(topic, p, UnknownTopicHandling::Retry)
        .await
        .map_err(|e| anyhow::anyhow!("partition {topic}/{p}: {e}"))
}

/// Runs the producers until the budget or deadline is spent.
pub async fn run_producers(bootstrap: &str, args: &BenchArgs, meter: &Arc<Meter>) -> anyhow::Result<()> {
    let budget = Arc::new(AtomicI64::new(args.record_budget().min(i64::MAX as u64) as i64));
    let deadline = args.duration.map(|d| Instant::now() + d);
    let per_producer_rate = args.rate as f64 / args.producers.max(1) as f64;
    let payload: Arc<[u8]> = vec![b'x'; args.record_bytes].into();
    let mut tasks = Vec::new();
    for p in 0..args.producers.max(1) {
        let client = connect(bootstrap).await?;
        let mut parts = Vec::new();
        for p in 0..args.partitions.max(1) as i32 {
            parts.push(Arc::new(partition(&client, &args.topic, p).await?));
        }
        let (meter, budget, payload) = (meter.clone(), budget.clone(), payload.clone());
        let (batch, depth) = (args.batch.max(1), args.in_flight.max(1));
        tasks.push(tokio::spawn(async move {
            let _client = client;
            let started = Instant::now();
            let mut sent = 0u64;
            let mut outstanding = FuturesUnordered::new();
            let mut more = true;
            loop {
                while more && outstanding.len() < depth {
                    let n = if deadline.is_some_and(|d| Instant::now() >= d) { 0 } else { claim(&budget, batch) };
                    if n == 0 {
                        more = false;
                        break;
                    }
                    if per_producer_rate > 0.0 {
                        let due = started + Duration::from_secs_f64(sent as f64 / per_producer_rate);
                        tokio::time::sleep_until(due.into()).await;
                    }
                    let pc = parts[(p + sent as usize / batch) % parts.len()].clone();
                    sent += n as u64;
                    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
                    let timestamp =
                        rskafka::chrono::DateTime::from_timestamp_millis(now.as_millis() as i64).unwrap_or_default();
                    let records: Vec<Record> = (0..n)
                        .map(|_| Record {
                            key: None,
                            value: Some(payload.to_vec()),
                            headers: BTreeMap::new(),
                            timestamp,
                        })
                        .collect();
                    outstanding.push(async move {
                        let t0 = Instant::now();
                        pc.produce(records, Compression::NoCompression).await.map(|_| (t0.elapsed(), n))
                    });
                }
                match outstanding.next().await {
                    None => return Ok::<_, anyhow::Error>(()),
                    Some(r) => {
                        let (latency, n) = r.map_err(|e| anyhow::anyhow!("produce failed: {e}"))?;
                        meter.latency(latency);
                        meter.produced(n as u64, (n * payload.len()) as u64);
                    }
                }
            }
        }));
    }
    for t in tasks {
        t.await??;
    }
    Ok(())
}

/// One consumer reading `mine` (partition, records present) from the
/// beginning until the shared `budget` is spent, they are read to the end,
/// or the deadline.
pub async fn consume_partitions(
    bootstrap: &str,
    topic: &str,
    mine: &[(i32, u64)],
    budget: &AtomicI64,
    deadline: Option<Instant>,
    meter: &Meter,
) -> anyhow::Result<()> {
    let client = connect(bootstrap).await?;
    let mut parts = Vec::new();
    for &(p, records) in mine {
        let c = partition(&client, topic, p).await?;
        let start = c
            .get_offset(rskafka::client::partition::OffsetAt::Earliest)
            .await
            .map_err(|e| anyhow::anyhow!("partition {topic}/{p}: {e}"))?;
        parts.push((c, start, records));
    }
    let mut waited = Instant::now();
    while budget.load(Ordering::Relaxed) > 0 && deadline.is_none_or(|d| Instant::now() < d) {
        let mut progressed = false;
        for (c, next, left) in parts.iter_mut().filter(|p| p.2 > 0) {
            let (records, _high) =
                c.fetch_records(*next, 1..FETCH_BYTES, 100).await.map_err(|e| anyhow::anyhow!("fetch failed: {e}"))?;
            let (mut n, mut bytes) = (0u64, 0u64);
            for r in &records {
                n += 1;
                bytes += r.record.value.as_ref().map_or(0, |v| v.len()) as u64;
                *next = r.offset + 1;
            }
            if n == 0 {
                continue;
            }
            progressed = true;
            *left = left.saturating_sub(n);
            let claimed = claim(budget, n as usize) as u64;
            meter.add(claimed, bytes * claimed / n);
            meter.latency_n(waited.elapsed() / n as u32, claimed);
            waited = Instant::now();
        }
        if parts.iter().all(|p| p.2 == 0) {
            break;
        }
        if !progressed {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    Ok(())
}
