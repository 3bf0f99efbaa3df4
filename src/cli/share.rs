//! `strata share list | describe G | alter G --config k=v | delete G | redrive G`,
//! and `strata consume PATTERN --share G`: a share group member that accepts
//! each record it prints (or rejects / releases those whose value matches).

use clap::Subcommand;

use super::consume::{ConsumeArgs, Printer};
use super::{connect, status_error, ClientArgs, Format};
use crate::cli::time::format_ms;
use crate::proto;

type Client = super::Client;

#[derive(Debug, Subcommand)]
pub enum ShareCommand {
    /// Share groups.
    List,
    /// Config, members seen in the last minute, and a table per partition.
    Describe {
        /// Share group name.
        group: String,
    },
    /// Change config keys (ack.wait.ms, max.deliveries, backoff.ms,
    /// dead.letter.topic, auto.offset.reset, max.in.flight); creates the
    /// group if it does not exist.
    Alter {
        group: String,
        #[arg(long = "config", value_parser = super::topic::parse_pair, required = true)]
        config: Vec<(String, String)>,
    },
    /// Delete a share group and its state (its dead-letter topic stays).
    Delete { group: String },
    /// Append the group's dead letters back to their original topics.
    Redrive {
        group: String,
        /// At most this many [default: 1000].
        #[arg(long, short = 'c')]
        max: Option<u32>,
    },
}

pub async fn run(command: ShareCommand, args: &ClientArgs) -> anyhow::Result<()> {
    let mut client = connect(args).await?;
    match command {
        ShareCommand::List => {
            let groups = client
                .list_share_groups(proto::ListShareGroupsRequest {})
                .await
                .map_err(status_error)?
                .into_inner()
                .groups;
            match args.format {
                Format::Json => println!("{}", serde_json::json!(groups)),
                Format::Text => groups.iter().for_each(|g| println!("{g}")),
            }
        }
        ShareCommand::Describe { group } => {
            let d = client
                .describe_share_group(proto::DescribeShareGroupRequest { group })
                .await
                .map_err(status_error)?
                .into_inner();
            print_description(&d, args.format);
        }
        ShareCommand::Alter { group, config } => {
            let request = proto::AlterShareGroupRequest { group, config: config.into_iter().collect() };
            let d = client.alter_share_group(request).await.map_err(status_error)?.into_inner();
            print_description(&d, args.format);
        }
        ShareCommand::Delete { group } => {
            client
                .delete_share_group(proto::DeleteShareGroupRequest { group: group.clone() })
                .await
                .map_err(status_error)?;
            if args.format == Format::Text {
                println!("deleted share group {group}");
            }
        }
        ShareCommand::Redrive { group, max } => {
            let request = proto::RedriveDeadLettersRequest { group: group.clone(), max_records: max.unwrap_or(0) };
            let moved = client.redrive_dead_letters(request).await.map_err(status_error)?.into_inner().moved;
            match args.format {
                Format::Json => println!("{}", serde_json::json!({"group": group, "moved": moved})),
                Format::Text => println!("redrove {moved} dead letter(s) of {group}"),
            }
        }
    }
    Ok(())
}

fn print_description(d: &proto::ShareGroupDescription, format: Format) {
    if format == Format::Json {
        let partitions: Vec<_> = d
            .partitions
            .iter()
            .map(|p| {
                serde_json::json!({
                    "topic": p.topic, "partition": p.partition, "start_offset": p.start_offset,
                    "next_offset": p.next_offset, "high_watermark": p.high_watermark, "acquired": p.acquired,
                    "available": p.available, "dead_lettering": p.dead_lettering,
                    "dead_lettered_total": p.dead_lettered_total, "dropped_total": p.dropped_total,
                })
            })
            .collect();
        let members: Vec<_> = d
            .members
            .iter()
            .map(|m| serde_json::json!({"member_id": m.member_id, "last_seen_ms": m.last_seen_ms}))
            .collect();
        println!(
            "{}",
            serde_json::json!({"group": d.group, "config": d.config, "partitions": partitions, "members": members})
        );
        return;
    }
    println!("share group {}", d.group);
    let mut config: Vec<_> = d.config.iter().collect();
    config.sort();
    for (k, v) in config {
        println!("  {k} = {v}");
    }
    println!("members seen in the last minute: {}", d.members.len());
    for m in &d.members {
        println!("  {}  last seen {}", m.member_id, format_ms(m.last_seen_ms));
    }
    println!();
    println!(
        "{:<30} {:>9} {:>12} {:>14} {:>12} {:>9} {:>10} {:>14}",
        "TOPIC",
        "PARTITION",
        "START-OFFSET",
        "HIGH-WATERMARK",
        "NOT-DELIVERED",
        "ACQUIRED",
        "AVAILABLE",
        "DEAD-LETTERED"
    );
    let (mut acquired, mut available, mut dead, mut pending) = (0, 0, 0, 0);
    for p in &d.partitions {
        let not_delivered = p.high_watermark.saturating_sub(p.next_offset);
        println!(
            "{:<30} {:>9} {:>12} {:>14} {:>12} {:>9} {:>10} {:>14}",
            p.topic,
            p.partition,
            p.start_offset,
            p.high_watermark,
            not_delivered,
            p.acquired,
            p.available,
            p.dead_lettered_total
        );
        acquired += p.acquired;
        available += p.available;
        dead += p.dead_lettered_total;
        pending += not_delivered;
    }
    println!(
        "{:<30} {:>9} {:>12} {:>14} {:>12} {:>9} {:>10} {:>14}",
        "TOTAL", "", "", "", pending, acquired, available, dead
    );
}

