//! Proto <-> broker translation. Proto types stop in the listener (and the
//! clients); a field that cannot be translated is a broker error like any
//! other, mapped to a status in `status.rs`.

use std::time::Duration;

use crate::broker::alerts::AlertRuleInfo;
use crate::broker::delivery::state::Ack;
use crate::broker::fetch::Fetched;
use crate::broker::groups::GroupInfo;
use crate::broker::partition::ReadRecords;
use crate::broker::produce::Produced;
use crate::broker::rules::rule::{Condition, RuleRequest};
use crate::broker::share_groups::{
    AckEntry, AckKind, ShareFetchRequest, ShareGroupInfo, ShareRecord, ShareStreamMessage, ShareSubscribeRequest,
};
use crate::broker::subscription::{Delivery, StreamMessage, SubscriptionEvent};
use crate::broker::{
    BrokerError, CommitOffsets, CreateTopic, FetchRequest, JoinGroup, PartitionInfo, Position, ProduceRequest,
    ProduceResult, ResetOffsets, SubscribeRequest, TopicInfo,
};
use crate::group::offsets::Committed;
use crate::listener::grpc::codec::{TopicRecords, WireRecords};
use crate::proto;
use crate::storage::batch::{ProducerStamp, Record, StoredRecord};
use crate::storage::ReadBatches;

type Result<T> = std::result::Result<T, BrokerError>;

pub fn position(p: Option<proto::Position>, absent: Position) -> Result<Position> {
    Ok(optional_position(p)?.unwrap_or(absent))
}

fn optional_position(p: Option<proto::Position>) -> Result<Option<Position>> {
    use proto::position::Position as P;
    Ok(match p.and_then(|p| p.position) {
        None => None,
        Some(P::Offset(o)) => Some(Position::Offset(o)),
        Some(P::TimestampMs(t)) => Some(Position::Timestamp(t)),
        Some(P::Boundary(b)) => Some(boundary(b)?),
    })
}

pub fn boundary(b: i32) -> Result<Position> {
    match proto::Boundary::try_from(b) {
        Ok(proto::Boundary::Earliest) => Ok(Position::Earliest),
        Ok(proto::Boundary::Latest) => Ok(Position::Latest),
        Ok(proto::Boundary::Committed) => Ok(Position::Committed),
        Err(_) => Err(BrokerError::InvalidRequest(format!("unknown boundary {b}"))),
    }
}

pub fn create_topic(r: proto::CreateTopicRequest) -> CreateTopic {
    CreateTopic {
        name: r.name,
        partitions: (r.partitions > 0).then_some(r.partitions),
        config: r.config.into_iter().collect(),
    }
}

