//! Produce: records (or a batch the client encoded) to one or more
//! partitions, each partition's share one atomic batch, answered once
//! durable under the topic's flush policy. Idempotent producers' ids come
//! from `producer_ids.rs`; their sequences are checked by the log.
//!
//! [`Broker::produce_pipeline`] is produce for listeners whose clients keep
//! several requests in flight (gRPC ProduceStream, Kafka): requests are
//! written in arrival order, so a partition sees a stream's batches in the
//! order they were sent, while their fsync waits overlap.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use bytes::Bytes;
use futures::{Stream, StreamExt};
use tokio::sync::{mpsc, oneshot, Semaphore};

use super::budget::BudgetPermit;
use super::dedupe::{self, Dedupe, Duplicate};
use super::partition::{AppendBytes, Partition};
use super::rules::dedupe::Seen;
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
    /// Records not appended: their event ids were (de-dup).
    duplicates: Vec<Duplicate>,
    /// The appends those duplicate, which the reply waits for too (they
    /// may be another request's, still waiting for their fsync).
    originals: Vec<(Arc<Partition>, crate::storage::PendingAppend)>,
    /// The topic's de-dup table, told of writes a failed fsync discarded.
    dedupe: Option<Arc<Dedupe>>,
}

/// What a produce did: the batches appended (in partition order) and the
/// records not appended because their event ids were (de-dup).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Produced {
    pub results: Vec<ProduceResult>,
    pub duplicates: Vec<Duplicate>,
}

impl PendingProduce {
    /// Whether [`PendingProduce::wait`] has an fsync to wait for (else it
    /// completes at once).
    pub fn needs_sync(&self) -> bool {
        self.parts.iter().chain(&self.originals).any(|(_, p)| p.needs_sync())
    }

    /// A produce that failed before writing anything: `wait` returns the error.
    pub fn failed(e: BrokerError) -> PendingProduce {
        PendingProduce::new(Vec::new(), 0, Some(e))
    }

    fn new(
        parts: Vec<(Arc<Partition>, crate::storage::PendingAppend)>,
        now: i64,
        first_error: Option<BrokerError>,
    ) -> PendingProduce {
        PendingProduce { parts, now, first_error, duplicates: Vec::new(), originals: Vec::new(), dedupe: None }
    }

