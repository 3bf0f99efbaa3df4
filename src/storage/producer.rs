//! Idempotent producer state of one partition: the last few batches of each
//! producer id, so a retried batch (same producer id and first sequence) is
//! recognised and answered with its original offsets instead of appended
//! again. Persisted in the recovery checkpoint and rebuilt from the log tail.

use std::collections::{HashMap, VecDeque};

/// How many recent batches per producer are remembered (as in Kafka).
pub const BATCHES_PER_PRODUCER: usize = 5;
/// Producers remembered per partition; the least recently active is evicted.
pub const PRODUCERS_MAX: usize = 10_000;

/// One remembered batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProducerBatch {
    pub first_sequence: i32,
    pub record_count: u32,
    pub base_offset: u64,
    pub last_offset: u64,
}

impl ProducerBatch {
    fn last_sequence(&self) -> i32 {
        self.first_sequence.wrapping_add(self.record_count as i32).wrapping_sub(1)
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
        let oldest = batches.front().map(|b| b.first_sequence).unwrap_or(i32::MIN);
        let newest = batches.back().map(|b| b.last_sequence()).unwrap_or(i32::MIN);
        if first_sequence < oldest {
            SequenceCheck::TooOld { last_sequence: newest }
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
    fn retry_is_a_duplicate_and_old_sequences_are_refused() {
        let mut s = ProducerState::default();
        assert_eq!(s.check(7, 0), SequenceCheck::New);
        for i in 0..7 {
            s.record(7, batch(i * 10, 10, i as u64 * 10));
        }
        assert_eq!(s.check(7, 60), SequenceCheck::Duplicate { base_offset: 60, last_offset: 69 });
        assert_eq!(s.check(7, 0), SequenceCheck::TooOld { last_sequence: 69 });
        assert_eq!(s.check(7, 70), SequenceCheck::New);
        s.truncate(60);
        assert_eq!(s.check(7, 60), SequenceCheck::New);
    }
}
