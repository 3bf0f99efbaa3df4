//! `strata bench alert`: the latency of an alert rule, from a matching
//! record's append to its alert being received by a subscriber of the
//! alert topic (so: the alert durable and delivered). A rule with threshold
//! 1 and no cooldown fires once per record; producers send at `--rate`
//! (default 200 records/s) for `--duration` (default 10 s). With `--rules
//! N`, N-1 more rules that match nothing are loaded beside it.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use clap::Args;
use tokio_stream::StreamExt;

use super::load::{client, config_json, ensure_topic, run_producers, Target};
use super::report::{Meter, Summary};
use super::BenchArgs;
use crate::proto::{self, position::Position as P};

#[derive(Debug, Clone, Args)]
pub struct AlertArgs {
    #[command(flatten)]
    pub bench: BenchArgs,
    /// Rules loaded in all (one matching, the rest matching nothing).
    #[arg(long, default_value_t = 1)]
    pub rules: usize,
}

/// Loads `n` alert rules that match no topic (pattern
/// `bench.nothing.<i>.*`, threshold 1, no cooldown): what rules cost a
/// produce path they do not watch.
pub(super) async fn load_idle_rules(c: &mut crate::bench::load::Client, n: usize) -> anyhow::Result<()> {
    for i in 0..n {
        let rule = proto::CreateAlertRuleRequest {
            name: format!("bench_idle_{i}"),
            topic_pattern: format!("bench.nothing.{i}.*"),
            threshold: 1,
            window_ms: 60_000,
            cooldown_ms: Some(0),
            ..Default::default()
        };
        match c.create_alert_rule(rule).await {
            Ok(_) => {}
            Err(s) if s.code() == tonic::Code::AlreadyExists => {}
            Err(s) => anyhow::bail!("cannot create an idle alert rule: {}", s.message()),
        }
    }
    Ok(())
}

fn wall_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64)
}

pub async fn run(args: &AlertArgs) -> anyhow::Result<Summary> {
    let b = BenchArgs {
        rate: if args.bench.rate == 0 { 200 } else { args.bench.rate },
        duration: args.bench.duration.or(if args.bench.records.is_none() {
            Some(Duration::from_secs(10))
        } else {
            None
        }),
        batch: 1,
        topic: if args.bench.topic == "bench" { "bench.error".into() } else { args.bench.topic.clone() },
        ..args.bench.clone()
    };
    let target = Target::start(&b).await?;
    let mut c = client(&target.url).await?;
    ensure_topic(&mut c, &b).await?;
    let alert_topic = "alerts.bench_alert";
    let rule = |name: String, pattern: String| proto::CreateAlertRuleRequest {
        name,
        topic_pattern: pattern,
        threshold: 1,
        window_ms: 60_000,
        alert_topic: alert_topic.into(),
        cooldown_ms: Some(0),
        ..Default::default()
    };
    load_idle_rules(&mut c, args.rules.max(1) - 1).await?;
    c.create_alert_rule(rule("bench_alert".into(), b.topic.clone())).await?;
    // The alert topic exists before the first alert, so the subscriber is live.
    let create = proto::CreateTopicRequest { name: alert_topic.into(), partitions: 1, config: Default::default() };
    let _ = c.create_topic(create).await;
    let mut stream = c
        .subscribe(proto::SubscribeRequest {
            topic_pattern: alert_topic.into(),
            group: None,
            from: Some(proto::Position { position: Some(P::Boundary(proto::Boundary::Latest as i32)) }),
            fallback: None,
            raw_batches: false,
        })
        .await?
        .into_inner();
    stream.next().await;
    let meter = Meter::new();
    let stop = Arc::new(AtomicBool::new(false));
    let receiver = {
        let (meter, stop) = (meter.clone(), stop.clone());
        tokio::spawn(async move {
            while let Ok(Some(Ok(msg))) = tokio::time::timeout(Duration::from_millis(1000), stream.next()).await {
                let now = wall_ms();
                for r in &msg.records {
                    let alert: serde_json::Value = serde_json::from_slice(&r.value).unwrap_or_default();
                    // The record's append time (broker clock, same machine).
                    let appended = alert["last_timestamp_ms"].as_i64().unwrap_or(now);
                    meter.latency(Duration::from_millis(now.saturating_sub(appended).max(0) as u64));
                    meter.add(1, r.value.len() as u64);
                }
                if stop.load(Ordering::Relaxed) && msg.records.is_empty() {
                    break;
                }
            }
        })
    };
    let produced = Meter::new();
    let cpu = super::cpu::CpuMeter::begin(b.server.as_deref());
    let started = Instant::now();
    let value = super::load::stamped_values(b.record_bytes, started);
    run_producers(&target.url, &b, &produced, stop.clone(), value).await?;
    let sent = produced.records.load(Ordering::Relaxed);
    let deadline = Instant::now() + Duration::from_secs(5);
    while meter.records.load(Ordering::Relaxed) < sent && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let elapsed = started.elapsed();
    stop.store(true, Ordering::Relaxed);
    receiver.abort();
    target.stop().await?;
    let mut config = config_json(&b);
    config["rules"] = args.rules.into();
    let mut summary = meter.summary("alert", elapsed, config, &cpu);
    summary.extra.insert("records_sent".into(), sent.into());
    Ok(summary)
}
