//! De-duplication by event id (topic configs `dedupe.window.ms`,
//! `dedupe.header`, `dedupe.max.ids`): a record whose id was appended to
//! the topic within the window is not appended again; the produce reply
//! names the record appended first. The table is the pure
//! [`IdTable`](super::rules::dedupe::IdTable); this is its place in the
//! broker:
//!
//! - One table per topic behind an async lock, taken only on topics with
//!   de-dup on (an atomic flag says so, so other topics never touch it).
//!   A produce holds it from the check through its pwrite to `remember`,
//!   so two requests carrying one id cannot both append it; it is not held
//!   across the fsync wait, so group commit still coalesces.
//! - A duplicate is answered only once the record it duplicates is
//!   durable (it may be another request's, still in its group commit), so
//!   a producer told "duplicate" never loses the event to a crash. A
//!   failed fsync's discarded writes are forgotten from the table.
//! - On open (and when de-dup is turned on or its settings change) the
//!   table is rebuilt from each partition's last window, found with the
//!   time index: ids appended before a `kill -9` are still duplicates.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use bytes::Bytes;

use super::error::{BrokerError, Result};
use super::partition::Partition;
use super::rules::dedupe::{IdStats, IdTable, Seen};
use crate::config::{TopicConfig, DEDUPE_ID_BYTES_MAX};
use crate::storage::batch::decode_records;

/// A record the produce did not append: it duplicates an earlier one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Duplicate {
    /// Its position in the request's records (or the client batch's).
    pub index: u32,
    /// Where the record with its id was appended first.
    pub partition: u32,
    pub offset: u64,
}

/// The table and the header it reads ids from.
#[derive(Debug)]
pub struct Ids {
    pub header: String,
    pub table: IdTable,
}

/// A topic's de-dup state, shared by the `Topic` values a partition count
/// change replaces.
#[derive(Debug, Default)]
pub struct Dedupe {
    on: AtomicBool,
    ids: tokio::sync::Mutex<Option<Ids>>,
}

impl Dedupe {
    /// The state for `config`, rebuilt from the partitions' logs (blocking:
    /// reads the last window of every partition).
    pub fn open(topic: &str, partitions: &[Arc<Partition>], config: &TopicConfig, now_ms: i64) -> Result<Dedupe> {
        let ids = build(topic, partitions, config, now_ms)?;
        Ok(Dedupe { on: AtomicBool::new(ids.is_some()), ids: tokio::sync::Mutex::new(ids) })
    }

    /// Whether produce must consult the table.
    pub fn is_on(&self) -> bool {
        self.on.load(Ordering::Acquire)
    }

    /// The table, locked (`None` inside: de-dup is off).
    pub async fn lock(&self) -> tokio::sync::MutexGuard<'_, Option<Ids>> {
        self.ids.lock().await
    }

    /// Follows a config change (blocking: a rebuild reads the logs). A
    /// table whose settings did not change is kept as it is.
    pub fn reconfigure(
        &self,
        topic: &str,
        partitions: &[Arc<Partition>],
        config: &TopicConfig,
        now_ms: i64,
    ) -> Result<()> {
        let mut ids = self.ids.blocking_lock();
        let same = match (&*ids, config.dedupe_window_ms) {
            (None, 0) => true,
            (Some(i), w) if w > 0 => i.header == config.dedupe_header && i.table.has_settings(w, config.dedupe_max_ids),
            _ => false,
        };
        if !same {
            *ids = build(topic, partitions, config, now_ms)?;
            self.on.store(ids.is_some(), Ordering::Release);
        }
        Ok(())
    }

    /// Forgets the ids of `partition` at `offset` or later: a failed fsync
    /// discarded them.
    pub async fn forget_from(&self, partition: u32, offset: u64) {
        if let Some(ids) = self.ids.lock().await.as_mut() {
            ids.table.forget_from(partition, offset);
        }
    }

    /// What DescribeTopic reports for `partition` (zeros when off).
    pub async fn stats(&self, partition: u32) -> IdStats {
        if !self.is_on() {
            return IdStats::default();
        }
        self.ids.lock().await.as_ref().map_or(IdStats::default(), |i| i.table.stats(partition))
    }
}

/// The event id of a record: the value of its first `header` header.
/// Longer than [`DEDUPE_ID_BYTES_MAX`]: INVALID_ARGUMENT.
pub fn event_id<'a>(
    topic: &str,
    header: &str,
    index: usize,
    headers: &'a [(String, Bytes)],
) -> Result<Option<&'a Bytes>> {
    let Some((_, id)) = headers.iter().find(|(k, _)| k == header) else { return Ok(None) };
    if id.len() > DEDUPE_ID_BYTES_MAX {
        return Err(BrokerError::EventIdTooLong {
            topic: topic.to_string(),
            index,
            header: header.to_string(),
            size: id.len(),
            max: DEDUPE_ID_BYTES_MAX,
        });
    }
    Ok(Some(id))
}

/// Bytes read per step of a rebuild.
const REBUILD_READ_BYTES: usize = 4 << 20;

/// The table for `config` (`None`: de-dup off), from each partition's
/// records appended within the window. Times are the log's running
/// maximum record timestamp (what the time index knows), capped at now.
fn build(topic: &str, partitions: &[Arc<Partition>], config: &TopicConfig, now_ms: i64) -> Result<Option<Ids>> {
    if config.dedupe_window_ms == 0 {
        return Ok(None);
    }
    let started = std::time::Instant::now();
    let mut table = IdTable::new(config.dedupe_window_ms, config.dedupe_max_ids);
    let floor = now_ms.saturating_sub(config.dedupe_window_ms as i64);
    let mut records = 0u64;
    let mut logged = started;
    for p in partitions {
        let log = &p.log;
        let storage = |e| BrokerError::storage(topic, p.id, e);
        let epoch = log.writer_epoch();
        let mut next = log.offset_for_timestamp(floor.saturating_add(1)).map_err(storage)?;
        let mut running_max = floor;
        while next < log.high_watermark() {
            let read = log.read(next, REBUILD_READ_BYTES).map_err(storage)?;
            if read.batches.is_empty() {
                break;
            }
            for b in &read.batches {
                let decoded = decode_records(b).map_err(|e| {
                    BrokerError::Internal(format!(
                        "{topic}/{}: cannot rebuild the de-dup table: batch at offset {next}: {e}",
                        p.id
                    ))
                })?;
                for r in decoded {
                    if r.offset < next {
                        continue;
                    }
                    next = r.offset + 1;
                    records += 1;
                    running_max = running_max.max(r.timestamp_ms);
                    if let Some((_, id)) = r.headers.iter().find(|(k, _)| *k == config.dedupe_header) {
                        if id.len() <= DEDUPE_ID_BYTES_MAX {
                            let seen =
                                Seen { partition: p.id, offset: r.offset, epoch, at_ms: running_max.min(now_ms) };
                            table.remember(id, seen);
                        }
                    }
                }
            }
            if logged.elapsed() >= std::time::Duration::from_secs(2) {
                logged = std::time::Instant::now();
                tracing::info!(topic, partition = p.id, records, ids = table.len(), "rebuilding the de-dup table");
            }
        }
    }
    table.expire(now_ms);
    if records > 0 {
        tracing::info!(
            topic,
            records,
            ids = table.len(),
            elapsed_ms = started.elapsed().as_millis() as u64,
            "de-dup table rebuilt from the log"
        );
    }
    Ok(Some(Ids { header: config.dedupe_header.clone(), table }))
}
