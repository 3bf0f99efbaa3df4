//! strata: a durable, Kafka-style append-only log broker for one machine.
pub mod storage;
