//! The produce, consume and end-to-end loads.

use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio_stream::StreamExt;
use tonic::transport::Channel;

use super::cpu::CpuMeter;
use super::report::{Meter, Summary};
use super::BenchArgs;
use crate::config::BrokerConfig;
use crate::proto::broker_client::BrokerClient;
use crate::proto::{self, position::Position as P};
use crate::server::RunningServer;

pub(super) type Client = BrokerClient<Channel>;

/// The broker under test: a URL, and the in-process broker when embedded.
pub struct Target {
    pub url: String,
    server: Option<RunningServer>,
    _dir: Option<tempfile::TempDir>,
}

impl Target {
    pub async fn start(args: &BenchArgs) -> anyhow::Result<Target> {
        if let Some(url) = &args.server {
            return Ok(Target { url: url.clone(), server: None, _dir: None });
        }
        let (dir, path) = match &args.data_dir {
            Some(p) => (None, p.clone()),
            None => {
                let d = tempfile::Builder::new().prefix("strata-bench-").tempdir_in(".")?;
                let p = d.path().to_path_buf();
                (Some(d), p)
            }
        };
        std::fs::create_dir_all(&path)?;
        let tls = if args.tls {
            let certs = bench_certs()?;
            let (cert, key) = (path.join("bench-server.pem"), path.join("bench-server.key"));
            std::fs::write(&cert, &certs.server_pem)?;
            std::fs::write(&key, &certs.server_key)?;
            Some(crate::security::tls::TlsFiles { cert, key, client_ca: None })
        } else {
            None
        };
        let config = BrokerConfig {
            data_dir: path,
            listen: "127.0.0.1:0".parse()?,
            kafka_listen: Some("127.0.0.1:0".parse()?),
            http_listen: Some("127.0.0.1:0".parse()?),
            tls,
            security: (args.acl_rules > 0).then(|| bench_acl(args.acl_rules)),
            ..BrokerConfig::default()
        };
        let server = crate::server::start(config).await?;
        let url = if args.tls { server.url().replacen("http://", "https://", 1) } else { server.url() };
        Ok(Target { url, server: Some(server), _dir: dir })
    }

    /// The embedded broker's Kafka listener.
    pub fn kafka_addr(&self) -> Option<std::net::SocketAddr> {
        self.server.as_ref().and_then(|s| s.kafka_addr())
    }

    pub async fn stop(self) -> anyhow::Result<()> {
        if let Some(s) = self.server {
            s.shutdown().await?;
        }
        Ok(())
    }
}

pub async fn client(url: &str) -> anyhow::Result<Client> {
    let channel = channel(url).await?;
    Ok(BrokerClient::new(channel).max_decoding_message_size(256 << 20).max_encoding_message_size(256 << 20))
}

/// The CA and server certificate of `--tls` runs (one per process).
pub(super) struct BenchCerts {
    ca_pem: String,
    server_pem: String,
    server_key: String,
}

static BENCH_CERTS: std::sync::OnceLock<BenchCerts> = std::sync::OnceLock::new();

fn bench_certs() -> anyhow::Result<&'static BenchCerts> {
    if let Some(c) = BENCH_CERTS.get() {
        return Ok(c);
    }
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
    let ca_key = KeyPair::generate()?;
    let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params.distinguished_name.push(DnType::CommonName, "strata bench CA");
    let ca = ca_params.self_signed(&ca_key)?;
    let issuer = Issuer::new(ca_params, ca_key);
    let key = KeyPair::generate()?;
    let server = CertificateParams::new(vec!["localhost".to_string()])?.signed_by(&key, &issuer)?;
    let certs = BenchCerts { ca_pem: ca.pem(), server_pem: server.pem(), server_key: key.serialize_pem() };
    Ok(BENCH_CERTS.get_or_init(|| certs))
}

/// `n` ACL entries for the anonymous principal `bench`, all globs (so each
/// check runs the compiled set), the last granting every bench topic.
fn bench_acl(n: usize) -> crate::security::SecurityFile {
    use crate::security::acl::AclEntry;
    let mut acl: Vec<AclEntry> = (1..n)
        .map(|i| AclEntry {
            principal: "bench".into(),
            operations: vec!["produce".into(), "consume".into()],
            topics: vec![format!("team{i}.*")],
            groups: vec![format!("team{i}-*")],
        })
        .collect();
    acl.push(AclEntry {
        principal: "bench".into(),
        operations: vec!["all".into()],
        topics: vec!["*bench*".into(), "limits*".into()],
        groups: vec!["*bench*".into()],
    });
    crate::security::SecurityFile { anonymous: Some("bench".into()), users: Vec::new(), acl }
}

