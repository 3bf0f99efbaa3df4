//! Alert rules ("5 `*.error` within 60 s -> `alerts.error_storm`", or
//! "payments stopped") and de-duplication by event id: the pure parts
//! (`broker/alerts.rs` is the engine):
//!
//! - `rule.rs`: a rule as defined, checked field by field, and whether a
//!   record matches it (topic pattern, JSON pointer or header filters, the
//!   `group_by` value that picks its window).
//! - `window.rs`: a rule's sliding windows with the clock passed in:
//!   matches in, alerts out, BELOW rules on a timer; memory bounded by the
//!   threshold and `GROUP_VALUES_MAX`; alert ids stable across a rebuild.
//! - `dedupe.rs`: a topic's table of event ids for de-duplication
//!   (`dedupe.window.ms`), bounded per partition by `dedupe.max.ids`
//!   (`broker/dedupe.rs` puts it on the produce path).
//!
//! Invariants: no I/O, no clock, no tokio here.

pub mod dedupe;
pub mod rule;
pub mod window;
