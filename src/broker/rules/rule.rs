//! An alert rule as a user defines it, checked field by field (a refusal
//! names the field), and the pure question of whether a record matches it:
//! topic pattern, filter on JSON fields or headers, and the `group_by` value
//! that picks its window.

use std::collections::BTreeMap;

use serde_json::Value;

use crate::broker::names;
use crate::storage::batch::StoredRecord;

/// Windows of one rule with `group_by` at most (new values past it are not
/// counted, and said so once).
pub const GROUP_VALUES_MAX: usize = 10_000;
/// The longest window a rule may have (a week).
pub const WINDOW_MS_MAX: u64 = 7 * 24 * 3600 * 1000;
/// The highest threshold (a window holds at most this many timestamps).
pub const THRESHOLD_MAX: u64 = 1_000_000;
/// Filter entries per rule.
pub const FILTERS_MAX: usize = 32;
/// The longest topic pattern, selector (JSON pointer or header name) and
/// filter value a rule may hold: rules are kept in memory and on disk.
pub const TEXT_BYTES_MAX: usize = 1024;

/// When a rule fires.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Condition {
    /// At least `threshold` matching records within the last `window_ms`.
    AtLeast,
    /// Fewer than `threshold` in a full `window_ms` ("payments stopped").
    Below,
}

impl Condition {
    pub fn name(self) -> &'static str {
        match self {
            Condition::AtLeast => "AT_LEAST",
            Condition::Below => "BELOW",
        }
    }
}

/// Where a filter or `group_by` looks: a JSON pointer into the record's
/// value, or a header (`header:NAME`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Selector {
    Pointer(String),
    Header(String),
}

impl Selector {
    /// Parses `/a/b` or `header:NAME`; `field` names the request field.
    pub fn parse(field: &str, text: &str) -> Result<Selector, RuleError> {
        if let Some(name) = text.strip_prefix("header:") {
            if name.is_empty() {
                return Err(refuse(field, "header: needs a header name"));
            }
            return Ok(Selector::Header(name.to_string()));
        }
        if !text.starts_with('/') {
            return Err(refuse(field, format!("{text:?} is neither a JSON pointer (/field) nor header:NAME")));
        }
        Ok(Selector::Pointer(text.to_string()))
    }

    /// The selected value of a record, if it has one: a header's bytes as
    /// a JSON string, or the JSON value at the pointer.
    pub fn select(&self, record: &StoredRecord, json: &mut Option<Option<Value>>) -> Option<Value> {
        match self {
            Selector::Header(name) => {
                let (_, v) = record.headers.iter().rev().find(|(k, _)| k == name)?;
                Some(Value::String(String::from_utf8_lossy(v).into_owned()))
            }
            Selector::Pointer(p) => {
                // The value is parsed once per record, whatever the filters.
                let parsed = json.get_or_insert_with(|| serde_json::from_slice(&record.value).ok());
                parsed.as_ref()?.pointer(p).cloned()
            }
        }
    }

    pub fn text(&self) -> String {
        match self {
            Selector::Pointer(p) => p.clone(),
            Selector::Header(h) => format!("header:{h}"),
        }
    }
}

/// A rule refused, naming the field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("alert rule field {field:?}: {why}")]
pub struct RuleError {
    pub field: String,
    pub why: String,
}

fn refuse(field: &str, why: impl Into<String>) -> RuleError {
    RuleError { field: field.to_string(), why: why.into() }
}

/// What `CreateAlertRule` asks for, before it is checked.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RuleRequest {
    pub name: String,
    pub topic_pattern: String,
    /// Selector text -> expected value (JSON text, or a bare word taken as a string).
    pub filter: BTreeMap<String, String>,
    pub threshold: u64,
    pub window_ms: u64,
    /// Empty: `alerts.<name>`.
    pub alert_topic: String,
    /// None: `window_ms`.
    pub cooldown_ms: Option<u64>,
    pub condition: Option<Condition>,
    /// Empty: one window for the whole rule.
    pub group_by: String,
}

