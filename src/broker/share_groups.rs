//! Share groups on the broker: ShareFetch, Acknowledge, dead letters and
//! the admin calls, over the pure state of `delivery/state.rs` and the
//! journal of `delivery/journal.rs`.
//!
//! A fetch of a group plans what to hand out, reads those records, then
//! acquires exactly what it read; fetches (and dead-lettering) of one group
//! take turns on the group's async lock, while acknowledgements only take
//! the journal's lock for their in-memory update and append. Every change
//! is durable before the call that made it answers, and the journal's
//! group commit lets concurrent fetches and acks of all groups share
//! fsyncs. A dead letter is appended to its topic and durable before the
//! record is marked done, so a crash between the two repeats it, never
//! loses it. Lock expiry needs no journal record (see `state.rs`); a
//! background pass every [`SHARE_TICK`] dead-letters records whose last
//! lock ran out.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::watch;

use super::delivery::config::{ConfigError, ShareConfig, StartFrom};
use super::delivery::dead_letter;
use super::delivery::journal::{JournalEntry, ShareGroup, ShareStore, TopicPartition};
use super::delivery::state::{Ack, Delivery, SharePartition, Summary};
use super::partition::Partition;
use super::{names, Broker, BrokerError, Caller, CreateTopic, ProduceRequest, Result};
use crate::config::{
    FETCH_BYTES_DEFAULT, FETCH_RECORDS_DEFAULT, FETCH_RECORDS_MAX, FETCH_WAIT_MAX, SHARE_BACKOFF_MAX,
    SHARE_MEMBERS_MAX, SHARE_MEMBER_ID_BYTES_MAX,
};
use crate::storage::batch::{Record, StoredRecord};

pub use super::delivery::state::AckKind;

/// The name errors give the share group journal.
pub const JOURNAL_NAME: &str = super::delivery::journal::DIR_NAME;
/// How often lock expiries are looked for, for dead-lettering.
pub const SHARE_TICK: Duration = Duration::from_millis(500);
/// Members not seen for this long are left out of DescribeShareGroup.
const MEMBER_SEEN_WINDOW_MS: i64 = 60_000;

/// A ShareFetch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShareFetchRequest {
    pub group: String,
    pub topic_pattern: String,
    /// 0: the default (`FETCH_RECORDS_DEFAULT`); at most `FETCH_RECORDS_MAX`.
    pub records_max: usize,
    /// 0: the default (`FETCH_BYTES_DEFAULT`); at least one record is returned.
    pub bytes_max: usize,
    pub wait: Duration,
    /// Who fetches, for DescribeShareGroup; empty: the caller's address.
    pub member_id: String,
}

/// A record handed out to a share group member.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShareRecord {
    pub topic: String,
    pub partition: u32,
    pub record: StoredRecord,
    /// 1 on first delivery.
    pub delivery_count: u32,
}

/// One entry of an Acknowledge.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AckEntry {
    pub topic: String,
    pub partition: u32,
    pub offset: u64,
    pub ack: Ack,
}

/// A share group's state on one partition, for DescribeShareGroup.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SharePartitionInfo {
    pub topic: String,
    pub partition: u32,
    pub summary: Summary,
    pub high_watermark: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShareGroupInfo {
    pub group: String,
    pub config: BTreeMap<String, String>,
    pub partitions: Vec<SharePartitionInfo>,
    /// Members seen in the last minute, with when (ms since the epoch).
    pub members: Vec<(String, i64)>,
}

/// The share groups: their journal and what their fetches wait on.
#[derive(Debug)]
pub struct ShareGroups {
    store: ShareStore,
    /// Fetches and dead-lettering of one group take turns.
    locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    /// Bumped when records become available again (release, expiry) or a
    /// group changes, so waiting fetches look again.
    released: watch::Sender<u64>,
    /// Members seen per group: id -> last seen (ms).
    members: Mutex<HashMap<String, HashMap<String, i64>>>,
}

impl ShareGroups {
    pub fn new(store: ShareStore) -> ShareGroups {
        ShareGroups {
            store,
            locks: Mutex::new(HashMap::new()),
            released: watch::Sender::new(0),
            members: Mutex::new(HashMap::new()),
        }
    }

    pub fn store(&self) -> &ShareStore {
        &self.store
    }

    fn lock_of(&self, group: &str) -> Arc<tokio::sync::Mutex<()>> {
        let mut locks = self.locks.lock().unwrap_or_else(|e| e.into_inner());
        locks.entry(group.to_string()).or_default().clone()
    }

    /// Remembers a member of an existing group: at most
    /// `SHARE_MEMBERS_MAX` per group, ids cut to `SHARE_MEMBER_ID_BYTES_MAX`.
    fn seen(&self, group: &str, member: &str, now_ms: i64) {
        let mut end = member.len().min(SHARE_MEMBER_ID_BYTES_MAX);
        while !member.is_char_boundary(end) {
            end -= 1;
        }
        let member = &member[..end];
        let mut members = self.members.lock().unwrap_or_else(|e| e.into_inner());
        let group = members.entry(group.to_string()).or_default();
        group.retain(|_, seen| now_ms - *seen < MEMBER_SEEN_WINDOW_MS);
        if group.len() < SHARE_MEMBERS_MAX || group.contains_key(member) {
            group.insert(member.to_string(), now_ms);
        }
    }

