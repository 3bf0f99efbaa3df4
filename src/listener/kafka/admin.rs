//! Metadata, offsets lookups, topic administration, topic configs,
//! producer ids and SASL: translation to the broker's API. strata is one
//! broker (node 0), the leader of every partition, its only replica.

use std::collections::BTreeMap;

use kafka_protocol::messages::create_topics_response::CreatableTopicResult;
use kafka_protocol::messages::delete_topics_response::DeletableTopicResult;
use kafka_protocol::messages::describe_configs_response::{DescribeConfigsResourceResult, DescribeConfigsResult};
use kafka_protocol::messages::list_offsets_response::{ListOffsetsPartitionResponse, ListOffsetsTopicResponse};
use kafka_protocol::messages::metadata_response::{
    MetadataResponseBroker, MetadataResponsePartition, MetadataResponseTopic,
};
use kafka_protocol::messages::*;
use kafka_protocol::protocol::StrBytes;

use super::conn::Ctx;
use super::errors::{self, code};
use super::{advertised, NODE_ID};
use crate::broker::{BrokerError, CreateTopic, Position};
use crate::security::{Operation, Resource};

/// The cluster id clients see.
pub const CLUSTER_ID: &str = "strata";

fn text(s: impl Into<String>) -> StrBytes {
    StrBytes::from_string(s.into())
}

fn topic_name(s: &str) -> TopicName {
    TopicName(text(s))
}

pub(super) async fn metadata(ctx: &Ctx, request: MetadataRequest, version: i16) -> MetadataResponse {
    let broker = &ctx.broker;
    let (host, port) = advertised(broker, ctx.local);
    let mut node =
        MetadataResponseBroker::default().with_node_id(BrokerId(NODE_ID)).with_host(text(host)).with_port(port);
    node.rack = None;
    let names: Vec<String> = match &request.topics {
        // v0: an empty list means every topic; v1+: null does.
        Some(t) if !(t.is_empty() && version == 0) => {
            t.iter().filter_map(|t| t.name.as_ref().map(|n| n.as_str().to_string())).collect()
        }
        _ => {
            // Only the topics the caller may describe.
            let mut all: Vec<String> = broker
                .matching_topics("*")
                .iter()
                .map(|t| t.name.clone())
                .filter(|name| ctx.may(Operation::Describe, Resource::Topic(name.clone())))
                .collect();
            all.sort();
            all
        }
    };
    let topics = names
        .into_iter()
        .map(|name| {
            let mut t = MetadataResponseTopic::default().with_name(Some(topic_name(&name)));
            if let Err((c, _)) = ctx.check(Operation::Describe, Resource::Topic(name.clone())) {
                t.error_code = c;
                return t;
            }
            match broker.topic(&name) {
                Ok(topic) => {
                    t.partitions = topic
                        .partitions
                        .iter()
                        .map(|p| {
                            let mut m = MetadataResponsePartition::default()
                                .with_partition_index(p.id as i32)
                                .with_leader_id(BrokerId(NODE_ID))
                                .with_replica_nodes(vec![BrokerId(NODE_ID)])
                                .with_isr_nodes(vec![BrokerId(NODE_ID)]);
                            if version >= 7 {
                                m.leader_epoch = 0;
                            }
                            m
                        })
                        .collect();
                }
                Err(e) => t.error_code = errors::of(&e),
            }
            t
        })
        .collect();
    let mut response = MetadataResponse::default().with_brokers(vec![node]).with_topics(topics);
    if version >= 1 {
        response.controller_id = BrokerId(NODE_ID);
    }
    if version >= 2 {
        response.cluster_id = Some(text(CLUSTER_ID));
    }
    response
}

pub(super) async fn list_offsets(ctx: &Ctx, request: ListOffsetsRequest) -> ListOffsetsResponse {
    let mut topics = Vec::new();
    for t in request.topics {
        let mut partitions = Vec::new();
        for p in t.partitions {
            let mut r = ListOffsetsPartitionResponse::default()
                .with_partition_index(p.partition_index)
                .with_timestamp(-1)
                .with_offset(-1);
            match lookup(ctx, t.name.as_str(), p.partition_index, p.timestamp).await {
                Ok((offset, timestamp)) => {
                    r.offset = offset;
                    r.timestamp = timestamp;
                }
                Err(c) => r.error_code = c,
            }
            partitions.push(r);
        }
        topics.push(ListOffsetsTopicResponse::default().with_name(t.name).with_partitions(partitions));
    }
    ListOffsetsResponse::default().with_topics(topics)
}

