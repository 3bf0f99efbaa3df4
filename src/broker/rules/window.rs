//! The windows of one alert rule, as pure code with the clock passed in:
//! matching records go in (`observe`), alerts come out; BELOW rules are
//! also asked on a timer (`tick`).
//!
//! A window keeps at most `threshold` hits, the newest, sorted by
//! timestamp: enough to tell "at least threshold within window_ms" and
//! "fewer than threshold", so its memory is bounded by the rule, not by the
//! traffic. After an alert the window starts empty and the rule stays quiet
//! for `cooldown_ms`. An alert's id is the rule, the group and the first
//! timestamp it counted: a window rebuilt from the log after a restart
//! yields the same id, so the engine can tell an alert it already published.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::Arc;

use serde_json::json;

use super::rule::{Condition, Rule, GROUP_VALUES_MAX};

/// Samples an alert carries at most.
pub const SAMPLES_MAX: usize = 10;

/// A matching record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hit {
    pub timestamp_ms: i64,
    pub topic: Arc<str>,
    pub partition: u32,
    pub offset: u64,
}

/// An alert to publish.
#[derive(Debug, Clone, PartialEq)]
pub struct Alert {
    /// `rule/group/first timestamp`: the same for the same window after a restart.
    pub id: String,
    pub rule: String,
    pub condition: Condition,
    /// The `group_by` value, when the rule has one.
    pub group: Option<String>,
    pub count: u64,
    pub threshold: u64,
    pub window_ms: u64,
    pub first_timestamp_ms: i64,
    pub last_timestamp_ms: i64,
    pub topics: Vec<String>,
    pub samples: Vec<Hit>,
}

impl Alert {
    /// The alert record's JSON value, as the contract gives it.
    pub fn to_json(&self) -> serde_json::Value {
        let samples: Vec<_> = self
            .samples
            .iter()
            .map(|h| json!({"topic": &*h.topic, "partition": h.partition, "offset": h.offset}))
            .collect();
        let mut v = json!({
            "rule": self.rule, "condition": self.condition.name(), "count": self.count,
            "threshold": self.threshold, "window_ms": self.window_ms,
            "first_timestamp_ms": self.first_timestamp_ms, "last_timestamp_ms": self.last_timestamp_ms,
            "topics": self.topics, "samples": samples,
        });
        if let Some(g) = &self.group {
            v["group"] = json!(g);
        }
        v
    }
}

/// One window (one per `group_by` value).
#[derive(Debug, Clone, Default)]
struct Window {
    /// The newest hits, at most `threshold`, oldest first.
    hits: VecDeque<Hit>,
    last_fired_ms: Option<i64>,
    /// The newest timestamp the last alert counted: hits up to it are not
    /// counted again (a window rebuilt after a restart meets them again).
    counted_until_ms: Option<i64>,
    /// When counting began: a BELOW rule fires only on a full window.
    since_ms: i64,
}

impl Window {
    fn evict(&mut self, now_ms: i64, window_ms: u64) {
        let floor = now_ms.saturating_sub(window_ms as i64);
        while self.hits.front().is_some_and(|h| h.timestamp_ms <= floor) {
            self.hits.pop_front();
        }
    }

    fn cooling(&self, now_ms: i64, cooldown_ms: u64) -> bool {
        self.last_fired_ms.is_some_and(|t| now_ms < t.saturating_add(cooldown_ms as i64))
    }
}

/// Every window of one rule.
#[derive(Debug, Clone)]
pub struct RuleWindows {
    pub rule: Rule,
    windows: BTreeMap<String, Window>,
    /// When the rule started counting (creation, or the rebuild's start).
    since_ms: i64,
    /// `group_by` values refused for want of room (said once).
    overflowed: bool,
    pub fired_total: u64,
}

impl RuleWindows {
    pub fn new(rule: Rule, since_ms: i64) -> RuleWindows {
        RuleWindows { rule, windows: BTreeMap::new(), since_ms, overflowed: false, fired_total: 0 }
    }

