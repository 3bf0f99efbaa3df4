//! The alert engine: rules (stored in `DATA/__alert_rules.json`, replaced
//! atomically), one background task that reads what is appended to the
//! topics any rule watches (woken by the partitions' high watermark
//! watches, as a subscriber is: no polling) and feeds `rules/window.rs`,
//! and the publication of alerts to their topics.
//!
//! Produce pays nothing for rules: the engine reads the page cache after
//! the append, on its own task, and only partitions of matching topics.
//! After a restart each rule's windows are rebuilt from the last
//! `window_ms` of the log (found with the time index), and the alerts
//! already on the alert topic are read back: a window that already fired
//! is recognised by its alert id (header `alert.id`) and not published
//! again, and the cooldown holds across the restart.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::watch;

use super::partition::Partition;
use super::rules::rule::{Condition, Rule, RuleRequest};
use super::rules::window::{Alert, Hit, RuleWindows};
use super::{Broker, BrokerError, Caller, CreateTopic, ProduceRequest, Result};
use crate::storage::batch::Record;

/// The rules file under the data dir.
pub const RULES_FILE: &str = "__alert_rules.json";
/// How often BELOW rules and cooldowns are looked at.
const TICK: Duration = Duration::from_millis(100);
/// Bytes of records read from one partition per read.
const READ_BYTES: usize = 1 << 20;
/// Bytes read from one partition per pass of the engine.
const PASS_BYTES: usize = 64 << 20;
/// Rules one broker keeps.
pub const RULES_MAX: usize = 1000;

/// A rule as stored (the request it was created from) and when.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
struct StoredRule {
    name: String,
    topic_pattern: String,
    #[serde(default)]
    filter: BTreeMap<String, String>,
    threshold: u64,
    window_ms: u64,
    alert_topic: String,
    cooldown_ms: Option<u64>,
    below: bool,
    #[serde(default)]
    group_by: String,
    created_ms: i64,
}

impl StoredRule {
    fn request(&self) -> RuleRequest {
        RuleRequest {
            name: self.name.clone(),
            topic_pattern: self.topic_pattern.clone(),
            filter: self.filter.clone(),
            threshold: self.threshold,
            window_ms: self.window_ms,
            alert_topic: self.alert_topic.clone(),
            cooldown_ms: self.cooldown_ms,
            condition: Some(if self.below { Condition::Below } else { Condition::AtLeast }),
            group_by: self.group_by.clone(),
        }
    }
}

/// A rule and what DescribeAlertRule shows of it.
#[derive(Debug, Clone, PartialEq)]
pub struct AlertRuleInfo {
    pub rule: Rule,
    pub last_fired_ms: Option<i64>,
    pub fired_total: u64,
    pub current_count: u64,
}

/// One rule's state in the engine.
#[derive(Debug)]
struct Running {
    stored: StoredRule,
    windows: RuleWindows,
    /// Ids of the alerts on the alert topic (read back at start, and
    /// published since), so a rebuilt window does not publish twice.
    published: HashSet<String>,
}

/// The rules and their windows.
#[derive(Debug)]
pub struct Alerts {
    path: PathBuf,
    rules: Mutex<BTreeMap<String, Running>>,
    /// Serialises changes to the rules file.
    admin: tokio::sync::Mutex<()>,
    /// Bumped when rules change, so the engine looks at its topics again.
    changed: watch::Sender<u64>,
}