/// (offset, timestamp) for Kafka's -1 (latest), -2 (earliest) or a time:
/// the first record at or after it, or (-1, -1) when there is none.
async fn lookup(ctx: &Ctx, topic: &str, partition: i32, timestamp: i64) -> Result<(i64, i64), i16> {
    let at = match timestamp {
        -1 => Position::Latest,
        -2 => Position::Earliest,
        t if t >= 0 => Position::Timestamp(t),
        _ => return Err(code::INVALID_REQUEST),
    };
    ctx.check(Operation::Describe, Resource::Topic(topic.to_string())).map_err(|(c, _)| c)?;
    if partition < 0 {
        return Err(code::UNKNOWN_TOPIC_OR_PARTITION);
    }
    let broker = &ctx.broker;
    let found = broker.list_offsets(&ctx.caller, topic, partition as u32, at).await.map_err(|e| errors::of(&e))?;
    let Position::Timestamp(_) = at else { return Ok((found.offset as i64, -1)) };
    if found.offset >= found.high_watermark {
        return Ok((-1, -1));
    }
    let p = broker.partition(topic, partition as u32).map_err(|e| errors::of(&e))?;
    let read = p.read(found.offset, 1, 1 << 20).await.map_err(|e| errors::of(&e))?;
    let ts = read.records.first().map_or(-1, |r| r.timestamp_ms);
    Ok((found.offset as i64, ts))
}

pub(super) async fn create_topics(ctx: &Ctx, request: CreateTopicsRequest, version: i16) -> CreateTopicsResponse {
    let mut results = Vec::new();
    for t in request.topics {
        let name = t.name.as_str().to_string();
        let mut r = CreatableTopicResult::default().with_name(t.name.clone());
        let outcome = create_one(ctx, t, request.validate_only).await;
        match outcome {
            Ok(partitions) => {
                if version >= 5 {
                    r.num_partitions = partitions as i32;
                    r.replication_factor = 1;
                }
            }
            Err((c, why)) => {
                tracing::debug!(topic = %name, code = c, %why, "kafka CreateTopics refused");
                r.error_code = c;
                r.error_message = Some(text(why));
            }
        }
        results.push(r);
    }
    CreateTopicsResponse::default().with_topics(results)
}

/// CreatePartitions: grows each topic to `count` (one broker: no replica
/// assignments). `validate_only` checks without changing anything.
pub(super) async fn create_partitions(ctx: &Ctx, request: CreatePartitionsRequest) -> CreatePartitionsResponse {
    use kafka_protocol::messages::create_partitions_response::CreatePartitionsTopicResult;
    let mut results = Vec::new();
    for t in request.topics {
        let mut r = CreatePartitionsTopicResult::default().with_name(t.name.clone());
        let allowed = ctx.check(Operation::Admin, Resource::Topic(t.name.to_string()));
        let outcome = match (t.count, &t.assignments) {
            _ if allowed.is_err() => allowed,
            (_, Some(a)) if !a.is_empty() => Err((
                code::INVALID_REPLICA_ASSIGNMENT,
                "strata is one broker: give a partition count, not assignments".to_string(),
            )),
            (n, _) if n <= 0 => Err((code::INVALID_PARTITIONS, format!("{n} partitions: at least 1"))),
            (n, _) if request.validate_only => match ctx.broker.topic(t.name.as_str()) {
                Ok(topic) if (n as usize) > topic.partitions.len() => Ok(()),
                Ok(topic) => {
                    let e = BrokerError::PartitionsNotAdded {
                        topic: t.name.to_string(),
                        partitions: n as u32,
                        have: topic.partitions.len() as u32,
                    };
                    Err((errors::of(&e), e.to_string()))
                }
                Err(e) => Err((errors::of(&e), e.to_string())),
            },
            (n, _) => ctx
                .broker
                .add_partitions(&ctx.caller(), t.name.as_str(), n as u32)
                .await
                .map(|_| ())
                .map_err(|e| (errors::of(&e), e.to_string())),
        };
        if let Err((c, why)) = outcome {
            tracing::debug!(topic = %t.name.as_str(), code = c, %why, "kafka CreatePartitions refused");
            r.error_code = c;
            r.error_message = Some(text(why));
        }
        results.push(r);
    }
    CreatePartitionsResponse::default().with_results(results)
}

