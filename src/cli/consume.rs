//! `strata consume TOPIC_OR_PATTERN [--from ...] [--to ...] [-p N] [--max N] [--follow]`.
//! Without --follow it reads what is there now and exits, saying so when
//! there was nothing; with --follow it keeps streaming (Subscribe, which
//! includes topics created later; per-partition long-poll Fetch when
//! --partition, --to or --from -N need partitions read one by one).

use super::{connect, failed, status_error, ClientArgs, Failure, Format};
use crate::cli::time::{format_ms, parse_time_ms};
use crate::proto::{self, position::Position as P};
use tokio_stream::StreamExt;

#[derive(Debug, clap::Args)]
pub struct ConsumeArgs {
    /// A topic name, or a glob pattern (`payments.*`).
    pub topic: String,
    /// Where to start: earliest, latest, an offset, -N (N records before the
    /// end, per partition), a time (RFC 3339, -1h, or epoch milliseconds as
    /// @1796144451000; a bare number of 13 digits or more is read as epoch
    /// milliseconds too).
    #[arg(long, short = 'o', default_value = "earliest", allow_hyphen_values = true)]
    pub from: String,
    /// Where to stop (without --follow: at most there): an offset (the
    /// first not printed) or a time (the first record after it is not printed).
    #[arg(long, allow_hyphen_values = true)]
    pub to: Option<String>,
    /// Only this partition.
    #[arg(long, short = 'p')]
    pub partition: Option<u32>,
    /// Stop after this many records.
    #[arg(long, short = 'c')]
    pub max: Option<u64>,
    /// Keep waiting for new records.
    #[arg(long, short = 'F')]
    pub follow: bool,
    /// Consume as a member of this group: start at its committed offsets
    /// (--from applies where nothing is committed) and commit as it goes.
    #[arg(long, short = 'G')]
    pub group: Option<String>,
    /// Consume as a member of this share group: records are shared one at a
    /// time with its other members, and each one printed is accepted. A new
    /// group starts at --from (earliest, latest or a time).
    #[arg(long, conflicts_with_all = ["group", "partition", "to"])]
    pub share: Option<String>,
    /// With --share: reject (dead-letter at once) records whose value
    /// matches this regular expression, instead of printing them.
    #[arg(long, requires = "share", value_name = "REGEX")]
    pub reject_if: Option<String>,
    /// With --share: release (deliver again after the group's backoff)
    /// records whose value matches this regular expression.
    #[arg(long, requires = "share", value_name = "REGEX")]
    pub release_if: Option<String>,
    /// Print each record by this template instead of the text or JSON line,
    /// as kcat's -f: %t topic, %p partition, %o offset, %k key, %s value,
    /// %T timestamp (ms), %h headers (k=v,...), %S value size, \n \t \\ %%.
    #[arg(long = "template", short = 'f', value_name = "TEMPLATE")]
    pub template: Option<String>,
    /// How values, keys and headers that are bytes are shown: text (UTF-8,
    /// other bytes escaped as \xNN), hex, or base64. In JSON, a value that is
    /// not UTF-8 is base64 with "value_encoding": "base64" (so for keys).
    #[arg(long, value_enum, default_value_t = ValueFormat::Text)]
    pub value_format: ValueFormat,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ValueFormat {
    Text,
    Hex,
    Base64,
}

/// Where to start reading, as typed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Start {
    Position(proto::Position),
    /// N records before each partition's end.
    BeforeEnd(u64),
}

/// Epoch milliseconds start at 13 digits in 2001; an offset that large
/// (a trillion records) is not one a person types.
const EPOCH_MS_MIN: u64 = 1_000_000_000_000;

/// Parses `--from` into a position (absolute) or a count before the end.
pub fn parse_from(text: &str) -> anyhow::Result<Start> {
    let position = match text {
        "earliest" | "beginning" => P::Boundary(proto::Boundary::Earliest as i32),
        "latest" | "end" => P::Boundary(proto::Boundary::Latest as i32),
        t if t.starts_with('@') => {
            P::TimestampMs(t[1..].parse().map_err(|_| anyhow::anyhow!("bad time {t:?}: @ takes epoch milliseconds"))?)
        }
        t if !t.is_empty() && t.chars().all(|c| c.is_ascii_digit()) => {
            let n: u64 = t.parse()?;
            if n >= EPOCH_MS_MIN {
                P::TimestampMs(n as i64)
            } else {
                P::Offset(n)
            }
        }
        t if t.len() > 1 && t.starts_with('-') && t[1..].chars().all(|c| c.is_ascii_digit()) => {
            return Ok(Start::BeforeEnd(t[1..].parse()?));
        }
        t => P::TimestampMs(parse_time_ms(t).map_err(|e| anyhow::anyhow!(e))?),
    };
    Ok(Start::Position(proto::Position { position: Some(position) }))
}