pub fn produce_request(r: proto::ProduceRequest) -> Result<ProduceRequest> {
    let producer = match (r.producer_id, r.sequence) {
        (Some(producer_id), Some(sequence)) => {
            if producer_id < 0 || sequence < 0 {
                return Err(BrokerError::InvalidRequest("producer_id and sequence must not be negative".into()));
            }
            // gRPC producers have no epochs: one session per producer id.
            Some(ProducerStamp { producer_id, producer_epoch: 0, first_sequence: sequence })
        }
        (None, None) => None,
        _ => {
            return Err(BrokerError::InvalidRequest("producer_id and sequence go together: set both or neither".into()))
        }
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

pub fn fetch_request(r: proto::FetchRequest) -> Result<FetchRequest> {
    Ok(FetchRequest {
        from: position(r.from, Position::Earliest)?,
        topic: r.topic,
        partition: r.partition,
        records_max: r.max_records as usize,
        bytes_max: r.max_bytes as usize,
        wait: Duration::from_millis(r.max_wait_ms as u64),
        raw: r.raw_batches,
    })
}

/// `encoded`: per-record deliveries are encoded as they are read (the
/// gRPC route frames them as they are).
pub fn subscribe_request(r: proto::SubscribeRequest, encoded: bool) -> Result<SubscribeRequest> {
    let records = if encoded { Delivery::Encoded(super::codec::subscribe_encoding()) } else { Delivery::Records };
    Ok(SubscribeRequest {
        from: optional_position(r.from)?,
        fallback: r.fallback.map(boundary).transpose()?,
        pattern: r.topic_pattern,
        group: r.group,
        delivery: if r.raw_batches { Delivery::Batches } else { records },
    })
}

pub fn join_group(r: proto::JoinGroupRequest) -> JoinGroup {
    JoinGroup {
        group: r.group,
        member_id: r.member_id,
        topic_pattern: r.topic_pattern,
        session_timeout: (r.session_timeout_ms > 0).then(|| Duration::from_millis(r.session_timeout_ms as u64)),
    }
}

pub fn commit_offsets(r: proto::CommitOffsetsRequest) -> CommitOffsets {
    CommitOffsets {
        group: r.group,
        member_id: r.member_id,
        generation: r.generation,
        offsets: r.offsets.into_iter().map(committed_in).collect(),
    }
}

pub fn reset_offsets(r: proto::ResetGroupOffsetsRequest) -> Result<ResetOffsets> {
    let absent = if r.shift_by != 0 { Position::Committed } else { Position::Earliest };
    Ok(ResetOffsets {
        to: position(r.to, absent)?,
        group: r.group,
        topic_pattern: r.topic_pattern,
        dry_run: r.dry_run,
        shift_by: r.shift_by,
        partition: r.partition,
    })
}

/// A produce's results and duplicates into a response (request id 0).
pub fn produce_response(produced: Produced) -> proto::ProduceResponse {
    proto::ProduceResponse {
        results: produce_results(produced.results),
        duplicates: produced
            .duplicates
            .into_iter()
            .map(|d| proto::Duplicate { index: d.index, partition: d.partition, offset: d.offset })
            .collect(),
        ..Default::default()
    }
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

fn records_response(topic: &str, partition: u32, read: ReadRecords) -> (proto::FetchResponse, Option<TopicRecords>) {
    let head = proto::FetchResponse {
        records: vec![],
        next_offset: read.next_offset,
        high_watermark: read.high_watermark,
        log_start_offset: read.log_start_offset,
        record_batches: vec![],
    };
    (head, Some(TopicRecords { topic: topic.to_string(), partition, records: read.records }))
}

/// A Subscribe message carrying one delivery (records or stored batches).
fn subscribe_response(delivered: Option<SubscriptionEvent>) -> (proto::SubscribeResponse, Option<WireRecords>) {
    match delivered {
        Some(SubscriptionEvent::Records { topic, partition, records }) => {
            (proto::SubscribeResponse::default(), Some(WireRecords::Stored(TopicRecords { topic, partition, records })))
        }
        Some(SubscriptionEvent::Encoded { records, .. }) => {
            (proto::SubscribeResponse::default(), Some(WireRecords::Encoded(records)))
        }
        Some(SubscriptionEvent::Batches { topic, partition, from, next, batches }) => (
            proto::SubscribeResponse {
                topic,
                partition,
                first_offset: from,
                next_offset: next,
                record_batches: batches,
                ..Default::default()
            },
            None,
        ),
        Some(SubscriptionEvent::Assigned(_)) | None => (proto::SubscribeResponse::default(), None),
    }
}

/// A fetch's answer: decoded records (kept as stored, to be framed by
/// `codec::frame_stored_records`, or made prost messages by
/// `TopicRecords::into_proto`), or the stored batches as they are
/// (next_offset is after the last, or `from` when there is none).
pub fn fetch_parts(topic: &str, partition: u32, fetched: Fetched) -> (proto::FetchResponse, Option<TopicRecords>) {
    match fetched {
        Fetched::Records(read) => records_response(topic, partition, read),
        Fetched::Batches { from, read } => (batches_response(from, read), None),
    }
}

/// A FetchResponse carrying stored batches as they are; the first may
/// start before `from`.
pub fn batches_response(from: u64, read: ReadBatches) -> proto::FetchResponse {
    proto::FetchResponse {
        records: vec![],
        next_offset: read.next_offset().unwrap_or(from),
        high_watermark: read.high_watermark,
        log_start_offset: read.log_start_offset,
        record_batches: read.batches,
    }
}

/// One Subscribe message, its records kept as stored (see [`fetch_parts`]).
pub fn subscribe_parts(m: StreamMessage) -> (proto::SubscribeResponse, Option<WireRecords>) {
    let (mut out, records) = subscribe_response(m.delivery);
    if let Some(membership) = m.membership {
        out.assignments = assignments(&membership.assignment);
        out.member_id = membership.member_id;
        out.generation = membership.generation;
    } else if let Some(streaming) = m.streaming {
        out.assignments = assignments(&streaming);
    }
    (out, records)
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
        dedupe_ids: p.dedupe.ids,
        dedupe_memory_bytes: p.dedupe.memory_bytes,
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

pub fn share_fetch_request(r: proto::ShareFetchRequest) -> ShareFetchRequest {
    ShareFetchRequest {
        group: r.group,
        topic_pattern: r.topic_pattern,
        records_max: r.max_records as usize,
        bytes_max: r.max_bytes as usize,
        wait: Duration::from_millis(u64::from(r.max_wait_ms)),
        member_id: r.member_id,
    }
}

pub fn share_record(r: ShareRecord) -> proto::ShareRecord {
    proto::ShareRecord {
        record: Some(stored_record(&r.topic, r.partition, r.record)),
        delivery_count: r.delivery_count,
    }
}

pub fn acknowledgement(a: proto::Acknowledgement) -> Result<AckEntry> {
    let kind = match proto::AckType::try_from(a.r#type) {
        Ok(proto::AckType::Accept) => AckKind::Accept,
        Ok(proto::AckType::Release) => AckKind::Release,
        Ok(proto::AckType::Reject) => AckKind::Reject,
        Err(_) => return Err(BrokerError::InvalidRequest(format!("unknown AckType {}", a.r#type))),
    };
    let ack =
        Ack { kind, delay: a.delay_ms.map(Duration::from_millis), reason: (!a.reason.is_empty()).then_some(a.reason) };
    Ok(AckEntry { topic: a.topic, partition: a.partition, offset: a.offset, ack })
}

pub fn share_group_description(g: ShareGroupInfo) -> proto::ShareGroupDescription {
    proto::ShareGroupDescription {
        group: g.group,
        config: g.config.into_iter().collect(),
        partitions: g
            .partitions
            .into_iter()
            .map(|p| proto::SharePartitionState {
                topic: p.topic,
                partition: p.partition,
                start_offset: p.summary.start_offset,
                acquired: p.summary.acquired,
                available: p.summary.available,
                dead_lettered_total: p.summary.dead_lettered_total,
                high_watermark: p.high_watermark,
                next_offset: p.summary.next_offset,
                dead_lettering: p.summary.archiving,
                dropped_total: p.summary.dropped_total,
            })
            .collect(),
        members: g
            .members
            .into_iter()
            .map(|(member_id, last_seen_ms)| proto::ShareMember { member_id, last_seen_ms })
            .collect(),
    }
}

pub fn share_subscribe_request(r: &proto::ShareSubscribeRequest) -> ShareSubscribeRequest {
    ShareSubscribeRequest {
        group: r.group.clone(),
        topic_pattern: r.topic_pattern.clone(),
        max_in_flight: r.max_in_flight as usize,
        member_id: r.member_id.clone(),
    }
}

pub fn ack_result(r: Result<()>) -> proto::AcknowledgeResult {
    match r {
        Ok(()) => proto::AcknowledgeResult { ok: true, ..Default::default() },
        Err(e) => {
            let s = super::status::to_status(e);
            proto::AcknowledgeResult { ok: false, error_code: s.code() as i32, error_message: s.message().to_string() }
        }
    }
}

pub fn share_stream_message(m: ShareStreamMessage) -> proto::ShareSubscribeResponse {
    match m {
        ShareStreamMessage::Records(records) => proto::ShareSubscribeResponse {
            records: records.into_iter().map(share_record).collect(),
            results: Vec::new(),
        },
        ShareStreamMessage::AckResults(results) => proto::ShareSubscribeResponse {
            records: Vec::new(),
            results: results.into_iter().map(ack_result).collect(),
        },
    }
}

pub fn alert_rule_request(r: proto::CreateAlertRuleRequest) -> RuleRequest {
    RuleRequest {
        condition: Some(match proto::AlertCondition::try_from(r.condition) {
            Ok(proto::AlertCondition::Below) => Condition::Below,
            _ => Condition::AtLeast,
        }),
        name: r.name,
        topic_pattern: r.topic_pattern,
        filter: r.filter.into_iter().collect(),
        threshold: r.threshold,
        window_ms: r.window_ms,
        alert_topic: r.alert_topic,
        cooldown_ms: r.cooldown_ms,
        group_by: r.group_by,
    }
}

pub fn alert_rule_description(i: AlertRuleInfo) -> proto::AlertRuleDescription {
    let r = i.rule;
    let rule = proto::CreateAlertRuleRequest {
        name: r.name,
        topic_pattern: r.topic_pattern,
        filter: r.filter.iter().map(|(s, v)| (s.text(), v.to_string())).collect(),
        threshold: r.threshold,
        window_ms: r.window_ms,
        alert_topic: r.alert_topic,
        cooldown_ms: Some(r.cooldown_ms),
        condition: match r.condition {
            Condition::AtLeast => proto::AlertCondition::AtLeast as i32,
            Condition::Below => proto::AlertCondition::Below as i32,
        },
        group_by: r.group_by.map(|g| g.text()).unwrap_or_default(),
    };
    proto::AlertRuleDescription {
        rule: Some(rule),
        last_fired_ms: i.last_fired_ms,
        fired_total: i.fired_total,
        current_count: i.current_count,
    }
}
