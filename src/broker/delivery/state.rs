//! One share group's state on one partition, as a pure state machine: no
//! I/O and no clock (`now_ms` is passed in), so every path is a unit test.
//!
//! The group holds a window of the partition's offsets, `[start, next)`:
//! below `start` every record is done (accepted, dead-lettered, or gone to
//! retention); from `next` on nothing has been delivered yet. Each offset in
//! the window that is not done has an [`Entry`]: acquired by a consumer
//! until a deadline, available for redelivery from a time on, or waiting to
//! be dead-lettered. An offset in the window without an entry is done, so
//! finished records cost no memory and `start` is the first entry's offset.
//! The window is at most `max.in.flight` records wide: a record that keeps
//! failing holds it until it is dead-lettered, never longer.
//!
//! Durability: every decision that must survive a crash is a [`Change`],
//! which the caller journals before it answers, and [`SharePartition::apply`]
//! is the only way state moves, for live operations and for replay alike.
//! Lock expiry is not journaled: it is a function of the journaled
//! deadline (a record released by expiry is available again at
//! `until + backoff`, whenever the expiry is noticed), so replaying the
//! journal and then calling [`SharePartition::expire`] gives the state the
//! live group had. After a crash, acquired records come back with their
//! delivery counts once their locks run out; accepted ones never do.

use std::collections::BTreeMap;
use std::time::Duration;

use super::config::ShareConfig;
use crate::config::SHARE_REASON_BYTES_MAX;

/// The reason a dead letter carries when its last lock ran out.
pub const ACK_TIMEOUT_REASON: &str = "ack timeout";

/// What a record in the window is waiting for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RecordState {
    /// Handed to a consumer, which holds it until `until_ms`.
    Acquired { until_ms: i64 },
    /// To be delivered again from `at_ms` on.
    Available { at_ms: i64 },
    /// Rejected or out of deliveries: the broker appends it to the
    /// dead-letter topic, then marks it done ([`Change::DeadLettered`]).
    Archiving { reason: String },
}

/// A record of the window that is not done.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// Times it was handed out (1 on first delivery).
    pub deliveries: u32,
    pub state: RecordState,
}

/// The outcome of an acknowledgement for one record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Settled {
    Done,
    Available { at_ms: i64 },
    Archiving { reason: String },
}

/// A state change that the journal keeps, in the order it happened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// Records handed out (new ones from `next` on, in order, and
    /// redeliveries), each acquired until `until_ms`.
    Acquired { offsets: Vec<u64>, until_ms: i64 },
    /// An acknowledgement (or a release) decided a record's next state.
    Settled { offset: u64, to: Settled },
    /// A record's dead letter is durable: the record is done.
    DeadLettered { offset: u64 },
    /// The log start moved to `log_start`: records below it are gone.
    Truncated { log_start: u64 },
}

/// How a consumer acknowledges a record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AckKind {
    Accept,
    Release,
    Reject,
}

/// One acknowledgement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ack {
    pub kind: AckKind,
    /// RELEASE only: deliver again after this, instead of the group's backoff.
    pub delay: Option<Duration>,
    /// Kept as `dlq.reason` if the record ends up dead-lettered.
    pub reason: Option<String>,
}

/// Why an acknowledgement was refused: the group does not hold the record
/// acquired (so nothing changed).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NotAcquired {
    #[error("offset {offset} is done already (below the group's start offset {start} or acknowledged)")]
    Done { offset: u64, start: u64 },
    #[error("offset {offset} has not been delivered to the group yet (next to deliver: {next})")]
    NotDelivered { offset: u64, next: u64 },
    #[error("the lock on offset {offset} ran out at {until_ms} (ack.wait.ms); it will be delivered again")]
    LockExpired { offset: u64, until_ms: i64 },
    #[error("offset {offset} is not acquired: it waits for redelivery")]
    Available { offset: u64 },
    #[error("offset {offset} is not acquired: it is being dead-lettered")]
    Archiving { offset: u64 },
}

/// A record handed out by [`SharePartition::acquire`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Delivery {
    pub offset: u64,
    pub deliveries: u32,
}

