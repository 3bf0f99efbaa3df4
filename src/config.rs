//! Broker and topic configuration, and every limit: each has its unit in
//! its name (or is a `Duration`), and a "why" where it is not obvious.
//! Settings a user can change are fields of [`BrokerConfig`] (the TOML file
//! of `strata serve --config`) or [`TopicConfig`] (topic config keys);
//! the constants below are fixed at build time.
//!
//! Topic config keys (spec names): `retention.ms`, `retention.bytes`,
//! `segment.bytes`, `segment.ms`, `max.record.bytes`, `timestamp.type`,
//! `cleanup.policy`, `flush.policy`, and de-duplication by event id:
//! `dedupe.window.ms`, `dedupe.header`, `dedupe.max.ids`. Broker defaults apply to every topic
//! that does not override them. The keys keep Kafka's -1 for "no limit";
//! inside the code that is `None`.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use crate::storage::{FlushPolicy, LogConfig};

// ---- Topics and records ----

/// Smallest segment allowed (spec: 1 KiB).
pub const SEGMENT_BYTES_MIN: u64 = 1024;
/// Largest segment: index positions are 32-bit.
pub const SEGMENT_BYTES_MAX: u64 = 1 << 30;
/// Largest `max.record.bytes` a topic may set.
pub const RECORD_BYTES_MAX_LIMIT: usize = 64 << 20;
/// Header entries per record, so a hostile header map stays bounded.
pub const HEADERS_PER_RECORD_MAX: usize = 256;
/// Most partitions one topic may have.
pub const PARTITIONS_PER_TOPIC_MAX: u32 = 10_000;
/// Longest topic or group name (Kafka's).
pub const NAME_BYTES_MAX: usize = 249;
/// Longest `dedupe.window.ms`: a week (the ids of a week of records are
/// what `dedupe.max.ids` bounds; longer windows are a database's job).
pub const DEDUPE_WINDOW_MS_MAX: u64 = 7 * 24 * 3600 * 1000;
/// Largest `dedupe.max.ids` (ids per partition): at about 120 bytes per
/// id plus the id itself, 10 million ids are about 1.5 GB.
pub const DEDUPE_MAX_IDS_LIMIT: usize = 10_000_000;
/// Longest event id (longer: INVALID_ARGUMENT), and header name.
pub const DEDUPE_ID_BYTES_MAX: usize = 256;

// ---- Fetch and push ----

/// Most records one fetch returns, and the default when a request says 0.
pub const FETCH_RECORDS_MAX: usize = 100_000;
pub const FETCH_RECORDS_DEFAULT: usize = 1000;
/// Bytes per fetch when a request says 0.
pub const FETCH_BYTES_DEFAULT: usize = 1 << 20;
/// Longest long poll.
pub const FETCH_WAIT_MAX: Duration = Duration::from_secs(60);
/// Bytes of gRPC fetch responses read ahead of their requests, broker
/// wide: a consumer reading a partition through has its next response
/// read and encoded while it decodes this one (`listener/grpc/ahead.rs`).
/// Eight 8 MiB fetches; when it is taken, fetches are read when asked.
pub const FETCH_AHEAD_BYTES_MAX: usize = 64 << 20;
/// Responses read ahead per partition and consumer: two keep the broker
/// reading while the client decodes and the next one is on its way.
pub const FETCH_AHEAD_DEPTH: usize = 2;
/// A response read ahead and not asked for within this long is dropped.
pub const FETCH_AHEAD_KEEP: Duration = Duration::from_secs(5);
/// Bytes read ahead for one connection: no client takes more than a
/// quarter of `FETCH_AHEAD_BYTES_MAX` (two 8 MiB responses).
pub const FETCH_AHEAD_CONNECTION_BYTES_MAX: usize = FETCH_AHEAD_BYTES_MAX / 4;
/// Responses read ahead per connection (partitions fetched in turn over
/// one connection each keep theirs).
pub const FETCH_AHEAD_PER_CONNECTION: usize = 8;
/// Records per push message of a per-record subscription.
pub const PUSH_RECORDS_MAX: usize = 1000;
/// Bytes per push message of a per-record subscription (about).
pub const PUSH_BYTES_MAX: usize = 1 << 20;
/// Bytes per push message of a raw subscription (about). Measured on a
/// 2-core VM reading 3 GB from the page cache: 2 MiB gave about 10% more
/// than 1 MiB and 15% more than 4 MiB (bigger messages wait longer to be
/// read, encoded and sent before the next can overlap them).
pub const PUSH_RAW_BYTES_MAX: usize = 2 << 20;

