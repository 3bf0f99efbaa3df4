//! Fetch read-ahead: a consumer reading a partition through with Fetch
//! asks for the next records as soon as it has this response, and until
//! then the broker has nothing to do for it. So when a per-record Fetch
//! stops at its limits with more records behind them, the next one (same
//! caller, partition and limits, from the offset this one returned) is read
//! and encoded at once, while the client decodes this one; the request that
//! asks for it gets it ready.
//!
//! A Fetch is a record-by-record job for the broker (read, check, decode,
//! encode each record), unlike raw batches, which leave as stored: with one
//! Fetch in flight the broker and the client took turns, each idle while
//! the other worked (per record, 0.4-0.5 of raw Subscribe on two cores).
//! (Measured and left out, in the client: sending the next Fetch as soon
//! as a response's head (next offset, written before the records) has
//! arrived, two Fetches in flight: 1,306 vs 1,297 MB/s over three rounds
//! alternated, at slightly more client CPU; what is left between
//! per-record Fetch and raw Subscribe is decoding records, not waiting.)
//!
//! What is served is what a fetch asked for at that moment would return:
//! - It is kept per connection and per principal, and handed only to a
//!   request with the same partition, offset and limits, after that
//!   request passed authorization itself.
//! - It is dropped if the partition is not the one it was read from (the
//!   topic was deleted and created again), if the log start moved past it
//!   or the log's end fell below it (retention, truncation), or if it
//!   stopped at the end of the log and the log has grown since (a fetch now
//!   would return more). Its high watermark and log start are the current
//!   ones, and it is counted as fetched only when served.
//! - Memory: at most `FETCH_AHEAD_BYTES_MAX` broker wide (when it is taken,
//!   fetches are read when asked, as before), a quarter of that and
//!   `FETCH_AHEAD_PER_CONNECTION` responses per connection, each dropped
//!   `FETCH_AHEAD_KEEP` after it was read or when its connection closes.
//! - Work: a fetch that was not read ahead (the first, or one that seeks)
//!   starts one read ahead; only a consumer that took one (reading the
//!   partition through) gets `FETCH_AHEAD_DEPTH`. A client that seeks at
//!   random makes the broker read at most twice what it fetches.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use tokio::sync::watch;
use tonic::{Request, Status};

use super::codec::{self, RecordChunks, RecordEncoder};
use super::routes::FETCH_BATCHES_FIELD;
use super::service::{caller_of, topic, BrokerService};
use crate::broker::budget::BudgetPermit;
use crate::broker::partition::{Partition, ReadSink};
use crate::broker::Broker;
use crate::config::{
    FETCH_AHEAD_CONNECTION_BYTES_MAX, FETCH_AHEAD_DEPTH, FETCH_AHEAD_KEEP, FETCH_AHEAD_PER_CONNECTION,
};
use crate::proto;
use crate::telemetry;

/// The responses read ahead for one connection.
#[derive(Debug, Default)]
pub struct FetchAhead {
    slots: Mutex<VecDeque<Slot>>,
}

/// Which fetch a response was read for.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Key {
    principal: Option<String>,
    topic: String,
    partition: u32,
    from: u64,
    /// As served ([`Broker::fetch_limits`]).
    records_max: usize,
    bytes_max: usize,
}

impl Key {
    fn same_partition(&self, other: &Key) -> bool {
        self.principal == other.principal && self.topic == other.topic && self.partition == other.partition
    }
}