    fn wake(&self) {
        self.released.send_modify(|n| *n = n.wrapping_add(1));
    }
}

/// The group's dead-letter topic must be a name a topic can have: the
/// default `<group>.dlq` of a 246-character group is not.
fn check_dead_letter_name(group: &str, config: &ShareConfig) -> std::result::Result<(), ConfigError> {
    let topic = config.dead_letter_topic(group);
    names::validate("topic", &topic, false).map_err(|e| ConfigError {
        key: "dead.letter.topic".into(),
        why: format!("{e}; set dead.letter.topic to a shorter name"),
    })
}

fn storage_error(e: crate::storage::StorageError) -> BrokerError {
    BrokerError::storage(JOURNAL_NAME, 0, e)
}

/// Runs blocking journal work off the async workers.
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T> + Send + 'static) -> Result<T> {
    tokio::task::spawn_blocking(f).await.map_err(|e| BrokerError::Internal(format!("share group task failed: {e}")))?
}

/// What one partition of a fetch plans to hand out, and what it read.
struct PartitionPlan {
    partition: Arc<Partition>,
    offsets: Vec<u64>,
    records: Vec<StoredRecord>,
}

impl Broker {
    fn share(&self) -> &ShareGroups {
        &self.share_groups
    }

    /// Hands out records of the topics matching the pattern, acquired by
    /// the group for `ack.wait.ms`; waits up to `wait` when none is due.
    /// The first fetch of an unknown group creates it with the defaults.
    pub async fn share_fetch(
        self: &Arc<Self>,
        caller: &Caller,
        request: ShareFetchRequest,
    ) -> Result<Vec<ShareRecord>> {
        self.check_running()?;
        names::validate("group", &request.group, false)?;
        if request.topic_pattern.is_empty() {
            return Err(BrokerError::InvalidRequest("ShareFetch needs a topic_pattern".into()));
        }
        let records_max = match request.records_max {
            0 => FETCH_RECORDS_DEFAULT,
            n => n.min(FETCH_RECORDS_MAX),
        };
        let bytes_max = match request.bytes_max {
            0 => FETCH_BYTES_DEFAULT,
            n => n.min(self.config.request_bytes_max),
        };
        let member = match (request.member_id.is_empty(), caller.peer) {
            (false, _) => request.member_id.clone(),
            (true, Some(peer)) => peer.to_string(),
            (true, None) => "unknown".to_string(),
        };
        if self.share().store.read(|groups| !groups.contains_key(&request.group)) {
            // Before anything is kept for the name (its fetch lock, its members).
            self.check_share_group_room()?;
        }
        let deadline = tokio::time::Instant::now() + request.wait.min(FETCH_WAIT_MAX);
        let mut released = self.share().released.subscribe();
        let mut topics = self.watch_topics();
        let mut stopping = self.watch_stopping();
        loop {
            let partitions: Vec<Arc<Partition>> = self
                .matching_topics(&request.topic_pattern)
                .iter()
                .filter(|t| {
                    let topic = crate::security::Resource::Topic(t.name.clone());
                    self.authorizer().allows(caller, crate::security::Operation::Consume, &topic)
                })
                .flat_map(|t| t.partitions.clone())
                .collect();
            // Watched before the fetch looks, so an append in between wakes it.
            let mut watches: Vec<watch::Receiver<u64>> = partitions.iter().map(|p| p.watch()).collect();
            released.borrow_and_update();
            topics.borrow_and_update();
            let got = self.share_fetch_once(&request.group, &partitions, records_max, bytes_max).await?;
            // The group exists now (the fetch creates it): only then is its
            // member remembered, so refused names cost no memory.
            self.share().seen(&request.group, &member, self.clock.now_ms());
            if !got.is_empty() || tokio::time::Instant::now() >= deadline {
                return Ok(got);
            }
            let now = self.clock.now_ms();
            let due = self.share().store.read(|groups| {
                let g = groups.get(&request.group)?;
                g.partitions.values().filter_map(|s| s.next_due(now)).min()
            });
            let wake_at = due.map_or(deadline, |t| {
                let after = Duration::from_millis(t.saturating_sub(now).max(1) as u64);
                deadline.min(tokio::time::Instant::now() + after)
            });
            let appended = futures::future::select_all(watches.iter_mut().map(|w| Box::pin(w.changed())));
            let appended = async move {
                if partitions.is_empty() {
                    std::future::pending::<()>().await;
                }
                let _ = appended.await;
            };
            tokio::select! {
                _ = appended => {}
                _ = released.changed() => {}
                _ = topics.changed() => {}
                _ = tokio::time::sleep_until(wake_at) => {}
                _ = super::stopped(&mut stopping) => return Ok(Vec::new()),
            }
        }
    }

