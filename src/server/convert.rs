//! Proto <-> domain translation. Proto types stop in `server/`.

use crate::broker::groups::GroupInfo;
use crate::broker::partition::ReadRecords;
use crate::broker::subscription::SubscriptionEvent;
use crate::broker::{PartitionInfo, Position, ProduceRequest, ProduceResult, TopicInfo};
use crate::group::offsets::Committed;
use crate::proto;
use crate::storage::batch::{ProducerStamp, Record, StoredRecord};
use tonic::Status;

pub fn position(p: Option<proto::Position>, absent: Position) -> Result<Position, Status> {
    use proto::position::Position as P;
    Ok(match p.and_then(|p| p.position) {
        None => absent,
        Some(P::Offset(o)) => Position::Offset(o),
        Some(P::TimestampMs(t)) => Position::Timestamp(t),
        Some(P::Boundary(b)) => boundary(b)?,
    })
}

pub fn boundary(b: i32) -> Result<Position, Status> {
    match proto::Boundary::try_from(b) {
        Ok(proto::Boundary::Earliest) => Ok(Position::Earliest),
        Ok(proto::Boundary::Latest) => Ok(Position::Latest),
        Ok(proto::Boundary::Committed) => Ok(Position::Committed),
        Err(_) => Err(Status::invalid_argument(format!("unknown boundary {b}"))),
    }
}

pub fn produce_request(r: proto::ProduceRequest) -> Result<ProduceRequest, Status> {
    let producer = match (r.producer_id, r.sequence) {
        (Some(producer_id), Some(sequence)) => {
            if producer_id < 0 || sequence < 0 {
                return Err(Status::invalid_argument("producer_id and sequence must not be negative"));
            }
            Some(ProducerStamp { producer_id, first_sequence: sequence })
        }
        (None, None) => None,
        _ => return Err(Status::invalid_argument("producer_id and sequence go together: set both or neither")),
    };
    let records = r
        .records
        .into_iter()
        .map(|rec| {
            let mut headers: Vec<(String, bytes::Bytes)> = rec.headers.into_iter().collect();
            headers.sort_by(|a, b| a.0.cmp(&b.0));
            Record { key: rec.key, value: rec.value, headers, timestamp_ms: rec.timestamp_ms }
        })
        .collect();
    let batch = (!r.record_batch.is_empty()).then_some(r.record_batch);
    Ok(ProduceRequest { topic: r.topic, partition: r.partition, records, producer, batch })
}

pub fn produce_results(results: Vec<ProduceResult>) -> Vec<proto::ProduceResult> {
    results
        .into_iter()
        .map(|r| proto::ProduceResult {
            partition: r.partition,
            base_offset: r.base_offset,
            last_offset: r.last_offset,
            log_append_time_ms: r.log_append_time_ms,
        })
        .collect()
}

pub fn stored_record(topic: &str, partition: u32, r: StoredRecord) -> proto::StoredRecord {
    proto::StoredRecord {
        topic: topic.to_string(),
        partition,
        offset: r.offset,
        timestamp_ms: r.timestamp_ms,
        key: r.key,
        value: r.value,
        headers: r.headers.into_iter().collect(),
    }
}

pub fn fetch_response(topic: &str, partition: u32, read: ReadRecords) -> proto::FetchResponse {
    proto::FetchResponse {
        records: read.records.into_iter().map(|r| stored_record(topic, partition, r)).collect(),
        next_offset: read.next_offset,
        high_watermark: read.high_watermark,
        log_start_offset: read.log_start_offset,
        record_batches: vec![],
    }
}

/// A Subscribe message carrying one delivery (records or stored batches).
pub fn subscribe_response(delivered: Option<SubscriptionEvent>) -> proto::SubscribeResponse {
    match delivered {
        Some(SubscriptionEvent::Records { topic, partition, records }) => proto::SubscribeResponse {
            records: records.into_iter().map(|r| stored_record(&topic, partition, r)).collect(),
            ..Default::default()
        },
        Some(SubscriptionEvent::Batches { topic, partition, from, next, batches }) => proto::SubscribeResponse {
            topic,
            partition,
            first_offset: from,
            next_offset: next,
            record_batches: batches,
            ..Default::default()
        },
        Some(SubscriptionEvent::Assigned(_)) | None => proto::SubscribeResponse::default(),
    }
}

/// A raw fetch: the stored batches as they are; next_offset is after the last.
pub fn raw_fetch_response(from: Position, read: crate::storage::ReadBatches) -> proto::FetchResponse {
    let next_offset = read.next_offset().unwrap_or(match from {
        Position::Offset(o) => o,
        _ => read.high_watermark,
    });
    proto::FetchResponse {
        records: vec![],
        next_offset,
        high_watermark: read.high_watermark,
        log_start_offset: read.log_start_offset,
        record_batches: read.batches,
    }
}

pub fn topic_description(t: TopicInfo) -> proto::TopicDescription {
    proto::TopicDescription {
        name: t.name,
        partitions: t.partitions.len() as u32,
        partition_descriptions: t.partitions.into_iter().map(partition_description).collect(),
        config: t.config.into_iter().collect(),
    }
}

fn partition_description(p: PartitionInfo) -> proto::PartitionDescription {
    proto::PartitionDescription {
        partition: p.partition,
        log_start_offset: p.log_start_offset,
        high_watermark: p.high_watermark,
        size_bytes: p.size_bytes,
        segments: p.segments,
        first_timestamp_ms: p.first_timestamp_ms,
        last_timestamp_ms: p.last_timestamp_ms,
    }
}

pub fn assignments(tps: &[crate::group::TopicPartition]) -> Vec<proto::TopicPartitions> {
    let mut by_topic: std::collections::BTreeMap<&str, Vec<u32>> = std::collections::BTreeMap::new();
    for (t, p) in tps {
        by_topic.entry(t).or_default().push(*p);
    }
    by_topic
        .into_iter()
        .map(|(topic, partitions)| proto::TopicPartitions { topic: topic.to_string(), partitions })
        .collect()
}

pub fn committed_in(c: proto::OffsetCommit) -> (String, u32, Committed) {
    (c.topic, c.partition, Committed { offset: c.offset, metadata: c.metadata })
}

pub fn committed_out((topic, partition, c): (String, u32, Committed)) -> proto::OffsetCommit {
    proto::OffsetCommit { topic, partition, offset: c.offset, metadata: c.metadata }
}

pub fn group_description(g: GroupInfo) -> proto::DescribeGroupResponse {
    proto::DescribeGroupResponse {
        group: g.group,
        state: g.state.to_string(),
        generation: g.generation,
        members: g
            .members
            .into_iter()
            .map(|m| proto::MemberDescription {
                member_id: m.member_id,
                topic_pattern: m.topic_pattern,
                assignments: assignments(&m.assignment),
                last_heartbeat_ms: m.last_heartbeat_ms,
                session_timeout_ms: m.session_timeout_ms as u32,
            })
            .collect(),
        partitions: g
            .partitions
            .into_iter()
            .map(|p| proto::PartitionLag {
                topic: p.topic,
                partition: p.partition,
                committed_offset: p.committed.as_ref().map(|c| c.offset),
                high_watermark: p.high_watermark,
                lag: p.lag,
                metadata: p.committed.map(|c| c.metadata).unwrap_or_default(),
                log_start_offset: p.log_start_offset,
            })
            .collect(),
    }
}
