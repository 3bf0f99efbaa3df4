//! `strata top`: the broker's numbers in a terminal, refreshed every
//! second, for the ops person without Grafana: per topic records/s and
//! bytes/s in and out, retained records and bytes; per group the lag and
//! how it moves. Read from the HTTP listener's `/metrics`, the same series
//! Prometheus gets, so the two never disagree.

use std::collections::BTreeMap;
use std::io::Write;
use std::time::{Duration, Instant};

use crate::metrics::scrape::{self, Sample};

#[derive(Debug, clap::Args)]
pub struct TopArgs {
    /// The broker's HTTP listener (where /metrics is).
    #[arg(long, default_value = "127.0.0.1:9644", env = "STRATA_HTTP")]
    pub http: String,
    /// Time between refreshes.
    #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
    pub interval: Duration,
    /// Stop after this many refreshes (default: until Ctrl-C).
    #[arg(long, short = 'n')]
    pub iterations: Option<u64>,
}

/// What one scrape says, keyed for the view.
#[derive(Debug, Default, Clone)]
struct Frame {
    /// topic -> [records in, bytes in, records out, bytes out] (counters).
    counters: BTreeMap<String, [f64; 4]>,
    /// topic -> (retained records, retained bytes, partitions).
    retained: BTreeMap<String, (f64, f64, u32)>,
    /// (group, topic) -> (lag, partitions).
    lag: BTreeMap<(String, String), (f64, u32)>,
    connections: f64,
}

fn label<'a>(s: &'a Sample, k: &str) -> &'a str {
    s.labels.get(k).map(String::as_str).unwrap_or("")
}

fn frame(samples: &[Sample]) -> Frame {
    let mut f = Frame::default();
    let mut hw: BTreeMap<(String, String), f64> = BTreeMap::new();
    for s in samples {
        let topic = label(s, "topic").to_string();
        let counter = match s.name.as_str() {
            "strata_produce_records_total" => Some(0),
            "strata_produce_bytes_total" => Some(1),
            "strata_fetch_records_total" => Some(2),
            "strata_fetch_bytes_total" => Some(3),
            _ => None,
        };
        if let Some(i) = counter {
            f.counters.entry(topic).or_default()[i] += s.value;
            continue;
        }
        match s.name.as_str() {
            "strata_partition_high_watermark" => {
                *hw.entry((topic.clone(), label(s, "partition").to_string())).or_default() += s.value;
                f.retained.entry(topic).or_default().2 += 1;
            }
            "strata_partition_log_start_offset" => {
                *hw.entry((topic, label(s, "partition").to_string())).or_default() -= s.value;
            }
            "strata_partition_size_bytes" => f.retained.entry(topic).or_default().1 += s.value,
            "strata_consumer_group_lag" => {
                let e = f.lag.entry((label(s, "group").to_string(), topic)).or_default();
                e.0 += s.value;
                e.1 += 1;
            }
            "strata_connections" => f.connections += s.value,
            _ => {}
        }
    }
    for ((topic, _), records) in hw {
        f.retained.entry(topic).or_default().0 += records;
    }
    f
}

fn rate(now: f64, before: Option<f64>, seconds: f64) -> String {
    match before {
        Some(b) if seconds > 0.0 => human((now - b).max(0.0) / seconds),
        _ => "-".to_string(),
    }
}

/// 1234567 -> "1.23M".
fn human(v: f64) -> String {
    match v {
        v if v >= 1e9 => format!("{:.2}G", v / 1e9),
        v if v >= 1e6 => format!("{:.2}M", v / 1e6),
        v if v >= 1e4 => format!("{:.1}k", v / 1e3),
        v => format!("{v:.0}"),
    }
}

