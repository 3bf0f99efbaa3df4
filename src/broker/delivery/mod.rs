//! Share groups (Kafka's KIP-932 word): consumers that share a topic's
//! records one by one, acknowledge each, get failures redelivered after a
//! backoff, and see records that keep failing moved to a dead-letter topic.
//!
//! - `config.rs`: a group's keys (`ack.wait.ms`, `max.deliveries`, ...),
//!   parsed and bounded.
//! - `state.rs`: one group's state on one partition as a pure state
//!   machine with the clock passed in; every decision that must survive a
//!   crash comes out as a journaled `Change`.
//! - `dead_letter.rs`: a dead letter's record (`dlq.*` headers) and the
//!   way back for `RedriveDeadLetters`.
//! - `journal.rs`: the internal log `__share_groups` those changes go to,
//!   fsynced before an operation answers, replayed on open, compacted by
//!   snapshot.
//!
//! Invariants: nothing but `journal.rs` does I/O, and nothing reads a clock; a record is done
//! only when accepted, dead-lettered after its dead letter is durable, or
//! deleted by retention (counted).

pub mod config;
pub mod dead_letter;
pub mod journal;
pub mod state;
