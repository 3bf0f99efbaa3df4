//! Consumer groups: the pure membership state machine and assignor, and the
//! durable store of committed offsets. No tokio and no networking here; the
//! broker drives these with events and the current time.

pub mod assignor;
pub mod classic;
pub mod offsets;
pub mod state;

/// A topic name and partition number.
pub type TopicPartition = (String, u32);
