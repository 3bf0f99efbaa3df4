//! Group commit, fsyncs, the durable point, and poisoning.
//!
//! Appenders under `always` wait in [`Log::wait_durable`] (or poll
//! [`Log::durable_status`] while the broker's per-partition syncer calls
//! [`Log::sync`]): the first runs the fsync while the rest queue up, so one
//! fsync covers every batch written before it started. While it runs,
//! `always` appends are not written but queued (offsets, positions and
//! index entries reserved); when it returns, the queue goes out in one
//! `pwritev` for the next fsync to cover (raft-engine's write barrier).
//! Measured here, that beat writing each batch at once (overlapped with
//! the fsync): fewer system calls and lock hand-offs, 12-20% more durable
//! produce at 25% less CPU per GB. Also measured, and left out: starting
//! each batch's writeback as it is written (`sync_file_range`, `WRITE`
//! only), so the disk works while the group gathers, cut the group's
//! fdatasync from 0.6 to 0.2 ms (perf trace, 8 producers of 100 KiB) but
//! cost 0.4-0.5 CPU-s/GB more (45 us per call), for no more MB/s on two
//! cores, where encoding and acknowledging the group is the longer part
//! of its round; on a machine with cores to spare it would be worth
//! measuring again. The checkpoint's written point stops
//! before the queue, and a roll writes the queue first. A failed fsync is never
//! retried: the unsynced tail is cut off and every waiter on it fails; if
//! readers may have seen it (or the cut fails) the log is poisoned instead,
//! until [`Log::reopen_if_poisoned`] reopens it in place.
//!
//! Under `never` and `interval`, rolled segments are fsynced later, by
//! [`Log::finish_rolls`] (the directory fsync and index trim) and
//! [`Log::sync_closed`] (the data, once rolled long enough), both off the
//! writer lock. Nothing is called durable before its segment's name is.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use super::checkpoints::checkpoint_points;
use super::{lock, Log, PendingAppend, Refusal, Writer};
use crate::storage::checkpoint::{self, Checkpoint};
use crate::storage::segment::Segment;
use crate::storage::{IoCause, PoisonCause, Result, StorageError};

/// A segment rolled without an fsync of its tail.
#[derive(Debug, Clone)]
pub(super) struct Rolled {
    pub segment: Arc<Segment>,
    /// The offset after its last batch.
    pub end_offset: u64,
    /// Clock time of the roll (of the open, for segments recovery found
    /// unsynced), which [`Log::sync_closed`] ages against.
    pub rolled_ms: i64,
}

/// Why a sync failed, and the epoch after the discard it caused.
type SyncFailure = (u64, IoCause);

fn rolled_long_enough(r: &Rolled, now_ms: i64, min_age_ms: u64) -> bool {
    now_ms.saturating_sub(r.rolled_ms) >= min_age_ms.min(i64::MAX as u64) as i64
}

/// Fsyncs rolled segments; the error names the first that failed.
fn sync_segments(closed: &[Rolled]) -> std::result::Result<(), IoCause> {
    for Rolled { segment, .. } in closed {
        // Guards against a power loss losing a rolled segment's tail after
        // later segments (and checkpoints pointing into them) are durable.
        segment.sync().map_err(|e| IoCause::new(format!("fsync of {}", segment.log_path.display()), e))?;
    }
    Ok(())
}

/// Drops synced segments from the writer's list and advances the durable
/// point to the active segment's start once none is left before it.
fn forget_synced(w: &mut Writer, synced: &[Rolled]) {
    w.rolls.unsynced.retain(|r| !synced.iter().any(|done| Arc::ptr_eq(&r.segment, &done.segment)));
    if let Some(end) = synced.iter().map(|r| r.end_offset).max() {
        let next_unsynced = w.rolls.unsynced.first().map_or(end, |r| r.segment.base_offset);
        w.durable.offset = w.durable.offset.max(end.min(next_unsynced));
    }
}

/// Refuses further writes: readers may have seen what is in doubt.
fn poison(w: &mut Writer, cause: PoisonCause) {
    tracing::error!(%cause, "poisoning the log");
    w.refusal = Some(Refusal::Poisoned(cause));
}

impl Log {
    /// Waits until a pending append is durable per the flush policy it was
    /// written under (group commit: one fsync may cover many appends).
    pub fn wait_durable(&self, pending: &PendingAppend) -> Result<()> {
        if pending.needs_sync {
            self.sync_until(pending.outcome.last_offset + 1, pending.epoch)?;
        }
        Ok(())
    }

