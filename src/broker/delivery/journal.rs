//! Share groups' durable state: the internal log `DATA/__share_groups/`
//! (not a topic: clients cannot list or write it), flush policy `always`,
//! so a change is fsynced before the operation that made it answers.
//!
//! Each record is one [`JournalEntry`]. Keys: `g\0<group>` for a group's
//! config (an empty value deletes the group and all its partitions),
//! `p\0<group>\0<topic>\0<partition>` for a partition's state: a snapshot
//! (tag 0) or a [`Change`] (tags 1-4) applied on top (an empty value forgets
//! the partition). Byte layouts are in docs/format.md. On open the log is
//! replayed into memory; once it passes [`COMPACT_SEGMENTS`] segments the
//! live state is restated as snapshots in a fresh segment and the older
//! segments are deleted, so the log stays proportional to the live state.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard};

use bytes::Bytes;

use super::config::ShareConfig;
use super::state::{Change, Entry, RecordState, Settled, SharePartition};
use crate::config::{
    OFFSETS_COMPACT_SEGMENTS as COMPACT_SEGMENTS, OFFSETS_SNAPSHOT_BATCH_RECORDS_MAX as SNAPSHOT_BATCH_RECORDS_MAX,
};
use crate::storage::batch::{self, Record};
use crate::storage::fs::FileSystem;
use crate::storage::{Clock, Log, LogConfig, Result};

/// Directory name under the data dir.
pub const DIR_NAME: &str = "__share_groups";

/// A topic name and partition number.
pub type TopicPartition = (String, u32);

/// One share group: its config and its state on each partition it read.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ShareGroup {
    pub config: ShareConfig,
    pub partitions: BTreeMap<TopicPartition, SharePartition>,
}

/// What the journal stores, one record each.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JournalEntry {
    /// A group's whole config (written on creation and on every change).
    Config { group: String, config: ShareConfig },
    /// The group and every partition state of it are gone.
    GroupDeleted { group: String },
    /// A partition's whole state (a new partition, or a compaction).
    Snapshot { group: String, tp: TopicPartition, state: SharePartition },
    /// A change on top of the partition's state.
    Change { group: String, tp: TopicPartition, change: Change },
    /// The partition's state is gone (its topic was deleted).
    PartitionDeleted { group: String, tp: TopicPartition },
}

const TAG_SNAPSHOT: u8 = 0;
const TAG_ACQUIRED: u8 = 1;
const TAG_SETTLED: u8 = 2;
const TAG_DEAD_LETTERED: u8 = 3;
const TAG_TRUNCATED: u8 = 4;

const STATE_ACQUIRED: u8 = 0;
const STATE_AVAILABLE: u8 = 1;
const STATE_ARCHIVING: u8 = 2;
const SETTLED_DONE: u8 = 3;

/// Little-endian writes into a record value.
struct Writer(Vec<u8>);

impl Writer {
    fn u8(&mut self, v: u8) -> &mut Self {
        self.0.push(v);
        self
    }
    fn u32(&mut self, v: u32) -> &mut Self {
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }
    fn u64(&mut self, v: u64) -> &mut Self {
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }
    fn i64(&mut self, v: i64) -> &mut Self {
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }
    fn text(&mut self, s: &str) -> &mut Self {
        self.u32(s.len() as u32);
        self.0.extend_from_slice(s.as_bytes());
        self
    }
}

/// Little-endian reads from a record value; `None` past its end.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.0.len() < n {
            return None;
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Some(head)
    }
    fn u8(&mut self) -> Option<u8> {
        Some(self.take(1)?[0])
    }
    fn u32(&mut self) -> Option<u32> {
        Some(u32::from_le_bytes(self.take(4)?.try_into().ok()?))
    }
    fn u64(&mut self) -> Option<u64> {
        Some(u64::from_le_bytes(self.take(8)?.try_into().ok()?))
    }
    fn i64(&mut self) -> Option<i64> {
        Some(i64::from_le_bytes(self.take(8)?.try_into().ok()?))
    }
    fn text(&mut self) -> Option<String> {
        let n = self.u32()? as usize;
        String::from_utf8(self.take(n)?.to_vec()).ok()
    }
}

fn group_key(group: &str) -> Bytes {
    Bytes::from(format!("g\0{group}"))
}

fn partition_key(group: &str, (topic, partition): &TopicPartition) -> Bytes {
    Bytes::from(format!("p\0{group}\0{topic}\0{partition}"))
}