/// A connection with the HTTP/2 settings the bench measured best (TLS for
/// an `https://` URL, trusting the `--tls` run's CA).
pub async fn channel(url: &str) -> anyhow::Result<Channel> {
    let mut endpoint = Channel::from_shared(url.to_string())?;
    if url.starts_with("https://") {
        let ca = BENCH_CERTS.get().map(|c| c.ca_pem.clone()).unwrap_or_default();
        let tls = tonic::transport::ClientTlsConfig::new()
            .ca_certificate(tonic::transport::Certificate::from_pem(ca))
            .domain_name("localhost");
        endpoint = endpoint.tls_config(tls)?;
    }
    let endpoint = endpoint
        // A stream window above the 8 MiB fetch size, so a response is never
        // stalled waiting for a window update (measured: +15% raw fetch).
        .initial_stream_window_size(Some(16 << 20))
        .initial_connection_window_size(Some(64 << 20))
        .max_frame_size(Some(1 << 20));
    Ok(crate::client::connect(endpoint, url.starts_with("https://")).await?)
}

/// Creates the bench topic (or reuses it) with the bench's flush policy.
pub(super) async fn ensure_topic(c: &mut Client, args: &BenchArgs) -> anyhow::Result<()> {
    let window = if args.dedupe { "120000" } else { "0" };
    let config: std::collections::HashMap<String, String> =
        [("flush.policy".to_string(), args.flush.to_string()), ("dedupe.window.ms".to_string(), window.to_string())]
            .into();
    let req =
        proto::CreateTopicRequest { name: args.topic.clone(), partitions: args.partitions, config: config.clone() };
    match c.create_topic(req).await {
        Ok(_) => Ok(()),
        Err(s) if s.code() == tonic::Code::AlreadyExists => {
            c.alter_topic_config(proto::AlterTopicConfigRequest { name: args.topic.clone(), config }).await?;
            Ok(())
        }
        Err(s) => Err(anyhow::anyhow!("cannot create topic {}: {}", args.topic, s.message())),
    }
}

pub(super) fn config_json(args: &BenchArgs) -> serde_json::Value {
    serde_json::json!({
        "topic": args.topic, "partitions": args.partitions, "record_bytes": args.record_bytes,
        "batch": args.batch, "producers": args.producers, "consumers": args.consumers,
        "rate": args.rate, "flush": args.flush.to_string(), "embedded": args.server.is_none(),
        "ids": args.ids, "dedupe": args.dedupe, "idle_rules": args.idle_rules,
        "tls": args.tls, "acl_rules": args.acl_rules, "in_flight": args.in_flight.max(1),
        "produce_stream": args.stream || args.in_flight > 1, "raw": args.raw, "subscribe": args.subscribe,
    })
}

/// Claims up to `n` records from a shared budget; 0 when it is spent.
pub(super) fn claim(budget: &AtomicI64, n: usize) -> usize {
    let before = budget.fetch_sub(n as i64, Ordering::Relaxed);
    before.clamp(0, n as i64) as usize
}

