//! Times on the command line: RFC 3339 (`2026-11-23T10:00:00Z`) or relative
//! to now (`-1h`, `-24h`, `-30m`), and how timestamps are printed.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Parses a time into milliseconds since the Unix epoch.
pub fn parse_time_ms(text: &str) -> Result<i64, String> {
    if let Some(ago) = text.strip_prefix('-') {
        let d = humantime::parse_duration(ago).map_err(|e| format!("bad relative time {text:?}: {e}"))?;
        let t = SystemTime::now().checked_sub(d).ok_or_else(|| format!("{text:?} is before 1970"))?;
        return Ok(millis(t));
    }
    humantime::parse_rfc3339_weak(text)
        .map(millis)
        .map_err(|_| format!("bad time {text:?}: use RFC 3339 (2026-11-23T10:00:00Z) or relative (-1h, -24h)"))
}

fn millis(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}

/// RFC 3339 with milliseconds, UTC.
pub fn format_ms(ms: i64) -> String {
    if ms < 0 {
        return ms.to_string();
    }
    humantime::format_rfc3339_millis(UNIX_EPOCH + Duration::from_millis(ms as u64)).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_both_forms() {
        assert_eq!(parse_time_ms("2020-01-01T00:00:00Z").unwrap(), 1_577_836_800_000);
        let hour_ago = parse_time_ms("-1h").unwrap();
        let now = millis(SystemTime::now());
        assert!((now - hour_ago - 3_600_000).abs() < 5_000);
        assert!(parse_time_ms("yesterday").is_err());
        assert_eq!(format_ms(1_577_836_800_000), "2020-01-01T00:00:00.000Z");
    }
}