    /// One look for records to hand out, under the group's fetch lock.
    async fn share_fetch_once(
        self: &Arc<Self>,
        group: &str,
        partitions: &[Arc<Partition>],
        records_max: usize,
        bytes_max: usize,
    ) -> Result<Vec<ShareRecord>> {
        let lock = self.share().lock_of(group);
        let _turn = lock.lock().await;
        self.ensure_share_partitions(group, partitions).await?;
        let now = self.clock.now_ms();
        // Plan under the journal's lock (expiring locks, which needs no
        // journal record), then read outside any lock.
        let plans: Vec<(Arc<Partition>, super::delivery::state::Plan)> = self.share().store.read_mut(|groups| {
            let Some(g) = groups.get_mut(group) else { return Vec::new() };
            let config = g.config.clone();
            let mut left = records_max;
            let mut plans = Vec::new();
            for p in partitions {
                if left == 0 {
                    break;
                }
                let Some(state) = g.partitions.get_mut(&(p.topic.clone(), p.id)) else { continue };
                let plan = state.plan(now, left, p.log.high_watermark(), &config);
                if !plan.is_empty() {
                    left -= plan.redeliver.len() + (plan.new.end - plan.new.start) as usize;
                    plans.push((p.clone(), plan));
                }
            }
            plans
        });
        if plans.is_empty() {
            return Ok(Vec::new());
        }
        let mut read = Vec::with_capacity(plans.len());
        let mut bytes_left = bytes_max;
        for (partition, plan) in plans {
            if bytes_left == 0 {
                break;
            }
            let mut records = Vec::new();
            for offset in plan.redeliver {
                if bytes_left == 0 {
                    break;
                }
                let got = partition.read(offset, 1, bytes_left).await?;
                if let Some(r) = got.records.into_iter().next().filter(|r| r.offset == offset) {
                    bytes_left = bytes_left.saturating_sub(r.key.len() + r.value.len() + 32);
                    records.push(r);
                }
            }
            if !plan.new.is_empty() && bytes_left > 0 {
                let got = partition.read(plan.new.start, (plan.new.end - plan.new.start) as usize, bytes_left).await?;
                for r in got.records.into_iter().filter(|r| plan.new.contains(&r.offset)) {
                    bytes_left = bytes_left.saturating_sub(r.key.len() + r.value.len() + 32);
                    records.push(r);
                }
            }
            let offsets = records.iter().map(|r| r.offset).collect();
            read.push(PartitionPlan { partition, offsets, records });
        }
        let group_name = group.to_string();
        let (durable, deliveries) = self
            .share()
            .store
            .update_pending(|groups| {
                let mut entries = Vec::new();
                let mut deliveries: Vec<Vec<Delivery>> = Vec::new();
                let Some(g) = groups.get_mut(&group_name) else { return (entries, deliveries) };
                let config = g.config.clone();
                for plan in &read {
                    let tp = (plan.partition.topic.clone(), plan.partition.id);
                    let got = g.partitions.get_mut(&tp).and_then(|s| s.acquire_offsets(now, &plan.offsets, &config));
                    match got {
                        Some((change, d)) => {
                            entries.push(JournalEntry::Change { group: group_name.clone(), tp, change });
                            deliveries.push(d);
                        }
                        None => deliveries.push(Vec::new()),
                    }
                }
                (entries, deliveries)
            })
            .map_err(storage_error)?;
        drop(_turn);
        let broker = self.clone();
        blocking(move || broker.share().store.wait(durable).map_err(storage_error)).await?;
        let mut out = Vec::new();
        for (plan, deliveries) in read.into_iter().zip(deliveries) {
            let mut records: HashMap<u64, StoredRecord> = plan.records.into_iter().map(|r| (r.offset, r)).collect();
            for d in deliveries {
                if let Some(record) = records.remove(&d.offset) {
                    out.push(ShareRecord {
                        topic: plan.partition.topic.clone(),
                        partition: plan.partition.id,
                        record,
                        delivery_count: d.deliveries,
                    });
                }
            }
        }
        Ok(out)
    }

