//! `strata topic create|list|describe|alter|delete`.

use std::collections::HashMap;

use clap::Subcommand;

use super::{connect, status_error, ClientArgs, Format};
use crate::cli::time::format_ms;
use crate::proto;

#[derive(Debug, Subcommand)]
pub enum TopicCommand {
    /// Create a topic.
    Create {
        /// Topic name (letters, digits, `.`, `_`, `-`).
        name: String,
        /// Partition count [default: the broker's, 1].
        #[arg(long, short = 'p')]
        partitions: Option<u32>,
        /// Config override, KEY=VALUE (repeatable), e.g. retention.ms=86400000.
        #[arg(long = "config", value_parser = parse_pair)]
        config: Vec<(String, String)>,
    },
    /// List topics, optionally only those matching a glob pattern.
    List {
        /// A glob pattern, e.g. `payments.*` [default: every topic].
        pattern: Option<String>,
    },
    /// Show partitions, offsets, sizes and the effective config.
    Describe {
        /// Topic name.
        name: String,
    },
    /// Change config keys (--config KEY=VALUE), remove overrides
    /// (--delete-config KEY), or add partitions (--partitions N).
    Alter {
        /// Topic name.
        name: String,
        /// Set KEY to VALUE (repeatable).
        #[arg(long = "config", value_parser = parse_pair, required_unless_present_any = ["delete_config", "partitions"])]
        config: Vec<(String, String)>,
        /// Grow the topic to N partitions in all (partitions are never removed;
        /// keyed records hash over the new count from then on).
        #[arg(long, short = 'p')]
        partitions: Option<u32>,
        /// Remove the topic's override of KEY, so the broker default applies (repeatable).
        #[arg(long = "delete-config", value_name = "KEY")]
        delete_config: Vec<String>,
    },
    /// Delete a topic and all its data.
    Delete {
        /// Topic name.
        name: String,
    },
}

pub fn parse_pair(s: &str) -> Result<(String, String), String> {
    s.split_once('=')
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .ok_or_else(|| format!("expected KEY=VALUE, got {s:?}"))
}

pub async fn run(command: TopicCommand, args: &ClientArgs) -> anyhow::Result<()> {
    let mut client = connect(args).await?;
    match command {
        TopicCommand::Create { name, partitions, config } => {
            let t = client
                .create_topic(proto::CreateTopicRequest {
                    name,
                    partitions: partitions.unwrap_or(0),
                    config: config.into_iter().collect(),
                })
                .await
                .map_err(status_error)?
                .into_inner();
            match args.format {
                Format::Json => println!("{}", topic_json(&t)),
                Format::Text => println!("created topic {} with {} partition(s)", t.name, t.partitions),
            }
        }
        TopicCommand::List { pattern } => {
            let topics = client
                .list_topics(proto::ListTopicsRequest { topic_pattern: pattern.unwrap_or_default() })
                .await
                .map_err(status_error)?
                .into_inner()
                .topics;
            match args.format {
                Format::Json => {
                    let all: Vec<_> = topics.iter().map(topic_json).collect();
                    println!("{}", serde_json::Value::Array(all));
                }
                Format::Text => {
                    println!("{:<40} {:>10} {:>14} {:>12}", "TOPIC", "PARTITIONS", "RECORDS", "SIZE");
                    for t in &topics {
                        let records: u64 =
                            t.partition_descriptions.iter().map(|p| p.high_watermark - p.log_start_offset).sum();
                        let size: u64 = t.partition_descriptions.iter().map(|p| p.size_bytes).sum();
                        println!("{:<40} {:>10} {:>14} {:>12}", t.name, t.partitions, records, human_bytes(size));
                    }
                }
            }
        }
        TopicCommand::Describe { name } => {
            let t =
                client.describe_topic(proto::DescribeTopicRequest { name }).await.map_err(status_error)?.into_inner();
            match args.format {
                Format::Json => println!("{}", topic_json(&t)),
                Format::Text => print_description(&t),
            }
        }
        TopicCommand::Alter { name, config, delete_config, partitions } => {
            if let Some((k, _)) = config.iter().find(|(_, v)| v.is_empty()) {
                anyhow::bail!("--config {k}= has no value (use --delete-config {k} to remove an override)");
            }
            let mut t = None;
            if let Some(n) = partitions {
                let request = proto::CreatePartitionsRequest { name: name.clone(), partitions: n };
                t = Some(client.create_partitions(request).await.map_err(status_error)?.into_inner());
            }
            // An empty value removes the override (AlterTopicConfig's contract).
            let changes: HashMap<String, String> =
                config.into_iter().chain(delete_config.into_iter().map(|k| (k, String::new()))).collect();
            if !changes.is_empty() {
                let request = proto::AlterTopicConfigRequest { name, config: changes };
                t = Some(client.alter_topic_config(request).await.map_err(status_error)?.into_inner());
            }
            let t =
                t.ok_or_else(|| anyhow::anyhow!("nothing to change: give --config, --delete-config or --partitions"))?;
            match args.format {
                Format::Json => println!("{}", topic_json(&t)),
                Format::Text => print_description(&t),
            }
        }
        TopicCommand::Delete { name } => {
            client.delete_topic(proto::DeleteTopicRequest { name: name.clone() }).await.map_err(status_error)?;
            if args.format == Format::Text {
                println!("deleted topic {name}");
            }
        }
    }
    Ok(())
}

