//! Fetch: records (or the stored batches as they are) from one partition,
//! with a long poll that waits for appends without polling, and offset
//! lookups by boundary or time.

use std::sync::Arc;

use super::partition::{Partition, ReadInto, ReadSink};
use super::{Broker, BrokerError, Caller, FetchRequest, OffsetLookup, Position, Result};
use crate::config::{FETCH_BYTES_DEFAULT, FETCH_RECORDS_DEFAULT, FETCH_RECORDS_MAX, FETCH_WAIT_MAX};
use crate::storage::batch::StoredRecord;
use crate::storage::ReadBatches;

/// What a fetch returns: records in `S` (see [`Broker::fetch_into`]), or
/// stored batches.
#[derive(Debug, Clone)]
pub enum Fetched<S = Vec<StoredRecord>> {
    Records(ReadInto<S>),
    /// Stored batches as they are; the first may start before `from`.
    Batches {
        from: u64,
        read: ReadBatches,
    },
}

impl Broker {
    /// Resolves a position to an offset in one partition. `Committed` must
    /// have been resolved by the caller (it needs a group).
    pub async fn resolve(&self, partition: &Arc<Partition>, position: Position) -> Result<u64> {
        match position {
            Position::Offset(o) => Ok(o),
            Position::Earliest => Ok(partition.log.log_start_offset()),
            Position::Latest => Ok(partition.log.high_watermark()),
            Position::Timestamp(ts) => partition.blocking(move |log| log.offset_for_timestamp(ts)).await,
            Position::Committed => Err(BrokerError::InvalidRequest("position COMMITTED needs a consumer group".into())),
        }
    }

    /// Reads from a partition, waiting up to `request.wait` for data when
    /// there is none.
    pub async fn fetch(&self, caller: &Caller, request: FetchRequest) -> Result<Fetched> {
        self.fetch_into(caller, request, Vec::new).await
    }

    /// [`Broker::fetch`] with the records put into a sink `sink` makes for
    /// each read (a long poll may read more than once): a listener's
    /// encoder writes them onto its wire as they are read.
    pub async fn fetch_into<S: ReadSink>(
        &self,
        _caller: &Caller,
        request: FetchRequest,
        sink: impl Fn() -> S,
    ) -> Result<Fetched<S>> {
        let FetchRequest { topic, partition, from, records_max, bytes_max, wait, raw } = request;
        let (records_max, bytes_max) = self.fetch_limits(records_max, bytes_max);
        let wait = wait.min(FETCH_WAIT_MAX);
        if raw {
            let (offset, read) = self
                .long_poll(&topic, partition, from, wait, |p, offset| async move {
                    let read = p.read_raw(offset, bytes_max).await?;
                    Ok((!read.batches.is_empty(), read))
                })
                .await?;
            return Ok(Fetched::Batches { from: offset, read });
        }
        let (_, read) = self
            .long_poll(&topic, partition, from, wait, |p, offset| {
                let into = sink();
                async move {
                    let read = p.read_into(offset, records_max, bytes_max, into).await?;
                    p.count_fetched(read.records.len() as u64, read.batch_bytes);
                    let found = !read.records.is_empty() || offset < read.high_watermark;
                    Ok((found, read))
                }
            })
            .await?;
        Ok(Fetched::Records(read))
    }

    /// A fetch's record and byte limits as served: 0 means the default,
    /// and neither goes above the broker's maximum.
    pub fn fetch_limits(&self, records_max: usize, bytes_max: usize) -> (usize, usize) {
        let records_max = if records_max == 0 { FETCH_RECORDS_DEFAULT } else { records_max.min(FETCH_RECORDS_MAX) };
        let bytes_max = if bytes_max == 0 { FETCH_BYTES_DEFAULT } else { bytes_max.min(self.config.request_bytes_max) };
        (records_max, bytes_max)
    }

    /// Reads records at `from` for a fetch expected next (see the gRPC
    /// listener's read-ahead): no wait, and not counted as fetched until
    /// it is served ([`Partition::count_fetched`]). The limits are as
    /// [`Broker::fetch_limits`] returned them.
    pub async fn read_ahead<S: ReadSink>(
        &self,
        topic: &str,
        partition: u32,
        from: u64,
        records_max: usize,
        bytes_max: usize,
        sink: S,
    ) -> Result<(Arc<Partition>, ReadInto<S>)> {
        self.check_running()?;
        let partition = self.partition(topic, partition)?;
        let read = partition.read_into(from, records_max, bytes_max, sink).await?;
        Ok((partition, read))
    }

    /// Calls `read` at the resolved offset until it finds data, an append
    /// wakes it, `wait` passes, or shutdown begins (no polling). Returns the
    /// resolved offset and what was read.
    async fn long_poll<T, F, Fut>(
        &self,
        topic: &str,
        partition: u32,
        from: Position,
        wait: std::time::Duration,
        read: F,
    ) -> Result<(u64, T)>
    where
        F: Fn(Arc<Partition>, u64) -> Fut,
        Fut: std::future::Future<Output = Result<(bool, T)>>,
    {
        self.check_running()?;
        let partition = self.partition(topic, partition)?;
        let offset = self.resolve(&partition, from).await?;
        let mut hw = partition.watch();
        let mut stopping = self.watch_stopping();
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let (found, out) = read(partition.clone(), offset).await?;
            if found {
                return Ok((offset, out));
            }
            // Nothing at `offset` yet: wait for an append.
            hw.borrow_and_update();
            if partition.log.high_watermark() > offset {
                continue;
            }
            tokio::select! {
                r = tokio::time::timeout_at(deadline, hw.changed()) => match r {
                    Ok(Ok(())) => continue,
                    Ok(Err(_)) | Err(_) => return Ok((offset, out)),
                },
                _ = super::stopped(&mut stopping) => return Ok((offset, out)),
            }
        }
    }

    /// The offset at a position, with the partition's bounds.
    pub async fn list_offsets(
        &self,
        _caller: &Caller,
        topic: &str,
        partition: u32,
        at: Position,
    ) -> Result<OffsetLookup> {
        let partition = self.partition(topic, partition)?;
        let offset = self.resolve(&partition, at).await?;
        Ok(OffsetLookup {
            offset,
            log_start_offset: partition.log.log_start_offset(),
            high_watermark: partition.log.high_watermark(),
        })
    }
}
