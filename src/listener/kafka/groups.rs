//! FindCoordinator, the classic group protocol (JoinGroup, SyncGroup,
//! Heartbeat, LeaveGroup), committed offsets (OffsetCommit, OffsetFetch)
//! and group listings, translated to the broker's coordinator. Offsets are
//! the same ones gRPC groups commit and read.

use bytes::{BufMut, Bytes, BytesMut};
use kafka_protocol::messages::consumer_protocol_assignment::TopicPartition as AssignedTopic;
use kafka_protocol::messages::describe_groups_response::{DescribedGroup, DescribedGroupMember};
use kafka_protocol::messages::find_coordinator_response::Coordinator;
use kafka_protocol::messages::join_group_response::JoinGroupResponseMember;
use kafka_protocol::messages::leave_group_response::MemberResponse;
use kafka_protocol::messages::list_groups_response::ListedGroup;
use kafka_protocol::messages::offset_commit_response::{OffsetCommitResponsePartition, OffsetCommitResponseTopic};
use kafka_protocol::messages::offset_fetch_response::{
    OffsetFetchResponseGroup, OffsetFetchResponsePartition, OffsetFetchResponsePartitions, OffsetFetchResponseTopic,
    OffsetFetchResponseTopics,
};
use kafka_protocol::messages::*;
use kafka_protocol::protocol::{Encodable, StrBytes};

use super::conn::Ctx;
use super::errors::{self, code};
use super::{advertised, NODE_ID};
use crate::broker::classic_groups::ClassicCallError;
use crate::group::classic::{ClassicError, Join};
use crate::group::offsets::Committed;

fn text(s: impl Into<String>) -> StrBytes {
    StrBytes::from_string(s.into())
}

use crate::security::{Operation, Resource};

pub(super) fn find_coordinator(ctx: &Ctx, request: FindCoordinatorRequest, version: i16) -> FindCoordinatorResponse {
    let (host, port) = advertised(&ctx.broker, ctx.local);
    let mut r = FindCoordinatorResponse::default();
    if version >= 4 {
        r.coordinators = request
            .coordinator_keys
            .into_iter()
            .map(|key| {
                Coordinator::default()
                    .with_key(key)
                    .with_node_id(BrokerId(NODE_ID))
                    .with_host(text(&host))
                    .with_port(port)
            })
            .collect();
    } else {
        r.node_id = BrokerId(NODE_ID);
        r.host = text(host);
        r.port = port;
    }
    r
}

pub(super) async fn join_group(ctx: &Ctx, request: JoinGroupRequest, version: i16, client: &str) -> JoinGroupResponse {
    let group = request.group_id.0.to_string();
    let join = Join {
        member_id: request.member_id.to_string(),
        client_id: client.to_string(),
        client_host: ctx.caller.peer.map_or(String::new(), |p| format!("/{}", p.ip())),
        session_timeout_ms: request.session_timeout_ms.max(0) as u64,
        // v0 has no rebalance timeout: it is the session timeout.
        rebalance_timeout_ms: if version >= 1 { request.rebalance_timeout_ms } else { request.session_timeout_ms }
            .max(0) as u64,
        protocol_type: request.protocol_type.to_string(),
        protocols: request.protocols.into_iter().map(|p| (p.name.to_string(), p.metadata)).collect(),
        requires_known_member_id: version >= 4,
    };
    let mut r = JoinGroupResponse::default().with_generation_id(-1).with_protocol_name(Some(text("")));
    if let Err((c, _)) = ctx.check(Operation::Group, Resource::Group(group.clone())) {
        r.error_code = c;
        return r;
    }
    match ctx.broker.classic_join(&ctx.caller(), &group, join).await {
        Ok(j) => {
            r.generation_id = j.generation;
            r.protocol_name = Some(text(j.protocol));
            if version >= 7 {
                r.protocol_type = Some(text(j.protocol_type));
            }
            r.leader = text(j.leader);
            r.member_id = text(j.member_id);
            r.members = j
                .members
                .into_iter()
                .map(|(id, metadata)| {
                    JoinGroupResponseMember::default().with_member_id(text(id)).with_metadata(metadata)
                })
                .collect();
        }
        Err(ClassicCallError::Group(ClassicError::MemberIdRequired(id))) => {
            r.error_code = code::MEMBER_ID_REQUIRED;
            r.member_id = text(id);
        }
        Err(e) => {
            log_refusal("JoinGroup", &group, &e);
            r.error_code = errors::of_group(&e);
        }
    }
    r
}

