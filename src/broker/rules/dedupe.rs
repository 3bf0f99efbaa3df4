//! A topic's table of event ids for de-duplication, as pure code with the
//! clock passed in: the ids appended within the last `dedupe.window.ms`,
//! each with the partition and offset it was first appended at (and the
//! writer epoch of that append, so a duplicate can wait for the original
//! to be durable). The produce path (`broker/dedupe.rs`) asks it before an
//! append ([`IdTable::check`]) and tells it after ([`IdTable::remember`]);
//! on open it is rebuilt from the log's last window.
//!
//! One table per topic (an id is a duplicate whichever partition it went
//! to), bounded per partition: at most `max_ids` ids each, the oldest
//! forgotten first, so a full table shortens the effective window instead
//! of growing. Ids of a partition are kept in append order, so the ids of
//! writes a failed fsync discarded are dropped from the back
//! ([`IdTable::forget_from`]).

use std::collections::VecDeque;
use std::hash::BuildHasher;

use hashbrown::HashTable;

/// Where an id was first appended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Seen {
    pub partition: u32,
    pub offset: u64,
    /// The log's writer epoch at that append.
    pub epoch: u64,
    /// When it was appended (broker clock; on a rebuild, the log's
    /// running maximum record timestamp), for the window.
    pub at_ms: i64,
}

/// About what one remembered id costs besides its bytes: its table slot
/// (pointer, length, `Seen`, control byte, load factor), its allocation's
/// header and its queue entry.
pub const ID_OVERHEAD_BYTES: usize = 112;

/// One remembered id: the table holds the only copy of its bytes.
#[derive(Debug, Clone)]
struct Entry {
    id: Box<[u8]>,
    seen: Seen,
}

/// An id's place in its partition's queue: (time, offset, hash of the id).
type Queued = (i64, u64, u64);

#[derive(Debug, Clone, Default)]
struct PartitionIds {
    /// In append order, so the oldest expire first and a discarded tail
    /// goes from the back.
    order: VecDeque<Queued>,
    /// Bytes of the ids held.
    bytes: usize,
}

/// What DescribeTopic reports for one partition.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct IdStats {
    pub ids: u64,
    pub memory_bytes: u64,
}

/// Event ids seen within the window, per topic.
#[derive(Debug, Clone)]
pub struct IdTable {
    window_ms: i64,
    max_ids: usize,
    /// Randomly seeded per table, so ids chosen to collide cannot be
    /// precomputed.
    hasher: foldhash::fast::RandomState,
    ids: HashTable<Entry>,
    partitions: Vec<PartitionIds>,
}

impl IdTable {
    pub fn new(window_ms: u64, max_ids: usize) -> IdTable {
        IdTable {
            window_ms: i64::try_from(window_ms).unwrap_or(i64::MAX),
            max_ids: max_ids.max(1),
            hasher: foldhash::fast::RandomState::default(),
            ids: HashTable::new(),
            partitions: Vec::new(),
        }
    }

    /// Whether this table was built for these settings.
    pub fn has_settings(&self, window_ms: u64, max_ids: usize) -> bool {
        self.window_ms == i64::try_from(window_ms).unwrap_or(i64::MAX) && self.max_ids == max_ids.max(1)
    }

    fn hash(&self, id: &[u8]) -> u64 {
        self.hasher.hash_one(id)
    }

    fn part(&mut self, partition: u32) -> &mut PartitionIds {
        let p = partition as usize;
        if self.partitions.len() <= p {
            self.partitions.resize_with(p + 1, PartitionIds::default);
        }
        &mut self.partitions[p]
    }

    /// Forgets ids older than the window at `now_ms`.
    pub fn expire(&mut self, now_ms: i64) {
        let floor = now_ms.saturating_sub(self.window_ms);
        for p in 0..self.partitions.len() {
            while self.partitions[p].order.front().is_some_and(|(t, _, _)| *t <= floor) {
                let queued = self.partitions[p].order.pop_front().expect("checked above");
                self.drop_entry(p as u32, queued);
            }
        }
    }

    /// Removes the table entry a queue entry stands for.
    fn drop_entry(&mut self, partition: u32, (_, offset, hash): Queued) {
        let found = self.ids.find_entry(hash, |e| e.seen.partition == partition && e.seen.offset == offset);
        if let Ok(entry) = found {
            let (removed, _) = entry.remove();
            self.partitions[partition as usize].bytes -= removed.id.len();
        }
    }

    /// Where `id` was first appended, if it is still remembered (call
    /// [`IdTable::expire`] first).
    pub fn check(&self, id: &[u8]) -> Option<Seen> {
        self.ids.find(self.hash(id), |e| *e.id == *id).map(|e| e.seen)
    }

    /// Records that `id` was appended; an id already remembered keeps its
    /// first append.
    pub fn remember(&mut self, id: &[u8], seen: Seen) {
        let hash = self.hash(id);
        if self.ids.find(hash, |e| *e.id == *id).is_some() {
            return;
        }
        let p = seen.partition as usize;
        self.part(seen.partition);
        while self.partitions[p].order.len() >= self.max_ids {
            let queued = self.partitions[p].order.pop_front().expect("at least one");
            self.drop_entry(seen.partition, queued);
        }
        let part = &mut self.partitions[p];
        part.bytes += id.len();
        part.order.push_back((seen.at_ms, seen.offset, hash));
        let hasher = &self.hasher;
        self.ids.insert_unique(hash, Entry { id: id.into(), seen }, |e| hasher.hash_one(&*e.id));
    }

