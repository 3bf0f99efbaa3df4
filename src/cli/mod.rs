//! The `strata` command line: one file per noun. Client commands talk gRPC
//! to `--server`; `log dump|verify` read files directly (no server).

pub mod alert;
pub mod consume;
pub mod group;
pub mod log;
pub mod offsets;
pub mod produce;
pub mod serve;
pub mod share;
pub mod time;
pub mod top;
pub mod topic;

use clap::{Parser, Subcommand, ValueEnum};

use crate::proto::broker_client::BrokerClient;
use tonic::transport::Channel;

#[derive(Debug, Parser)]
#[command(
    name = "strata",
    version,
    about = "A durable, Kafka-style log broker for one machine",
    after_help = EXIT_CODES
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
    /// Log lines on stderr as text or as one JSON object per line.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text, env = "STRATA_LOG_FORMAT")]
    pub log_format: LogFormat,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// Options every client command takes.
#[derive(Debug, Clone, clap::Args)]
pub struct ClientArgs {
    /// Broker address: a URL, or host:port. Unset, it is STRATA_SERVER, else
    /// `server` in the profile ($STRATA_CONFIG, or ~/.config/strata/config.toml),
    /// else 127.0.0.1:50051.
    #[arg(long, global = true, default_value_t = profile_server(), env = "STRATA_SERVER")]
    pub server: String,
    /// Output for people (text) or scripts (json).
    #[arg(long, global = true, value_enum, default_value_t = Format::Text)]
    pub format: Format,
    /// Bearer token for a broker with security on (sent as `authorization:
    /// Bearer`).
    #[arg(long, global = true, env = "STRATA_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// CA certificate (PEM) to trust the broker's TLS certificate by; implies TLS.
    #[arg(long, global = true, value_name = "PEM")]
    pub tls_ca: Option<std::path::PathBuf>,
    /// Client certificate (PEM) for mTLS, with --tls-key.
    #[arg(long, global = true, value_name = "PEM", requires = "tls_key")]
    pub tls_cert: Option<std::path::PathBuf>,
    /// The client certificate's private key (PEM).
    #[arg(long, global = true, value_name = "PEM", requires = "tls_cert")]
    pub tls_key: Option<std::path::PathBuf>,
}

/// Adds the bearer token to every call.
#[derive(Debug, Clone)]
pub struct Auth(Option<tonic::metadata::MetadataValue<tonic::metadata::Ascii>>);

impl Auth {
    pub fn bearer(token: Option<&str>) -> anyhow::Result<Auth> {
        let value = token
            .map(|t| format!("Bearer {}", t.trim()).parse())
            .transpose()
            .map_err(|_| anyhow::anyhow!("--token: not a valid header value"))?;
        Ok(Auth(value))
    }
}

impl tonic::service::Interceptor for Auth {
    fn call(&mut self, mut request: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(v) = &self.0 {
            request.metadata_mut().insert("authorization", v.clone());
        }
        Ok(request)
    }
}

/// The CLI's client: a channel, plus the token on every call.
pub type Client = BrokerClient<tonic::service::interceptor::InterceptedService<Channel, Auth>>;