async fn create_one(
    ctx: &Ctx,
    t: create_topics_request::CreatableTopic,
    validate_only: bool,
) -> Result<u32, (i16, String)> {
    let fail = |e: BrokerError| (errors::of(&e), e.to_string());
    ctx.check(Operation::Admin, Resource::Topic(t.name.to_string()))?;
    if !matches!(t.replication_factor, -1 | 1) {
        return Err((
            code::INVALID_REPLICATION_FACTOR,
            format!("replication factor {}: strata is one broker, so it must be 1 (or -1)", t.replication_factor),
        ));
    }
    if !t.assignments.is_empty() {
        return Err((
            code::INVALID_REPLICA_ASSIGNMENT,
            "strata is one broker: give a partition count, not assignments".into(),
        ));
    }
    let partitions = match t.num_partitions {
        -1 => None,
        n if n > 0 => Some(n as u32),
        n => return Err((code::INVALID_PARTITIONS, format!("{n} partitions: at least 1 (or -1 for the default)"))),
    };
    let mut config = BTreeMap::new();
    for c in t.configs {
        match c.value {
            Some(v) => config.insert(c.name.to_string(), v.to_string()),
            None => continue,
        };
    }
    let broker = &ctx.broker;
    let name = t.name.as_str().to_string();
    if validate_only {
        crate::broker::names::validate("topic", &name, false).map_err(fail)?;
        if broker.topic(&name).is_ok() {
            return Err(fail(BrokerError::TopicExists(name)));
        }
        broker
            .config()
            .topic_defaults
            .with(&config)
            .map_err(|why| fail(BrokerError::InvalidConfig { topic: name.clone(), why }))?;
        return Ok(partitions.unwrap_or(broker.config().default_partitions));
    }
    let info = broker.create_topic(&ctx.caller(), CreateTopic { name, partitions, config }).await.map_err(fail)?;
    Ok(info.partitions.len() as u32)
}

pub(super) async fn delete_topics(ctx: &Ctx, request: DeleteTopicsRequest, version: i16) -> DeleteTopicsResponse {
    let names: Vec<TopicName> =
        if version >= 6 { request.topics.into_iter().filter_map(|t| t.name).collect() } else { request.topic_names };
    let mut responses = Vec::new();
    for name in names {
        let mut r = DeletableTopicResult::default().with_name(Some(name.clone()));
        if let Err((c, why)) = ctx.check(Operation::Admin, Resource::Topic(name.to_string())) {
            r.error_code = c;
            if version >= 5 {
                r.error_message = Some(text(why));
            }
        } else if let Err(e) = ctx.broker.delete_topic(&ctx.caller(), name.as_str()).await {
            r.error_code = errors::of(&e);
            if version >= 5 {
                r.error_message = Some(text(e.to_string()));
            }
        }
        responses.push(r);
    }
    DeleteTopicsResponse::default().with_responses(responses)
}

/// (name, value, source) of one config.
type ConfigEntry = (String, String, i8);

/// DescribeConfigs resource types.
const RESOURCE_TOPIC: i8 = 2;
const RESOURCE_BROKER: i8 = 4;
/// Config sources.
const DYNAMIC_TOPIC_CONFIG: i8 = 1;
const STATIC_BROKER_CONFIG: i8 = 4;
const DEFAULT_CONFIG: i8 = 5;

pub(super) async fn describe_configs(ctx: &Ctx, request: DescribeConfigsRequest) -> DescribeConfigsResponse {
    let broker = &ctx.broker;
    let mut results = Vec::new();
    for res in request.resources {
        let mut r = DescribeConfigsResult::default()
            .with_resource_type(res.resource_type)
            .with_resource_name(res.resource_name.clone());
        let entries: Result<Vec<ConfigEntry>, (i16, String)> = match res.resource_type {
            RESOURCE_TOPIC
                if ctx.check(Operation::Describe, Resource::Topic(res.resource_name.to_string())).is_err() =>
            {
                ctx.check(Operation::Describe, Resource::Topic(res.resource_name.to_string())).map(|_| Vec::new())
            }
            RESOURCE_BROKER if ctx.check(Operation::Describe, Resource::Cluster).is_err() => {
                ctx.check(Operation::Describe, Resource::Cluster).map(|_| Vec::new())
            }
            RESOURCE_TOPIC => match broker.topic(res.resource_name.as_str()) {
                Ok(topic) => {
                    let overrides = topic.metadata().config;
                    Ok(topic
                        .config()
                        .to_map()
                        .into_iter()
                        .map(|(k, v)| {
                            let source = if overrides.contains_key(&k) { DYNAMIC_TOPIC_CONFIG } else { DEFAULT_CONFIG };
                            (k, v, source)
                        })
                        .collect())
                }
                Err(e) => Err((errors::of(&e), e.to_string())),
            },
            RESOURCE_BROKER => {
                let c = broker.config();
                Ok(vec![
                    ("num.partitions".into(), c.default_partitions.to_string(), STATIC_BROKER_CONFIG),
                    ("message.max.bytes".into(), c.request_bytes_max.to_string(), STATIC_BROKER_CONFIG),
                    ("socket.request.max.bytes".into(), c.request_bytes_max.to_string(), STATIC_BROKER_CONFIG),
                    (
                        "queued.max.request.bytes".into(),
                        c.request_bytes_in_flight_max.to_string(),
                        STATIC_BROKER_CONFIG,
                    ),
                    ("offset.metadata.max.bytes".into(), c.offset_metadata_bytes_max.to_string(), STATIC_BROKER_CONFIG),
                    ("auto.create.topics.enable".into(), "false".into(), DEFAULT_CONFIG),
                ])
            }
            other => Err((
                code::INVALID_REQUEST,
                format!("resource type {other}: strata describes topics (2) and the broker (4)"),
            )),
        };
        match entries {
            Ok(entries) => {
                // Null or empty: every key (as Kafka does).
                let wanted = res.configuration_keys.as_ref().filter(|w| !w.is_empty());
                r.configs = entries
                    .into_iter()
                    .filter(|(k, _, _)| wanted.is_none_or(|w| w.iter().any(|x| x.as_str() == k)))
                    .map(|(k, v, source)| {
                        DescribeConfigsResourceResult::default()
                            .with_name(text(k))
                            .with_value(Some(text(v)))
                            .with_config_source(source)
                    })
                    .collect();
            }
            Err((c, why)) => {
                r.error_code = c;
                r.error_message = Some(text(why));
            }
        }
        results.push(r);
    }
    DescribeConfigsResponse::default().with_results(results)
}

