//! `strata offsets TOPIC_OR_PATTERN [--at TIME]`: per partition, the log
//! start offset, the high watermark, and (with --at) the first offset at or
//! after a time.

use super::{connect, status_error, ClientArgs, Format};
use crate::cli::time::parse_time_ms;
use crate::proto::{self, position::Position as P};

#[derive(Debug, clap::Args)]
pub struct OffsetsArgs {
    /// A topic name, or a glob pattern (`payments.*`).
    pub topic: String,
    /// A time (RFC 3339 or relative like -1h).
    #[arg(long, allow_hyphen_values = true)]
    pub at: Option<String>,
}

pub async fn run(args: OffsetsArgs, client_args: &ClientArgs) -> anyhow::Result<()> {
    let mut client = connect(client_args).await?;
    let at_ms = args.at.as_deref().map(parse_time_ms).transpose().map_err(|e| anyhow::anyhow!(e))?;
    let is_pattern = args.topic.contains(['*', '?', '[']);
    let topics = if is_pattern {
        let found = client
            .list_topics(proto::ListTopicsRequest { topic_pattern: args.topic.clone() })
            .await
            .map_err(status_error)?
            .into_inner()
            .topics;
        if found.is_empty() {
            return Err(super::failed(
                super::Failure::NotFound,
                format!("NotFound: no topic matches {:?}", args.topic),
            ));
        }
        found
    } else {
        vec![client
            .describe_topic(proto::DescribeTopicRequest { name: args.topic.clone() })
            .await
            .map_err(status_error)?
            .into_inner()]
    };
    if client_args.format == Format::Text {
        if is_pattern {
            print!("{:<32} ", "TOPIC");
        }
        print!("{:>9} {:>14} {:>14}", "PARTITION", "LOG-START", "HIGH-WATERMARK");
        if at_ms.is_some() {
            print!(" {:>14}", "OFFSET-AT-TIME");
        }
        println!();
    }
    for topic in &topics {
        print_topic(&mut client, topic, is_pattern, at_ms, client_args.format).await?;
    }
    Ok(())
}

async fn print_topic(
    client: &mut super::Client,
    topic: &proto::TopicDescription,
    is_pattern: bool,
    at_ms: Option<i64>,
    format: Format,
) -> anyhow::Result<()> {
    for p in &topic.partition_descriptions {
        let at_offset = match at_ms {
            Some(ms) => Some(
                client
                    .list_offsets(proto::ListOffsetsRequest {
                        topic: topic.name.clone(),
                        partition: p.partition,
                        at: Some(proto::Position { position: Some(P::TimestampMs(ms)) }),
                    })
                    .await
                    .map_err(status_error)?
                    .into_inner()
                    .offset,
            ),
            None => None,
        };
        match format {
            Format::Json => println!(
                "{}",
                serde_json::json!({"topic": topic.name, "partition": p.partition, "log_start_offset": p.log_start_offset,
                    "high_watermark": p.high_watermark, "offset_at_time": at_offset})
            ),
            Format::Text => {
                if is_pattern {
                    print!("{:<32} ", topic.name);
                }
                print!("{:>9} {:>14} {:>14}", p.partition, p.log_start_offset, p.high_watermark);
                if let Some(o) = at_offset {
                    print!(" {o:>14}");
                }
                println!();
            }
        }
    }
    Ok(())
}