/// A response being read ahead, or read.
#[derive(Debug)]
struct Slot {
    key: Key,
    /// The response, once read (taken when served or when it expires).
    cell: Arc<Mutex<Option<Prepared>>>,
    /// True once the read is over, whatever it found.
    ready: watch::Receiver<bool>,
    task: tokio::task::AbortHandle,
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A response read ahead: its records encoded, its head to be written
/// when it is served.
#[derive(Debug)]
struct Prepared {
    partition: Arc<Partition>,
    /// The high watermark when it was read.
    read_high_watermark: u64,
    next_offset: u64,
    records: u64,
    /// Stored bytes, as `strata_fetch_bytes_total` counts them.
    batch_bytes: u64,
    encoded: RecordChunks,
    /// Headers of the records that carry a trace context (for the receive
    /// span's links; empty when tracing is off).
    traced: Vec<Vec<(String, Bytes)>>,
    /// Its share of the broker's read-ahead budget.
    _permit: BudgetPermit,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl FetchAhead {
    /// The response read ahead for `key`, if there is one and a fetch now
    /// would return the same records. Waits for a read still under way.
    /// What else was read ahead for the partition is dropped when there is
    /// none for `key` (the consumer seeked), else what lies before `key`.
    async fn claim(&self, broker: &Broker, key: &Key) -> Option<(Prepared, u64, u64)> {
        let slot = {
            let mut slots = lock(&self.slots);
            let i = slots.iter().position(|s| &s.key == key);
            let slot = i.and_then(|i| slots.remove(i));
            let seeked = slot.is_none();
            slots.retain(|s| !(s.key.same_partition(key) && (seeked || s.key.from <= key.from)));
            slot?
        };
        let mut ready = slot.ready.clone();
        ready.wait_for(|done| *done).await.ok()?;
        let prepared = lock(&slot.cell).take()?;
        let current = broker.partition(&key.topic, key.partition).ok()?;
        if !Arc::ptr_eq(&current, &prepared.partition) {
            return None;
        }
        let (log_start, high_watermark) = (current.log.log_start_offset(), current.log.high_watermark());
        let stopped_at_end = prepared.next_offset >= prepared.read_high_watermark;
        if log_start > key.from
            || high_watermark < prepared.next_offset
            || (stopped_at_end && high_watermark != prepared.read_high_watermark)
        {
            return None;
        }
        current.count_fetched(prepared.records, prepared.batch_bytes);
        Some((prepared, log_start, high_watermark))
    }

    /// Starts reading the response for `key`, unless it is being read, the
    /// partition already has `FETCH_AHEAD_DEPTH` read ahead, the connection
    /// holds its share of the budget, or the broker's read-ahead budget is
    /// spent. With `chain` (the consumer just took a response read ahead:
    /// it reads the partition through), when this one stops at its limits
    /// with more records behind them, the one after it is started too, so
    /// the broker keeps reading while the client decodes; a consumer that
    /// seeks costs at most one read ahead per fetch, never used. The oldest
    /// goes when the connection has too many.
    fn start(self: &Arc<Self>, broker: &Arc<Broker>, key: Key, chain: bool) {
        let mut slots = lock(&self.slots);
        let ahead = slots.iter().filter(|s| s.key.same_partition(&key)).count();
        let held: usize = slots.iter().map(|s| s.key.bytes_max).sum();
        if ahead >= FETCH_AHEAD_DEPTH
            || slots.iter().any(|s| s.key == key)
            || held + key.bytes_max > FETCH_AHEAD_CONNECTION_BYTES_MAX
        {
            return;
        }
        let Some(permit) = broker.fetch_ahead_budget().try_acquire(key.bytes_max) else { return };
        let cell = Arc::new(Mutex::new(None));
        let (done, ready) = watch::channel(false);
        let task = tokio::spawn({
            let (broker, key, cell, connection) = (broker.clone(), key.clone(), cell.clone(), Arc::downgrade(self));
            async move {
                let prepared = prepare(&broker, &key, permit).await;
                let next =
                    prepared.as_ref().filter(|p| chain && p.next_offset < p.read_high_watermark).map(|p| p.next_offset);
                *lock(&cell) = prepared;
                let _ = done.send(true);
                if let (Some(next), Some(connection)) = (next, connection.upgrade()) {
                    connection.start(&broker, Key { from: next, ..key }, true);
                }
                tokio::time::sleep(FETCH_AHEAD_KEEP).await;
                lock(&cell).take();
            }
        });
        while slots.len() >= FETCH_AHEAD_PER_CONNECTION {
            slots.pop_front();
        }
        slots.push_back(Slot { key, cell, ready, task: task.abort_handle() });
    }
}

/// Reads and encodes the response for `key`; None if there is nothing to
/// serve (an error is left for the fetch that asks to meet).
async fn prepare(broker: &Broker, key: &Key, permit: BudgetPermit) -> Option<Prepared> {
    let traced = !telemetry::receive_span(&key.topic, key.partition, key.from).is_disabled();
    let sink = RecordEncoder::new(&key.topic, key.partition, traced);
    let (partition, read) =
        broker.read_ahead(&key.topic, key.partition, key.from, key.records_max, key.bytes_max, sink).await.ok()?;
    if read.records.is_empty() {
        return None;
    }
    let records = read.records.len() as u64;
    let (encoded, traced) = read.records.finish();
    Some(Prepared {
        partition,
        read_high_watermark: read.high_watermark,
        next_offset: read.next_offset,
        records,
        batch_bytes: read.batch_bytes,
        encoded,
        traced,
        _permit: permit,
    })
}

/// Answers a Fetch as gRPC body chunks: from what was read ahead for it
/// when that still holds, else read now; then, when more records are
/// there, starts reading the next one ahead (`ahead`: the connection's).
pub async fn fetch(
    service: &BrokerService,
    request: Request<proto::FetchRequest>,
    ahead: Option<Arc<FetchAhead>>,
) -> Result<VecDeque<Bytes>, Status> {
    let caller = caller_of(&request);
    service.allow(&caller, "Fetch", topic(&request.get_ref().topic))?;
    let r = request.into_inner();
    let (topic, partition) = (r.topic.clone(), r.partition);
    let broker = &service.broker;
    let (records_max, bytes_max) = broker.fetch_limits(r.max_records as usize, r.max_bytes as usize);
    let key_at = |from: u64| Key {
        principal: caller.principal.clone(),
        topic: topic.clone(),
        partition,
        from,
        records_max,
        bytes_max,
    };
    let ahead = ahead.filter(|_| !r.raw_batches);
    let from = match r.from.as_ref().and_then(|p| p.position.as_ref()) {
        Some(proto::position::Position::Offset(o)) => Some(*o),
        _ => None,
    };
    if let (Some(ahead), Some(from)) = (&ahead, from) {
        if let Some((prepared, log_start_offset, high_watermark)) = ahead.claim(broker, &key_at(from)).await {
            let span = telemetry::receive_span(&topic, partition, from);
            span.record("messaging.batch.message_count", prepared.records);
            telemetry::link_records(&span, prepared.traced.iter().map(|h| &h[..]));
            let head = proto::FetchResponse {
                next_offset: prepared.next_offset,
                high_watermark,
                log_start_offset,
                ..Default::default()
            };
            if prepared.next_offset < high_watermark {
                ahead.start(broker, key_at(prepared.next_offset), true);
            }
            return Ok(codec::frame_with_records(&head, Vec::new(), FETCH_BATCHES_FIELD, prepared.encoded));
        }
    }
    let (mut head, encoded) = service.fetch_encoded(&caller, r).await?;
    if let Some(ahead) = &ahead {
        let more = encoded.as_ref().is_some_and(|e| e.len > 0) && head.next_offset < head.high_watermark;
        if more {
            ahead.start(broker, key_at(head.next_offset), false);
        }
    }
    let batches = std::mem::take(&mut head.record_batches);
    Ok(codec::frame_with_records(&head, batches, FETCH_BATCHES_FIELD, encoded.unwrap_or_default()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::broker_client::BrokerClient;

    /// What `ahead` holds once its reads are over: (responses, bytes they
    /// may take).
    async fn held(ahead: &FetchAhead) -> (usize, usize) {
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        let slots = lock(&ahead.slots);
        (slots.len(), slots.iter().map(|s| s.key.bytes_max).sum())
    }

    fn request(from: u64, max_records: u32, max_bytes: u32) -> Request<proto::FetchRequest> {
        Request::new(proto::FetchRequest {
            topic: "t".into(),
            partition: 0,
            from: Some(proto::Position { position: Some(proto::position::Position::Offset(from)) }),
            max_records,
            max_bytes,
            max_wait_ms: 0,
            raw_batches: false,
        })
    }

    /// A consumer that seeks gets one response read ahead, never a chain;
    /// one that reads through gets two; a connection never holds more than
    /// its share of bytes.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn read_ahead_is_bounded_by_what_the_consumer_does() {
        let dir = tempfile::tempdir().unwrap();
        let config = crate::config::BrokerConfig {
            data_dir: dir.path().to_path_buf(),
            listen: "127.0.0.1:0".parse().unwrap(),
            kafka_listen: None,
            http_listen: None,
            ..Default::default()
        };
        let server = crate::server::start(config).await.unwrap();
        let mut c = BrokerClient::connect(server.url()).await.unwrap();
        c.create_topic(proto::CreateTopicRequest { name: "t".into(), partitions: 1, config: Default::default() })
            .await
            .unwrap();
        // 500 records of 100 KiB: fetches of 100 fill 10 MiB.
        let value = vec![7u8; 100 << 10];
        for _ in 0..10 {
            let records =
                (0..50).map(|_| proto::Record { value: value.clone().into(), ..Default::default() }).collect();
            c.produce(proto::ProduceRequest { topic: "t".into(), partition: Some(0), records, ..Default::default() })
                .await
                .unwrap();
        }
        let service = BrokerService { broker: server.broker().clone() };

        // Seeking: each fetch starts one read ahead, for where it ended.
        let seeker = Arc::new(FetchAhead::default());
        for from in [0, 350, 40, 90] {
            fetch(&service, request(from, 10, 0), Some(seeker.clone())).await.unwrap();
            assert_eq!(held(&seeker).await.0, 1, "after a fetch from {from}");
        }

        // Reading through: the fetch that takes a response read ahead
        // starts a chain two deep.
        let reader = Arc::new(FetchAhead::default());
        fetch(&service, request(0, 10, 0), Some(reader.clone())).await.unwrap();
        assert_eq!(held(&reader).await.0, 1);
        fetch(&service, request(10, 10, 0), Some(reader.clone())).await.unwrap();
        assert_eq!(held(&reader).await.0, FETCH_AHEAD_DEPTH);

        // Large fetches: two of 12 MiB would pass the connection's share.
        let large = Arc::new(FetchAhead::default());
        let (mut from, twelve) = (0, 12 << 20);
        for _ in 0..3 {
            let chunks = fetch(&service, request(from, 100, twelve), Some(large.clone())).await.unwrap();
            assert!(!chunks.is_empty());
            from += 100;
            let (n, bytes) = held(&large).await;
            assert!(n <= 1 && bytes <= FETCH_AHEAD_CONNECTION_BYTES_MAX, "{n} responses, {bytes} bytes");
        }
        server.shutdown().await.unwrap();
    }
}