/// Runs `producers` loops that send batches until the budget, deadline or
/// `stop` ends them. `value` makes each record's value.
pub(super) async fn run_producers(
    url: &str,
    args: &BenchArgs,
    meter: &Arc<Meter>,
    stop: Arc<AtomicBool>,
    value: Arc<dyn Fn() -> Bytes + Send + Sync>,
) -> anyhow::Result<()> {
    let budget = Arc::new(AtomicI64::new(args.record_budget().min(i64::MAX as u64) as i64));
    let deadline = args.duration.map(|d| Instant::now() + d);
    let per_producer_rate = (args.rate as f64 / args.producers.max(1) as f64).max(0.0);
    let mut tasks = Vec::new();
    for p in 0..args.producers.max(1) {
        let (c, meter, stop, budget, value) =
            (channel(url).await?, meter.clone(), stop.clone(), budget.clone(), value.clone());
        let (topic, batch, partitions, raw) = (args.topic.clone(), args.batch.max(1), args.partitions.max(1), args.raw);
        // --ids: this producer's next event id number.
        let (ids, next_id) = (args.ids, std::sync::atomic::AtomicU64::new(0));
        let id = move || {
            ids.then(|| Bytes::from(format!("evt-{p}-{}", next_id.fetch_add(1, Ordering::Relaxed)).into_bytes()))
        };
        let mut sent = 0u64;
        let started = Instant::now();
        // When and where this producer's next request goes, or None to stop.
        let mut plan = move || {
            if stop.load(Ordering::Relaxed) || deadline.is_some_and(|d| Instant::now() >= d) {
                return None;
            }
            let n = claim(&budget, batch);
            if n == 0 {
                return None;
            }
            let due =
                (per_producer_rate > 0.0).then(|| started + Duration::from_secs_f64(sent as f64 / per_producer_rate));
            let partition = (p as u32 + sent as u32 / batch as u32) % partitions;
            sent += n as u64;
            Some(Plan { due, records: n, partition })
        };
        // Builds the request when it is due (e2e stamps send times in values).
        let build = move |plan: Plan| {
            let values: Vec<Bytes> = (0..plan.records).map(|_| value()).collect();
            let bytes = values.iter().map(|v| v.len() as u64).sum();
            let partition = Some(plan.partition);
            let req = if raw {
                // The client encodes the stored batch format itself.
                let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
                let records: Vec<crate::storage::batch::Record> = values
                    .into_iter()
                    .map(|value| crate::storage::batch::Record {
                        value,
                        timestamp_ms: now.as_millis() as i64,
                        headers: id().map(|id| vec![("id".to_string(), id)]).unwrap_or_default(),
                        ..Default::default()
                    })
                    .collect();
                let batch = crate::storage::batch::encode(&records, None);
                proto::ProduceRequest {
                    topic: topic.clone(),
                    partition,
                    record_batch: batch.into(),
                    ..Default::default()
                }
            } else {
                let records = values
                    .into_iter()
                    .map(|value| proto::Record {
                        value,
                        headers: id().map(|id| [("id".to_string(), id)].into()).unwrap_or_default(),
                        ..Default::default()
                    })
                    .collect();
                proto::ProduceRequest { topic: topic.clone(), partition, records, ..Default::default() }
            };
            (req, plan.records as u64, bytes)
        };
        let (in_flight, stream) = (args.in_flight.max(1), args.stream || args.in_flight > 1);
        tasks.push(tokio::spawn(async move {
            if stream {
                return produce_pipelined(c, in_flight, &meter, &mut plan, &build).await;
            }
            while let Some(next) = plan() {
                if let Some(due) = next.due {
                    tokio::time::sleep_until(due.into()).await;
                }
                let (req, records, bytes) = build(next);
                let t0 = Instant::now();
                crate::client::produce(&c, req)
                    .await
                    .map_err(|s| anyhow::anyhow!("produce failed: {}", s.message()))?;
                meter.latency(t0.elapsed());
                meter.produced(records, bytes);
            }
            Ok::<_, anyhow::Error>(())
        }));
    }
    for t in tasks {
        t.await??;
    }
    Ok(())
}

/// A bench producer's next request: when, how many records, where.
struct Plan {
    /// When to send it (rate-limited loads).
    due: Option<Instant>,
    records: usize,
    partition: u32,
}

/// A built request, its record count and key + value bytes.
type Built = (proto::ProduceRequest, u64, u64);

/// One producer keeping up to `depth` requests outstanding on a ProduceStream.
async fn produce_pipelined(
    c: Channel,
    depth: usize,
    meter: &Meter,
    plan: &mut (dyn FnMut() -> Option<Plan> + Send),
    build: &(dyn Fn(Plan) -> Built + Send + Sync),
) -> anyhow::Result<()> {
    let mut stream = crate::client::produce_stream(&c, depth).await?;
    // request_id -> (sent at, records, bytes). Responses to requests for
    // different partitions may come back out of order.
    let mut outstanding = std::collections::HashMap::new();
    let mut id = 0u64;
    let mut more = true;
    loop {
        while more && outstanding.len() < depth {
            let Some(next) = plan() else {
                more = false;
                break;
            };
            if let Some(due) = next.due {
                tokio::time::sleep_until(due.into()).await;
            }
            let (mut req, records, bytes) = build(next);
            req.request_id = id;
            outstanding.insert(id, (Instant::now(), records, bytes));
            id += 1;
            stream.send(req).await.map_err(|s| anyhow::anyhow!("produce stream failed: {}", s.message()))?;
        }
        if outstanding.is_empty() {
            return Ok(());
        }
        let r = stream
            .message()
            .await
            .map_err(|s| anyhow::anyhow!("produce stream failed: {}", s.message()))?
            .ok_or_else(|| anyhow::anyhow!("produce stream ended early"))?;
        if r.error_code != 0 {
            anyhow::bail!("produce failed: {}", r.error_message);
        }
        let (t0, n, bytes) = outstanding
            .remove(&r.request_id)
            .ok_or_else(|| anyhow::anyhow!("response to unknown request {}", r.request_id))?;
        meter.latency(t0.elapsed());
        meter.produced(n, bytes);
    }
}