    /// Creates the group (with the defaults) and its state on each of
    /// `partitions` it has none on yet (where `auto.offset.reset` says),
    /// and forgets records retention deleted; durably.
    async fn ensure_share_partitions(self: &Arc<Self>, group: &str, partitions: &[Arc<Partition>]) -> Result<()> {
        let (exists, config, missing, truncated) = self.share().store.read(|groups| {
            let g = groups.get(group);
            let config = g.map(|g| g.config.clone()).unwrap_or_default();
            let mut missing = Vec::new();
            let mut truncated = Vec::new();
            for p in partitions {
                match g.and_then(|g| g.partitions.get(&(p.topic.clone(), p.id))) {
                    None => missing.push(p.clone()),
                    Some(s) if p.log.log_start_offset() > s.start() => truncated.push(p.clone()),
                    Some(_) => {}
                }
            }
            (g.is_some(), config, missing, truncated)
        });
        if exists && missing.is_empty() && truncated.is_empty() {
            return Ok(());
        }
        if !exists {
            self.check_share_group_room()?;
            check_dead_letter_name(group, &ShareConfig::default())
                .map_err(|e| BrokerError::InvalidShareConfig { group: group.to_string(), why: e.to_string() })?;
        }
        let mut starts = Vec::with_capacity(missing.len());
        for p in &missing {
            let start = match config.start_from {
                StartFrom::Latest => p.log.high_watermark(),
                StartFrom::Earliest => p.log.log_start_offset(),
                StartFrom::Time(ts) => p.blocking(move |log| log.offset_for_timestamp(ts)).await?,
            };
            starts.push(((p.topic.clone(), p.id), start));
        }
        let group_name = group.to_string();
        let (this, name) = (self.clone(), group.to_string());
        let dropped = blocking(move || {
            this.share()
                .store
                .update(|groups| {
                    let mut entries = Vec::new();
                    let g = groups.entry(name.clone()).or_insert_with(|| {
                        entries.push(JournalEntry::Config { group: name.clone(), config: ShareConfig::default() });
                        ShareGroup::default()
                    });
                    for (tp, start) in starts {
                        if let std::collections::btree_map::Entry::Vacant(slot) = g.partitions.entry(tp.clone()) {
                            let state = SharePartition::new(start);
                            entries.push(JournalEntry::Snapshot { group: name.clone(), tp, state: state.clone() });
                            slot.insert(state);
                        }
                    }
                    let mut dropped = Vec::new();
                    for p in truncated {
                        let tp = (p.topic.clone(), p.id);
                        if let Some((change, n)) =
                            g.partitions.get_mut(&tp).and_then(|s| s.truncate(p.log.log_start_offset()))
                        {
                            entries.push(JournalEntry::Change { group: name.clone(), tp: tp.clone(), change });
                            if n > 0 {
                                dropped.push((tp, n));
                            }
                        }
                    }
                    (entries, dropped)
                })
                .map_err(storage_error)
        })
        .await?;
        for ((topic, partition), n) in dropped {
            tracing::warn!(
                group = group_name,
                topic,
                partition,
                records = n,
                "records deleted by retention before the share group was done with them"
            );
            self.metrics.share_dropped(&group_name, n);
        }
        Ok(())
    }

    /// Acknowledges records; each entry succeeds or fails on its own.
    /// Durable before it returns; rejected records (and released ones out
    /// of deliveries) are dead-lettered before it returns.
    pub async fn acknowledge(
        self: &Arc<Self>,
        caller: &Caller,
        group: &str,
        entries: Vec<AckEntry>,
    ) -> Result<Vec<std::result::Result<(), BrokerError>>> {
        self.check_running()?;
        names::validate("group", group, false)?;
        let _ = caller;
        let now = self.clock.now_ms();
        let (this, name) = (self.clone(), group.to_string());
        let (results, archived, released) = blocking(move || {
            this.share()
                .store
                .update(|groups| {
                    let Some(g) = groups.get_mut(&name) else {
                        let err = || BrokerError::UnknownShareGroup(name.clone());
                        return (Vec::new(), (entries.iter().map(|_| Err(err())).collect::<Vec<_>>(), false, false));
                    };
                    let config = g.config.clone();
                    let mut journal = Vec::new();
                    let (mut archived, mut released) = (false, false);
                    let mut results = Vec::with_capacity(entries.len());
                    for e in entries {
                        let tp = (e.topic.clone(), e.partition);
                        let Some(state) = g.partitions.get_mut(&tp) else {
                            results.push(Err(BrokerError::NotAcquired {
                                group: name.clone(),
                                topic: e.topic,
                                partition: e.partition,
                                source: super::delivery::state::NotAcquired::NotDelivered { offset: e.offset, next: 0 },
                            }));
                            continue;
                        };
                        if e.ack.delay.is_some_and(|d| d > SHARE_BACKOFF_MAX) {
                            let why = format!(
                                "{}/{} offset {}: delay_ms over the limit of {} ms (a week)",
                                e.topic,
                                e.partition,
                                e.offset,
                                SHARE_BACKOFF_MAX.as_millis()
                            );
                            results.push(Err(BrokerError::InvalidRequest(why)));
                            continue;
                        }
                        match state.acknowledge(e.offset, &e.ack, now, &config) {
                            Ok(change) => {
                                use super::delivery::state::{Change, Settled};
                                match &change {
                                    Change::Settled { to: Settled::Archiving { .. }, .. } => archived = true,
                                    Change::Settled { to: Settled::Available { .. }, .. } => released = true,
                                    _ => {}
                                }
                                journal.push(JournalEntry::Change { group: name.clone(), tp, change });
                                results.push(Ok(()));
                            }
                            Err(source) => results.push(Err(BrokerError::NotAcquired {
                                group: name.clone(),
                                topic: e.topic,
                                partition: e.partition,
                                source,
                            })),
                        }
                    }
                    (journal, (results, archived, released))
                })
                .map_err(storage_error)
        })
        .await?;
        if released {
            self.share().wake();
        }
        if archived {
            self.dead_letter_pending(group).await?;
        }
        Ok(results)
    }

