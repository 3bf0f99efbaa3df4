//! strata: a durable, Kafka-style append-only log broker for one machine.
//!
//! Layers, each depending only on the ones below it:
//! - [`server`]: the composition root: opens the broker, starts every listener.
//! - [`listener`]: one module per protocol (gRPC now); translation only.
//!   Proto types stop there (and in the clients).
//! - [`broker`]: the one API every listener calls: topics, produce, fetch,
//!   subscriptions, groups, budgets, background tasks.
//! - [`storage`]: the synchronous log engine (segments, indexes, recovery);
//!   no tokio, no tonic, no prost.
//! - [`config`]: every limit, with units in the names.
//! - [`security`]: authentication, ACLs and TLS, asked by every listener.
//!
//! - [`group`]: consumer groups as pure state machines, committed offsets.
//!
//! The `strata` binary (`main.rs` and [`cli`]) sits on top; [`client`] is
//! its zero-copy gRPC client, [`bench`] the load generator.

pub mod bench;
pub mod broker;
pub mod cli;
pub mod client;
pub mod config;
pub mod group;
pub mod listener;
pub mod metrics;
pub mod security;
pub mod server;
pub mod storage;
pub mod telemetry;

/// Generated protobuf and gRPC types for `strata.v1`.
pub mod proto {
    #![allow(clippy::all, missing_docs)]
    tonic::include_proto!("strata.v1");

    /// Encoded descriptors, for server reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("strata_descriptor");
}
