//! Kafka's classic consumer groups (JoinGroup/SyncGroup, client-side
//! assignment) beside strata's own (server-side assignment, `groups.rs`):
//! the same committed offsets, and a group is held by one protocol at a
//! time. Drives the pure state machine in [`crate::group::classic`] and
//! hands its completions to the JoinGroup and SyncGroup calls waiting for
//! them. The lock is never held across `.await`.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{Mutex, MutexGuard};

use bytes::Bytes;
use tokio::sync::oneshot;

use super::{names, Broker, BrokerError, Caller, CommitOffsets, Result};
use crate::group::classic::{ClassicError, ClassicGroup, Completion, Join, Joined, Step};
use crate::group::offsets::Committed;
use crate::group::TopicPartition;

type Waiter<T> = oneshot::Sender<std::result::Result<T, ClassicError>>;

#[derive(Debug, Default)]
struct Entry {
    state: ClassicGroup,
    joins: HashMap<String, Waiter<Joined>>,
    syncs: HashMap<String, Waiter<Bytes>>,
}

impl Entry {
    fn deliver(&mut self, completions: Vec<Completion>) {
        for c in completions {
            match c {
                Completion::Join(id, r) => {
                    if let Some(w) = self.joins.remove(&id) {
                        let _ = w.send(r);
                    }
                }
                Completion::Sync(id, r) => {
                    if let Some(w) = self.syncs.remove(&id) {
                        let _ = w.send(r);
                    }
                }
            }
        }
    }
}

/// The classic groups, by name.
#[derive(Debug, Default)]
pub struct ClassicGroups {
    groups: Mutex<HashMap<String, Entry>>,
}

impl ClassicGroups {
    fn lock(&self) -> MutexGuard<'_, HashMap<String, Entry>> {
        self.groups.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Live members of a classic group (0 if none or unknown).
    pub fn members(&self, group: &str) -> usize {
        self.lock().get(group).map_or(0, |e| e.state.members.len())
    }
}

/// Why a classic group call failed: the group protocol's own refusals, or
/// the broker's.
#[derive(Debug)]
pub enum ClassicCallError {
    Group(ClassicError),
    Broker(BrokerError),
}

impl From<BrokerError> for ClassicCallError {
    fn from(e: BrokerError) -> Self {
        ClassicCallError::Broker(e)
    }
}

impl From<ClassicError> for ClassicCallError {
    fn from(e: ClassicError) -> Self {
        ClassicCallError::Group(e)
    }
}

type ClassicResult<T> = std::result::Result<T, ClassicCallError>;

/// A classic member as DescribeGroups shows it.
#[derive(Debug, Clone)]
pub struct ClassicMemberInfo {
    pub member_id: String,
    pub client_id: String,
    pub client_host: String,
    pub metadata: Bytes,
    pub assignment: Bytes,
    pub last_heartbeat_ms: i64,
    pub session_timeout_ms: u64,
}

#[derive(Debug, Clone)]
pub struct ClassicGroupInfo {
    pub state: &'static str,
    pub generation: i32,
    pub protocol_type: String,
    pub protocol: String,
    pub members: Vec<ClassicMemberInfo>,
}

/// The partitions a `consumer`-protocol assignment names (empty if it is
/// not one).
pub fn consumer_assignment(bytes: &Bytes) -> Vec<TopicPartition> {
    use kafka_protocol::protocol::Decodable;
    let mut buf = bytes.clone();
    if buf.len() < 2 {
        return Vec::new();
    }
    let version = i16::from_be_bytes([buf[0], buf[1]]);
    bytes::Buf::advance(&mut buf, 2);
    let Ok(a) = kafka_protocol::messages::ConsumerProtocolAssignment::decode(&mut buf, version.clamp(0, 3)) else {
        return Vec::new();
    };
    a.assigned_partitions
        .iter()
        .flat_map(|t| t.partitions.iter().map(move |p| (t.topic.to_string(), (*p).max(0) as u32)))
        .collect()
}

