//! The composition root: opens the broker, starts its background work and
//! every listener, and stops them. Listeners only translate; everything
//! they share lives in the broker.
//!
//! Listeners now: gRPC (`strata.v1.Broker`, health, reflection) on
//! `listen`, the Kafka protocol on `kafka_listen`, and HTTP (`/metrics`,
//! `/healthz`) on `http_listen`. A graceful stop refuses new work, ends long polls and
//! subscriptions, lets in-flight requests finish (up to `SHUTDOWN_GRACE`),
//! then closes every log cleanly.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::task::JoinHandle;

use crate::broker::Broker;
use crate::config::{BrokerConfig, SHUTDOWN_GRACE};
use crate::listener;
use crate::storage::fs::{FileSystem, StdFs};
use crate::storage::{Clock, SystemClock};

/// A running broker and its listeners; dropped without `shutdown` it
/// stops abruptly.
#[derive(Debug)]
pub struct RunningServer {
    addr: SocketAddr,
    kafka_addr: Option<SocketAddr>,
    http_addr: Option<SocketAddr>,
    broker: Arc<Broker>,
    /// Each listener's serving task.
    listeners: Vec<JoinHandle<anyhow::Result<()>>>,
}

impl RunningServer {
    /// The gRPC listener's address (useful with port 0).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The Kafka listener's address, if there is one.
    pub fn kafka_addr(&self) -> Option<SocketAddr> {
        self.kafka_addr
    }

    /// The HTTP listener's address, if there is one.
    pub fn http_addr(&self) -> Option<SocketAddr> {
        self.http_addr
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn broker(&self) -> &Arc<Broker> {
        &self.broker
    }

    /// Graceful stop: refuse new work, end long polls and subscriptions,
    /// finish in-flight requests, close every log cleanly.
    pub async fn shutdown(self) -> anyhow::Result<()> {
        self.broker.begin_shutdown();
        for serving in self.listeners {
            match tokio::time::timeout(SHUTDOWN_GRACE, serving).await {
                Ok(joined) => joined??,
                Err(_) => tracing::warn!("in-flight requests did not finish within 30 s; closing anyway"),
            }
        }
        self.broker.shutdown().await;
        Ok(())
    }

    /// An unclean stop for in-process tests: serving and background work
    /// end, nothing is flushed or marked clean, and the data directory is
    /// unlocked once the last task lets go of the broker (as a process
    /// crash would leave it; crash tests of the real binary use SIGKILL).
    pub async fn crash(self) {
        self.broker.begin_shutdown();
        for serving in &self.listeners {
            serving.abort();
        }
        for serving in self.listeners {
            let _ = serving.await;
        }
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while Arc::strong_count(&self.broker) > 1 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
}

/// Opens the data directory and starts serving on `config.listen`.
pub async fn start(config: BrokerConfig) -> anyhow::Result<RunningServer> {
    start_with(config, Arc::new(StdFs), Arc::new(SystemClock)).await
}

/// Like [`start`], over a given file system and clock (fault-injection tests).
pub async fn start_with(
    config: BrokerConfig,
    fs: Arc<dyn FileSystem>,
    clock: Arc<dyn Clock>,
) -> anyhow::Result<RunningServer> {
    // Bound before opening, so a port in use is found before recovery.
    let grpc = TcpListener::bind(config.listen)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on {}: {e}", config.listen))?;
    let addr = grpc.local_addr()?;
    let kafka = match config.kafka_listen {
        Some(at) => Some(
            TcpListener::bind(at).await.map_err(|e| anyhow::anyhow!("cannot listen on {at} (kafka_listen): {e}"))?,
        ),
        None => None,
    };
    let kafka_addr = kafka.as_ref().map(|k| k.local_addr()).transpose()?;
    let http = match config.http_listen {
        Some(at) => {
            Some(TcpListener::bind(at).await.map_err(|e| anyhow::anyhow!("cannot listen on {at} (http_listen): {e}"))?)
        }
        None => None,
    };
    let http_addr = http.as_ref().map(|h| h.local_addr()).transpose()?;
    let tls = match &config.tls {
        Some(files) => Some(tokio_rustls::TlsAcceptor::from(crate::security::tls::server_config(files)?)),
        None => None,
    };
    let listening = listener::accept::Listening {
        tls,
        limits: Arc::new(listener::accept::ConnectionLimits::new(
            config.max_connections,
            config.max_connections_per_ip,
        )),
        handshake_timeout: config.request_read_timeout,
        idle_timeout: config.idle_timeout,
    };
    let broker = tokio::task::spawn_blocking(move || Broker::open(config, fs, clock)).await??;
    broker.spawn_background(broker.watch_stopping());
    crate::security::reload::spawn(&broker);
    let mut listeners = vec![listener::grpc::serve(broker.clone(), grpc, listening.clone()).await?];
    if let Some(kafka) = kafka {
        listeners.push(listener::kafka::serve(broker.clone(), kafka, listening.clone())?);
    }
    if let Some(http) = http {
        listeners.push(listener::http::serve(broker.clone(), http, listening)?);
    }
    tracing::info!(%addr, kafka = ?kafka_addr, http = ?http_addr, "strata is serving");
    Ok(RunningServer { addr, kafka_addr, http_addr, broker, listeners })
}