    /// Appends every record of the group waiting to be dead-lettered to the
    /// group's dead-letter topic (created on first use with the source
    /// topic's retention), durably, then marks them done.
    pub async fn dead_letter_pending(self: &Arc<Self>, group: &str) -> Result<u64> {
        let lock = self.share().lock_of(group);
        let _turn = lock.lock().await;
        let now = self.clock.now_ms();
        let (dlq, pending) = self.share().store.read_mut(|groups| {
            let Some(g) = groups.get_mut(group) else { return (String::new(), Vec::new()) };
            let config = g.config.clone();
            let mut pending = Vec::new();
            for (tp, state) in g.partitions.iter_mut() {
                state.expire(now, &config);
                let archiving = state.archiving();
                if !archiving.is_empty() {
                    pending.push((tp.clone(), archiving));
                }
            }
            (config.dead_letter_topic(group), pending)
        });
        let mut moved = 0;
        for ((topic, partition), archiving) in pending {
            let source = match self.partition(&topic, partition) {
                Ok(p) => p,
                // The topic is gone: its records with it.
                Err(_) => continue,
            };
            let mut letters = Vec::new();
            let mut done = Vec::new();
            let mut gone = false;
            for (offset, deliveries, reason) in archiving {
                let read = source.read(offset, 1, 1).await?;
                match read.records.into_iter().next().filter(|r| r.offset == offset) {
                    Some(r) => {
                        letters.push(dead_letter::dead_letter(&r, &topic, partition, group, deliveries, &reason));
                        done.push(offset);
                    }
                    None => gone = true,
                }
            }
            if !letters.is_empty() {
                self.ensure_dead_letter_topic(&dlq, &topic).await?;
                let request = ProduceRequest {
                    topic: dlq.clone(),
                    partition: None,
                    records: letters,
                    producer: None,
                    batch: None,
                };
                self.produce_internal("dead-letter", request).await?;
            }
            let (this, name, tp) = (self.clone(), group.to_string(), (topic.clone(), partition));
            let log_start = source.log.log_start_offset();
            let n = done.len() as u64;
            blocking(move || {
                this.share()
                    .store
                    .update(|groups| {
                        let mut entries = Vec::new();
                        if let Some(state) = groups.get_mut(&name).and_then(|g| g.partitions.get_mut(&tp)) {
                            for offset in done {
                                if let Some(change) = state.dead_lettered(offset) {
                                    entries.push(JournalEntry::Change { group: name.clone(), tp: tp.clone(), change });
                                }
                            }
                            if gone {
                                if let Some((change, _)) = state.truncate(log_start) {
                                    entries.push(JournalEntry::Change { group: name.clone(), tp: tp.clone(), change });
                                }
                            }
                        }
                        (entries, ())
                    })
                    .map_err(storage_error)
            })
            .await?;
            if n > 0 {
                self.metrics.share_dead_lettered(group, n);
                tracing::info!(group, topic, partition, records = n, dead_letter_topic = dlq, "dead-lettered");
            }
            moved += n;
        }
        Ok(moved)
    }

