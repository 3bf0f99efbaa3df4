//! `strata consume TOPIC_OR_PATTERN [--from ...] [--max N] [--follow]`.
//! Without --follow it reads what is there now and exits; with --follow it
//! keeps streaming (Subscribe), including topics created later.

use super::{connect, status_error, ClientArgs, Format};
use crate::cli::time::{format_ms, parse_time_ms};
use crate::proto::{self, position::Position as P};
use tokio_stream::StreamExt;

#[derive(Debug, clap::Args)]
pub struct ConsumeArgs {
    /// A topic name, or a glob pattern (`payments.*`).
    pub topic: String,
    /// Where to start: earliest, latest, an offset, or a time (RFC 3339 or -1h).
    #[arg(long, default_value = "earliest", allow_hyphen_values = true)]
    pub from: String,
    /// Stop after this many records.
    #[arg(long)]
    pub max: Option<u64>,
    /// Keep waiting for new records.
    #[arg(long)]
    pub follow: bool,
    /// Consume as a member of this group: start at its committed offsets
    /// (--from applies where nothing is committed) and commit as it goes.
    #[arg(long)]
    pub group: Option<String>,
}

/// Parses `--from` into a position.
pub fn parse_from(text: &str) -> anyhow::Result<proto::Position> {
    let position = match text {
        "earliest" => P::Boundary(proto::Boundary::Earliest as i32),
        "latest" => P::Boundary(proto::Boundary::Latest as i32),
        t if t.chars().all(|c| c.is_ascii_digit()) => P::Offset(t.parse()?),
        t => P::TimestampMs(parse_time_ms(t).map_err(|e| anyhow::anyhow!(e))?),
    };
    Ok(proto::Position { position: Some(position) })
}

pub async fn run(args: ConsumeArgs, client_args: &ClientArgs) -> anyhow::Result<()> {
    let mut client = connect(client_args).await?;
    let from = parse_from(&args.from)?;
    let max = args.max.unwrap_or(u64::MAX);
    let mut printed = 0u64;
    if let Some(group) = &args.group {
        return consume_group(&mut client, &args, group, client_args.format).await;
    }
    if args.follow {
        let mut stream = client
            .subscribe(proto::SubscribeRequest {
                topic_pattern: args.topic.clone(),
                group: None,
                from: Some(from),
                fallback: None,
                raw_batches: false,
            })
            .await
            .map_err(status_error)?
            .into_inner();
        while let Some(msg) = stream.next().await {
            for r in msg.map_err(status_error)?.records {
                print_record(&r, client_args.format);
                printed += 1;
                if printed >= max {
                    return Ok(());
                }
            }
        }
        return Ok(());
    }
    let topics = client
        .list_topics(proto::ListTopicsRequest { topic_pattern: args.topic.clone() })
        .await
        .map_err(status_error)?
        .into_inner()
        .topics;
    if topics.is_empty() {
        anyhow::bail!("NotFound: no topic matches {:?}", args.topic);
    }
    for topic in topics {
        for p in &topic.partition_descriptions {
            let end = p.high_watermark;
            let start = client
                .list_offsets(proto::ListOffsetsRequest {
                    topic: topic.name.clone(),
                    partition: p.partition,
                    at: Some(from),
                })
                .await
                .map_err(status_error)?
                .into_inner()
                .offset;
            let mut next = start.max(p.log_start_offset);
            while next < end && printed < max {
                let r = client
                    .fetch(proto::FetchRequest {
                        topic: topic.name.clone(),
                        partition: p.partition,
                        from: Some(proto::Position { position: Some(P::Offset(next)) }),
                        max_records: (max - printed).min(1000) as u32,
                        ..Default::default()
                    })
                    .await
                    .map_err(status_error)?
                    .into_inner();
                if r.records.is_empty() {
                    break;
                }
                next = r.next_offset;
                for rec in r.records.iter().filter(|rec| rec.offset < end) {
                    print_record(rec, client_args.format);
                    printed += 1;
                }
            }
        }
    }
    Ok(())
}

pub fn print_record(r: &proto::StoredRecord, format: Format) {
    let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    match format {
        Format::Json => {
            let headers: serde_json::Map<String, serde_json::Value> =
                r.headers.iter().map(|(k, v)| (k.clone(), text(v).into())).collect();
            println!(
                "{}",
                serde_json::json!({
                    "topic": r.topic, "partition": r.partition, "offset": r.offset,
                    "timestamp_ms": r.timestamp_ms, "key": text(&r.key), "value": text(&r.value),
                    "headers": headers,
                })
            );
        }
        Format::Text => {
            let mut line = format!("{}[{}]@{}  {}", r.topic, r.partition, r.offset, format_ms(r.timestamp_ms));
            if !r.key.is_empty() {
                line.push_str(&format!("  key={}", text(&r.key)));
            }
            let mut headers: Vec<_> = r.headers.iter().collect();
            headers.sort();
            for (k, v) in headers {
                line.push_str(&format!("  {k}={}", text(v)));
            }
            line.push_str("  ");
            line.push_str(&text(&r.value));
            println!("{line}");
        }
    }
}