fn log_refusal(api: &str, group: &str, e: &ClassicCallError) {
    match e {
        // The protocol's everyday answers.
        ClassicCallError::Group(
            ClassicError::RebalanceInProgress | ClassicError::IllegalGeneration { .. } | ClassicError::UnknownMember,
        ) => tracing::debug!(api, group, error = %errors::message_of_group(e), "kafka group call refused"),
        _ => tracing::info!(api, group, error = %errors::message_of_group(e), "kafka group call refused"),
    }
}

pub(super) async fn sync_group(ctx: &Ctx, request: SyncGroupRequest, version: i16) -> SyncGroupResponse {
    let group = request.group_id.0.to_string();
    let assignments = request.assignments.into_iter().map(|a| (a.member_id.to_string(), a.assignment)).collect();
    let mut r = SyncGroupResponse::default();
    let member = request.member_id.to_string();
    if let Err((c, _)) = ctx.check(Operation::Group, Resource::Group(group.clone())) {
        r.error_code = c;
        return r;
    }
    match ctx.broker.classic_sync(&ctx.caller(), &group, &member, request.generation_id, assignments).await {
        Ok(a) => {
            r.assignment = a;
            if version >= 5 {
                r.protocol_type = request.protocol_type;
                r.protocol_name = request.protocol_name;
            }
        }
        Err(e) => {
            log_refusal("SyncGroup", &group, &e);
            r.error_code = errors::of_group(&e);
        }
    }
    r
}

pub(super) fn heartbeat(ctx: &Ctx, request: HeartbeatRequest) -> HeartbeatResponse {
    let group = request.group_id.0.to_string();
    let mut r = HeartbeatResponse::default();
    if let Err((c, _)) = ctx.check(Operation::Group, Resource::Group(group.clone())) {
        r.error_code = c;
        return r;
    }
    if let Err(e) = ctx.broker.classic_heartbeat(&group, request.member_id.as_str(), request.generation_id) {
        log_refusal("Heartbeat", &group, &e);
        r.error_code = errors::of_group(&e);
    }
    r
}

pub(super) fn leave_group(ctx: &Ctx, request: LeaveGroupRequest, version: i16) -> LeaveGroupResponse {
    let group = request.group_id.0.to_string();
    let mut r = LeaveGroupResponse::default();
    if let Err((c, _)) = ctx.check(Operation::Group, Resource::Group(group.clone())) {
        r.error_code = c;
        return r;
    }
    if version < 3 {
        if let Err(e) = ctx.broker.classic_leave(&ctx.caller(), &group, request.member_id.as_str()) {
            r.error_code = errors::of_group(&e);
        }
        return r;
    }
    r.members = request
        .members
        .into_iter()
        .map(|m| {
            let mut out = MemberResponse::default().with_member_id(m.member_id.clone());
            out.group_instance_id = m.group_instance_id;
            if let Err(e) = ctx.broker.classic_leave(&ctx.caller(), &group, m.member_id.as_str()) {
                out.error_code = errors::of_group(&e);
            }
            out
        })
        .collect();
    r
}