/// The view of `now`, with rates against `before` taken `seconds` earlier.
fn render(http: &str, now: &Frame, before: Option<&Frame>, seconds: f64) -> String {
    let mut out = String::new();
    let when = humantime::format_rfc3339_seconds(std::time::SystemTime::now());
    out.push_str(&format!("strata top  {http}  {when}  connections {}\n\n", now.connections));
    out.push_str(&format!(
        "{:<32} {:>10} {:>10} {:>10} {:>10} {:>12} {:>10} {:>5}\n",
        "TOPIC", "IN REC/S", "IN B/S", "OUT REC/S", "OUT B/S", "RECORDS", "BYTES", "PARTS"
    ));
    let topics: std::collections::BTreeSet<&String> = now.counters.keys().chain(now.retained.keys()).collect();
    for topic in topics {
        let c = now.counters.get(topic).copied().unwrap_or_default();
        let b = before.and_then(|f| f.counters.get(topic)).copied();
        let (records, bytes, parts) = now.retained.get(topic).copied().unwrap_or_default();
        out.push_str(&format!(
            "{:<32} {:>10} {:>10} {:>10} {:>10} {:>12} {:>10} {:>5}\n",
            topic,
            rate(c[0], b.map(|b| b[0]), seconds),
            rate(c[1], b.map(|b| b[1]), seconds),
            rate(c[2], b.map(|b| b[2]), seconds),
            rate(c[3], b.map(|b| b[3]), seconds),
            human(records),
            human(bytes),
            parts
        ));
    }
    if !now.lag.is_empty() {
        out.push_str(&format!("\n{:<24} {:<32} {:>12} {:>10} {:>5}\n", "GROUP", "TOPIC", "LAG", "LAG/S", "PARTS"));
        for ((group, topic), (lag, parts)) in &now.lag {
            let trend = match before.and_then(|f| f.lag.get(&(group.clone(), topic.clone()))) {
                Some((b, _)) if seconds > 0.0 => format!("{:+.0}", (lag - b) / seconds),
                _ => "-".to_string(),
            };
            out.push_str(&format!("{group:<24} {topic:<32} {:>12} {trend:>10} {parts:>5}\n", *lag as u64));
        }
    }
    out
}

pub async fn run(args: TopArgs) -> anyhow::Result<()> {
    let tty = std::io::IsTerminal::is_terminal(&std::io::stdout());
    let mut before: Option<(Frame, Instant)> = None;
    let mut shown = 0u64;
    loop {
        let samples = scrape::scrape(&args.http).await.map_err(|e| {
            super::failed(
                super::Failure::Unreachable,
                format!("{e:#} (is the broker's HTTP listener on {}? set --http or STRATA_HTTP)", args.http),
            )
        })?;
        let now = (frame(&samples), Instant::now());
        if let Some((prev, at)) = &before {
            let view = render(&args.http, &now.0, Some(prev), now.1.duration_since(*at).as_secs_f64());
            let mut stdout = std::io::stdout().lock();
            if tty {
                write!(stdout, "\x1b[H\x1b[2J")?;
            } else if shown > 0 {
                writeln!(stdout)?;
            }
            stdout.write_all(view.as_bytes())?;
            stdout.flush()?;
            shown += 1;
            if args.iterations.is_some_and(|n| shown >= n) {
                return Ok(());
            }
        }
        before = Some(now);
        tokio::select! {
            _ = tokio::time::sleep(args.interval) => {}
            _ = tokio::signal::ctrl_c() => return Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(name: &str, labels: &[(&str, &str)], value: f64) -> Sample {
        Sample {
            name: name.into(),
            labels: labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
            value,
        }
    }

    #[test]
    fn rates_come_from_two_scrapes() {
        let at = |records: f64, lag: f64| {
            frame(&[
                sample("strata_produce_records_total", &[("topic", "t")], records),
                sample("strata_partition_high_watermark", &[("topic", "t"), ("partition", "0")], records),
                sample("strata_partition_log_start_offset", &[("topic", "t"), ("partition", "0")], 10.0),
                sample("strata_consumer_group_lag", &[("group", "g"), ("topic", "t"), ("partition", "0")], lag),
            ])
        };
        let (before, now) = (at(100.0, 50.0), at(300.0, 30.0));
        let view = render("h:1", &now, Some(&before), 2.0);
        let row = view.lines().find(|l| l.starts_with("t ")).unwrap();
        let cells: Vec<&str> = row.split_whitespace().collect();
        assert_eq!(cells[1], "100", "200 records in 2 s: {view}");
        assert_eq!(cells[5], "290", "300 - 10 retained: {view}");
        let group = view.lines().find(|l| l.starts_with("g ")).unwrap();
        assert!(group.contains(" 30 ") && group.contains("-10"), "{view}");
    }

    #[test]
    fn numbers_are_short() {
        assert_eq!(human(999.0), "999");
        assert_eq!(human(12_345.0), "12.3k");
        assert_eq!(human(1_500_000.0), "1.50M");
    }
}