/// Makes everything written to `topic` durable, so its dirty pages are not
/// written back under the next measurement: switches the topic to flush
/// `always` and appends one record, whose fsync covers the whole active
/// segment (closed segments were fsynced when they rolled).
pub async fn settle(url: &str, topic: &str) -> anyhow::Result<()> {
    let mut c = client(url).await?;
    let config = [("flush.policy".to_string(), "always".to_string())].into();
    c.alter_topic_config(proto::AlterTopicConfigRequest { name: topic.into(), config }).await?;
    let record = proto::Record { value: Bytes::from_static(b"settle"), ..Default::default() };
    c.produce(proto::ProduceRequest {
        topic: topic.into(),
        partition: Some(0),
        records: vec![record],
        ..Default::default()
    })
    .await?;
    Ok(())
}

pub async fn produce(args: &BenchArgs) -> anyhow::Result<Summary> {
    let target = Target::start(args).await?;
    let mut c = client(&target.url).await?;
    ensure_topic(&mut c, args).await?;
    super::alert::load_idle_rules(&mut c, args.idle_rules).await?;
    let meter = Meter::new();
    let done = Arc::new(AtomicBool::new(false));
    meter.spawn_progress("produce".into(), done.clone());
    let payload = Bytes::from(vec![b'x'; args.record_bytes]);
    let cpu = CpuMeter::begin(args.server.as_deref());
    let started = Instant::now();
    run_producers(&target.url, args, &meter, Arc::new(AtomicBool::new(false)), Arc::new(move || payload.clone()))
        .await?;
    let elapsed = started.elapsed();
    done.store(true, Ordering::Relaxed);
    tokio::time::sleep(Duration::from_millis(20)).await;
    target.stop().await?;
    Ok(meter.summary("produce", elapsed, config_json(args), &cpu))
}

pub async fn consume(args: &BenchArgs) -> anyhow::Result<Summary> {
    let target = Target::start(args).await?;
    let mut c = client(&target.url).await?;
    ensure_topic(&mut c, args).await?;
    let want = args.record_budget().min(10_000_000_000);
    let have: u64 = c
        .describe_topic(proto::DescribeTopicRequest { name: args.topic.clone() })
        .await?
        .into_inner()
        .partition_descriptions
        .iter()
        .map(|p| p.high_watermark - p.log_start_offset)
        .sum();
    if have < want && args.records.is_some() {
        eprintln!("[bench consume] writing {} records first", want - have);
        let fill = BenchArgs {
            records: Some(want - have),
            duration: None,
            rate: 0,
            producers: 4,
            batch: args.batch,
            ..args.clone()
        };
        let payload = Bytes::from(vec![b'x'; args.record_bytes]);
        run_producers(
            &target.url,
            &fill,
            &Meter::new(),
            Arc::new(AtomicBool::new(false)),
            Arc::new(move || payload.clone()),
        )
        .await?;
    }
    let meter = Meter::new();
    let done = Arc::new(AtomicBool::new(false));
    meter.spawn_progress("consume".into(), done.clone());
    let deadline = args.duration.map(|d| Instant::now() + d);
    let cpu = CpuMeter::begin(args.server.as_deref());
    let started = Instant::now();
    if args.subscribe {
        // What the topic holds now (the fill above wrote up to `want`).
        let present = if args.records.is_some() { have.max(want) } else { have };
        consume_subscribed(args, &target.url, &meter, present, deadline).await?;
    } else {
        consume_fetched(args, &target.url, &meter, deadline).await?;
    }
    let elapsed = started.elapsed();
    done.store(true, Ordering::Relaxed);
    tokio::time::sleep(Duration::from_millis(20)).await;
    target.stop().await?;
    Ok(meter.summary("consume", elapsed, config_json(args), &cpu))
}