    /// Restores when the rule last fired for `group` and the newest
    /// timestamp that alert counted (read back from the alert topic after
    /// a restart), so the cooldown holds across it and what it counted is
    /// not counted again.
    pub fn restore_fired(&mut self, group: &str, fired_ms: i64, counted_until_ms: i64) {
        let since = self.since_ms;
        let w =
            self.windows.entry(group.to_string()).or_insert_with(|| Window { since_ms: since, ..Window::default() });
        w.last_fired_ms = Some(w.last_fired_ms.map_or(fired_ms, |t| t.max(fired_ms)));
        w.counted_until_ms = Some(w.counted_until_ms.map_or(counted_until_ms, |t| t.max(counted_until_ms)));
        w.hits.retain(|h| h.timestamp_ms > counted_until_ms);
    }

    /// Counts a matching record in `group`'s window; returns the alert if
    /// an AT_LEAST rule crosses its threshold. False in the second place
    /// when the group could not get a window (over `GROUP_VALUES_MAX`),
    /// the first time only.
    pub fn observe(&mut self, group: &str, hit: Hit, now_ms: i64) -> (Option<Alert>, bool) {
        let since = self.since_ms;
        if !self.windows.contains_key(group) && self.windows.len() >= GROUP_VALUES_MAX {
            let first = !self.overflowed;
            self.overflowed = true;
            return (None, first);
        }
        let (threshold, window_ms) = (self.rule.threshold as usize, self.rule.window_ms);
        let w =
            self.windows.entry(group.to_string()).or_insert_with(|| Window { since_ms: since, ..Window::default() });
        // Older than the window, or counted by (or older than) the last
        // alert: a window rebuilt after a restart skips what that alert
        // counted, as the live window did when it fired.
        if hit.timestamp_ms <= now_ms.saturating_sub(window_ms as i64)
            || w.counted_until_ms.is_some_and(|t| hit.timestamp_ms <= t)
        {
            return (None, false);
        }
        let at = w.hits.partition_point(|h| h.timestamp_ms <= hit.timestamp_ms);
        w.hits.insert(at, hit);
        if w.hits.len() > threshold {
            w.hits.pop_front();
        }
        w.evict(now_ms, window_ms);
        if self.rule.condition != Condition::AtLeast
            || w.hits.len() < threshold
            || w.cooling(now_ms, self.rule.cooldown_ms)
        {
            return (None, false);
        }
        let alert = fire(&self.rule, group, w, now_ms, w.hits.len() as u64);
        self.fired_total += 1;
        (Some(alert), false)
    }

    /// For BELOW rules: the alerts of windows that are full and hold fewer
    /// than `threshold` hits. Without `group_by` the one window exists from
    /// the start; with it, only values seen once can fall silent.
    pub fn tick(&mut self, now_ms: i64) -> Vec<Alert> {
        if self.rule.condition != Condition::Below {
            return Vec::new();
        }
        if self.rule.group_by.is_none() && self.windows.is_empty() {
            self.windows.insert(String::new(), Window { since_ms: self.since_ms, ..Window::default() });
        }
        let mut out = Vec::new();
        for (group, w) in self.windows.iter_mut() {
            w.evict(now_ms, self.rule.window_ms);
            let full = now_ms.saturating_sub(w.since_ms) >= self.rule.window_ms as i64;
            if full && (w.hits.len() as u64) < self.rule.threshold && !w.cooling(now_ms, self.rule.cooldown_ms) {
                let count = w.hits.len() as u64;
                out.push(fire(&self.rule, group, w, now_ms, count));
            }
        }
        self.fired_total += out.len() as u64;
        out
    }

    /// Matching records in the window now (all groups), for DescribeAlertRule.
    pub fn current_count(&mut self, now_ms: i64) -> u64 {
        let window_ms = self.rule.window_ms;
        self.windows
            .values_mut()
            .map(|w| {
                w.evict(now_ms, window_ms);
                w.hits.len() as u64
            })
            .sum()
    }

    /// When the rule last fired, in any group.
    pub fn last_fired_ms(&self) -> Option<i64> {
        self.windows.values().filter_map(|w| w.last_fired_ms).max()
    }
}