impl Alerts {
    fn running(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Running>> {
        self.rules.lock().unwrap_or_else(|e| e.into_inner())
    }
}

fn invalid(e: super::rules::rule::RuleError) -> BrokerError {
    BrokerError::InvalidAlertRule { field: e.field, why: e.why }
}

impl Alerts {
    /// Reads the rules file (none: no rules). Windows start empty; the
    /// engine rebuilds them from the log when it starts.
    pub fn open(fs: &dyn crate::storage::fs::FileSystem, data_dir: &std::path::Path) -> Result<Alerts> {
        let path = data_dir.join(RULES_FILE);
        let stored: Vec<StoredRule> = if fs.exists(&path) {
            let bytes =
                fs.read_file(&path).map_err(|e| BrokerError::io(format!("cannot read {}", path.display()), e))?;
            serde_json::from_slice(&bytes)
                .map_err(|e| BrokerError::Internal(format!("{} is not a rules file: {e}", path.display())))?
        } else {
            Vec::new()
        };
        let mut rules = BTreeMap::new();
        for s in stored {
            let rule = Rule::new(s.request()).map_err(|e| BrokerError::Internal(format!("{}: {e}", path.display())))?;
            let windows = RuleWindows::new(rule, s.created_ms);
            rules.insert(s.name.clone(), Running { stored: s, windows, published: HashSet::new() });
        }
        Ok(Alerts {
            path,
            rules: Mutex::new(rules),
            admin: tokio::sync::Mutex::new(()),
            changed: watch::Sender::new(0),
        })
    }
}

impl Broker {
    fn alerts(&self) -> &Alerts {
        &self.alerts
    }

    fn save_rules(&self, rules: &BTreeMap<String, Running>) -> Result<()> {
        let stored: Vec<&StoredRule> = rules.values().map(|r| &r.stored).collect();
        let json = serde_json::to_vec_pretty(&stored).map_err(|e| BrokerError::Internal(e.to_string()))?;
        let path = &self.alerts().path;
        self.fs.write_atomic(path, &json).map_err(|e| BrokerError::io(format!("cannot write {}", path.display()), e))
    }

    /// Creates a rule; it counts records appended from now on.
    pub async fn create_alert_rule(self: &Arc<Self>, caller: &Caller, request: RuleRequest) -> Result<AlertRuleInfo> {
        self.check_running()?;
        let rule = Rule::new(request.clone()).map_err(invalid)?;
        let _admin = self.alerts().admin.lock().await;
        let now = self.clock.now_ms();
        let stored = StoredRule {
            name: rule.name.clone(),
            topic_pattern: rule.topic_pattern.clone(),
            filter: request.filter.clone(),
            threshold: rule.threshold,
            window_ms: rule.window_ms,
            alert_topic: rule.alert_topic.clone(),
            cooldown_ms: Some(rule.cooldown_ms),
            below: rule.condition == Condition::Below,
            group_by: request.group_by.clone(),
            created_ms: now,
        };
        let mut next = {
            let rules = self.alerts().running();
            if rules.contains_key(&rule.name) {
                return Err(BrokerError::AlertRuleExists(rule.name));
            }
            if rules.len() >= RULES_MAX {
                return Err(BrokerError::Busy(format!("{} alert rules exist, the most one broker keeps", rules.len())));
            }
            rules.values().map(|r| (r.stored.name.clone(), r.stored.clone())).collect::<BTreeMap<_, _>>()
        };
        next.insert(stored.name.clone(), stored.clone());
        let (this, all) = (self.clone(), next.into_values().collect::<Vec<_>>());
        tokio::task::spawn_blocking(move || {
            let json = serde_json::to_vec_pretty(&all).map_err(|e| BrokerError::Internal(e.to_string()))?;
            let path = &this.alerts().path;
            this.fs
                .write_atomic(path, &json)
                .map_err(|e| BrokerError::io(format!("cannot write {}", path.display()), e))
        })
        .await
        .map_err(|e| BrokerError::Internal(format!("rules task failed: {e}")))??;
        let info = AlertRuleInfo { rule: rule.clone(), last_fired_ms: None, fired_total: 0, current_count: 0 };
        self.alerts().running().insert(
            rule.name.clone(),
            Running { stored, windows: RuleWindows::new(rule, now), published: HashSet::new() },
        );
        self.alerts().changed.send_modify(|n| *n += 1);
        tracing::info!(rule = info.rule.name, pattern = info.rule.topic_pattern, by = %caller, "created alert rule");
        Ok(info)
    }

