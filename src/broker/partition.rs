//! One partition as the broker sees it: the storage log plus a watch of its
//! high watermark, which wakes long polls and subscriptions without polling.
//! Log calls that may wait on the disk (fsyncs, rolls, reads) run on tokio's
//! blocking pool; an append's pwrite into the page cache runs in place.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use tokio::sync::watch;

use super::error::{BrokerError, Result};
use crate::metrics::TopicCounters;
use crate::storage::batch::{BatchHeader, RecordView, StoredRecord};
use crate::storage::{AppendOutcome, BatchRef, Log, PendingAppend, ReadBatches};

#[derive(Debug)]
pub struct Partition {
    pub topic: String,
    pub id: u32,
    pub log: Arc<Log>,
    /// The high watermark, sent after every append that moved it.
    high_watermark: watch::Sender<u64>,
    /// Set while a task finishes rolls or fsyncs rolled segments.
    rolling_io: Arc<AtomicBool>,
    /// Clock time of the last background fsync (interval flush policy).
    last_flush_ms: AtomicU64,
    /// The topic's produce and fetch counters.
    pub counters: Arc<TopicCounters>,
    /// Whether the syncer runs ([`Partition::start_syncer`]), and the
    /// offset below which some append waits to be durable.
    syncer: std::sync::Mutex<Syncer>,
    syncer_more: std::sync::Condvar,
    /// Counts the syncer's rounds; waiters for durability watch it.
    sync_rounds: watch::Sender<u64>,
}

/// The syncer's state ([`Partition::start_syncer`]).
#[derive(Debug, Default)]
struct Syncer {
    running: bool,
    wanted: u64,
    /// Appends counted since the last fsync started (they wait for the
    /// next one).
    appended: u64,
    /// While the syncer lingers: the count of `appended` that ends the
    /// wait (appenders wake it on reaching it); 0 otherwise.
    expected: u64,
    /// Average time of its recent fsyncs, in microseconds.
    sync_us: u64,
}

/// The longest a group commit waits for more appends ([`Partition::linger`]).
const LINGER_US_MAX: u64 = 2_000;

/// A batch the broker appends: one it encoded, or a client's, written as
/// it arrived (a slice of the request buffer, not copied).
#[derive(Debug)]
pub enum AppendBytes {
    Encoded(Vec<u8>),
    Client(bytes::Bytes),
}

impl AppendBytes {
    /// As shared bytes, which a group commit can queue without a copy.
    fn into_bytes(self) -> bytes::Bytes {
        match self {
            AppendBytes::Encoded(v) => bytes::Bytes::from(v),
            AppendBytes::Client(b) => b,
        }
    }
}

/// Records read from a partition.
pub type ReadRecords = ReadInto<Vec<StoredRecord>>;

/// Records read from a partition into `records` (see [`ReadSink`]).
#[derive(Debug, Clone, Default)]
pub struct ReadInto<S> {
    pub records: S,
    /// Offset of the first record returned, if any.
    pub first_offset: Option<u64>,
    /// Offset after the last record returned (the `from` offset if none).
    pub next_offset: u64,
    pub high_watermark: u64,
    pub log_start_offset: u64,
    /// Bytes of the stored batches whose last record is among `records`
    /// (what `strata_fetch_bytes_total` counts: a partition read record
    /// by record from start to end counts each batch once).
    pub batch_bytes: u64,
}

/// Where a read puts the records it takes: as [`StoredRecord`]s, or
/// straight into a response's encoding, from the stored batch, with nothing
/// built per record in between.
pub trait ReadSink: Send + 'static {
    /// Records taken so far.
    fn len(&self) -> usize;
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Room for about `records` more.
    fn reserve(&mut self, _records: usize) {}
    fn push(&mut self, record: &RecordView<'_>);
}

impl ReadSink for Vec<StoredRecord> {
    fn len(&self) -> usize {
        Vec::len(self)
    }

    fn reserve(&mut self, records: usize) {
        Vec::reserve(self, records)
    }

    fn push(&mut self, record: &RecordView<'_>) {
        Vec::push(self, record.to_stored())
    }
}

/// Makes the sink each read of a subscription goes into, for a listener
/// that encodes records for its wire as they are read (by topic and
/// partition); what the sink made travels to the listener as it is.
pub type RecordEncoding = Arc<dyn Fn(&str, u32) -> Box<dyn EncodingSink> + Send + Sync>;