/// Builds the alert of window `w` and starts the window again.
fn fire(rule: &Rule, group: &str, w: &mut Window, now_ms: i64, count: u64) -> Alert {
    let first = w.hits.front().map_or(now_ms.saturating_sub(rule.window_ms as i64), |h| h.timestamp_ms);
    let last = w.hits.back().map_or(now_ms, |h| h.timestamp_ms);
    let topics: BTreeSet<String> = w.hits.iter().map(|h| h.topic.to_string()).collect();
    let samples = w.hits.iter().take(SAMPLES_MAX).cloned().collect();
    // A BELOW alert counts no record: its window is identified by its end.
    let anchor = if rule.condition == Condition::Below { now_ms } else { first };
    let alert = Alert {
        id: format!("{}/{}/{}", rule.name, group, anchor),
        rule: rule.name.clone(),
        condition: rule.condition,
        group: rule.group_by.as_ref().map(|_| group.to_string()),
        count,
        threshold: rule.threshold,
        window_ms: rule.window_ms,
        first_timestamp_ms: first,
        last_timestamp_ms: last,
        topics: topics.into_iter().collect(),
        samples,
    };
    if rule.condition == Condition::AtLeast {
        w.counted_until_ms = Some(last);
    }
    w.hits.clear();
    w.last_fired_ms = Some(now_ms);
    w.since_ms = now_ms;
    alert
}

#[cfg(test)]
mod tests {
    use super::super::rule::RuleRequest;
    use super::*;

    fn rule(condition: Condition, group_by: &str) -> Rule {
        Rule::new(RuleRequest {
            name: "r".into(),
            topic_pattern: "*.error".into(),
            threshold: 3,
            window_ms: 1000,
            condition: Some(condition),
            group_by: group_by.into(),
            cooldown_ms: Some(500),
            ..RuleRequest::default()
        })
        .unwrap()
    }

    fn hit(ts: i64, offset: u64) -> Hit {
        Hit { timestamp_ms: ts, topic: "ach.error".into(), partition: 0, offset }
    }

    #[test]
    fn at_least_fires_on_the_threshold_within_the_window_then_cools_down() {
        let mut w = RuleWindows::new(rule(Condition::AtLeast, ""), 0);
        assert_eq!(w.observe("", hit(100, 0), 100).0, None);
        assert_eq!(w.observe("", hit(200, 1), 200).0, None);
        // The first hit has left the window by 1,150: still two.
        assert_eq!(w.observe("", hit(1150, 2), 1150).0, None);
        let alert = w.observe("", hit(1160, 3), 1160).0.expect("three within 1 s");
        assert_eq!((alert.count, alert.first_timestamp_ms, alert.last_timestamp_ms), (3, 200, 1160));
        assert_eq!(alert.samples.iter().map(|h| h.offset).collect::<Vec<_>>(), [1, 2, 3]);
        assert_eq!(alert.id, "r//200");
        let v = alert.to_json();
        assert_eq!(
            (v["rule"].as_str(), v["condition"].as_str(), v["topics"][0].as_str()),
            (Some("r"), Some("AT_LEAST"), Some("ach.error"))
        );
        assert!(v.get("group").is_none());
        // Within the cooldown (500 ms) three more do not fire; after it, they do.
        for (i, t) in [1200, 1300, 1400].into_iter().enumerate() {
            assert_eq!(w.observe("", hit(t, 10 + i as u64), t).0, None);
        }
        assert!(w.observe("", hit(1700, 20), 1700).0.is_some(), "cooldown over, three in the window");
        assert_eq!(w.fired_total, 2);
    }