    /// Makes every append so far durable now (whatever the flush policy).
    pub fn sync(&self) -> Result<()> {
        let (target, epoch) = {
            let w = self.writer();
            if let Some(refused) = self.refused(&w) {
                return Err(refused);
            }
            (w.next_offset, w.epoch)
        };
        self.sync_until(target, epoch)
    }

    /// Whether there are appends not yet covered by a sync.
    pub fn has_unsynced(&self) -> bool {
        let w = self.writer();
        w.next_offset > w.durable.offset
    }

    /// Waits until offsets below `target` are durable, running the fsync
    /// itself if no other appender is (group commit).
    fn sync_until(&self, target: u64, epoch: u64) -> Result<()> {
        let mut s = lock(&self.sync);
        loop {
            if epoch < s.reopened_below {
                return Err(StorageError::Reopened { path: self.dir.clone() });
            }
            if s.discard_epoch > epoch && s.synced_offset < target {
                let cause =
                    s.last_error.clone().unwrap_or_else(|| IoCause::new("fsync", std::io::Error::other("unknown")));
                return Err(StorageError::SyncFailed { path: self.dir.clone(), cause });
            }
            if s.synced_offset >= target {
                return Ok(());
            }
            if !s.in_progress {
                s.in_progress = true;
                drop(s);
                let result = self.sync_once();
                s = lock(&self.sync);
                s.in_progress = false;
                match result {
                    Ok(offset) => s.synced_offset = s.synced_offset.max(offset),
                    Err((new_epoch, cause)) => {
                        s.discard_epoch = s.discard_epoch.max(new_epoch);
                        s.last_error = Some(cause);
                        // The writer lock is taken before the sync lock
                        // elsewhere (a roll): never the other way round.
                        drop(s);
                        self.synced.notify_all();
                        if let Some(refused @ StorageError::Poisoned { .. }) = self.refused(&self.writer()) {
                            return Err(refused);
                        }
                        s = lock(&self.sync);
                        continue;
                    }
                }
                self.synced.notify_all();
                continue;
            }
            s = self.synced.wait(s).unwrap_or_else(|e| e.into_inner());
        }
    }

    /// One fsync of the active segment. On success returns the offset it
    /// covers; on failure discards the unsynced tail (or poisons the log)
    /// and returns the new epoch and the cause.
    fn sync_once(&self) -> std::result::Result<u64, SyncFailure> {
        let (segment, offset, position, closed, rolls, epoch) = {
            let mut w = self.writer();
            // From here until the fsync returns, `always` appends queue up
            // (the queue is empty now: the last sync wrote it).
            w.sync_running = true;
            let active = (w.active.segment.clone(), w.next_offset, w.active.position);
            (active.0, active.1, active.2, w.rolls.unsynced.clone(), w.rolls.count, w.epoch)
        };
        let result = self.sync_written(&segment, offset, position, &closed, rolls, epoch);
        let mut w = self.writer();
        w.sync_running = false;
        if result.is_err() {
            w.queue.clear();
            return result;
        }
        // What queued during the fsync is written now, in one pwritev, for
        // the next fsync to cover.
        if let Err(failed) = self.write_queue(&mut w) {
            tracing::debug!(error = %failed, "writing a group commit's queue failed");
        }
        result
    }

    /// The fsyncs of one group commit: segment names, rolled segments, then
    /// the active segment up to `position` (offsets below `offset`).
    fn sync_written(
        &self,
        segment: &Arc<Segment>,
        offset: u64,
        position: u64,
        closed: &[Rolled],
        rolls: u64,
        epoch: u64,
    ) -> std::result::Result<u64, SyncFailure> {
        // Segment names first, then rolled segments: the durable point
        // cannot pass either.
        if let Err(cause) = self.sync_dir_through(rolls) {
            let mut w = self.writer();
            w.epoch += 1;
            return Err((w.epoch, cause));
        }
        if let Err(cause) = sync_segments(closed) {
            let mut w = self.writer();
            poison(&mut w, PoisonCause::Io(cause.clone()));
            w.epoch += 1;
            return Err((w.epoch, cause));
        }
        // The fsync that makes group-committed appends durable: guards
        // against a power loss losing batches we are about to acknowledge.
        let result = segment.sync();
        let mut w = self.writer();
        forget_synced(&mut w, closed);
        if w.epoch != epoch {
            // A failed write of a queue (in a roll) cut the log meanwhile;
            // its waiters have failed. This fsync proves nothing new.
            return Ok(w.durable.offset);
        }
        match result {
            Ok(()) => {
                let same = Arc::ptr_eq(&w.active.segment, segment);
                if same && w.durable.position < position {
                    w.durable.position = position;
                }
                w.durable.offset = w.durable.offset.max(offset);
                if same {
                    segment.set_readable_len(segment.readable_len().max(position));
                }
                self.high_watermark.fetch_max(offset, Ordering::AcqRel);
                Ok(offset)
            }
            Err(e) => {
                let cause = IoCause::new(format!("fsync of {}", segment.log_path.display()), e);
                Err((self.discard_after(&mut w, segment, &cause), cause))
            }
        }
    }

