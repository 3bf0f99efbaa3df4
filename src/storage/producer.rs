//! Idempotent producer state of one partition: the last few batches of each
//! producer id, so a retried batch (same producer id and first sequence) is
//! recognised and answered with its original offsets instead of appended
//! again. Persisted in the recovery checkpoint and rebuilt from the log tail.

use std::collections::{HashMap, VecDeque};

pub use crate::config::{BATCHES_PER_PRODUCER, PRODUCERS_PER_PARTITION_MAX as PRODUCERS_MAX};

/// One remembered batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProducerBatch {
    pub first_sequence: i32,
    pub record_count: u32,
    pub base_offset: u64,
    pub last_offset: u64,
}

/// Sequences run 0..=i32::MAX and then wrap to 0, as Kafka's do.
const SEQUENCE_SPACE: i64 = i32::MAX as i64 + 1;

/// `sequence + n` in the wrapping sequence space.
pub fn sequence_add(sequence: i32, n: i64) -> i32 {
    (sequence as i64 + n).rem_euclid(SEQUENCE_SPACE) as i32
}

/// How far `to` is after `from`, going forward through the wrap.
fn sequence_distance(from: i32, to: i32) -> i64 {
    (to as i64 - from as i64).rem_euclid(SEQUENCE_SPACE)
}

impl ProducerBatch {
    fn last_sequence(&self) -> i32 {
        sequence_add(self.first_sequence, self.record_count as i64 - 1)
    }

    /// Whether `sequence` is one of this batch's but not its first.
    fn holds_after_first(&self, sequence: i32) -> bool {
        let d = sequence_distance(self.first_sequence, sequence);
        d > 0 && d < self.record_count as i64
    }
}

/// What to do with an incoming idempotent batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SequenceCheck {
    /// Not seen before: append it.
    New,
    /// A retry of a batch already in the log at these offsets.
    Duplicate { base_offset: u64, last_offset: u64 },
    /// Older than anything remembered: cannot tell whether it is a retry.
    TooOld { last_sequence: i32 },
    /// Starts inside a remembered batch: a retry cut differently, which
    /// would append some records twice.
    Overlaps { first_sequence: i32, last_sequence: i32 },
}

#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ProducerState {
    producers: HashMap<i64, VecDeque<ProducerBatch>>,
}

impl ProducerState {
    pub fn check(&self, producer_id: i64, first_sequence: i32) -> SequenceCheck {
        let Some(batches) = self.producers.get(&producer_id) else {
            return SequenceCheck::New;
        };
        if let Some(b) = batches.iter().find(|b| b.first_sequence == first_sequence) {
            return SequenceCheck::Duplicate { base_offset: b.base_offset, last_offset: b.last_offset };
        }
        if let Some(b) = batches.iter().find(|b| b.holds_after_first(first_sequence)) {
            return SequenceCheck::Overlaps { first_sequence: b.first_sequence, last_sequence: b.last_sequence() };
        }
        let (Some(oldest), Some(newest)) = (batches.front(), batches.back()) else {
            return SequenceCheck::New;
        };
        // Before the oldest remembered batch, counting back at most half the
        // sequence space (the rest is ahead, after a wrap).
        let back = sequence_distance(first_sequence, oldest.first_sequence);
        if back > 0 && back < SEQUENCE_SPACE / 2 {
            SequenceCheck::TooOld { last_sequence: newest.last_sequence() }
        } else {
            SequenceCheck::New
        }
    }

    pub fn record(&mut self, producer_id: i64, batch: ProducerBatch) {
        if !self.producers.contains_key(&producer_id) && self.producers.len() >= PRODUCERS_MAX {
            self.evict_oldest();
        }
        let batches = self.producers.entry(producer_id).or_default();
        batches.push_back(batch);
        while batches.len() > BATCHES_PER_PRODUCER {
            batches.pop_front();
        }
    }

    /// Forgets batches at or past `next_offset` (after the log was cut there).
    pub fn truncate(&mut self, next_offset: u64) {
        for batches in self.producers.values_mut() {
            batches.retain(|b| b.last_offset < next_offset);
        }
        self.producers.retain(|_, b| !b.is_empty());
    }

    pub fn iter(&self) -> impl Iterator<Item = (i64, &VecDeque<ProducerBatch>)> {
        self.producers.iter().map(|(k, v)| (*k, v))
    }

    pub fn len(&self) -> usize {
        self.producers.len()
    }

    pub fn is_empty(&self) -> bool {
        self.producers.is_empty()
    }

    fn evict_oldest(&mut self) {
        let oldest =
            self.producers.iter().min_by_key(|(_, b)| b.back().map(|b| b.last_offset).unwrap_or(0)).map(|(k, _)| *k);
        if let Some(k) = oldest {
            self.producers.remove(&k);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn batch(seq: i32, n: u32, base: u64) -> ProducerBatch {
        ProducerBatch { first_sequence: seq, record_count: n, base_offset: base, last_offset: base + n as u64 - 1 }
    }

    #[test]
    fn sequences_wrap_from_i32_max_to_zero_as_kafkas_do() {
        let mut s = ProducerState::default();
        let max = i32::MAX;
        s.record(7, batch(max - 1, 2, 0)); // max - 1, max
        assert_eq!(s.check(7, 0), SequenceCheck::New, "0 follows i32::MAX");
        s.record(7, batch(0, 3, 2)); // 0, 1, 2
        assert_eq!(s.check(7, 0), SequenceCheck::Duplicate { base_offset: 2, last_offset: 4 });
        assert_eq!(s.check(7, max - 1), SequenceCheck::Duplicate { base_offset: 0, last_offset: 1 });
        assert_eq!(s.check(7, 3), SequenceCheck::New);
        assert_eq!(s.check(7, max - 10), SequenceCheck::TooOld { last_sequence: 2 });
        // A batch that wraps inside itself.
        let mut s = ProducerState::default();
        s.record(8, batch(max, 3, 0)); // max, 0, 1
        assert_eq!(s.check(8, 2), SequenceCheck::New);
        assert_eq!(s.check(8, 0), SequenceCheck::Overlaps { first_sequence: max, last_sequence: 1 });
    }

    #[test]
    fn retry_is_a_duplicate_and_old_sequences_are_refused() {
        let mut s = ProducerState::default();
        assert_eq!(s.check(7, 0), SequenceCheck::New);
        for i in 0..7 {
            s.record(7, batch(i * 10, 10, i as u64 * 10));
        }
        assert_eq!(s.check(7, 60), SequenceCheck::Duplicate { base_offset: 60, last_offset: 69 });
        assert_eq!(s.check(7, 0), SequenceCheck::TooOld { last_sequence: 69 });
        assert_eq!(s.check(7, 70), SequenceCheck::New);
        assert_eq!(s.check(7, 65), SequenceCheck::Overlaps { first_sequence: 60, last_sequence: 69 });
        s.truncate(60);
        assert_eq!(s.check(7, 60), SequenceCheck::New);
    }
}
