//! Kafka's classic consumer group protocol (JoinGroup / SyncGroup /
//! Heartbeat / LeaveGroup, client-side assignment) as a pure state machine:
//! no tokio, no clock of its own. Calls that must wait (a JoinGroup until
//! every member has rejoined, a follower's SyncGroup until the leader sent
//! the assignment) return `Wait`; the answers come later as [`Completion`]s
//! from the call or tick that completed them, and the coordinator hands
//! them to the waiting connections.
//!
//! States as in Kafka: Empty -> PreparingRebalance -> CompletingRebalance ->
//! Stable. A join (or leave, or expiry) starts a rebalance; it completes
//! when every known member has rejoined or the largest rebalance timeout
//! passes (members that did not rejoin are removed). The generation grows
//! by one per completed rebalance; the first member to join is the leader
//! and receives every member's metadata to compute the assignment.

use std::collections::{BTreeMap, BTreeSet};

use bytes::Bytes;

/// Why a group call is refused, as Kafka names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClassicError {
    UnknownMember,
    IllegalGeneration {
        current: i32,
    },
    RebalanceInProgress,
    /// The member's protocol type or protocols do not match the group's.
    InconsistentProtocol(String),
    /// First join of a new member: rejoin with this id (KIP-394).
    MemberIdRequired(String),
    InvalidSessionTimeout,
}

/// A JoinGroup as the state machine needs it.
#[derive(Debug, Clone)]
pub struct Join {
    /// Empty on a member's first join.
    pub member_id: String,
    pub client_id: String,
    pub client_host: String,
    pub session_timeout_ms: u64,
    pub rebalance_timeout_ms: u64,
    pub protocol_type: String,
    /// (name, metadata), in the member's order of preference.
    pub protocols: Vec<(String, Bytes)>,
    /// The client rejoins with the id it is given (JoinGroup v4+).
    pub requires_known_member_id: bool,
}

