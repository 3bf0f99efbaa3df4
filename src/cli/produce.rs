//! `strata produce TOPIC [--key K] [-K SEP] [--header k=v]... [--partition N] [VALUE]`:
//! one record, or one record per stdin line when VALUE is absent. Lines are
//! sent as they arrive (`tail -f app.log | strata produce logs` works):
//! whatever has come in within `LINGER` of the first waiting line goes in
//! one request, at most `LINES_PER_REQUEST`. One summary line at the end.

use std::collections::BTreeMap;
use std::io::BufRead;
use std::time::Duration;

use super::{connect, status_error, ClientArgs, Format};
use crate::cli::topic::parse_pair;
use crate::proto;

/// Lines sent per request when reading stdin, at most.
const LINES_PER_REQUEST: usize = 500;

/// How long a line waits for others to share its request.
const LINGER: Duration = Duration::from_millis(5);

#[derive(Debug, clap::Args)]
pub struct ProduceArgs {
    /// Topic to publish to.
    pub topic: String,
    /// The record value; without it, each stdin line is one record.
    pub value: Option<String>,
    /// Record key (decides the partition unless --partition is given).
    #[arg(long, short = 'k')]
    pub key: Option<String>,
    /// Split each stdin line into KEY SEP VALUE at the first SEP (kcat's
    /// -K): `-K :` makes `cust-42:refund` key cust-42, value refund. A line
    /// without SEP is a value with no key.
    #[arg(long, short = 'K', value_name = "SEP")]
    pub key_separator: Option<String>,
    /// Header KEY=VALUE (repeatable).
    #[arg(long = "header", short = 'H', value_parser = parse_pair)]
    pub headers: Vec<(String, String)>,
    /// Partition to write to (default: by key, else round robin).
    #[arg(long, short = 'p')]
    pub partition: Option<u32>,
}

pub async fn run(args: ProduceArgs, client_args: &ClientArgs) -> anyhow::Result<()> {
    let mut client = connect(client_args).await?;
    let make = |line: Vec<u8>| {
        let (key, value) = match args.key_separator.as_deref().filter(|s| !s.is_empty()) {
            Some(sep) => match find(&line, sep.as_bytes()) {
                Some(at) => (line[..at].to_vec(), line[at + sep.len()..].to_vec()),
                None => (Vec::new(), line),
            },
            None => (args.key.clone().unwrap_or_default().into_bytes(), line),
        };
        proto::Record {
            key: key.into(),
            value: value.into(),
            headers: args.headers.iter().map(|(k, v)| (k.clone(), v.clone().into_bytes().into())).collect(),
            timestamp_ms: 0,
        }
    };
    let mut summary = Summary::default();
    let mut send = async |records: Vec<proto::Record>| -> anyhow::Result<()> {
        let response = client
            .produce(proto::ProduceRequest {
                topic: args.topic.clone(),
                partition: args.partition,
                records,
                ..Default::default()
            })
            .await
            .map_err(status_error)?
            .into_inner();
        for r in response.results {
            summary.add(r.partition, r.base_offset, r.last_offset);
        }
        summary.duplicates.extend(response.duplicates.into_iter().map(|d| (d.partition, d.offset)));
        Ok(())
    };
    match &args.value {
        Some(v) => send(vec![make(v.clone().into_bytes())]).await?,
        None => {
            let mut lines = stdin_lines();
            let mut open = true;
            while open {
                let Some(first) = lines.recv().await else { break };
                let mut batch = vec![make(first?)];
                let linger = tokio::time::sleep(LINGER);
                tokio::pin!(linger);
                while batch.len() < LINES_PER_REQUEST {
                    tokio::select! {
                        line = lines.recv() => match line {
                            Some(line) => batch.push(make(line?)),
                            None => {
                                open = false;
                                break;
                            }
                        },
                        _ = &mut linger => break,
                    }
                }
                send(batch).await?;
            }
        }
    }
    summary.print(&args.topic, client_args.format);
    Ok(())
}

/// Stdin's lines as they arrive (bytes as they are, without the line end),
/// read on a thread of their own.
fn stdin_lines() -> tokio::sync::mpsc::Receiver<std::io::Result<Vec<u8>>> {
    let (tx, rx) = tokio::sync::mpsc::channel(LINES_PER_REQUEST * 2);
    std::thread::spawn(move || {
        let mut input = std::io::stdin().lock();
        loop {
            let mut line = Vec::new();
            let line = match input.read_until(b'\n', &mut line) {
                Ok(0) => break,
                Ok(_) => {
                    if line.last() == Some(&b'\n') {
                        line.pop();
                        if line.last() == Some(&b'\r') {
                            line.pop();
                        }
                    }
                    Ok(line)
                }
                Err(e) => Err(e),
            };
            let failed = line.is_err();
            if tx.blocking_send(line).is_err() || failed {
                break;
            }
        }
    });
    rx
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// Records written, per partition: (count, first offset, last offset), and
/// records not written as duplicates (de-dup): (partition, offset of the
/// record appended first).
#[derive(Default)]
struct Summary {
    written: BTreeMap<u32, (u64, u64, u64)>,
    duplicates: Vec<(u32, u64)>,
}

impl Summary {
    fn add(&mut self, partition: u32, base: u64, last: u64) {
        let e = self.written.entry(partition).or_insert((0, base, last));
        e.0 += last - base + 1;
        e.1 = e.1.min(base);
        e.2 = e.2.max(last);
    }

    fn print(&self, topic: &str, format: Format) {
        let total: u64 = self.written.values().map(|e| e.0).sum();
        match format {
            Format::Json => {
                let partitions: Vec<_> = self
                    .written
                    .iter()
                    .map(|(p, (n, first, last))| {
                        serde_json::json!({"partition": p, "records": n, "base_offset": first, "last_offset": last})
                    })
                    .collect();
                let duplicates: Vec<_> = self
                    .duplicates
                    .iter()
                    .map(|(p, offset)| serde_json::json!({"partition": p, "duplicate_of": offset}))
                    .collect();
                let mut out = serde_json::json!({
                    "topic": topic, "records": total, "partitions": partitions, "duplicates": duplicates
                });
                if let [(p, (_, first, last))] = self.written.iter().collect::<Vec<_>>()[..] {
                    // One partition: its fields at the top too, as for one record.
                    out["partition"] = (*p).into();
                    out["base_offset"] = (*first).into();
                    out["last_offset"] = (*last).into();
                }
                println!("{out}");
            }
            Format::Text => {
                let parts: Vec<String> = self
                    .written
                    .iter()
                    .map(|(p, (n, first, last))| {
                        if *n == last - first + 1 {
                            format!("{topic}[{p}] offsets {first}..={last}")
                        } else {
                            format!("{topic}[{p}] {n} between offsets {first}..={last}")
                        }
                    })
                    .collect();
                if let [(p, offset)] = self.duplicates[..] {
                    println!("duplicate of offset {offset} ({topic}[{p}]): not appended again");
                } else if !self.duplicates.is_empty() {
                    let n = self.duplicates.len();
                    let first: Vec<String> =
                        self.duplicates.iter().take(5).map(|(p, o)| format!("offset {o} ({topic}[{p}])")).collect();
                    let more = if n > 5 { ", ..." } else { "" };
                    println!("{n} duplicate(s), not appended again: of {}{more}", first.join(", "));
                }
                if parts.is_empty() {
                    if self.duplicates.is_empty() {
                        println!("0 records (stdin was empty)");
                    }
                } else {
                    println!("{total} record(s) -> {}", parts.join(", "));
                }
            }
        }
    }
}
