//! `strata bench produce|consume --protocol kafka`: the same loads driven
//! through the Kafka listener by librdkafka (the `rdkafka` crate, built from
//! source), the client most Kafka users run, so the figures are theirs.
//! With `--server HOST:PORT` it drives any Kafka-compatible broker, so the
//! same instrument measures a peer.
//!
//! Producers use `acks=all` and librdkafka's defaults otherwise (not
//! idempotent, like the gRPC rows, which send no producer id; `-X
//! enable.idempotence=true` makes them so); `--batch` is librdkafka's
//! `batch.num.messages`, `--in-flight` its
//! `max.in.flight.requests.per.connection` (at most 5 with idempotence).
//! `-X KEY=VALUE` sets any other librdkafka property, as kcat's does.
//! Latency is send -> delivery report, per record. Consumers assign
//! partitions (no group) from the beginning and count records as librdkafka
//! hands them over.

use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::DeliveryResult;
use rdkafka::producer::{BaseRecord, Producer, ProducerContext, ThreadedProducer};
use rdkafka::{ClientContext, Offset, TopicPartitionList};

use super::load::Target;
use super::report::{Meter, Summary};
use super::{BenchArgs, KafkaClient};

const TIMEOUT: Duration = Duration::from_secs(30);

/// The broker under test, as Kafka clients see it.
pub struct KafkaTarget {
    bootstrap: String,
    /// strata's gRPC address when the broker is strata (topics are made
    /// there, with the bench's flush policy).
    grpc: Option<String>,
    /// The in-process broker (`--embedded`).
    embedded: Option<Target>,
}

impl KafkaTarget {
    async fn start(args: &BenchArgs) -> anyhow::Result<KafkaTarget> {
        if let Some(server) = &args.server {
            let bootstrap = server.trim_start_matches("kafka://").to_string();
            return Ok(KafkaTarget { bootstrap, grpc: None, embedded: None });
        }
        let target = Target::start(args).await?;
        let bootstrap =
            target.kafka_addr().ok_or_else(|| anyhow::anyhow!("the embedded broker has no Kafka listener"))?;
        Ok(KafkaTarget { bootstrap: bootstrap.to_string(), grpc: Some(target.url.clone()), embedded: Some(target) })
    }

    /// A strata broker already running (`bench limits`).
    pub fn strata(target: &Target) -> anyhow::Result<KafkaTarget> {
        let bootstrap = target.kafka_addr().ok_or_else(|| anyhow::anyhow!("the broker has no Kafka listener"))?;
        Ok(KafkaTarget { bootstrap: bootstrap.to_string(), grpc: Some(target.url.clone()), embedded: None })
    }

    /// Creates the bench topic: on strata with the bench's flush policy (over
    /// gRPC, which can also change it on an existing topic); on a peer with
    /// its defaults, replication factor 1.
    async fn ensure_topic(&self, args: &BenchArgs) -> anyhow::Result<()> {
        if let Some(url) = &self.grpc {
            return super::load::ensure_topic(&mut super::load::client(url).await?, args).await;
        }
        let admin: AdminClient<DefaultClientContext> =
            ClientConfig::new().set("bootstrap.servers", &self.bootstrap).create()?;
        let topic = NewTopic::new(&args.topic, args.partitions as i32, TopicReplication::Fixed(1));
        for r in admin.create_topics(&[topic], &AdminOptions::new()).await? {
            match r {
                Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
                Err((t, e)) => anyhow::bail!("cannot create topic {t}: {e}"),
            }
        }
        Ok(())
    }

    async fn stop(self) -> anyhow::Result<()> {
        match self.embedded {
            Some(t) => t.stop().await,
            None => Ok(()),
        }
    }
}

/// Delivery reports: latency and counts into the meter.
struct Deliveries {
    meter: Arc<Meter>,
    failed: AtomicU64,
    first_error: std::sync::Mutex<Option<String>>,
}

impl ClientContext for Deliveries {}

