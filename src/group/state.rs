//! One group's membership as a pure state machine: events (join, heartbeat,
//! leave, expiry, new partitions) with the current time in, a new
//! generation and assignment out. No clocks, locks or I/O here, so every
//! timeout case is a plain unit test.

use std::collections::BTreeMap;

use super::assignor;
use super::TopicPartition;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    pub id: String,
    pub topic_pattern: String,
    pub session_timeout_ms: u64,
    pub last_heartbeat_ms: i64,
    /// Held by an open Subscribe stream: alive while the stream is, no expiry.
    pub held_by_stream: bool,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GroupState {
    /// Bumped whenever membership or assignment changes.
    pub generation: u64,
    pub members: BTreeMap<String, Member>,
    pub assignment: BTreeMap<String, Vec<TopicPartition>>,
    /// Every partition the members' patterns cover, at the last rebalance.
    pub partitions: Vec<TopicPartition>,
}

impl GroupState {
    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }

    /// Adds (or updates) a member; the caller rebalances afterwards.
    pub fn join(&mut self, member: Member) {
        self.members.insert(member.id.clone(), member);
    }

    /// Records a heartbeat; false when the member is not in the group.
    pub fn heartbeat(&mut self, member_id: &str, now_ms: i64) -> bool {
        match self.members.get_mut(member_id) {
            Some(m) => {
                m.last_heartbeat_ms = now_ms;
                true
            }
            None => false,
        }
    }

    pub fn leave(&mut self, member_id: &str) -> bool {
        self.members.remove(member_id).is_some()
    }

    /// Removes members whose session timed out; returns their ids.
    pub fn expire(&mut self, now_ms: i64) -> Vec<String> {
        let expired: Vec<String> = self
            .members
            .values()
            .filter(|m| !m.held_by_stream && now_ms - m.last_heartbeat_ms > m.session_timeout_ms as i64)
            .map(|m| m.id.clone())
            .collect();
        for id in &expired {
            self.members.remove(id);
        }
        expired
    }

    /// Recomputes the assignment over `partitions`; bumps the generation if
    /// membership or assignment changed. Returns whether it did.
    pub fn rebalance(
        &mut self,
        partitions: Vec<TopicPartition>,
        eligible: impl Fn(&str, &TopicPartition) -> bool,
    ) -> bool {
        let ids: Vec<String> = self.members.keys().cloned().collect();
        let next =
            assignor::assign(&ids, &partitions, &self.assignment, |m, tp| eligible(&self.members[m].topic_pattern, tp));
        let changed = next != self.assignment || partitions != self.partitions;
        if changed {
            self.generation += 1;
            self.assignment = next;
            self.partitions = partitions;
        }
        changed
    }

    pub fn assignment_of(&self, member_id: &str) -> Vec<TopicPartition> {
        self.assignment.get(member_id).cloned().unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn member(id: &str, now: i64) -> Member {
        Member {
            id: id.into(),
            topic_pattern: "t".into(),
            session_timeout_ms: 1000,
            last_heartbeat_ms: now,
            held_by_stream: false,
        }
    }

    fn parts() -> Vec<TopicPartition> {
        (0..4).map(|p| ("t".to_string(), p)).collect()
    }

    #[test]
    fn join_leave_and_expiry_rebalance_with_new_generations() {
        let mut g = GroupState::default();
        g.join(member("a", 0));
        assert!(g.rebalance(parts(), |_, _| true));
        assert_eq!((g.generation, g.assignment_of("a").len()), (1, 4));
        g.join(member("b", 0));
        assert!(g.rebalance(parts(), |_, _| true));
        assert_eq!((g.generation, g.assignment_of("a").len(), g.assignment_of("b").len()), (2, 2, 2));
        // a keeps heartbeating, b goes silent past its session timeout.
        assert!(g.heartbeat("a", 900));
        assert!(g.expire(1500).contains(&"b".to_string()));
        assert!(g.rebalance(parts(), |_, _| true));
        assert_eq!((g.generation, g.assignment_of("a").len()), (3, 4));
        assert!(!g.heartbeat("b", 1600), "an expired member is unknown");
        // Nothing changed: same generation.
        assert!(!g.rebalance(parts(), |_, _| true));
        assert_eq!(g.generation, 3);
        assert!(g.leave("a"));
        assert!(g.rebalance(parts(), |_, _| true));
        assert!(g.is_empty());
    }

    #[test]
    fn stream_members_do_not_expire() {
        let mut g = GroupState::default();
        g.join(Member { held_by_stream: true, ..member("s", 0) });
        assert!(g.expire(1_000_000).is_empty());
    }
}