/// Where to stop: the first offset not printed, or the last time printed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum To {
    Offset(u64),
    TimeMs(i64),
}

fn parse_to(text: &str) -> anyhow::Result<To> {
    Ok(match parse_from(text)? {
        Start::Position(proto::Position { position: Some(P::Offset(n)) }) => To::Offset(n),
        Start::Position(proto::Position { position: Some(P::TimestampMs(t)) }) => To::TimeMs(t),
        _ => anyhow::bail!("bad --to {text:?}: an offset or a time"),
    })
}

impl To {
    fn passed(&self, r: &proto::StoredRecord) -> bool {
        match *self {
            To::Offset(o) => r.offset >= o,
            To::TimeMs(t) => r.timestamp_ms > t,
        }
    }
}

pub async fn run(args: ConsumeArgs, client_args: &ClientArgs) -> anyhow::Result<()> {
    let mut client = connect(client_args).await?;
    let from = parse_from(&args.from)?;
    if let Start::Position(proto::Position { position: Some(P::TimestampMs(ms)) }) = from {
        if args.from.chars().all(|c| c.is_ascii_digit()) {
            eprintln!("reading --from {} as a time: {} (epoch milliseconds)", args.from, format_ms(ms));
        }
    }
    let to = args.to.as_deref().map(parse_to).transpose()?;
    let out = Printer { format: client_args.format, template: args.template.clone(), bytes: args.value_format };
    if let Some(group) = &args.share {
        return super::share::consume(&mut client, &args, group, &out).await;
    }
    if let Some(group) = &args.group {
        if args.partition.is_some() || to.is_some() || matches!(from, Start::BeforeEnd(_)) {
            anyhow::bail!(
                "--group assigns partitions and resumes at commits: --partition, --to and --from -N do not apply"
            );
        }
        return consume_group(&mut client, &args, group, &out).await;
    }
    let max = args.max.unwrap_or(u64::MAX);
    let per_partition = args.partition.is_some() || to.is_some() || matches!(from, Start::BeforeEnd(_));
    if args.follow && !per_partition {
        let Start::Position(from) = from else { unreachable!("BeforeEnd reads per partition") };
        return follow_pattern(&mut client, &args, from, max, &out).await;
    }
    let mut topics = list(&mut client, &args.topic).await?;
    while topics.is_empty() {
        if !args.follow {
            return Err(failed(Failure::NotFound, format!("NotFound: no topic matches {:?}", args.topic)));
        }
        eprintln!("no topic matches {:?} yet; waiting for one to be created (Ctrl-C to stop)", args.topic);
        tokio::time::sleep(std::time::Duration::from_secs(1)).await;
        topics = list(&mut client, &args.topic).await?;
    }
    // Each partition to read: where from, and its end when we looked.
    let mut reads = Vec::new();
    for topic in &topics {
        let parts = topic.partition_descriptions.iter().filter(|p| args.partition.is_none_or(|n| n == p.partition));
        let mut any = false;
        for p in parts {
            any = true;
            let start = match from {
                Start::BeforeEnd(n) => p.high_watermark.saturating_sub(n).max(p.log_start_offset),
                Start::Position(at) => {
                    client
                        .list_offsets(proto::ListOffsetsRequest {
                            topic: topic.name.clone(),
                            partition: p.partition,
                            at: Some(at),
                        })
                        .await
                        .map_err(status_error)?
                        .into_inner()
                        .offset
                }
            };
            if start > p.high_watermark && !args.follow {
                eprintln!(
                    "{}[{}]: offset {start} is past the end (high watermark {}); nothing to read there",
                    topic.name, p.partition, p.high_watermark
                );
            }
            reads.push(Read {
                topic: topic.name.clone(),
                partition: p.partition,
                next: start.max(p.log_start_offset),
                end: p.high_watermark,
                done: false,
            });
        }
        if !any {
            if let Some(n) = args.partition {
                let why = format!("NotFound: {} has no partition {n} ({} partitions)", topic.name, topic.partitions);
                return Err(failed(Failure::NotFound, why));
            }
        }
    }
    let printed = read_partitions(&mut client, &mut reads, args.follow, to, max, &out).await?;
    if printed == 0 && !args.follow {
        let ends: Vec<String> = reads.iter().map(|r| format!("{}[{}] end {}", r.topic, r.partition, r.end)).collect();
        eprintln!("nothing to read from {:?} at --from {} ({})", args.topic, args.from, ends.join(", "));
    }
    Ok(())
}

async fn list(client: &mut Client, pattern: &str) -> anyhow::Result<Vec<proto::TopicDescription>> {
    Ok(client
        .list_topics(proto::ListTopicsRequest { topic_pattern: pattern.to_string() })
        .await
        .map_err(status_error)?
        .into_inner()
        .topics)
}