fn write_state(w: &mut Writer, state: &RecordState) {
    match state {
        RecordState::Acquired { until_ms } => w.u8(STATE_ACQUIRED).i64(*until_ms),
        RecordState::Available { at_ms } => w.u8(STATE_AVAILABLE).i64(*at_ms),
        RecordState::Archiving { reason } => w.u8(STATE_ARCHIVING).text(reason),
    };
}

fn read_state(r: &mut Reader) -> Option<RecordState> {
    Some(match r.u8()? {
        STATE_ACQUIRED => RecordState::Acquired { until_ms: r.i64()? },
        STATE_AVAILABLE => RecordState::Available { at_ms: r.i64()? },
        STATE_ARCHIVING => RecordState::Archiving { reason: r.text()? },
        _ => return None,
    })
}

/// Offsets as runs of consecutive ones: an acquisition is mostly one run.
fn runs(offsets: &[u64]) -> Vec<(u64, u32)> {
    let mut out: Vec<(u64, u32)> = Vec::new();
    for &o in offsets {
        match out.last_mut() {
            Some((first, len)) if *first + u64::from(*len) == o && *len < u32::MAX => *len += 1,
            _ => out.push((o, 1)),
        }
    }
    out
}

fn encode_change(change: &Change) -> Vec<u8> {
    let mut w = Writer(Vec::new());
    match change {
        Change::Acquired { offsets, until_ms } => {
            let runs = runs(offsets);
            w.u8(TAG_ACQUIRED).i64(*until_ms).u32(runs.len() as u32);
            for (first, len) in runs {
                w.u64(first).u32(len);
            }
        }
        Change::Settled { offset, to } => {
            w.u8(TAG_SETTLED).u64(*offset);
            match to {
                Settled::Done => w.u8(SETTLED_DONE),
                Settled::Available { at_ms } => w.u8(STATE_AVAILABLE).i64(*at_ms),
                Settled::Archiving { reason } => w.u8(STATE_ARCHIVING).text(reason),
            };
        }
        Change::DeadLettered { offset } => {
            w.u8(TAG_DEAD_LETTERED).u64(*offset);
        }
        Change::Truncated { log_start } => {
            w.u8(TAG_TRUNCATED).u64(*log_start);
        }
    }
    w.0
}

fn encode_snapshot(state: &SharePartition) -> Vec<u8> {
    let (start, next, entries, dead_lettered, dropped) = state.parts();
    let mut w = Writer(Vec::with_capacity(37 + entries.len() * 21));
    w.u8(TAG_SNAPSHOT).u64(start).u64(next).u64(dead_lettered).u64(dropped).u32(entries.len() as u32);
    for (offset, entry) in entries {
        w.u64(*offset).u32(entry.deliveries);
        write_state(&mut w, &entry.state);
    }
    w.0
}

/// A partition value: a snapshot or a change.
enum PartitionValue {
    Snapshot(SharePartition),
    Change(Change),
}

fn decode_partition_value(value: &[u8]) -> Option<PartitionValue> {
    let mut r = Reader(value);
    let value = match r.u8()? {
        TAG_SNAPSHOT => {
            let (start, next, dead_lettered, dropped) = (r.u64()?, r.u64()?, r.u64()?, r.u64()?);
            let n = r.u32()? as usize;
            // Each entry is at least 13 bytes: a count that claims more
            // than the value holds is corruption, not an allocation.
            let mut entries = Vec::with_capacity(n.min(value.len() / 13));
            for _ in 0..n {
                let (offset, deliveries) = (r.u64()?, r.u32()?);
                entries.push((offset, Entry { deliveries, state: read_state(&mut r)? }));
            }
            PartitionValue::Snapshot(SharePartition::from_parts(start, next, entries, dead_lettered, dropped))
        }
        TAG_ACQUIRED => {
            let until_ms = r.i64()?;
            let mut offsets = Vec::new();
            for _ in 0..r.u32()? {
                let (first, len) = (r.u64()?, r.u32()?);
                if len as usize > crate::config::SHARE_MAX_IN_FLIGHT_MAX as usize {
                    return None;
                }
                offsets.extend((0..u64::from(len)).map(|i| first.saturating_add(i)));
            }
            PartitionValue::Change(Change::Acquired { offsets, until_ms })
        }
        TAG_SETTLED => {
            let offset = r.u64()?;
            let to = match r.u8()? {
                SETTLED_DONE => Settled::Done,
                STATE_AVAILABLE => Settled::Available { at_ms: r.i64()? },
                STATE_ARCHIVING => Settled::Archiving { reason: r.text()? },
                _ => return None,
            };
            PartitionValue::Change(Change::Settled { offset, to })
        }
        TAG_DEAD_LETTERED => PartitionValue::Change(Change::DeadLettered { offset: r.u64()? }),
        TAG_TRUNCATED => PartitionValue::Change(Change::Truncated { log_start: r.u64()? }),
        _ => return None,
    };
    r.0.is_empty().then_some(value)
}