impl ProducerContext for Deliveries {
    type DeliveryOpaque = Box<Instant>;

    fn delivery(&self, result: &DeliveryResult<'_>, sent: Self::DeliveryOpaque) {
        match result {
            Ok(m) => {
                self.meter.latency(sent.elapsed());
                self.meter.add(1, m.payload_len() as u64);
            }
            Err((e, _)) => {
                self.failed.fetch_add(1, Ordering::Relaxed);
                let mut first = self.first_error.lock().unwrap_or_else(|e| e.into_inner());
                first.get_or_insert_with(|| e.to_string());
            }
        }
    }
}

/// Runs the producers until the budget or deadline is spent; every record
/// is delivered (or the bench fails) before it returns.
fn run_producers(bootstrap: &str, args: &BenchArgs, meter: &Arc<Meter>) -> anyhow::Result<()> {
    let budget = Arc::new(AtomicI64::new(args.record_budget().min(i64::MAX as u64) as i64));
    let deadline = args.duration.map(|d| Instant::now() + d);
    let per_producer_rate = args.rate as f64 / args.producers.max(1) as f64;
    let payload: Arc<[u8]> = vec![b'x'; args.record_bytes].into();
    let threads: Vec<_> = (0..args.producers.max(1))
        .map(|p| {
            let (bootstrap, args, meter, budget, payload) =
                (bootstrap.to_string(), args.clone(), meter.clone(), budget.clone(), payload.clone());
            std::thread::spawn(move || -> anyhow::Result<()> {
                let context = Deliveries { meter, failed: AtomicU64::new(0), first_error: Default::default() };
                let producer: ThreadedProducer<Deliveries> = with_properties(
                    ClientConfig::new()
                        .set("bootstrap.servers", &bootstrap)
                        .set("acks", "all")
                        .set("socket.nagle.disable", "true")
                        .set("linger.ms", "5")
                        .set("batch.num.messages", args.batch.max(1).to_string())
                        .set("max.in.flight.requests.per.connection", args.in_flight.max(1).to_string()),
                    &args,
                )
                .create_with_context(context)?;
                let (batch, partitions) = (args.batch.max(1) as u64, args.partitions.max(1) as u64);
                let started = Instant::now();
                let mut sent = 0u64;
                while budget.fetch_sub(1, Ordering::Relaxed) > 0 && deadline.is_none_or(|d| Instant::now() < d) {
                    if per_producer_rate > 0.0 {
                        let due = started + Duration::from_secs_f64(sent as f64 / per_producer_rate);
                        if let Some(wait) = due.checked_duration_since(Instant::now()) {
                            std::thread::sleep(wait);
                        }
                    }
                    let partition = ((p as u64 + sent / batch) % partitions) as i32;
                    let mut record = BaseRecord::with_opaque_to(&args.topic, Box::new(Instant::now()))
                        .payload(&payload[..])
                        .partition(partition);
                    loop {
                        match producer.send::<(), [u8]>(record) {
                            Ok(()) => break,
                            Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                                record = back;
                                // librdkafka's queue is full: let its threads drain it.
                                std::thread::sleep(Duration::from_millis(1));
                            }
                            Err((e, _)) => anyhow::bail!("produce failed: {e}"),
                        }
                    }
                    sent += 1;
                }
                producer.flush(TIMEOUT)?;
                let context = producer.context();
                let failed = context.failed.load(Ordering::Relaxed);
                if failed > 0 {
                    let first = context.first_error.lock().unwrap_or_else(|e| e.into_inner()).clone();
                    anyhow::bail!("{failed} records were not delivered: {}", first.unwrap_or_default());
                }
                Ok(())
            })
        })
        .collect();
    for t in threads {
        t.join().map_err(|_| anyhow::anyhow!("a producer thread panicked"))??;
    }
    Ok(())
}

