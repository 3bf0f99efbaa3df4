//! Memory budgets that keep one client from taking more than its share.
//!
//! - [`RequestBudget`]: bytes of requests being received or decoded, broker
//!   wide (Kafka's `queued.max.request.bytes`). A listener acquires a
//!   request's declared size (plus what decoding it will take) before it
//!   reads the rest; while the budget is spent it stops reading, so flow
//!   control pushes back on the senders instead of the broker buffering
//!   them. Requests that stall half-sent time out and give their share back.
//! - [`StreamBudget`]: bytes one push stream may have read ahead of its
//!   client. Each read takes a share before it reads and the share travels
//!   with the data until the listener has handed it to the connection, so a
//!   subscriber that stops reading holds at most this much, however many
//!   partitions it follows.

use std::sync::Arc;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::{BrokerError, Result};

/// Broker-wide budget of request bytes in flight.
#[derive(Debug, Clone)]
pub struct RequestBudget {
    permits: Arc<Semaphore>,
    total: usize,
}

/// A share of a budget, given back when dropped.
#[derive(Debug)]
pub struct BudgetPermit(#[allow(dead_code)] Option<OwnedSemaphorePermit>);

impl BudgetPermit {
    /// A permit that holds nothing (data that is not budgeted).
    pub fn none() -> BudgetPermit {
        BudgetPermit(None)
    }

    /// Holds `other`'s share too (both come from the same budget).
    pub fn merge(&mut self, other: BudgetPermit) {
        match (&mut self.0, other.0) {
            (Some(mine), Some(theirs)) => mine.merge(theirs),
            (mine @ None, theirs) => *mine = theirs,
            (Some(_), None) => {}
        }
    }
}

impl RequestBudget {
    pub fn new(total_bytes: usize) -> RequestBudget {
        let total = total_bytes.clamp(1, u32::MAX as usize);
        RequestBudget { permits: Arc::new(Semaphore::new(total)), total }
    }

    /// Bytes not taken right now.
    pub fn available(&self) -> usize {
        self.permits.available_permits()
    }

    pub fn total(&self) -> usize {
        self.total
    }

    /// `bytes` of the budget if they can be had within `wait`, else None
    /// (for a second share of a request that already holds one: waiting
    /// for it without end could deadlock requests holding each other's).
    pub async fn acquire_within(&self, bytes: usize, wait: std::time::Duration) -> Option<BudgetPermit> {
        if bytes > self.total {
            return None;
        }
        let acquire = self.permits.clone().acquire_many_owned(bytes.max(1) as u32);
        match tokio::time::timeout(wait, acquire).await {
            Ok(Ok(permit)) => Some(BudgetPermit(Some(permit))),
            _ => None,
        }
    }

    /// `bytes` of the budget if they are free now.
    pub fn try_acquire(&self, bytes: usize) -> Option<BudgetPermit> {
        let n = u32::try_from(bytes.max(1)).ok()?;
        self.permits.clone().try_acquire_many_owned(n).ok().map(|p| BudgetPermit(Some(p)))
    }

    /// Waits for `bytes` of the budget. A request larger than the whole
    /// budget could never be served: RESOURCE_EXHAUSTED at once.
    pub async fn acquire(&self, bytes: usize) -> Result<BudgetPermit> {
        if bytes > self.total {
            return Err(BrokerError::RequestTooLarge {
                size: bytes,
                limit: self.total,
                setting: "decoded, over queued.max.request.bytes",
            });
        }
        let permit = self
            .permits
            .clone()
            .acquire_many_owned(bytes.max(1) as u32)
            .await
            .map_err(|_| BrokerError::ShuttingDown)?;
        Ok(BudgetPermit(Some(permit)))
    }
}

/// The read-ahead budget of one push stream.
#[derive(Debug, Clone)]
pub struct StreamBudget {
    permits: Arc<Semaphore>,
    total: usize,
}

impl StreamBudget {
    pub fn new(total_bytes: usize) -> StreamBudget {
        let total = total_bytes.clamp(1, u32::MAX as usize);
        StreamBudget { permits: Arc::new(Semaphore::new(total)), total }
    }

    /// Waits until `bytes` (capped at the whole budget) may be read ahead.
    pub async fn acquire(&self, bytes: usize) -> BudgetPermit {
        let n = bytes.clamp(1, self.total) as u32;
        // The semaphore is never closed, so this cannot fail.
        BudgetPermit(self.permits.clone().acquire_many_owned(n).await.ok())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn shares_come_back_when_dropped_and_oversize_is_refused_at_once() {
        let budget = RequestBudget::new(100);
        let a = budget.acquire(60).await.unwrap();
        assert_eq!(budget.available(), 40);
        assert!(matches!(budget.acquire(101).await, Err(BrokerError::RequestTooLarge { .. })));
        let waiting = tokio::spawn({
            let budget = budget.clone();
            async move { budget.acquire(50).await.unwrap() }
        });
        tokio::task::yield_now().await;
        assert!(!waiting.is_finished(), "waits while the budget is spent");
        drop(a);
        let b = waiting.await.unwrap();
        assert_eq!(budget.available(), 50);
        drop(b);
        assert_eq!(budget.available(), 100);
    }
}