/// Consumers that subscribe: the broker pushes each partition from the
/// start and reads ahead while the client decodes, so a single partition
/// costs no request round trips. Ends when `total` records have arrived.
async fn consume_subscribed(
    args: &BenchArgs,
    url: &str,
    meter: &Arc<Meter>,
    total: u64,
    deadline: Option<Instant>,
) -> anyhow::Result<()> {
    let received = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let (finished, _) = tokio::sync::watch::channel(false);
    let finished = Arc::new(finished);
    let group = (args.consumers > 1).then(|| format!("bench-consume-{}-{}", std::process::id(), started_ns()));
    let mut tasks = Vec::new();
    for _ in 0..args.consumers.max(1) {
        let channel = channel(url).await?;
        let earliest = || Some(proto::Position { position: Some(P::Boundary(proto::Boundary::Earliest as i32)) });
        let req = proto::SubscribeRequest {
            topic_pattern: args.topic.clone(),
            group: group.clone(),
            from: if group.is_some() { None } else { earliest() },
            fallback: Some(proto::Boundary::Earliest as i32),
            raw_batches: args.raw,
        };
        let (meter, received, finished) = (meter.clone(), received.clone(), finished.clone());
        tasks.push(tokio::spawn(async move {
            let mut stop = finished.subscribe();
            let mut stream = crate::client::subscribe(&channel, req).await?;
            loop {
                if received.load(Ordering::Relaxed) >= total || deadline.is_some_and(|d| Instant::now() >= d) {
                    finished.send_replace(true);
                    return Ok::<_, anyhow::Error>(());
                }
                let t0 = Instant::now();
                let message = tokio::select! {
                    m = stream.message() => m.map_err(|s| anyhow::anyhow!("subscribe failed: {}", s.message()))?,
                    _ = stop.wait_for(|f| *f) => return Ok(()),
                    _ = sleep_until_deadline(deadline) => continue,
                };
                let Some(m) = message else { anyhow::bail!("the broker ended the subscription") };
                let (records, bytes) = if !m.record_batches.is_empty() {
                    decoded(&m.record_batches, m.first_offset)?
                } else {
                    let bytes = m.records.iter().map(|x| (x.value.len() + x.key.len()) as u64).sum();
                    (m.records.len() as u64, bytes)
                };
                if records > 0 {
                    // Time the consumer waited for this message.
                    meter.latency(t0.elapsed());
                    meter.add(records, bytes);
                    received.fetch_add(records, Ordering::Relaxed);
                }
            }
        }));
    }
    for t in tasks {
        t.await??;
    }
    Ok(())
}

fn started_ns() -> u128 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos())
}

async fn sleep_until_deadline(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d.into()).await,
        None => std::future::pending().await,
    }
}

/// Consumers that fetch, each keeping its next fetch on the wire.
async fn consume_fetched(
    args: &BenchArgs,
    url: &str,
    meter: &Arc<Meter>,
    deadline: Option<Instant>,
) -> anyhow::Result<()> {
    let mut tasks = Vec::new();
    for k in 0..args.consumers.max(1) {
        let (c, meter, topic, raw) = (channel(url).await?, meter.clone(), args.topic.clone(), args.raw);
        let partitions: Vec<u32> = (0..args.partitions).filter(|p| *p as usize % args.consumers.max(1) == k).collect();
        tasks.push(tokio::spawn(async move {
            loop {
                for &partition in &partitions {
                    // Like a Kafka consumer's fetcher: the next fetch is on
                    // the wire while this response's records are decoded.
                    let fetch = |c: &Channel, next: u64| {
                        let c = c.clone();
                        let req = proto::FetchRequest {
                            topic: topic.clone(),
                            partition,
                            from: Some(proto::Position { position: Some(P::Offset(next)) }),
                            max_records: 100_000,
                            max_bytes: 8 << 20,
                            max_wait_ms: 0,
                            raw_batches: raw,
                        };
                        tokio::spawn(async move {
                            let t0 = Instant::now();
                            let r = crate::client::fetch(&c, req)
                                .await
                                .map_err(|s| anyhow::anyhow!("fetch failed: {}", s.message()));
                            (t0.elapsed(), r)
                        })
                    };
                    let mut next = 0u64;
                    let mut inflight = Some(fetch(&c, next));
                    while let Some(pending) = inflight.take() {
                        let (took, r) = pending.await?;
                        let r = r?;
                        meter.latency(took);
                        let empty = r.records.is_empty() && r.record_batches.is_empty();
                        let from = next;
                        next = r.next_offset;
                        let over = deadline.is_some_and(|d| Instant::now() >= d);
                        if !empty && !over {
                            inflight = Some(fetch(&c, next));
                        }
                        let (records, bytes) = if raw {
                            decoded(&r.record_batches, from)?
                        } else {
                            let bytes = r.records.iter().map(|x| (x.value.len() + x.key.len()) as u64).sum();
                            (r.records.len() as u64, bytes)
                        };
                        meter.add(records, bytes);
                        if over {
                            return Ok::<_, anyhow::Error>(());
                        }
                    }
                }
                if deadline.is_none_or(|d| Instant::now() >= d) {
                    return Ok(());
                }
            }
        }));
    }
    for t in tasks {
        t.await??;
    }
    Ok(())
}