/// A [`ReadSink`] behind a [`RecordEncoding`].
pub trait EncodingSink: ReadSink {
    /// What it encoded, for the listener that made it.
    fn finish(self: Box<Self>) -> Encoded;
}

impl ReadSink for Box<dyn EncodingSink> {
    fn len(&self) -> usize {
        (**self).len()
    }

    fn reserve(&mut self, records: usize) {
        (**self).reserve(records)
    }

    fn push(&mut self, record: &RecordView<'_>) {
        (**self).push(record)
    }
}

/// Records a listener's [`EncodingSink`] encoded for its wire: body
/// chunks that the broker carries as they are, and their length.
#[derive(Debug, Clone, Default)]
pub struct Encoded {
    pub len: usize,
    pub chunks: std::collections::VecDeque<bytes::Bytes>,
}

impl Partition {
    pub fn new(topic: &str, id: u32, log: Log, counters: Arc<TopicCounters>) -> Partition {
        let hw = log.high_watermark();
        Partition {
            topic: topic.to_string(),
            id,
            log: Arc::new(log),
            high_watermark: watch::Sender::new(hw),
            rolling_io: Arc::new(AtomicBool::new(false)),
            last_flush_ms: AtomicU64::new(0),
            counters,
            syncer: std::sync::Mutex::new(Syncer::default()),
            syncer_more: std::sync::Condvar::new(),
            sync_rounds: watch::Sender::new(0),
        }
    }

    /// Subscribes to high watermark changes.
    pub fn watch(&self) -> watch::Receiver<u64> {
        self.high_watermark.subscribe()
    }

    fn error(&self, e: crate::storage::StorageError) -> BrokerError {
        BrokerError::storage(&self.topic, self.id, e)
    }

    /// Writes one batch (ordered with other writes to this partition) without
    /// waiting for durability; complete it with [`Partition::wait_durable`].
    pub async fn append_pending(self: &Arc<Self>, batch: AppendBytes) -> Result<PendingAppend> {
        // Usually the write is one pwrite into the page cache (tens of
        // microseconds): done right here on the async worker, because any
        // thread hand-off costs more than the write (block_in_place wakes a
        // thread to take over the worker: 546 vs 390 MB/s produce). When a
        // roll (file creation, fsyncs) is due, it moves off the worker.
        let batch = batch.into_bytes();
        let bytes = batch.len() as u64;
        let pending = match self.log.try_append_pending(BatchRef::Shared(&batch)) {
            Some(result) => result.map_err(|e| self.error(e))?,
            None => self.short_io(move |log| log.append_pending(BatchRef::Shared(&batch))).await?,
        };
        if !pending.outcome.duplicate {
            let records = pending.outcome.last_offset + 1 - pending.outcome.base_offset;
            self.counters.produced(records, bytes);
        }
        if pending.needs_sync() {
            // The syncer covers it even if the caller stops waiting.
            self.start_syncer(pending.outcome.last_offset + 1, true);
        }
        Ok(pending)
    }

    /// Starts the partition's syncer unless it runs: one blocking task that
    /// runs group-commit fsyncs back to back while appends wait for one
    /// (each fsync covers everything written before it started, and what
    /// queued meanwhile is written when it returns), and after each wakes
    /// every waiter at once through `sync_rounds`. A request waits on that
    /// without a thread of its own: no hand-off per request, one per group.
    /// `appended`: a new append asks (counted for the syncer's linger),
    /// not a waiter looking again.
    fn start_syncer(self: &Arc<Self>, wanted: u64, appended: bool) {
        {
            let mut syncer = self.syncer.lock().unwrap_or_else(|e| e.into_inner());
            syncer.wanted = syncer.wanted.max(wanted);
            if appended {
                syncer.appended += 1;
                if syncer.expected != 0 && syncer.appended >= syncer.expected {
                    syncer.expected = 0;
                    self.syncer_more.notify_one();
                }
            }
            if syncer.running {
                return;
            }
            syncer.running = true;
        }
        let this = self.clone();
        tokio::task::spawn_blocking(move || {
            // Requests the last fsync covered: their producers are likely
            // to send the next ones right after their acknowledgement.
            let mut returning = 0;
            loop {
                {
                    let mut syncer = this.linger(returning);
                    // Decided under the same lock appenders start it under,
                    // so an append is either seen here or starts a new syncer.
                    if !this.log.sync_needed(syncer.wanted) {
                        syncer.running = false;
                        drop(syncer);
                        // Another fsync (a roll's, a close's) may have
                        // covered a waiter since it looked: it looks again.
                        this.sync_rounds.send_modify(|n| *n += 1);
                        return;
                    }
                    returning = std::mem::take(&mut syncer.appended);
                }
                let started = std::time::Instant::now();
                let synced = this.log.sync();
                let took = started.elapsed().as_micros().min(u64::MAX as u128) as u64;
                {
                    let mut s = this.syncer.lock().unwrap_or_else(|e| e.into_inner());
                    s.sync_us = if s.sync_us == 0 { took } else { (s.sync_us * 7 + took) / 8 };
                }
                this.high_watermark.send_replace(this.log.high_watermark());
                this.sync_rounds.send_modify(|n| *n += 1);
                if let Err(e) = synced {
                    // Waiters learn their own outcome from the log; a later
                    // append starts the syncer again.
                    tracing::debug!(topic = %this.topic, partition = this.id, error = %e, "group commit failed");
                    this.syncer.lock().unwrap_or_else(|e| e.into_inner()).running = false;
                    return;
                }
            }
        });
    }