// ---- Produce ----

/// Produce requests one ProduceStream may have in flight (awaiting fsync).
pub const PRODUCE_STREAM_IN_FLIGHT_MAX: usize = 256;
/// Decoded size of one produced record beyond its encoded bytes (the
/// structs around key, value and headers), for the request budget: a
/// request of millions of empty records is small on the wire and huge
/// once decoded.
pub const DECODED_RECORD_BYTES: usize = 256;
/// Decoded size of one record header beyond its encoded bytes.
pub const DECODED_HEADER_BYTES: usize = 128;
/// Requests at least this large (or with this many records) are decoded
/// where blocking is fine, not on an async worker other connections share.
pub const DECODE_INLINE_BYTES_MAX: usize = 1 << 20;
pub const DECODE_INLINE_RECORDS_MAX: usize = 10_000;
/// How long a request that holds its bytes' share of the request budget
/// waits for the share its decoding needs before it is refused (waiting
/// without end could deadlock requests that hold each other's shares).
pub const DECODE_BUDGET_WAIT: Duration = Duration::from_secs(1);
/// Idempotent producers remembered per partition (the least recently
/// active is forgotten), and batches remembered per producer (Kafka's 5).
pub const PRODUCERS_PER_PARTITION_MAX: usize = 10_000;
pub const BATCHES_PER_PRODUCER: usize = 5;
/// Producer ids reserved on disk at a time.
pub const PRODUCER_ID_BLOCK: i64 = 1000;

// ---- Consumer groups ----

/// Session timeouts a member may ask for, and the default.
pub const SESSION_TIMEOUT_DEFAULT: Duration = Duration::from_secs(10);
pub const SESSION_TIMEOUT_MIN: Duration = Duration::from_millis(100);
pub const SESSION_TIMEOUT_MAX: Duration = Duration::from_secs(3600);
/// How often expired sessions are looked for.
pub const SESSION_EXPIRY_CHECK_INTERVAL: Duration = Duration::from_millis(50);
/// How often a group Subscribe stream refreshes its member's heartbeat.
pub const STREAM_HEARTBEAT_INTERVAL: Duration = Duration::from_secs(1);
/// Segment size of the internal offsets log, and how many segments it may
/// have before the live offsets are restated as a snapshot.
pub const OFFSETS_SEGMENT_BYTES: u64 = 8 << 20;
pub const OFFSETS_COMPACT_SEGMENTS: usize = 4;
/// Records and bytes (about) per batch of an offsets snapshot.
pub const OFFSETS_SNAPSHOT_BATCH_RECORDS_MAX: usize = 1000;
pub const OFFSETS_SNAPSHOT_BATCH_BYTES_MAX: usize = 1 << 20;

// ---- Share groups ----

/// A share group's defaults (`AlterShareGroup` keys in brackets): how long
/// a delivered record stays acquired [`ack.wait.ms`], deliveries before it
/// is dead-lettered [`max.deliveries`], records acquired at once per
/// partition [`max.in.flight`].
pub const SHARE_ACK_WAIT_DEFAULT: Duration = Duration::from_secs(30);
pub const SHARE_MAX_DELIVERIES_DEFAULT: u32 = 5;
pub const SHARE_MAX_IN_FLIGHT_DEFAULT: u32 = 1000;
/// Bounds on those keys: a lock longer than a day is a forgotten record, a
/// window over 100,000 records per partition is memory a group may not pin.
pub const SHARE_ACK_WAIT_MAX: Duration = Duration::from_secs(24 * 3600);
pub const SHARE_MAX_DELIVERIES_MAX: u32 = 1000;
pub const SHARE_MAX_IN_FLIGHT_MAX: u32 = 100_000;
/// Entries of `backoff.ms`, and the longest one (a week).
pub const SHARE_BACKOFF_STEPS_MAX: usize = 32;
pub const SHARE_BACKOFF_MAX: Duration = Duration::from_secs(7 * 24 * 3600);
/// Share groups one broker keeps by default (`share_groups_max`).
pub const SHARE_GROUPS_MAX: usize = 10_000;
/// Members DescribeShareGroup remembers per group, and the longest member
/// id kept (longer ones are cut at a char boundary).
pub const SHARE_MEMBERS_MAX: usize = 1000;
pub const SHARE_MEMBER_ID_BYTES_MAX: usize = 255;
/// Longest `dlq.reason` kept (longer reasons are cut at a char boundary).
pub const SHARE_REASON_BYTES_MAX: usize = 1024;

