//! Produce: records (or a batch the client encoded) to one or more
//! partitions, each partition's share one atomic batch, answered once
//! durable under the topic's flush policy. Idempotent producers' ids come
//! from `producer_ids.rs`; their sequences are checked by the log.
//!
//! [`Broker::produce_pipeline`] is produce for listeners whose clients keep
//! several requests in flight (gRPC ProduceStream, Kafka): requests are
//! written in arrival order, so a partition sees a stream's batches in the
//! order they were sent, while their fsync waits overlap.

use std::collections::BTreeMap;
use std::sync::Arc;

use bytes::Bytes;
use futures::{Stream, StreamExt};
use tokio::sync::{mpsc, oneshot, Semaphore};

use super::budget::BudgetPermit;
use super::partition::{AppendBytes, Partition};
use super::topic::Topic;
use super::{partitioner, Broker, BrokerError, Caller, ProduceRequest, ProduceResult, Result};
use crate::config::{
    TimestampType, TopicConfig, DECODE_INLINE_BYTES_MAX, HEADERS_PER_RECORD_MAX, PRODUCE_STREAM_IN_FLIGHT_MAX,
};
use crate::storage::batch::{self, ProducerStamp, Record};

/// A produce whose batches are written but maybe not yet durable.
#[derive(Debug)]
pub struct PendingProduce {
    parts: Vec<(Arc<Partition>, crate::storage::PendingAppend)>,
    now: i64,
    /// A partition whose write failed fails the whole reply (after the
    /// others are durable, so nothing is left half-waited).
    first_error: Option<BrokerError>,
}

impl PendingProduce {
    /// Whether [`PendingProduce::wait`] has an fsync to wait for (else it
    /// completes at once).
    pub fn needs_sync(&self) -> bool {
        self.parts.iter().any(|(_, p)| p.needs_sync())
    }

    /// A produce that failed before writing anything: `wait` returns the error.
    pub fn failed(e: BrokerError) -> PendingProduce {
        PendingProduce { parts: Vec::new(), now: 0, first_error: Some(e) }
    }

    /// Waits until every batch is durable; the results are in partition order.
    pub async fn wait(self) -> Result<Vec<ProduceResult>> {
        let now = self.now;
        let waits = self.parts.into_iter().map(|(partition, pending)| async move {
            let out = partition.wait_durable(pending).await?;
            Ok::<_, BrokerError>(ProduceResult {
                partition: partition.id,
                base_offset: out.base_offset,
                last_offset: out.last_offset,
                log_append_time_ms: now,
            })
        });
        let results: Vec<_> = futures::future::join_all(waits).await;
        if let Some(e) = self.first_error {
            return Err(e);
        }
        results.into_iter().collect()
    }
}

/// One request of a pipelined produce, as its listener read it.
#[derive(Debug)]
pub struct PipelineItem<T> {
    /// What the listener needs to answer it (a request or correlation id).
    pub tag: T,
    /// The request, or why it was refused before it could be decoded (it is
    /// answered with that error, in its turn; the pipeline goes on).
    pub request: Result<ProduceRequest>,
    /// The request's share of the request budget, held until its batches
    /// are written.
    pub permit: BudgetPermit,
}

/// A request of a pipelined produce, completed.
#[derive(Debug)]
pub struct Pipelined<T> {
    pub tag: T,
    pub result: Result<Vec<ProduceResult>>,
}

/// Runs `f`, which may take a while, without holding up the async worker's
/// other tasks (tokio moves them to another worker meanwhile).
pub fn in_place<T>(f: impl FnOnce() -> T) -> T {
    match tokio::runtime::Handle::try_current().map(|h| h.runtime_flavor()) {
        Ok(tokio::runtime::RuntimeFlavor::MultiThread) => tokio::task::block_in_place(f),
        _ => f(),
    }
}

impl Broker {
    /// Appends records; each partition's share is one atomic batch. Returns
    /// once every batch is durable per the topic's flush policy.
    pub async fn produce(&self, caller: &Caller, request: ProduceRequest) -> Result<Vec<ProduceResult>> {
        self.produce_pending(caller, request).await?.wait().await
    }

    /// Produce from the broker itself (dead letters, alerts): the same
    /// checks and durability as a client's.
    pub async fn produce_internal(&self, what: &'static str, request: ProduceRequest) -> Result<Vec<ProduceResult>> {
        self.produce(&Caller::internal(what), request).await
    }