    /// Before a group commit's fsync: waits until the requests the last
    /// fsync covered are back (their producers, acknowledged, send the next
    /// ones), for at most as long as an fsync takes (its recent average) and
    /// never more than 2 ms, so that one fsync covers every producer instead
    /// of two halves taking turns. A syncer that starts from idle
    /// (`returning` 0) never waits, so a lone request is fsynced at once,
    /// and the wait ends as soon as the producers are back. Returns the
    /// locked state.
    ///
    /// Measured (`strata bench produce --embedded --producers 8 --batch 100
    /// --duration 5s`, old and new binaries alternated 3 times): waiting up
    /// to half an fsync gave 4.8-5.0 requests per fsync instead of 2.95-3.1,
    /// at the same MB/s and CPU per GB (the two cores are the limit:
    /// encoding eight requests takes about as long as their fsync). Up to a
    /// whole fsync (4 s runs, alternated 7x with half): 6.32-6.67 instead of
    /// 4.73-5.03 requests per fsync, 436-494 vs 428-471 MB/s, 2.36-2.70 vs
    /// 2.42-2.87 CPU-s/GB. Its cost: four producers at 10,000 records/s in
    /// all (`bench e2e --producers 4`), whose appends come too far apart to
    /// be back in time, wait for nothing: p99 median of 9 runs 2.07 vs 1.97
    /// ms (one producer: within noise). Skipping the wait when producers
    /// lately took longer than an fsync to come back kept that p99 but fell
    /// to 4.0-4.5 requests per fsync under load (they take about that long
    /// here), and so did a guess from the average gap between appends
    /// (5.1-5.4). A fixed 1 ms reached 7.5 but cost 10-20% of the
    /// throughput.
    fn linger(&self, returning: u64) -> std::sync::MutexGuard<'_, Syncer> {
        let mut s = self.syncer.lock().unwrap_or_else(|e| e.into_inner());
        if returning == 0 {
            return s;
        }
        let limit = std::time::Duration::from_micros(s.sync_us.min(LINGER_US_MAX));
        let deadline = std::time::Instant::now() + limit;
        let expected = s.appended + returning;
        while s.appended < expected {
            let now = std::time::Instant::now();
            if now >= deadline {
                break;
            }
            s.expected = expected;
            s = self.syncer_more.wait_timeout(s, deadline - now).unwrap_or_else(|e| e.into_inner()).0;
        }
        s.expected = 0;
        s
    }

    /// Runs a short page-cache operation (a pwrite or pread, usually
    /// microseconds): in place on the multi-thread runtime, which moves the
    /// worker's other tasks elsewhere meanwhile, else on the blocking pool.
    async fn short_io<T: Send + 'static>(
        self: &Arc<Self>,
        f: impl FnOnce(&Log) -> crate::storage::Result<T> + Send + 'static,
    ) -> Result<T> {
        if tokio::runtime::Handle::current().runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread {
            return tokio::task::block_in_place(|| f(&self.log)).map_err(|e| self.error(e));
        }
        self.blocking(f).await
    }

    /// Waits for a pending append to be durable, then wakes readers.
    pub async fn wait_durable(self: &Arc<Self>, pending: PendingAppend) -> Result<AppendOutcome> {
        // Under `never`/`interval` the write already made it visible: no
        // blocking wait, so no thread hop.
        if pending.needs_sync() {
            let mut rounds = self.sync_rounds.subscribe();
            loop {
                if let Some(done) = self.log.durable_status(&pending) {
                    done.map_err(|e| self.error(e))?;
                    break;
                }
                self.start_syncer(pending.outcome.last_offset + 1, false);
                if rounds.changed().await.is_err() {
                    return Err(BrokerError::Internal("the partition closed during a group commit".into()));
                }
            }
            return Ok(pending.outcome);
        }
        self.high_watermark.send_replace(self.log.high_watermark());
        Ok(pending.outcome)
    }

    /// Reads records from `from` on: up to `records_max` records and about
    /// `bytes_max` bytes (always at least one record when any is there).
    pub async fn read(self: &Arc<Self>, from: u64, records_max: usize, bytes_max: usize) -> Result<ReadRecords> {
        let read = self.read_uncounted(from, records_max, bytes_max).await?;
        self.count_fetched(read.records.len() as u64, read.batch_bytes);
        Ok(read)
    }

    /// [`Partition::read`] for a read that may never be served (a fetch
    /// read ahead): the fetch counters count it when it is.
    pub async fn read_uncounted(
        self: &Arc<Self>,
        from: u64,
        records_max: usize,
        bytes_max: usize,
    ) -> Result<ReadRecords> {
        self.read_into(from, records_max, bytes_max, Vec::new()).await
    }

    /// [`Partition::read_uncounted`] into `sink`.
    pub async fn read_into<S: ReadSink>(
        self: &Arc<Self>,
        from: u64,
        records_max: usize,
        bytes_max: usize,
        sink: S,
    ) -> Result<ReadInto<S>> {
        // Reads stay on the blocking pool: measured, running them in place
        // halved page-cache consume throughput (the decode competes with the
        // network tasks on the same worker).
        let this = self.clone();
        tokio::task::spawn_blocking(move || this.read_blocking(from, records_max, bytes_max, sink))
            .await
            .map_err(|e| BrokerError::Internal(format!("read task failed: {e}")))?
    }

    /// Counts records read as fetched (`strata_fetch_*_total`).
    pub fn count_fetched(&self, records: u64, batch_bytes: u64) {
        self.counters.fetched(records, batch_bytes);
    }

    fn read_blocking<S: ReadSink>(
        &self,
        from: u64,
        records_max: usize,
        bytes_max: usize,
        sink: S,
    ) -> Result<ReadInto<S>> {
        let mut out = ReadInto {
            records: sink,
            first_offset: None,
            next_offset: from,
            high_watermark: 0,
            log_start_offset: 0,
            batch_bytes: 0,
        };
        let mut bytes = 0usize;
        loop {
            let read = self.log.read(out.next_offset, bytes_max.saturating_sub(bytes).max(1));
            let ReadBatches { batches, high_watermark, log_start_offset, .. } = match read {
                Ok(read) => read,
                // What was read before a corrupt batch is served; the read
                // that starts at it reports it.
                Err(crate::storage::StorageError::Corrupt { .. }) if !out.records.is_empty() => return Ok(out),
                Err(e) => return Err(self.error(e)),
            };
            out.high_watermark = high_watermark;
            out.log_start_offset = log_start_offset;
            if batches.is_empty() {
                return Ok(out);
            }
            // Sized once: grown by doubling, a 100,000-record read copied
            // its records over and over into freshly zeroed pages.
            let counted: u64 = batches
                .iter()
                .filter_map(|b| BatchHeader::parse(b, usize::MAX).ok())
                .map(|h| h.next_offset().saturating_sub(h.base_offset))
                .sum();
            out.records.reserve((counted as usize).min(records_max.saturating_sub(out.records.len())));
            for batch in &batches {
                let batch_end = BatchHeader::parse(batch, usize::MAX).map_or(u64::MAX, |h| h.next_offset());
                // Once the limits are reached, the rest of the batch is
                // still checked (a malformed batch fails the whole read, as
                // decoding it whole did).
                let (mut full, before) = (false, out.next_offset);
                crate::storage::batch::for_each_record(batch, |r| {
                    if full || r.offset < out.next_offset || r.offset >= high_watermark {
                        return;
                    }
                    let size = r.key().len() + r.value().len() + 32;
                    if out.records.len() >= records_max || (bytes + size > bytes_max && !out.records.is_empty()) {
                        full = true;
                        return;
                    }
                    bytes += size;
                    out.first_offset.get_or_insert(r.offset);
                    out.next_offset = r.offset + 1;
                    if out.next_offset == batch_end {
                        out.batch_bytes += batch.len() as u64;
                    }
                    out.records.push(r);
                })
                .map_err(|e| {
                    self.error(crate::storage::StorageError::Corrupt {
                        path: self.log.dir().to_path_buf(),
                        position: 0,
                        first_offset: before,
                        reason: e.to_string(),
                    })
                })?;
                if full {
                    return Ok(out);
                }
            }
            if out.next_offset >= high_watermark || out.records.len() >= records_max || bytes >= bytes_max {
                return Ok(out);
            }
        }
    }

    /// Reads whole stored batches from `from` on, up to about `bytes_max`
    /// (at least one batch), for fetches that take the on-disk format.
    pub async fn read_raw(self: &Arc<Self>, from: u64, bytes_max: usize) -> Result<ReadBatches> {
        let read = self.blocking(move |log| log.read(from, bytes_max)).await?;
        let (mut records, mut bytes) = (0, 0);
        for batch in &read.batches {
            if let Ok(h) = BatchHeader::parse(batch, usize::MAX) {
                let end = h.next_offset().min(read.high_watermark);
                records += end.saturating_sub(h.base_offset.max(from));
                bytes += batch.len() as u64;
            }
        }
        self.counters.fetched(records, bytes);
        Ok(read)
    }

    /// Runs a blocking log operation off the async workers.
    pub async fn blocking<T: Send + 'static>(
        self: &Arc<Self>,
        f: impl FnOnce(&Log) -> crate::storage::Result<T> + Send + 'static,
    ) -> Result<T> {
        let this = self.clone();
        tokio::task::spawn_blocking(move || f(&this.log))
            .await
            .map_err(|e| BrokerError::Internal(format!("storage task failed: {e}")))?
            .map_err(|e| self.error(e))
    }

    /// Writes a recovery checkpoint if the durable or written point moved
    /// since the last one. It syncs nothing: under `never` that is the OS's
    /// business, and under `always` acknowledged batches are already durable.
    pub async fn checkpoint_if_dirty(self: &Arc<Self>) -> Result<()> {
        if !self.log.checkpoint_stale() {
            return Ok(());
        }
        self.blocking(|log| log.checkpoint_hint()).await?;
        Ok(())
    }

    /// Starts a task, unless one is running, that finishes segment rolls
    /// of `never` and `interval` topics (directory fsync, index trim) and
    /// fsyncs segments rolled at least `delay` ago, so the durable point
    /// and the recovery checkpoint follow the rolls. Appenders never wait
    /// for either.
    pub fn spawn_roll_io(self: &Arc<Self>, delay: std::time::Duration) {
        let delay_ms = delay.as_millis().min(u64::MAX as u128) as u64;
        let due = self.log.has_unfinished_rolls() || self.log.closed_sync_due(delay_ms);
        if !due || self.rolling_io.swap(true, Ordering::AcqRel) {
            return;
        }
        let this = self.clone();
        tokio::spawn(async move {
            let _running = super::background::ClearOnDrop(this.rolling_io.clone());
            let result = this.blocking(move |log| log.finish_rolls().and_then(|()| log.sync_closed(delay_ms))).await;
            if let Err(e) = result {
                tracing::error!(topic = %this.topic, partition = this.id, error = %e, "finishing or fsyncing a rolled segment failed");
            }
        });
    }

    /// Starts a task, unless one is running, that reopens the log in place
    /// if an I/O error poisoned it and the fault has cleared.
    pub fn spawn_reopen_if_poisoned(self: &Arc<Self>) {
        if !self.log.is_poisoned() || self.rolling_io.swap(true, Ordering::AcqRel) {
            return;
        }
        let this = self.clone();
        tokio::spawn(async move {
            let _running = super::background::ClearOnDrop(this.rolling_io.clone());
            match this.blocking(|log| log.reopen_if_poisoned()).await {
                Ok(true) => {
                    this.high_watermark.send_replace(this.log.high_watermark());
                }
                Ok(false) => {}
                Err(e) => {
                    tracing::warn!(topic = %this.topic, partition = this.id, error = %e, "the log stays poisoned")
                }
            }
        });
    }

    /// For the `interval:<ms>` policy: fsyncs when the interval has passed.
    pub async fn flush_if_due(self: &Arc<Self>, now_ms: u64, interval_ms: u64) -> Result<()> {
        if now_ms < self.last_flush_ms.load(Ordering::Acquire) + interval_ms || !self.log.has_unsynced() {
            return Ok(());
        }
        self.last_flush_ms.store(now_ms, Ordering::Release);
        self.blocking(|log| log.sync()).await
    }
}
