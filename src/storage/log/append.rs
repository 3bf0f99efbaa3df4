//! Appends under the writer lock, and segment rolls.
//!
//! An append checks the batch and the idempotent producer's sequence, rolls
//! the active segment if it is due, has the segment write the batch (one
//! `pwrite`, or one `pwritev` for a client's batch that is not copied),
//! indexes it, and, unless the flush policy is `always`, publishes it to
//! readers at once. Under `always` the high watermark moves only once an
//! fsync covered the batch, and while an fsync runs the batch is queued
//! instead, to be written with the rest of its group (`durability.rs`).

use std::sync::atomic::Ordering;
use std::sync::Arc;

use super::checkpoints::checkpoint_points;
use super::durability::Rolled;
use super::{
    lock, millis, Active, AppendOutcome, BatchRef, FlushPolicy, Log, LogConfig, PendingAppend, Refusal, Writer,
};
use crate::storage::batch::{BatchHeader, BATCH_BYTES_LIMIT};
use crate::storage::producer::{ProducerBatch, SequenceCheck};
use crate::storage::segment::{QueuedBatch, Segment};
use crate::storage::{IoCause, PoisonCause, Result, StorageError};

impl Log {
    /// Appends one encoded batch (from [`crate::storage::batch::encode`]);
    /// the log stamps the offsets. Returns once the batch is durable per the
    /// flush policy.
    pub fn append(&self, batch: &mut [u8]) -> Result<AppendOutcome> {
        let pending = self.append_pending(batch)?;
        self.wait_durable(&pending)?;
        Ok(pending.outcome)
    }