// ---- Storage ----

/// Largest batch the format allows; a length field above it is corruption.
pub const BATCH_BYTES_LIMIT: usize = 256 << 20;
/// Largest records section a compressed batch may decompress to: a small
/// batch may claim gigabytes (a compression bomb).
pub const DECOMPRESSED_BATCH_BYTES_MAX: usize = 64 << 20;
/// One index entry about every this many bytes of log.
pub const INDEX_INTERVAL_BYTES: u64 = 4096;
/// Index entries preallocated for one segment at most.
pub const INDEX_ENTRIES_MAX: u64 = 1 << 20;
/// Reads below this size are copied with `pread`; larger ones are mapped
/// (the mapping's setup and teardown would cost more than the copy).
pub const MAPPED_READ_BYTES_MIN: usize = 256 << 10;
/// Recovery checkpoint hints written at once by one checkpoint pass. A
/// pass over 100 busy partitions one at a time took 0.1-0.5 s during a
/// write burst (each hint is a small file replaced by rename), which
/// stretched the interval and so what recovery after a crash rescans.
pub const CHECKPOINT_WRITES_IN_FLIGHT: usize = 8;
/// How often the broker finishes rolls, runs interval flushes and starts
/// checkpoint passes.
pub const BACKGROUND_TICK: Duration = Duration::from_millis(50);
/// Pause before a background loop that panicked runs again, so a panic on
/// every pass logs a line a second instead of spinning.
pub const BACKGROUND_RESTART_DELAY: Duration = Duration::from_secs(1);

// ---- Listeners ----

/// Pause after an accept fails for lack of descriptors or memory: the
/// connections wait in the kernel's backlog meanwhile.
pub const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);
/// At most one warning this often while accepts keep failing.
pub const ACCEPT_WARN_INTERVAL: Duration = Duration::from_secs(10);
/// TCP keepalive on accepted sockets: finds peers that vanished without
/// a FIN (HTTP/2 pings find them sooner on busy connections).
pub const TCP_KEEPALIVE: Duration = Duration::from_secs(60);
/// HTTP/2 keepalive pings, and how long a ping may go unanswered.
pub const HTTP2_KEEPALIVE_INTERVAL: Duration = Duration::from_secs(30);
pub const HTTP2_KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(10);
/// HTTP/2 windows the broker grants: per stream and per connection.
/// Concurrent HTTP/2 streams (calls) per gRPC connection.
pub const HTTP2_STREAMS_PER_CONNECTION_MAX: u32 = 1000;
pub const HTTP2_STREAM_WINDOW_BYTES: u32 = 1 << 20;
pub const HTTP2_CONNECTION_WINDOW_BYTES: u32 = 8 << 20;
/// Largest HTTP/2 frame: a 1 MiB produce or fetch is a few frames, not 64.
pub const HTTP2_FRAME_BYTES_MAX: u32 = 1 << 20;
/// Largest body chunk handed to hyper at once. hyper takes a chunk as
/// soon as the stream has any send capacity and buffers what exceeds it,
/// so this bounds what a stalled client makes the broker buffer. 256 KiB
/// cost 10% of raw Subscribe throughput (a DATA frame and writev each);
/// the frame size costs nothing measurable.
pub const PUSH_CHUNK_BYTES_MAX: usize = 1 << 20;
/// Stored batches smaller than this are copied next to their protobuf
/// field header instead of going out as a chunk of their own: each chunk
/// is an HTTP/2 DATA frame and a write, which costs more than a few KiB.
pub const PUSH_SHARED_BATCH_BYTES_MIN: usize = 16 << 10;
/// How long a graceful stop waits for in-flight requests.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(30);

/// Which time a record is stored with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TimestampType {
    /// The producer's timestamp (broker time when it sent 0).
    Create,
    /// The broker's time when it appended the record.
    Append,
}

