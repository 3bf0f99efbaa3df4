//! Recovery checkpoint hints (format in `storage/checkpoint.rs`): where the
//! next recovery may start scanning. Written as hints (temp file and
//! rename, no fsync): the log before the durable point was fsynced first,
//! so a lost or torn checkpoint only makes recovery scan more.

use super::{lock, Log, Refusal, Writer};
use crate::storage::checkpoint::{self, Checkpoint, SameBoot};
use crate::storage::{Result, StorageError};

/// The durable point, if in the active segment, and the written point.
pub(super) type CheckpointPoints = (Option<(u64, u64)>, (u64, u64));

/// The writer's durable point as (segment, position), when it is in the
/// active segment (not while rolled segments still wait for their fsync).
fn durable_point(w: &Writer) -> Option<(u64, u64)> {
    let in_active = w.rolls.unsynced.is_empty() && w.durable.offset >= w.active.segment.base_offset;
    in_active.then_some((w.active.segment.base_offset, w.durable.position))
}

/// The position and offset after the last batch in the file: batches in
/// the group-commit queue are reserved but not written yet.
fn written_point(w: &Writer) -> (u64, u64) {
    w.queue.first().map_or((w.active.position, w.next_offset), |q| (q.position, q.base_offset))
}

pub(super) fn checkpoint_points(w: &Writer) -> CheckpointPoints {
    (durable_point(w), (w.active.segment.base_offset, written_point(w).0))
}

/// The checkpoint at the durable point (see [`durable_point`]).
fn durable_checkpoint(w: &Writer) -> Checkpoint {
    let mut producers = w.producers.clone();
    producers.truncate(w.durable.offset);
    Checkpoint {
        segment_base: w.active.segment.base_offset,
        position: w.durable.position,
        next_offset: w.durable.offset,
        producers,
        same_boot: None,
    }
}

impl Log {
    /// Syncs, then records the durable point and producer state so a later
    /// recovery starts scanning there.
    pub fn checkpoint(&self) -> Result<()> {
        self.sync()?;
        self.checkpoint_hint().map(|_| ())
    }

    /// Records the durable and written points reached so far, without
    /// syncing anything, if either moved since the last checkpoint; returns
    /// whether it wrote one. After a process crash in the same boot,
    /// recovery scans only what was written after it (about a checkpoint
    /// interval of appends); after a power loss, what was written after the
    /// durable point (under `never`, moved only when rolled segments are synced).
    pub fn checkpoint_hint(&self) -> Result<bool> {
        let cp = {
            let mut w = self.writer();
            let points = checkpoint_points(&w);
            if points == w.checkpoints.taken {
                return Ok(false);
            }
            w.checkpoints.taken = points;
            self.checkpoint_of(&mut w)
        };
        self.write_checkpoint(cp)?;
        Ok(true)
    }

    /// Whether [`Log::checkpoint_hint`] has something new to record.
    pub fn checkpoint_stale(&self) -> bool {
        let w = self.writer();
        checkpoint_points(&w) != w.checkpoints.taken
    }

    /// The checkpoint for the writer's current state: its durable point (or
    /// the last one recorded, while rolled segments wait for their fsync)
    /// and, unless the log is poisoned (written bytes in doubt), its
    /// written point in this boot.
    pub(super) fn checkpoint_of(&self, w: &mut Writer) -> (u64, Checkpoint) {
        if durable_point(w).is_some() {
            w.durable.last = durable_checkpoint(w);
        }
        let mut cp = w.durable.last.clone();
        let trusted = !matches!(w.refusal, Some(Refusal::Poisoned(_)));
        let (position, next_offset) = written_point(w);
        cp.same_boot = self.fs.boot_id().filter(|_| trusted).map(|boot_id| {
            let mut producers = w.producers.clone();
            if next_offset < w.next_offset {
                producers.truncate(next_offset);
            }
            SameBoot { boot_id, segment_base: w.active.segment.base_offset, position, next_offset, producers }
        });
        w.checkpoints.seq += 1;
        (w.checkpoints.seq, cp)
    }

    /// Writes the checkpoint as a hint. A checkpoint older than the one on
    /// disk is dropped.
    pub(super) fn write_checkpoint(&self, (seq, cp): (u64, Checkpoint)) -> Result<()> {
        let mut on_disk = lock(&self.checkpoint_file);
        if seq < *on_disk {
            return Ok(());
        }
        let path = self.dir.join(checkpoint::FILE_NAME);
        crate::storage::fs::write_hint(self.fs.as_ref(), &path, &cp.encode())
            .map_err(|e| StorageError::io(&path, e))?;
        *on_disk = seq;
        Ok(())
    }
}