    pub async fn delete_alert_rule(self: &Arc<Self>, caller: &Caller, name: &str) -> Result<()> {
        self.check_running()?;
        let _admin = self.alerts().admin.lock().await;
        let removed = {
            let mut rules = self.alerts().running();
            let removed = rules.remove(name);
            if removed.is_some() {
                self.save_rules(&rules)?;
            }
            removed
        };
        if removed.is_none() {
            return Err(BrokerError::UnknownAlertRule(name.to_string()));
        }
        self.alerts().changed.send_modify(|n| *n += 1);
        tracing::info!(rule = name, by = %caller, "deleted alert rule");
        Ok(())
    }

    pub fn list_alert_rules(&self, _caller: &Caller) -> Vec<AlertRuleInfo> {
        let now = self.clock.now_ms();
        self.alerts().running().values_mut().map(|r| info(r, now)).collect()
    }

    pub fn describe_alert_rule(&self, _caller: &Caller, name: &str) -> Result<AlertRuleInfo> {
        let now = self.clock.now_ms();
        let mut rules = self.alerts().running();
        rules.get_mut(name).map(|r| info(r, now)).ok_or_else(|| BrokerError::UnknownAlertRule(name.to_string()))
    }

    /// The engine: rebuilds the windows, then reads what is appended to
    /// watched topics and publishes alerts, until shutdown.
    pub(crate) async fn alert_loop(self: Arc<Self>, mut stop: watch::Receiver<bool>) {
        // Per watched partition: the next offset to read.
        let mut cursors: HashMap<(String, u32), u64> = HashMap::new();
        let mut loaded: HashSet<String> = HashSet::new();
        let mut changed = self.alerts().changed.subscribe();
        let mut topics = self.watch_topics();
        let mut tick = tokio::time::interval(TICK);
        loop {
            changed.borrow_and_update();
            topics.borrow_and_update();
            let watched = self.watched_partitions();
            let mut watches: Vec<watch::Receiver<u64>> = watched.iter().map(|p| p.watch()).collect();
            cursors.retain(|(t, p), _| watched.iter().any(|w| &w.topic == t && w.id == *p));
            if let Err(e) = self.alert_pass(&watched, &mut cursors, &mut loaded).await {
                tracing::warn!(error = %e, "alert rules pass failed; will retry");
            }
            let appended = async {
                if watches.is_empty() {
                    std::future::pending::<()>().await;
                }
                let _ = futures::future::select_all(watches.iter_mut().map(|w| Box::pin(w.changed()))).await;
            };
            tokio::select! {
                _ = appended => {}
                _ = changed.changed() => {}
                _ = topics.changed() => {}
                _ = tick.tick() => {}
                _ = stop.wait_for(|s| *s) => return,
            }
        }
    }

    /// Partitions of every topic some rule watches (not the alert topics
    /// themselves: a rule's own alert topic never matches its pattern).
    fn watched_partitions(&self) -> Vec<Arc<Partition>> {
        let patterns: Vec<String> = self.alerts().running().values().map(|r| r.stored.topic_pattern.clone()).collect();
        let mut seen = HashSet::new();
        let mut out = Vec::new();
        for pattern in patterns {
            for t in self.matching_topics(&pattern) {
                if seen.insert(t.name.clone()) {
                    out.extend(t.partitions.iter().cloned());
                }
            }
        }
        out
    }

