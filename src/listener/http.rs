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
use crate::listener::accept::{self, Conn};

/// The routes, on a broker.
pub fn router(broker: Arc<Broker>) -> Router {
    Router::new().route("/metrics", get(metrics)).route("/healthz", get(healthz)).with_state(broker)
}

/// With security on, /metrics needs a principal (bearer token, or the
/// connection's client certificate CN) granted describe on the cluster
/// (an ACL entry with `topics = ["*"]`): it names every topic and group.
fn authorize_metrics(broker: &Broker, headers: &http::HeaderMap, cn: Option<&str>) -> Result<(), Box<Response>> {
    if !broker.authorizer().is_on() {
        return Ok(());
    }
    let token =
        headers.get(header::AUTHORIZATION).and_then(|v| v.as_bytes().strip_prefix(b"Bearer ")).map(|t| t.trim_ascii());
    let refuse =
        |status: StatusCode, e: crate::broker::BrokerError| Box::new((status, format!("{e}\n")).into_response());
    let principal = broker.authorizer().authenticate(token, cn).map_err(|e| refuse(StatusCode::UNAUTHORIZED, e))?;
    let mut caller = crate::broker::Caller::anonymous(crate::broker::Via::Http, None);
    caller.principal = principal;
    broker
        .authorizer()
        .authorize(&caller, crate::security::Operation::Describe, &crate::security::Resource::Cluster)
        .map_err(|e| refuse(StatusCode::FORBIDDEN, e))
}

/// The client certificate CN of the connection a request came on.
#[derive(Debug, Clone)]
struct PeerCn(Option<String>);

async fn metrics(
    State(broker): State<Arc<Broker>>,
    axum::Extension(PeerCn(cn)): axum::Extension<PeerCn>,
    headers: http::HeaderMap,
) -> Response {
    if let Err(refused) = authorize_metrics(&broker, &headers, cn.as_deref()) {
        return *refused;
    }
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
pub fn serve(
    broker: Arc<Broker>,
    listener: TcpListener,
    listening: accept::Listening,
) -> anyhow::Result<JoinHandle<anyhow::Result<()>>> {
    let mut incoming = accept::incoming(listener, "http", broker.metrics(), listening).boxed();
    let mut stopping = broker.watch_stopping();
    let timeout = broker.config().request_read_timeout;
    let app = router(broker);
    Ok(tokio::spawn(async move {
        let graceful = hyper_util::server::graceful::GracefulShutdown::new();
        loop {
            let conn: Conn = tokio::select! {
                c = incoming.next() => match c {
                    Some(Ok(c)) => c,
                    Some(Err(_)) | None => continue,
                },
                _ = crate::broker::stopped(&mut stopping) => break,
            };
            let app = app.clone().layer(axum::Extension(PeerCn(conn.cn.clone())));
            let service = hyper_util::service::TowerToHyperService::new(app);
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