pub(super) async fn offset_commit(ctx: &Ctx, request: OffsetCommitRequest) -> OffsetCommitResponse {
    let broker = ctx.broker.clone();
    let group = request.group_id.0.to_string();
    // Each partition is checked on its own; the valid ones commit together.
    let mut results: Vec<(usize, i32, i16)> = Vec::new();
    let mut offsets = Vec::new();
    let metadata_max = broker.config().offset_metadata_bytes_max;
    // Committing needs the group, and consume on each topic (as in Kafka).
    let group_refused = ctx.check(Operation::Group, Resource::Group(group.clone())).err().map(|(c, _)| c);
    for (t, topic) in request.topics.iter().enumerate() {
        let topic_refused =
            ctx.check(Operation::Consume, Resource::Topic(topic.name.to_string())).err().map(|(c, _)| c);
        for p in &topic.partitions {
            let metadata = p.committed_metadata.as_ref().map_or(String::new(), |m| m.to_string());
            let code = match broker.partition(topic.name.as_str(), p.partition_index.max(0) as u32) {
                _ if group_refused.is_some() => group_refused.unwrap_or(code::NONE),
                _ if topic_refused.is_some() => topic_refused.unwrap_or(code::NONE),
                _ if p.partition_index < 0 => code::UNKNOWN_TOPIC_OR_PARTITION,
                Err(e) => errors::of(&e),
                Ok(_) if p.committed_offset < 0 => code::INVALID_REQUEST,
                Ok(log) if p.committed_offset as u64 > log.log.high_watermark() => code::OFFSET_OUT_OF_RANGE,
                Ok(_) if metadata.len() > metadata_max => code::OFFSET_METADATA_TOO_LARGE,
                Ok(_) => {
                    let c = Committed { offset: p.committed_offset as u64, metadata };
                    offsets.push((topic.name.as_str().to_string(), p.partition_index as u32, c));
                    code::NONE
                }
            };
            results.push((t, p.partition_index, code));
        }
    }
    let (member, generation) = (request.member_id.to_string(), request.generation_id_or_member_epoch);
    let shared = if offsets.is_empty() {
        code::NONE
    } else {
        let (caller, group) = (ctx.caller(), group.clone());
        let committed =
            tokio::task::spawn_blocking(move || broker.classic_commit(&caller, &group, &member, generation, offsets))
                .await;
        match committed {
            Ok(Ok(())) => code::NONE,
            Ok(Err(e)) => {
                log_refusal("OffsetCommit", &request.group_id.0, &e);
                errors::of_group(&e)
            }
            Err(_) => code::UNKNOWN_SERVER_ERROR,
        }
    };
    let topics = request
        .topics
        .iter()
        .enumerate()
        .map(|(t, topic)| {
            let partitions = results
                .iter()
                .filter(|(i, _, _)| *i == t)
                .map(|&(_, p, c)| {
                    OffsetCommitResponsePartition::default()
                        .with_partition_index(p)
                        .with_error_code(if c == code::NONE { shared } else { c })
                })
                .collect();
            OffsetCommitResponseTopic::default().with_name(topic.name.clone()).with_partitions(partitions)
        })
        .collect();
    OffsetCommitResponse::default().with_topics(topics)
}

/// One group's committed offsets: (topic, [(partition, offset or -1, metadata)]).
type Fetched = Vec<(TopicName, Vec<(i32, i64, String)>)>;

fn committed_of(ctx: &Ctx, group: &str, topics: Option<Vec<(TopicName, Vec<i32>)>>) -> Fetched {
    let all = ctx.broker.committed_offsets(&ctx.caller(), group, None);
    match topics {
        Some(topics) => topics
            .into_iter()
            .map(|(name, partitions)| {
                let found = partitions
                    .into_iter()
                    .map(|p| {
                        let c = all.iter().find(|(t, q, _)| t.as_str() == name.as_str() && *q as i32 == p);
                        c.map_or((p, -1, String::new()), |(_, _, c)| (p, c.offset as i64, c.metadata.clone()))
                    })
                    .collect();
                (name, found)
            })
            .collect(),
        None => {
            let mut out: Fetched = Vec::new();
            for (t, p, c) in all {
                let entry = (p as i32, c.offset as i64, c.metadata);
                match out.iter_mut().find(|(n, _)| n.as_str() == t) {
                    Some((_, v)) => v.push(entry),
                    None => out.push((TopicName(text(t)), vec![entry])),
                }
            }
            out
        }
    }
}

pub(super) fn offset_fetch(ctx: &Ctx, request: OffsetFetchRequest, version: i16) -> OffsetFetchResponse {
    let mut r = OffsetFetchResponse::default();
    if version >= 8 {
        r.groups = request
            .groups
            .into_iter()
            .map(|g| {
                if let Err((c, _)) = ctx.check(Operation::Group, Resource::Group(g.group_id.0.to_string())) {
                    return OffsetFetchResponseGroup::default().with_group_id(g.group_id).with_error_code(c);
                }
                let topics = g.topics.map(|ts| ts.into_iter().map(|t| (t.name, t.partition_indexes)).collect());
                let fetched = committed_of(ctx, &g.group_id.0, topics);
                let topics = fetched
                    .into_iter()
                    .map(|(name, parts)| {
                        let partitions = parts
                            .into_iter()
                            .map(|(p, offset, metadata)| {
                                OffsetFetchResponsePartitions::default()
                                    .with_partition_index(p)
                                    .with_committed_offset(offset)
                                    .with_metadata(Some(text(metadata)))
                            })
                            .collect();
                        OffsetFetchResponseTopics::default().with_name(name).with_partitions(partitions)
                    })
                    .collect();
                OffsetFetchResponseGroup::default().with_group_id(g.group_id).with_topics(topics)
            })
            .collect();
        return r;
    }
    if let Err((c, _)) = ctx.check(Operation::Group, Resource::Group(request.group_id.0.to_string())) {
        r.error_code = c;
        return r;
    }
    let topics = request.topics.map(|ts| ts.into_iter().map(|t| (t.name, t.partition_indexes)).collect());
    r.topics = committed_of(ctx, &request.group_id.0, topics)
        .into_iter()
        .map(|(name, parts)| {
            let partitions = parts
                .into_iter()
                .map(|(p, offset, metadata)| {
                    OffsetFetchResponsePartition::default()
                        .with_partition_index(p)
                        .with_committed_offset(offset)
                        .with_metadata(Some(text(metadata)))
                })
                .collect();
            OffsetFetchResponseTopic::default().with_name(name).with_partitions(partitions)
        })
        .collect();
    r
}

