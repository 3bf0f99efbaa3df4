//! `strata serve`: run the broker until SIGTERM or Ctrl-C, then stop
//! gracefully (finish in-flight requests, flush, mark every log clean).

use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;

use crate::config::{BrokerConfig, ConfigFile};

#[derive(Debug, clap::Args)]
pub struct ServeArgs {
    /// Data directory [default: ./data].
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// Address to listen on [default: 127.0.0.1:50051].
    #[arg(long)]
    #[arg(value_parser = crate::config::parse_addr)]
    pub listen: Option<SocketAddr>,
    /// Kafka protocol listener address, or `none` [default: 127.0.0.1:9092].
    #[arg(long, value_name = "ADDR|none")]
    pub kafka_listen: Option<String>,
    /// HTTP listener (`/metrics`, `/healthz`) address, or `none` [default: 127.0.0.1:9644].
    #[arg(long, value_name = "ADDR|none")]
    pub http_listen: Option<String>,
    /// The host:port Kafka clients are told to connect to [default: the
    /// address each connection came in on].
    #[arg(long, value_name = "HOST:PORT", value_parser = crate::config::parse_advertised)]
    pub kafka_advertised_listener: Option<String>,
    /// TOML config file; flags override it.
    #[arg(long)]
    pub config: Option<PathBuf>,
}

/// Defaults, then the config file, then flags.
pub fn broker_config(args: &ServeArgs) -> anyhow::Result<BrokerConfig> {
    let mut config = BrokerConfig::default();
    if let Some(path) = &args.config {
        let text = std::fs::read_to_string(path).map_err(|e| anyhow::anyhow!("cannot read {}: {e}", path.display()))?;
        let file = ConfigFile::parse(&text).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
        file.apply(&mut config).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
        let base = path.parent().unwrap_or(std::path::Path::new("."));
        config.tls = config.tls.map(|t| t.relative_to(base));
        config.config_file = Some(path.clone());
    }
    if let Some(d) = &args.data_dir {
        config.data_dir = d.clone();
    }
    if let Some(l) = args.listen {
        config.listen = l;
    }
    if let Some(k) = &args.kafka_listen {
        config.kafka_listen = crate::config::parse_listen(k).map_err(|e| anyhow::anyhow!("--kafka-listen: {e}"))?;
    }
    if let Some(h) = &args.http_listen {
        config.http_listen = crate::config::parse_listen(h).map_err(|e| anyhow::anyhow!("--http-listen: {e}"))?;
    }
    if let Some(a) = &args.kafka_advertised_listener {
        config.kafka_advertised = Some(a.clone());
    }
    Ok(config)
}

pub async fn run(args: ServeArgs) -> anyhow::Result<()> {
    let config = broker_config(&args)?;
    raise_open_file_limit();
    let server = crate::server::start(config).await?;
    // Scripts and tests read this line; a closed stdout must not stop the broker.
    let mut out = std::io::stdout();
    let _ = writeln!(out, "strata listening on {}", server.addr()).and_then(|()| out.flush());
    if let Some(kafka) = server.kafka_addr() {
        let _ = writeln!(out, "kafka listening on {kafka}").and_then(|()| out.flush());
    }
    if let Some(http) = server.http_addr() {
        let _ = writeln!(out, "http listening on {http}").and_then(|()| out.flush());
    }
    wait_for_signal().await;
    tracing::info!("shutting down");
    server.shutdown().await
}

/// Each partition keeps its active `.log` and two index files open, so the
/// common default soft limit of 1,024 descriptors would cap a broker at a few
/// hundred partitions. Raise the soft limit to the hard limit, as servers do.
fn raise_open_file_limit() {
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(limit) => tracing::debug!(limit, "open file limit"),
        Err(e) => tracing::warn!(error = %e, "cannot raise the open file limit; many partitions may exhaust it"),
    }
}

async fn wait_for_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
        }
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}
