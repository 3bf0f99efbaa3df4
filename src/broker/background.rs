//! The broker's background work, each loop supervised (a panicking pass is
//! logged and the loop started again): retention every
//! `retention.check.interval.ms`; and every `BACKGROUND_TICK`, finishing
//! segment rolls and fsyncing rolled segments, interval flushes, checkpoint
//! passes, and reopening logs an I/O error poisoned once it clears.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use futures::StreamExt;
use tokio::sync::watch;

use super::partition::Partition;
use super::{supervise, Broker};
use crate::config::{BACKGROUND_TICK, CHECKPOINT_WRITES_IN_FLIGHT};

impl Broker {
    /// Starts the background loops; they stop when `shutdown` turns true.
    pub fn spawn_background(self: &Arc<Self>, shutdown: watch::Receiver<bool>) {
        self.spawn_coordinator(shutdown.clone());
        let (this, stop) = (self.clone(), shutdown.clone());
        supervise::spawn_supervised("retention", move || retention_loop(this.clone(), stop.clone()));
        let (this, stop) = (self.clone(), shutdown.clone());
        supervise::spawn_supervised("flush and checkpoints", move || tick_loop(this.clone(), stop.clone()));
        let (this, stop) = (self.clone(), shutdown.clone());
        supervise::spawn_supervised("share groups", move || share_loop(this.clone(), stop.clone()));
        let (this, stop) = (self.clone(), shutdown);
        supervise::spawn_supervised("alert rules", move || this.clone().alert_loop(stop.clone()));
    }
}

/// Every `SHARE_TICK`: dead-letters records of share groups whose last
/// lock ran out, and wakes fetches waiting for released records.
async fn share_loop(broker: Arc<Broker>, mut stop: watch::Receiver<bool>) {
    let mut tick = tokio::time::interval(super::share_groups::SHARE_TICK);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.wait_for(|s| *s) => return,
        }
        broker.share_tick().await;
    }
}

/// Enforces retention on every partition each `retention.check.interval.ms`.
async fn retention_loop(broker: Arc<Broker>, mut stop: watch::Receiver<bool>) {
    let mut tick = tokio::time::interval(broker.config.retention_check_interval);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.wait_for(|s| *s) => return,
        }
        for p in broker.all_partitions() {
            if let Err(e) = p.blocking(|log| log.enforce_retention()).await {
                tracing::warn!(topic = %p.topic, partition = p.id, error = %e, "retention failed");
            }
        }
    }
}

/// Every tick: finishes rolls and fsyncs rolled segments, runs interval
/// flushes, starts a checkpoint pass when one is due, and tries to reopen
/// poisoned logs.
async fn tick_loop(broker: Arc<Broker>, mut stop: watch::Receiver<bool>) {
    let mut tick = tokio::time::interval(BACKGROUND_TICK);
    let mut last_checkpoint = tokio::time::Instant::now();
    let mut last_reopen = tokio::time::Instant::now();
    let checkpointing = Arc::new(AtomicBool::new(false));
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.wait_for(|s| *s) => return,
        }
        let now = broker.clock.now_ms() as u64;
        let partitions = broker.all_partitions();
        for p in &partitions {
            p.spawn_roll_io(broker.config.rolled_segment_sync_delay);
            if let crate::storage::FlushPolicy::Interval(ms) = p.log.config().flush {
                if let Err(e) = p.flush_if_due(now, ms).await {
                    tracing::warn!(topic = %p.topic, partition = p.id, error = %e, "background flush failed");
                }
            }
        }
        if last_reopen.elapsed() >= broker.config.poisoned_log_retry {
            last_reopen = tokio::time::Instant::now();
            for p in &partitions {
                p.spawn_reopen_if_poisoned();
            }
            if broker.groups.offsets.is_poisoned() {
                let offsets = broker.clone();
                tokio::task::spawn_blocking(move || {
                    if let Err(e) = offsets.groups.offsets.reopen_if_poisoned() {
                        tracing::warn!(error = %e, "the committed offsets log stays poisoned");
                    }
                });
            }
        }
        if last_checkpoint.elapsed() >= broker.config.checkpoint_interval && !checkpointing.swap(true, Ordering::AcqRel)
        {
            last_checkpoint = tokio::time::Instant::now();
            tokio::spawn(checkpoint_pass(partitions, checkpointing.clone()));
        }
    }
}

/// Writes the recovery checkpoint of every partition that moved, a few at
/// a time, off the tick that runs interval flushes and roll I/O.
async fn checkpoint_pass(partitions: Vec<Arc<Partition>>, running: Arc<AtomicBool>) {
    // Cleared however the pass ends, so one failed pass does not stop them all.
    let _running = ClearOnDrop(running);
    futures::stream::iter(partitions)
        .for_each_concurrent(CHECKPOINT_WRITES_IN_FLIGHT, |p| async move {
            if let Err(e) = p.checkpoint_if_dirty().await {
                tracing::warn!(topic = %p.topic, partition = p.id, error = %e, "writing a recovery checkpoint failed");
            }
        })
        .await;
}

/// Clears a flag when dropped (a task's end, normal or not).
pub(crate) struct ClearOnDrop(pub(crate) Arc<AtomicBool>);

impl Drop for ClearOnDrop {
    fn drop(&mut self) {
        self.0.store(false, Ordering::Release);
    }
}