/// Per-topic settings; the effective config is broker defaults + overrides.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicConfig {
    /// `retention.ms`; `None` (-1) keeps records forever.
    pub retention_age: Option<Duration>,
    /// `retention.bytes`; `None` (-1) is unlimited.
    pub retention_bytes: Option<u64>,
    pub segment_bytes: u64,
    /// `segment.ms`.
    pub segment_age: Duration,
    pub record_bytes_max: usize,
    pub timestamp_type: TimestampType,
    pub flush: FlushPolicy,
    /// `dedupe.window.ms`: how long an event id is remembered; 0 = off.
    pub dedupe_window_ms: u64,
    /// `dedupe.header`: the header carrying the event id.
    pub dedupe_header: String,
    /// `dedupe.max.ids`: most ids remembered per partition (the oldest go first).
    pub dedupe_max_ids: usize,
}

impl Default for TopicConfig {
    fn default() -> Self {
        let week = Duration::from_secs(7 * 24 * 3600);
        TopicConfig {
            retention_age: Some(week),
            retention_bytes: None,
            segment_bytes: 128 << 20,
            segment_age: week,
            record_bytes_max: 1 << 20,
            timestamp_type: TimestampType::Create,
            flush: FlushPolicy::Always,
            dedupe_window_ms: 0,
            dedupe_header: "id".to_string(),
            dedupe_max_ids: 1_000_000,
        }
    }
}

/// Every key a topic config accepts.
pub const TOPIC_CONFIG_KEYS: &[&str] = &[
    "cleanup.policy",
    "dedupe.header",
    "dedupe.max.ids",
    "dedupe.window.ms",
    "flush.policy",
    "max.record.bytes",
    "retention.bytes",
    "retention.ms",
    "segment.bytes",
    "segment.ms",
    "timestamp.type",
];

/// -1 (Kafka's "no limit") as `None`.
fn unlimited(v: i64) -> Option<u64> {
    (v >= 0).then_some(v as u64)
}

fn ms_or_unlimited(d: Option<Duration>) -> String {
    d.map_or("-1".to_string(), |d| d.as_millis().to_string())
}

impl TopicConfig {
    /// Applies `key = value`; the error names the key, the value and what is allowed.
    pub fn set(&mut self, key: &str, value: &str) -> Result<(), String> {
        let int = |min: i64| -> Result<i64, String> {
            value
                .trim()
                .parse::<i64>()
                .ok()
                .filter(|v| *v >= min)
                .ok_or_else(|| format!("config {key}={value:?}: expected an integer >= {min}"))
        };
        match key {
            "retention.ms" => self.retention_age = unlimited(int(-1)?).map(Duration::from_millis),
            "retention.bytes" => self.retention_bytes = unlimited(int(-1)?),
            "segment.bytes" => {
                let v = int(SEGMENT_BYTES_MIN as i64)?;
                if v as u64 > SEGMENT_BYTES_MAX {
                    return Err(format!("config {key}={value:?}: at most {SEGMENT_BYTES_MAX} bytes"));
                }
                self.segment_bytes = v as u64;
            }
            "segment.ms" => self.segment_age = Duration::from_millis(int(1)? as u64),
            "max.record.bytes" => {
                let v = int(1)?;
                if v as usize > RECORD_BYTES_MAX_LIMIT {
                    return Err(format!("config {key}={value:?}: at most {RECORD_BYTES_MAX_LIMIT} bytes"));
                }
                self.record_bytes_max = v as usize;
            }
            "timestamp.type" => {
                self.timestamp_type = match value {
                    "create" => TimestampType::Create,
                    "append" => TimestampType::Append,
                    _ => return Err(format!("config {key}={value:?}: expected create or append")),
                }
            }
            "cleanup.policy" => {
                if value != "delete" {
                    return Err(format!("config {key}={value:?}: only delete is supported"));
                }
            }
            "flush.policy" => self.flush = value.parse().map_err(|e| format!("config {key}: {e}"))?,
            "dedupe.window.ms" => {
                let v = int(0)? as u64;
                if v > DEDUPE_WINDOW_MS_MAX {
                    return Err(format!("config {key}={value:?}: at most {DEDUPE_WINDOW_MS_MAX} ms (a week)"));
                }
                self.dedupe_window_ms = v;
            }
            "dedupe.max.ids" => {
                let v = int(1)? as usize;
                if v > DEDUPE_MAX_IDS_LIMIT {
                    return Err(format!("config {key}={value:?}: at most {DEDUPE_MAX_IDS_LIMIT} ids per partition"));
                }
                self.dedupe_max_ids = v;
            }
            "dedupe.header" => {
                if value.is_empty() || value.len() > DEDUPE_ID_BYTES_MAX {
                    return Err(format!("config {key}={value:?}: a header name of 1 to {DEDUPE_ID_BYTES_MAX} bytes"));
                }
                self.dedupe_header = value.to_string();
            }
            _ => return Err(format!("unknown config key {key:?}; known keys: {}", TOPIC_CONFIG_KEYS.join(", "))),
        }
        Ok(())
    }

