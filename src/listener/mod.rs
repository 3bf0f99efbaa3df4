//! The listeners: each speaks one protocol and only translates between its
//! wire messages and the broker's API (`crate::broker`). What they share
//! (the accept loop, limits, budgets) is here or in the broker.
//!
//! - `accept.rs`: accepting TCP connections, calm when out of descriptors.
//! - `grpc/`: `strata.v1.Broker` over tonic, plus health and reflection.
//! - `kafka/`: the Kafka protocol, for Kafka clients.
//! - `http.rs`: `/metrics`, `/healthz` (and the web console).

pub mod accept;
pub mod grpc;
pub mod http;
pub mod kafka;
