//! Committed offsets, durable before a commit is acknowledged.
//!
//! Stored in an internal log `DATA/__consumer_offsets/` (not a topic: it is
//! not listed or writable by clients) with flush policy `always`. Each commit
//! is one batch of records, key `group \0 topic \0 partition`, value the
//! offset (u64 LE) followed by the metadata; an empty value deletes the key.
//! On open the log is replayed into a map. When the log passes
//! [`COMPACT_SEGMENTS`] segments, the live map is written again as a
//! snapshot starting a fresh segment, and the segments before it are
//! deleted: the log stays proportional to the number of live keys.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard};

use bytes::Bytes;

use crate::storage::batch::{self, Record};
use crate::storage::fs::FileSystem;
use crate::storage::{Clock, Log, LogConfig, Result};

/// Directory name under the data dir.
pub const DIR_NAME: &str = "__consumer_offsets";
use crate::config::{
    OFFSETS_COMPACT_SEGMENTS as COMPACT_SEGMENTS, OFFSETS_SNAPSHOT_BATCH_BYTES_MAX as SNAPSHOT_BATCH_BYTES_MAX,
    OFFSETS_SNAPSHOT_BATCH_RECORDS_MAX as SNAPSHOT_BATCH_RECORDS_MAX,
};

/// One committed offset.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Committed {
    pub offset: u64,
    pub metadata: String,
}

type Key = (String, String, u32);

#[derive(Debug)]
pub struct OffsetStore {
    log: Log,
    /// Latest value per key. Also serialises writers, so the log's order of
    /// commits is the map's order.
    committed: Mutex<BTreeMap<Key, Committed>>,
}

fn encode_key(group: &str, topic: &str, partition: u32) -> Bytes {
    Bytes::from(format!("{group}\0{topic}\0{partition}"))
}

fn decode_key(key: &[u8]) -> Option<Key> {
    let text = std::str::from_utf8(key).ok()?;
    let mut parts = text.split('\0');
    let (group, topic, partition) = (parts.next()?, parts.next()?, parts.next()?.parse().ok()?);
    parts.next().is_none().then(|| (group.to_string(), topic.to_string(), partition))
}

fn encode_value(c: &Committed) -> Bytes {
    let mut v = c.offset.to_le_bytes().to_vec();
    v.extend_from_slice(c.metadata.as_bytes());
    Bytes::from(v)
}

fn decode_value(value: &[u8]) -> Option<Committed> {
    let offset = u64::from_le_bytes(value.get(..8)?.try_into().ok()?);
    let metadata = String::from_utf8_lossy(&value[8..]).into_owned();
    Some(Committed { offset, metadata })
}

impl OffsetStore {
    /// Opens (recovering) the offsets log and replays it.
    pub fn open(data_dir: &Path, fs: Arc<dyn FileSystem>, clock: Arc<dyn Clock>) -> Result<OffsetStore> {
        let log = Log::open(&data_dir.join(DIR_NAME), fs, clock, LogConfig::internal())?;
        let mut committed = BTreeMap::new();
        log.replay(|r| apply(&mut committed, &r.key, &r.value))?;
        tracing::debug!(keys = committed.len(), "committed offsets loaded");
        Ok(OffsetStore { log, committed: Mutex::new(committed) })
    }

    fn map(&self) -> MutexGuard<'_, BTreeMap<Key, Committed>> {
        self.committed.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Stores offsets for a group; returns once they are fsynced.
    pub fn commit(&self, group: &str, entries: &[(String, u32, Committed)]) -> Result<()> {
        if entries.is_empty() {
            return Ok(());
        }
        let records: Vec<Record> = entries
            .iter()
            .map(|(topic, partition, c)| Record {
                key: encode_key(group, topic, *partition),
                value: encode_value(c),
                headers: vec![],
                timestamp_ms: 1,
            })
            .collect();
        self.write(records, |map| {
            for (topic, partition, c) in entries {
                map.insert((group.to_string(), topic.clone(), *partition), c.clone());
            }
        })?;
        // The commit is durable: a failed compaction only leaves the log
        // longer until the next one, and must not fail the commit.
        if let Err(e) = self.compact_if_needed() {
            tracing::warn!(error = %e, "compacting committed offsets failed; will retry on a later commit");
        }
        Ok(())
    }

    /// Forgets every offset of a group (tombstones), durably.
    pub fn delete_group(&self, group: &str) -> Result<usize> {
        self.delete_where(|(g, _, _)| g == group)
    }

