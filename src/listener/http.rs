//! The HTTP listener (`--http-listen`, default 127.0.0.1:9644): `GET
//! /metrics` in Prometheus' text format and `GET /healthz`; the web console
//! comes here too. axum (already in the tree through tonic) on the shared
//! accept loop, so its connections are counted and calm at the descriptor
//! limit like the others.

use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use futures::StreamExt;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

use crate::broker::Broker;
use crate::listener::accept::{self, Counted};

/// The routes, on a broker.
pub fn router(broker: Arc<Broker>) -> Router {
    Router::new().route("/metrics", get(metrics)).route("/healthz", get(healthz)).with_state(broker)
}

async fn metrics(State(broker): State<Arc<Broker>>) -> Response {
    // A walk over every partition and committed offset: off the async
    // workers, which keep serving produce and fetch meanwhile.
    match tokio::task::spawn_blocking(move || broker.metrics_text()).await {
        Ok(text) => ([(header::CONTENT_TYPE, crate::metrics::CONTENT_TYPE)], text).into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, format!("metrics failed: {e}\n")).into_response(),
    }
}

/// 200 `ok` while the broker serves; 503 once it is shutting down, so a
/// load balancer or orchestrator stops sending work first.
async fn healthz(State(broker): State<Arc<Broker>>) -> Response {
    if broker.is_running() {
        (StatusCode::OK, "ok\n").into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "shutting down\n").into_response()
    }
}

/// The shared accept loop as axum's listener.
struct Accepted {
    incoming: futures::stream::BoxStream<'static, std::io::Result<Counted>>,
    local: std::net::SocketAddr,
}

impl axum::serve::Listener for Accepted {
    type Io = Counted;
    type Addr = std::net::SocketAddr;

    async fn accept(&mut self) -> (Counted, std::net::SocketAddr) {
        loop {
            // `incoming` never ends and handles its own errors.
            if let Some(Ok(conn)) = self.incoming.next().await {
                let peer = conn.stream.peer_addr().unwrap_or(self.local);
                return (conn, peer);
            }
        }
    }

    fn local_addr(&self) -> std::io::Result<std::net::SocketAddr> {
        Ok(self.local)
    }
}

/// Serves the HTTP routes on `listener` until the broker begins to shut down.
pub fn serve(broker: Arc<Broker>, listener: TcpListener) -> anyhow::Result<JoinHandle<anyhow::Result<()>>> {
    let local = listener.local_addr()?;
    let incoming = accept::incoming(listener, "http", broker.metrics()).boxed();
    let mut stopping = broker.watch_stopping();
    let app = router(broker);
    Ok(tokio::spawn(async move {
        axum::serve(Accepted { incoming, local }, app)
            .with_graceful_shutdown(async move {
                let _ = stopping.wait_for(|s| *s).await;
            })
            .await?;
        Ok(())
    }))
}