#[derive(Debug, Subcommand)]
pub enum AuthCommand {
    /// Print a new random bearer token and its sha256 (or the sha256 of
    /// TOKEN), with the `[[security.users]]` entry that accepts it.
    HashToken {
        /// An existing token to hash instead of a new one.
        token: Option<String>,
    },
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
    /// Tokens for a broker with security on.
    Auth {
        #[command(subcommand)]
        command: AuthCommand,
    },
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
    /// Create, list, describe and delete alert rules.
    Alert {
        #[command(subcommand)]
        command: alert::AlertCommand,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// List, describe, alter, delete share groups and redrive their dead letters.
    Share {
        #[command(subcommand)]
        command: share::ShareCommand,
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
    /// Live view of records/s per topic and lag per group (from the HTTP listener's /metrics).
    Top(top::TopArgs),
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

/// The client profile's path: $STRATA_CONFIG, else
/// $XDG_CONFIG_HOME/strata/config.toml, else ~/.config/strata/config.toml.
pub fn profile_path() -> Option<std::path::PathBuf> {
    if let Some(p) = std::env::var_os("STRATA_CONFIG") {
        return Some(p.into());
    }
    let base = match std::env::var_os("XDG_CONFIG_HOME") {
        Some(x) if !x.is_empty() => std::path::PathBuf::from(x),
        _ => std::path::PathBuf::from(std::env::var_os("HOME")?).join(".config"),
    };
    Some(base.join("strata").join("config.toml"))
}

/// `server = "host:port"` from the profile, like rpk's profiles; the
/// built-in address when there is no profile. A profile that cannot be
/// read or parsed is reported (once, on stderr) and ignored.
fn profile_server() -> String {
    const DEFAULT: &str = "http://127.0.0.1:50051";
    #[derive(serde::Deserialize)]
    struct Profile {
        server: Option<String>,
    }
    let Some(path) = profile_path() else { return DEFAULT.to_string() };
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return DEFAULT.to_string(),
        Err(e) => {
            eprintln!("warning: cannot read the profile {}: {e}", path.display());
            return DEFAULT.to_string();
        }
    };
    match toml::from_str::<Profile>(&text) {
        Ok(p) => p.server.unwrap_or_else(|| DEFAULT.to_string()),
        Err(e) => {
            eprintln!("warning: the profile {} is not valid TOML with `server = \"host:port\"`: {e}", path.display());
            DEFAULT.to_string()
        }
    }
}

/// Client options given before the subcommand (`strata --server H:P topic
/// list`, as rpk and kcat users type them) moved after it, where each
/// client command takes them.
pub fn hoist_global_flags(args: Vec<std::ffi::OsString>) -> Vec<std::ffi::OsString> {
    const GLOBAL: [&str; 2] = ["--server", "--format"];
    let mut kept = Vec::with_capacity(args.len());
    let mut hoisted = Vec::new();
    let mut it = args.into_iter();
    kept.extend(it.next()); // the program name
    while let Some(arg) = it.next() {
        let text = arg.to_string_lossy().into_owned();
        if !text.starts_with('-') || text == "--" {
            kept.push(arg);
            break;
        }
        match GLOBAL.iter().find(|g| text == **g || text.starts_with(&format!("{g}="))) {
            Some(g) if text == *g => {
                hoisted.push(arg);
                hoisted.extend(it.next());
            }
            Some(_) => hoisted.push(arg),
            None => kept.push(arg),
        }
    }
    let mut rest: Vec<_> = it.collect();
    // Before a `--` that ends the options, or at the end.
    let at = rest.iter().position(|a| a == "--").unwrap_or(rest.len());
    rest.splice(at..at, hoisted);
    kept.extend(rest);
    kept
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

pub async fn connect(args: &ClientArgs) -> anyhow::Result<Client> {
    let mut url = server_url(&args.server);
    let tls = args.tls_ca.is_some() || args.tls_cert.is_some() || url.starts_with("https://");
    if tls && url.starts_with("http://") && !args.server.contains("://") {
        url = url.replacen("http://", "https://", 1);
    }
    let mut endpoint =
        Channel::from_shared(url.clone()).map_err(|e| anyhow::anyhow!("bad --server URL {:?}: {e}", args.server))?;
    if tls {
        let read =
            |p: &std::path::Path| std::fs::read(p).map_err(|e| anyhow::anyhow!("cannot read {}: {e}", p.display()));
        let mut config = tonic::transport::ClientTlsConfig::new();
        if let Some(ca) = &args.tls_ca {
            config = config.ca_certificate(tonic::transport::Certificate::from_pem(read(ca)?));
        }
        if let (Some(cert), Some(key)) = (&args.tls_cert, &args.tls_key) {
            config = config.identity(tonic::transport::Identity::from_pem(read(cert)?, read(key)?));
        }
        endpoint = endpoint.tls_config(config).map_err(|e| {
            // tonic says only "transport error": the cause is in its source
            // (an unusable certificate, say).
            let why = std::error::Error::source(&e).map_or(String::new(), |s| format!(": {s:?}"));
            anyhow::anyhow!("TLS settings (--tls-ca, --tls-cert, --tls-key): {e}{why}")
        })?;
    }
    let channel = crate::client::connect(endpoint, tls)
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
            failed(Failure::Unreachable, format!("cannot reach the broker at {url}: {why} (is `strata serve` running there? --server or STRATA_SERVER sets the address)"))
        })?;
    let auth = Auth::bearer(args.token.as_deref())?;
    Ok(BrokerClient::with_interceptor(channel, auth).max_decoding_message_size(64 << 20))
}

/// The exit statuses, as `--help` gives them.
pub const EXIT_CODES: &str = "Exit status: 0 done; 1 failed (anything else, e.g. log verify found problems); \
2 bad usage; 3 not found (topic, partition, group); 4 refused by the broker (invalid, already exists, \
not allowed now, limits); 5 broker unreachable or unavailable.";

/// Why a client command failed, as its exit status (see `EXIT_CODES`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    NotFound = 3,
    Refused = 4,
    Unreachable = 5,
}