    /// Writes a produce request's batches (one atomic batch per partition)
    /// in call order, without waiting for durability: pipelined producers
    /// call this in order and await [`PendingProduce::wait`] concurrently.
    pub async fn produce_pending(&self, caller: &Caller, request: ProduceRequest) -> Result<PendingProduce> {
        self.check_running()?;
        let topic = self.topic(&request.topic)?;
        if request.batch.is_some() {
            return self.produce_batch_pending(&topic, request).await;
        }
        if request.records.is_empty() {
            return Err(BrokerError::EmptyProduce { topic: request.topic });
        }
        self.check_producer(request.producer)?;
        let config = topic.config();
        let now = self.clock.now_ms();
        let keyless = match request.partition {
            Some(p) => {
                topic.partition(p)?;
                p
            }
            None => topic.next_keyless_partition(),
        };
        let partitions = topic.partitions.len() as u32;
        let mut by_partition: BTreeMap<u32, Vec<Record>> = BTreeMap::new();
        let mut bytes = 0;
        for (i, mut record) in request.records.into_iter().enumerate() {
            let size = record_size(&record.key, &record.value, &record.headers);
            check_record_limits(&topic.name, &config, i, size, record.headers.len())?;
            bytes += size;
            if let Some(trace) = &caller.trace {
                trace.stamp(&mut record.headers);
            }
            record.timestamp_ms = record_timestamp(&config, now, record.timestamp_ms);
            let partition = match request.partition {
                Some(p) => p,
                None if !record.key.is_empty() => partitioner::partition_for_key(&record.key, partitions),
                None => keyless,
            };
            by_partition.entry(partition).or_default().push(record);
        }
        let producer = request.producer;
        let encode = || {
            by_partition
                .into_iter()
                .map(|(p, records)| (topic.partitions[p as usize].clone(), batch::encode(&records, producer)))
                .collect::<Vec<_>>()
        };
        // A large request is encoded where blocking is fine.
        let batches = if bytes >= DECODE_INLINE_BYTES_MAX { in_place(encode) } else { encode() };
        let writes = batches.into_iter().map(|(partition, encoded)| async move {
            let pending = partition.append_pending(AppendBytes::Encoded(encoded)).await?;
            Ok::<_, BrokerError>((partition, pending))
        });
        let mut parts = Vec::new();
        let mut first_error = None;
        for r in futures::future::join_all(writes).await {
            match r {
                Ok(part) => parts.push(part),
                Err(e) => first_error = first_error.or(Some(e)),
            }
        }
        Ok(PendingProduce { parts, now, first_error })
    }

    /// [`Broker::produce_pending`] of a batch the client encoded: validated,
    /// then written as it is (on a LogAppendTime topic with the append time
    /// stamped in its header; re-encoded only for strata's "timestamp 0 =
    /// now").
    async fn produce_batch_pending(&self, topic: &Arc<Topic>, request: ProduceRequest) -> Result<PendingProduce> {
        let invalid =
            |why: &str| BrokerError::InvalidBatch { topic: topic.name.clone(), why: why.to_string(), corrupt: false };
        let Some(p) = request.partition else {
            return Err(invalid("a record batch needs an explicit partition"));
        };
        if !request.records.is_empty() || request.producer.is_some() {
            return Err(invalid("send records or record_batch, and the producer stamp inside the batch"));
        }
        let partition = topic.partition(p)?.clone();
        let bytes = request.batch.unwrap_or_default();
        let (header, records) = batch::validate_client_batch(&bytes).map_err(|e| BrokerError::InvalidBatch {
            topic: topic.name.clone(),
            why: e.to_string(),
            corrupt: e.is_corrupt(),
        })?;
        self.check_producer(header.producer())?;
        let config = topic.config();
        for (i, r) in records.iter().enumerate() {
            check_record_limits(&topic.name, &config, i, record_size(&r.key, &r.value, &r.headers), r.headers.len())?;
        }
        let now = self.clock.now_ms();
        let encoded = if config.timestamp_type == TimestampType::Append {
            // Kafka's way: the batch says "append time" and carries it; the
            // records, compressed or not, are stored as the client sent them.
            drop(records);
            let mut stamped = bytes.to_vec();
            batch::set_log_append_time(&mut stamped, now);
            AppendBytes::Encoded(stamped)
        } else if records.iter().any(|r| r.timestamp_ms == 0) {
            // strata's "0 = now": only by re-encoding.
            let records: Vec<Record> = records
                .into_iter()
                .map(|r| Record {
                    timestamp_ms: record_timestamp(&config, now, r.timestamp_ms),
                    key: r.key,
                    value: r.value,
                    headers: r.headers,
                })
                .collect();
            AppendBytes::Encoded(batch::encode(&records, header.producer()))
        } else {
            let max = records.iter().map(|r| r.timestamp_ms).max().unwrap_or(header.max_timestamp);
            drop(records);
            if max != header.max_timestamp && !header.is_log_append_time() {
                // The time index trusts max_timestamp: set it right, as
                // Kafka does, rather than refuse the batch.
                let mut fixed = bytes.to_vec();
                batch::set_max_timestamp(&mut fixed, max);
                AppendBytes::Encoded(fixed)
            } else {
                AppendBytes::Client(bytes)
            }
        };
        let pending = partition.append_pending(encoded).await;
        let (parts, first_error) = match pending {
            Ok(p) => (vec![(partition, p)], None),
            Err(e) => (Vec::new(), Some(e)),
        };
        Ok(PendingProduce { parts, now, first_error })
    }

    /// Refuses a producer id that InitProducer never handed out (Kafka's
    /// UNKNOWN_PRODUCER_ID): its sequences would be trusted blindly.
    fn check_producer(&self, producer: Option<ProducerStamp>) -> Result<()> {
        let Some(p) = producer else { return Ok(()) };
        if self.producer_ids.lock().unwrap_or_else(|e| e.into_inner()).issued(p.producer_id) {
            return Ok(());
        }
        Err(BrokerError::UnknownProducer { producer_id: p.producer_id })
    }

