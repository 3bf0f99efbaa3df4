//! The group coordinator: drives each group's pure state machine
//! ([`crate::group::state`]) with requests, the clock and topic changes, and
//! keeps committed offsets in the durable [`OffsetStore`].
//!
//! Rebalancing is immediate: a join, leave, expiry or new matching partition
//! computes the new assignment and generation at once; members learn it from
//! Heartbeat (or their Subscribe stream). Commits are fenced by generation.
//! The groups lock is never held across `.await` or disk I/O.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::{mpsc, watch};

use super::budget::BudgetPermit;
use super::names;
use super::subscription::{stream_partition, Delivery, SubscriptionEvent, SubscriptionItem};
use super::{Broker, BrokerError, Caller, CommitOffsets, JoinGroup, Position, ResetOffsets, Result};
use crate::config::{
    SESSION_EXPIRY_CHECK_INTERVAL, SESSION_TIMEOUT_DEFAULT, SESSION_TIMEOUT_MAX, SESSION_TIMEOUT_MIN,
    STREAM_HEARTBEAT_INTERVAL,
};
use crate::group::offsets::{Committed, OffsetStore};
use crate::group::state::{GroupState, Member};
use crate::group::TopicPartition;

#[derive(Debug)]
struct GroupEntry {
    state: GroupState,
    /// The current generation, watched by the group's Subscribe streams.
    generation: watch::Sender<u64>,
}

impl Default for GroupEntry {
    fn default() -> Self {
        GroupEntry { state: GroupState::default(), generation: watch::Sender::new(0) }
    }
}

#[derive(Debug)]
pub struct Coordinator {
    groups: Mutex<HashMap<String, GroupEntry>>,
    /// Kafka's classic groups (`classic_groups.rs`).
    pub(super) classic: super::classic_groups::ClassicGroups,
    pub offsets: OffsetStore,
    pub(super) next_member: AtomicU64,
}

