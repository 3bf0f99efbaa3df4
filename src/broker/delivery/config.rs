//! A share group's configuration: the keys `AlterShareGroup` takes and
//! `DescribeShareGroup` shows, parsed and bounded here so the state machine
//! only ever sees values within [`crate::config`]'s limits.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::config::{
    SHARE_ACK_WAIT_DEFAULT, SHARE_ACK_WAIT_MAX, SHARE_BACKOFF_MAX, SHARE_BACKOFF_STEPS_MAX,
    SHARE_MAX_DELIVERIES_DEFAULT, SHARE_MAX_DELIVERIES_MAX, SHARE_MAX_IN_FLIGHT_DEFAULT, SHARE_MAX_IN_FLIGHT_MAX,
};

/// Every key a share group's config has, in the order they are shown.
pub const KEYS: [&str; 6] =
    ["ack.wait.ms", "max.deliveries", "backoff.ms", "dead.letter.topic", "auto.offset.reset", "max.in.flight"];

/// A config key or value refused, naming the key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("share group config {key:?}: {why}")]
pub struct ConfigError {
    pub key: String,
    pub why: String,
}

fn refuse(key: &str, why: impl Into<String>) -> ConfigError {
    ConfigError { key: key.to_string(), why: why.into() }
}

/// Where a new share group starts reading a partition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StartFrom {
    /// The high watermark: only records produced from now on (the default).
    Latest,
    /// The log start offset: everything retained.
    Earliest,
    /// The first record with a timestamp at or after this (ms since epoch).
    Time(i64),
}

/// A share group's settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShareConfig {
    /// How long a delivered record stays acquired before it is released
    /// as if RELEASE'd.
    pub ack_wait: Duration,
    /// Deliveries after which a released record is dead-lettered instead.
    pub max_deliveries: u32,
    /// Redelivery delays: the n-th entry after the n-th delivery, the last
    /// one repeating. Never empty.
    pub backoff: Vec<Duration>,
    /// The dead-letter topic; `None` means `<group>.dlq`.
    pub dead_letter_topic: Option<String>,
    /// Where a new group starts.
    pub start_from: StartFrom,
    /// Records per partition between the group's start offset and the
    /// next record not yet delivered: what it may hold at once.
    pub max_in_flight: u32,
}

impl Default for ShareConfig {
    fn default() -> ShareConfig {
        ShareConfig {
            ack_wait: SHARE_ACK_WAIT_DEFAULT,
            max_deliveries: SHARE_MAX_DELIVERIES_DEFAULT,
            backoff: vec![Duration::ZERO],
            dead_letter_topic: None,
            start_from: StartFrom::Latest,
            max_in_flight: SHARE_MAX_IN_FLIGHT_DEFAULT,
        }
    }
}

fn parse_u64(key: &str, value: &str) -> Result<u64, ConfigError> {
    value.trim().parse().map_err(|_| refuse(key, format!("{value:?} is not a whole number")))
}

fn parse_ms(key: &str, value: &str, max: Duration) -> Result<Duration, ConfigError> {
    let ms = parse_u64(key, value)?;
    if u128::from(ms) > max.as_millis() {
        return Err(refuse(key, format!("{ms} ms is more than the limit of {} ms", max.as_millis())));
    }
    Ok(Duration::from_millis(ms))
}

fn parse_bounded(key: &str, value: &str, max: u32) -> Result<u32, ConfigError> {
    let n = parse_u64(key, value)?;
    if n == 0 || n > u64::from(max) {
        return Err(refuse(key, format!("{n} is outside 1..={max}")));
    }
    Ok(n as u32)
}

impl ShareConfig {
    /// The effective value of `key` as text (the form `set` takes back).
    pub fn get(&self, group: &str, key: &str) -> Option<String> {
        Some(match key {
            "ack.wait.ms" => self.ack_wait.as_millis().to_string(),
            "max.deliveries" => self.max_deliveries.to_string(),
            "backoff.ms" => self.backoff.iter().map(|d| d.as_millis().to_string()).collect::<Vec<_>>().join(","),
            "dead.letter.topic" => self.dead_letter_topic(group),
            "auto.offset.reset" => match self.start_from {
                StartFrom::Latest => "latest".into(),
                StartFrom::Earliest => "earliest".into(),
                StartFrom::Time(ms) => ms.to_string(),
            },
            "max.in.flight" => self.max_in_flight.to_string(),
            _ => return None,
        })
    }

    /// Every key with its effective value.
    pub fn to_map(&self, group: &str) -> BTreeMap<String, String> {
        KEYS.iter().filter_map(|k| Some((k.to_string(), self.get(group, k)?))).collect()
    }