    /// Applies every pair, all or nothing.
    pub fn with(&self, overrides: &BTreeMap<String, String>) -> Result<TopicConfig, String> {
        let mut config = self.clone();
        for (k, v) in overrides {
            config.set(k, v)?;
        }
        Ok(config)
    }

    /// Every key with its effective value, as plain integers or words.
    pub fn to_map(&self) -> BTreeMap<String, String> {
        let mut m = BTreeMap::new();
        m.insert("cleanup.policy".into(), "delete".into());
        m.insert("dedupe.header".into(), self.dedupe_header.clone());
        m.insert("dedupe.max.ids".into(), self.dedupe_max_ids.to_string());
        m.insert("dedupe.window.ms".into(), self.dedupe_window_ms.to_string());
        m.insert("flush.policy".into(), self.flush.to_string());
        m.insert("max.record.bytes".into(), self.record_bytes_max.to_string());
        m.insert("retention.bytes".into(), self.retention_bytes.map_or("-1".into(), |b| b.to_string()));
        m.insert("retention.ms".into(), ms_or_unlimited(self.retention_age));
        m.insert("segment.bytes".into(), self.segment_bytes.to_string());
        m.insert("segment.ms".into(), self.segment_age.as_millis().to_string());
        let ts = match self.timestamp_type {
            TimestampType::Create => "create",
            TimestampType::Append => "append",
        };
        m.insert("timestamp.type".into(), ts.into());
        m
    }

    /// The storage settings for this topic's partitions.
    pub fn log_config(&self, request_bytes_max: usize) -> LogConfig {
        LogConfig {
            segment_bytes: self.segment_bytes,
            segment_age: self.segment_age,
            retention_age: self.retention_age,
            retention_bytes: self.retention_bytes,
            batch_bytes_max: request_bytes_max + (64 << 10),
            flush: self.flush,
            ..LogConfig::default()
        }
    }
}