/// A member's view after join or heartbeat.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Membership {
    pub member_id: String,
    pub generation: u64,
    pub assignment: Vec<TopicPartition>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberInfo {
    pub member_id: String,
    pub topic_pattern: String,
    pub assignment: Vec<TopicPartition>,
    pub last_heartbeat_ms: i64,
    pub session_timeout_ms: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionLag {
    pub topic: String,
    pub partition: u32,
    pub committed: Option<Committed>,
    pub log_start_offset: u64,
    pub high_watermark: u64,
    pub lag: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupInfo {
    pub group: String,
    pub state: &'static str,
    pub generation: u64,
    pub members: Vec<MemberInfo>,
    pub partitions: Vec<PartitionLag>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OffsetReset {
    pub topic: String,
    pub partition: u32,
    pub old_offset: Option<u64>,
    pub new_offset: u64,
}

impl Coordinator {
    pub fn new(offsets: OffsetStore) -> Coordinator {
        Coordinator {
            groups: Mutex::new(HashMap::new()),
            classic: Default::default(),
            offsets,
            next_member: AtomicU64::new(1),
        }
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<String, GroupEntry>> {
        self.groups.lock().unwrap_or_else(|e| e.into_inner())
    }
}

fn state_name(state: &GroupState) -> &'static str {
    if state.is_empty() {
        "Empty"
    } else {
        "Stable"
    }
}

fn unknown_member(group: &str, member_id: &str) -> BrokerError {
    BrokerError::UnknownMember { group: group.to_string(), member: member_id.to_string() }
}

impl Broker {
    fn coordinator(&self) -> &Coordinator {
        &self.groups
    }

    /// Every partition of every topic matching any member's pattern.
    fn group_partitions(&self, state: &GroupState) -> Vec<TopicPartition> {
        let mut out = Vec::new();
        let patterns: std::collections::BTreeSet<&str> =
            state.members.values().map(|m| m.topic_pattern.as_str()).collect();
        for topic in self.matching_topics("*") {
            if patterns.iter().any(|p| names::glob_match(p, &topic.name)) {
                out.extend(topic.partitions.iter().map(|p| (topic.name.clone(), p.id)));
            }
        }
        out
    }

    fn rebalance(&self, entry: &mut GroupEntry) {
        let partitions = self.group_partitions(&entry.state);
        if entry.state.rebalance(partitions, |pattern, tp| names::glob_match(pattern, &tp.0)) {
            entry.generation.send_replace(entry.state.generation);
        }
    }

    fn membership(entry: &GroupEntry, member_id: &str) -> Membership {
        Membership {
            member_id: member_id.to_string(),
            generation: entry.state.generation,
            assignment: entry.state.assignment_of(member_id),
        }
    }

    pub fn join_group(&self, caller: &Caller, request: JoinGroup) -> Result<Membership> {
        self.join(caller, request, false)
    }

    /// Joins a member; `held_by_stream`: its liveness is a Subscribe stream's.
    fn join(&self, caller: &Caller, request: JoinGroup, held_by_stream: bool) -> Result<Membership> {
        self.check_running()?;
        let JoinGroup { group, member_id, topic_pattern, session_timeout } = request;
        let (group, member_id, topic_pattern) = (group.as_str(), member_id.as_str(), topic_pattern.as_str());
        names::validate("group", group, false)?;
        if topic_pattern.is_empty() {
            return Err(BrokerError::InvalidRequest(format!("group {group:?}: topic_pattern is empty")));
        }
        let timeout = session_timeout.unwrap_or(SESSION_TIMEOUT_DEFAULT);
        if !(SESSION_TIMEOUT_MIN..=SESSION_TIMEOUT_MAX).contains(&timeout) {
            return Err(BrokerError::InvalidRequest(format!(
                "session_timeout_ms {} is outside {}..={}",
                timeout.as_millis(),
                SESSION_TIMEOUT_MIN.as_millis(),
                SESSION_TIMEOUT_MAX.as_millis()
            )));
        }
        let timeout = timeout.as_millis() as u64;
        let kafka_members = self.coordinator().classic.members(group);
        if kafka_members > 0 {
            return Err(BrokerError::GroupInOtherProtocol {
                group: group.to_string(),
                held_by: "Kafka clients",
                members: kafka_members,
            });
        }
        let now = self.clock.now_ms();
        let mut groups = self.coordinator().lock();
        let entry = groups.entry(group.to_string()).or_default();
        let id = if member_id.is_empty() {
            let n = self.coordinator().next_member.fetch_add(1, Ordering::Relaxed);
            format!("{group}-{n}-{:x}", now)
        } else if entry.state.members.contains_key(member_id) {
            member_id.to_string()
        } else {
            return Err(unknown_member(group, member_id));
        };
        entry.state.join(Member {
            id: id.clone(),
            topic_pattern: topic_pattern.to_string(),
            session_timeout_ms: timeout,
            last_heartbeat_ms: now,
            held_by_stream,
        });
        // A new member always starts a new generation, even if the
        // assignment happens to stay the same.
        entry.state.generation += 1;
        self.rebalance(entry);
        entry.generation.send_replace(entry.state.generation);
        tracing::info!(group, member = %id, generation = entry.state.generation, by = %caller, "member joined");
        Ok(Self::membership(entry, &id))
    }

    pub fn heartbeat(&self, _caller: &Caller, group: &str, member_id: &str) -> Result<Membership> {
        let now = self.clock.now_ms();
        let mut groups = self.coordinator().lock();
        let entry = groups.get_mut(group).ok_or_else(|| unknown_member(group, member_id))?;
        if !entry.state.heartbeat(member_id, now) {
            return Err(unknown_member(group, member_id));
        }
        Ok(Self::membership(entry, member_id))
    }

    pub fn leave_group(&self, _caller: &Caller, group: &str, member_id: &str) -> Result<()> {
        let mut groups = self.coordinator().lock();
        let entry = groups.get_mut(group).ok_or_else(|| unknown_member(group, member_id))?;
        if !entry.state.leave(member_id) {
            return Err(unknown_member(group, member_id));
        }
        self.rebalance(entry);
        tracing::info!(group, member = member_id, generation = entry.state.generation, "member left");
        Ok(())
    }

    /// Removes members past their session timeout and rebalances; also
    /// rebalances every group when topics changed.
    pub fn expire_members(&self, topics_changed: bool) {
        self.tick_classic_groups();
        let now = self.clock.now_ms();
        let mut groups = self.coordinator().lock();
        for (name, entry) in groups.iter_mut() {
            let expired = entry.state.expire(now);
            for m in &expired {
                tracing::info!(group = %name, member = %m, "member session expired");
            }
            if (!expired.is_empty() || topics_changed) && (!entry.state.is_empty() || !expired.is_empty()) {
                self.rebalance(entry);
            }
        }
    }

    /// Stores offsets (the next offset to read) for a group, fenced by
    /// generation; durable before it returns. Blocking: call off the workers.
    pub fn commit_offsets(&self, _caller: &Caller, request: CommitOffsets) -> Result<()> {
        self.check_running()?;
        let CommitOffsets { group, member_id, generation, offsets } = request;
        let (group, member_id) = (group.as_str(), member_id.as_str());
        names::validate("group", group, false)?;
        {
            let groups = self.coordinator().lock();
            let entry = groups.get(group);
            let live = entry.is_some_and(|e| !e.state.is_empty());
            match entry {
                Some(e) if live => {
                    if !e.state.members.contains_key(member_id) {
                        return Err(unknown_member(group, member_id));
                    }
                    if e.state.generation != generation {
                        return Err(BrokerError::StaleGeneration {
                            group: group.to_string(),
                            generation,
                            current: e.state.generation,
                        });
                    }
                }
                _ if !member_id.is_empty() => return Err(unknown_member(group, member_id)),
                _ => {}
            }
        }
        self.store_offsets(group, &offsets)
    }

    /// Live members of strata's own protocol in a group.
    pub(super) fn live_grpc_members(&self, group: &str) -> usize {
        self.coordinator().lock().get(group).map_or(0, |e| e.state.members.len())
    }

    /// Checks and stores offsets a caller was allowed to commit; durable
    /// before it returns. Blocking.
    pub(super) fn store_offsets(&self, group: &str, offsets: &[(String, u32, Committed)]) -> Result<()> {
        let metadata_max = self.config.offset_metadata_bytes_max;
        for (topic, partition, c) in offsets {
            if c.metadata.len() > metadata_max {
                return Err(BrokerError::MetadataTooLarge {
                    group: group.to_string(),
                    topic: topic.clone(),
                    partition: *partition,
                    size: c.metadata.len(),
                    max: metadata_max,
                });
            }
            let p = self.partition(topic, *partition)?;
            let hw = p.log.high_watermark();
            if c.offset > hw {
                return Err(BrokerError::OffsetOutOfRange {
                    topic: topic.clone(),
                    partition: *partition,
                    offset: c.offset,
                    log_start_offset: p.log.log_start_offset(),
                    high_watermark: hw,
                });
            }
        }
        self.coordinator().offsets.commit(group, offsets).map_err(|e| BrokerError::storage(OFFSETS_TOPIC, 0, e))
    }

    pub fn committed_offsets(
        &self,
        _caller: &Caller,
        group: &str,
        topic: Option<&str>,
    ) -> Vec<(String, u32, Committed)> {
        self.coordinator().offsets.of_group(group, topic)
    }

    /// Groups with live members or committed offsets: (name, state, generation, members).
    pub fn list_groups(&self, _caller: &Caller) -> Vec<(String, &'static str, u64, usize)> {
        let mut names = self.coordinator().offsets.groups();
        let classic: HashMap<String, (&'static str, u64, usize)> = self
            .classic_groups()
            .into_iter()
            .filter_map(|(n, _, _)| {
                let info = self.describe_classic_group(&n)?;
                Some((n, (info.state, info.generation.max(0) as u64, info.members.len())))
            })
            .collect();
        names.extend(classic.keys().cloned());
        let groups = self.coordinator().lock();
        names.extend(groups.iter().filter(|(_, e)| !e.state.is_empty()).map(|(n, _)| n.clone()));
        names
            .into_iter()
            .map(|n| match (groups.get(&n).filter(|e| !e.state.is_empty()), classic.get(&n)) {
                (Some(e), _) => (n, state_name(&e.state), e.state.generation, e.state.members.len()),
                (None, Some(&(state, generation, members))) => (n, state, generation, members),
                (None, None) => (n, "Empty", 0, 0),
            })
            .collect()
    }

    pub fn describe_group(&self, _caller: &Caller, group: &str) -> Result<GroupInfo> {
        let committed = self.coordinator().offsets.of_group(group, None);
        let (state, generation, members, assigned) = {
            let groups = self.coordinator().lock();
            match groups.get(group) {
                Some(e) => {
                    let members = e
                        .state
                        .members
                        .values()
                        .map(|m| MemberInfo {
                            member_id: m.id.clone(),
                            topic_pattern: m.topic_pattern.clone(),
                            assignment: e.state.assignment_of(&m.id),
                            last_heartbeat_ms: m.last_heartbeat_ms,
                            session_timeout_ms: m.session_timeout_ms,
                        })
                        .collect::<Vec<_>>();
                    (state_name(&e.state), e.state.generation, members, e.state.partitions.clone())
                }
                None => ("Empty", 0, vec![], vec![]),
            }
        };
        // A group Kafka clients hold: its members and their assignments.
        let (state, generation, members, assigned) = match self.describe_classic_group(group) {
            Some(info) if members.is_empty() => {
                let members: Vec<MemberInfo> = info
                    .members
                    .iter()
                    .map(|m| MemberInfo {
                        member_id: m.member_id.clone(),
                        topic_pattern: format!("kafka {} ({})", info.protocol, m.client_id),
                        assignment: super::classic_groups::consumer_assignment(&m.assignment),
                        last_heartbeat_ms: m.last_heartbeat_ms,
                        session_timeout_ms: m.session_timeout_ms,
                    })
                    .collect();
                let assigned = members.iter().flat_map(|m| m.assignment.clone()).collect();
                (info.state, info.generation.max(0) as u64, members, assigned)
            }
            _ => (state, generation, members, assigned),
        };
        if members.is_empty() && committed.is_empty() {
            return Err(BrokerError::UnknownGroup(group.to_string()));
        }
        let mut keys: BTreeMap<TopicPartition, Option<Committed>> = assigned.into_iter().map(|tp| (tp, None)).collect();
        // Every partition of every topic the group reads, so the lag of a
        // partition it has not committed to yet is visible too.
        let topics: std::collections::BTreeSet<String> =
            keys.keys().map(|tp| tp.0.clone()).chain(committed.iter().map(|c| c.0.clone())).collect();
        for topic in topics {
            if let Ok(t) = self.topic(&topic) {
                for p in &t.partitions {
                    keys.entry((topic.clone(), p.id)).or_insert(None);
                }
            }
        }
        for (t, p, c) in committed {
            keys.insert((t, p), Some(c));
        }
        let partitions = keys
            .into_iter()
            .map(|((topic, partition), committed)| {
                let (lso, hw) = self
                    .partition(&topic, partition)
                    .map(|p| (p.log.log_start_offset(), p.log.high_watermark()))
                    .unwrap_or((0, 0));
                let from = committed.as_ref().map(|c| c.offset).unwrap_or(lso);
                PartitionLag {
                    topic,
                    partition,
                    committed,
                    log_start_offset: lso,
                    high_watermark: hw,
                    lag: hw.saturating_sub(from),
                }
            })
            .collect();
        Ok(GroupInfo { group: group.to_string(), state, generation, members, partitions })
    }

    fn require_no_live_members(&self, group: &str, action: &'static str) -> Result<()> {
        let kafka_members = self.coordinator().classic.members(group);
        if kafka_members > 0 {
            return Err(BrokerError::GroupHasMembers { group: group.to_string(), action, members: kafka_members });
        }
        let groups = self.coordinator().lock();
        if let Some(e) = groups.get(group).filter(|e| !e.state.is_empty()) {
            return Err(BrokerError::GroupHasMembers {
                group: group.to_string(),
                action,
                members: e.state.members.len(),
            });
        }
        Ok(())
    }

    /// Moves a group's committed offsets for every partition of the topics
    /// matching `pattern`. Refused while the group has live members.
    pub async fn reset_group_offsets(
        self: &Arc<Self>,
        caller: &Caller,
        request: ResetOffsets,
    ) -> Result<Vec<OffsetReset>> {
        self.check_running()?;
        let ResetOffsets { group, topic_pattern, to, dry_run, shift_by, partition } = request;
        let (group, pattern) = (group.as_str(), topic_pattern.as_str());
        names::validate("group", group, false)?;
        self.require_no_live_members(group, "reset")?;
        let topics = self.matching_topics(pattern);
        if topics.is_empty() {
            return Err(BrokerError::UnknownTopic(pattern.to_string()));
        }
        if let Some(n) = partition {
            if let Some(t) = topics.iter().find(|t| n as usize >= t.partitions.len()) {
                let partitions = t.partitions.len() as u32;
                return Err(BrokerError::UnknownPartition { topic: t.name.clone(), partition: n, partitions });
            }
        }
        let mut resets = Vec::new();
        for topic in topics {
            for p in topic.partitions.iter().filter(|p| partition.is_none_or(|n| n == p.id)) {
                let old = self.coordinator().offsets.get(group, &topic.name, p.id).map(|c| c.offset);
                let new = match to {
                    Position::Committed => old.unwrap_or(p.log.log_start_offset()),
                    other => self.resolve(p, other).await?,
                };
                let new = new.saturating_add_signed(shift_by);
                let new = new.clamp(p.log.log_start_offset(), p.log.high_watermark());
                resets.push(OffsetReset {
                    topic: topic.name.clone(),
                    partition: p.id,
                    old_offset: old,
                    new_offset: new,
                });
            }
        }
        if !dry_run {
            let entries: Vec<_> = resets
                .iter()
                .map(|r| (r.topic.clone(), r.partition, Committed { offset: r.new_offset, metadata: "reset".into() }))
                .collect();
            let (broker, by) = (self.clone(), caller.clone());
            let request =
                CommitOffsets { group: group.to_string(), member_id: String::new(), generation: 0, offsets: entries };
            tokio::task::spawn_blocking(move || broker.commit_offsets(&by, request))
                .await
                .map_err(|e| BrokerError::Internal(format!("commit task failed: {e}")))??;
            tracing::info!(group, topics = pattern, by = %caller, "reset group offsets");
        }
        Ok(resets)
    }

    pub async fn delete_group(self: &Arc<Self>, caller: &Caller, group: &str) -> Result<()> {
        self.check_running()?;
        self.require_no_live_members(group, "delete")?;
        let broker = self.clone();
        let name = group.to_string();
        let deleted = tokio::task::spawn_blocking(move || {
            broker.coordinator().offsets.delete_group(&name).map_err(|e| BrokerError::storage(OFFSETS_TOPIC, 0, e))
        })
        .await
        .map_err(|e| BrokerError::Internal(format!("delete task failed: {e}")))??;
        let existed = self.coordinator().lock().remove(group).is_some();
        if deleted == 0 && !existed {
            return Err(BrokerError::UnknownGroup(group.to_string()));
        }
        tracing::info!(group, by = %caller, "deleted group");
        Ok(())
    }

    /// A Subscribe stream that is a group membership: joins on open, streams
    /// the assigned partitions from their committed offsets (or `fallback`),
    /// follows rebalances, and leaves when the receiver is dropped.
    pub(super) fn subscribe_group(
        self: &Arc<Self>,
        caller: &Caller,
        pattern: String,
        group: String,
        (from, fallback): (Position, Position),
        delivery: Delivery,
    ) -> Result<mpsc::Receiver<Result<GroupStreamEvent>>> {
        let join =
            JoinGroup { group: group.clone(), member_id: String::new(), topic_pattern: pattern, session_timeout: None };
        let membership = self.join(caller, join, true)?;
        let (tx, rx) = mpsc::channel(4);
        let (broker, caller) = (self.clone(), caller.clone());
        tokio::spawn(async move {
            let member = membership.member_id.clone();
            run_group_stream(&broker, &caller, &group, &member, (from, fallback), delivery, tx).await;
            let _ = broker.leave_group(&caller, &group, &member);
        });
        Ok(rx)
    }

    fn generation_watch(&self, group: &str) -> Option<watch::Receiver<u64>> {
        self.coordinator().lock().get(group).map(|e| e.generation.subscribe())
    }

    /// Runs the coordinator's timer: session expiry and topic changes.
    pub(super) fn spawn_coordinator(self: &Arc<Self>, stop: watch::Receiver<bool>) {
        let this = self.clone();
        super::supervise::spawn_supervised("group coordinator", move || {
            let (this, mut stop) = (this.clone(), stop.clone());
            async move {
                let mut topics = this.watch_topics();
                let mut tick = tokio::time::interval(SESSION_EXPIRY_CHECK_INTERVAL);
                loop {
                    let changed = tokio::select! {
                        _ = tick.tick() => false,
                        r = topics.changed() => r.is_ok(),
                        _ = stop.wait_for(|s| *s) => return,
                    };
                    this.expire_members(changed);
                }
            }
        });
    }
}

/// Name used for the internal offsets log in errors.
pub const OFFSETS_TOPIC: &str = crate::group::offsets::DIR_NAME;

/// What a group Subscribe stream carries.
#[derive(Debug)]
pub struct GroupStreamEvent {
    pub member_id: String,
    pub generation: u64,
    pub assignment: Vec<TopicPartition>,
    pub records: Option<SubscriptionEvent>,
    /// The records' share of the stream's budget (see `budget.rs`).
    pub permit: BudgetPermit,
}

async fn run_group_stream(
    broker: &Arc<Broker>,
    caller: &Caller,
    group: &str,
    member: &str,
    (from, fallback): (Position, Position),
    delivery: Delivery,
    tx: mpsc::Sender<Result<GroupStreamEvent>>,
) {
    let Some(mut generation) = broker.generation_watch(group) else {
        return;
    };
    let mut stopping = broker.watch_stopping();
    let (records_tx, mut records_rx) = mpsc::channel::<SubscriptionItem>(4);
    let budget = broker.stream_budget();
    let mut tasks: HashMap<TopicPartition, tokio::task::JoinHandle<()>> = HashMap::new();
    // Next offset expected per partition: drops stale batches from a task
    // that was revoked while its batch sat in the channel.
    let mut cursor: HashMap<TopicPartition, u64> = HashMap::new();
    let mut membership: Option<Membership> = None;
    // Each pass of the loop heartbeats: the tick keeps an idle member's
    // last heartbeat current, so a live member and a dead one never look
    // the same in DescribeGroup.
    let mut heartbeat = tokio::time::interval(STREAM_HEARTBEAT_INTERVAL);
    heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut acl = broker.authorizer().watch();
    loop {
        generation.borrow_and_update();
        let current = match broker.heartbeat(caller, group, member) {
            Ok(m) => m,
            Err(e) => {
                let _ = tx.send(Err(e)).await;
                break;
            }
        };
        if membership.as_ref().is_none_or(|m| m.generation != current.generation) {
            let assigned: std::collections::HashSet<&TopicPartition> = current.assignment.iter().collect();
            tasks.retain(|tp, task| {
                let keep = assigned.contains(tp);
                if !keep {
                    task.abort();
                }
                keep
            });
            cursor.retain(|tp, _| assigned.contains(tp));
            for tp in &current.assignment {
                if tasks.contains_key(tp) {
                    continue;
                }
                // A member may be assigned topics of its pattern it may not
                // read (security on): it leaves with PERMISSION_DENIED, and
                // the group's other members take them over.
                let topic = crate::security::Resource::Topic(tp.0.clone());
                if let Err(e) = broker.authorizer().authorize(caller, crate::security::Operation::Consume, &topic) {
                    let _ = tx.send(Err(e)).await;
                    return;
                }
                let Ok(partition) = broker.partition(&tp.0, tp.1) else {
                    continue;
                };
                let start = match from {
                    Position::Committed => match broker.coordinator().offsets.get(group, &tp.0, tp.1) {
                        Some(c) => Position::Offset(c.offset.max(partition.log.log_start_offset())),
                        None => fallback,
                    },
                    other => other,
                };
                let start = match broker.resolve(&partition, start).await {
                    Ok(o) => o,
                    Err(e) => {
                        let _ = tx.send(Err(e)).await;
                        continue;
                    }
                };
                cursor.insert(tp.clone(), start);
                tasks.insert(
                    tp.clone(),
                    tokio::spawn(stream_partition(
                        broker.clone(),
                        partition,
                        Position::Offset(start),
                        delivery.clone(),
                        records_tx.clone(),
                        budget.clone(),
                    )),
                );
            }
            let event = GroupStreamEvent {
                member_id: member.to_string(),
                generation: current.generation,
                assignment: current.assignment.clone(),
                records: None,
                permit: BudgetPermit::none(),
            };
            if tx.send(Ok(event)).await.is_err() {
                break;
            }
            membership = Some(current);
        }
        let m = membership.as_ref().expect("set above");
        tokio::select! {
            _ = heartbeat.tick() => {}
            r = generation.changed() => if r.is_err() { break },
            _ = acl.changed() => {
                // Reloaded ACLs: the group and every assigned topic again.
                use crate::security::{Operation, Resource};
                let authorizer = broker.authorizer();
                let denied = authorizer.authorize(caller, Operation::Group, &Resource::Group(group.to_string())).err().or_else(|| {
                    m.assignment.iter().find_map(|tp| {
                        authorizer.authorize(caller, Operation::Consume, &Resource::Topic(tp.0.clone())).err()
                    })
                });
                if let Some(e) = denied {
                    let _ = tx.send(Err(e)).await;
                    break;
                }
            }
            item = records_rx.recv() => match item {
                Some(Ok((SubscriptionEvent::Assigned(_), _))) => {}
                Some(Ok((delivered, permit))) => {
                    let Some((topic, partition, first, next)) = delivered.span() else { continue };
                    let tp = (topic.to_string(), partition);
                    if cursor.get(&tp) != Some(&first) {
                        continue;
                    }
                    cursor.insert(tp, next);
                    let event = GroupStreamEvent {
                        member_id: member.to_string(),
                        generation: m.generation,
                        assignment: m.assignment.clone(),
                        records: Some(delivered),
                        permit,
                    };
                    if tx.send(Ok(event)).await.is_err() {
                        break;
                    }
                }
                Some(Err(e)) => {
                    let _ = tx.send(Err(e)).await;
                    break;
                }
                None => break,
            },
            _ = tx.closed() => break,
            _ = super::stopped(&mut stopping) => break,
        }
    }
    for task in tasks.values() {
        task.abort();
    }
}