    async fn ensure_dead_letter_topic(self: &Arc<Self>, dlq: &str, source_topic: &str) -> Result<()> {
        if self.topic(dlq).is_ok() {
            return Ok(());
        }
        let retention = self.topic(source_topic).map(|t| t.config().to_map()).unwrap_or_default();
        let config: BTreeMap<String, String> =
            retention.into_iter().filter(|(k, _)| k == "retention.ms" || k == "retention.bytes").collect();
        let caller = Caller::internal("dead-letter");
        match self.create_topic(&caller, CreateTopic { name: dlq.to_string(), partitions: Some(1), config }).await {
            Ok(_) | Err(BrokerError::TopicExists(_)) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// The background pass: dead-letters records whose last lock ran out
    /// and wakes fetches waiting for released records.
    pub async fn share_tick(self: &Arc<Self>) {
        let now = self.clock.now_ms();
        let (due, woke) = self.share().store.read_mut(|groups| {
            let mut due = Vec::new();
            let mut woke = false;
            for (name, g) in groups.iter_mut() {
                let config = g.config.clone();
                let mut archived = false;
                for state in g.partitions.values_mut() {
                    let before = state.summary().available;
                    archived |= !state.expire(now, &config).is_empty() || !state.archiving().is_empty();
                    woke |= state.summary().available > before;
                }
                if archived {
                    due.push(name.clone());
                }
            }
            (due, woke)
        });
        if woke {
            self.share().wake();
        }
        for group in due {
            if let Err(e) = self.dead_letter_pending(&group).await {
                tracing::warn!(group, error = %e, "dead-lettering failed; will retry");
            }
        }
    }

    /// Refuses to create a share group past `share_groups_max`.
    fn check_share_group_room(&self) -> Result<()> {
        let count = self.share().store.read(|groups| groups.len());
        if count >= self.config.share_groups_max {
            return Err(BrokerError::Busy(format!(
                "{count} share groups exist, the most this broker keeps (share_groups_max); \
                 delete unused ones (strata share delete G)"
            )));
        }
        Ok(())
    }

    /// Changes a share group's config (creating the group if needed).
    pub async fn alter_share_group(
        self: &Arc<Self>,
        caller: &Caller,
        group: &str,
        changes: BTreeMap<String, String>,
    ) -> Result<ShareGroupInfo> {
        self.check_running()?;
        names::validate("group", group, false)?;
        if self.share().store.read(|groups| !groups.contains_key(group)) {
            self.check_share_group_room()?;
        }
        let (this, name) = (self.clone(), group.to_string());
        blocking(move || {
            let refused = this.share().store.update(|groups| {
                let current = groups.get(&name).map(|g| g.config.clone()).unwrap_or_default();
                match current.with(&changes).and_then(|c| check_dead_letter_name(&name, &c).map(|()| c)) {
                    Ok(config) => {
                        groups.entry(name.clone()).or_default().config = config.clone();
                        (vec![JournalEntry::Config { group: name.clone(), config }], None)
                    }
                    Err(e) => (Vec::new(), Some(e)),
                }
            });
            match refused.map_err(storage_error)? {
                Some(e) => Err(BrokerError::InvalidShareConfig { group: name, why: e.to_string() }),
                None => Ok(()),
            }
        })
        .await?;
        tracing::info!(group, by = %caller, "altered share group");
        self.share().wake();
        self.describe_share_group(caller, group)
    }

    pub fn describe_share_group(&self, _caller: &Caller, group: &str) -> Result<ShareGroupInfo> {
        let now = self.clock.now_ms();
        let info = self.share_groups.store.read_mut(|groups| {
            let g = groups.get_mut(group)?;
            let config = g.config.clone();
            let partitions = g.partitions.iter_mut().map(|((topic, partition), state)| {
                state.expire(now, &config);
                let high_watermark = self.partition(topic, *partition).map_or(0, |p| p.log.high_watermark());
                SharePartitionInfo {
                    topic: topic.clone(),
                    partition: *partition,
                    summary: state.summary(),
                    high_watermark,
                }
            });
            Some((config.to_map(group), partitions.collect::<Vec<_>>()))
        });
        let Some((config, partitions)) = info else {
            return Err(BrokerError::UnknownShareGroup(group.to_string()));
        };
        let members = self.share_groups.members.lock().unwrap_or_else(|e| e.into_inner());
        let mut members: Vec<(String, i64)> = members
            .get(group)
            .map(|m| m.iter().filter(|(_, &t)| now - t < MEMBER_SEEN_WINDOW_MS).map(|(k, v)| (k.clone(), *v)).collect())
            .unwrap_or_default();
        members.sort();
        Ok(ShareGroupInfo { group: group.to_string(), config, partitions, members })
    }

    pub fn list_share_groups(&self, _caller: &Caller) -> Vec<String> {
        self.share_groups.store.read(|groups| groups.keys().cloned().collect())
    }

    pub async fn delete_share_group(self: &Arc<Self>, caller: &Caller, group: &str) -> Result<()> {
        self.check_running()?;
        let (this, name) = (self.clone(), group.to_string());
        let existed = blocking(move || {
            this.share()
                .store
                .update(|groups| match groups.remove(&name) {
                    Some(_) => (vec![JournalEntry::GroupDeleted { group: name.clone() }], true),
                    None => (Vec::new(), false),
                })
                .map_err(storage_error)
        })
        .await?;
        if !existed {
            return Err(BrokerError::UnknownShareGroup(group.to_string()));
        }
        self.share().members.lock().unwrap_or_else(|e| e.into_inner()).remove(group);
        self.share().locks.lock().unwrap_or_else(|e| e.into_inner()).remove(group);
        tracing::info!(group, by = %caller, "deleted share group");
        Ok(())
    }

    /// Appends up to `records_max` of the group's dead letters (those not
    /// redriven before) back to their original topics and partitions,
    /// without the `dlq.*` headers; returns how many moved. The position
    /// reached is committed (as internal group `__redrive.<group>`) after
    /// the appends are durable: a crash between may redrive one twice.
    pub async fn redrive_dead_letters(
        self: &Arc<Self>,
        caller: &Caller,
        group: &str,
        records_max: usize,
    ) -> Result<u64> {
        self.check_running()?;
        let dlq = self.share().store.read(|groups| groups.get(group).map(|g| g.config.dead_letter_topic(group)));
        let Some(dlq) = dlq else { return Err(BrokerError::UnknownShareGroup(group.to_string())) };
        let Ok(topic) = self.topic(&dlq) else { return Ok(0) };
        let records_max = if records_max == 0 { FETCH_RECORDS_DEFAULT } else { records_max.min(FETCH_RECORDS_MAX) };
        let cursor_group = format!("__redrive.{group}");
        let mut moved = 0u64;
        for p in &topic.partitions {
            let committed = self.groups.offsets.get(&cursor_group, &dlq, p.id).map(|c| c.offset);
            let mut from = committed.unwrap_or(0).max(p.log.log_start_offset());
            let end = p.log.high_watermark();
            while from < end && (moved as usize) < records_max {
                let read = p.read(from, records_max - moved as usize, FETCH_BYTES_DEFAULT).await?;
                if read.records.is_empty() {
                    break;
                }
                let mut by_target: BTreeMap<(String, u32), Vec<Record>> = BTreeMap::new();
                for r in &read.records {
                    let Some((origin, record)) = dead_letter::redrive(r) else { continue };
                    let of_group = r.headers.iter().rev().find(|(k, _)| k == "dlq.group").map(|(_, v)| v.clone());
                    if of_group.as_deref() != Some(group.as_bytes()) {
                        continue;
                    }
                    by_target.entry((origin.topic, origin.partition)).or_default().push(record);
                }
                for ((target, partition), records) in by_target {
                    let n = records.len() as u64;
                    let partition = self
                        .topic(&target)
                        .ok()
                        .filter(|t| (partition as usize) < t.partitions.len())
                        .map(|_| partition);
                    let request =
                        ProduceRequest { topic: target.clone(), partition, records, producer: None, batch: None };
                    match self.produce_internal("redrive", request).await {
                        Ok(_) => moved += n,
                        Err(BrokerError::UnknownTopic(_)) => {
                            tracing::warn!(
                                group,
                                topic = target,
                                records = n,
                                "dead letters not redriven: their topic is gone"
                            )
                        }
                        Err(e) => return Err(e),
                    }
                }
                from = read.next_offset;
                let committed = crate::group::offsets::Committed { offset: from, metadata: "redrive".into() };
                let (this, cursor, dlq_name, id) = (self.clone(), cursor_group.clone(), dlq.clone(), p.id);
                blocking(move || {
                    this.groups
                        .offsets
                        .commit(&cursor, &[(dlq_name, id, committed)])
                        .map_err(|e| BrokerError::storage(super::groups::OFFSETS_TOPIC, 0, e))
                })
                .await?;
            }
        }
        tracing::info!(group, records = moved, by = %caller, "redrove dead letters");
        Ok(moved)
    }

    /// Forgets share group state of topics `gone` says are gone.
    pub(crate) fn forget_share_topics(&self, gone: impl Fn(&str) -> bool) -> Result<()> {
        self.share_groups
            .store
            .update(|groups| {
                let mut entries = Vec::new();
                for (name, g) in groups.iter_mut() {
                    let doomed: Vec<TopicPartition> = g.partitions.keys().filter(|(t, _)| gone(t)).cloned().collect();
                    for tp in doomed {
                        g.partitions.remove(&tp);
                        entries.push(JournalEntry::PartitionDeleted { group: name.clone(), tp });
                    }
                }
                (entries, ())
            })
            .map_err(storage_error)
    }
}

/// The push form of a share group member: records as they arrive, within
/// the member's in-flight limit; acknowledgements come in on the same stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShareSubscribeRequest {
    pub group: String,
    pub topic_pattern: String,
    /// Records the member may hold unacknowledged; 0: the default.
    pub max_in_flight: usize,
    pub member_id: String,
}

/// One message to a push stream's member.
#[derive(Debug)]
pub enum ShareStreamMessage {
    Records(Vec<ShareRecord>),
    /// The results of one inbound message's acknowledgements, in order.
    AckResults(Vec<std::result::Result<(), BrokerError>>),
}

/// Inbound acknowledgements of a push stream, one message at a time.
pub type ShareAcks = std::pin::Pin<Box<dyn futures::Stream<Item = Result<Vec<AckEntry>>> + Send>>;

/// Records a push member holds by default, and at most.
const PUSH_IN_FLIGHT_DEFAULT: usize = 100;
/// How long one fetch of a push stream waits before it looks again.
const PUSH_FETCH_WAIT: Duration = Duration::from_secs(1);

impl Broker {
    /// Starts a push stream: hands the member records as they arrive, as
    /// long as it holds fewer than `max_in_flight` unacknowledged, and
    /// applies the acknowledgements it sends. Records it still holds when
    /// the stream ends are released at once (not a failed delivery: they
    /// go to the next member without a backoff).
    pub fn share_subscribe(
        self: &Arc<Self>,
        caller: &Caller,
        request: ShareSubscribeRequest,
        mut inbound: ShareAcks,
    ) -> Result<tokio_stream::wrappers::ReceiverStream<Result<ShareStreamMessage>>> {
        use futures::StreamExt;
        self.check_running()?;
        names::validate("group", &request.group, false)?;
        if request.topic_pattern.is_empty() {
            return Err(BrokerError::InvalidRequest("ShareSubscribe needs a topic_pattern".into()));
        }
        let max_in_flight = match request.max_in_flight {
            0 => PUSH_IN_FLIGHT_DEFAULT,
            n => n.min(FETCH_RECORDS_MAX),
        };
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        let (broker, caller) = (self.clone(), caller.clone());
        tokio::spawn(async move {
            let mut stopping = broker.watch_stopping();
            // What this member holds: record -> when its lock runs out.
            let mut held: HashMap<(String, u32, u64), tokio::time::Instant> = HashMap::new();
            let mut fetch: Option<tokio::task::JoinHandle<Result<Vec<ShareRecord>>>> = None;
            loop {
                let now = tokio::time::Instant::now();
                held.retain(|_, until| *until > now);
                if fetch.is_none() && held.len() < max_in_flight {
                    // Checked again before each fetch, so a reload that
                    // takes the group away ends the stream (the topics are
                    // filtered by the fetch itself).
                    let group = crate::security::Resource::Group(request.group.clone());
                    if let Err(e) = broker.authorizer().authorize(&caller, crate::security::Operation::Group, &group) {
                        let _ = tx.send(Err(e)).await;
                        break;
                    }
                    let (b, c) = (broker.clone(), caller.clone());
                    let fetch_request = ShareFetchRequest {
                        group: request.group.clone(),
                        topic_pattern: request.topic_pattern.clone(),
                        records_max: max_in_flight - held.len(),
                        bytes_max: 0,
                        wait: PUSH_FETCH_WAIT,
                        member_id: request.member_id.clone(),
                    };
                    fetch = Some(tokio::spawn(async move { b.share_fetch(&c, fetch_request).await }));
                }
                tokio::select! {
                    acks = inbound.next() => {
                        let Some(acks) = acks else { break };
                        let acks = match acks {
                            Ok(acks) => acks,
                            Err(e) => { let _ = tx.send(Err(e)).await; break; }
                        };
                        let keys: Vec<(String, u32, u64)> =
                            acks.iter().map(|a| (a.topic.clone(), a.partition, a.offset)).collect();
                        match broker.acknowledge(&caller, &request.group, acks).await {
                            Ok(results) => {
                                for (key, r) in keys.iter().zip(&results) {
                                    if r.is_ok() {
                                        held.remove(key);
                                    }
                                }
                                if tx.send(Ok(ShareStreamMessage::AckResults(results))).await.is_err() {
                                    break;
                                }
                            }
                            Err(e) => { let _ = tx.send(Err(e)).await; break; }
                        }
                    }
                    done = async { fetch.as_mut().expect("guarded").await }, if fetch.is_some() => {
                        fetch = None;
                        let records = match done {
                            Ok(Ok(records)) => records,
                            Ok(Err(e)) => { let _ = tx.send(Err(e)).await; break; }
                            Err(e) => { let _ = tx.send(Err(BrokerError::Internal(format!("share fetch task failed: {e}")))).await; break; }
                        };
                        if records.is_empty() {
                            continue;
                        }
                        let ack_wait = broker.share().store.read(|g| g.get(&request.group).map(|g| g.config.ack_wait));
                        let until = tokio::time::Instant::now() + ack_wait.unwrap_or_default();
                        for r in &records {
                            held.insert((r.topic.clone(), r.partition, r.record.offset), until);
                        }
                        if tx.send(Ok(ShareStreamMessage::Records(records))).await.is_err() {
                            break;
                        }
                    }
                    // Full, and a held record's lock runs out: room again.
                    _ = tokio::time::sleep_until(held.values().min().copied().unwrap_or(now)), if fetch.is_none() && !held.is_empty() => {}
                    _ = super::stopped(&mut stopping) => break,
                }
            }
            // The member is gone: what it fetched meanwhile and what it
            // holds go back to the group now.
            if let Some(f) = fetch {
                if let Ok(Ok(records)) = f.await {
                    for r in records {
                        held.insert((r.topic, r.partition, r.record.offset), tokio::time::Instant::now());
                    }
                }
            }
            if !held.is_empty() && broker.is_running() {
                let release = Ack { kind: AckKind::Release, delay: Some(Duration::ZERO), reason: None };
                let acks = held
                    .into_keys()
                    .map(|(topic, partition, offset)| AckEntry { topic, partition, offset, ack: release.clone() })
                    .collect();
                if let Err(e) = broker.acknowledge(&caller, &request.group, acks).await {
                    tracing::debug!(group = request.group, error = %e, "releasing a closed push stream's records");
                }
            }
        });
        Ok(tokio_stream::wrappers::ReceiverStream::new(rx))
    }
}
