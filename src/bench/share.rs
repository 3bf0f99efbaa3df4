//! `strata bench share`: share group workers fetching and acknowledging.
//!
//! Without `--rate` the topic is filled first (`--records`, 200,000 by
//! default) and the workers drain it: records/s acknowledged (the ack
//! durable), the figure to compare. With `--rate` producers run at that
//! rate while the workers consume, and latency is from the send to the
//! acknowledgement's answer (and, in the extra keys, to the delivery).
//! `--release-every N` releases every N-th first delivery with
//! `--release-delay` and reports how late the redelivery came.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use clap::Args;
use tokio_stream::StreamExt;

use super::load::{client, config_json, ensure_topic, run_producers, Target};
use super::report::{Meter, Summary};
use super::BenchArgs;
use crate::proto;

/// The share group the bench uses.
const GROUP: &str = "bench-share";

#[derive(Debug, Clone, Args)]
pub struct ShareArgs {
    #[command(flatten)]
    pub bench: BenchArgs,
    /// Share group members fetching at once.
    #[arg(long, default_value_t = 8)]
    pub workers: usize,
    /// Records per fetch, acknowledged together in one Acknowledge.
    #[arg(long, default_value_t = 100)]
    pub ack_every: usize,
    /// Members use the push form (ShareSubscribe) instead of ShareFetch.
    #[arg(long)]
    pub push: bool,
    /// Release every N-th record on its first delivery (0: never).
    #[arg(long, default_value_t = 0)]
    pub release_every: u64,
    /// The delay of those releases.
    #[arg(long, default_value = "100ms", value_parser = humantime::parse_duration)]
    pub release_delay: Duration,
}

/// What the workers share.
struct Shared {
    /// The topic read (a name is a pattern that matches only it).
    topic: String,
    epoch: Instant,
    /// Acknowledged (send -> ack answered).
    acked: Arc<Meter>,
    /// Delivered (send -> received), first deliveries only.
    delivered: Arc<Meter>,
    /// Redelivery lateness (due -> received again).
    late: Arc<Meter>,
    /// Released records and when they are due again.
    due: Mutex<HashMap<(u32, u64), Instant>>,
    first_deliveries: AtomicU64,
    release_every: u64,
    release_delay: Duration,
    /// Records to acknowledge before stopping (drain), or none (rate).
    target: Option<u64>,
    stop: AtomicBool,
}

impl Shared {
    fn sent_at(&self, value: &[u8]) -> Instant {
        let nanos = u64::from_le_bytes(value.get(..8).and_then(|b| b.try_into().ok()).unwrap_or([0; 8]));
        self.epoch + Duration::from_nanos(nanos)
    }

    fn done(&self) -> bool {
        self.stop.load(Ordering::Relaxed)
            || self.target.is_some_and(|t| self.acked.records.load(Ordering::Relaxed) >= t)
    }

    /// The acknowledgement for a record just received.
    fn decide(&self, r: &proto::ShareRecord) -> proto::Acknowledgement {
        let s = r.record.as_ref().expect("a share record carries its record");
        let now = Instant::now();
        let key = (s.partition, s.offset);
        let mut release = false;
        if r.delivery_count == 1 {
            self.delivered.latency(now.saturating_duration_since(self.sent_at(&s.value)));
            let n = self.first_deliveries.fetch_add(1, Ordering::Relaxed) + 1;
            release = self.release_every > 0 && n.is_multiple_of(self.release_every);
        } else if let Some(due) = self.due.lock().unwrap_or_else(|e| e.into_inner()).remove(&key) {
            self.late.latency(now.saturating_duration_since(due));
        }
        let kind = if release {
            self.due.lock().unwrap_or_else(|e| e.into_inner()).insert(key, now + self.release_delay);
            proto::AckType::Release
        } else {
            proto::AckType::Accept
        };
        proto::Acknowledgement {
            topic: s.topic.clone(),
            partition: s.partition,
            offset: s.offset,
            r#type: kind as i32,
            delay_ms: release.then_some(self.release_delay.as_millis() as u64),
            reason: String::new(),
        }
    }

    /// Counts the accepted ones of an answered Acknowledge.
    fn acked(&self, acks: &[(proto::Acknowledgement, Instant, u64)], results: &[proto::AcknowledgeResult]) {
        let now = Instant::now();
        for ((a, sent, bytes), r) in acks.iter().zip(results) {
            if r.ok && a.r#type == proto::AckType::Accept as i32 {
                self.acked.latency(now.saturating_duration_since(*sent));
                self.acked.add(1, *bytes);
            }
        }
    }
}

type Pending = Vec<(proto::Acknowledgement, Instant, u64)>;

fn acks_of(shared: &Shared, records: &[proto::ShareRecord]) -> Pending {
    records
        .iter()
        .map(|r| {
            let value = &r.record.as_ref().expect("record").value;
            (shared.decide(r), shared.sent_at(value), value.len() as u64)
        })
        .collect()
}

async fn pull_worker(url: String, shared: Arc<Shared>, batch: usize, id: usize) -> anyhow::Result<()> {
    let mut c = client(&url).await?;
    while !shared.done() {
        let request = proto::ShareFetchRequest {
            group: GROUP.into(),
            topic_pattern: shared.topic.clone(),
            max_records: batch as u32,
            max_wait_ms: 200,
            member_id: format!("bench-{id}"),
            max_bytes: 0,
        };
        let records = c.share_fetch(request).await?.into_inner().records;
        if records.is_empty() {
            continue;
        }
        let pending = acks_of(&shared, &records);
        let acknowledgements = pending.iter().map(|(a, _, _)| a.clone()).collect();
        let results = c
            .acknowledge(proto::AcknowledgeRequest { group: GROUP.into(), acknowledgements })
            .await?
            .into_inner()
            .results;
        shared.acked(&pending, &results);
    }
    Ok(())
}