pub async fn produce(args: &BenchArgs) -> anyhow::Result<Summary> {
    let target = KafkaTarget::start(args).await?;
    let summary = produce_on(&target, args).await;
    target.stop().await?;
    summary
}

pub async fn produce_on(target: &KafkaTarget, args: &BenchArgs) -> anyhow::Result<Summary> {
    target.ensure_topic(args).await?;
    let meter = Meter::new();
    let done = Arc::new(AtomicBool::new(false));
    meter.spawn_progress("produce (kafka)".into(), done.clone());
    let cpu = super::cpu::CpuMeter::begin(args.server.as_deref());
    let started = Instant::now();
    match args.client {
        KafkaClient::Librdkafka => {
            let (bootstrap, a, m) = (target.bootstrap.clone(), args.clone(), meter.clone());
            tokio::task::spawn_blocking(move || run_producers(&bootstrap, &a, &m)).await??;
        }
        KafkaClient::Rskafka => super::rskafka::run_producers(&target.bootstrap, args, &meter).await?,
    }
    let elapsed = started.elapsed();
    done.store(true, Ordering::Relaxed);
    Ok(meter.summary("produce", elapsed, config_json(args), &cpu))
}

/// (partition, records present) of the topic.
fn partitions(bootstrap: &str, topic: &str) -> anyhow::Result<Vec<(i32, u64)>> {
    let c: BaseConsumer = ClientConfig::new().set("bootstrap.servers", bootstrap).create()?;
    let metadata = c.fetch_metadata(Some(topic), TIMEOUT)?;
    let t = metadata.topics().first().ok_or_else(|| anyhow::anyhow!("no metadata for {topic}"))?;
    if let Some(e) = t.error() {
        anyhow::bail!("topic {topic}: {e:?}");
    }
    t.partitions()
        .iter()
        .map(|p| {
            let (lo, hi) = c.fetch_watermarks(topic, p.id(), TIMEOUT)?;
            Ok((p.id(), (hi - lo).max(0) as u64))
        })
        .collect()
}

pub async fn consume(args: &BenchArgs) -> anyhow::Result<Summary> {
    let target = KafkaTarget::start(args).await?;
    let summary = consume_on(&target, args).await;
    target.stop().await?;
    summary
}

pub async fn consume_on(target: &KafkaTarget, args: &BenchArgs) -> anyhow::Result<Summary> {
    target.ensure_topic(args).await?;
    let bootstrap = target.bootstrap.clone();
    let want = args.record_budget().min(10_000_000_000);
    let (b, topic) = (bootstrap.clone(), args.topic.clone());
    let have: u64 = tokio::task::spawn_blocking(move || partitions(&b, &topic)).await??.iter().map(|p| p.1).sum();
    if have < want && args.records.is_some() {
        eprintln!("[bench consume] writing {} records first", want - have);
        let fill = BenchArgs { records: Some(want - have), duration: None, rate: 0, producers: 4, ..args.clone() };
        match args.client {
            KafkaClient::Librdkafka => {
                let b = bootstrap.clone();
                tokio::task::spawn_blocking(move || run_producers(&b, &fill, &Meter::new())).await??;
            }
            KafkaClient::Rskafka => super::rskafka::run_producers(&bootstrap, &fill, &Meter::new()).await?,
        }
    }
    let (b, topic) = (bootstrap.clone(), args.topic.clone());
    let parts = tokio::task::spawn_blocking(move || partitions(&b, &topic)).await??;
    let meter = Meter::new();
    let done = Arc::new(AtomicBool::new(false));
    meter.spawn_progress("consume (kafka)".into(), done.clone());
    let deadline = args.duration.map(|d| Instant::now() + d);
    let cpu = super::cpu::CpuMeter::begin(args.server.as_deref());
    let started = Instant::now();
    let consumers = args.consumers.max(1).min(parts.len().max(1));
    // Records left to read, every consumer together.
    let budget = Arc::new(AtomicI64::new(if args.records.is_some() { want as i64 } else { i64::MAX }));
    let share = |i: usize| -> Vec<(i32, u64)> { parts.iter().copied().skip(i).step_by(consumers).collect() };
    match args.client {
        KafkaClient::Librdkafka => {
            let threads: Vec<_> = (0..consumers)
                .map(|i| {
                    let mine = share(i);
                    let (bootstrap, args, meter, budget) =
                        (bootstrap.clone(), args.clone(), meter.clone(), budget.clone());
                    std::thread::spawn(move || consume_partitions(&bootstrap, &args, &mine, &budget, deadline, &meter))
                })
                .collect();
            for t in threads {
                t.join().map_err(|_| anyhow::anyhow!("a consumer thread panicked"))??;
            }
        }
        KafkaClient::Rskafka => {
            let tasks: Vec<_> = (0..consumers)
                .map(|i| {
                    let mine = share(i);
                    let (bootstrap, topic, meter, budget) =
                        (bootstrap.clone(), args.topic.clone(), meter.clone(), budget.clone());
                    tokio::spawn(async move {
                        super::rskafka::consume_partitions(&bootstrap, &topic, &mine, &budget, deadline, &meter).await
                    })
                })
                .collect();
            for t in tasks {
                t.await??;
            }
        }
    }
    let elapsed = started.elapsed();
    done.store(true, Ordering::Relaxed);
    Ok(meter.summary("consume", elapsed, config_json(args), &cpu))
}