    /// Sets one key from text; refuses unknown keys and values out of bounds.
    pub fn set(&mut self, key: &str, value: &str) -> Result<(), ConfigError> {
        match key {
            "ack.wait.ms" => {
                let wait = parse_ms(key, value, SHARE_ACK_WAIT_MAX)?;
                if wait.is_zero() {
                    return Err(refuse(key, "must be at least 1 ms"));
                }
                self.ack_wait = wait;
            }
            "max.deliveries" => self.max_deliveries = parse_bounded(key, value, SHARE_MAX_DELIVERIES_MAX)?,
            "backoff.ms" => {
                let steps: Vec<&str> = value.split(',').collect();
                if steps.len() > SHARE_BACKOFF_STEPS_MAX {
                    return Err(refuse(key, format!("{} delays; at most {SHARE_BACKOFF_STEPS_MAX}", steps.len())));
                }
                self.backoff = steps.iter().map(|s| parse_ms(key, s, SHARE_BACKOFF_MAX)).collect::<Result<_, _>>()?;
            }
            "dead.letter.topic" => {
                crate::broker::names::validate("topic", value, false).map_err(|e| refuse(key, e.to_string()))?;
                self.dead_letter_topic = Some(value.to_string());
            }
            "auto.offset.reset" => {
                self.start_from = match value {
                    "latest" => StartFrom::Latest,
                    "earliest" => StartFrom::Earliest,
                    t => StartFrom::Time(parse_time(t).ok_or_else(|| {
                        refuse(key, format!("{t:?} is not latest, earliest, ms since the epoch or an RFC 3339 time"))
                    })?),
                }
            }
            "max.in.flight" => self.max_in_flight = parse_bounded(key, value, SHARE_MAX_IN_FLIGHT_MAX)?,
            _ => return Err(refuse(key, format!("unknown key; the keys are {}", KEYS.join(", ")))),
        }
        Ok(())
    }

    /// A copy with every `(key, value)` applied, or the first refusal (the
    /// config is changed all at once or not at all).
    pub fn with(&self, changes: &BTreeMap<String, String>) -> Result<ShareConfig, ConfigError> {
        let mut next = self.clone();
        for (k, v) in changes {
            next.set(k, v)?;
        }
        Ok(next)
    }

    pub fn dead_letter_topic(&self, group: &str) -> String {
        self.dead_letter_topic.clone().unwrap_or_else(|| format!("{group}.dlq"))
    }

    /// The delay before redelivery after the `deliveries`-th delivery.
    pub fn backoff_after(&self, deliveries: u32) -> Duration {
        let i = (deliveries.max(1) as usize - 1).min(self.backoff.len() - 1);
        self.backoff[i]
    }
}

/// Milliseconds since the epoch, or an RFC 3339 time.
fn parse_time(text: &str) -> Option<i64> {
    if let Ok(ms) = text.parse::<i64>() {
        return (ms >= 0).then_some(ms);
    }
    let t = humantime::parse_rfc3339_weak(text).ok()?;
    i64::try_from(t.duration_since(std::time::UNIX_EPOCH).ok()?.as_millis()).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_the_contracts_and_round_trip_through_text() {
        let c = ShareConfig::default();
        let map = c.to_map("payments");
        assert_eq!(map["ack.wait.ms"], "30000");
        assert_eq!(map["max.deliveries"], "5");
        assert_eq!(map["backoff.ms"], "0");
        assert_eq!(map["dead.letter.topic"], "payments.dlq");
        assert_eq!(map["auto.offset.reset"], "latest");
        assert_eq!(map["max.in.flight"], "1000");
        assert_eq!(c.with(&map).unwrap().get("payments", "dead.letter.topic").unwrap(), "payments.dlq");
    }

    #[test]
    fn backoff_steps_repeat_the_last() {
        let mut c = ShareConfig::default();
        c.set("backoff.ms", "100,1000,5000").unwrap();
        let ms = |n| c.backoff_after(n).as_millis();
        assert_eq!([ms(1), ms(2), ms(3), ms(4), ms(9)], [100, 1000, 5000, 5000, 5000]);
        assert_eq!(c.get("g", "backoff.ms").unwrap(), "100,1000,5000");
    }

    #[test]
    fn bad_values_name_their_key_and_change_nothing() {
        let c = ShareConfig::default();
        for (k, v) in [
            ("ack.wait.ms", "0"),
            ("ack.wait.ms", "-5"),
            ("ack.wait.ms", "999999999999"),
            ("max.deliveries", "0"),
            ("max.in.flight", "100001"),
            ("backoff.ms", "10,,20"),
            ("dead.letter.topic", "bad name"),
            ("auto.offset.reset", "yesterday"),
            ("colour", "blue"),
        ] {
            let changes = BTreeMap::from([("max.deliveries".to_string(), "9".to_string()), (k.into(), v.into())]);
            let err = c.with(&changes).unwrap_err();
            assert_eq!(err.key, k, "{k}={v}: {err}");
            assert!(err.to_string().contains(k));
        }
        assert_eq!(c, ShareConfig::default());
    }

    #[test]
    fn start_from_takes_words_ms_and_rfc3339() {
        let mut c = ShareConfig::default();
        c.set("auto.offset.reset", "earliest").unwrap();
        assert_eq!(c.start_from, StartFrom::Earliest);
        c.set("auto.offset.reset", "1700000000000").unwrap();
        assert_eq!(c.start_from, StartFrom::Time(1_700_000_000_000));
        c.set("auto.offset.reset", "2023-11-14T22:13:20Z").unwrap();
        assert_eq!(c.start_from, StartFrom::Time(1_700_000_000_000));
    }
}
