//! `strata bench`: a load generator against a running broker (`--server`)
//! or one started in-process on a temp dir (`--embedded`). A live progress
//! line on stderr, and a summary (records/s, MB/s, latency p50/p99/p99.9/max
//! from an HDR histogram) as text or one JSON object (`--json`).
//!
//! `limits` measures, in the same run and on the same disk, the physical
//! baselines (append + fdatasync, buffered writes, loopback TCP) and prints
//! strata's figures as ratios of them.

pub mod alert;
pub mod cpu;
pub mod kafka;
pub mod limits;
pub mod load;
pub mod report;
pub mod rskafka;
pub mod share;

use std::time::Duration;

use clap::{Args, Subcommand};

use crate::storage::FlushPolicy;

#[derive(Debug, Subcommand)]
pub enum BenchCommand {
    /// Producers sending batches; latency is send -> durable ack.
    Produce(BenchArgs),
    /// Consumers reading records already in the topic (written first if needed).
    Consume(BenchArgs),
    /// Producers at a rate and subscribers; latency is send -> received by a subscriber.
    E2e(BenchArgs),
    /// Share group workers fetching and acknowledging (drain a filled topic,
    /// or with --rate keep up with producers); records/s acknowledged.
    Share(share::ShareArgs),
    /// An alert rule that fires on every record: latency from the record's
    /// append to its alert received by a subscriber (--rules N loads N-1
    /// more that match nothing).
    Alert(alert::AlertArgs),
    /// Baselines of this machine and strata's figures as ratios of them.
    Limits(LimitsArgs),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Protocol {
    Grpc,
    Kafka,
}

/// The Kafka client `--protocol kafka` drives the broker with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum KafkaClient {
    /// librdkafka (the `rdkafka` crate), what most Kafka users run.
    Librdkafka,
    /// rskafka, a pure-Rust client that encodes whole batches, as `--raw` does.
    Rskafka,
}

#[derive(Debug, Clone, Args)]
pub struct BenchArgs {
    /// Start a broker in this process on a temp dir (default unless --server is given).
    #[arg(long)]
    pub embedded: bool,
    /// Broker URL, instead of --embedded (with --protocol kafka: HOST:PORT
    /// of any Kafka-compatible broker).
    #[arg(long)]
    pub server: Option<String>,
    /// The protocol the load goes through: strata's gRPC API, or the Kafka
    /// protocol driven by librdkafka (produce and consume).
    #[arg(long, value_enum, default_value_t = Protocol::Grpc)]
    pub protocol: Protocol,
    /// Data dir for --embedded [default: a temp dir next to ./data].
    #[arg(long)]
    pub data_dir: Option<std::path::PathBuf>,
    #[arg(long, default_value = "bench")]
    pub topic: String,
    #[arg(long, default_value_t = 1)]
    pub partitions: u32,
    #[arg(long, default_value_t = 1024)]
    pub record_bytes: usize,
    /// Records per request.
    #[arg(long, default_value_t = 100)]
    pub batch: usize,
    /// Concurrent producers.
    #[arg(long, default_value_t = 1)]
    pub producers: usize,
    /// Requests each producer keeps outstanding. Above 1, each producer
    /// pipelines over one ProduceStream, as a Kafka producer does with
    /// max.in.flight.requests.per.connection.
    #[arg(long, default_value_t = 1)]
    pub in_flight: usize,
    /// produce: send over one ProduceStream per producer even with one
    /// request in flight (a unary Produce opens an HTTP/2 stream per
    /// request: headers both ways and trailers, in both connection tasks).
    #[arg(long)]
    pub stream: bool,
    /// Concurrent consumers (consume, e2e).
    #[arg(long, default_value_t = 1)]
    pub consumers: usize,
    /// Total records (produce/consume); with --duration, whichever comes first.
    #[arg(long)]
    pub records: Option<u64>,
    /// How long to run, e.g. 30s.
    #[arg(long, value_parser = humantime::parse_duration)]
    pub duration: Option<Duration>,
    /// Target records/s over all producers (0 = as fast as possible).
    #[arg(long, default_value_t = 0)]
    pub rate: u64,
    /// Flush policy of the topic the bench creates.
    #[arg(long, default_value = "always")]
    pub flush: FlushPolicy,
    /// Print one JSON object on stdout instead of text (as `--format json`).
    #[arg(long)]
    pub json: bool,
    /// text, or json (the same as --json), as the other commands take it.
    #[arg(long, value_enum)]
    pub format: Option<crate::cli::Format>,
    /// Use the stored batch format on the wire instead of per-record
    /// protobuf: produce sends client-encoded record batches
    /// (record_batch); consume fetches stored batches as they are
    /// (raw_batches) and decodes them in the client.
    #[arg(long)]
    pub raw: bool,
    /// consume: read over one Subscribe stream per consumer (the broker
    /// pushes and reads ahead) instead of Fetch requests. With more than one
    /// consumer they share the partitions as one consumer group.
    #[arg(long)]
    pub subscribe: bool,
    /// produce: every record carries a unique event id header (`id:
    /// evt-<producer>-<n>`, about 12 bytes).
    #[arg(long)]
    pub ids: bool,
    /// The topic the bench creates de-duplicates by event id
    /// (`dedupe.window.ms` = 120000, NATS's default window).
    #[arg(long)]
    pub dedupe: bool,
    /// Alert rules matching nothing, loaded on the broker first (what rules
    /// cost a produce path they do not watch).
    #[arg(long, default_value_t = 0)]
    pub idle_rules: usize,
    /// --embedded: the broker serves TLS on every listener, with a CA and
    /// certificate made for this run; the bench's gRPC clients use it.
    #[arg(long)]
    pub tls: bool,
    /// --embedded: security on, with this many ACL entries for the bench's
    /// (anonymous) principal, all globs, one of which grants the bench
    /// topics: what authorization costs with that many rules.
    #[arg(long, default_value_t = 0)]
    pub acl_rules: usize,
    /// --protocol kafka: a librdkafka property for every producer and
    /// consumer the bench makes, as kcat's -X (repeatable), e.g.
    /// `-X enable.idempotence=true` or `-X compression.type=lz4`. Set after
    /// the bench's own, so it overrides them.
    /// --protocol kafka: the client library. librdkafka's own CPU per byte
    /// is about three times the broker's, so on shared cores its rows bound
    /// on the client; rskafka's measure the broker's Kafka path.
    #[arg(long, value_enum, default_value_t = KafkaClient::Librdkafka)]
    pub client: KafkaClient,
    #[arg(short = 'X', value_name = "KEY=VALUE", value_parser = parse_property)]
    pub kafka_property: Vec<(String, String)>,
}