fn encode_config(group: &str, config: &ShareConfig) -> Vec<u8> {
    // The default dead-letter topic follows the group's name: stored only
    // when set, so it reads back as the default.
    let lines: Vec<String> = (config.to_map(group).into_iter())
        .filter(|(k, _)| k != "dead.letter.topic" || config.dead_letter_topic.is_some())
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    lines.join("\n").into_bytes()
}

fn decode_config(value: &[u8]) -> Option<ShareConfig> {
    let text = std::str::from_utf8(value).ok()?;
    let mut config = ShareConfig::default();
    for line in text.lines() {
        let (k, v) = line.split_once('=')?;
        config.set(k, v).ok()?;
    }
    Some(config)
}

impl JournalEntry {
    /// The entry as a record of the journal.
    pub fn to_record(&self) -> Record {
        let (key, value) = match self {
            JournalEntry::Config { group, config } => (group_key(group), encode_config(group, config)),
            JournalEntry::GroupDeleted { group } => (group_key(group), Vec::new()),
            JournalEntry::Snapshot { group, tp, state } => (partition_key(group, tp), encode_snapshot(state)),
            JournalEntry::Change { group, tp, change } => (partition_key(group, tp), encode_change(change)),
            JournalEntry::PartitionDeleted { group, tp } => (partition_key(group, tp), Vec::new()),
        };
        Record { key, value: Bytes::from(value), headers: vec![], timestamp_ms: 1 }
    }

    /// Reads a record back; `None` for one this version cannot read.
    pub fn from_record(key: &[u8], value: &[u8]) -> Option<JournalEntry> {
        let key = std::str::from_utf8(key).ok()?;
        let mut parts = key.split('\0');
        match (parts.next()?, parts.next()?) {
            ("g", group) if parts.next().is_none() => {
                let group = group.to_string();
                if value.is_empty() {
                    return Some(JournalEntry::GroupDeleted { group });
                }
                Some(JournalEntry::Config { config: decode_config(value)?, group })
            }
            ("p", group) => {
                let (topic, partition) = (parts.next()?.to_string(), parts.next()?.parse().ok()?);
                if parts.next().is_some() {
                    return None;
                }
                let (group, tp) = (group.to_string(), (topic, partition));
                if value.is_empty() {
                    return Some(JournalEntry::PartitionDeleted { group, tp });
                }
                Some(match decode_partition_value(value)? {
                    PartitionValue::Snapshot(state) => JournalEntry::Snapshot { group, tp, state },
                    PartitionValue::Change(change) => JournalEntry::Change { group, tp, change },
                })
            }
            _ => None,
        }
    }

    /// Applies the entry to the groups in memory (replay and live alike).
    pub fn apply(self, groups: &mut BTreeMap<String, ShareGroup>) {
        match self {
            JournalEntry::Config { group, config } => groups.entry(group).or_default().config = config,
            JournalEntry::GroupDeleted { group } => {
                groups.remove(&group);
            }
            JournalEntry::Snapshot { group, tp, state } => {
                groups.entry(group).or_default().partitions.insert(tp, state);
            }
            JournalEntry::Change { group, tp, change } => {
                if let Some(state) = groups.get_mut(&group).and_then(|g| g.partitions.get_mut(&tp)) {
                    state.apply(&change);
                }
            }
            JournalEntry::PartitionDeleted { group, tp } => {
                if let Some(g) = groups.get_mut(&group) {
                    g.partitions.remove(&tp);
                }
            }
        }
    }
}

/// Journal appends not yet known to be durable.
#[derive(Debug)]
#[must_use = "changes are not durable until ShareStore::wait returns"]
pub struct Durable(Vec<crate::storage::PendingAppend>);

/// The share groups' state in memory, backed by the journal.
#[derive(Debug)]
pub struct ShareStore {
    log: Log,
    /// Every group's state. Also serialises writers, so the journal's order
    /// is the order the changes were made in memory.
    groups: Mutex<BTreeMap<String, ShareGroup>>,
}

