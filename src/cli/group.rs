//! `strata group list | describe G | reset G --to ... [--topic P] [--dry-run] | delete G`.

use clap::Subcommand;

use super::{connect, status_error, ClientArgs, Format};
use crate::cli::consume::{parse_from, Start};
use crate::cli::time::format_ms;
use crate::proto;

#[derive(Debug, Subcommand)]
pub enum GroupCommand {
    /// Groups with live members or committed offsets.
    List,
    /// Members, assignments and a lag table.
    Describe {
        /// Group id.
        group: String,
    },
    /// Move committed offsets (refused while the group has live members).
    Reset {
        /// Group id.
        group: String,
        /// earliest, latest, committed, an offset, or a time (RFC 3339 or -1h)
        /// [default: earliest; committed with --shift-by].
        #[arg(long, allow_hyphen_values = true, required_unless_present = "shift_by")]
        to: Option<String>,
        /// Move by N records from --to (negative: back), e.g. --shift-by -10
        /// replays the last ten records each partition's consumers saw.
        #[arg(long, allow_hyphen_values = true)]
        shift_by: Option<i64>,
        /// Only this partition of each topic.
        #[arg(long, short = 'p')]
        partition: Option<u32>,
        /// Topic or glob pattern [default: every topic the group has offsets for].
        #[arg(long)]
        topic: Option<String>,
        /// Show what would change without changing it.
        #[arg(long)]
        dry_run: bool,
    },
    /// Delete a group's committed offsets (refused while it has live members).
    Delete {
        /// Group id.
        group: String,
    },
}

pub async fn run(command: GroupCommand, args: &ClientArgs) -> anyhow::Result<()> {
    let mut client = connect(args).await?;
    match command {
        GroupCommand::List => {
            let groups =
                client.list_groups(proto::ListGroupsRequest {}).await.map_err(status_error)?.into_inner().groups;
            match args.format {
                Format::Json => {
                    let all: Vec<_> = groups
                        .iter()
                        .map(|g| serde_json::json!({"group": g.group, "state": g.state, "generation": g.generation, "members": g.members}))
                        .collect();
                    println!("{}", serde_json::Value::Array(all));
                }
                Format::Text => {
                    println!("{:<40} {:<8} {:>10} {:>8}", "GROUP", "STATE", "GENERATION", "MEMBERS");
                    for g in groups {
                        println!("{:<40} {:<8} {:>10} {:>8}", g.group, g.state, g.generation, g.members);
                    }
                }
            }
        }
        GroupCommand::Describe { group } => {
            let d =
                client.describe_group(proto::DescribeGroupRequest { group }).await.map_err(status_error)?.into_inner();
            match args.format {
                Format::Json => println!("{}", describe_json(&d)),
                Format::Text => print_describe(&d),
            }
        }
        GroupCommand::Reset { group, to, topic, dry_run, shift_by, partition } => {
            let pattern = match topic {
                Some(t) => t,
                None => {
                    let committed = client
                        .fetch_committed_offsets(proto::FetchCommittedOffsetsRequest {
                            group: group.clone(),
                            topic: None,
                        })
                        .await
                        .map_err(status_error)?
                        .into_inner()
                        .offsets;
                    let mut topics: Vec<String> = committed.into_iter().map(|c| c.topic).collect();
                    topics.dedup();
                    match topics.as_slice() {
                        [one] => one.clone(),
                        [] => anyhow::bail!("group {group:?} has no committed offsets; name the topics with --topic"),
                        _ => anyhow::bail!(
                            "group {group:?} has offsets for several topics ({}); pick with --topic",
                            topics.join(", ")
                        ),
                    }
                }
            };
            let resets = client
                .reset_group_offsets(proto::ResetGroupOffsetsRequest {
                    group: group.clone(),
                    topic_pattern: pattern,
                    to: match to.as_deref() {
                        None => None,
                        Some("committed") => Some(proto::Position {
                            position: Some(proto::position::Position::Boundary(proto::Boundary::Committed as i32)),
                        }),
                        Some(to) => Some(match parse_from(to)? {
                            Start::Position(p) => p,
                            Start::BeforeEnd(_) => anyhow::bail!(
                                "--to -N is not a reset position: use earliest, latest, an offset or a time \
                                 (or --shift-by -N)"
                            ),
                        }),
                    },
                    dry_run,
                    shift_by: shift_by.unwrap_or(0),
                    partition,
                })
                .await
                .map_err(status_error)?
                .into_inner()
                .resets;
            match args.format {
                Format::Json => {
                    for r in resets {
                        println!(
                            "{}",
                            serde_json::json!({"topic": r.topic, "partition": r.partition, "old_offset": r.old_offset, "new_offset": r.new_offset, "dry_run": dry_run})
                        );
                    }
                }
                Format::Text => {
                    println!("{:<30} {:>9} {:>12} {:>12}", "TOPIC", "PARTITION", "OLD-OFFSET", "NEW-OFFSET");
                    for r in resets {
                        let old = r.old_offset.map(|o| o.to_string()).unwrap_or_else(|| "-".into());
                        println!("{:<30} {:>9} {:>12} {:>12}", r.topic, r.partition, old, r.new_offset);
                    }
                    if dry_run {
                        println!("(dry run: nothing changed)");
                    }
                }
            }
        }
        GroupCommand::Delete { group } => {
            client.delete_group(proto::DeleteGroupRequest { group: group.clone() }).await.map_err(status_error)?;
            if args.format == Format::Text {
                println!("deleted group {group}");
            }
        }
    }
    Ok(())
}