type Client = super::Client;

struct Read {
    topic: String,
    partition: u32,
    next: u64,
    /// The high watermark when the read began (without --follow: where it stops).
    end: u64,
    done: bool,
}

/// Reads every partition in `reads` from its `next` (to its `end`, or on
/// with `follow`), printing up to `max` records; returns how many.
async fn read_partitions(
    client: &mut Client,
    reads: &mut [Read],
    follow: bool,
    to: Option<To>,
    max: u64,
    out: &Printer,
) -> anyhow::Result<u64> {
    let mut printed = 0u64;
    // With --follow, a round that found nothing long-polls each partition in
    // turn, sharing about half a second, so a record on any of them waits
    // at most about that long; while records flow, nobody waits.
    let mut idle = false;
    let idle_wait_ms = (500 / reads.len().max(1) as u32).max(20);
    loop {
        let mut progressed = false;
        for r in reads.iter_mut().filter(|r| !r.done) {
            if printed >= max {
                return Ok(printed);
            }
            if !follow && r.next >= r.end {
                r.done = true;
                continue;
            }
            let wait = if follow && idle { idle_wait_ms } else { 0 };
            let got = client
                .fetch(proto::FetchRequest {
                    topic: r.topic.clone(),
                    partition: r.partition,
                    from: Some(proto::Position { position: Some(P::Offset(r.next)) }),
                    max_records: (max - printed).min(1000) as u32,
                    max_wait_ms: wait,
                    ..Default::default()
                })
                .await
                .map_err(status_error)?
                .into_inner();
            if got.records.is_empty() {
                if !follow {
                    r.done = true;
                }
                continue;
            }
            progressed = true;
            r.next = got.next_offset;
            for rec in got.records.iter().filter(|rec| follow || rec.offset < r.end) {
                if to.is_some_and(|t| t.passed(rec)) {
                    r.done = true;
                    break;
                }
                if printed >= max {
                    break;
                }
                out.print(rec);
                printed += 1;
            }
        }
        if reads.iter().all(|r| r.done) || printed >= max {
            return Ok(printed);
        }
        if !progressed && !follow {
            return Ok(printed);
        }
        idle = !progressed;
    }
}

/// --follow over a pattern: one Subscribe stream, topics created later included.
async fn follow_pattern(
    client: &mut Client,
    args: &ConsumeArgs,
    from: proto::Position,
    max: u64,
    out: &Printer,
) -> anyhow::Result<()> {
    if list(client, &args.topic).await?.is_empty() {
        eprintln!("no topic matches {:?} yet; waiting for one to be created (Ctrl-C to stop)", args.topic);
    }
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
    let mut printed = 0u64;
    while let Some(msg) = stream.next().await {
        for r in msg.map_err(status_error)?.records {
            out.print(&r);
            printed += 1;
            if printed >= max {
                return Ok(());
            }
        }
    }
    Ok(())
}

/// How records are printed.
pub struct Printer {
    pub format: Format,
    pub template: Option<String>,
    pub bytes: ValueFormat,
}

impl Printer {
    pub fn print(&self, r: &proto::StoredRecord) {
        let mut stdout = std::io::stdout().lock();
        let _ = writeln_or_exit(&mut stdout, &self.render(r));
    }

    fn show(&self, b: &[u8]) -> String {
        match self.bytes {
            ValueFormat::Text => escape(b),
            ValueFormat::Hex => b.iter().map(|x| format!("{x:02x}")).collect(),
            ValueFormat::Base64 => base64_encode(b),
        }
    }

    pub fn render(&self, r: &proto::StoredRecord) -> String {
        if let Some(t) = &self.template {
            return self.template(t, r);
        }
        match self.format {
            Format::Json => {
                let mut o = serde_json::Map::new();
                o.insert("topic".into(), r.topic.clone().into());
                o.insert("partition".into(), r.partition.into());
                o.insert("offset".into(), r.offset.into());
                o.insert("timestamp_ms".into(), r.timestamp_ms.into());
                for (name, b) in [("key", &r.key), ("value", &r.value)] {
                    let (text, encoding) = self.json_bytes(b);
                    o.insert(name.into(), text.into());
                    if let Some(e) = encoding {
                        o.insert(format!("{name}_encoding"), e.into());
                    }
                }
                let mut headers = serde_json::Map::new();
                let mut encodings = serde_json::Map::new();
                for (k, v) in &r.headers {
                    let (text, encoding) = self.json_bytes(v);
                    headers.insert(k.clone(), text.into());
                    if let Some(e) = encoding {
                        encodings.insert(k.clone(), e.into());
                    }
                }
                o.insert("headers".into(), headers.into());
                if !encodings.is_empty() {
                    o.insert("headers_encoding".into(), encodings.into());
                }
                serde_json::Value::Object(o).to_string()
            }
            Format::Text => {
                let mut line = format!("{}[{}]@{}  {}", r.topic, r.partition, r.offset, format_ms(r.timestamp_ms));
                if !r.key.is_empty() {
                    line.push_str(&format!("  key={}", self.show(&r.key)));
                }
                let mut headers: Vec<_> = r.headers.iter().collect();
                headers.sort();
                for (k, v) in headers {
                    line.push_str(&format!("  {k}={}", self.show(v)));
                }
                line.push_str("  ");
                line.push_str(&self.show(&r.value));
                line
            }
        }
    }