/// An error with the exit status it calls for.
#[derive(Debug)]
pub struct Failed {
    pub kind: Failure,
    pub message: String,
}

impl std::fmt::Display for Failed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Failed {}

pub fn failed(kind: Failure, message: impl Into<String>) -> anyhow::Error {
    anyhow::Error::new(Failed { kind, message: message.into() })
}

/// The exit status for an error a command returned.
pub fn exit_code(e: &anyhow::Error) -> u8 {
    e.chain().find_map(|c| c.downcast_ref::<Failed>()).map_or(1, |f| f.kind as u8)
}

/// Turns a gRPC status into one line a person can act on, and its exit status.
pub fn status_error(status: tonic::Status) -> anyhow::Error {
    use tonic::Code;
    let kind = match status.code() {
        Code::NotFound => Some(Failure::NotFound),
        Code::InvalidArgument
        | Code::AlreadyExists
        | Code::FailedPrecondition
        | Code::OutOfRange
        | Code::PermissionDenied
        | Code::Unauthenticated
        | Code::ResourceExhausted
        | Code::Aborted => Some(Failure::Refused),
        Code::Unavailable | Code::DeadlineExceeded => Some(Failure::Unreachable),
        _ => None,
    };
    let message = format!("{:?}: {}", status.code(), status.message());
    match kind {
        Some(kind) => failed(kind, message),
        None => anyhow::anyhow!(message),
    }
}

/// Runs a parsed command line.
pub async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Serve(args) => serve::run(args).await,
        Command::Topic { command, client } => topic::run(command, &client).await,
        Command::Produce { args, client } => produce::run(args, &client).await,
        Command::Consume { args, client } => consume::run(args, &client).await,
        Command::Group { command, client } => group::run(command, &client).await,
        Command::Share { command, client } => share::run(command, &client).await,
        Command::Alert { command, client } => alert::run(command, &client).await,
        Command::Offsets { args, client } => offsets::run(args, &client).await,
        Command::Log { command } => log::run(command),
        Command::Auth { command: AuthCommand::HashToken { token } } => {
            let (token, hash) = match token {
                Some(t) => (t.clone(), crate::security::acl::token_sha256(&t)),
                None => crate::security::new_token()?,
            };
            println!("token:        {token}");
            println!("token_sha256: {hash}");
            println!();
            println!("[[security.users]]");
            println!("name = \"<user>\"");
            println!("token_sha256 = \"{hash}\"");
            Ok(())
        }
        Command::Top(args) => top::run(args).await,
        Command::Bench { command } => crate::bench::run(command).await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hoist(line: &str) -> String {
        let args = line.split(' ').map(std::ffi::OsString::from).collect();
        hoist_global_flags(args).iter().map(|a| a.to_string_lossy().into_owned()).collect::<Vec<_>>().join(" ")
    }

    #[test]
    fn client_options_before_the_subcommand_move_after_it() {
        assert_eq!(hoist("strata --server h:1 topic list"), "strata topic list --server h:1");
        assert_eq!(hoist("strata --server=h:1 --format json offsets t"), "strata offsets t --server=h:1 --format json");
        assert_eq!(hoist("strata produce t -- --server"), "strata produce t -- --server");
        assert_eq!(hoist("strata --server h:1 produce t -- -x"), "strata produce t --server h:1 -- -x");
        assert_eq!(hoist("strata topic list --server h:1"), "strata topic list --server h:1");
        assert_eq!(hoist("strata --help"), "strata --help");
    }
}