fn print_describe(d: &proto::DescribeGroupResponse) {
    println!("group {}  state {}  generation {}  members {}", d.group, d.state, d.generation, d.members.len());
    for m in &d.members {
        let held: Vec<String> = m
            .assignments
            .iter()
            .map(|a| format!("{}[{}]", a.topic, a.partitions.iter().map(u32::to_string).collect::<Vec<_>>().join(",")))
            .collect();
        println!(
            "  member {}  pattern {}  last heartbeat {}  holds {}",
            m.member_id,
            m.topic_pattern,
            format_ms(m.last_heartbeat_ms),
            if held.is_empty() { "-".into() } else { held.join(" ") }
        );
    }
    println!("{:<30} {:>9} {:>12} {:>15} {:>10}", "TOPIC", "PARTITION", "COMMITTED", "HIGH-WATERMARK", "LAG");
    let mut total = 0;
    for p in &d.partitions {
        let committed = p.committed_offset.map(|o| o.to_string()).unwrap_or_else(|| "-".into());
        println!("{:<30} {:>9} {:>12} {:>15} {:>10}", p.topic, p.partition, committed, p.high_watermark, p.lag);
        total += p.lag;
    }
    println!("{:<30} {:>9} {:>12} {:>15} {:>10}", "TOTAL", "", "", "", total);
}

fn describe_json(d: &proto::DescribeGroupResponse) -> serde_json::Value {
    serde_json::json!({
        "group": d.group, "state": d.state, "generation": d.generation,
        "members": d.members.iter().map(|m| serde_json::json!({
            "member_id": m.member_id, "topic_pattern": m.topic_pattern,
            "last_heartbeat_ms": m.last_heartbeat_ms, "session_timeout_ms": m.session_timeout_ms,
            "assignments": m.assignments.iter().map(|a| serde_json::json!({"topic": a.topic, "partitions": a.partitions})).collect::<Vec<_>>(),
        })).collect::<Vec<_>>(),
        "partitions": d.partitions.iter().map(|p| serde_json::json!({
            "topic": p.topic, "partition": p.partition, "committed_offset": p.committed_offset,
            "high_watermark": p.high_watermark, "lag": p.lag, "log_start_offset": p.log_start_offset,
        })).collect::<Vec<_>>(),
    })
}