/// Broker-wide settings.
#[derive(Debug, Clone)]
pub struct BrokerConfig {
    pub data_dir: PathBuf,
    pub listen: SocketAddr,
    /// The Kafka protocol listener's address; `None`: no Kafka listener.
    pub kafka_listen: Option<SocketAddr>,
    /// The `host:port` Kafka clients are told to connect to (Metadata,
    /// FindCoordinator); `None`: the address each connection came in on.
    pub kafka_advertised: Option<String>,
    /// The HTTP listener (`/metrics`, `/healthz`, the console); `None`: none.
    pub http_listen: Option<SocketAddr>,
    /// Largest request accepted (spec default 16 MiB).
    pub request_bytes_max: usize,
    /// How often retention runs (`retention.check.interval.ms`).
    pub retention_check_interval: Duration,
    /// How often dirty partitions write a recovery checkpoint: after a
    /// crash, recovery rescans what was written since (with 100 busy
    /// partitions, 1 s of a 400 MB/s burst doubled the time to ready).
    pub checkpoint_interval: Duration,
    /// How long a segment rolled under `never` or `interval` waits for its
    /// background fsync. The kernel writes dirty pages back by itself after
    /// 30 s (`vm.dirty_expire_centisecs`), or sooner under memory pressure,
    /// so by then the fsync adds little I/O; done at once, it made the disk
    /// write back during bursts and cost a 1 GB never-produce burst 30-45%
    /// of its throughput on the 2-core CI machine. The price: after a power
    /// loss (never after a process crash) recovery rescans up to this much
    /// of the newest appends.
    pub rolled_segment_sync_delay: Duration,
    /// Partitions of a topic created without a count.
    pub default_partitions: u32,
    /// Bytes of requests being received or decoded at once, every
    /// connection together (Kafka's `queued.max.request.bytes`). While it
    /// is spent, the broker stops reading requests and flow control holds
    /// the senders back.
    pub request_bytes_in_flight_max: usize,
    /// A request must arrive whole within this long of its first byte; a
    /// client that stalls half way gets DEADLINE_EXCEEDED and gives its
    /// share of the budget back.
    pub request_read_timeout: Duration,
    /// Most records one produce request may carry: each costs a few hundred
    /// bytes once decoded, so 16 MiB of empty records would take gigabytes.
    pub produce_records_max: usize,
    /// Bytes a push stream (Subscribe) may read ahead of its client: what a
    /// subscriber that stops reading holds, however many partitions it follows.
    pub stream_buffer_bytes_max: usize,
    /// Share groups the broker keeps: a client cannot create them without
    /// end (each holds memory and journal space); one more is refused
    /// with RESOURCE_EXHAUSTED.
    pub share_groups_max: usize,
    /// How often a log that an I/O error poisoned (it refuses writes) is
    /// tried again: reopened in place once the fault has cleared.
    pub poisoned_log_retry: Duration,
    /// Largest metadata string a committed offset may carry (Kafka's
    /// `offset.metadata.max.bytes`); every commit is kept in memory and
    /// restated by each snapshot of the offsets log.
    pub offset_metadata_bytes_max: usize,
    /// `[tls]`: TLS on every listener (paths resolved against the config file).
    pub tls: Option<crate::security::tls::TlsFiles>,
    /// `[security]`: users and ACLs; `None` = security off.
    pub security: Option<crate::security::SecurityFile>,
    /// The TOML file this came from, re-read on SIGHUP or when it changes
    /// (users and ACLs).
    pub config_file: Option<PathBuf>,
    /// Open connections over every listener, and per client IP.
    pub max_connections: usize,
    pub max_connections_per_ip: usize,
    /// A connection with no traffic for this long is closed.
    pub idle_timeout: Duration,
    /// Defaults for every topic.
    pub topic_defaults: TopicConfig,
}

impl Default for BrokerConfig {
    fn default() -> Self {
        BrokerConfig {
            data_dir: PathBuf::from("./data"),
            listen: "127.0.0.1:50051".parse().expect("valid address"),
            kafka_listen: Some("127.0.0.1:9092".parse().expect("valid address")),
            kafka_advertised: None,
            http_listen: Some("127.0.0.1:9644".parse().expect("valid address")),
            request_bytes_max: 16 << 20,
            retention_check_interval: Duration::from_secs(5),
            checkpoint_interval: Duration::from_millis(250),
            rolled_segment_sync_delay: Duration::from_secs(30),
            default_partitions: 1,
            request_bytes_in_flight_max: 256 << 20,
            request_read_timeout: Duration::from_secs(30),
            produce_records_max: 200_000,
            stream_buffer_bytes_max: 2 << 20,
            share_groups_max: SHARE_GROUPS_MAX,
            poisoned_log_retry: Duration::from_secs(5),
            offset_metadata_bytes_max: 4096,
            tls: None,
            security: None,
            config_file: None,
            max_connections: 10_000,
            max_connections_per_ip: 1_000,
            idle_timeout: Duration::from_secs(600),
            topic_defaults: TopicConfig::default(),
        }
    }
}

/// The TOML file of `strata serve --config`. Topic defaults use the topic
/// config keys, quoted: `[topic_defaults] "retention.ms" = 86400000`.
/// Settings named after Kafka's keep Kafka's (dotted) names.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConfigFile {
    pub data_dir: Option<PathBuf>,
    pub listen: Option<SocketAddr>,
    /// An address, or `"none"` for no Kafka listener.
    pub kafka_listen: Option<String>,
    pub kafka_advertised_listener: Option<String>,
    /// An address, or `"none"` for no HTTP listener.
    pub http_listen: Option<String>,
    pub max_request_bytes: Option<usize>,
    #[serde(rename = "retention.check.interval.ms")]
    pub retention_check_interval_ms: Option<u64>,
    pub checkpoint_interval_ms: Option<u64>,
    pub rolled_segment_sync_delay_ms: Option<u64>,
    pub default_partitions: Option<u32>,
    #[serde(rename = "offset.metadata.max.bytes")]
    pub offset_metadata_max_bytes: Option<usize>,
    #[serde(rename = "queued.max.request.bytes")]
    pub queued_max_request_bytes: Option<usize>,
    pub request_read_timeout_ms: Option<u64>,
    pub poisoned_log_retry_ms: Option<u64>,
    pub produce_records_max: Option<usize>,
    pub stream_buffer_bytes_max: Option<usize>,
    pub share_groups_max: Option<usize>,
    pub max_connections: Option<usize>,
    pub max_connections_per_ip: Option<usize>,
    pub idle_timeout_ms: Option<u64>,
    #[serde(default)]
    pub topic_defaults: BTreeMap<String, toml::Value>,
    pub tls: Option<crate::security::tls::TlsFiles>,
    pub security: Option<crate::security::SecurityFile>,
}