/// The protocol type of a group: `consumer` for Kafka clients' groups and
/// groups with only committed offsets, `strata` for gRPC groups.
fn protocol_type_of(ctx: &Ctx, group: &str) -> String {
    match ctx.broker.describe_classic_group(group) {
        Some(info) => info.protocol_type,
        None if ctx.broker.describe_group(&ctx.caller, group).is_ok_and(|g| !g.members.is_empty()) => "strata".into(),
        None => "consumer".into(),
    }
}

pub(super) fn list_groups(ctx: &Ctx, request: ListGroupsRequest, version: i16) -> ListGroupsResponse {
    let groups = ctx
        .broker
        .list_groups(&ctx.caller())
        .into_iter()
        .filter(|(name, ..)| ctx.may(Operation::Describe, Resource::Group(name.clone())))
        .filter(|(_, state, _, _)| {
            request.states_filter.is_empty() || request.states_filter.iter().any(|s| s.as_str() == *state)
        })
        .map(|(name, state, _, _)| {
            let mut g = ListedGroup::default()
                .with_protocol_type(text(protocol_type_of(ctx, &name)))
                .with_group_id(GroupId(text(name)));
            if version >= 4 {
                g.group_state = text(state);
            }
            g
        })
        .collect();
    ListGroupsResponse::default().with_groups(groups)
}

/// A gRPC member's assignment in Kafka's consumer protocol, so Kafka tools
/// show it.
fn encode_assignment(partitions: &[(String, u32)]) -> Bytes {
    let mut topics: Vec<AssignedTopic> = Vec::new();
    for (t, p) in partitions {
        match topics.iter_mut().find(|a| a.topic.as_str() == t) {
            Some(a) => a.partitions.push(*p as i32),
            None => topics
                .push(AssignedTopic::default().with_topic(TopicName(text(t.clone()))).with_partitions(vec![*p as i32])),
        }
    }
    let a = ConsumerProtocolAssignment::default().with_assigned_partitions(topics);
    let mut out = BytesMut::new();
    out.put_i16(0);
    if a.encode(&mut out, 0).is_err() {
        return Bytes::new();
    }
    out.freeze()
}

pub(super) fn describe_groups(ctx: &Ctx, request: DescribeGroupsRequest) -> DescribeGroupsResponse {
    let broker = &ctx.broker;
    let groups = request
        .groups
        .into_iter()
        .map(|id| {
            let name = id.0.to_string();
            let mut g = DescribedGroup::default().with_group_id(id);
            if let Err((c, _)) = ctx.check(Operation::Describe, Resource::Group(name.clone())) {
                g.error_code = c;
                return g;
            }
            if let Some(info) = broker.describe_classic_group(&name) {
                g.group_state = text(info.state);
                g.protocol_type = text(info.protocol_type);
                g.protocol_data = text(info.protocol);
                g.members = info
                    .members
                    .into_iter()
                    .map(|m| {
                        DescribedGroupMember::default()
                            .with_member_id(text(m.member_id))
                            .with_client_id(text(m.client_id))
                            .with_client_host(text(m.client_host))
                            .with_member_metadata(m.metadata)
                            .with_member_assignment(m.assignment)
                    })
                    .collect();
                return g;
            }
            match broker.describe_group(&ctx.caller(), &name) {
                Ok(info) => {
                    g.group_state = text(info.state);
                    g.protocol_type = text(if info.members.is_empty() { "consumer" } else { "strata" });
                    g.members = info
                        .members
                        .iter()
                        .map(|m| {
                            DescribedGroupMember::default()
                                .with_member_id(text(m.member_id.clone()))
                                .with_client_id(text("strata"))
                                .with_member_assignment(encode_assignment(&m.assignment))
                        })
                        .collect();
                }
                // Kafka's answer for a group it does not know.
                Err(_) => g.group_state = text("Dead"),
            }
            g
        })
        .collect();
    DescribeGroupsResponse::default().with_groups(groups)
}