    /// JSON text for bytes, and the encoding when it is not UTF-8 text.
    fn json_bytes(&self, b: &[u8]) -> (String, Option<&'static str>) {
        match (self.bytes, std::str::from_utf8(b)) {
            (ValueFormat::Text, Ok(s)) => (s.to_string(), None),
            (ValueFormat::Hex, _) => (self.show(b), Some("hex")),
            _ => (base64_encode(b), Some("base64")),
        }
    }

    fn template(&self, t: &str, r: &proto::StoredRecord) -> String {
        let mut out = String::new();
        let mut chars = t.chars();
        while let Some(c) = chars.next() {
            match c {
                '%' => match chars.next() {
                    Some('t') => out.push_str(&r.topic),
                    Some('p') => out.push_str(&r.partition.to_string()),
                    Some('o') => out.push_str(&r.offset.to_string()),
                    Some('k') => out.push_str(&self.show(&r.key)),
                    Some('s') => out.push_str(&self.show(&r.value)),
                    Some('S') => out.push_str(&r.value.len().to_string()),
                    Some('T') => out.push_str(&r.timestamp_ms.to_string()),
                    Some('h') => {
                        let mut headers: Vec<_> = r.headers.iter().collect();
                        headers.sort();
                        let h: Vec<String> = headers.iter().map(|(k, v)| format!("{k}={}", self.show(v))).collect();
                        out.push_str(&h.join(","));
                    }
                    Some('%') => out.push('%'),
                    Some(other) => {
                        out.push('%');
                        out.push(other);
                    }
                    None => out.push('%'),
                },
                '\\' => match chars.next() {
                    Some('n') => out.push('\n'),
                    Some('t') => out.push('\t'),
                    Some('\\') => out.push('\\'),
                    Some(other) => {
                        out.push('\\');
                        out.push(other);
                    }
                    None => out.push('\\'),
                },
                c => out.push(c),
            }
        }
        // The template says where lines end (kcat's does too).
        if out.ends_with('\n') {
            out.pop();
        }
        out
    }
}

/// UTF-8 as it is; any other byte as \xNN, and backslash as \\.
pub fn escape(b: &[u8]) -> String {
    let mut out = String::new();
    for chunk in b.utf8_chunks() {
        for c in chunk.valid().chars() {
            match c {
                '\\' => out.push_str("\\\\"),
                c if c.is_control() && c != '\t' => out.push_str(&c.escape_default().to_string()),
                c => out.push(c),
            }
        }
        for x in chunk.invalid() {
            out.push_str(&format!("\\x{x:02x}"));
        }
    }
    out
}

pub fn base64_encode(b: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(b)
}

/// Writes a line; a closed pipe (`| head`) ends the process quietly, as
/// other Unix tools end.
pub fn writeln_or_exit(w: &mut impl std::io::Write, line: &str) -> std::io::Result<()> {
    match writeln!(w, "{line}") {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => std::process::exit(0),
        r => r,
    }
}

/// Group consumption: the Subscribe stream is the membership. Each received
/// batch is printed, then committed (at least once: a crash between the two
/// re-delivers the batch). Without --follow it stops once every assigned
/// partition has reached the high watermark it had when assigned.
async fn consume_group(client: &mut Client, args: &ConsumeArgs, group: &str, out: &Printer) -> anyhow::Result<()> {
    let mut member_id = String::new();
    let result = consume_group_stream(client, args, group, out, &mut member_id).await;
    if !member_id.is_empty() {
        // Leave now rather than when the broker notices the closed stream,
        // so a `group reset` right after this command is not refused.
        let _ = client.leave_group(proto::LeaveGroupRequest { group: group.to_string(), member_id }).await;
    }
    result
}

async fn consume_group_stream(
    client: &mut Client,
    args: &ConsumeArgs,
    group: &str,
    out: &Printer,
    member_id: &mut String,
) -> anyhow::Result<()> {
    let (from, fallback) = match args.from.as_str() {
        "earliest" => (None, proto::Boundary::Earliest),
        "latest" => (None, proto::Boundary::Latest),
        other => match parse_from(other)? {
            Start::Position(p) => (Some(p), proto::Boundary::Earliest),
            Start::BeforeEnd(_) => unreachable!("refused before"),
        },
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
            out.print(r);
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