    /// After a failed fsync or write of `segment`: cuts the unsynced tail
    /// (or poisons the log when it cannot) and returns the new epoch, which
    /// fails every waiter on what was cut.
    fn discard_after(&self, w: &mut Writer, segment: &Arc<Segment>, cause: &IoCause) -> u64 {
        tracing::error!(%cause, "discarding unsynced appends");
        if self.high_watermark() > w.durable.offset || !Arc::ptr_eq(&w.active.segment, segment) {
            // Readers may have seen data that is not durable (policy
            // changed at runtime, or a roll raced): we cannot cut it.
            poison(w, PoisonCause::Io(cause.clone()));
        } else if let Err(cut) = self.discard_unsynced(w) {
            poison(w, PoisonCause::IoThenCut { first: cause.clone(), cut });
        }
        w.queue.clear();
        w.epoch += 1;
        w.epoch
    }

    /// Writes the group-commit queue (see [`Writer::queue`]) with one
    /// vectored write. A failure discards everything unsynced, as a failed
    /// fsync does, and fails its waiters.
    pub(super) fn write_queue(&self, w: &mut Writer) -> Result<()> {
        if w.queue.is_empty() {
            return Ok(());
        }
        let segment = w.active.segment.clone();
        match segment.write_queued(&w.queue) {
            Ok(()) => {
                w.queue.clear();
                Ok(())
            }
            Err(e) => {
                let cause = IoCause::new(format!("write to {}", segment.log_path.display()), e);
                let epoch = self.discard_after(w, &segment, &cause);
                // The writer lock is held: it is taken before the sync lock.
                {
                    let mut s = lock(&self.sync);
                    s.discard_epoch = s.discard_epoch.max(epoch);
                    s.last_error = Some(cause.clone());
                }
                self.synced.notify_all();
                Err(self.refused(w).unwrap_or(StorageError::SyncFailed { path: self.dir.clone(), cause }))
            }
        }
    }

    /// Where a pending append stands, without waiting: `None` while it
    /// waits for an fsync, else whether it is durable (for callers that
    /// wait asynchronously and have [`Log::sync`] run elsewhere).
    pub fn durable_status(&self, pending: &PendingAppend) -> Option<Result<()>> {
        if !pending.needs_sync {
            return Some(Ok(()));
        }
        let (target, epoch) = (pending.outcome.last_offset + 1, pending.epoch);
        {
            let s = lock(&self.sync);
            if epoch < s.reopened_below {
                return Some(Err(StorageError::Reopened { path: self.dir.clone() }));
            }
            if s.synced_offset >= target {
                return Some(Ok(()));
            }
            if s.discard_epoch > epoch {
                let cause =
                    s.last_error.clone().unwrap_or_else(|| IoCause::new("fsync", std::io::Error::other("unknown")));
                return Some(Err(StorageError::SyncFailed { path: self.dir.clone(), cause }));
            }
        }
        // A poisoned log syncs nothing until it is reopened (which fails
        // this append as above).
        self.refused(&self.writer()).map(Err)
    }

    /// Whether a sync is needed for appends below `wanted` to be durable
    /// (false once they are, or once a discard cut them off).
    pub fn sync_needed(&self, wanted: u64) -> bool {
        let next = self.writer().next_offset;
        lock(&self.sync).synced_offset < wanted.min(next)
    }

