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
}

/// Parses `--from` into a position.
pub fn parse_from(text: &str) -> anyhow::Result<proto::Position> {
    let position = match text {
        "earliest" => P::Boundary(proto::Boundary::Earliest as i32),
        "latest" => P::Boundary(proto::Boundary::Latest as i32),
        t if t.chars().all(|c| c.is_ascii_digit()) => P::Offset(t.parse()?),
        t => P::TimestampMs(parse_time_ms(t).map_err(|e| anyhow::anyhow!(e))?),
    };
    Ok(proto::Position {
        position: Some(position),
    })
}

pub async fn run(args: ConsumeArgs, client_args: &ClientArgs) -> anyhow::Result<()> {
    let mut client = connect(client_args).await?;
    let from = parse_from(&args.from)?;
    let max = args.max.unwrap_or(u64::MAX);
    let mut printed = 0u64;
    if args.follow {
        let mut stream = client
            .subscribe(proto::SubscribeRequest {
                topic_pattern: args.topic.clone(),
                group: None,
                from: Some(from),
                fallback: None,
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
        .list_topics(proto::ListTopicsRequest {
            topic_pattern: args.topic.clone(),
        })
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
                        from: Some(proto::Position {
                            position: Some(P::Offset(next)),
                        }),
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
            let mut line = format!(
                "{}[{}]@{}  {}",
                r.topic,
                r.partition,
                r.offset,
                format_ms(r.timestamp_ms)
            );
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