impl Broker {
    fn classic(&self) -> &ClassicGroups {
        &self.groups.classic
    }

    /// Refuses a Kafka member for a group strata's own protocol holds.
    fn check_not_held_by_grpc(&self, group: &str) -> Result<()> {
        let members = self.live_grpc_members(group);
        if members > 0 {
            return Err(BrokerError::GroupInOtherProtocol {
                group: group.to_string(),
                held_by: "strata (gRPC)",
                members,
            });
        }
        Ok(())
    }

    /// JoinGroup: waits until the rebalance completes.
    pub async fn classic_join(&self, caller: &Caller, group: &str, join: Join) -> ClassicResult<Joined> {
        self.check_running()?;
        names::validate("group", group, false)?;
        self.check_not_held_by_grpc(group)?;
        if join.session_timeout_ms < crate::config::SESSION_TIMEOUT_MIN.as_millis() as u64
            || join.session_timeout_ms > crate::config::SESSION_TIMEOUT_MAX.as_millis() as u64
        {
            return Err(ClassicError::InvalidSessionTimeout.into());
        }
        let now = self.clock.now_ms();
        let rx = {
            let mut groups = self.classic().lock();
            let entry = groups.entry(group.to_string()).or_default();
            let mut made = None;
            let next = &self.groups.next_member;
            let client_id = join.client_id.clone();
            let given = join.member_id.clone();
            let (step, completions) = entry.state.join(now, join, || {
                let n = next.fetch_add(1, Ordering::Relaxed);
                let id = format!("{}-{n}-{now:x}", if client_id.is_empty() { "member" } else { client_id.as_str() });
                made = Some(id.clone());
                id
            });
            let id = if given.is_empty() { made.unwrap_or_default() } else { given };
            let rx = match step {
                Step::Reply(r) => {
                    entry.deliver(completions);
                    return r.map_err(Into::into);
                }
                Step::Wait => {
                    let (tx, rx) = oneshot::channel();
                    entry.joins.insert(id.clone(), tx);
                    rx
                }
            };
            entry.deliver(completions);
            tracing::info!(group, member = %id, by = %caller, "kafka member joining");
            rx
        };
        self.await_group(rx).await
    }

    async fn await_group<T>(&self, rx: oneshot::Receiver<std::result::Result<T, ClassicError>>) -> ClassicResult<T> {
        let mut stopping = self.watch_stopping();
        tokio::select! {
            r = rx => match r {
                Ok(r) => r.map_err(Into::into),
                // Replaced by a newer call of the same member.
                Err(_) => Err(ClassicError::RebalanceInProgress.into()),
            },
            _ = super::stopped(&mut stopping) => Err(BrokerError::ShuttingDown.into()),
        }
    }

    /// SyncGroup: the leader's assignments in, each member's out.
    pub async fn classic_sync(
        &self,
        _caller: &Caller,
        group: &str,
        member_id: &str,
        generation: i32,
        assignments: Vec<(String, Bytes)>,
    ) -> ClassicResult<Bytes> {
        self.check_running()?;
        let now = self.clock.now_ms();
        let rx = {
            let mut groups = self.classic().lock();
            let entry = groups.get_mut(group).ok_or(ClassicError::UnknownMember)?;
            let (step, completions) = entry.state.sync(now, member_id, generation, assignments);
            entry.deliver(completions);
            match step {
                Step::Reply(r) => {
                    if r.is_ok() && entry.state.leader.as_deref() == Some(member_id) {
                        tracing::info!(group, generation, members = entry.state.members.len(), "kafka group stable");
                    }
                    return r.map_err(Into::into);
                }
                Step::Wait => {
                    let (tx, rx) = oneshot::channel();
                    entry.syncs.insert(member_id.to_string(), tx);
                    rx
                }
            }
        };
        self.await_group(rx).await
    }