    /// Cuts the active segment back to the last durable point.
    fn discard_unsynced(&self, w: &mut Writer) -> std::result::Result<(), IoCause> {
        let position = w.durable.position;
        let segment = w.active.segment.clone();
        let cause = |what: &str, e: std::io::Error| IoCause::new(format!("{what} {}", segment.log_path.display()), e);
        segment.cut(position, false).map_err(|e| cause("cutting", e))?;
        let idx =
            segment.indexes().map_err(|e| cause("opening the indexes of", std::io::Error::other(e.to_string())))?;
        idx.offset.truncate_to_position(position);
        idx.time.truncate_to_relative(w.durable.offset - segment.base_offset);
        w.producers.truncate(w.durable.offset);
        w.queue.clear();
        w.next_offset = w.durable.offset;
        w.active.position = position;
        w.active.bytes_since_entry = position - idx.offset.last().map(|e| e.position as u64).unwrap_or(0);
        // The checkpoint's written point may lie past the cut, where new
        // batches will start at other positions: replace it before any.
        let points = checkpoint_points(w);
        let cp = self.checkpoint_of(w);
        self.write_checkpoint(cp)
            .map_err(|e| cause("writing the checkpoint of", std::io::Error::other(e.to_string())))?;
        w.checkpoints.taken = points;
        Ok(())
    }

    /// Whether a roll waits for [`Log::finish_rolls`].
    pub fn has_unfinished_rolls(&self) -> bool {
        !self.writer().rolls.closing.is_empty()
    }

    /// The half of a `never`/`interval` roll that may wait on the disk, for
    /// a background task (the broker's runs within 50 ms), never an
    /// appender: the directory fsync that makes the new segment's name
    /// durable, and the trim (shrink, fsync) of the old segment's indexes.
    /// Until then the old indexes keep their preallocated size, as the
    /// active segment's do. Any sync does the directory fsync itself first,
    /// so no data is called durable before its segment's name is. A failure
    /// poisons the log: the segments' data is visible to readers.
    pub fn finish_rolls(&self) -> Result<()> {
        let (closing, rolls) = {
            let mut w = self.writer();
            (std::mem::take(&mut w.rolls.closing), w.rolls.count)
        };
        if closing.is_empty() {
            return Ok(());
        }
        self.sync_dir_through(rolls)
            .map_err(|cause| StorageError::Poisoned { path: self.dir.clone(), cause: PoisonCause::Io(cause) })?;
        for segment in closing {
            if let Err(e) = segment.close_unsynced() {
                let cause = PoisonCause::Io(IoCause::new(format!("closing {}", segment.log_path.display()), e));
                poison(&mut self.writer(), cause.clone());
                return Err(StorageError::Poisoned { path: self.dir.clone(), cause });
            }
        }
        Ok(())
    }

    /// Fsyncs the partition directory unless a fsync since the `rolls`-th
    /// roll already did. A failure poisons the log.
    fn sync_dir_through(&self, rolls: u64) -> std::result::Result<(), IoCause> {
        if self.writer().rolls.dir_synced >= rolls {
            return Ok(());
        }
        // Guards against a power loss dropping the names of rolled segments
        // whose data is about to be called durable (or already is by the
        // kernel's writeback, which a later fsync would then count on).
        match self.fs.sync_dir(&self.dir) {
            Ok(()) => {
                let mut w = self.writer();
                w.rolls.dir_synced = w.rolls.dir_synced.max(rolls);
                Ok(())
            }
            Err(e) => {
                let cause = IoCause::new(format!("fsync of the directory {}", self.dir.display()), e);
                poison(&mut self.writer(), PoisonCause::Io(cause.clone()));
                Err(cause)
            }
        }
    }

    /// Whether rolled segments wait for their fsync ([`Log::sync_closed`]).
    pub fn has_unsynced_closed(&self) -> bool {
        !self.writer().rolls.unsynced.is_empty()
    }

    /// Whether a segment rolled at least `min_age_ms` ago waits for its
    /// fsync (what [`Log::sync_closed`] with the same age would sync).
    pub fn closed_sync_due(&self, min_age_ms: u64) -> bool {
        let now = self.clock.now_ms();
        self.writer().rolls.unsynced.first().is_some_and(|r| rolled_long_enough(r, now, min_age_ms))
    }