/// A completed JoinGroup.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Joined {
    pub generation: i32,
    pub protocol_type: String,
    pub protocol: String,
    pub leader: String,
    pub member_id: String,
    /// Every member's (id, metadata) for the leader; empty for the others.
    pub members: Vec<(String, Bytes)>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Completion {
    Join(String, Result<Joined, ClassicError>),
    Sync(String, Result<Bytes, ClassicError>),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step<T> {
    Reply(Result<T, ClassicError>),
    /// The answer comes as a completion.
    Wait,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    Empty,
    PreparingRebalance { deadline_ms: i64 },
    CompletingRebalance,
    Stable,
}

#[derive(Debug, Clone)]
pub struct ClassicMember {
    pub id: String,
    pub client_id: String,
    pub client_host: String,
    pub session_timeout_ms: u64,
    pub rebalance_timeout_ms: u64,
    pub protocols: Vec<(String, Bytes)>,
    pub last_heartbeat_ms: i64,
    /// Its assignment in the current generation (from the leader's SyncGroup).
    pub assignment: Bytes,
    /// Rejoined in the rebalance under way (its JoinGroup is waiting).
    awaiting_join: bool,
    /// Its SyncGroup is waiting for the leader's.
    awaiting_sync: bool,
}

#[derive(Debug, Clone)]
pub struct ClassicGroup {
    pub phase: Phase,
    pub generation: i32,
    pub protocol_type: Option<String>,
    pub protocol: Option<String>,
    pub leader: Option<String>,
    pub members: BTreeMap<String, ClassicMember>,
    /// Ids handed out with MEMBER_ID_REQUIRED, not yet joined: id -> when.
    pending: BTreeMap<String, i64>,
    /// Order members joined in (the leader is the first still present).
    join_order: Vec<String>,
}

impl Default for ClassicGroup {
    fn default() -> Self {
        ClassicGroup {
            phase: Phase::Empty,
            generation: 0,
            protocol_type: None,
            protocol: None,
            leader: None,
            members: BTreeMap::new(),
            pending: BTreeMap::new(),
            join_order: Vec::new(),
        }
    }
}

/// Member ids handed out with MEMBER_ID_REQUIRED and not yet used, per group.
const PENDING_MAX: usize = 1000;
/// How long such an id stays good (the client rejoins at once).
const PENDING_TTL_MS: i64 = 60_000;

impl ClassicGroup {
    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }

    /// No members and no ids waiting to be used: nothing to keep.
    pub fn is_idle(&self) -> bool {
        self.members.is_empty() && self.pending.is_empty()
    }

    pub fn state_name(&self) -> &'static str {
        match self.phase {
            Phase::Empty => "Empty",
            Phase::PreparingRebalance { .. } => "PreparingRebalance",
            Phase::CompletingRebalance => "CompletingRebalance",
            Phase::Stable => "Stable",
        }
    }

    /// The protocols every member supports, given the members' lists.
    fn common_protocols<'a>(lists: impl Iterator<Item = &'a [(String, Bytes)]>) -> Option<BTreeSet<String>> {
        let mut common: Option<BTreeSet<String>> = None;
        for list in lists {
            let names: BTreeSet<String> = list.iter().map(|(n, _)| n.clone()).collect();
            common = Some(match common {
                None => names,
                Some(c) => c.intersection(&names).cloned().collect(),
            });
        }
        common
    }

    /// A member joins (or rejoins). `new_id` makes an id for a new member.
    pub fn join(&mut self, now: i64, join: Join, new_id: impl FnOnce() -> String) -> (Step<Joined>, Vec<Completion>) {
        if join.protocols.is_empty() {
            return (
                Step::Reply(Err(ClassicError::InconsistentProtocol("JoinGroup lists no protocols".into()))),
                vec![],
            );
        }
        if let Some(t) = self.protocol_type.as_ref().filter(|_| !self.members.is_empty()) {
            if *t != join.protocol_type {
                let why = format!("the group's protocol type is {t:?}, the member's {:?}", join.protocol_type);
                return (Step::Reply(Err(ClassicError::InconsistentProtocol(why))), vec![]);
            }
        }
        let others = self.members.values().filter(|m| m.id != join.member_id).map(|m| m.protocols.as_slice());
        if let Some(common) = Self::common_protocols(others.chain(std::iter::once(join.protocols.as_slice()))) {
            if common.is_empty() {
                let theirs: Vec<&str> = join.protocols.iter().map(|(n, _)| n.as_str()).collect();
                let why =
                    format!("none of the member's protocols {theirs:?} is supported by every member of the group");
                return (Step::Reply(Err(ClassicError::InconsistentProtocol(why))), vec![]);
            }
        }
        let id = if join.member_id.is_empty() {
            let id = new_id();
            if join.requires_known_member_id {
                // Bounded: a client that floods first joins pushes out its
                // own oldest ids, not the broker's memory.
                if self.pending.len() >= PENDING_MAX {
                    if let Some(oldest) = self.pending.iter().min_by_key(|(_, at)| **at).map(|(id, _)| id.clone()) {
                        self.pending.remove(&oldest);
                    }
                }
                self.pending.insert(id.clone(), now);
                return (Step::Reply(Err(ClassicError::MemberIdRequired(id))), vec![]);
            }
            id
        } else if self.members.contains_key(&join.member_id) || self.pending.remove(&join.member_id).is_some() {
            join.member_id.clone()
        } else {
            return (Step::Reply(Err(ClassicError::UnknownMember)), vec![]);
        };
        let mut completions = Vec::new();
        // A follower of a stable group rejoining with what it had: answer
        // with the current generation, no rebalance (as Kafka does).
        if let (Phase::Stable, Some(m)) = (self.phase, self.members.get(&id)) {
            if self.leader.as_deref() != Some(id.as_str()) && m.protocols == join.protocols {
                let joined = self.joined_for(&id);
                return (Step::Reply(Ok(joined)), completions);
            }
        }
        let assignment = self.members.get(&id).map(|m| m.assignment.clone()).unwrap_or_default();
        if !self.join_order.contains(&id) {
            self.join_order.push(id.clone());
        }
        self.protocol_type = Some(join.protocol_type.clone());
        self.members.insert(
            id.clone(),
            ClassicMember {
                id: id.clone(),
                client_id: join.client_id,
                client_host: join.client_host,
                session_timeout_ms: join.session_timeout_ms,
                rebalance_timeout_ms: join.rebalance_timeout_ms,
                protocols: join.protocols,
                last_heartbeat_ms: now,
                assignment,
                awaiting_join: true,
                awaiting_sync: false,
            },
        );
        self.prepare_rebalance(now, &mut completions);
        self.try_complete_join(now, &mut completions);
        // The completion for this member (if the join completed at once)
        // is its reply; the coordinator treats both alike.
        (Step::Wait, completions)
    }

    /// Enters PreparingRebalance (if not there already): pending SyncGroups
    /// are answered REBALANCE_IN_PROGRESS.
    fn prepare_rebalance(&mut self, now: i64, completions: &mut Vec<Completion>) {
        if matches!(self.phase, Phase::PreparingRebalance { .. }) {
            return;
        }
        for m in self.members.values_mut() {
            if m.awaiting_sync {
                m.awaiting_sync = false;
                completions.push(Completion::Sync(m.id.clone(), Err(ClassicError::RebalanceInProgress)));
            }
        }
        let timeout = self.members.values().map(|m| m.rebalance_timeout_ms).max().unwrap_or(0) as i64;
        self.phase = Phase::PreparingRebalance { deadline_ms: now + timeout };
    }

    /// Completes the rebalance once every member rejoined (or, with
    /// `force`, removes the ones that did not).
    fn complete_join(&mut self, now: i64, force: bool, completions: &mut Vec<Completion>) {
        if !matches!(self.phase, Phase::PreparingRebalance { .. }) {
            return;
        }
        if !force && self.members.values().any(|m| !m.awaiting_join) {
            return;
        }
        self.members.retain(|_, m| m.awaiting_join);
        self.join_order.retain(|id| self.members.contains_key(id));
        self.generation += 1;
        if self.members.is_empty() {
            self.phase = Phase::Empty;
            self.protocol = None;
            self.leader = None;
            return;
        }
        self.protocol = Some(self.choose_protocol());
        let leader = match self.leader.clone().filter(|l| self.members.contains_key(l)) {
            Some(l) => l,
            None => self.join_order.first().cloned().unwrap_or_default(),
        };
        self.leader = Some(leader);
        self.phase = Phase::CompletingRebalance;
        let ids: Vec<String> = self.members.keys().cloned().collect();
        for id in ids {
            let m = self.members.get_mut(&id).expect("member");
            m.awaiting_join = false;
            m.last_heartbeat_ms = now;
            m.assignment = Bytes::new();
            completions.push(Completion::Join(id.clone(), Ok(self.joined_for(&id))));
        }
    }

    fn try_complete_join(&mut self, now: i64, completions: &mut Vec<Completion>) {
        self.complete_join(now, false, completions)
    }

    /// Kafka's vote: each member votes for its most preferred protocol that
    /// every member supports; the most votes win (ties: by name).
    fn choose_protocol(&self) -> String {
        let common = Self::common_protocols(self.members.values().map(|m| m.protocols.as_slice())).unwrap_or_default();
        let mut votes: BTreeMap<&str, usize> = BTreeMap::new();
        for m in self.members.values() {
            if let Some((name, _)) = m.protocols.iter().find(|(n, _)| common.contains(n)) {
                *votes.entry(name.as_str()).or_default() += 1;
            }
        }
        let best = votes.values().copied().max().unwrap_or(0);
        votes.into_iter().find(|(_, v)| *v == best).map(|(n, _)| n.to_string()).unwrap_or_default()
    }

    fn joined_for(&self, id: &str) -> Joined {
        let protocol = self.protocol.clone().unwrap_or_default();
        let leader = self.leader.clone().unwrap_or_default();
        let members = if leader == id {
            self.members
                .values()
                .map(|m| {
                    let meta = m.protocols.iter().find(|(n, _)| *n == protocol).map(|(_, b)| b.clone());
                    (m.id.clone(), meta.unwrap_or_default())
                })
                .collect()
        } else {
            Vec::new()
        };
        Joined {
            generation: self.generation,
            protocol_type: self.protocol_type.clone().unwrap_or_default(),
            protocol,
            leader,
            member_id: id.to_string(),
            members,
        }
    }

    fn check_member(&self, member_id: &str, generation: i32) -> Result<(), ClassicError> {
        if !self.members.contains_key(member_id) {
            return Err(ClassicError::UnknownMember);
        }
        if generation != self.generation {
            return Err(ClassicError::IllegalGeneration { current: self.generation });
        }
        Ok(())
    }

    /// SyncGroup: the leader brings every member's assignment.
    pub fn sync(
        &mut self,
        now: i64,
        member_id: &str,
        generation: i32,
        assignments: Vec<(String, Bytes)>,
    ) -> (Step<Bytes>, Vec<Completion>) {
        if let Err(e) = self.check_member(member_id, generation) {
            return (Step::Reply(Err(e)), vec![]);
        }
        let mut completions = Vec::new();
        match self.phase {
            Phase::Empty | Phase::PreparingRebalance { .. } => {
                (Step::Reply(Err(ClassicError::RebalanceInProgress)), completions)
            }
            Phase::Stable => {
                let a = self.members[member_id].assignment.clone();
                (Step::Reply(Ok(a)), completions)
            }
            Phase::CompletingRebalance => {
                if let Some(m) = self.members.get_mut(member_id) {
                    m.last_heartbeat_ms = now;
                }
                if self.leader.as_deref() != Some(member_id) {
                    self.members.get_mut(member_id).expect("member").awaiting_sync = true;
                    return (Step::Wait, completions);
                }
                let mut given: BTreeMap<String, Bytes> = assignments.into_iter().collect();
                for m in self.members.values_mut() {
                    m.assignment = given.remove(&m.id).unwrap_or_default();
                    if m.awaiting_sync {
                        m.awaiting_sync = false;
                        completions.push(Completion::Sync(m.id.clone(), Ok(m.assignment.clone())));
                    }
                }
                self.phase = Phase::Stable;
                let a = self.members[member_id].assignment.clone();
                (Step::Reply(Ok(a)), completions)
            }
        }
    }

    pub fn heartbeat(&mut self, now: i64, member_id: &str, generation: i32) -> Result<(), ClassicError> {
        let Some(m) = self.members.get_mut(member_id) else {
            return Err(ClassicError::UnknownMember);
        };
        m.last_heartbeat_ms = now;
        match self.phase {
            Phase::PreparingRebalance { .. } => Err(ClassicError::RebalanceInProgress),
            _ if generation != self.generation => Err(ClassicError::IllegalGeneration { current: self.generation }),
            _ => Ok(()),
        }
    }

    /// A member leaves; the others rebalance.
    pub fn leave(&mut self, now: i64, member_id: &str) -> Result<Vec<Completion>, ClassicError> {
        if self.members.remove(member_id).is_none() {
            return Err(ClassicError::UnknownMember);
        }
        self.join_order.retain(|id| id != member_id);
        let mut completions = Vec::new();
        self.rebalance_after_removal(now, &mut completions);
        Ok(completions)
    }

    fn rebalance_after_removal(&mut self, now: i64, completions: &mut Vec<Completion>) {
        if self.members.is_empty() {
            // Nobody to wait for: the group is empty.
            self.prepare_rebalance(now, completions);
            self.complete_join(now, true, completions);
            return;
        }
        self.prepare_rebalance(now, completions);
        self.try_complete_join(now, completions);
    }

    /// Session expiry and rebalance deadlines.
    pub fn tick(&mut self, now: i64) -> (Vec<String>, Vec<Completion>) {
        let mut completions = Vec::new();
        self.pending.retain(|_, at| now - *at < PENDING_TTL_MS);
        let expired: Vec<String> = self
            .members
            .values()
            .filter(|m| !m.awaiting_join && now - m.last_heartbeat_ms > m.session_timeout_ms as i64)
            .map(|m| m.id.clone())
            .collect();
        for id in &expired {
            self.members.remove(id);
            self.join_order.retain(|j| j != id);
        }
        if !expired.is_empty() {
            self.rebalance_after_removal(now, &mut completions);
        }
        if let Phase::PreparingRebalance { deadline_ms } = self.phase {
            if now >= deadline_ms {
                self.complete_join(now, true, &mut completions);
            }
        }
        (expired, completions)
    }

    /// Whether an OffsetCommit with this member and generation may commit
    /// (Kafka's rules: a simple commit needs an empty group).
    pub fn check_commit(&self, member_id: &str, generation: i32) -> Result<(), ClassicError> {
        if generation < 0 && member_id.is_empty() {
            return if self.members.is_empty() { Ok(()) } else { Err(ClassicError::UnknownMember) };
        }
        if self.phase == Phase::CompletingRebalance {
            return Err(ClassicError::RebalanceInProgress);
        }
        self.check_member(member_id, generation)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn join(id: &str, protocols: &[&str]) -> Join {
        Join {
            member_id: id.to_string(),
            client_id: "c".into(),
            client_host: "/127.0.0.1".into(),
            session_timeout_ms: 10_000,
            rebalance_timeout_ms: 30_000,
            protocol_type: "consumer".into(),
            protocols: protocols.iter().map(|p| (p.to_string(), Bytes::from(format!("meta-{p}")))).collect(),
            requires_known_member_id: true,
        }
    }

    fn joined_of(completions: &[Completion], id: &str) -> Joined {
        completions
            .iter()
            .find_map(|c| match c {
                Completion::Join(m, Ok(j)) if m == id => Some(j.clone()),
                _ => None,
            })
            .unwrap_or_else(|| panic!("no join completion for {id}: {completions:?}"))
    }

    /// Joins a new member through MEMBER_ID_REQUIRED; returns its id and the completions.
    fn join_new(g: &mut ClassicGroup, now: i64, name: &str, protocols: &[&str]) -> (String, Vec<Completion>) {
        let (step, _) = g.join(now, join("", protocols), || name.to_string());
        let Step::Reply(Err(ClassicError::MemberIdRequired(id))) = step else { panic!("{step:?}") };
        let (step, completions) = g.join(now, join(&id, protocols), || unreachable!());
        assert_eq!(step, Step::Wait);
        (id, completions)
    }

    #[test]
    fn one_member_joins_syncs_and_is_stable() {
        let mut g = ClassicGroup::default();
        let (a, c) = join_new(&mut g, 0, "a", &["range", "roundrobin"]);
        let j = joined_of(&c, &a);
        assert_eq!((j.generation, j.leader.as_str(), j.protocol.as_str()), (1, "a", "range"));
        assert_eq!(j.members, vec![("a".to_string(), Bytes::from("meta-range"))]);
        let (step, _) = g.sync(1, &a, 1, vec![("a".into(), Bytes::from("A"))]);
        assert_eq!(step, Step::Reply(Ok(Bytes::from("A"))));
        assert_eq!(g.phase, Phase::Stable);
        assert_eq!(g.heartbeat(2, &a, 1), Ok(()));
        assert_eq!(g.heartbeat(2, &a, 0), Err(ClassicError::IllegalGeneration { current: 1 }));
    }

    #[test]
    fn a_second_member_makes_the_first_rejoin_and_the_follower_waits_for_the_leader() {
        let mut g = ClassicGroup::default();
        let (a, _) = join_new(&mut g, 0, "a", &["range"]);
        g.sync(0, &a, 1, vec![]);
        let (b, c) = join_new(&mut g, 10, "b", &["range"]);
        assert!(c.is_empty(), "b waits for a to rejoin: {c:?}");
        assert_eq!(g.heartbeat(20, &a, 1), Err(ClassicError::RebalanceInProgress));
        let (step, c) = g.join(30, join(&a, &["range"]), || unreachable!());
        assert_eq!(step, Step::Wait);
        let (ja, jb) = (joined_of(&c, &a), joined_of(&c, &b));
        assert_eq!((ja.generation, jb.generation), (2, 2));
        assert_eq!(ja.leader, a);
        assert_eq!(ja.members.len(), 2);
        assert!(jb.members.is_empty());
        // The follower's sync waits; the leader's answers both.
        assert_eq!(g.sync(40, &b, 2, vec![]).0, Step::Wait);
        let (step, c) = g.sync(50, &a, 2, vec![(a.clone(), "pa".into()), (b.clone(), "pb".into())]);
        assert_eq!(step, Step::Reply(Ok(Bytes::from("pa"))));
        assert_eq!(c, vec![Completion::Sync(b.clone(), Ok(Bytes::from("pb")))]);
    }

    #[test]
    fn members_that_do_not_rejoin_in_time_are_dropped() {
        let mut g = ClassicGroup::default();
        let (a, _) = join_new(&mut g, 0, "a", &["range"]);
        g.sync(0, &a, 1, vec![]);
        let (b, c) = join_new(&mut g, 1000, "b", &["range"]);
        assert!(c.is_empty());
        let (_, c) = g.tick(1000 + 30_000);
        assert_eq!(joined_of(&c, &b).leader, b);
        assert!(!g.members.contains_key(&a));
    }

    #[test]
    fn session_expiry_and_leave_rebalance_the_rest() {
        let mut g = ClassicGroup::default();
        let (a, _) = join_new(&mut g, 0, "a", &["range"]);
        let (b, _) = join_new(&mut g, 0, "b", &["range"]);
        let (_, c) = g.join(0, join(&a, &["range"]), || unreachable!());
        assert_eq!(joined_of(&c, &b).generation, 2);
        let (expired, _) = g.tick(5_000);
        assert!(expired.is_empty());
        g.heartbeat(9_000, &a, 2).unwrap();
        let (expired, c) = g.tick(10_500);
        assert_eq!(expired, vec![b.clone()]);
        assert!(c.is_empty(), "{c:?}");
        // The one left learns of the rebalance from its heartbeat and rejoins alone.
        assert_eq!(g.heartbeat(10_600, &a, 2), Err(ClassicError::RebalanceInProgress));
        let (_, c) = g.join(10_700, join(&a, &["range"]), || unreachable!());
        assert_eq!(joined_of(&c, &a).generation, 3);
        let c = g.leave(11_000, &a).unwrap();
        assert!(c.is_empty());
        assert_eq!(g.phase, Phase::Empty);
        assert_eq!(g.check_commit("", -1), Ok(()));
    }

    #[test]
    fn inconsistent_protocols_and_unknown_members_are_refused() {
        let mut g = ClassicGroup::default();
        let (a, _) = join_new(&mut g, 0, "a", &["range"]);
        let (step, _) = g.join(0, join("", &["cooperative-sticky"]), || "x".into());
        assert!(matches!(step, Step::Reply(Err(ClassicError::InconsistentProtocol(_)))), "{step:?}");
        let (step, _) = g.join(0, join("nobody", &["range"]), || "x".into());
        assert_eq!(step, Step::Reply(Err(ClassicError::UnknownMember)));
        assert_eq!(g.check_commit("", -1), Err(ClassicError::UnknownMember));
        assert_eq!(g.check_commit(&a, 0), Err(ClassicError::RebalanceInProgress));
    }

    #[test]
    fn ids_handed_out_for_a_first_join_are_bounded_and_expire() {
        let mut g = ClassicGroup::default();
        let mut n = 0;
        for _ in 0..PENDING_MAX + 10 {
            n += 1;
            g.join(n, join("", &["range"]), || format!("m{n}"));
        }
        assert_eq!(g.pending.len(), PENDING_MAX);
        assert!(!g.pending.contains_key("m1"), "the oldest went first");
        assert!(!g.is_idle());
        g.tick(n + PENDING_TTL_MS);
        assert!(g.is_idle());
    }

    #[test]
    fn the_vote_picks_the_protocol_most_members_prefer() {
        let mut g = ClassicGroup::default();
        let (a, _) = join_new(&mut g, 0, "a", &["roundrobin", "range"]);
        let (b, _) = join_new(&mut g, 0, "b", &["range", "roundrobin"]);
        let (c, _) = join_new(&mut g, 0, "c", &["range", "roundrobin"]);
        let (_, done) = g.join(0, join(&a, &["roundrobin", "range"]), || unreachable!());
        let _ = (b, c);
        assert_eq!(joined_of(&done, &a).protocol, "range");
    }
}