/// Replays the journal into memory; records it cannot read are skipped
/// with a warning (a newer version's, say), a corrupt batch fails the open.
fn replay(log: &Log) -> Result<BTreeMap<String, ShareGroup>> {
    let mut groups = BTreeMap::new();
    let mut unreadable = 0u64;
    log.replay(|r| match JournalEntry::from_record(&r.key, &r.value) {
        Some(entry) => entry.apply(&mut groups),
        None => unreadable += 1,
    })?;
    if unreadable > 0 {
        tracing::warn!(records = unreadable, dir = %log.dir().display(), "share group journal records skipped: not readable by this version");
    }
    Ok(groups)
}

impl ShareStore {
    /// Opens (recovering) the journal and replays it.
    pub fn open(data_dir: &Path, fs: Arc<dyn FileSystem>, clock: Arc<dyn Clock>) -> Result<ShareStore> {
        let log = Log::open(&data_dir.join(DIR_NAME), fs, clock, LogConfig::internal())?;
        let groups = replay(&log)?;
        tracing::debug!(groups = groups.len(), "share groups loaded");
        Ok(ShareStore { log, groups: Mutex::new(groups) })
    }

    fn groups(&self) -> MutexGuard<'_, BTreeMap<String, ShareGroup>> {
        self.groups.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Runs `f` on the groups in memory; the entries it returns (which it
    /// must already have applied) are appended under the same lock and
    /// fsynced outside it before this returns. If the fsync fails the log
    /// discarded them, so memory is rebuilt from the log and the error
    /// returned: nothing is answered that is not durable.
    pub fn update<T>(&self, f: impl FnOnce(&mut BTreeMap<String, ShareGroup>) -> (Vec<JournalEntry>, T)) -> Result<T> {
        let (pending, out) = self.update_pending(f)?;
        self.wait(pending)?;
        Ok(out)
    }

    /// [`ShareStore::update`] without the wait: the changes are in memory
    /// and written, and [`ShareStore::wait`] makes them durable. Nothing
    /// that depends on them may be answered before that.
    pub fn update_pending<T>(
        &self,
        f: impl FnOnce(&mut BTreeMap<String, ShareGroup>) -> (Vec<JournalEntry>, T),
    ) -> Result<(Durable, T)> {
        let mut groups = self.groups();
        let (entries, out) = f(&mut groups);
        let records: Vec<Record> = entries.iter().map(JournalEntry::to_record).collect();
        let mut pending = Vec::new();
        for chunk in records.chunks(SNAPSHOT_BATCH_RECORDS_MAX) {
            match self.log.append_pending(&mut batch::encode(chunk, None)) {
                Ok(p) => pending.push(p),
                Err(e) => {
                    drop(groups);
                    self.reload();
                    return Err(e);
                }
            }
        }
        Ok((Durable(pending), out))
    }

    /// Waits until changes written by [`ShareStore::update_pending`] are
    /// durable (group commit: concurrent callers share fsyncs).
    pub fn wait(&self, durable: Durable) -> Result<()> {
        if durable.0.is_empty() {
            return Ok(());
        }
        for p in &durable.0 {
            if let Err(e) = self.log.wait_durable(p) {
                self.reload();
                return Err(e);
            }
        }
        if let Err(e) = self.compact_if_needed() {
            tracing::warn!(error = %e, "compacting the share group journal failed; will retry later");
        }
        Ok(())
    }

    /// Changes the groups in memory without journaling anything: only for
    /// what replay recomputes by itself (lock expiry).
    pub fn read_mut<T>(&self, f: impl FnOnce(&mut BTreeMap<String, ShareGroup>) -> T) -> T {
        f(&mut self.groups())
    }

    /// Reads the groups in memory under the lock (keep `f` short).
    pub fn read<T>(&self, f: impl FnOnce(&BTreeMap<String, ShareGroup>) -> T) -> T {
        f(&self.groups())
    }

    fn reload(&self) {
        let mut groups = self.groups();
        match replay(&self.log) {
            Ok(fresh) => *groups = fresh,
            Err(e) => tracing::error!(error = %e, "reloading share groups after a failed write"),
        }
    }

    /// Restates the live state as snapshots in a fresh segment and drops
    /// the older segments once the journal has grown past
    /// [`COMPACT_SEGMENTS`].
    pub fn compact_if_needed(&self) -> Result<()> {
        if self.log.segment_count() <= COMPACT_SEGMENTS {
            return Ok(());
        }
        let groups = self.groups();
        let start = self.log.roll_now()?;
        let mut records = Vec::new();
        for (group, g) in groups.iter() {
            records.push(JournalEntry::Config { group: group.clone(), config: g.config.clone() }.to_record());
            for (tp, state) in &g.partitions {
                let entry = JournalEntry::Snapshot { group: group.clone(), tp: tp.clone(), state: state.clone() };
                records.push(entry.to_record());
            }
        }
        // A snapshot of a full window is about 21 bytes per record: a few
        // MiB at most, so batches of a bounded record count fit the log's
        // batch limit.
        for chunk in records.chunks(SNAPSHOT_BATCH_RECORDS_MAX.min(64)) {
            self.log.append(&mut batch::encode(chunk, None))?;
        }
        // Everything before `start` is restated after it: safe to drop.
        let deleted = self.log.delete_segments_before(start)?;
        tracing::info!(groups = groups.len(), deleted_segments = deleted, "compacted the share group journal");
        Ok(())
    }

    pub fn is_poisoned(&self) -> bool {
        self.log.is_poisoned()
    }

    pub fn close(&self) -> Result<()> {
        self.log.close()
    }

    pub fn segment_count(&self) -> usize {
        self.log.segment_count()
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::broker::delivery::state::{Ack, AckKind};
    use crate::storage::fs::StdFs;
    use crate::storage::SystemClock;

    fn open(dir: &Path) -> ShareStore {
        ShareStore::open(dir, Arc::new(StdFs), Arc::new(SystemClock)).unwrap()
    }

    fn tp(p: u32) -> TopicPartition {
        ("payments".to_string(), p)
    }

    /// Creates group `g` on partition `p` at offset 0 and hands out `n`.
    fn acquire(store: &ShareStore, p: u32, n: usize, now_ms: i64) {
        store
            .update(|groups| {
                let mut entries = Vec::new();
                let g = groups.entry("g".to_string()).or_insert_with(|| {
                    entries.push(JournalEntry::Config { group: "g".into(), config: ShareConfig::default() });
                    ShareGroup::default()
                });
                let config = g.config.clone();
                let state = g.partitions.entry(tp(p)).or_insert_with(|| {
                    let state = SharePartition::new(0);
                    entries.push(JournalEntry::Snapshot { group: "g".into(), tp: tp(p), state: state.clone() });
                    state
                });
                if let Some((change, _)) = state.acquire(now_ms, n, u64::MAX, &config) {
                    entries.push(JournalEntry::Change { group: "g".into(), tp: tp(p), change });
                }
                (entries, ())
            })
            .unwrap();
    }

    fn ack(store: &ShareStore, p: u32, offset: u64, kind: AckKind, now_ms: i64) {
        store
            .update(|groups| {
                let g = groups.get_mut("g").unwrap();
                let config = g.config.clone();
                let ack = Ack { kind, delay: None, reason: Some("why".into()) };
                let change = g.partitions.get_mut(&tp(p)).unwrap().acknowledge(offset, &ack, now_ms, &config).unwrap();
                (vec![JournalEntry::Change { group: "g".into(), tp: tp(p), change }], ())
            })
            .unwrap();
    }

    #[test]
    fn every_entry_round_trips_through_a_record() {
        let mut state = SharePartition::new(7);
        let config = ShareConfig { max_deliveries: 2, ..ShareConfig::default() };
        state.acquire(0, 5, 100, &config).unwrap();
        let reject = Ack { kind: AckKind::Reject, delay: None, reason: Some("bad \u{1F4A5}".into()) };
        state.acknowledge(8, &reject, 1, &config).unwrap();
        let release = Ack { kind: AckKind::Release, delay: Some(Duration::from_millis(50)), reason: None };
        state.acknowledge(9, &release, 1, &config).unwrap();
        let mut altered = ShareConfig::default();
        altered.set("backoff.ms", "100,2000").unwrap();
        altered.set("auto.offset.reset", "earliest").unwrap();
        let tp = tp(3);
        let entries = [
            JournalEntry::Config { group: "g".into(), config: altered.clone() },
            JournalEntry::GroupDeleted { group: "g".into() },
            JournalEntry::Snapshot { group: "g".into(), tp: tp.clone(), state },
            JournalEntry::Change {
                group: "g".into(),
                tp: tp.clone(),
                change: Change::Acquired { offsets: vec![3, 4, 5, 9, 10, 2], until_ms: -5 },
            },
            JournalEntry::Change {
                group: "g".into(),
                tp: tp.clone(),
                change: Change::Settled { offset: 4, to: Settled::Archiving { reason: "r".into() } },
            },
            JournalEntry::Change {
                group: "g".into(),
                tp: tp.clone(),
                change: Change::Settled { offset: 4, to: Settled::Available { at_ms: 99 } },
            },
            JournalEntry::Change {
                group: "g".into(),
                tp: tp.clone(),
                change: Change::Settled { offset: 4, to: Settled::Done },
            },
            JournalEntry::Change { group: "g".into(), tp: tp.clone(), change: Change::DeadLettered { offset: 8 } },
            JournalEntry::Change { group: "g".into(), tp: tp.clone(), change: Change::Truncated { log_start: 12 } },
            JournalEntry::PartitionDeleted { group: "g".into(), tp },
        ];
        for entry in entries {
            let r = entry.to_record();
            assert_eq!(JournalEntry::from_record(&r.key, &r.value), Some(entry));
        }
    }

    #[test]
    fn garbage_values_are_refused_not_misread() {
        let r = JournalEntry::Change {
            group: "g".into(),
            tp: tp(0),
            change: Change::Acquired { offsets: vec![1, 2, 3], until_ms: 5 },
        }
        .to_record();
        for cut in 1..r.value.len() {
            assert_eq!(JournalEntry::from_record(&r.key, &r.value[..cut]), None, "cut at {cut}");
        }
        let mut longer = r.value.to_vec();
        longer.push(0);
        assert_eq!(JournalEntry::from_record(&r.key, &longer), None);
        assert_eq!(JournalEntry::from_record(b"p\0g\0t", &r.value), None);
        assert_eq!(JournalEntry::from_record(b"x\0g", b"1"), None);
        // A snapshot claiming four billion entries in a few bytes.
        let mut huge = vec![TAG_SNAPSHOT];
        huge.extend_from_slice(&[0; 32]);
        huge.extend_from_slice(&u32::MAX.to_le_bytes());
        assert_eq!(JournalEntry::from_record(b"p\0g\0t\x000", &huge), None);
    }

    #[test]
    fn state_survives_reopen_without_a_clean_close() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path());
        acquire(&store, 0, 5, 1000);
        ack(&store, 0, 0, AckKind::Accept, 1001);
        ack(&store, 0, 1, AckKind::Reject, 1001);
        ack(&store, 0, 2, AckKind::Release, 1001);
        acquire(&store, 1, 2, 1000);
        let before = store.read(|g| g.clone());
        drop(store); // no clean close: what was acknowledged is in the log
        let store = open(dir.path());
        assert_eq!(store.read(|g| g.clone()), before);
        let state = store.read(|g| g["g"].partitions[&tp(0)].clone());
        assert_eq!(state.start(), 1, "accepted offset 0 stays done");
        assert_eq!(state.archiving(), [(1, 1, "why".to_string())]);
        assert_eq!(state.entry(3).unwrap().deliveries, 1, "in-flight records keep their delivery count");
    }