    /// Whether InitProducer handed out this producer id.
    pub fn producer_issued(&self, producer_id: i64) -> bool {
        self.producer_ids.lock().unwrap_or_else(|e| e.into_inner()).issued(producer_id)
    }

    /// A new idempotent producer id. Blocking (it may reserve a new block on disk).
    pub fn init_producer(&self, _caller: &Caller) -> Result<i64> {
        self.check_running()?;
        self.producer_ids
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .allocate()
            .map_err(|e| BrokerError::io("cannot allocate a producer id", e))
    }

    /// Pipelined produce: each request of `inbound` is written in its turn,
    /// and its fsync wait overlaps the next ones' (at most
    /// `PRODUCE_STREAM_IN_FLIGHT_MAX` wait at once). Completions come out
    /// in request order when `ordered` (Kafka's protocol needs that), else
    /// as each is durable (gRPC ProduceStream). An error from `inbound`
    /// ends the pipeline: every completion still waiting comes first, the
    /// error last. Shutdown ends it too.
    pub fn produce_pipeline<T, S>(
        self: &Arc<Self>,
        caller: Caller,
        mut inbound: S,
        ordered: bool,
    ) -> mpsc::Receiver<Result<Pipelined<T>>>
    where
        T: Send + 'static,
        S: Stream<Item = Result<PipelineItem<T>>> + Send + Unpin + 'static,
    {
        let (tx, rx) = mpsc::channel(PRODUCE_STREAM_IN_FLIGHT_MAX);
        let broker = self.clone();
        let mut stopping = broker.watch_stopping();
        tokio::spawn(async move {
            let depth = Arc::new(Semaphore::new(PRODUCE_STREAM_IN_FLIGHT_MAX));
            // The previous completion's "sent" signal, when in order.
            let mut previous: Option<oneshot::Receiver<()>> = None;
            let ended = loop {
                let next = tokio::select! {
                    m = inbound.next() => m.transpose(),
                    // End on shutdown so a graceful stop does not wait for
                    // the client to hang up.
                    _ = super::stopped(&mut stopping) => Ok(None),
                };
                let PipelineItem { tag, request, permit: budget } = match next {
                    Ok(Some(item)) => item,
                    Ok(None) => break None,
                    Err(e) => break Some(e),
                };
                let Ok(permit) = depth.clone().acquire_owned().await else { break None };
                let pending = match request {
                    Ok(request) => broker.produce_pending(&caller, request).await,
                    Err(e) => Err(e),
                };
                // The batches are written: the request's bytes may go.
                drop(budget);
                let tx = tx.clone();
                let (turn, after) = if ordered {
                    let (done, next_turn) = oneshot::channel();
                    (previous.replace(next_turn), Some(done))
                } else {
                    (None, None)
                };
                let ready = pending.as_ref().map_or(true, |p| !p.needs_sync());
                let respond = async move {
                    let _permit = permit;
                    let result = match pending {
                        Ok(p) => p.wait().await,
                        Err(e) => Err(e),
                    };
                    if let Some(turn) = turn {
                        let _ = turn.await;
                    }
                    let _ = tx.send(Ok(Pipelined { tag, result })).await;
                    if let Some(after) = after {
                        let _ = after.send(());
                    }
                };
                // Nothing to wait for (flush never/interval, or an error) and
                // nobody ahead: answer here, saving a task and a wake-up.
                if ready && !ordered {
                    respond.await;
                } else {
                    tokio::spawn(respond);
                }
            };
            if let Some(e) = ended {
                // Every completion still waiting for its fsync goes first.
                let _ = depth.acquire_many(PRODUCE_STREAM_IN_FLIGHT_MAX as u32).await;
                let _ = tx.send(Err(e)).await;
            }
        });
        rx
    }
}

/// The timestamp a record is stored with: the broker's clock for 0
/// ("now") and on LogAppendTime topics, else the producer's.
fn record_timestamp(config: &TopicConfig, now: i64, timestamp_ms: i64) -> i64 {
    if timestamp_ms == 0 || config.timestamp_type == TimestampType::Append {
        now
    } else {
        timestamp_ms
    }
}

fn record_size(key: &[u8], value: &[u8], headers: &[(String, Bytes)]) -> usize {
    key.len() + value.len() + headers.iter().map(|(k, v)| k.len() + v.len()).sum::<usize>()
}

/// The per-record limits of a produce: size and header count.
fn check_record_limits(topic: &str, config: &TopicConfig, index: usize, size: usize, headers: usize) -> Result<()> {
    if size > config.record_bytes_max {
        return Err(BrokerError::RecordTooLarge {
            topic: topic.to_string(),
            index,
            size,
            max: config.record_bytes_max,
        });
    }
    if headers > HEADERS_PER_RECORD_MAX {
        return Err(BrokerError::TooManyHeaders {
            topic: topic.to_string(),
            index,
            headers,
            max: HEADERS_PER_RECORD_MAX,
        });
    }
    Ok(())
}
