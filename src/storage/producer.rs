//! Idempotent producer state of one partition: each producer id's epoch and
//! its last few batches, so a retried batch (same producer, epoch and first
//! sequence) is recognised and answered with its original offsets instead
//! of appended again, a batch that skips sequences is refused (it would
//! reorder the producer's records once the missing one is retried), and a
//! producer fenced by a newer epoch (Kafka's InitProducerId bumps it) is
//! refused. A producer this partition has no state for (new, or its
//! batches are gone with retention) may start at any sequence. Persisted in the recovery
//! checkpoint and rebuilt from the log tail.

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
    /// From an epoch older than the producer's latest: a fenced producer.
    Fenced { epoch: i16 },
    /// Starts inside a remembered batch: a retry cut differently, which
    /// would append some records twice.
    Overlaps { first_sequence: i32, last_sequence: i32 },
    /// Not the next sequence: a batch before it is missing (lost or still
    /// to be retried), so appending it would reorder the producer's records.
    /// Kafka's OUT_OF_ORDER_SEQUENCE_NUMBER.
    OutOfOrder { expected: i32 },
}

/// One producer's epoch and recent batches.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ProducerEntry {
    pub epoch: i16,
    pub batches: VecDeque<ProducerBatch>,
}

#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ProducerState {
    producers: HashMap<i64, ProducerEntry>,
}

impl ProducerState {
    pub fn check(&self, producer_id: i64, epoch: i16, first_sequence: i32) -> SequenceCheck {
        let Some(entry) = self.producers.get(&producer_id) else {
            return SequenceCheck::New;
        };
        if epoch < entry.epoch {
            return SequenceCheck::Fenced { epoch: entry.epoch };
        }
        if epoch > entry.epoch {
            // A new session of the producer: its sequences start over at 0.
            return if first_sequence == 0 { SequenceCheck::New } else { SequenceCheck::OutOfOrder { expected: 0 } };
        }
        let batches = &entry.batches;
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
        let expected = sequence_add(newest.last_sequence(), 1);
        if back > 0 && back < SEQUENCE_SPACE / 2 {
            SequenceCheck::TooOld { last_sequence: newest.last_sequence() }
        } else if first_sequence != expected {
            SequenceCheck::OutOfOrder { expected }
        } else {
            SequenceCheck::New
        }
    }

    /// Remembers a batch appended for `producer_id` in `epoch`; a newer
    /// epoch forgets the older one's batches.
    pub fn record(&mut self, producer_id: i64, epoch: i16, batch: ProducerBatch) {
        if !self.producers.contains_key(&producer_id) && self.producers.len() >= PRODUCERS_MAX {
            self.evict_oldest();
        }
        let entry = self.producers.entry(producer_id).or_insert(ProducerEntry { epoch, batches: VecDeque::new() });
        if epoch > entry.epoch {
            *entry = ProducerEntry { epoch, batches: VecDeque::new() };
        }
        entry.batches.push_back(batch);
        while entry.batches.len() > BATCHES_PER_PRODUCER {
            entry.batches.pop_front();
        }
    }

    /// Forgets batches at or past `next_offset` (after the log was cut there).
    pub fn truncate(&mut self, next_offset: u64) {
        for entry in self.producers.values_mut() {
            entry.batches.retain(|b| b.last_offset < next_offset);
        }
        self.producers.retain(|_, e| !e.batches.is_empty());
    }

    pub fn iter(&self) -> impl Iterator<Item = (i64, &ProducerEntry)> {
        self.producers.iter().map(|(k, v)| (*k, v))
    }

    pub fn len(&self) -> usize {
        self.producers.len()
    }

    pub fn is_empty(&self) -> bool {
        self.producers.is_empty()
    }

    fn evict_oldest(&mut self) {
        let oldest = self
            .producers
            .iter()
            .min_by_key(|(_, e)| e.batches.back().map(|b| b.last_offset).unwrap_or(0))
            .map(|(k, _)| *k);
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
        s.record(7, 0, batch(max - 1, 2, 0)); // max - 1, max
        assert_eq!(s.check(7, 0, 0), SequenceCheck::New, "0 follows i32::MAX");
        s.record(7, 0, batch(0, 3, 2)); // 0, 1, 2
        assert_eq!(s.check(7, 0, 0), SequenceCheck::Duplicate { base_offset: 2, last_offset: 4 });
        assert_eq!(s.check(7, 0, max - 1), SequenceCheck::Duplicate { base_offset: 0, last_offset: 1 });
        assert_eq!(s.check(7, 0, 3), SequenceCheck::New);
        assert_eq!(s.check(7, 0, 4), SequenceCheck::OutOfOrder { expected: 3 });
        assert_eq!(s.check(7, 0, max - 10), SequenceCheck::TooOld { last_sequence: 2 });
        // A batch that wraps inside itself.
        let mut s = ProducerState::default();
        s.record(8, 0, batch(max, 3, 0)); // max, 0, 1
        assert_eq!(s.check(8, 0, 2), SequenceCheck::New);
        assert_eq!(s.check(8, 0, 0), SequenceCheck::Overlaps { first_sequence: max, last_sequence: 1 });
    }

    #[test]
    fn a_newer_epoch_starts_over_and_fences_the_older_one() {
        let mut s = ProducerState::default();
        s.record(7, 0, batch(0, 5, 0));
        assert_eq!(s.check(7, 0, 0), SequenceCheck::Duplicate { base_offset: 0, last_offset: 4 });
        // InitProducerId bumped the epoch: sequence 0 is new again.
        assert_eq!(s.check(7, 1, 0), SequenceCheck::New);
        assert_eq!(s.check(7, 1, 5), SequenceCheck::OutOfOrder { expected: 0 }, "a new epoch starts at 0");
        s.record(7, 1, batch(0, 2, 5));
        assert_eq!(s.check(7, 1, 0), SequenceCheck::Duplicate { base_offset: 5, last_offset: 6 });
        assert_eq!(s.check(7, 0, 5), SequenceCheck::Fenced { epoch: 1 });
    }

    #[test]
    fn retry_is_a_duplicate_and_old_sequences_are_refused() {
        let mut s = ProducerState::default();
        assert_eq!(s.check(7, 0, 0), SequenceCheck::New);
        for i in 0..7 {
            s.record(7, 0, batch(i * 10, 10, i as u64 * 10));
        }
        assert_eq!(s.check(7, 0, 60), SequenceCheck::Duplicate { base_offset: 60, last_offset: 69 });
        assert_eq!(s.check(7, 0, 0), SequenceCheck::TooOld { last_sequence: 69 });
        assert_eq!(s.check(7, 0, 70), SequenceCheck::New);
        assert_eq!(s.check(7, 0, 80), SequenceCheck::OutOfOrder { expected: 70 }, "a gap");
        assert_eq!(s.check(7, 0, 65), SequenceCheck::Overlaps { first_sequence: 60, last_sequence: 69 });
        s.truncate(60);
        assert_eq!(s.check(7, 0, 60), SequenceCheck::New);
    }
}