/// What `consume --share` does with a record it fetched.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Verdict {
    Accept,
    Release,
    Reject,
}

/// `strata consume PATTERN --share G`: fetches, prints and acknowledges
/// until --max records were accepted or (without --follow) nothing is due.
pub async fn consume(client: &mut Client, args: &ConsumeArgs, group: &str, out: &Printer) -> anyhow::Result<()> {
    let reject_if = args.reject_if.as_deref().map(regex::bytes::Regex::new).transpose()?;
    let release_if = args.release_if.as_deref().map(regex::bytes::Regex::new).transpose()?;
    let exists = client.describe_share_group(proto::DescribeShareGroupRequest { group: group.to_string() }).await;
    match exists {
        Ok(_) => {}
        Err(s) if s.code() == tonic::Code::NotFound => {
            // A new group starts where --from says, as a plain consume would.
            let start = match args.from.as_str() {
                "earliest" | "beginning" => "earliest".to_string(),
                "latest" | "end" => "latest".to_string(),
                other => match super::consume::parse_from(other)? {
                    super::consume::Start::Position(proto::Position {
                        position: Some(proto::position::Position::TimestampMs(ms)),
                    }) => ms.to_string(),
                    _ => anyhow::bail!("--share starts a new group at earliest, latest or a time, not {other:?}"),
                },
            };
            let config = [("auto.offset.reset".to_string(), start)].into_iter().collect();
            let request = proto::AlterShareGroupRequest { group: group.to_string(), config };
            client.alter_share_group(request).await.map_err(status_error)?;
        }
        Err(s) => return Err(status_error(s)),
    }
    let max = args.max.unwrap_or(u64::MAX);
    let mut accepted = 0u64;
    while accepted < max {
        let request = proto::ShareFetchRequest {
            group: group.to_string(),
            topic_pattern: args.topic.clone(),
            max_records: (max - accepted).min(500) as u32,
            max_wait_ms: if args.follow { 5_000 } else { 500 },
            member_id: format!("strata-cli-{}", std::process::id()),
            max_bytes: 0,
        };
        let records = client.share_fetch(request).await.map_err(status_error)?.into_inner().records;
        if records.is_empty() {
            if args.follow {
                continue;
            }
            break;
        }
        let mut acks = Vec::with_capacity(records.len());
        for r in &records {
            let Some(s) = &r.record else { continue };
            let verdict = match (&reject_if, &release_if) {
                (Some(re), _) if re.is_match(&s.value) => Verdict::Reject,
                (_, Some(re)) if re.is_match(&s.value) => Verdict::Release,
                _ => Verdict::Accept,
            };
            let (kind, reason) = match verdict {
                Verdict::Accept => {
                    out.print(s);
                    accepted += 1;
                    (proto::AckType::Accept, String::new())
                }
                Verdict::Release => (proto::AckType::Release, "matched --release-if".to_string()),
                Verdict::Reject => (proto::AckType::Reject, "matched --reject-if".to_string()),
            };
            if verdict != Verdict::Accept {
                eprintln!(
                    "{} {}/{}@{} (delivery {})",
                    if verdict == Verdict::Reject { "rejected" } else { "released" },
                    s.topic,
                    s.partition,
                    s.offset,
                    r.delivery_count
                );
            }
            acks.push(proto::Acknowledgement {
                topic: s.topic.clone(),
                partition: s.partition,
                offset: s.offset,
                r#type: kind as i32,
                delay_ms: None,
                reason,
            });
        }
        let request = proto::AcknowledgeRequest { group: group.to_string(), acknowledgements: acks };
        let results = client.acknowledge(request).await.map_err(status_error)?.into_inner().results;
        for r in results.iter().filter(|r| !r.ok) {
            eprintln!("acknowledgement refused: {}", r.error_message);
        }
    }
    if accepted == 0 && !args.follow {
        eprintln!("no records for share group {group} on {} (wait a backoff, or use --follow)", args.topic);
    }
    Ok(())
}