/// What a fetch would hand out: due redeliveries, then new offsets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    pub redeliver: Vec<u64>,
    pub new: std::ops::Range<u64>,
}

impl Plan {
    pub fn is_empty(&self) -> bool {
        self.redeliver.is_empty() && self.new.is_empty()
    }
}

/// Counts for `DescribeShareGroup`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Summary {
    pub start_offset: u64,
    pub next_offset: u64,
    pub acquired: u64,
    pub available: u64,
    pub archiving: u64,
    pub dead_lettered_total: u64,
    /// Records retention deleted while they were in the window.
    pub dropped_total: u64,
}

/// A share group's state on one partition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SharePartition {
    /// Every offset below is done.
    start: u64,
    /// The next offset never delivered.
    next: u64,
    /// The window's records that are not done, by offset.
    entries: BTreeMap<u64, Entry>,
    /// Records dead-lettered since the group began.
    dead_lettered: u64,
    /// Records of the window that retention deleted before they were done.
    dropped: u64,
}

/// Cuts a reason to [`SHARE_REASON_BYTES_MAX`] at a char boundary.
fn bounded_reason(reason: &str) -> String {
    let mut end = reason.len().min(SHARE_REASON_BYTES_MAX);
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    reason[..end].to_string()
}

fn ms(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

impl SharePartition {
    /// A group that starts reading at `start` (nothing delivered yet).
    pub fn new(start: u64) -> SharePartition {
        SharePartition { start, next: start, entries: BTreeMap::new(), dead_lettered: 0, dropped: 0 }
    }

    /// Rebuilds a state from a snapshot's parts (see [`SharePartition::parts`]).
    /// Entries outside `[start, next)` are dropped.
    pub fn from_parts(
        start: u64,
        next: u64,
        entries: impl IntoIterator<Item = (u64, Entry)>,
        dead_lettered: u64,
        dropped: u64,
    ) -> SharePartition {
        let next = next.max(start);
        let entries = entries.into_iter().filter(|(o, _)| (start..next).contains(o)).collect();
        let mut s = SharePartition { start, next, entries, dead_lettered, dropped };
        s.advance();
        s
    }

    /// What a snapshot stores: start, next, entries, dead-lettered and
    /// dropped totals.
    pub fn parts(&self) -> (u64, u64, &BTreeMap<u64, Entry>, u64, u64) {
        (self.start, self.next, &self.entries, self.dead_lettered, self.dropped)
    }

    pub fn start(&self) -> u64 {
        self.start
    }

    pub fn next(&self) -> u64 {
        self.next
    }

    pub fn entry(&self, offset: u64) -> Option<&Entry> {
        self.entries.get(&offset)
    }

    fn advance(&mut self) {
        self.start = self.entries.first_key_value().map_or(self.next, |(o, _)| *o);
    }

    /// Applies a journaled change. Live operations go through here too, so
    /// replaying the journal rebuilds the same state.
    pub fn apply(&mut self, change: &Change) {
        match change {
            Change::Acquired { offsets, until_ms } => {
                for &offset in offsets {
                    if offset < self.start {
                        continue;
                    }
                    if offset >= self.next {
                        self.next = offset + 1;
                    }
                    let entry = self
                        .entries
                        .entry(offset)
                        .or_insert(Entry { deliveries: 0, state: RecordState::Available { at_ms: 0 } });
                    entry.deliveries = entry.deliveries.saturating_add(1);
                    entry.state = RecordState::Acquired { until_ms: *until_ms };
                }
            }
            Change::Settled { offset, to } => {
                let state = match to {
                    Settled::Done => {
                        self.entries.remove(offset);
                        self.advance();
                        return;
                    }
                    Settled::Available { at_ms } => RecordState::Available { at_ms: *at_ms },
                    Settled::Archiving { reason } => RecordState::Archiving { reason: reason.clone() },
                };
                if let Some(entry) = self.entries.get_mut(offset) {
                    entry.state = state;
                }
            }
            Change::DeadLettered { offset } => {
                if self.entries.remove(offset).is_some() {
                    self.dead_lettered += 1;
                    self.advance();
                }
            }
            Change::Truncated { log_start } => {
                if *log_start <= self.start {
                    return;
                }
                let kept = self.entries.split_off(log_start);
                self.dropped += self.entries.len() as u64;
                self.entries = kept;
                self.next = self.next.max(*log_start);
                self.advance();
            }
        }
    }

    /// Releases every record whose lock ran out by `now_ms`, as a RELEASE
    /// with the group's backoff (counted from the deadline, so the result
    /// does not depend on when this runs), or to the dead-letter topic once
    /// it has had `max.deliveries`. Returns the offsets that went to the
    /// dead-letter queue.
    pub fn expire(&mut self, now_ms: i64, config: &ShareConfig) -> Vec<u64> {
        let mut archived = Vec::new();
        for (offset, entry) in self.entries.iter_mut() {
            let RecordState::Acquired { until_ms } = entry.state else { continue };
            if until_ms > now_ms {
                continue;
            }
            entry.state = if entry.deliveries >= config.max_deliveries {
                archived.push(*offset);
                RecordState::Archiving { reason: ACK_TIMEOUT_REASON.to_string() }
            } else {
                RecordState::Available { at_ms: until_ms.saturating_add(ms(config.backoff_after(entry.deliveries))) }
            };
        }
        archived
    }

    /// What [`SharePartition::acquire`] would hand out at `now_ms`, oldest
    /// first: redeliveries that are due, then new records below
    /// `high_watermark` while the window stays within `max.in.flight`, up
    /// to `max_records` in all. Expires locks first; hands out nothing.
    pub fn plan(&mut self, now_ms: i64, max_records: usize, high_watermark: u64, config: &ShareConfig) -> Plan {
        self.expire(now_ms, config);
        let redeliver: Vec<u64> = self
            .entries
            .iter()
            .filter(|(_, e)| matches!(e.state, RecordState::Available { at_ms } if at_ms <= now_ms))
            .map(|(o, _)| *o)
            .take(max_records)
            .collect();
        let window_end = self.start.saturating_add(u64::from(config.max_in_flight)).min(high_watermark);
        let fresh = window_end.saturating_sub(self.next).min((max_records - redeliver.len()) as u64);
        Plan { redeliver, new: self.next..self.next + fresh }
    }

    /// Hands out exactly `offsets` (a plan's, as far as the log had them),
    /// each acquired until `now_ms + ack.wait.ms`. An offset no longer due
    /// (another fetch took it) or not the next new one is skipped. Returns
    /// the change to journal, or none if nothing was handed out.
    pub fn acquire_offsets(
        &mut self,
        now_ms: i64,
        offsets: &[u64],
        config: &ShareConfig,
    ) -> Option<(Change, Vec<Delivery>)> {
        let window_end = self.start.saturating_add(u64::from(config.max_in_flight));
        let mut next = self.next;
        let mut taken = Vec::with_capacity(offsets.len());
        for &offset in offsets {
            let due = match self.entries.get(&offset) {
                Some(e) => matches!(e.state, RecordState::Available { at_ms } if at_ms <= now_ms),
                None => offset == next && offset < window_end,
            };
            if due {
                taken.push(offset);
                next = next.max(offset + 1);
            }
        }
        if taken.is_empty() {
            return None;
        }
        let change = Change::Acquired { offsets: taken, until_ms: now_ms.saturating_add(ms(config.ack_wait)) };
        self.apply(&change);
        let Change::Acquired { offsets, .. } = &change else { unreachable!() };
        let deliveries =
            offsets.iter().map(|&offset| Delivery { offset, deliveries: self.entries[&offset].deliveries });
        let deliveries = deliveries.collect();
        Some((change, deliveries))
    }

    /// Hands out everything [`SharePartition::plan`] finds.
    pub fn acquire(
        &mut self,
        now_ms: i64,
        max_records: usize,
        high_watermark: u64,
        config: &ShareConfig,
    ) -> Option<(Change, Vec<Delivery>)> {
        let plan = self.plan(now_ms, max_records, high_watermark, config);
        let offsets: Vec<u64> = plan.redeliver.into_iter().chain(plan.new).collect();
        self.acquire_offsets(now_ms, &offsets, config)
    }

    /// Settles one acquired record. Refused (and nothing changed) unless the
    /// group holds it acquired at `now_ms`.
    pub fn acknowledge(
        &mut self,
        offset: u64,
        ack: &Ack,
        now_ms: i64,
        config: &ShareConfig,
    ) -> Result<Change, NotAcquired> {
        let Some(entry) = self.entries.get(&offset) else {
            return Err(if offset >= self.next {
                NotAcquired::NotDelivered { offset, next: self.next }
            } else {
                NotAcquired::Done { offset, start: self.start }
            });
        };
        match entry.state {
            RecordState::Acquired { until_ms } if until_ms <= now_ms => {
                return Err(NotAcquired::LockExpired { offset, until_ms })
            }
            RecordState::Acquired { .. } => {}
            RecordState::Available { .. } => return Err(NotAcquired::Available { offset }),
            RecordState::Archiving { .. } => return Err(NotAcquired::Archiving { offset }),
        }
        let reason = || bounded_reason(ack.reason.as_deref().unwrap_or_default());
        let to = match ack.kind {
            AckKind::Accept => Settled::Done,
            AckKind::Reject => Settled::Archiving { reason: reason() },
            AckKind::Release if entry.deliveries >= config.max_deliveries => Settled::Archiving { reason: reason() },
            AckKind::Release => {
                let delay = ack.delay.unwrap_or_else(|| config.backoff_after(entry.deliveries));
                Settled::Available { at_ms: now_ms.saturating_add(ms(delay)) }
            }
        };
        let change = Change::Settled { offset, to };
        self.apply(&change);
        Ok(change)
    }

    /// Records waiting to be dead-lettered: offset, deliveries, reason.
    pub fn archiving(&self) -> Vec<(u64, u32, String)> {
        let it = self.entries.iter().filter_map(|(o, e)| match &e.state {
            RecordState::Archiving { reason } => Some((*o, e.deliveries, reason.clone())),
            _ => None,
        });
        it.collect()
    }

    /// Marks a record done once its dead letter is durable.
    pub fn dead_lettered(&mut self, offset: u64) -> Option<Change> {
        let archiving = matches!(self.entries.get(&offset), Some(Entry { state: RecordState::Archiving { .. }, .. }));
        archiving.then(|| {
            let change = Change::DeadLettered { offset };
            self.apply(&change);
            change
        })
    }

    /// Forgets records below the log start offset (deleted by retention).
    /// Returns the change and how many undone records it dropped.
    pub fn truncate(&mut self, log_start: u64) -> Option<(Change, u64)> {
        if log_start <= self.start {
            return None;
        }
        let dropped = self.entries.range(..log_start).count() as u64;
        let change = Change::Truncated { log_start };
        self.apply(&change);
        Some((change, dropped))
    }

    /// The earliest time after `now_ms` at which a lock runs out or a
    /// released record becomes due: when a waiting fetch should look again.
    pub fn next_due(&self, now_ms: i64) -> Option<i64> {
        let due = self.entries.values().filter_map(|e| match e.state {
            RecordState::Acquired { until_ms } => Some(until_ms),
            RecordState::Available { at_ms } => Some(at_ms),
            RecordState::Archiving { .. } => None,
        });
        due.filter(|&t| t > now_ms).min()
    }

    pub fn summary(&self) -> Summary {
        let mut s = Summary {
            start_offset: self.start,
            next_offset: self.next,
            dead_lettered_total: self.dead_lettered,
            dropped_total: self.dropped,
            ..Summary::default()
        };
        for e in self.entries.values() {
            match e.state {
                RecordState::Acquired { .. } => s.acquired += 1,
                RecordState::Available { .. } => s.available += 1,
                RecordState::Archiving { .. } => s.archiving += 1,
            }
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> ShareConfig {
        ShareConfig {
            ack_wait: Duration::from_millis(1000),
            max_deliveries: 3,
            backoff: vec![Duration::from_millis(100), Duration::from_millis(500)],
            max_in_flight: 10,
            ..ShareConfig::default()
        }
    }

    fn ack(kind: AckKind) -> Ack {
        Ack { kind, delay: None, reason: Some(format!("{kind:?} by test")) }
    }

    fn offsets(d: &[Delivery]) -> Vec<u64> {
        d.iter().map(|d| d.offset).collect()
    }

    #[test]
    fn hands_out_oldest_first_within_the_window_and_never_twice_while_acquired() {
        let c = config();
        let mut s = SharePartition::new(5);
        let (_, got) = s.acquire(0, 4, 100, &c).unwrap();
        assert_eq!(offsets(&got), [5, 6, 7, 8]);
        assert!(got.iter().all(|d| d.deliveries == 1));
        let (_, got) = s.acquire(0, 100, 100, &c).unwrap();
        assert_eq!(offsets(&got), (9..15).collect::<Vec<_>>(), "max.in.flight 10 bounds the window");
        assert_eq!(s.acquire(1, 100, 100, &c), None, "all held");
        s.acknowledge(5, &ack(AckKind::Accept), 2, &c).unwrap();
        let (_, got) = s.acquire(3, 100, 100, &c).unwrap();
        assert_eq!(offsets(&got), [15], "accepting the oldest moves the window by one");
        assert_eq!(s.start(), 6);
    }

    #[test]
    fn acquiring_a_plan_skips_what_another_fetch_took_meanwhile() {
        let c = config();
        let mut s = SharePartition::new(0);
        let plan = s.plan(0, 3, 100, &c);
        assert_eq!(plan, Plan { redeliver: vec![], new: 0..3 });
        s.acquire(0, 2, 100, &c).unwrap(); // another fetch takes 0 and 1
        let (_, got) = s.acquire_offsets(0, &[0, 1, 2], &c).unwrap();
        assert_eq!(offsets(&got), [2]);
        assert_eq!(s.acquire_offsets(0, &[5], &c), None, "not the next new offset");
    }

    #[test]
    fn stops_at_the_high_watermark() {
        let c = config();
        let mut s = SharePartition::new(0);
        assert_eq!(s.acquire(0, 100, 0, &c), None);
        let (_, got) = s.acquire(0, 100, 3, &c).unwrap();
        assert_eq!(offsets(&got), [0, 1, 2]);
    }

    #[test]
    fn release_redelivers_after_backoff_with_a_higher_count_then_dead_letters() {
        let c = config();
        let mut s = SharePartition::new(0);
        s.acquire(0, 1, 1, &c).unwrap();
        s.acknowledge(0, &ack(AckKind::Release), 10, &c).unwrap();
        assert_eq!(s.acquire(109, 10, 1, &c), None, "backoff after delivery 1 is 100 ms");
        let (_, got) = s.acquire(110, 10, 1, &c).unwrap();
        assert_eq!(got, [Delivery { offset: 0, deliveries: 2 }]);
        s.acknowledge(0, &ack(AckKind::Release), 200, &c).unwrap();
        assert_eq!(s.acquire(699, 10, 1, &c), None, "backoff after delivery 2 is 500 ms");
        let (_, got) = s.acquire(700, 10, 1, &c).unwrap();
        assert_eq!(got, [Delivery { offset: 0, deliveries: 3 }]);
        let change = s.acknowledge(0, &ack(AckKind::Release), 800, &c).unwrap();
        assert_eq!(change, Change::Settled { offset: 0, to: Settled::Archiving { reason: "Release by test".into() } });
        assert_eq!(s.archiving(), [(0, 3, "Release by test".to_string())]);
        assert_eq!(s.acquire(10_000, 10, 1, &c), None, "a record being dead-lettered is never handed out");
        assert_eq!(s.start(), 0, "it holds the window until its dead letter is durable");
        s.dead_lettered(0).unwrap();
        assert_eq!((s.start(), s.summary().dead_lettered_total), (1, 1));
        assert_eq!(s.dead_lettered(0), None);
    }

    #[test]
    fn release_with_a_delay_overrides_the_backoff_and_reject_dead_letters_at_once() {
        let c = config();
        let mut s = SharePartition::new(0);
        s.acquire(0, 2, 2, &c).unwrap();
        let delayed = Ack { kind: AckKind::Release, delay: Some(Duration::from_millis(5000)), reason: None };
        s.acknowledge(0, &delayed, 0, &c).unwrap();
        s.acknowledge(1, &ack(AckKind::Reject), 0, &c).unwrap();
        assert_eq!(s.acquire(4999, 10, 2, &c), None);
        assert_eq!(offsets(&s.acquire(5000, 10, 2, &c).unwrap().1), [0]);
        assert_eq!(s.archiving(), [(1, 1, "Reject by test".to_string())]);
    }

    #[test]
    fn an_expired_lock_releases_from_its_deadline_and_refuses_the_late_ack() {
        let c = config();
        let mut s = SharePartition::new(0);
        s.acquire(0, 1, 1, &c).unwrap(); // locked until 1000
        let late = s.acknowledge(0, &ack(AckKind::Accept), 1000, &c);
        assert_eq!(late, Err(NotAcquired::LockExpired { offset: 0, until_ms: 1000 }));
        // Noticed late or early, the record is due at deadline + backoff.
        let mut early = s.clone();
        early.expire(1000, &c);
        s.expire(1050, &c);
        assert_eq!(s, early);
        assert_eq!(s.entry(0).unwrap().state, RecordState::Available { at_ms: 1100 });
        assert_eq!(s.next_due(1000), Some(1100));
    }

    #[test]
    fn the_last_expiry_dead_letters_with_ack_timeout() {
        let c = config();
        let mut s = SharePartition::new(0);
        let mut now = 0;
        for delivery in 1..=3 {
            let (_, got) = s.acquire(now, 1, 1, &c).unwrap();
            assert_eq!(got[0].deliveries, delivery);
            now += 2000;
        }
        assert_eq!(s.expire(now, &c), [0]);
        assert_eq!(s.archiving(), [(0, 3, ACK_TIMEOUT_REASON.to_string())]);
    }

    #[test]
    fn acks_on_records_not_held_are_refused_and_change_nothing() {
        let c = config();
        let mut s = SharePartition::new(10);
        s.acquire(0, 2, 20, &c).unwrap();
        s.acknowledge(10, &ack(AckKind::Accept), 1, &c).unwrap();
        s.acknowledge(11, &ack(AckKind::Release), 1, &c).unwrap();
        let before = s.clone();
        let a = ack(AckKind::Accept);
        assert_eq!(s.acknowledge(10, &a, 2, &c), Err(NotAcquired::Done { offset: 10, start: 11 }));
        assert_eq!(s.acknowledge(3, &a, 2, &c), Err(NotAcquired::Done { offset: 3, start: 11 }));
        assert_eq!(s.acknowledge(12, &a, 2, &c), Err(NotAcquired::NotDelivered { offset: 12, next: 12 }));
        assert_eq!(s.acknowledge(11, &a, 2, &c), Err(NotAcquired::Available { offset: 11 }));
        assert_eq!(s, before);
    }

    #[test]
    fn retention_drops_undone_records_and_counts_them() {
        let c = config();
        let mut s = SharePartition::new(0);
        s.acquire(0, 5, 100, &c).unwrap();
        s.acknowledge(1, &ack(AckKind::Accept), 1, &c).unwrap();
        let (_, dropped) = s.truncate(3).unwrap();
        assert_eq!(dropped, 2, "0 and 2 were in flight; 1 was done");
        assert_eq!((s.start(), s.next(), s.summary().dropped_total), (3, 5, 2));
        let (_, dropped) = s.truncate(50).unwrap();
        assert_eq!(dropped, 2);
        assert_eq!((s.start(), s.next()), (50, 50), "records never delivered are skipped, not counted");
        assert_eq!(s.truncate(20), None);
        assert_eq!(s.acknowledge(3, &ack(AckKind::Accept), 2, &c), Err(NotAcquired::Done { offset: 3, start: 50 }));
    }

    #[test]
    fn reasons_are_bounded_at_a_char_boundary() {
        let c = config();
        let mut s = SharePartition::new(0);
        s.acquire(0, 1, 1, &c).unwrap();
        let long = Ack { kind: AckKind::Reject, delay: None, reason: Some("é".repeat(SHARE_REASON_BYTES_MAX)) };
        s.acknowledge(0, &long, 0, &c).unwrap();
        let reason = &s.archiving()[0].2;
        assert!(reason.len() <= SHARE_REASON_BYTES_MAX && reason.chars().all(|c| c == 'é'));
    }

    mod model {
        use super::*;
        use proptest::prelude::*;

        #[derive(Debug, Clone)]
        enum Op {
            Acquire(usize),
            Ack(u64, AckKind),
            DeadLetterAll,
            Truncate(u64),
            Produce(u64),
            Tick(i64),
        }

        fn op() -> impl Strategy<Value = Op> {
            let kind = prop_oneof![Just(AckKind::Accept), Just(AckKind::Release), Just(AckKind::Reject)];
            prop_oneof![
                4 => (1usize..8).prop_map(Op::Acquire),
                6 => (0u64..40, kind).prop_map(|(o, k)| Op::Ack(o, k)),
                1 => Just(Op::DeadLetterAll),
                1 => (0u64..40).prop_map(Op::Truncate),
                2 => (1u64..6).prop_map(Op::Produce),
                3 => (1i64..1500).prop_map(Op::Tick),
            ]
        }

        proptest! {
            /// Against any sequence of operations: replaying the journaled
            /// changes (then expiring) rebuilds the live state; an accepted
            /// or dead-lettered record is never handed out again; nothing is
            /// handed out twice while acquired; the window stays bounded.
            #[test]
            fn replay_rebuilds_state_and_done_records_stay_done(ops in proptest::collection::vec(op(), 1..120)) {
                let c = config();
                let mut live = SharePartition::new(0);
                let mut journal = Vec::new();
                let (mut now, mut hw) = (0i64, 10u64);
                let mut done = std::collections::BTreeSet::new();
                let mut held: BTreeMap<u64, i64> = BTreeMap::new();
                for op in ops {
                    match op {
                        Op::Acquire(n) => {
                            if let Some((change, got)) = live.acquire(now, n, hw, &c) {
                                for d in &got {
                                    prop_assert!(!done.contains(&d.offset), "done offset {} handed out", d.offset);
                                    if let Some(until) = held.get(&d.offset) {
                                        prop_assert!(*until <= now, "offset {} handed out while held", d.offset);
                                    }
                                    held.insert(d.offset, now + 1000);
                                }
                                journal.push(change);
                            }
                        }
                        Op::Ack(offset, kind) => {
                            if let Ok(change) = live.acknowledge(offset, &ack(kind), now, &c) {
                                held.remove(&offset);
                                if kind == AckKind::Accept {
                                    done.insert(offset);
                                }
                                journal.push(change);
                            }
                        }
                        Op::DeadLetterAll => {
                            live.expire(now, &c);
                            for (offset, _, _) in live.archiving() {
                                journal.push(live.dead_lettered(offset).unwrap());
                                done.insert(offset);
                            }
                        }
                        Op::Truncate(to) => {
                            let to = to.min(hw);
                            if let Some((change, _)) = live.truncate(to) {
                                done.extend(0..to);
                                journal.push(change);
                            }
                        }
                        Op::Produce(n) => hw += n,
                        Op::Tick(ms) => now += ms,
                    }
                    prop_assert!(live.next() - live.start() <= u64::from(c.max_in_flight));
                    prop_assert!(live.entries.keys().all(|o| (live.start()..live.next()).contains(o)));
                }
                let mut replayed = SharePartition::new(0);
                for change in &journal {
                    replayed.apply(change);
                }
                live.expire(now, &c);
                replayed.expire(now, &c);
                prop_assert_eq!(replayed, live);
            }
        }
    }
}
