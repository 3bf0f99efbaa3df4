//! The `strata` command line: one file per noun. Client commands talk gRPC
//! to `--server`; `log dump|verify` read files directly (no server).

pub mod consume;
pub mod group;
pub mod log;
pub mod offsets;
pub mod produce;
pub mod serve;
pub mod time;
pub mod topic;

use clap::{Parser, Subcommand, ValueEnum};

use crate::proto::broker_client::BrokerClient;
use tonic::transport::Channel;

#[derive(Debug, Parser)]
#[command(name = "strata", version, about = "A durable, Kafka-style log broker for one machine")]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

/// Options every client command takes.
#[derive(Debug, Clone, clap::Args)]
pub struct ClientArgs {
    /// Broker address: a URL, or host:port.
    #[arg(long, global = true, default_value = "http://127.0.0.1:50051", env = "STRATA_SERVER")]
    pub server: String,
    /// Output for people (text) or scripts (json).
    #[arg(long, global = true, value_enum, default_value_t = Format::Text)]
    pub format: Format,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Format {
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the broker.
    Serve(serve::ServeArgs),
    /// Create, list, describe, alter and delete topics.
    Topic {
        #[command(subcommand)]
        command: topic::TopicCommand,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Publish records (one per stdin line when no VALUE is given).
    Produce {
        #[command(flatten)]
        args: produce::ProduceArgs,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Read records from a topic or every topic matching a pattern.
    Consume {
        #[command(flatten)]
        args: consume::ConsumeArgs,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// List, describe (with lag), reset and delete consumer groups.
    Group {
        #[command(subcommand)]
        command: group::GroupCommand,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Show each partition's log start offset and high watermark (and the offset at a time).
    Offsets {
        #[command(flatten)]
        args: offsets::OffsetsArgs,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Load generator and machine-limit baselines.
    Bench {
        #[command(subcommand)]
        command: crate::bench::BenchCommand,
    },
    /// Offline inspection of segment and index files (no server needed).
    Log {
        #[command(subcommand)]
        command: log::LogCommand,
    },
}

/// The broker URL for an address as people type it: `host:port` (or
/// `localhost:50051`) means `http://host:port`.
pub fn server_url(server: &str) -> String {
    if server.contains("://") {
        server.to_string()
    } else {
        format!("http://{server}")
    }
}

pub async fn connect(args: &ClientArgs) -> anyhow::Result<BrokerClient<Channel>> {
    let url = server_url(&args.server);
    let channel = Channel::from_shared(url.clone())
        .map_err(|e| anyhow::anyhow!("bad --server URL {:?}: {e}", args.server))?
        .connect()
        .await
        .map_err(|e| {
            // tonic's own message is only "transport error": say why.
            let mut why = e.to_string();
            let mut source = std::error::Error::source(&e);
            while let Some(s) = source {
                let text = s.to_string();
                if !why.ends_with(&text) {
                    why = format!("{why}: {text}");
                }
                source = s.source();
            }
            anyhow::anyhow!("cannot reach the broker at {url}: {why} (is `strata serve` running there? --server or STRATA_SERVER sets the address)")
        })?;
    Ok(BrokerClient::new(channel).max_decoding_message_size(64 << 20))
}

/// Turns a gRPC status into one line a person can act on.
pub fn status_error(status: tonic::Status) -> anyhow::Error {
    anyhow::anyhow!("{:?}: {}", status.code(), status.message())
}

/// Runs a parsed command line.
pub async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Serve(args) => serve::run(args).await,
        Command::Topic { command, client } => topic::run(command, &client).await,
        Command::Produce { args, client } => produce::run(args, &client).await,
        Command::Consume { args, client } => consume::run(args, &client).await,
        Command::Group { command, client } => group::run(command, &client).await,
        Command::Offsets { args, client } => offsets::run(args, &client).await,
        Command::Log { command } => log::run(command),
        Command::Bench { command } => crate::bench::run(command).await,
    }
}