    #[test]
    fn compaction_keeps_the_live_state_and_bounds_the_journal() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path());
        // Each round hands out 1,000 records and accepts them in one
        // update: about 40 KB of journal, so 1,000 rounds pass the
        // compaction threshold (4 segments of 8 MiB) more than once.
        let mut now = 0;
        for _ in 0..1000 {
            acquire(&store, 0, 1000, now);
            store
                .update(|groups| {
                    let g = groups.get_mut("g").unwrap();
                    let config = g.config.clone();
                    let state = g.partitions.get_mut(&tp(0)).unwrap();
                    let accept = Ack { kind: AckKind::Accept, delay: None, reason: None };
                    let changes = (state.start()..state.next())
                        .map(|o| state.acknowledge(o, &accept, now, &config).unwrap())
                        .map(|change| JournalEntry::Change { group: "g".into(), tp: tp(0), change });
                    (changes.collect(), ())
                })
                .unwrap();
            now += 1;
            assert!(store.segment_count() <= COMPACT_SEGMENTS + 1, "{} segments: not compacted", store.segment_count());
        }
        acquire(&store, 0, 3, now);
        let before = store.read(|g| g.clone());
        drop(store);
        let store = open(dir.path());
        assert_eq!(store.read(|g| g.clone()), before);
        assert_eq!(before["g"].partitions[&tp(0)].start(), 1_000_000);
    }
}