/// A listener's address, or `none` to have no such listener.
pub fn parse_listen(text: &str) -> Result<Option<SocketAddr>, String> {
    if text.eq_ignore_ascii_case("none") {
        return Ok(None);
    }
    parse_addr(text).map(Some).map_err(|e| format!("{e} (or `none`)"))
}

/// An address to listen on: `127.0.0.1:9092`, `[::1]:9092`, or a name such
/// as `localhost:9092` (its first IPv4 address, else its first).
pub fn parse_addr(text: &str) -> Result<SocketAddr, String> {
    if let Ok(a) = text.parse() {
        return Ok(a);
    }
    let bad = || format!("{text:?} is not an address like 127.0.0.1:9092 or localhost:9092");
    let (host, port) = text.rsplit_once(':').ok_or_else(bad)?;
    if host.is_empty() || port.parse::<u16>().is_err() {
        return Err(bad());
    }
    let found: Vec<SocketAddr> =
        std::net::ToSocketAddrs::to_socket_addrs(text).map_err(|e| format!("cannot resolve {host:?}: {e}"))?.collect();
    found.iter().find(|a| a.is_ipv4()).or(found.first()).copied().ok_or_else(|| format!("{host:?} has no address"))
}

/// An advertised `host:port` (a name is fine: clients resolve it).
pub fn parse_advertised(text: &str) -> Result<String, String> {
    match text.rsplit_once(':') {
        Some((host, port)) if !host.is_empty() && port.parse::<u16>().is_ok_and(|p| p > 0) => Ok(text.to_string()),
        _ => Err(format!("{text:?} is not host:port")),
    }
}

/// At least 1 ms.
fn ms(v: u64) -> Duration {
    Duration::from_millis(v.max(1))
}

impl ConfigFile {
    pub fn parse(text: &str) -> Result<ConfigFile, String> {
        toml::from_str(text).map_err(|e| e.to_string())
    }