    /// Writes one batch without waiting for durability. Batches are ordered
    /// by the order of these calls; [`Log::wait_durable`] completes them.
    /// This is what lets a pipelined producer overlap writes with fsyncs.
    /// The log only stamps the base offset into `batch`; it keeps no reference.
    pub fn append_pending<'a>(&self, batch: impl Into<BatchRef<'a>>) -> Result<PendingAppend> {
        let batch = batch.into();
        let config = self.config();
        let header = self.check_batch(&config, batch.bytes())?;
        let mut w = self.writer();
        let roll = self.roll_due(&w, &config, batch.bytes().len(), header.record_count)?;
        self.append_locked(&mut w, &config, header, batch, roll)
    }

    /// [`Log::append_pending`] unless a segment roll (file creation and
    /// fsyncs, milliseconds) is due: then `None`, and the caller should call
    /// `append_pending` where blocking is fine. Otherwise this does one
    /// pwrite, and waits for the writer lock only while another appender
    /// does its pwrite, so an async caller can append in place without a
    /// thread hand-off. (Falling back on a busy lock instead measured 35%
    /// slower: with 8 producers the lock is usually busy.)
    pub fn try_append_pending<'a>(&self, batch: impl Into<BatchRef<'a>>) -> Option<Result<PendingAppend>> {
        let batch = batch.into();
        let config = self.config();
        let header = match self.check_batch(&config, batch.bytes()) {
            Ok(h) => h,
            Err(e) => return Some(Err(e)),
        };
        let mut w = self.writer();
        match self.roll_due(&w, &config, batch.bytes().len(), header.record_count) {
            Ok(false) => Some(self.append_locked(&mut w, &config, header, batch, false)),
            Ok(true) => None,
            Err(e) => Some(Err(e)),
        }
    }

    /// A pending append for records already written at `offset` in writer
    /// epoch `epoch` (as an earlier append reported them): waiting for it
    /// waits until they are durable per the current flush policy, or fails
    /// if a failed fsync discarded them.
    pub fn pending_at(&self, offset: u64, epoch: u64) -> PendingAppend {
        let needs_sync = self.config().flush == FlushPolicy::Always;
        PendingAppend {
            outcome: AppendOutcome { base_offset: offset, last_offset: offset, duplicate: true },
            epoch,
            needs_sync,
        }
    }

    /// The writer's epoch now (it moves when a failed fsync discards writes).
    pub fn writer_epoch(&self) -> u64 {
        self.writer().epoch
    }

    /// Moves an idempotent producer's sequence past `record_count` records
    /// that are not appended (duplicates by event id), so what it sends
    /// next follows on without a gap. Kept with the producer state: in the
    /// recovery checkpoint, which is written (as a hint) before this
    /// returns. A fenced producer or a gap is refused as an append would
    /// be; a retry of sequences already in the log is no change.
    pub fn skip_sequences(&self, producer: crate::storage::batch::ProducerStamp, record_count: u32) -> Result<()> {
        let cp = {
            let mut w = self.writer();
            if let Some(refused) = self.refused(&w) {
                return Err(refused);
            }
            let p = producer;
            match w.producers.check(p.producer_id, p.producer_epoch, p.first_sequence) {
                SequenceCheck::New => {}
                // A retry of what was appended or skipped already (its
                // records are in the log): nothing to move.
                SequenceCheck::Duplicate { .. } | SequenceCheck::TooOld { .. } | SequenceCheck::Overlaps { .. } => {
                    return Ok(())
                }
                refused => {
                    if let Some(e) = sequence_refusal(p, refused) {
                        return Err(e);
                    }
                }
            }
            // Pinned to the last record in the log, so a cut there (a
            // discarded write) forgets it with the records before.
            let last = w.next_offset.saturating_sub(1);
            let batch = ProducerBatch {
                first_sequence: p.first_sequence,
                record_count: record_count.max(1),
                base_offset: last,
                last_offset: last,
            };
            w.producers.record(p.producer_id, p.producer_epoch, batch);
            if w.durable.offset < w.next_offset {
                // Not durable up to there yet: the next checkpoint after the
                // fsync carries it.
                return Ok(());
            }
            self.checkpoint_of(&mut w)
        };
        self.write_checkpoint(cp)
    }

    fn check_batch(&self, config: &LogConfig, batch: &[u8]) -> Result<BatchHeader> {
        if batch.len() > config.batch_bytes_max {
            return Err(StorageError::BatchTooLarge { size: batch.len(), limit: config.batch_bytes_max });
        }
        BatchHeader::parse(batch, BATCH_BYTES_LIMIT).map_err(|e| StorageError::Corrupt {
            path: self.dir.clone(),
            position: 0,
            first_offset: 0,
            reason: format!("append of an invalid batch: {e}"),
        })
    }

    /// The append itself, under the writer lock; `roll` (from
    /// [`Log::roll_due`] under the same lock) starts a new segment first.
    fn append_locked(
        &self,
        w: &mut Writer,
        config: &LogConfig,
        header: BatchHeader,
        batch: BatchRef<'_>,
        roll: bool,
    ) -> Result<PendingAppend> {
        if let Some(refused) = self.refused(w) {
            return Err(refused);
        }
        let needs_sync = config.flush == FlushPolicy::Always;
        if let Some(p) = header.producer() {
            match w.producers.check(p.producer_id, p.producer_epoch, p.first_sequence) {
                SequenceCheck::New => {}
                SequenceCheck::Duplicate { base_offset, last_offset } => {
                    // The original may still be waiting for its fsync, so
                    // the retry waits for the same one.
                    let outcome = AppendOutcome { base_offset, last_offset, duplicate: true };
                    return Ok(PendingAppend { outcome, epoch: w.epoch, needs_sync });
                }
                refused => {
                    if let Some(e) = sequence_refusal(p, refused) {
                        return Err(e);
                    }
                }
            }
        }
        if roll {
            self.roll(w, config)?;
        }
        let base_offset = w.next_offset;
        let position = w.active.position;
        let batch_len = batch.bytes().len() as u64;
        let segment = w.active.segment.clone();
        if needs_sync && w.sync_running {
            // An fsync is running and cannot cover this batch: it waits to
            // be written with the others that arrive meanwhile, in one
            // pwritev, when that fsync returns (durability.rs).
            // (Measured against writing each batch at once, overlapped with
            // the fsync, and against writing the queue once it holds 64 KiB:
            // 8 producers of 100 KiB requests ran 364-428 MB/s at 2.9-3.4
            // CPU-s/GB queued, 306-362 at 3.4-4.0 written at once.)
            w.queue.push(QueuedBatch::new(position, batch, base_offset));
        } else {
            // (A queue is left only if the topic's flush policy just
            // changed: its batches go first, in order.)
            self.write_queue(w)?;
            if let Err(e) = segment.write_batch(position, batch, base_offset) {
                self.undo_write(w, position, &e);
                return Err(StorageError::io(&segment.log_path, e));
            }
        }
        let stamped = BatchHeader { base_offset, ..header };
        let idx = segment.indexes()?;
        let active = &mut w.active;
        segment.index_batch(idx, position, &stamped, &mut active.bytes_since_entry, &mut active.max_timestamp);
        segment.note_timestamp(stamped.max_timestamp);
        active.position += batch_len;
        if active.first_append_ms.is_none() {
            active.first_append_ms = Some(self.clock.now_ms());
        }
        w.next_offset = stamped.next_offset();
        if let Some(p) = header.producer() {
            let batch = ProducerBatch {
                first_sequence: p.first_sequence,
                record_count: header.record_count,
                base_offset,
                last_offset: stamped.last_offset(),
            };
            w.producers.record(p.producer_id, p.producer_epoch, batch);
        }
        if !needs_sync {
            self.publish(w);
        }
        let outcome = AppendOutcome { base_offset, last_offset: stamped.last_offset(), duplicate: false };
        Ok(PendingAppend { outcome, epoch: w.epoch, needs_sync })
    }

    /// Rolls back a failed write so no partial batch stays in the file.
    fn undo_write(&self, w: &mut Writer, position: u64, cause: &std::io::Error) {
        let segment = &w.active.segment;
        if let Err(e) = segment.cut(position, false) {
            tracing::error!(log = %segment.log_path.display(), error = %e, "cannot cut a failed write; refusing writes until reopen");
            let first = IoCause::copied(format!("write to {}", segment.log_path.display()), cause);
            let cut = IoCause::new(format!("cutting {}", segment.log_path.display()), e);
            w.refusal = Some(Refusal::Poisoned(PoisonCause::IoThenCut { first, cut }));
        } else {
            tracing::warn!(log = %segment.log_path.display(), position, error = %cause, "append failed; cut the partial write");
        }
    }

    /// Makes everything written so far visible to readers.
    pub(super) fn publish(&self, w: &Writer) {
        w.active.segment.set_readable_len(w.active.position);
        self.high_watermark.fetch_max(w.next_offset, Ordering::AcqRel);
    }

    /// Whether the next batch must go into a new segment.
    fn roll_due(&self, w: &Writer, config: &LogConfig, batch_len: usize, records: u32) -> Result<bool> {
        let active = &w.active;
        if active.position == 0 {
            return Ok(false);
        }
        let too_big = active.position + batch_len as u64 > config.segment_bytes;
        let too_old = active.first_append_ms.is_some_and(|t| self.clock.now_ms() - t >= millis(config.segment_age));
        let offsets_full = w.next_offset + records as u64 - active.segment.base_offset > u32::MAX as u64;
        let index_full = active.segment.indexes()?.offset.len() >= config.limits().index_capacity;
        let positions_full = active.position + batch_len as u64 > u32::MAX as u64;
        Ok(too_big || too_old || offsets_full || index_full || positions_full)
    }

    /// Closes the active segment (fsynced, indexes trimmed) and starts a new one.
    pub(super) fn roll(&self, w: &mut Writer, config: &LogConfig) -> Result<()> {
        // The old segment is closed (and under `always` fsynced) below:
        // batches queued for it are written first.
        self.write_queue(w)?;
        let new = Arc::new(Segment::create(self.fs.clone(), &self.dir, w.next_offset, config.limits())?);
        // Under `always` the old segment is fsynced here (its acknowledged
        // batches already are; this covers the ones still waiting). Under
        // `never` and `interval` nobody waits for it, so the fsync is left to
        // the next sync or `sync_closed`, and the directory fsync and index
        // trim to `finish_rolls`, all off the writer lock: while the kernel
        // writes back GBs, each of them can wait a second for ext4's journal,
        // and every producer with it.
        let sync_now =
            (config.flush == FlushPolicy::Always || w.durable.offset >= w.next_offset) && w.rolls.unsynced.is_empty();
        w.rolls.count += 1;
        let old = w.active.segment.clone();
        if sync_now {
            // Guards against a power loss dropping the new segment's
            // directory entry: fdatasync of the file alone does not persist
            // its name, and acknowledged batches are about to be fsynced
            // into it.
            if let Err(e) = self.fs.sync_dir(&self.dir) {
                let _ = new.delete();
                w.rolls.count -= 1;
                return Err(StorageError::io(&self.dir, e));
            }
            w.rolls.dir_synced = w.rolls.count;
            if let Err(e) = old.close() {
                let _ = new.delete();
                let cause = PoisonCause::Io(IoCause::new(format!("closing {}", old.log_path.display()), e));
                w.refusal = Some(Refusal::Poisoned(cause.clone()));
                return Err(StorageError::Poisoned { path: self.dir.clone(), cause });
            }
        } else {
            w.rolls.closing.push(old.clone());
        }
        self.publish(w);
        if sync_now {
            // Everything written so far is now durable: release any
            // appender waiting for it.
            {
                let mut s = lock(&self.sync);
                s.synced_offset = s.synced_offset.max(w.next_offset);
            }
            self.synced.notify_all();
        } else {
            let rolled_ms = self.clock.now_ms();
            w.rolls.unsynced.push(Rolled { segment: old, end_offset: w.next_offset, rolled_ms });
        }
        self.segments.write().unwrap_or_else(|e| e.into_inner()).insert(new.base_offset, new.clone());
        w.active = Active::new(new);
        if sync_now {
            w.durable.offset = w.next_offset;
        }
        w.durable.position = 0;
        let points = checkpoint_points(w);
        let cp = self.checkpoint_of(w);
        if let Err(e) = self.write_checkpoint(cp) {
            tracing::warn!(dir = %self.dir.display(), error = %e, "could not write the recovery checkpoint; recovery will scan more");
        }
        w.checkpoints.taken = points;
        tracing::debug!(dir = %self.dir.display(), base_offset = w.next_offset, synced = sync_now, "rolled segment");
        Ok(())
    }

    /// Closes the active segment now (if it holds anything) and returns the
    /// offset the new one starts at.
    pub fn roll_now(&self) -> Result<u64> {
        let config = self.config();
        let mut w = self.writer();
        if let Some(refused) = self.refused(&w) {
            return Err(refused);
        }
        if w.active.position > 0 {
            self.roll(&mut w, &config)?;
        }
        let next = w.next_offset;
        drop(w);
        self.finish_rolls()?;
        Ok(next)
    }
}

/// The error for a batch its producer's sequence state refuses (`None`
/// for New and Duplicate, which are not refusals).
fn sequence_refusal(p: crate::storage::batch::ProducerStamp, check: SequenceCheck) -> Option<StorageError> {
    let (producer_id, sequence) = (p.producer_id, p.first_sequence);
    Some(match check {
        SequenceCheck::TooOld { last_sequence } => {
            StorageError::SequenceTooOld { producer_id, sequence, last_sequence }
        }
        SequenceCheck::Fenced { epoch } => {
            StorageError::ProducerFenced { producer_id, epoch: p.producer_epoch, current: epoch }
        }
        SequenceCheck::OutOfOrder { expected } => StorageError::SequenceOutOfOrder { producer_id, sequence, expected },
        SequenceCheck::Overlaps { first_sequence, last_sequence } => {
            StorageError::SequenceOverlaps { producer_id, sequence, first_sequence, last_sequence }
        }
        SequenceCheck::New | SequenceCheck::Duplicate { .. } => return None,
    })
}