pub async fn e2e(args: &BenchArgs) -> anyhow::Result<Summary> {
    let args = &BenchArgs {
        duration: args.duration.or(if args.records.is_none() { Some(Duration::from_secs(10)) } else { None }),
        rate: if args.rate == 0 { 10_000 } else { args.rate },
        ..args.clone()
    };
    let target = Target::start(args).await?;
    ensure_topic(&mut client(&target.url).await?, args).await?;
    let epoch = Instant::now();
    let meter = Meter::new();
    let stop = Arc::new(AtomicBool::new(false));
    let mut consumers = Vec::new();
    for _ in 0..args.consumers.max(1) {
        let mut c = client(&target.url).await?;
        let req = proto::SubscribeRequest {
            topic_pattern: args.topic.clone(),
            group: None,
            from: Some(proto::Position { position: Some(P::Boundary(proto::Boundary::Latest as i32)) }),
            fallback: None,
            raw_batches: false,
        };
        let mut stream = c.subscribe(req).await?.into_inner();
        // The first message lists the partitions: the stream is live.
        stream.next().await;
        let (meter, stop) = (meter.clone(), stop.clone());
        consumers.push(tokio::spawn(async move {
            while let Ok(Some(Ok(msg))) = tokio::time::timeout(Duration::from_millis(500), stream.next()).await {
                let now = epoch.elapsed().as_nanos() as u64;
                let mut bytes = 0;
                for r in &msg.records {
                    let sent = u64::from_le_bytes(r.value[..8].try_into().unwrap_or([0; 8]));
                    meter.latency(Duration::from_nanos(now.saturating_sub(sent)));
                    bytes += r.value.len() as u64;
                }
                meter.add(msg.records.len() as u64, bytes);
                if stop.load(Ordering::Relaxed) && msg.records.is_empty() {
                    break;
                }
            }
        }));
    }
    let done = Arc::new(AtomicBool::new(false));
    meter.spawn_progress("e2e".into(), done.clone());
    let value = stamped_values(args.record_bytes, epoch);
    let producers_meter = Meter::new();
    let cpu = CpuMeter::begin(args.server.as_deref());
    let started = Instant::now();
    run_producers(&target.url, args, &producers_meter, stop.clone(), value).await?;
    let elapsed = started.elapsed();
    stop.store(true, Ordering::Relaxed);
    for c in consumers {
        let _ = c.await;
    }
    done.store(true, Ordering::Relaxed);
    tokio::time::sleep(Duration::from_millis(20)).await;
    target.stop().await?;
    Ok(meter.summary("e2e", elapsed, config_json(args), &cpu))
}

/// Record values of `record_bytes` (at least 8) whose first 8 bytes are
/// the nanoseconds since `epoch` when made: their send time.
pub(super) fn stamped_values(record_bytes: usize, epoch: Instant) -> Arc<dyn Fn() -> Bytes + Send + Sync> {
    let record_bytes = record_bytes.max(8);
    Arc::new(move || {
        let mut v = vec![b'x'; record_bytes];
        v[..8].copy_from_slice(&(epoch.elapsed().as_nanos() as u64).to_le_bytes());
        Bytes::from(v)
    })
}

/// Decodes raw batches as a client would: records at or after `from`, and
/// their key + value bytes.
fn decoded(batches: &[Bytes], from: u64) -> anyhow::Result<(u64, u64)> {
    let (mut records, mut bytes) = (0u64, 0u64);
    for b in batches {
        for r in crate::storage::batch::decode_records(b)? {
            if r.offset >= from {
                records += 1;
                bytes += (r.key.len() + r.value.len()) as u64;
            }
        }
    }
    Ok((records, bytes))
}
