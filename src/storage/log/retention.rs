//! Deleting whole old segments: by age (`retention.ms`), by size
//! (`retention.bytes`), or because a snapshot restated them (the offsets
//! log). Only closed segments are deleted; the log start offset moves
//! first, so a reader asking below it gets OUT_OF_RANGE, not an I/O error,
//! and a reader that holds a deleted segment keeps reading it.

use std::sync::atomic::Ordering;

use super::{millis, Log};
use crate::storage::segment::Segment;
use crate::storage::Result;

impl Log {
    /// Deletes every closed segment that ends at or before `offset`,
    /// advancing the log start offset (used to drop what a snapshot replaced).
    pub fn delete_segments_before(&self, offset: u64) -> Result<usize> {
        let segments = self.segments_snapshot();
        let mut deleted = 0;
        for pair in segments.windows(2) {
            if pair[1].base_offset > offset {
                break;
            }
            self.delete_oldest(&pair[0], pair[1].base_offset)?;
            deleted += 1;
        }
        Ok(deleted)
    }

    fn delete_oldest(&self, segment: &Segment, next_base: u64) -> Result<()> {
        self.segments.write().unwrap_or_else(|e| e.into_inner()).remove(&segment.base_offset);
        self.log_start_offset.fetch_max(next_base, Ordering::AcqRel);
        segment.delete()
    }

    /// Deletes whole closed segments past `retention.ms` or over
    /// `retention.bytes`, advancing the log start offset. An active segment
    /// whose records have all expired is rolled so the next pass can delete
    /// it. Returns how many segments were deleted.
    pub fn enforce_retention(&self) -> Result<usize> {
        let config = self.config();
        let now = self.clock.now_ms();
        let oldest_kept = config.retention_age.map(|age| now.saturating_sub(millis(age)));
        let segments = self.segments_snapshot();
        let mut total: u64 = segments.iter().map(|s| s.readable_len()).sum();
        let mut deleted = 0;
        for (i, segment) in segments.iter().enumerate().take(segments.len().saturating_sub(1)) {
            let size = segment.readable_len();
            let expired = match oldest_kept {
                Some(t) => segment.max_timestamp()? < t,
                None => false,
            };
            let over = config.retention_bytes.is_some_and(|max| total - size >= max);
            if !(expired || over) {
                break;
            }
            self.delete_oldest(segment, segments[i + 1].base_offset)?;
            total -= size;
            deleted += 1;
            tracing::info!(segment = %segment.log_path.display(), bytes = size, expired, over_size = over, "retention deleted segment");
        }
        if let Some(t) = oldest_kept {
            let mut w = self.writer();
            let expired = w.active.position > 0 && w.active.max_timestamp < t;
            if expired && w.refusal.is_none() {
                self.roll(&mut w, &config)?;
            }
        }
        self.finish_rolls()?;
        Ok(deleted)
    }
}