    /// Forgets the ids of `partition` appended at `offset` or later (a
    /// failed fsync discarded those writes).
    pub fn forget_from(&mut self, partition: u32, offset: u64) {
        let p = partition as usize;
        while let Some(&queued) = self.partitions.get(p).and_then(|part| part.order.back()) {
            if queued.1 < offset {
                break;
            }
            self.partitions[p].order.pop_back();
            self.drop_entry(partition, queued);
        }
    }

    pub fn len(&self) -> usize {
        self.ids.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }

    /// Ids held for `partition` and about the memory they take.
    pub fn stats(&self, partition: u32) -> IdStats {
        self.partitions.get(partition as usize).map_or(IdStats::default(), |p| IdStats {
            ids: p.order.len() as u64,
            memory_bytes: (p.bytes + p.order.len() * ID_OVERHEAD_BYTES) as u64,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn id(s: &str) -> Vec<u8> {
        s.as_bytes().to_vec()
    }

    fn seen(partition: u32, offset: u64, at_ms: i64) -> Seen {
        Seen { partition, offset, epoch: 0, at_ms }
    }

    #[test]
    fn a_repeated_id_within_the_window_names_the_first_append() {
        let mut w = IdTable::new(1000, 100);
        assert_eq!(w.check(b"evt-1"), None);
        w.remember(&id("evt-1"), seen(0, 7, 0));
        w.expire(999);
        assert_eq!(w.check(b"evt-1"), Some(seen(0, 7, 0)));
        w.remember(&id("evt-1"), seen(1, 9, 999));
        assert_eq!(w.check(b"evt-1").map(|s| (s.partition, s.offset)), Some((0, 7)), "the first append counts");
        w.expire(1000);
        assert_eq!(w.check(b"evt-1"), None, "out of the window");
        assert!(w.is_empty());
        assert_eq!(w.stats(0), IdStats::default());
    }

    #[test]
    fn an_id_is_a_duplicate_whichever_partition_it_goes_to() {
        let mut w = IdTable::new(60_000, 10);
        w.remember(&id("a"), seen(3, 5, 0));
        assert_eq!(w.check(b"a").map(|s| s.partition), Some(3));
        assert_eq!(w.stats(3).ids, 1);
        assert_eq!(w.stats(0).ids, 0);
    }

    #[test]
    fn a_full_partition_forgets_its_oldest_first_and_leaves_the_others() {
        let mut w = IdTable::new(60_000, 3);
        w.remember(&id("other"), seen(1, 0, 0));
        for (i, s) in ["a", "b", "c", "d"].iter().enumerate() {
            w.remember(&id(s), seen(0, i as u64, i as i64));
        }
        assert_eq!(w.stats(0).ids, 3);
        assert_eq!(w.check(b"a"), None);
        assert_eq!(w.check(b"d").map(|s| s.offset), Some(3));
        assert!(w.check(b"other").is_some());
        assert!(w.stats(0).memory_bytes >= 3 * ID_OVERHEAD_BYTES as u64);
    }

    #[test]
    fn forgetting_a_discarded_tail_keeps_what_came_before() {
        let mut w = IdTable::new(60_000, 100);
        for i in 0..5u64 {
            w.remember(format!("id{i}").as_bytes(), seen(0, i, 0));
        }
        w.remember(&id("p1"), seen(1, 3, 0));
        w.forget_from(0, 3);
        assert_eq!(w.stats(0).ids, 3);
        assert!(w.check(b"id2").is_some());
        assert!(w.check(b"id3").is_none() && w.check(b"id4").is_none());
        assert!(w.check(b"p1").is_some(), "another partition's offsets are not touched");
        // The discarded id may be appended again, and is then remembered.
        w.remember(&id("id3"), seen(0, 3, 1));
        assert_eq!(w.check(b"id3").map(|s| s.at_ms), Some(1));
    }

    proptest! {
        /// Against a model (a list of every append): an id is reported iff
        /// it was appended within the window and is among the newest
        /// `max_ids` of its partition, and then with its first append.
        #[test]
        fn matches_a_model(ops in proptest::collection::vec((0u8..6, 0u32..2, 0i64..50), 1..200)) {
            let (window, max) = (100u64, 4usize);
            let mut w = IdTable::new(window, max);
            let mut log: Vec<(u8, u32, u64, i64)> = Vec::new();
            let mut now = 0;
            let mut next = [0u64; 2];
            for (i, p, dt) in ops {
                now += dt;
                w.expire(now);
                let key = [b'k', i];
                // The model: ids of p's newest `max` appends in the window.
                let live = |log: &Vec<(u8, u32, u64, i64)>| {
                    let mut found = None;
                    for part in 0..2u32 {
                        let mine: Vec<_> = log.iter().filter(|e| e.1 == part).collect();
                        let newest = &mine[mine.len().saturating_sub(max)..];
                        for e in newest {
                            if e.0 == i && e.3 > now - window as i64 {
                                found = Some((e.1, e.2));
                            }
                        }
                    }
                    found
                };
                let expected = live(&log);
                prop_assert_eq!(w.check(&key).map(|s| (s.partition, s.offset)), expected);
                if expected.is_none() {
                    w.remember(&key, seen(p, next[p as usize], now));
                    log.push((i, p, next[p as usize], now));
                    next[p as usize] += 1;
                }
            }
        }
    }
}
