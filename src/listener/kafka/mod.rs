//! The Kafka protocol listener: Kafka clients (librdkafka, the Java client,
//! kafka-python, KafkaJS, franz-go) on the broker's topics, offsets and
//! groups. Translation only, like the gRPC listener: the messages' codecs
//! come from the `kafka-protocol` crate, record batches are stored as the
//! clients send them, and [`errors`] is the one place broker errors become
//! Kafka error codes.
//!
//! - `conn.rs`: one connection: frames, limits, responses in request order.
//! - `versions.rs`: the APIs and versions served; ApiVersions.
//! - `produce.rs`, `fetch.rs`: the data path.
//! - `admin.rs`: Metadata, topics, configs, offsets lookups, producer ids, SASL.
//! - `groups.rs`: FindCoordinator, the classic group protocol, offsets.
//! - `errors.rs`: broker errors -> Kafka error codes.

mod admin;
mod conn;
pub mod errors;
mod fetch;
mod groups;
mod produce;
pub mod versions;

use std::net::SocketAddr;
use std::sync::Arc;

use futures::StreamExt;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

use crate::broker::Broker;
use crate::listener::accept;

/// The broker id every response names: strata is one broker.
pub const NODE_ID: i32 = 0;

/// Serves the Kafka protocol on `listener` until the broker begins to shut
/// down; each connection is its own task and ends with the broker.
pub fn serve(
    broker: Arc<Broker>,
    listener: TcpListener,
    listening: accept::Listening,
) -> anyhow::Result<JoinHandle<anyhow::Result<()>>> {
    let local = listener.local_addr()?;
    let mut incoming = Box::pin(accept::incoming(listener, "kafka", broker.metrics(), listening));
    let mut stopping = broker.watch_stopping();
    let connections = tokio_util_tracker();
    Ok(tokio::spawn(async move {
        loop {
            let stream = tokio::select! {
                s = incoming.next() => match s {
                    Some(Ok(s)) => s,
                    Some(Err(_)) | None => continue,
                },
                _ = crate::broker::stopped(&mut stopping) => break,
            };
            let (peer, cn, tls) = (stream.peer, stream.cn.clone(), stream.is_tls());
            let local = stream.local.unwrap_or(local);
            let (broker, connections) = (broker.clone(), connections.clone());
            connections.0.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            tokio::spawn(async move {
                conn::serve_connection(broker, stream, (peer, cn, tls), local).await;
                connections.0.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
                connections.1.notify_waiters();
            });
        }
        // Let in-flight requests finish (the broker refuses new work and
        // ends long polls once stopping).
        let deadline = tokio::time::Instant::now() + crate::config::SHUTDOWN_GRACE;
        while connections.0.load(std::sync::atomic::Ordering::Relaxed) > 0 {
            let notified = connections.1.notified();
            if connections.0.load(std::sync::atomic::Ordering::Relaxed) == 0 {
                break;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                break;
            }
        }
        Ok(())
    }))
}

/// Open connections and a wake-up when one closes.
type Tracker = Arc<(std::sync::atomic::AtomicUsize, tokio::sync::Notify)>;

fn tokio_util_tracker() -> Tracker {
    Arc::new((std::sync::atomic::AtomicUsize::new(0), tokio::sync::Notify::new()))
}

/// The address clients are told to connect to: the configured one, else
/// the one this connection came in on.
pub fn advertised(broker: &Broker, local: SocketAddr) -> (String, i32) {
    if let Some(a) = &broker.config().kafka_advertised {
        if let Some((host, port)) = a.rsplit_once(':') {
            return (host.trim_matches(|c| c == '[' || c == ']').to_string(), port.parse().unwrap_or(9092));
        }
    }
    (local.ip().to_string(), local.port() as i32)
}
