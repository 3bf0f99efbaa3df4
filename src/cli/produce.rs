//! `strata produce TOPIC [--key K] [--header k=v]... [--partition N] [VALUE]`:
//! one record, or one record per stdin line when VALUE is absent.

use std::io::BufRead;

use super::{connect, status_error, ClientArgs, Format};
use crate::cli::topic::parse_pair;
use crate::proto;

/// Lines sent per request when reading stdin.
const LINES_PER_REQUEST: usize = 500;

#[derive(Debug, clap::Args)]
pub struct ProduceArgs {
    pub topic: String,
    /// The record value; without it, each stdin line is one record.
    pub value: Option<String>,
    /// Record key (decides the partition unless --partition is given).
    #[arg(long)]
    pub key: Option<String>,
    /// Header KEY=VALUE (repeatable).
    #[arg(long = "header", value_parser = parse_pair)]
    pub headers: Vec<(String, String)>,
    #[arg(long)]
    pub partition: Option<u32>,
}

pub async fn run(args: ProduceArgs, client_args: &ClientArgs) -> anyhow::Result<()> {
    let mut client = connect(client_args).await?;
    let make = |value: String| proto::Record {
        key: args.key.clone().unwrap_or_default().into_bytes().into(),
        value: value.into_bytes().into(),
        headers: args.headers.iter().map(|(k, v)| (k.clone(), v.clone().into_bytes().into())).collect(),
        timestamp_ms: 0,
    };
    let mut batches: Vec<Vec<proto::Record>> = Vec::new();
    match &args.value {
        Some(v) => batches.push(vec![make(v.clone())]),
        None => {
            let mut current = Vec::new();
            for line in std::io::stdin().lock().lines() {
                current.push(make(line?));
                if current.len() == LINES_PER_REQUEST {
                    batches.push(std::mem::take(&mut current));
                }
            }
            if !current.is_empty() {
                batches.push(current);
            }
        }
    }
    let mut total = 0usize;
    for records in batches {
        let count = records.len();
        let results = client
            .produce(proto::ProduceRequest {
                topic: args.topic.clone(),
                partition: args.partition,
                records,
                ..Default::default()
            })
            .await
            .map_err(status_error)?
            .into_inner()
            .results;
        total += count;
        for r in results {
            match client_args.format {
                Format::Json => println!(
                    "{}",
                    serde_json::json!({"topic": args.topic, "partition": r.partition, "base_offset": r.base_offset, "last_offset": r.last_offset})
                ),
                Format::Text => println!(
                    "{} record(s) -> {}[{}] offsets {}..={}",
                    r.last_offset - r.base_offset + 1,
                    args.topic,
                    r.partition,
                    r.base_offset,
                    r.last_offset
                ),
            }
        }
    }
    tracing::debug!(total, "produced");
    Ok(())
}
