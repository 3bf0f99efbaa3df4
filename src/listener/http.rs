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

/// Serves the HTTP routes on `listener` until the broker begins to shut
/// down. hyper directly, rather than `axum::serve`, for a header read
/// timeout: a client that connects and never sends (or stalls inside its
/// headers, or idles between keep-alive requests) is cut off after
/// `request_read_timeout_ms`, as on the other listeners, instead of
/// holding a connection forever.
pub fn serve(broker: Arc<Broker>, listener: TcpListener) -> anyhow::Result<JoinHandle<anyhow::Result<()>>> {
    let mut incoming = accept::incoming(listener, "http", broker.metrics()).boxed();
    let mut stopping = broker.watch_stopping();
    let timeout = broker.config().request_read_timeout;
    let app = router(broker);
    Ok(tokio::spawn(async move {
        let graceful = hyper_util::server::graceful::GracefulShutdown::new();
        loop {
            let conn: Counted = tokio::select! {
                c = incoming.next() => match c {
                    Some(Ok(c)) => c,
                    Some(Err(_)) | None => continue,
                },
                _ = crate::broker::stopped(&mut stopping) => break,
            };
            let service = hyper_util::service::TowerToHyperService::new(app.clone());
            let served = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(timeout)
                .serve_connection(hyper_util::rt::TokioIo::new(conn), service);
            let served = graceful.watch(served);
            tokio::spawn(async move {
                if let Err(e) = served.await {
                    tracing::debug!(error = %e, "http connection ended");
                }
            });
        }
        // Requests in flight finish; idle keep-alive connections close.
        if tokio::time::timeout(crate::config::SHUTDOWN_GRACE, graceful.shutdown()).await.is_err() {
            tracing::warn!("http requests did not finish within the shutdown grace; closing anyway");
        }
        Ok(())
    }))
}