fn parse_property(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_string(), v.to_string())),
        _ => Err(format!("expected KEY=VALUE, got {s:?}")),
    }
}

impl BenchArgs {
    /// Total records to produce or consume, when no duration bounds it.
    pub fn record_budget(&self) -> u64 {
        match (self.records, self.duration) {
            (Some(n), _) => n,
            (None, Some(_)) => u64::MAX,
            (None, None) => 200_000,
        }
    }
}

#[derive(Debug, Clone, Args)]
pub struct LimitsArgs {
    /// Directory on the disk to measure.
    #[arg(long, default_value = "./data")]
    pub data_dir: std::path::PathBuf,
    /// Seconds per strata measurement.
    #[arg(long, default_value_t = 5)]
    pub seconds: u64,
    /// Alert rules matching nothing, loaded on the broker before the rows.
    #[arg(long, default_value_t = 0)]
    pub idle_rules: usize,
    /// Print one JSON object on stdout (as `--format json`).
    #[arg(long)]
    pub json: bool,
    /// text, or json (the same as --json), as the other commands take it.
    #[arg(long, value_enum)]
    pub format: Option<crate::cli::Format>,
}

pub async fn run(mut command: BenchCommand) -> anyhow::Result<()> {
    let json = Some(crate::cli::Format::Json);
    match &mut command {
        BenchCommand::Produce(a) | BenchCommand::Consume(a) | BenchCommand::E2e(a) => a.json |= a.format == json,
        BenchCommand::Limits(a) => a.json |= a.format == json,
        BenchCommand::Share(a) => a.bench.json |= a.bench.format == json,
        BenchCommand::Alert(a) => a.bench.json |= a.bench.format == json,
    }
    match command {
        BenchCommand::Produce(a) if a.protocol == Protocol::Kafka => report::print(&kafka::produce(&a).await?, a.json),
        BenchCommand::Consume(a) if a.protocol == Protocol::Kafka => report::print(&kafka::consume(&a).await?, a.json),
        BenchCommand::E2e(a) if a.protocol == Protocol::Kafka => {
            anyhow::bail!("bench e2e --protocol kafka is not built yet; use produce or consume")
        }
        BenchCommand::Produce(a) => report::print(&load::produce(&a).await?, a.json),
        BenchCommand::Consume(a) => report::print(&load::consume(&a).await?, a.json),
        BenchCommand::E2e(a) => report::print(&load::e2e(&a).await?, a.json),
        BenchCommand::Limits(a) => limits::run(&a).await,
        BenchCommand::Share(a) => report::print(&share::run(&a).await?, a.bench.json),
        BenchCommand::Alert(a) => report::print(&alert::run(&a).await?, a.bench.json),
    }
}