    /// Applies the file's settings on top of `config`.
    pub fn apply(&self, config: &mut BrokerConfig) -> Result<(), String> {
        if let Some(v) = &self.data_dir {
            config.data_dir = v.clone();
        }
        if let Some(v) = self.listen {
            config.listen = v;
        }
        if let Some(v) = &self.kafka_listen {
            config.kafka_listen = parse_listen(v).map_err(|e| format!("kafka_listen: {e}"))?;
        }
        if let Some(v) = &self.http_listen {
            config.http_listen = parse_listen(v).map_err(|e| format!("http_listen: {e}"))?;
        }
        if let Some(v) = &self.kafka_advertised_listener {
            config.kafka_advertised = Some(parse_advertised(v).map_err(|e| format!("kafka_advertised_listener: {e}"))?);
        }
        if let Some(v) = self.max_request_bytes {
            if !(1024..=(256 << 20)).contains(&v) {
                return Err(format!("max_request_bytes = {v}: expected 1024..=268435456"));
            }
            config.request_bytes_max = v;
        }
        if let Some(v) = self.retention_check_interval_ms {
            config.retention_check_interval = ms(v);
        }
        if let Some(v) = self.checkpoint_interval_ms {
            config.checkpoint_interval = ms(v);
        }
        if let Some(v) = self.rolled_segment_sync_delay_ms {
            config.rolled_segment_sync_delay = Duration::from_millis(v);
        }
        if let Some(v) = self.default_partitions {
            if v == 0 {
                return Err("default_partitions must be at least 1".into());
            }
            config.default_partitions = v;
        }
        if let Some(v) = self.offset_metadata_max_bytes {
            if v > 1 << 20 {
                return Err(format!("offset.metadata.max.bytes = {v}: at most 1048576"));
            }
            config.offset_metadata_bytes_max = v;
        }
        if let Some(v) = self.queued_max_request_bytes {
            if v < config.request_bytes_max {
                return Err(format!(
                    "queued.max.request.bytes = {v}: at least max_request_bytes ({})",
                    config.request_bytes_max
                ));
            }
            config.request_bytes_in_flight_max = v;
        }
        if let Some(v) = self.request_read_timeout_ms {
            config.request_read_timeout = ms(v);
        }
        if let Some(v) = self.poisoned_log_retry_ms {
            config.poisoned_log_retry = ms(v);
        }
        if let Some(v) = self.produce_records_max {
            config.produce_records_max = v.max(1);
        }
        if let Some(v) = self.stream_buffer_bytes_max {
            config.stream_buffer_bytes_max = v.max(64 << 10);
        }
        if let Some(v) = self.share_groups_max {
            config.share_groups_max = v;
        }
        if let Some(v) = self.max_connections {
            config.max_connections = v.max(1);
        }
        if let Some(v) = self.max_connections_per_ip {
            config.max_connections_per_ip = v.max(1);
        }
        if let Some(v) = self.idle_timeout_ms {
            config.idle_timeout = ms(v);
        }
        if let Some(tls) = &self.tls {
            config.tls = Some(tls.clone());
        }
        if let Some(security) = &self.security {
            crate::security::Rules::compile(security)?;
            config.security = Some(security.clone());
        }
        for (k, v) in &self.topic_defaults {
            let text = match v {
                toml::Value::String(s) => s.clone(),
                other => other.to_string(),
            };
            config.topic_defaults.set(k, &text)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn effective_config_lists_every_key_and_round_trips() {
        let c = TopicConfig::default();
        let map = c.to_map();
        assert_eq!(map.keys().map(String::as_str).collect::<Vec<_>>(), TOPIC_CONFIG_KEYS);
        assert_eq!(TopicConfig::default().with(&map).unwrap(), c);
        assert_eq!(map["retention.ms"], "604800000");
        let forever = TopicConfig::default().with(&[("retention.ms".into(), "-1".into())].into()).unwrap();
        assert_eq!((forever.retention_age, forever.to_map()["retention.ms"].as_str()), (None, "-1"));
    }

    #[test]
    fn bad_values_are_named() {
        let mut c = TopicConfig::default();
        assert!(c.set("segment.bytes", "10").unwrap_err().contains("segment.bytes"));
        assert!(c.set("flush.policy", "sometimes").is_err());
        assert!(c.set("colour", "red").unwrap_err().contains("known keys"));
        c.set("flush.policy", "interval:200").unwrap();
        assert_eq!(c.flush, FlushPolicy::Interval(200));
    }

    #[test]
    fn config_file_applies_topic_defaults() {
        let f = ConfigFile::parse(
            "listen = \"127.0.0.1:6000\"\n\"retention.check.interval.ms\" = 100\nrolled_segment_sync_delay_ms = 0\n[topic_defaults]\n\"retention.ms\" = 1000\n\"flush.policy\" = \"never\"\n",
        )
        .unwrap();
        let mut c = BrokerConfig::default();
        f.apply(&mut c).unwrap();
        assert_eq!(c.listen.port(), 6000);
        assert_eq!(c.retention_check_interval, Duration::from_millis(100));
        assert_eq!(c.rolled_segment_sync_delay, Duration::ZERO);
        assert_eq!(c.topic_defaults.retention_age, Some(Duration::from_secs(1)));
        assert_eq!(c.topic_defaults.flush, FlushPolicy::Never);
        assert!(ConfigFile::parse("bogus = 1").is_err());
    }

    proptest! {
        #[test]
        fn arbitrary_config_text_never_panics(text in "\\PC{0,200}", key in "[a-z.]{0,20}", value in "\\PC{0,20}") {
            if let Ok(f) = ConfigFile::parse(&text) {
                let _ = f.apply(&mut BrokerConfig::default());
            }
            let _ = TopicConfig::default().set(&key, &value);
        }
    }
}
