//! Fetch: the stored record batches as they are, for every partition asked
//! for, with Kafka's long poll (answer once `min_bytes` are there or
//! `max_wait_ms` passed, woken by appends, never by polling) and byte
//! limits (`partition_max_bytes`, `max_bytes`, at most `max_request_bytes`
//! per response; the first batch is returned even when it is larger, as
//! KIP-74 asks, so a client always makes progress). Sessionless: every
//! request names its partitions (session id 0 tells clients so).

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use kafka_protocol::messages::fetch_response::{FetchableTopicResponse, PartitionData};
use kafka_protocol::messages::{FetchRequest, FetchResponse, TopicName};

use super::conn::Ctx;
use super::errors::{self, code};
use crate::broker::partition::Partition;
use crate::config::FETCH_WAIT_MAX;

struct Wanted {
    topic: TopicName,
    partition: i32,
    offset: i64,
    max_bytes: usize,
    log: Result<Arc<Partition>, i16>,
}

/// The response, and the stored batches in it (to be sent as they are).
use crate::security::{Operation, Resource};

pub(super) async fn fetch(ctx: &Ctx, request: FetchRequest, _version: i16) -> (FetchResponse, Vec<Bytes>) {
    let broker = &ctx.broker;
    let limit = broker.config().request_bytes_max;
    let max_bytes = if request.max_bytes <= 0 { limit } else { (request.max_bytes as usize).min(limit) };
    let min_bytes = request.min_bytes.max(0) as usize;
    let wait = Duration::from_millis(request.max_wait_ms.max(0) as u64).min(FETCH_WAIT_MAX);
    let deadline = tokio::time::Instant::now() + wait;
    let wanted: Vec<Wanted> = request
        .topics
        .iter()
        .flat_map(|t| {
            t.partitions.iter().map(move |p| Wanted {
                topic: t.topic.clone(),
                partition: p.partition,
                offset: p.fetch_offset,
                max_bytes: p.partition_max_bytes.max(0) as usize,
                log: if p.partition < 0 {
                    Err(code::UNKNOWN_TOPIC_OR_PARTITION)
                } else if let Err((c, _)) = ctx.check(Operation::Consume, Resource::Topic(t.topic.to_string())) {
                    Err(c)
                } else {
                    broker.partition(t.topic.as_str(), p.partition as u32).map_err(|e| errors::of(&e))
                },
            })
        })
        .collect();
    let mut watches: Vec<_> = wanted.iter().filter_map(|w| w.log.as_ref().ok().map(|p| p.watch())).collect();
    let mut stopping = broker.watch_stopping();
    loop {
        for w in &mut watches {
            w.borrow_and_update();
        }
        let (responses, bytes, failed) = read_all(&wanted, max_bytes).await;
        let waited_enough = tokio::time::Instant::now() >= deadline || *stopping.borrow();
        if bytes >= min_bytes || failed || waited_enough || watches.is_empty() {
            let batches = responses
                .iter()
                .flat_map(|t| t.partitions.iter().filter_map(|p| p.records.clone()))
                .filter(|r| !r.is_empty())
                .collect();
            return (FetchResponse::default().with_responses(responses), batches);
        }
        // Not enough yet: wait for an append to any of them.
        let changed = futures::future::select_all(watches.iter_mut().map(|w| Box::pin(w.changed())));
        tokio::select! {
            _ = changed => {}
            _ = tokio::time::sleep_until(deadline) => {}
            _ = crate::broker::stopped(&mut stopping) => {}
        }
    }
}

/// One pass over the partitions: (responses by topic, bytes, whether any failed).
async fn read_all(wanted: &[Wanted], max_bytes: usize) -> (Vec<FetchableTopicResponse>, usize, bool) {
    let mut responses: Vec<FetchableTopicResponse> = Vec::new();
    let mut total = 0usize;
    let mut failed = false;
    for w in wanted {
        let mut data = PartitionData::default()
            .with_partition_index(w.partition)
            .with_preferred_read_replica(kafka_protocol::messages::BrokerId(-1));
        match &w.log {
            Err(c) => {
                data.error_code = *c;
                failed = true;
            }
            Ok(p) => {
                let (lso, hw) = (p.log.log_start_offset(), p.log.high_watermark());
                data.high_watermark = hw as i64;
                data.last_stable_offset = hw as i64;
                data.log_start_offset = lso as i64;
                let room = max_bytes.saturating_sub(total).min(w.max_bytes);
                if w.offset < lso as i64 || w.offset > hw as i64 {
                    data.error_code = code::OFFSET_OUT_OF_RANGE;
                    failed = true;
                } else if (w.offset as u64) < hw && (room > 0 || total == 0) {
                    match p.read_raw(w.offset as u64, room.max(1)).await {
                        Ok(read) => {
                            let bytes = read.run;
                            total += bytes.len();
                            data.high_watermark = read.high_watermark as i64;
                            data.last_stable_offset = read.high_watermark as i64;
                            data.log_start_offset = read.log_start_offset as i64;
                            data.records = Some(bytes);
                        }
                        Err(e) => {
                            data.error_code = errors::of(&e);
                            failed = true;
                        }
                    }
                }
            }
        }
        if data.records.is_none() {
            data.records = Some(Bytes::new());
        }
        match responses.last_mut().filter(|t| t.topic == w.topic) {
            Some(t) => t.partitions.push(data),
            None => responses
                .push(FetchableTopicResponse::default().with_topic(w.topic.clone()).with_partitions(vec![data])),
        }
    }
    (responses, total, failed)
}
