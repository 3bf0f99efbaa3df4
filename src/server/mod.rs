//! The gRPC edge: `strata.v1.Broker` plus the standard health and
//! reflection services, on one listener. Translation only: proto types stop
//! here, and [`status`] is the one place errors become gRPC codes.

pub mod accept;
pub mod convert;
pub mod push;
pub mod service;
pub mod status;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::task::JoinHandle;

use crate::broker::Broker;
use crate::config::BrokerConfig;
use crate::proto;
use crate::storage::fs::{FileSystem, StdFs};
use crate::storage::{Clock, SystemClock};

/// A broker serving gRPC; dropped without `shutdown` it stops abruptly.
#[derive(Debug)]
pub struct RunningServer {
    addr: SocketAddr,
    broker: Arc<Broker>,
    serving: JoinHandle<Result<(), tonic::transport::Error>>,
}

impl RunningServer {
    /// The address actually bound (useful with port 0).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn broker(&self) -> &Arc<Broker> {
        &self.broker
    }

    /// An unclean stop for in-process tests: serving and background work
    /// end, nothing is flushed or marked clean, and the data directory is
    /// unlocked once the last task lets go of the broker (as a process
    /// crash would leave it; crash tests of the real binary use SIGKILL).
    pub async fn crash(self) {
        self.broker.begin_shutdown();
        self.serving.abort();
        let _ = self.serving.await;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while Arc::strong_count(&self.broker) > 1 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// Graceful stop: refuse new work, end long polls and subscriptions,
    /// finish in-flight requests, close every log cleanly.
    pub async fn shutdown(self) -> anyhow::Result<()> {
        self.broker.begin_shutdown();
        match tokio::time::timeout(Duration::from_secs(30), self.serving).await {
            Ok(joined) => joined??,
            Err(_) => tracing::warn!("in-flight requests did not finish within 30 s; closing anyway"),
        }
        self.broker.shutdown().await;
        Ok(())
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
    let listener = TcpListener::bind(config.listen)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on {}: {e}", config.listen))?;
    let addr = listener.local_addr()?;
    let request_bytes_max = config.request_bytes_max;
    let broker = tokio::task::spawn_blocking(move || Broker::open(config, fs, clock)).await??;
    broker.spawn_background(broker.watch_stopping());

    let (health, health_service) = tonic_health::server::health_reporter();
    health.set_serving::<proto::broker_server::BrokerServer<service::BrokerService>>().await;
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()?;
    let handler = service::BrokerService { broker: broker.clone() };
    let generated = proto::broker_server::BrokerServer::new(handler.clone())
        .max_decoding_message_size(request_bytes_max)
        .max_encoding_message_size(request_bytes_max + (1 << 20));
    let limits = push::RequestLimits {
        message_bytes_max: request_bytes_max,
        read_timeout: Duration::from_millis(broker.config().request_read_timeout_ms),
        records_max: broker.config().produce_records_max,
        budget: broker.request_budget().clone(),
    };
    let service = push::ZeroCopyReads::new(generated, handler, limits);

    let incoming = accept::incoming(listener);
    let mut stopping = broker.watch_stopping();
    let serving = tokio::spawn(
        tonic::transport::Server::builder()
            .tcp_nodelay(true)
            .http2_keepalive_interval(Some(Duration::from_secs(30)))
            .http2_keepalive_timeout(Some(Duration::from_secs(10)))
            .initial_stream_window_size(Some(1 << 20))
            .initial_connection_window_size(Some(8 << 20))
            // Large frames: a 1 MiB produce or fetch is a few frames, not 64.
            .max_frame_size(Some(1 << 20))
            .layer(tower::util::MapResponseLayer::new(status::rewrite_size_limit))
            .add_service(health_service)
            .add_service(reflection)
            .add_service(service)
            .serve_with_incoming_shutdown(incoming, async move {
                let _ = stopping.wait_for(|s| *s).await;
            }),
    );
    tracing::info!(%addr, "strata is serving");
    Ok(RunningServer { addr, broker, serving })
}