/// A checked rule.
#[derive(Debug, Clone, PartialEq)]
pub struct Rule {
    pub name: String,
    pub topic_pattern: String,
    pub filter: Vec<(Selector, Value)>,
    pub threshold: u64,
    pub window_ms: u64,
    pub alert_topic: String,
    pub cooldown_ms: u64,
    pub condition: Condition,
    pub group_by: Option<Selector>,
}

/// A filter value as typed: JSON (`"failed"`, `42`, `true`), or a bare
/// word, taken as a string (`failed`).
fn filter_value(text: &str) -> Value {
    serde_json::from_str(text).unwrap_or_else(|_| Value::String(text.to_string()))
}

impl Rule {
    /// Checks every field; the first refusal names its field.
    pub fn new(r: RuleRequest) -> Result<Rule, RuleError> {
        names::validate("topic", &r.name, false).map_err(|e| refuse("name", e.to_string()))?;
        if r.topic_pattern.is_empty() {
            return Err(refuse("topic_pattern", "a rule needs a topic or pattern (e.g. *.error)"));
        }
        let long = |field: &str, text: &str| {
            (text.len() > TEXT_BYTES_MAX)
                .then(|| refuse(field, format!("{} bytes; at most {TEXT_BYTES_MAX}", text.len())))
        };
        let texts = [("topic_pattern", &r.topic_pattern), ("group_by", &r.group_by)];
        let filters = r.filter.iter().flat_map(|(k, v)| [("filter", k), ("filter", v)]);
        if let Some(e) = texts.into_iter().chain(filters).find_map(|(f, t)| long(f, t)) {
            return Err(e);
        }
        if r.filter.len() > FILTERS_MAX {
            return Err(refuse("filter", format!("{} entries; at most {FILTERS_MAX}", r.filter.len())));
        }
        let filter = r
            .filter
            .iter()
            .map(|(k, v)| Ok((Selector::parse("filter", k)?, filter_value(v))))
            .collect::<Result<Vec<_>, RuleError>>()?;
        if r.threshold == 0 || r.threshold > THRESHOLD_MAX {
            return Err(refuse("threshold", format!("{} is outside 1..={THRESHOLD_MAX}", r.threshold)));
        }
        if r.window_ms == 0 || r.window_ms > WINDOW_MS_MAX {
            return Err(refuse("window_ms", format!("{} is outside 1..={WINDOW_MS_MAX}", r.window_ms)));
        }
        let alert_topic = if r.alert_topic.is_empty() { format!("alerts.{}", r.name) } else { r.alert_topic };
        names::validate("topic", &alert_topic, false).map_err(|e| refuse("alert_topic", e.to_string()))?;
        if names::glob_match(&r.topic_pattern, &alert_topic) {
            return Err(refuse(
                "alert_topic",
                format!("{alert_topic:?} matches the rule's own pattern: its alerts would feed it"),
            ));
        }
        let cooldown_ms = r.cooldown_ms.unwrap_or(r.window_ms);
        if cooldown_ms > WINDOW_MS_MAX {
            return Err(refuse("cooldown_ms", format!("{cooldown_ms} is more than {WINDOW_MS_MAX}")));
        }
        let group_by = match r.group_by.as_str() {
            "" => None,
            text => Some(Selector::parse("group_by", text)?),
        };
        Ok(Rule {
            name: r.name,
            topic_pattern: r.topic_pattern,
            filter,
            threshold: r.threshold,
            window_ms: r.window_ms,
            alert_topic,
            cooldown_ms,
            condition: r.condition.unwrap_or(Condition::AtLeast),
            group_by,
        })
    }