    /// Waits until every batch (and every original a duplicate names) is
    /// durable; the results are in partition order.
    pub async fn wait(self) -> Result<Produced> {
        let now = self.now;
        let dedupe = self.dedupe.clone();
        let waits = self.parts.into_iter().map(|(partition, pending)| {
            let dedupe = dedupe.clone();
            async move {
                let base_offset = pending.outcome.base_offset;
                let out = match partition.wait_durable(pending).await {
                    Ok(out) => out,
                    Err(e) => {
                        // Its ids were remembered: the write is gone, so a
                        // retry must be appended, not called a duplicate.
                        if let Some(d) = &dedupe {
                            d.forget_from(partition.id, base_offset).await;
                        }
                        return Err(e);
                    }
                };
                Ok::<_, BrokerError>(ProduceResult {
                    partition: partition.id,
                    base_offset: out.base_offset,
                    last_offset: out.last_offset,
                    log_append_time_ms: now,
                })
            }
        });
        let originals = self.originals.into_iter().map(|(partition, pending)| {
            let dedupe = dedupe.clone();
            async move {
                let offset = pending.outcome.base_offset;
                let done = partition.wait_durable(pending).await;
                if done.is_err() {
                    if let Some(d) = &dedupe {
                        d.forget_from(partition.id, offset).await;
                    }
                }
                done.map(|_| ())
            }
        });
        let (results, originals) =
            futures::future::join(futures::future::join_all(waits), futures::future::join_all(originals)).await;
        if let Some(e) = self.first_error {
            return Err(e);
        }
        originals.into_iter().collect::<Result<Vec<()>>>()?;
        Ok(Produced { results: results.into_iter().collect::<Result<_>>()?, duplicates: self.duplicates })
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
    pub result: Result<Produced>,
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
    pub async fn produce(&self, caller: &Caller, request: ProduceRequest) -> Result<Produced> {
        self.produce_pending(caller, request).await?.wait().await
    }

    /// Produce from the broker itself (dead letters, alerts): the same
    /// checks and durability as a client's.
    pub async fn produce_internal(&self, what: &'static str, request: ProduceRequest) -> Result<Produced> {
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
        // De-dup on: ids repeated inside the request are found here, those
        // appended before under the table's lock, after the encoding.
        let dedupe_header = topic.dedupe.is_on().then(|| config.dedupe_header.clone());
        let mut fresh: Vec<Fresh> = Vec::new();
        let mut repeated: Vec<(u32, usize)> = Vec::new();
        let mut in_request: HashMap<Bytes, usize, foldhash::fast::RandomState> = HashMap::with_capacity_and_hasher(
            if dedupe_header.is_some() { request.records.len() } else { 0 },
            Default::default(),
        );
        let mut by_partition: BTreeMap<u32, Vec<Record>> = BTreeMap::new();
        let mut bytes = 0;
        for (i, mut record) in request.records.into_iter().enumerate() {
            let size = record_size(&record.key, &record.value, &record.headers);
            check_record_limits(&topic.name, &config, i, size, record.headers.len())?;
            let partition = match request.partition {
                Some(p) => p,
                None if !record.key.is_empty() => partitioner::partition_for_key(&record.key, partitions),
                None => keyless,
            };
            if let Some(header) = &dedupe_header {
                if let Some(id) = dedupe::event_id(&topic.name, header, i, &record.headers)? {
                    if let Some(&first) = in_request.get(id.as_ref()) {
                        repeated.push((i as u32, first));
                        continue;
                    }
                    in_request.insert(id.clone(), fresh.len());
                    let pos = by_partition.get(&partition).map_or(0, Vec::len);
                    fresh.push(Fresh { index: i as u32, partition, pos, id: id.clone() });
                }
            }
            bytes += size;
            if let Some(trace) = &caller.trace {
                trace.stamp(&mut record.headers);
            }
            record.timestamp_ms = record_timestamp(&config, now, record.timestamp_ms);
            by_partition.entry(partition).or_default().push(record);
        }
        drop(in_request);
        let producer = request.producer;
        let encode = || {
            by_partition
                .into_iter()
                .map(|(p, records)| {
                    let encoded = batch::encode(&records, producer);
                    (p, records, encoded)
                })
                .collect::<Vec<_>>()
        };
        // A large request is encoded where blocking is fine.
        let mut batches = if bytes >= DECODE_INLINE_BYTES_MAX { in_place(encode) } else { encode() };
        if dedupe_header.is_none() {
            let (parts, first_error) = append_all(&topic, batches).await;
            return Ok(PendingProduce::new(parts, now, first_error));
        }
        // The table stays locked from the check through the pwrites to
        // `remember`, so two requests cannot both append one id.
        let mut guard = topic.dedupe.lock().await;
        let Some(ids) = guard.as_mut() else {
            drop(guard);
            let (parts, first_error) = append_all(&topic, batches).await;
            return Ok(PendingProduce::new(parts, now, first_error));
        };
        ids.table.expire(now);
        let seen: Vec<Option<Seen>> = fresh.iter().map(|f| ids.table.check(&f.id)).collect();
        if seen.iter().any(Option::is_some) {
            // Some were appended before: those partitions' batches again,
            // without them (rare: retries).
            for (p, records, encoded) in &mut batches {
                let dropped: Vec<usize> = fresh
                    .iter()
                    .zip(&seen)
                    .filter(|(f, s)| f.partition == *p && s.is_some())
                    .map(|(f, _)| f.pos)
                    .collect();
                if dropped.is_empty() {
                    continue;
                }
                let mut pos = 0;
                records.retain(|_| {
                    pos += 1;
                    !dropped.contains(&(pos - 1))
                });
                for f in fresh.iter_mut().filter(|f| f.partition == *p) {
                    f.pos -= dropped.iter().filter(|&&d| d < f.pos).count();
                }
                *encoded = if records.is_empty() { Vec::new() } else { batch::encode(records, producer) };
            }
            batches.retain(|(_, records, _)| !records.is_empty());
        }
        let (parts, first_error) = append_all(&topic, batches).await;
        let appended: BTreeMap<u32, (u64, u64)> =
            parts.iter().map(|(p, pending)| (p.id, (pending.outcome.base_offset, pending.epoch()))).collect();
        let mut dedupe = Dedupes::default();
        // Where each id of the request went: its original, or its new offset.
        let mut went: Vec<Option<(u32, u64)>> = Vec::with_capacity(fresh.len());
        for (f, s) in fresh.iter().zip(&seen) {
            if let Some(s) = s {
                dedupe.original(&topic, f.index as usize, *s)?;
                went.push(Some((s.partition, s.offset)));
            } else if let Some(&(base, epoch)) = appended.get(&f.partition) {
                let offset = base + f.pos as u64;
                ids.table.remember(&f.id, Seen { partition: f.partition, offset, epoch, at_ms: now });
                went.push(Some((f.partition, offset)));
            } else {
                went.push(None);
            }
        }
        for (index, first) in repeated {
            if let Some((partition, offset)) = went[first] {
                dedupe.duplicates.push(Duplicate { index, partition, offset });
            }
        }
        drop(guard);
        Ok(dedupe.into_pending(parts, now, first_error, &topic))
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
        if topic.dedupe.is_on() {
            return self.produce_batch_deduped(topic, partition, header, bytes, records, now).await;
        }
        let encoded = client_batch_bytes(&config, header, bytes, records, now);
        Ok(append_one(partition, encoded, now).await)
    }

    /// [`Broker::produce_batch_pending`] on a topic with de-dup on: a batch
    /// without duplicates is written as it came; one with some is
    /// re-encoded without them; one of only duplicates is not written. An
    /// idempotent producer's sequence moves past the dropped records
    /// ([`crate::storage::Log::skip_sequences`]), so its next batch is not
    /// refused as out of order.
    async fn produce_batch_deduped(
        &self,
        topic: &Arc<Topic>,
        partition: Arc<Partition>,
        header: batch::BatchHeader,
        bytes: Bytes,
        records: Vec<batch::StoredRecord>,
        now: i64,
    ) -> Result<PendingProduce> {
        let config = topic.config();
        let mut guard = topic.dedupe.lock().await;
        let Some(ids) = guard.as_mut() else {
            drop(guard);
            let encoded = client_batch_bytes(&config, header, bytes, records, now);
            return Ok(append_one(partition, encoded, now).await);
        };
        ids.table.expire(now);
        let mut dedupe = Dedupes::default();
        let mut keep = Vec::with_capacity(records.len());
        // (position among the kept records, id)
        let mut fresh: Vec<(usize, Bytes)> = Vec::new();
        let mut repeated: Vec<(u32, usize)> = Vec::new();
        for (i, r) in records.iter().enumerate() {
            if let Some(id) = dedupe::event_id(&topic.name, &ids.header, i, &r.headers)? {
                if let Some(seen) = ids.table.check(id) {
                    dedupe.original(topic, i, seen)?;
                    continue;
                }
                if let Some(&(_, pos)) = dedupe.in_request.get(id.as_ref()) {
                    repeated.push((i as u32, pos));
                    continue;
                }
                dedupe.in_request.insert(id.clone(), (partition.id, keep.len()));
                fresh.push((keep.len(), id.clone()));
            }
            keep.push(i);
        }
        let dropped = records.len() - keep.len();
        let producer = header.producer();
        let (parts, first_error) = if keep.is_empty() {
            // Nothing to write; an idempotent producer's sequence moves on.
            let skipped = match producer {
                Some(p) => {
                    let count = header.record_count;
                    partition.blocking(move |log| log.skip_sequences(p, count)).await
                }
                None => Ok(()),
            };
            (Vec::new(), skipped.err())
        } else {
            let encoded = if dropped == 0 {
                client_batch_bytes(&config, header, bytes, records, now)
            } else {
                // An idempotent producer's sequences: the dropped records'
                // count is skipped first, then the rest follow it, so the
                // batch's last sequence and the next batch's first still meet.
                let producer = match producer {
                    Some(p) => {
                        partition.blocking(move |log| log.skip_sequences(p, dropped as u32)).await?;
                        Some(batch::ProducerStamp {
                            first_sequence: crate::storage::producer::sequence_add(p.first_sequence, dropped as i64),
                            ..p
                        })
                    }
                    None => None,
                };
                let mut records = records;
                let kept: Vec<Record> = keep
                    .iter()
                    .map(|&i| {
                        let r = std::mem::take(&mut records[i]);
                        Record {
                            timestamp_ms: record_timestamp(&config, now, r.timestamp_ms),
                            key: r.key,
                            value: r.value,
                            headers: r.headers,
                        }
                    })
                    .collect();
                let codec = header.compression().unwrap_or(crate::storage::compression::Compression::None);
                AppendBytes::Encoded(batch::encode_compressed(&kept, producer, codec))
            };
            match partition.append_pending(encoded).await {
                Ok(pending) => {
                    let (base, epoch) = (pending.outcome.base_offset, pending.epoch());
                    for (pos, id) in fresh {
                        let seen = Seen { partition: partition.id, offset: base + pos as u64, epoch, at_ms: now };
                        ids.table.remember(&id, seen);
                    }
                    for (index, pos) in repeated {
                        dedupe.duplicates.push(Duplicate { index, partition: partition.id, offset: base + pos as u64 });
                    }
                    (vec![(partition, pending)], None)
                }
                Err(e) => (Vec::new(), Some(e)),
            }
        };
        drop(guard);
        Ok(dedupe.into_pending(parts, now, first_error, topic))
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

/// A record of a produce request carrying an event id not seen before in
/// the request.
#[derive(Debug)]
struct Fresh {
    index: u32,
    partition: u32,
    /// Its position in its partition's batch.
    pos: usize,
    id: Bytes,
}

/// Appends one batch to one partition, as a pending produce.
async fn append_one(partition: Arc<Partition>, encoded: AppendBytes, now: i64) -> PendingProduce {
    match partition.append_pending(encoded).await {
        Ok(p) => PendingProduce::new(vec![(partition, p)], now, None),
        Err(e) => PendingProduce::new(Vec::new(), now, Some(e)),
    }
}

/// Appends each partition's batch (concurrently: each is one pwrite, or
/// queued for its group commit); the ones written, and the first error.
async fn append_all(
    topic: &Topic,
    batches: Vec<(u32, Vec<Record>, Vec<u8>)>,
) -> (Vec<(Arc<Partition>, crate::storage::PendingAppend)>, Option<BrokerError>) {
    let writes = batches.into_iter().map(|(p, records, encoded)| {
        drop(records);
        let partition = topic.partitions[p as usize].clone();
        async move {
            let pending = partition.append_pending(AppendBytes::Encoded(encoded)).await?;
            Ok::<_, BrokerError>((partition, pending))
        }
    });
    let mut parts = Vec::new();
    let mut first_error = None;
    for r in futures::future::join_all(writes).await {
        match r {
            Ok(part) => parts.push(part),
            Err(e) => first_error = first_error.or(Some(e)),
        }
    }
    (parts, first_error)
}

/// What de-dup found in one produce request.
#[derive(Debug, Default)]
struct Dedupes {
    /// Ids appended by this request so far: (partition, position in its batch).
    in_request: HashMap<Bytes, (u32, usize), foldhash::fast::RandomState>,
    duplicates: Vec<Duplicate>,
    originals: Vec<(Arc<Partition>, crate::storage::PendingAppend)>,
}

impl Dedupes {
    /// Record `index` duplicates the append `seen`.
    fn original(&mut self, topic: &Topic, index: usize, seen: Seen) -> Result<()> {
        let partition = topic.partition(seen.partition)?.clone();
        let pending = partition.log.pending_at(seen.offset, seen.epoch);
        self.duplicates.push(Duplicate { index: index as u32, partition: seen.partition, offset: seen.offset });
        self.originals.push((partition, pending));
        Ok(())
    }

    fn into_pending(
        mut self,
        parts: Vec<(Arc<Partition>, crate::storage::PendingAppend)>,
        now: i64,
        first_error: Option<BrokerError>,
        topic: &Topic,
    ) -> PendingProduce {
        self.duplicates.sort_by_key(|d| d.index);
        let mut pending = PendingProduce::new(parts, now, first_error);
        pending.duplicates = self.duplicates;
        pending.originals = self.originals;
        pending.dedupe = Some(topic.dedupe.clone());
        pending
    }
}

/// A validated client batch as it is appended: as it came; on a
/// LogAppendTime topic with the append time stamped in its header;
/// re-encoded for strata's "timestamp 0 = now"; with its max timestamp set
/// right when it was wrong.
fn client_batch_bytes(
    config: &TopicConfig,
    header: batch::BatchHeader,
    bytes: Bytes,
    records: Vec<batch::StoredRecord>,
    now: i64,
) -> AppendBytes {
    if config.timestamp_type == TimestampType::Append {
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
                timestamp_ms: record_timestamp(config, now, r.timestamp_ms),
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