async fn push_worker(url: String, shared: Arc<Shared>, batch: usize, id: usize) -> anyhow::Result<()> {
    let mut c = client(&url).await?;
    let (tx, rx) = tokio::sync::mpsc::channel(16);
    tx.send(proto::ShareSubscribeRequest {
        group: GROUP.into(),
        topic_pattern: shared.topic.clone(),
        max_in_flight: (batch * 2) as u32,
        member_id: format!("bench-{id}"),
        acknowledgements: Vec::new(),
    })
    .await?;
    let mut stream = c.share_subscribe(tokio_stream::wrappers::ReceiverStream::new(rx)).await?.into_inner();
    // Acknowledge messages in the order sent; their results come back in order.
    let mut in_flight: VecDeque<Pending> = VecDeque::new();
    while !shared.done() {
        let Ok(next) = tokio::time::timeout(Duration::from_millis(200), stream.next()).await else { continue };
        let Some(message) = next else { break };
        let message = message?;
        if !message.results.is_empty() {
            if let Some(pending) = in_flight.pop_front() {
                shared.acked(&pending, &message.results);
            }
        }
        if !message.records.is_empty() {
            let pending = acks_of(&shared, &message.records);
            let acknowledgements = pending.iter().map(|(a, _, _)| a.clone()).collect();
            in_flight.push_back(pending);
            let request = proto::ShareSubscribeRequest { acknowledgements, ..Default::default() };
            if tx.send(request).await.is_err() {
                break;
            }
        }
    }
    Ok(())
}

pub async fn run(args: &ShareArgs) -> anyhow::Result<Summary> {
    let concurrent = args.bench.rate > 0;
    let b = BenchArgs {
        records: args.bench.records.or(if concurrent { None } else { Some(200_000) }),
        duration: if concurrent { args.bench.duration.or(Some(Duration::from_secs(10))) } else { args.bench.duration },
        producers: args.bench.producers.max(if concurrent { 1 } else { 4 }),
        ..args.bench.clone()
    };
    anyhow::ensure!(!b.topic.contains(['*', '?']), "bench share reads one topic: --topic takes a name, not a pattern");
    let target = Target::start(&b).await?;
    let mut c = client(&target.url).await?;
    ensure_topic(&mut c, &b).await?;
    let config = [("auto.offset.reset".to_string(), "earliest".to_string())].into();
    c.alter_share_group(proto::AlterShareGroupRequest { group: GROUP.into(), config }).await?;
    let epoch = Instant::now();
    let value = super::load::stamped_values(b.record_bytes, epoch);
    let produced = Meter::new();
    if !concurrent {
        eprintln!("[bench share] writing {} records first", b.record_budget());
        run_producers(&target.url, &b, &produced, Arc::new(AtomicBool::new(false)), value.clone()).await?;
    }
    let shared = Arc::new(Shared {
        topic: b.topic.clone(),
        epoch,
        acked: Meter::new(),
        delivered: Meter::new(),
        late: Meter::new(),
        due: Mutex::new(HashMap::new()),
        first_deliveries: AtomicU64::new(0),
        release_every: args.release_every,
        release_delay: args.release_delay,
        target: (!concurrent).then(|| produced.records.load(Ordering::Relaxed)),
        stop: AtomicBool::new(false),
    });
    let done = Arc::new(AtomicBool::new(false));
    shared.acked.spawn_progress("share".into(), done.clone());
    let cpu = super::cpu::CpuMeter::begin(b.server.as_deref());
    let started = Instant::now();
    let mut workers = Vec::new();
    for id in 0..args.workers.max(1) {
        let (url, shared, batch, push) = (target.url.clone(), shared.clone(), args.ack_every.max(1), args.push);
        workers.push(tokio::spawn(async move {
            if push {
                push_worker(url, shared, batch, id).await
            } else {
                pull_worker(url, shared, batch, id).await
            }
        }));
    }
    if concurrent {
        run_producers(&target.url, &b, &produced, Arc::new(AtomicBool::new(false)), value).await?;
        // Let the workers catch up with what was produced, for a while.
        let all = produced.records.load(Ordering::Relaxed);
        let grace = Instant::now() + Duration::from_secs(10);
        while shared.acked.records.load(Ordering::Relaxed) < all && Instant::now() < grace {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    } else {
        // Until drained, or --duration (at most 10 minutes).
        let deadline = Instant::now() + b.duration.unwrap_or(Duration::from_secs(600));
        while !shared.done() && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
    let elapsed = started.elapsed();
    shared.stop.store(true, Ordering::Relaxed);
    for w in workers {
        w.await??;
    }
    done.store(true, Ordering::Relaxed);
    target.stop().await?;
    let mut config = config_json(&b);
    config["workers"] = args.workers.into();
    config["ack_every"] = args.ack_every.into();
    config["push"] = args.push.into();
    config["release_every"] = args.release_every.into();
    let mut summary = shared.acked.summary("share", elapsed, config, &cpu);
    let q = |m: &Meter, q: f64| m.quantile_ms(q);
    summary.extra.insert("delivery_p50_ms".into(), q(&shared.delivered, 0.5).into());
    summary.extra.insert("delivery_p99_ms".into(), q(&shared.delivered, 0.99).into());
    if args.release_every > 0 {
        summary.extra.insert("redelivery_late_p50_ms".into(), q(&shared.late, 0.5).into());
        summary.extra.insert("redelivery_late_p99_ms".into(), q(&shared.late, 0.99).into());
        summary.extra.insert("redeliveries".into(), shared.late.count().into());
    }
    Ok(summary)
}