/// Group consumption: the Subscribe stream is the membership. Each received
/// batch is printed, then committed (at least once: a crash between the two
/// re-delivers the batch). Without --follow it stops once every assigned
/// partition has reached the high watermark it had when assigned.
async fn consume_group(
    client: &mut crate::proto::broker_client::BrokerClient<tonic::transport::Channel>,
    args: &ConsumeArgs,
    group: &str,
    format: Format,
) -> anyhow::Result<()> {
    let mut member_id = String::new();
    let result = consume_group_stream(client, args, group, format, &mut member_id).await;
    if !member_id.is_empty() {
        // Leave now rather than when the broker notices the closed stream,
        // so a `group reset` right after this command is not refused.
        let _ = client.leave_group(proto::LeaveGroupRequest { group: group.to_string(), member_id }).await;
    }
    result
}

async fn consume_group_stream(
    client: &mut crate::proto::broker_client::BrokerClient<tonic::transport::Channel>,
    args: &ConsumeArgs,
    group: &str,
    format: Format,
    member_id: &mut String,
) -> anyhow::Result<()> {
    let (from, fallback) = match args.from.as_str() {
        "earliest" => (None, proto::Boundary::Earliest),
        "latest" => (None, proto::Boundary::Latest),
        other => (Some(parse_from(other)?), proto::Boundary::Earliest),
    };
    let from = from.unwrap_or(proto::Position { position: Some(P::Boundary(proto::Boundary::Committed as i32)) });
    let mut stream = client
        .subscribe(proto::SubscribeRequest {
            topic_pattern: args.topic.clone(),
            group: Some(group.to_string()),
            from: Some(from),
            fallback: Some(fallback as i32),
            raw_batches: false,
        })
        .await
        .map_err(status_error)?
        .into_inner();
    let max = args.max.unwrap_or(u64::MAX);
    let mut printed = 0u64;
    // Per assigned partition: the high watermark to reach (without --follow).
    let mut targets: std::collections::BTreeMap<(String, u32), u64> = std::collections::BTreeMap::new();
    let mut positions: std::collections::BTreeMap<(String, u32), u64> = std::collections::BTreeMap::new();
    let mut generation = None;
    loop {
        if !args.follow
            && generation.is_some()
            && targets.iter().all(|(tp, hw)| positions.get(tp).copied().unwrap_or(0) >= *hw)
        {
            return Ok(());
        }
        let wait =
            if args.follow { std::time::Duration::from_secs(u64::MAX / 4) } else { std::time::Duration::from_secs(10) };
        let msg = match tokio::time::timeout(wait, stream.next()).await {
            Ok(Some(m)) => m.map_err(status_error)?,
            Ok(None) => return Ok(()),
            Err(_) => return Ok(()),
        };
        if generation != Some(msg.generation) {
            generation = Some(msg.generation);
            member_id.clone_from(&msg.member_id);
            targets.clear();
            for a in &msg.assignments {
                let d = client
                    .describe_topic(proto::DescribeTopicRequest { name: a.topic.clone() })
                    .await
                    .map_err(status_error)?
                    .into_inner();
                let committed = client
                    .fetch_committed_offsets(proto::FetchCommittedOffsetsRequest {
                        group: group.to_string(),
                        topic: Some(a.topic.clone()),
                    })
                    .await
                    .map_err(status_error)?
                    .into_inner()
                    .offsets;
                for p in &a.partitions {
                    let desc = d.partition_descriptions.iter().find(|x| x.partition == *p);
                    let (lso, hw) = desc.map(|x| (x.log_start_offset, x.high_watermark)).unwrap_or((0, 0));
                    targets.insert((a.topic.clone(), *p), hw);
                    let start = committed.iter().find(|c| c.partition == *p).map(|c| c.offset);
                    let unstarted = if fallback == proto::Boundary::Latest { hw } else { lso };
                    positions.entry((a.topic.clone(), *p)).or_insert(start.unwrap_or(unstarted));
                }
            }
        }
        if msg.records.is_empty() {
            continue;
        }
        let mut commits: std::collections::BTreeMap<(String, u32), u64> = std::collections::BTreeMap::new();
        for r in &msg.records {
            if printed >= max {
                break;
            }
            print_record(r, format);
            printed += 1;
            commits.insert((r.topic.clone(), r.partition), r.offset + 1);
        }
        for (tp, next) in &commits {
            positions.insert(tp.clone(), *next);
        }
        client
            .commit_offsets(proto::CommitOffsetsRequest {
                group: group.to_string(),
                member_id: msg.member_id.clone(),
                generation: msg.generation,
                offsets: commits
                    .into_iter()
                    .map(|((topic, partition), offset)| proto::OffsetCommit {
                        topic,
                        partition,
                        offset,
                        metadata: String::new(),
                    })
                    .collect(),
            })
            .await
            .map_err(status_error)?;
        if printed >= max {
            return Ok(());
        }
    }
}