pub(super) async fn init_producer_id(ctx: &Ctx, request: InitProducerIdRequest) -> InitProducerIdResponse {
    let mut r = InitProducerIdResponse::default().with_producer_id(ProducerId(-1)).with_producer_epoch(-1);
    if request.transactional_id.is_some() {
        tracing::info!(by = %ctx.caller, "refused InitProducerId with a transactional.id: transactions are not supported");
        r.error_code = code::INVALID_REQUEST;
        return r;
    }
    if let Err(e) = ctx.broker.authorizer().authorize_some_topic(&ctx.caller(), Operation::Produce) {
        r.error_code = errors::of(&e);
        return r;
    }
    let broker = ctx.broker.clone();
    // KIP-360: an idempotent producer bumps its epoch to start its
    // sequences over; a fresh id when it asks for the first time, when the
    // id is not one of ours, or when the epoch would overflow.
    let (old, epoch) = (request.producer_id.0, request.producer_epoch);
    if old >= 0 && broker.producer_issued(old) && (0..i16::MAX).contains(&epoch) {
        r.producer_id = ProducerId(old);
        r.producer_epoch = epoch + 1;
        return r;
    }
    let caller = ctx.caller();
    match tokio::task::spawn_blocking(move || broker.init_producer(&caller)).await {
        Ok(Ok(id)) => {
            r.producer_id = ProducerId(id);
            r.producer_epoch = 0;
        }
        Ok(Err(e)) => r.error_code = errors::of(&e),
        Err(_) => r.error_code = code::UNKNOWN_SERVER_ERROR,
    }
    r
}

pub(super) fn sasl_handshake(request: SaslHandshakeRequest) -> SaslHandshakeResponse {
    let mut r = SaslHandshakeResponse::default().with_mechanisms(vec![text("PLAIN")]);
    if request.mechanism.as_str() != "PLAIN" {
        r.error_code = code::UNSUPPORTED_SASL_MECHANISM;
    }
    r
}

/// SASL PLAIN: username = a user's name, password = its token. With
/// security off it is accepted and the caller stays anonymous (the name is
/// logged, not trusted).
pub(super) fn sasl_authenticate(ctx: &Ctx, request: SaslAuthenticateRequest) -> SaslAuthenticateResponse {
    let mut r = SaslAuthenticateResponse::default();
    let parts: Vec<&[u8]> = request.auth_bytes.split(|b| *b == 0).collect();
    if parts.len() != 3 {
        r.error_code = code::ILLEGAL_SASL_STATE;
        r.error_message = Some(text("SASL PLAIN expects authzid NUL username NUL password"));
        return r;
    }
    let user = String::from_utf8_lossy(parts[1]).into_owned();
    let Some(rules) = ctx.broker.authorizer().rules() else {
        tracing::debug!(user = %user, peer = ?ctx.caller.peer, "SASL PLAIN accepted: security is off, the caller stays anonymous");
        return r;
    };
    if rules.check_password(&user, parts[2]) {
        if ctx.tls {
            tracing::debug!(user = %user, peer = ?ctx.caller.peer, "SASL PLAIN authenticated");
        } else {
            tracing::warn!(user = %user, peer = ?ctx.caller.peer, "SASL PLAIN over plaintext: the token crossed the network unencrypted; configure [tls]");
        }
        *ctx.sasl_principal.lock().unwrap_or_else(|e| e.into_inner()) = Some(user);
    } else {
        tracing::info!(user = %user, peer = ?ctx.caller.peer, "SASL PLAIN refused: wrong user or token");
        r.error_code = code::SASL_AUTHENTICATION_FAILED;
        r.error_message = Some(text("authentication failed: wrong user name or token"));
    }
    r
}