    /// One pass: alerts already published read back for rules new to the
    /// engine (all of them at start), new records counted, BELOW rules
    /// asked, alerts published.
    ///
    /// Each watched partition has one cursor, so every record is counted
    /// once. A partition seen for the first time starts where the rules
    /// watching it start counting: the later of their creation and one
    /// window ago (found with the time index). After a restart that
    /// re-reads the last window, which rebuilds the windows: a window that
    /// fired before is recognised by its alert id, and the cooldown read
    /// back from the alert topic holds.
    async fn alert_pass(
        &self,
        watched: &[Arc<Partition>],
        cursors: &mut HashMap<(String, u32), u64>,
        loaded: &mut HashSet<String>,
    ) -> Result<()> {
        let now = self.clock.now_ms();
        let fresh: Vec<(String, String, i64)> = self
            .alerts()
            .running()
            .values()
            .filter(|r| !loaded.contains(&r.stored.name))
            .map(|r| {
                let w = &r.windows.rule;
                (
                    r.stored.name.clone(),
                    r.stored.alert_topic.clone(),
                    now.saturating_sub((w.window_ms + w.cooldown_ms) as i64),
                )
            })
            .collect();
        for (name, alert_topic, since) in fresh {
            let (ids, fired) = self.published_alerts(&name, &alert_topic, since).await?;
            if let Some(running) = self.alerts().running().get_mut(&name) {
                for (group, (t, counted_until)) in fired {
                    running.windows.restore_fired(&group, t, counted_until);
                }
                running.published.extend(ids);
            }
            loaded.insert(name);
        }
        loaded.retain(|n| self.alerts().running().contains_key(n));
        let mut alerts = Vec::new();
        for p in watched {
            let key = (p.topic.clone(), p.id);
            let from = match cursors.get(&key) {
                Some(&c) => c,
                None => {
                    let starts = self
                        .alerts()
                        .running()
                        .values()
                        .filter(|r| super::names::glob_match(&r.stored.topic_pattern, &p.topic))
                        .map(|r| r.stored.created_ms.max(now.saturating_sub(r.windows.rule.window_ms as i64)))
                        .min();
                    let start = starts.unwrap_or(now);
                    let c = p.blocking(move |log| log.offset_for_timestamp(start)).await?;
                    cursors.insert(key.clone(), c);
                    c
                }
            };
            // Up to PASS_BYTES per partition and pass: a backlog (the last
            // window after a restart) is caught up in a few passes without
            // starving the other partitions.
            let mut from = from;
            let mut budget = PASS_BYTES;
            while from < p.log.high_watermark() && budget > 0 {
                let read = p.read(from, 100_000, READ_BYTES.min(budget)).await?;
                if read.records.is_empty() {
                    break;
                }
                budget = budget.saturating_sub(read.batch_bytes.max(1) as usize);
                from = read.next_offset.max(from);
                cursors.insert(key.clone(), from);
                let mut rules = self.alerts().running();
                for r in read.records {
                    for running in rules.values_mut() {
                        if r.timestamp_ms < running.stored.created_ms {
                            continue;
                        }
                        let Some(group) = running.windows.rule.matches(&p.topic, &r) else { continue };
                        let hit = Hit {
                            timestamp_ms: r.timestamp_ms,
                            topic: p.topic.as_str().into(),
                            partition: p.id,
                            offset: r.offset,
                        };
                        let (alert, overflow) = running.windows.observe(&group, hit, now);
                        if overflow {
                            tracing::warn!(
                                rule = running.stored.name,
                                "group_by values over the limit: new values are not counted"
                            );
                        }
                        alerts.extend(alert.map(|a| (running.stored.alert_topic.clone(), a)));
                    }
                }
            }
        }
        {
            let mut rules = self.alerts().running();
            for running in rules.values_mut() {
                let topic = running.stored.alert_topic.clone();
                alerts.extend(running.windows.tick(now).into_iter().map(|a| (topic.clone(), a)));
            }
        }
        for (topic, alert) in alerts {
            self.publish_alert(&topic, alert).await?;
        }
        Ok(())
    }