    /// Forgets every group's offsets of the topics `gone` says are gone,
    /// durably: a topic created again under the same name starts with no
    /// committed offsets (as in Kafka), instead of skipping its records.
    pub fn delete_topics(&self, gone: impl Fn(&str) -> bool) -> Result<usize> {
        self.delete_where(|(_, t, _)| gone(t))
    }

    fn delete_where(&self, doomed: impl Fn(&Key) -> bool) -> Result<usize> {
        let keys: Vec<Key> = self.map().keys().filter(|k| doomed(k)).cloned().collect();
        if keys.is_empty() {
            return Ok(0);
        }
        let records = keys
            .iter()
            .map(|(g, t, p)| Record {
                key: encode_key(g, t, *p),
                value: Bytes::new(),
                headers: vec![],
                timestamp_ms: 1,
            })
            .collect();
        self.write(records, |map| {
            for k in &keys {
                map.remove(k);
            }
        })?;
        Ok(keys.len())
    }

    /// Appends under the map lock (so log order = map order) and updates
    /// the map; waits for the fsync outside the lock. If the fsync fails the
    /// log discarded the batch, so the map is rebuilt from the log.
    fn write(&self, records: Vec<Record>, update: impl FnOnce(&mut BTreeMap<Key, Committed>)) -> Result<()> {
        let pending = {
            let mut map = self.map();
            let pending = self.log.append_pending(&mut batch::encode(&records, None))?;
            update(&mut map);
            pending
        };
        if let Err(e) = self.log.wait_durable(&pending) {
            self.reload();
            return Err(e);
        }
        Ok(())
    }

    fn reload(&self) {
        let mut map = self.map();
        let mut fresh = BTreeMap::new();
        let mut next = self.log.log_start_offset();
        while next < self.log.high_watermark() {
            let Ok(read) = self.log.read(next, 1 << 20) else { break };
            let Some(last) = read.batches.last() else { break };
            for b in &read.batches {
                for r in batch::decode_records(b).unwrap_or_default() {
                    if r.offset >= next {
                        apply(&mut fresh, &r.key, &r.value);
                    }
                }
            }
            next = batch::BatchHeader::parse(last, usize::MAX).map(|h| h.next_offset()).unwrap_or(u64::MAX);
        }
        *map = fresh;
    }

    /// Rewrites the live offsets into a fresh segment and drops the older
    /// segments once the log has grown past [`COMPACT_SEGMENTS`].
    pub fn compact_if_needed(&self) -> Result<()> {
        if self.log.segment_count() <= COMPACT_SEGMENTS {
            return Ok(());
        }
        let map = self.map();
        let start = self.log.roll_now()?;
        let records: Vec<Record> = map
            .iter()
            .map(|((g, t, p), c)| Record {
                key: encode_key(g, t, *p),
                value: encode_value(c),
                headers: vec![],
                timestamp_ms: 1,
            })
            .collect();
        for chunk in snapshot_batches(&records) {
            self.log.append(&mut batch::encode(chunk, None))?;
        }
        // Everything before `start` is restated after it: safe to drop.
        let deleted = self.log.delete_segments_before(start)?;
        tracing::info!(keys = map.len(), deleted_segments = deleted, "compacted committed offsets");
        Ok(())
    }

    pub fn get(&self, group: &str, topic: &str, partition: u32) -> Option<Committed> {
        self.map().get(&(group.to_string(), topic.to_string(), partition)).cloned()
    }

    /// Every committed offset of a group, optionally of one topic.
    pub fn of_group(&self, group: &str, topic: Option<&str>) -> Vec<(String, u32, Committed)> {
        self.map()
            .iter()
            .filter(|((g, t, _), _)| g == group && topic.is_none_or(|topic| topic == t))
            .map(|((_, t, p), c)| (t.clone(), *p, c.clone()))
            .collect()
    }

    /// Calls `f(group, topic, partition, offset)` for every committed
    /// offset, in key order, under the map's lock (keep `f` short).
    pub fn for_each(&self, mut f: impl FnMut(&str, &str, u32, u64)) {
        for ((g, t, p), c) in self.map().iter() {
            f(g, t, *p, c.offset);
        }
    }

    /// Groups that have committed offsets.
    pub fn groups(&self) -> BTreeSet<String> {
        self.map().keys().map(|k| k.0.clone()).collect()
    }

    /// Whether the offsets log refuses writes after an I/O error.
    pub fn is_poisoned(&self) -> bool {
        self.log.is_poisoned()
    }