    #[test]
    fn a_rebuilt_window_gives_the_same_alert_id_and_a_restored_cooldown_holds() {
        let hits = [hit(100, 0), hit(150, 1), hit(180, 2)];
        let mut live = RuleWindows::new(rule(Condition::AtLeast, ""), 0);
        let mut alerts = hits.iter().filter_map(|h| live.observe("", h.clone(), h.timestamp_ms).0);
        let first = alerts.next().unwrap();
        // After a restart at 300 the window is rebuilt from the log.
        let mut rebuilt = RuleWindows::new(rule(Condition::AtLeast, ""), 0);
        let again = hits.iter().filter_map(|h| rebuilt.observe("", h.clone(), 300).0).next().unwrap();
        assert_eq!(again.id, first.id, "the engine can tell it was published");
        let mut restored = RuleWindows::new(rule(Condition::AtLeast, ""), 0);
        restored.restore_fired("", 190, 180);
        assert!(hits.iter().all(|h| restored.observe("", h.clone(), 300).0.is_none()), "counted by the last alert");
    }

    #[test]
    fn below_fires_on_a_full_quiet_window_only() {
        let mut w = RuleWindows::new(rule(Condition::Below, ""), 0);
        assert!(w.tick(999).is_empty(), "not a full window yet");
        let alert = w.tick(1000).pop().expect("silent for a full window");
        assert_eq!((alert.count, alert.condition), (0, Condition::Below));
        assert!(w.tick(1200).is_empty(), "cooldown");
        for t in [1100, 1500, 1900] {
            w.observe("", hit(t, t as u64), t);
        }
        assert!(w.tick(2000).is_empty(), "three arrived in the window");
        assert_eq!(w.tick(2600).len(), 1, "two left in the window by 2,600");
    }

    #[test]
    fn group_by_keeps_one_window_per_value_and_bounds_them() {
        let mut w = RuleWindows::new(rule(Condition::AtLeast, "/src"), 0);
        for i in 0..2 {
            assert!(w.observe("a", hit(10 + i, i as u64), 20).0.is_none());
            assert!(w.observe("b", hit(10 + i, 10 + i as u64), 20).0.is_none());
        }
        let alert = w.observe("a", hit(15, 5), 20).0.expect("a has three");
        assert_eq!(alert.group.as_deref(), Some("a"));
        assert_eq!(alert.to_json()["group"], "a");
        assert_eq!(w.current_count(20), 2, "b's two remain");
        let mut full = RuleWindows::new(rule(Condition::AtLeast, "/src"), 0);
        for g in 0..GROUP_VALUES_MAX {
            full.observe(&g.to_string(), hit(1, 0), 1);
        }
        assert_eq!(full.observe("one-more", hit(1, 0), 1), (None, true), "refused, said once");
        assert_eq!(full.observe("two-more", hit(1, 0), 1), (None, false));
    }

    #[test]
    fn memory_is_bounded_by_the_threshold() {
        let mut w = RuleWindows::new(rule(Condition::Below, ""), 0);
        for i in 0..10_000 {
            w.observe("", hit(i, i as u64), 10);
        }
        assert_eq!(w.current_count(10), 3);
    }

    mod model {
        use proptest::prelude::*;

        use super::*;

        proptest! {
            /// Whatever the timestamps and clock: an AT_LEAST alert counts
            /// at least the threshold, all within one window of the time it
            /// fired; no two alerts of a group within the cooldown; memory
            /// stays within the threshold.
            #[test]
            fn alerts_respect_threshold_window_and_cooldown(
                steps in proptest::collection::vec((-2000i64..2000, 0i64..300, 0usize..3), 1..300)
            ) {
                let mut w = RuleWindows::new(rule(Condition::AtLeast, "/g"), 0);
                let mut now = 0i64;
                let mut last: BTreeMap<String, i64> = BTreeMap::new();
                for (i, (skew, advance, group)) in steps.into_iter().enumerate() {
                    now += advance;
                    let group = group.to_string();
                    let (alert, _) = w.observe(&group, hit(now + skew, i as u64), now);
                    if let Some(a) = alert {
                        prop_assert!(a.count >= 3);
                        prop_assert!(a.first_timestamp_ms > now - 1000);
                        if let Some(t) = last.insert(group.clone(), now) {
                            prop_assert!(now - t >= 500, "fired at {t} and {now}");
                        }
                    }
                    prop_assert!(w.current_count(now) <= 3 * 3);
                }
            }
        }
    }
}