    pub fn classic_heartbeat(&self, group: &str, member_id: &str, generation: i32) -> ClassicResult<()> {
        self.check_running()?;
        let now = self.clock.now_ms();
        let mut groups = self.classic().lock();
        let entry = groups.get_mut(group).ok_or(ClassicError::UnknownMember)?;
        Ok(entry.state.heartbeat(now, member_id, generation)?)
    }

    pub fn classic_leave(&self, caller: &Caller, group: &str, member_id: &str) -> ClassicResult<()> {
        let now = self.clock.now_ms();
        let mut groups = self.classic().lock();
        let entry = groups.get_mut(group).ok_or(ClassicError::UnknownMember)?;
        let completions = entry.state.leave(now, member_id)?;
        entry.joins.remove(member_id);
        entry.syncs.remove(member_id);
        entry.deliver(completions);
        tracing::info!(group, member = member_id, by = %caller, "kafka member left");
        Ok(())
    }

    /// Session expiry and rebalance deadlines of every classic group.
    pub(super) fn tick_classic_groups(&self) {
        let now = self.clock.now_ms();
        let mut groups = self.classic().lock();
        for (name, entry) in groups.iter_mut() {
            let (expired, completions) = entry.state.tick(now);
            for m in &expired {
                tracing::info!(group = %name, member = %m, "kafka member session expired");
                entry.joins.remove(m);
                entry.syncs.remove(m);
            }
            entry.deliver(completions);
        }
        // A group with an id handed out for a first join is kept: its
        // client is about to join with it.
        groups.retain(|_, e| !e.state.is_idle() || !e.joins.is_empty());
    }

    /// OffsetCommit from a Kafka client: fenced by the classic group's
    /// member and generation; a "simple" commit (generation < 0, no member)
    /// needs a group with no live members of either protocol.
    pub fn classic_commit(
        &self,
        caller: &Caller,
        group: &str,
        member_id: &str,
        generation: i32,
        offsets: Vec<(String, u32, Committed)>,
    ) -> ClassicResult<()> {
        self.check_running()?;
        names::validate("group", group, false)?;
        let live = {
            let groups = self.classic().lock();
            match groups.get(group) {
                Some(e) if !e.state.is_empty() => {
                    e.state.check_commit(member_id, generation)?;
                    true
                }
                _ => false,
            }
        };
        if live {
            return Ok(self.store_offsets(group, &offsets)?);
        }
        if generation >= 0 || !member_id.is_empty() {
            return Err(ClassicError::UnknownMember.into());
        }
        let request = CommitOffsets { group: group.to_string(), member_id: String::new(), generation: 0, offsets };
        Ok(self.commit_offsets(caller, request)?)
    }

    /// Every classic group with live members: (name, state, protocol type).
    pub fn classic_groups(&self) -> Vec<(String, &'static str, String)> {
        let groups = self.classic().lock();
        groups
            .iter()
            .filter(|(_, e)| !e.state.is_empty())
            .map(|(n, e)| (n.clone(), e.state.state_name(), e.state.protocol_type.clone().unwrap_or_default()))
            .collect()
    }

    pub fn describe_classic_group(&self, group: &str) -> Option<ClassicGroupInfo> {
        let groups = self.classic().lock();
        let e = groups.get(group).filter(|e| !e.state.is_empty())?;
        let protocol = e.state.protocol.clone().unwrap_or_default();
        let members = e
            .state
            .members
            .values()
            .map(|m| ClassicMemberInfo {
                member_id: m.id.clone(),
                client_id: m.client_id.clone(),
                client_host: m.client_host.clone(),
                metadata: m.protocols.iter().find(|(n, _)| *n == protocol).map(|(_, b)| b.clone()).unwrap_or_default(),
                assignment: m.assignment.clone(),
                last_heartbeat_ms: m.last_heartbeat_ms,
                session_timeout_ms: m.session_timeout_ms,
            })
            .collect();
        Some(ClassicGroupInfo {
            state: e.state.state_name(),
            generation: e.state.generation,
            protocol_type: e.state.protocol_type.clone().unwrap_or_default(),
            protocol,
            members,
        })
    }
}