    /// The ids of rule `name`'s alerts on its topic since `since`, and when
    /// each group last fired.
    async fn published_alerts(
        &self,
        name: &str,
        alert_topic: &str,
        since: i64,
    ) -> Result<(HashSet<String>, HashMap<String, (i64, i64)>)> {
        let mut ids = HashSet::new();
        // Per group: when it last fired, and the newest timestamp counted.
        let mut fired: HashMap<String, (i64, i64)> = HashMap::new();
        let Ok(topic) = self.topic(alert_topic) else { return Ok((ids, fired)) };
        for p in &topic.partitions {
            let mut from = p.blocking(move |log| log.offset_for_timestamp(since)).await?;
            while from < p.log.high_watermark() {
                let read = p.read(from, 100_000, READ_BYTES).await?;
                if read.records.is_empty() {
                    break;
                }
                from = read.next_offset;
                for r in read.records {
                    let header = |h: &str| {
                        r.headers.iter().find(|(k, _)| k == h).map(|(_, v)| String::from_utf8_lossy(v).into_owned())
                    };
                    if header("alert.rule").as_deref() != Some(name) {
                        continue;
                    }
                    let Some(id) = header("alert.id") else { continue };
                    // `rule/group/anchor`: the group is what lies between.
                    let group = id
                        .strip_prefix(&format!("{name}/"))
                        .and_then(|rest| rest.rsplit_once('/'))
                        .map_or(String::new(), |(g, _)| g.to_string());
                    let value: serde_json::Value = serde_json::from_slice(&r.value).unwrap_or_default();
                    let counted = value["last_timestamp_ms"].as_i64().unwrap_or(r.timestamp_ms);
                    let t = fired.entry(group).or_insert((r.timestamp_ms, counted));
                    *t = (t.0.max(r.timestamp_ms), t.1.max(counted));
                    ids.insert(id);
                }
            }
        }
        Ok((ids, fired))
    }

    /// Appends an alert to its topic (created on first use), unless an
    /// alert with its id was published already.
    async fn publish_alert(&self, topic: &str, alert: Alert) -> Result<()> {
        {
            // One engine task publishes, so nothing else can publish this
            // id between the look here and the insert after the append.
            let rules = self.alerts().running();
            let Some(running) = rules.get(&alert.rule) else { return Ok(()) };
            if running.published.contains(&alert.id) {
                return Ok(());
            }
        }
        if self.topic(topic).is_err() {
            let caller = Caller::internal("alert");
            match self
                .create_topic(
                    &caller,
                    CreateTopic { name: topic.to_string(), partitions: Some(1), config: BTreeMap::new() },
                )
                .await
            {
                Ok(_) | Err(BrokerError::TopicExists(_)) => {}
                Err(e) => return Err(e),
            }
        }
        let value = serde_json::to_vec(&alert.to_json()).map_err(|e| BrokerError::Internal(e.to_string()))?;
        let record = Record {
            key: Bytes::from(alert.rule.clone()),
            value: Bytes::from(value),
            headers: vec![
                ("alert.rule".to_string(), Bytes::from(alert.rule.clone())),
                ("alert.id".to_string(), Bytes::from(alert.id.clone())),
            ],
            timestamp_ms: 0,
        };
        let request = ProduceRequest {
            topic: topic.to_string(),
            partition: None,
            records: vec![record],
            producer: None,
            batch: None,
        };
        // A failed append (a full disk, say) leaves the id unpublished: the
        // error is logged by the pass, and a rebuild may still publish it.
        self.produce_internal("alert", request).await?;
        if let Some(running) = self.alerts().running().get_mut(&alert.rule) {
            running.published.insert(alert.id.clone());
        }
        self.metrics.alert_fired(&alert.rule);
        tracing::info!(rule = alert.rule, count = alert.count, topic, "alert fired");
        Ok(())
    }
}

fn info(r: &mut Running, now: i64) -> AlertRuleInfo {
    AlertRuleInfo {
        rule: r.windows.rule.clone(),
        last_fired_ms: r.windows.last_fired_ms(),
        fired_total: r.windows.fired_total,
        current_count: r.windows.current_count(now),
    }
}