fn print_description(t: &proto::TopicDescription) {
    println!("topic {}  ({} partitions)", t.name, t.partitions);
    println!(
        "{:>9} {:>14} {:>14} {:>10} {:>9}  {:<24} {:<24}",
        "PARTITION", "LOG-START", "HIGH-WATERMARK", "SIZE", "SEGMENTS", "FIRST-TIMESTAMP", "LAST-TIMESTAMP"
    );
    for p in &t.partition_descriptions {
        println!(
            "{:>9} {:>14} {:>14} {:>10} {:>9}  {:<24} {:<24}",
            p.partition,
            p.log_start_offset,
            p.high_watermark,
            human_bytes(p.size_bytes),
            p.segments,
            p.first_timestamp_ms.map(format_ms).unwrap_or_else(|| "-".into()),
            p.last_timestamp_ms.map(format_ms).unwrap_or_else(|| "-".into()),
        );
    }
    if t.config.get("dedupe.window.ms").is_some_and(|w| w != "0") {
        let ids: u64 = t.partition_descriptions.iter().map(|p| p.dedupe_ids).sum();
        let bytes: u64 = t.partition_descriptions.iter().map(|p| p.dedupe_memory_bytes).sum();
        println!("de-dup: {ids} event id(s) remembered, about {}", human_bytes(bytes));
    }
    println!("config:");
    let mut keys: Vec<_> = t.config.iter().collect();
    keys.sort();
    for (k, v) in keys {
        println!("  {k} = {v}");
    }
}

pub fn topic_json(t: &proto::TopicDescription) -> serde_json::Value {
    let config: HashMap<_, _> = t.config.iter().collect();
    serde_json::json!({
        "name": t.name,
        "partitions": t.partitions,
        "partition_descriptions": t.partition_descriptions.iter().map(|p| serde_json::json!({
            "partition": p.partition,
            "log_start_offset": p.log_start_offset,
            "high_watermark": p.high_watermark,
            "size_bytes": p.size_bytes,
            "segments": p.segments,
            "first_timestamp_ms": p.first_timestamp_ms,
            "last_timestamp_ms": p.last_timestamp_ms,
            "dedupe_ids": p.dedupe_ids,
            "dedupe_memory_bytes": p.dedupe_memory_bytes,
        })).collect::<Vec<_>>(),
        "config": config,
    })
}

pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut unit = 0;
    while v >= 1024.0 && unit < UNITS.len() - 1 {
        v /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[unit])
    }
}