    /// Reopens the offsets log if an I/O error poisoned it and the fault
    /// has cleared (see [`Log::reopen_if_poisoned`]), then reloads the map
    /// from it; true if it did.
    pub fn reopen_if_poisoned(&self) -> Result<bool> {
        if !self.is_poisoned() {
            return Ok(false);
        }
        let reopened = self.log.reopen_if_poisoned()?;
        if reopened {
            self.reload();
        }
        Ok(reopened)
    }

    pub fn close(&self) -> Result<()> {
        self.log.close()
    }

    pub fn segment_count(&self) -> usize {
        self.log.segment_count()
    }
}

/// Splits a snapshot into batches of at most [`SNAPSHOT_BATCH_RECORDS_MAX`]
/// records and about [`SNAPSHOT_BATCH_BYTES_MAX`] bytes (at least one
/// record each), so a snapshot of any size fits the log's batch limit.
fn snapshot_batches(records: &[Record]) -> Vec<&[Record]> {
    let mut out = Vec::new();
    let (mut start, mut bytes) = (0, 0);
    for (i, r) in records.iter().enumerate() {
        let size = r.key.len() + r.value.len() + 16;
        if i > start && (i - start >= SNAPSHOT_BATCH_RECORDS_MAX || bytes + size > SNAPSHOT_BATCH_BYTES_MAX) {
            out.push(&records[start..i]);
            (start, bytes) = (i, 0);
        }
        bytes += size;
    }
    if start < records.len() {
        out.push(&records[start..]);
    }
    out
}

fn apply(map: &mut BTreeMap<Key, Committed>, key: &[u8], value: &[u8]) {
    let Some(k) = decode_key(key) else { return };
    if value.is_empty() {
        map.remove(&k);
    } else if let Some(v) = decode_value(value) {
        map.insert(k, v);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::fs::StdFs;
    use crate::storage::SystemClock;

    fn open(dir: &Path) -> OffsetStore {
        OffsetStore::open(dir, Arc::new(StdFs), Arc::new(SystemClock)).unwrap()
    }

    fn c(offset: u64) -> Committed {
        Committed { offset, metadata: format!("m{offset}") }
    }

    #[test]
    fn commits_survive_reopen_and_deletes_stick() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path());
        store.commit("g", &[("t".into(), 0, c(5)), ("t".into(), 1, c(7))]).unwrap();
        store.commit("g", &[("t".into(), 0, c(9))]).unwrap();
        store.commit("h", &[("t".into(), 0, c(1))]).unwrap();
        drop(store); // no clean close
        let store = open(dir.path());
        assert_eq!(store.get("g", "t", 0), Some(c(9)));
        assert_eq!(store.get("g", "t", 1), Some(c(7)));
        assert_eq!(store.delete_group("g").unwrap(), 2);
        drop(store);
        let store = open(dir.path());
        assert_eq!(store.get("g", "t", 0), None);
        assert_eq!(store.groups().into_iter().collect::<Vec<_>>(), ["h"]);
    }

    #[test]
    fn a_snapshot_larger_than_a_batch_is_written_in_batches_sized_by_bytes() {
        // 40 keys of 1 MiB metadata: compactions whose snapshot is more than
        // one batch may hold. Every commit must still succeed.
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path());
        let metadata = "m".repeat(1 << 20);
        for p in 0..40u32 {
            let v = Committed { offset: p as u64, metadata: metadata.clone() };
            store.commit("g", &[("t".into(), p, v)]).unwrap_or_else(|e| panic!("commit {p}: {e}"));
        }
        assert!(store.segment_count() <= COMPACT_SEGMENTS + 6, "compacted: {} segments", store.segment_count());
        store.commit("h", &[("t".into(), 0, c(1))]).expect("later commits of any group still work");
        drop(store);
        let store = open(dir.path());
        for p in 0..40u32 {
            assert_eq!(store.get("g", "t", p).map(|c| c.offset), Some(p as u64));
        }
        assert_eq!(store.get("h", "t", 0), Some(c(1)));
    }

    #[test]
    fn compaction_keeps_latest_values_and_bounds_the_log() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path());
        let metadata = "x".repeat(4000);
        for i in 0..12_000u64 {
            let v = Committed { offset: i, metadata: metadata.clone() };
            store.commit("g", &[("t".into(), (i % 3) as u32, v)]).unwrap();
        }
        assert!(store.segment_count() <= COMPACT_SEGMENTS + 1, "{} segments", store.segment_count());
        drop(store);
        let store = open(dir.path());
        assert_eq!(store.get("g", "t", 2).unwrap().offset, 11_999);
        assert_eq!(store.get("g", "t", 0).unwrap().offset, 11_997);
    }
}