/// One consumer reading its partitions from the beginning until the shared
/// `budget` is spent, they are read to the end, or the deadline.
fn consume_partitions(
    bootstrap: &str,
    args: &BenchArgs,
    mine: &[(i32, u64)],
    budget: &AtomicI64,
    deadline: Option<Instant>,
    meter: &Meter,
) -> anyhow::Result<()> {
    let total: u64 = mine.iter().map(|p| p.1).sum();
    let consumer: BaseConsumer = with_properties(
        ClientConfig::new()
            .set("bootstrap.servers", bootstrap)
            .set("group.id", format!("strata-bench-{}", std::process::id()))
            .set("enable.auto.commit", "false"),
        args,
    )
    .create()?;
    let mut list = TopicPartitionList::new();
    for (p, _) in mine {
        list.add_partition_offset(&args.topic, *p, Offset::Beginning)?;
    }
    consumer.assign(&list)?;
    let mut got = 0u64;
    let mut waited = Instant::now();
    while got < total && budget.load(Ordering::Relaxed) > 0 && deadline.is_none_or(|d| Instant::now() < d) {
        match consumer.poll(Duration::from_millis(100)) {
            Some(Ok(m)) => {
                if budget.fetch_sub(1, Ordering::Relaxed) <= 0 {
                    break;
                }
                meter.add(1, m.payload_len() as u64);
                meter.latency(waited.elapsed());
                waited = Instant::now();
                got += 1;
            }
            Some(Err(e)) => anyhow::bail!("consume failed: {e}"),
            None => {}
        }
    }
    Ok(())
}

/// The user's `-X` properties over the bench's own.
fn with_properties<'a>(config: &'a mut ClientConfig, args: &BenchArgs) -> &'a mut ClientConfig {
    for (k, v) in &args.kafka_property {
        config.set(k, v);
    }
    config
}

fn config_json(args: &BenchArgs) -> serde_json::Value {
    let mut c = super::load::config_json(args);
    c["protocol"] = "kafka".into();
    // ProduceStream and Subscribe are gRPC's; the Kafka client pipelines
    // by itself (in_flight).
    if let Some(c) = c.as_object_mut() {
        c.remove("produce_stream");
        c.remove("subscribe");
    }
    c["kafka_properties"] = args.kafka_property.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().into();
    c["client"] = match args.client {
        KafkaClient::Librdkafka => format!("librdkafka {}", rdkafka::util::get_rdkafka_version().1),
        KafkaClient::Rskafka => super::rskafka::CLIENT.to_string(),
    }
    .into();
    c
}