    /// Fsyncs the segments rolled without one at least `min_age_ms` ago
    /// (oldest first, so the durable point moves in order), without holding
    /// the writer lock, and advances the durable point past them. A failed
    /// fsync poisons the log: readers may have seen those batches.
    pub fn sync_closed(&self, min_age_ms: u64) -> Result<()> {
        let now = self.clock.now_ms();
        let (closed, rolls) = {
            let w = self.writer();
            let due = w.rolls.unsynced.iter().take_while(|r| rolled_long_enough(r, now, min_age_ms));
            (due.cloned().collect::<Vec<Rolled>>(), w.rolls.count)
        };
        if closed.is_empty() {
            return Ok(());
        }
        let poisoned =
            |cause: IoCause| StorageError::Poisoned { path: self.dir.clone(), cause: PoisonCause::Io(cause) };
        self.sync_dir_through(rolls).map_err(poisoned)?;
        let result = sync_segments(&closed);
        let mut w = self.writer();
        if let Err(cause) = result {
            poison(&mut w, PoisonCause::Io(cause.clone()));
            return Err(poisoned(cause));
        }
        forget_synced(&mut w, &closed);
        Ok(())
    }

    /// Reopens a poisoned log in place once its fault has cleared; true if
    /// it did. Recovery runs again from the durable point, checking every
    /// batch after it; the bytes past that point are written again and
    /// fsynced (after a failed fsync the kernel may have marked them clean
    /// without writing them, so a later fsync alone would prove nothing);
    /// then the fresh state replaces the poisoned one. Refused (and left
    /// poisoned) if the fault persists, or if recovery would end below the
    /// high watermark: offsets readers saw are never reused. Appends from
    /// before the reopen are never acknowledged after it. Readers holding
    /// segments from before keep reading them.
    pub fn reopen_if_poisoned(&self) -> Result<bool> {
        let mut w = self.writer();
        let Some(Refusal::Poisoned(cause)) = w.refusal.clone() else { return Ok(false) };
        if lock(&self.sync).in_progress {
            return Ok(false);
        }
        let still = |why: String| StorageError::Poisoned {
            path: self.dir.clone(),
            cause: PoisonCause::Io(IoCause::new(format!("reopening after \"{cause}\""), std::io::Error::other(why))),
        };
        // Recovery must check everything after the durable point: the
        // bytes written after it are in doubt.
        let durable_only = Checkpoint { same_boot: None, ..w.durable.last.clone() };
        let path = self.dir.join(checkpoint::FILE_NAME);
        crate::storage::fs::write_hint(self.fs.as_ref(), &path, &durable_only.encode())
            .map_err(|e| still(format!("cannot write the recovery checkpoint: {e}")))?;
        let fresh = Log::open(&self.dir, self.fs.clone(), self.clock.clone(), self.config())
            .map_err(|e| still(format!("reopening failed: {e}")))?;
        let seen = self.high_watermark();
        if fresh.high_watermark() < seen {
            return Err(still(format!(
                "the log would end at offset {}, below the high watermark {seen} readers saw",
                fresh.high_watermark()
            )));
        }
        fresh.rewrite_after_durable().map_err(|e| still(format!("rewriting unsynced data failed: {e}")))?;
        fresh.sync().map_err(|e| still(format!("fsync after reopening failed: {e}")))?;
        let Log { segments, log_start_offset, high_watermark, writer, sync, checkpoint_file, .. } = fresh;
        let epoch = w.epoch + 1;
        *w = writer.into_inner().unwrap_or_else(|e| e.into_inner());
        w.epoch = epoch;
        *self.segments.write().unwrap_or_else(|e| e.into_inner()) =
            segments.into_inner().unwrap_or_else(|e| e.into_inner());
        self.log_start_offset.store(log_start_offset.into_inner(), Ordering::Release);
        self.high_watermark.store(high_watermark.into_inner(), Ordering::Release);
        {
            let mut s = lock(&self.sync);
            *s = sync.into_inner().unwrap_or_else(|e| e.into_inner());
            s.discard_epoch = epoch;
            s.reopened_below = epoch;
        }
        *lock(&self.checkpoint_file) = checkpoint_file.into_inner().unwrap_or_else(|e| e.into_inner());
        drop(w);
        self.synced.notify_all();
        tracing::info!(dir = %self.dir.display(), high_watermark = self.high_watermark(), poisoned_by = %cause, "reopened the log after its fault cleared");
        Ok(true)
    }

    /// Writes every byte after the durable point again, so the next fsync
    /// really writes it (see [`Log::reopen_if_poisoned`]).
    fn rewrite_after_durable(&self) -> Result<()> {
        let (base, position) = {
            let w = self.writer();
            (w.durable.last.segment_base, w.durable.last.position)
        };
        for segment in self.segments_snapshot().iter().filter(|s| s.base_offset >= base) {
            let from = if segment.base_offset == base { position } else { 0 };
            segment.rewrite_from(from).map_err(|e| StorageError::io(&segment.log_path, e))?;
        }
        Ok(())
    }
}
