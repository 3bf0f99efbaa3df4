//! The gRPC listener: `strata.v1.Broker` plus the standard health and
//! reflection services. Translation only: proto types stop here (and in the
//! clients), and [`status`] is the one place broker errors become gRPC codes.
//!
//! - `service.rs`: the `strata.v1.Broker` methods, translated.
//! - `routes.rs`: the methods answered beside tonic (zero-copy Subscribe,
//!   Fetch, Produce, ProduceStream) and the limits every request is read under.
//! - `ahead.rs`: Fetch responses read ahead of their requests.
//! - `codec.rs`: the codec of every service and client, and message framing.
//! - `convert.rs`: proto <-> broker types.
//! - `status.rs`: broker errors -> gRPC statuses.

pub mod ahead;
pub mod codec;
pub mod convert;
pub mod routes;
pub mod service;
pub mod status;

use std::sync::Arc;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

use crate::broker::Broker;
use crate::config::{
    HTTP2_CONNECTION_WINDOW_BYTES, HTTP2_FRAME_BYTES_MAX, HTTP2_KEEPALIVE_INTERVAL, HTTP2_KEEPALIVE_TIMEOUT,
    HTTP2_STREAMS_PER_CONNECTION_MAX, HTTP2_STREAM_WINDOW_BYTES,
};
use crate::listener::accept;
use crate::proto;

/// Serves `strata.v1.Broker` (and health, reflection) on `listener` until
/// the broker begins to shut down.
pub async fn serve(
    broker: Arc<Broker>,
    listener: TcpListener,
    listening: accept::Listening,
) -> anyhow::Result<JoinHandle<anyhow::Result<()>>> {
    let config = broker.config();
    let request_bytes_max = config.request_bytes_max;
    let (health, health_service) = tonic_health::server::health_reporter();
    health.set_serving::<proto::broker_server::BrokerServer<service::BrokerService>>().await;
    let reflection = || {
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(proto::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
    };
    // v1alpha too: grpcurl and grpcio-reflection still ask for it.
    let (reflection, reflection_v1alpha) = (reflection().build_v1()?, reflection().build_v1alpha()?);
    let handler = service::BrokerService { broker: broker.clone() };
    let generated = proto::broker_server::BrokerServer::new(handler.clone())
        .max_decoding_message_size(request_bytes_max)
        .max_encoding_message_size(request_bytes_max + (1 << 20));
    let limits = routes::RequestLimits {
        message_bytes_max: request_bytes_max,
        read_timeout: config.request_read_timeout,
        records_max: config.produce_records_max,
        budget: broker.request_budget().clone(),
    };
    let service = routes::Routes::new(generated, handler, limits);
    let incoming = accept::incoming(listener, "grpc", broker.metrics(), listening);
    let mut stopping = broker.watch_stopping();
    let server = tonic::transport::Server::builder()
        .tcp_nodelay(true)
        .http2_keepalive_interval(Some(HTTP2_KEEPALIVE_INTERVAL))
        .http2_keepalive_timeout(Some(HTTP2_KEEPALIVE_TIMEOUT))
        .initial_stream_window_size(Some(HTTP2_STREAM_WINDOW_BYTES))
        .initial_connection_window_size(Some(HTTP2_CONNECTION_WINDOW_BYTES))
        .max_frame_size(Some(HTTP2_FRAME_BYTES_MAX))
        // Streams per connection: one client cannot open unbounded
        // subscriptions on one connection.
        .max_concurrent_streams(Some(HTTP2_STREAMS_PER_CONNECTION_MAX))
        .add_service(health_service)
        .add_service(reflection)
        .add_service(reflection_v1alpha)
        .add_service(service);
    Ok(tokio::spawn(async move {
        server
            .serve_with_incoming_shutdown(incoming, async move {
                let _ = stopping.wait_for(|s| *s).await;
            })
            .await?;
        Ok(())
    }))
}