    /// Whether a record of `topic` counts for the rule, and then the window
    /// it counts in (`""` without `group_by`; `None` if the record lacks
    /// the `group_by` field).
    pub fn matches(&self, topic: &str, record: &StoredRecord) -> Option<String> {
        if !names::glob_match(&self.topic_pattern, topic) {
            return None;
        }
        let mut json = None;
        for (selector, expected) in &self.filter {
            if selector.select(record, &mut json).as_ref() != Some(expected) {
                return None;
            }
        }
        match &self.group_by {
            None => Some(String::new()),
            Some(selector) => Some(match selector.select(record, &mut json)? {
                Value::String(s) => s,
                other => other.to_string(),
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::*;

    fn request() -> RuleRequest {
        RuleRequest {
            name: "error_storm".into(),
            topic_pattern: "*.error".into(),
            threshold: 5,
            window_ms: 60_000,
            ..RuleRequest::default()
        }
    }

    fn record(value: &str, headers: &[(&str, &str)]) -> StoredRecord {
        StoredRecord {
            offset: 0,
            timestamp_ms: 1,
            key: Bytes::new(),
            value: Bytes::from(value.to_string()),
            headers: headers.iter().map(|(k, v)| (k.to_string(), Bytes::from(v.to_string()))).collect(),
        }
    }

    #[test]
    fn defaults_follow_the_contract() {
        let rule = Rule::new(request()).unwrap();
        assert_eq!(rule.alert_topic, "alerts.error_storm");
        assert_eq!(rule.cooldown_ms, 60_000);
        assert_eq!(rule.condition, Condition::AtLeast);
    }

    #[test]
    fn bad_rules_name_the_field() {
        type Spoil = fn(&mut RuleRequest);
        let cases: [(&str, Spoil); 12] = [
            ("topic_pattern", |r| r.topic_pattern = "x".repeat(TEXT_BYTES_MAX + 1)),
            ("filter", |r| r.filter = [("/a".to_string(), "v".repeat(TEXT_BYTES_MAX + 1))].into()),
            ("group_by", |r| r.group_by = format!("/{}", "g".repeat(TEXT_BYTES_MAX))),
            ("name", |r| r.name = "bad name".into()),
            ("topic_pattern", |r| r.topic_pattern.clear()),
            ("threshold", |r| r.threshold = 0),
            ("window_ms", |r| r.window_ms = 0),
            ("window_ms", |r| r.window_ms = WINDOW_MS_MAX + 1),
            ("alert_topic", |r| r.alert_topic = "x.error".into()),
            ("alert_topic", |r| r.alert_topic = "__internal".into()),
            ("filter", |r| r.filter = [("status".to_string(), "failed".to_string())].into()),
            ("group_by", |r| r.group_by = "header:".into()),
        ];
        for (field, spoil) in cases {
            let mut r = request();
            spoil(&mut r);
            let err = Rule::new(r).unwrap_err();
            assert_eq!(err.field, field, "{err}");
        }
    }

    #[test]
    fn records_match_by_topic_json_fields_and_headers() {
        let mut r = request();
        r.filter = [("/status".to_string(), "failed".to_string()), ("/code".to_string(), "502".to_string())].into();
        r.filter.insert("header:src".into(), "\"web\"".into());
        let rule = Rule::new(r).unwrap();
        let hit = record(r#"{"status":"failed","code":502}"#, &[("src", "web")]);
        assert_eq!(rule.matches("ach.error", &hit), Some(String::new()));
        assert_eq!(rule.matches("ach.errors", &hit), None, "topic pattern");
        assert_eq!(
            rule.matches("ach.error", &record(r#"{"status":"failed","code":"502"}"#, &[("src", "web")])),
            None,
            "502 is a number"
        );
        assert_eq!(
            rule.matches("ach.error", &record(r#"{"status":"failed","code":502}"#, &[])),
            None,
            "header missing"
        );
        assert_eq!(rule.matches("ach.error", &record("not json", &[("src", "web")])), None);
    }

    #[test]
    fn group_by_picks_the_window() {
        let mut r = request();
        r.group_by = "/region".into();
        let rule = Rule::new(r).unwrap();
        assert_eq!(rule.matches("a.error", &record(r#"{"region":"eu"}"#, &[])), Some("eu".into()));
        assert_eq!(rule.matches("a.error", &record(r#"{"region":7}"#, &[])), Some("7".into()));
        assert_eq!(rule.matches("a.error", &record(r#"{}"#, &[])), None, "no value, no window");
        let mut r = request();
        r.group_by = "header:src".into();
        let rule = Rule::new(r).unwrap();
        assert_eq!(rule.matches("a.error", &record("x", &[("src", "pos-3")])), Some("pos-3".into()));
    }
}
