//! The de-duplication window of one partition, as pure code with the clock
//! passed in: event ids appended within the last `dedupe.window.ms`, each
//! with the offset it was first appended at. Issue 19's produce path asks
//! it before an append (`check`) and tells it after (`remember`); on open
//! it is rebuilt from the log's last window.
//!
//! Bounded: at most `max_ids` ids (the oldest are forgotten first, so a
//! full table shortens the effective window instead of growing), and ids
//! longer than [`ID_BYTES_MAX`] are refused before they get here.

use std::collections::{HashMap, VecDeque};

use bytes::Bytes;

/// The longest id a record may carry (longer: INVALID_ARGUMENT).
pub const ID_BYTES_MAX: usize = 256;

/// Event ids seen in the window.
#[derive(Debug, Clone)]
pub struct IdWindow {
    window_ms: i64,
    max_ids: usize,
    /// id -> (offset first appended at, its timestamp).
    ids: HashMap<Bytes, (u64, i64)>,
    /// Ids in the order they were remembered, with their timestamps.
    order: VecDeque<(i64, Bytes)>,
    /// Bytes of the ids held (for DescribeTopic).
    bytes: usize,
}

impl IdWindow {
    pub fn new(window_ms: u64, max_ids: usize) -> IdWindow {
        IdWindow {
            window_ms: i64::try_from(window_ms).unwrap_or(i64::MAX),
            max_ids: max_ids.max(1),
            ids: HashMap::new(),
            order: VecDeque::new(),
            bytes: 0,
        }
    }

    /// Forgets ids older than the window at `now_ms`.
    pub fn expire(&mut self, now_ms: i64) {
        let floor = now_ms.saturating_sub(self.window_ms);
        while self.order.front().is_some_and(|(t, _)| *t <= floor) {
            self.pop_oldest();
        }
    }

    fn pop_oldest(&mut self) {
        if let Some((t, id)) = self.order.pop_front() {
            // Only if the table still holds this entry (it may have been
            // remembered again later, with a newer time).
            if self.ids.get(&id).is_some_and(|&(_, at)| at == t) {
                self.ids.remove(&id);
                self.bytes -= id.len();
            }
        }
    }

    /// The offset `id` was appended at, if within the window at `now_ms`.
    pub fn check(&mut self, id: &[u8], now_ms: i64) -> Option<u64> {
        self.expire(now_ms);
        self.ids.get(id).map(|&(offset, _)| offset)
    }

    /// Records that `id` was appended at `offset` at `timestamp_ms`.
    pub fn remember(&mut self, id: Bytes, offset: u64, timestamp_ms: i64) {
        if self.ids.contains_key(&id) {
            return;
        }
        while self.ids.len() >= self.max_ids {
            self.pop_oldest();
        }
        self.bytes += id.len();
        self.ids.insert(id.clone(), (offset, timestamp_ms));
        self.order.push_back((timestamp_ms, id));
    }

    pub fn len(&self) -> usize {
        self.ids.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }

    /// Memory held, about: ids, map and queue entries.
    pub fn memory_bytes(&self) -> usize {
        2 * self.bytes + self.ids.len() * 64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(s: &str) -> Bytes {
        Bytes::from(s.to_string())
    }

    #[test]
    fn a_repeated_id_within_the_window_names_the_first_offset() {
        let mut w = IdWindow::new(1000, 100);
        assert_eq!(w.check(b"evt-1", 0), None);
        w.remember(id("evt-1"), 7, 0);
        assert_eq!(w.check(b"evt-1", 999), Some(7));
        w.remember(id("evt-1"), 9, 999);
        assert_eq!(w.check(b"evt-1", 999), Some(7), "the first append is the one that counts");
        assert_eq!(w.check(b"evt-1", 1000), None, "out of the window");
        assert!(w.is_empty());
    }

    #[test]
    fn a_full_table_forgets_the_oldest_first() {
        let mut w = IdWindow::new(60_000, 3);
        for (i, s) in ["a", "b", "c", "d"].iter().enumerate() {
            w.remember(id(s), i as u64, i as i64);
        }
        assert_eq!(w.len(), 3);
        assert_eq!(w.check(b"a", 10), None);
        assert_eq!(w.check(b"d", 10), Some(3));
        assert!(w.memory_bytes() > 0);
    }
}
