//! Produce: each partition's record batches are validated and written as
//! the client encoded them (compressed ones stay compressed), in request
//! order; the response waits for the topic's flush policy (acks 1 and -1
//! alike: there are no replicas to wait for), or never comes (acks 0).

use bytes::Bytes;
use kafka_protocol::messages::produce_response::{PartitionProduceResponse, TopicProduceResponse};
use kafka_protocol::messages::{ProduceRequest, ProduceResponse, TopicName};
use kafka_protocol::protocol::StrBytes;

use super::conn::{encode, Ctx, Reply};
use super::errors::{self, code};
use crate::broker::produce::PendingProduce;
use crate::broker::{BrokerError, ProduceRequest as Produce, ProduceResult};
use crate::config::TimestampType;
use crate::security::{Operation, Resource};

enum Outcome {
    Written { pending: Vec<PendingProduce>, append_time: bool },
    Failed(i16, String),
}

struct Part {
    topic: TopicName,
    partition: i32,
    outcome: Outcome,
}

/// Splits a partition's `records` into its batches by their length fields;
/// bytes that do not split cleanly are left as one piece, which validation
/// then refuses as corrupt.
fn batches(mut records: Bytes) -> Vec<Bytes> {
    let mut out = Vec::new();
    while !records.is_empty() {
        let len = (records.len() >= 12)
            .then(|| i32::from_be_bytes([records[8], records[9], records[10], records[11]]))
            .filter(|&l| l > 0 && 12 + l as usize <= records.len());
        match len {
            Some(l) => out.push(records.split_to(12 + l as usize)),
            None => {
                out.push(records);
                break;
            }
        }
    }
    out
}

pub(super) async fn produce(ctx: &Ctx, request: ProduceRequest, version: i16) -> Result<Reply, String> {
    let acks = request.acks;
    let refuse_all = if request.transactional_id.is_some() {
        Some((
            code::INVALID_REQUEST,
            "transactions are not supported by strata; produce without a transactional.id".to_string(),
        ))
    } else if !matches!(acks, -1..=1) {
        Some((code::INVALID_REQUIRED_ACKS, format!("acks = {acks}: expected 0, 1 or -1 (all)")))
    } else {
        None
    };
    let mut parts = Vec::new();
    for topic in request.topic_data {
        for p in topic.partition_data {
            let outcome = match &refuse_all {
                Some((c, why)) => Outcome::Failed(*c, why.clone()),
                None => write_partition(ctx, topic.name.as_str(), p.index, p.records.unwrap_or_default()).await,
            };
            parts.push(Part { topic: topic.name.clone(), partition: p.index, outcome });
        }
    }
    if acks == 0 {
        // No response; the writes still complete (and a failure is logged).
        tokio::spawn(async move {
            for part in parts {
                match part.outcome {
                    Outcome::Written { pending, .. } => {
                        for p in pending {
                            if let Err(e) = p.wait().await {
                                tracing::debug!(error = %e, "acks=0 produce failed");
                            }
                        }
                    }
                    Outcome::Failed(_, why) => tracing::debug!(%why, "acks=0 produce refused"),
                }
            }
        });
        return Ok(Reply::None);
    }
    let broker = ctx.broker.clone();
    Ok(Reply::Later(Box::pin(async move {
        let mut responses: Vec<TopicProduceResponse> = Vec::new();
        for part in parts {
            let mut r = PartitionProduceResponse::default()
                .with_index(part.partition)
                .with_base_offset(-1)
                .with_log_append_time_ms(-1)
                .with_log_start_offset(-1);
            let failure = match part.outcome {
                Outcome::Failed(c, why) => Some((c, why)),
                Outcome::Written { pending, append_time } => {
                    let mut first = None;
                    let mut failure = None;
                    for p in pending {
                        match p.wait().await {
                            Ok(produced) => {
                                // A batch of only duplicates (de-dup) appended
                                // nothing: its base offset is the first original's.
                                let dup = produced.duplicates.first().map(|d| ProduceResult {
                                    partition: d.partition,
                                    base_offset: d.offset,
                                    last_offset: d.offset,
                                    log_append_time_ms: -1,
                                });
                                if first.is_none() {
                                    first = produced.results.first().copied().or(dup);
                                }
                            }
                            Err(e) => {
                                failure = failure.or(Some((errors::of(&e), e.to_string())));
                            }
                        }
                    }
                    if let (None, Some(f)) = (&failure, first) {
                        r.base_offset = f.base_offset as i64;
                        if append_time {
                            r.log_append_time_ms = f.log_append_time_ms;
                        }
                    }
                    failure
                }
            };
            if let Ok(p) = broker.partition(part.topic.as_str(), part.partition.max(0) as u32) {
                r.log_start_offset = p.log.log_start_offset() as i64;
            }
            if let Some((c, why)) = failure {
                tracing::debug!(topic = %part.topic.as_str(), partition = part.partition, code = c, %why, "kafka produce failed");
                r.error_code = c;
                if version >= 8 {
                    r.error_message = Some(StrBytes::from_string(why));
                }
            }
            match responses.last_mut().filter(|t| t.name == part.topic) {
                Some(t) => t.partition_responses.push(r),
                None => responses.push(
                    TopicProduceResponse::default().with_name(part.topic.clone()).with_partition_responses(vec![r]),
                ),
            }
        }
        encode(&ProduceResponse::default().with_responses(responses), version)
    })))
}

async fn write_partition(ctx: &Ctx, topic: &str, partition: i32, records: Bytes) -> Outcome {
    let fail = |e: BrokerError| Outcome::Failed(errors::of(&e), e.to_string());
    if partition < 0 {
        return Outcome::Failed(code::UNKNOWN_TOPIC_OR_PARTITION, format!("partition {partition} does not exist"));
    }
    if records.is_empty() {
        return Outcome::Failed(code::INVALID_RECORD, "the partition's records are empty".into());
    }
    if let Err((c, why)) = ctx.check(Operation::Produce, Resource::Topic(topic.to_string())) {
        return Outcome::Failed(c, why);
    }
    let append_time = match ctx.broker.topic(topic) {
        Ok(t) => t.config().timestamp_type == TimestampType::Append,
        Err(e) => return fail(e),
    };
    let mut pending = Vec::new();
    for batch in batches(records) {
        let request = Produce {
            topic: topic.to_string(),
            partition: Some(partition as u32),
            records: Vec::new(),
            producer: None,
            batch: Some(batch),
        };
        match ctx.broker.produce_pending(&ctx.caller(), request).await {
            Ok(p) => pending.push(p),
            Err(e) => {
                if pending.is_empty() {
                    return fail(e);
                }
                // Earlier batches are written; report the failure with them.
                pending.push(PendingProduce::failed(e));
                break;
            }
        }
    }
    Outcome::Written { pending, append_time }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batches_split_by_their_length_fields_and_leftovers_stay_whole() {
        let mut two = Vec::new();
        for len in [49u32, 60] {
            let mut b = vec![0u8; 12 + len as usize];
            b[8..12].copy_from_slice(&len.to_be_bytes());
            two.extend_from_slice(&b);
        }
        let split = batches(Bytes::from(two.clone()));
        assert_eq!(split.iter().map(|b| b.len()).collect::<Vec<_>>(), vec![61, 72]);
        two.truncate(100);
        let split = batches(Bytes::from(two));
        assert_eq!(split.iter().map(|b| b.len()).collect::<Vec<_>>(), vec![61, 39]);
    }
}
