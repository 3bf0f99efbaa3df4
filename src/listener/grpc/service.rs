//! `strata.v1.Broker` implemented over [`crate::broker::Broker`]: decode,
//! call, encode. No business logic lives here: each method makes the
//! [`Caller`], translates the request (`convert.rs`), calls the broker and
//! translates the answer or the error (`status.rs`).

use std::pin::Pin;
use std::sync::Arc;

use futures::{Stream, StreamExt};
use tonic::{Request, Response, Status, Streaming};

use super::codec;
use super::convert;
use super::status::to_status;
use crate::broker::budget::BudgetPermit;
use crate::broker::partition::ReadSink as _;
use crate::broker::{Broker, BrokerError, Caller, PipelineItem, Pipelined, Position, Produced};
use crate::proto;
use crate::security::{Operation, Resource};
use crate::telemetry;
use tracing::Instrument as _;

#[derive(Debug, Clone)]
pub struct BrokerService {
    pub broker: Arc<Broker>,
}

pub type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send + 'static>>;

/// Subscribe messages, their records as stored (`convert::subscribe_parts`),
/// each with its share of the stream's read-ahead budget, to drop once the
/// connection has the bytes (`routes.rs`).
pub type BudgetedStream = Pin<
    Box<
        dyn Stream<Item = Result<((proto::SubscribeResponse, Option<codec::WireRecords>), BudgetPermit), Status>>
            + Send,
    >,
>;

/// The caller of a gRPC request: anonymous (until security), from its
/// peer, with the trace context of its metadata.
pub fn caller_of<T>(request: &Request<T>) -> Caller {
    let trace = crate::telemetry::TraceContext::from_headers(request.metadata().as_ref());
    super::routes::caller_of(request.extensions()).with_trace(trace)
}

/// A ProduceStream's requests as its reader produced them.
pub type ProduceStreamInbound = Pin<Box<dyn Stream<Item = Result<PipelineItem<u64>, BrokerError>> + Send>>;

impl BrokerService {
    /// ProduceStream over any source of requests: tonic's decoder, or
    /// `routes.rs`', which keeps record batches in the frames they arrived
    /// in. Requests go through the broker's pipeline (responses as each is
    /// durable); a refused one is answered with its error in the response
    /// (its `request_id`, 0 when it could not be decoded) and the stream
    /// goes on; an error of the stream itself ends it, after the responses
    /// still waiting for their fsync.
    pub fn produce_stream_of(
        &self,
        caller: Caller,
        inbound: ProduceStreamInbound,
    ) -> BoxStream<proto::ProduceResponse> {
        // Each request is checked against its own topic.
        let (broker, who) = (self.broker.clone(), caller.clone());
        let inbound = Box::pin(inbound.map(move |item| {
            item.map(|mut item| {
                if let Ok(r) = &item.request {
                    if let Err(e) = broker.authorizer().authorize(&who, Operation::Produce, &topic(&r.topic)) {
                        item.request = Err(e);
                    }
                }
                item
            })
        }));
        let completions = self.broker.produce_pipeline(caller, inbound, false);
        Box::pin(tokio_stream::wrappers::ReceiverStream::new(completions).map(|c| match c {
            Ok(Pipelined { tag, result }) => Ok(produce_response(tag, result)),
            Err(e) => Err(to_status(e)),
        }))
    }

    /// Subscribe, with or without a group.
    /// `encoded`: records are encoded as they are read, for the route that
    /// frames them as they are (tonic's own path makes prost messages).
    pub fn subscribe_budgeted(
        &self,
        caller: &Caller,
        r: proto::SubscribeRequest,
        encoded: bool,
    ) -> Result<BudgetedStream, Status> {
        // A group's members need the group; the topics are those of the
        // pattern the caller may consume (the broker filters them).
        if let Some(g) = &r.group {
            self.allow(caller, "Subscribe", group(g))?;
        } else if !r.topic_pattern.contains(['*', '?']) {
            self.allow(caller, "Subscribe", topic(&r.topic_pattern))?;
        }
        let request = convert::subscribe_request(r, encoded).map_err(to_status)?;
        let messages = self.broker.subscribe(caller, request).map_err(to_status)?;
        Ok(Box::pin(messages.map(|m| {
            m.map_err(to_status).map(|mut m| {
                let permit = std::mem::replace(&mut m.permit, BudgetPermit::none());
                (convert::subscribe_parts(m), permit)
            })
        })))
    }

    /// Fetch, its records kept as stored: the gRPC route frames them
    /// straight from storage; the tonic trait's `fetch` makes them prost
    /// messages.
    pub async fn fetch_parts(
        &self,
        request: Request<proto::FetchRequest>,
    ) -> Result<(proto::FetchResponse, Option<codec::TopicRecords>), Status> {
        let caller = caller_of(&request);
        self.allow(&caller, "Fetch", topic(&request.get_ref().topic))?;
        self.fetch_allowed(&caller, request.into_inner()).await
    }

    /// [`BrokerService::fetch_parts`] for a caller already allowed to.
    pub async fn fetch_allowed(
        &self,
        caller: &Caller,
        r: proto::FetchRequest,
    ) -> Result<(proto::FetchResponse, Option<codec::TopicRecords>), Status> {
        let (topic, partition, request, span) = fetch_request(r)?;
        let fetched = self.broker.fetch(caller, request).instrument(span.clone()).await.map_err(to_status)?;
        if let crate::broker::Fetched::Records(read) = &fetched {
            span.record("messaging.batch.message_count", read.records.len());
            telemetry::link_records(&span, read.records.iter().map(|r| &r.headers[..]));
        }
        Ok(convert::fetch_parts(&topic, partition, fetched))
    }

    /// [`BrokerService::fetch_allowed`] for the gRPC listener's own
    /// framing: records are encoded for the wire as they are read
    /// ([`codec::RecordEncoder`], nothing built per record in between), as
    /// a read ahead is; stored batches go as they are.
    pub async fn fetch_encoded(
        &self,
        caller: &Caller,
        r: proto::FetchRequest,
    ) -> Result<(proto::FetchResponse, Option<codec::RecordChunks>), Status> {
        let (topic, partition, request, span) = fetch_request(r)?;
        let traced = !span.is_disabled();
        let sink = || codec::RecordEncoder::new(&topic, partition, traced);
        let fetched =
            self.broker.fetch_into(caller, request, sink).instrument(span.clone()).await.map_err(to_status)?;
        match fetched {
            crate::broker::Fetched::Records(read) => {
                span.record("messaging.batch.message_count", read.records.len());
                let head = proto::FetchResponse {
                    next_offset: read.next_offset,
                    high_watermark: read.high_watermark,
                    log_start_offset: read.log_start_offset,
                    ..Default::default()
                };
                let (encoded, traced) = read.records.finish();
                telemetry::link_records(&span, traced.iter().map(|h| &h[..]));
                Ok((head, Some(encoded)))
            }
            crate::broker::Fetched::Batches { from, read } => Ok((convert::batches_response(from, read), None)),
        }
    }
}

/// A Fetch request as the broker takes it, with its topic and partition,
/// and the receive span it runs in.
fn fetch_request(r: proto::FetchRequest) -> Result<(String, u32, crate::broker::FetchRequest, tracing::Span), Status> {
    let (topic, partition) = (r.topic.clone(), r.partition);
    let request = convert::fetch_request(r).map_err(to_status)?;
    let span = match request.from {
        Position::Offset(o) => telemetry::receive_span(&topic, partition, o),
        _ => telemetry::receive_span(&topic, partition, 0),
    };
    Ok((topic, partition, request, span))
}

/// The operation each method of `strata.v1.Broker` needs on its resource:
/// every method is here (a test checks the list against the proto), and
/// each handler asks [`BrokerService::allow`] with its own name, so one
/// without an entry fails closed. List methods show only what the caller
/// may describe; pattern subscriptions only topics it may consume.
pub const METHOD_OPERATIONS: &[(&str, Operation)] = &[
    ("CreateTopic", Operation::Admin),
    ("DeleteTopic", Operation::Admin),
    ("ListTopics", Operation::Describe),
    ("DescribeTopic", Operation::Describe),
    ("AlterTopicConfig", Operation::Admin),
    ("CreatePartitions", Operation::Admin),
    ("InitProducer", Operation::Produce),
    ("Produce", Operation::Produce),
    ("ProduceStream", Operation::Produce),
    ("Fetch", Operation::Consume),
    ("Subscribe", Operation::Consume),
    ("ListOffsets", Operation::Describe),
    ("JoinGroup", Operation::Group),
    ("Heartbeat", Operation::Group),
    ("LeaveGroup", Operation::Group),
    ("CommitOffsets", Operation::Group),
    ("FetchCommittedOffsets", Operation::Group),
    ("ListGroups", Operation::Describe),
    ("DescribeGroup", Operation::Describe),
    ("ResetGroupOffsets", Operation::Admin),
    ("DeleteGroup", Operation::Admin),
    ("ShareFetch", Operation::Group),
    ("Acknowledge", Operation::Group),
    ("ShareSubscribe", Operation::Group),
    ("AlterShareGroup", Operation::Admin),
    ("DescribeShareGroup", Operation::Describe),
    ("ListShareGroups", Operation::Describe),
    ("DeleteShareGroup", Operation::Admin),
    ("RedriveDeadLetters", Operation::Admin),
    ("CreateAlertRule", Operation::Admin),
    ("ListAlertRules", Operation::Describe),
    ("DescribeAlertRule", Operation::Describe),
    ("DeleteAlertRule", Operation::Admin),
];

pub fn topic(name: &str) -> Resource {
    Resource::Topic(name.to_string())
}

fn group(name: &str) -> Resource {
    Resource::Group(name.to_string())
}

/// The topic an alert rule request publishes to (its default included).
fn alert_topic_of(r: &proto::CreateAlertRuleRequest) -> String {
    if r.alert_topic.is_empty() {
        format!("alerts.{}", r.name)
    } else {
        r.alert_topic.clone()
    }
}

impl BrokerService {
    /// The check of `method` on `resource` (its operation from the table).
    pub fn allow(&self, caller: &Caller, method: &str, resource: Resource) -> Result<(), Status> {
        let Some((_, op)) = METHOD_OPERATIONS.iter().find(|(m, _)| *m == method) else {
            return Err(Status::internal(format!("{method} has no entry in the authorization table")));
        };
        self.allow_also(caller, *op, resource)
    }

    /// A second check a method needs (a commit consumes its topics too).
    fn allow_also(&self, caller: &Caller, op: Operation, resource: Resource) -> Result<(), Status> {
        self.broker.authorizer().authorize(caller, op, &resource).map_err(to_status)
    }

    fn may(&self, caller: &Caller, op: Operation, resource: Resource) -> bool {
        self.broker.authorizer().allows(caller, op, &resource)
    }

    /// An alert rule's methods act on its alert topic.
    fn allow_rule(&self, caller: &Caller, method: &str, name: &str) -> Result<(), Status> {
        let internal = Caller::internal("authorization");
        match self.broker.describe_alert_rule(&internal, name) {
            Ok(info) => self.allow(caller, method, topic(&info.rule.alert_topic)),
            // Unknown: checked against the default topic, so a caller
            // without rights learns nothing of which rules exist.
            Err(_) => self.allow(caller, method, topic(&format!("alerts.{name}"))),
        }
    }
}

/// A ProduceStream response: the results, or the error in its fields.
fn produce_response(request_id: u64, result: Result<Produced, BrokerError>) -> proto::ProduceResponse {
    match result {
        Ok(produced) => proto::ProduceResponse { request_id, ..convert::produce_response(produced) },
        Err(e) => {
            let s = to_status(e);
            proto::ProduceResponse {
                request_id,
                error_code: s.code() as i32,
                error_message: s.message().to_string(),
                ..Default::default()
            }
        }
    }
}

/// Runs blocking broker work off the async workers.
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T, BrokerError> + Send + 'static) -> Result<T, Status> {
    tokio::task::spawn_blocking(f).await.map_err(|e| Status::internal(e.to_string()))?.map_err(to_status)
}

#[tonic::async_trait]
impl proto::broker_server::Broker for BrokerService {
    async fn create_topic(
        &self,
        request: Request<proto::CreateTopicRequest>,
    ) -> Result<Response<proto::TopicDescription>, Status> {
        let caller = caller_of(&request);
        self.allow(&caller, "CreateTopic", topic(&request.get_ref().name))?;
        let info = self.broker.create_topic(&caller, convert::create_topic(request.into_inner())).await;
        Ok(Response::new(convert::topic_description(info.map_err(to_status)?)))
    }

    async fn delete_topic(
        &self,
        request: Request<proto::DeleteTopicRequest>,
    ) -> Result<Response<proto::DeleteTopicResponse>, Status> {
        let caller = caller_of(&request);
        self.allow(&caller, "DeleteTopic", topic(&request.get_ref().name))?;
        self.broker.delete_topic(&caller, &request.into_inner().name).await.map_err(to_status)?;
        Ok(Response::new(proto::DeleteTopicResponse {}))
    }

    async fn list_topics(
        &self,
        request: Request<proto::ListTopicsRequest>,
    ) -> Result<Response<proto::ListTopicsResponse>, Status> {
        let caller = caller_of(&request);
        let mut topics =
            self.broker.list_topics(&caller, &request.into_inner().topic_pattern).await.map_err(to_status)?;
        topics.retain(|t| self.may(&caller, Operation::Describe, topic(&t.name)));
        Ok(Response::new(proto::ListTopicsResponse {
            topics: topics.into_iter().map(convert::topic_description).collect(),
        }))
    }

    async fn describe_topic(
        &self,
        request: Request<proto::DescribeTopicRequest>,
    ) -> Result<Response<proto::TopicDescription>, Status> {
        let caller = caller_of(&request);
        self.allow(&caller, "DescribeTopic", topic(&request.get_ref().name))?;
        let info = self.broker.describe_topic(&caller, &request.into_inner().name).await.map_err(to_status)?;
        Ok(Response::new(convert::topic_description(info)))
    }

    async fn alter_topic_config(
        &self,
        request: Request<proto::AlterTopicConfigRequest>,
    ) -> Result<Response<proto::TopicDescription>, Status> {
        let caller = caller_of(&request);
        self.allow(&caller, "AlterTopicConfig", topic(&request.get_ref().name))?;
        let r = request.into_inner();
        let changes = r.config.into_iter().collect();
        let info = self.broker.alter_topic_config(&caller, &r.name, changes).await.map_err(to_status)?;
        Ok(Response::new(convert::topic_description(info)))
    }

    async fn create_partitions(
        &self,
        request: Request<proto::CreatePartitionsRequest>,
    ) -> Result<Response<proto::TopicDescription>, Status> {
        let caller = caller_of(&request);
        self.allow(&caller, "CreatePartitions", topic(&request.get_ref().name))?;
        let r = request.into_inner();
        let info = self.broker.add_partitions(&caller, &r.name, r.partitions).await.map_err(to_status)?;
        Ok(Response::new(convert::topic_description(info)))
    }

    async fn init_producer(
        &self,
        request: Request<proto::InitProducerRequest>,
    ) -> Result<Response<proto::InitProducerResponse>, Status> {
        let (broker, caller) = (self.broker.clone(), caller_of(&request));
        broker.authorizer().authorize_some_topic(&caller, Operation::Produce).map_err(to_status)?;
        let producer_id = blocking(move || broker.init_producer(&caller)).await?;
        Ok(Response::new(proto::InitProducerResponse { producer_id }))
    }

    async fn produce(
        &self,
        request: Request<proto::ProduceRequest>,
    ) -> Result<Response<proto::ProduceResponse>, Status> {
        let caller = caller_of(&request);
        self.allow(&caller, "Produce", topic(&request.get_ref().topic))?;
        let r = request.into_inner();
        let request_id = r.request_id;
        let request = convert::produce_request(r).map_err(to_status)?;
        let span = telemetry::publish_span(&request.topic, request.partition, caller.trace.as_ref());
        let results = self.broker.produce(&caller, request).instrument(span.clone()).await;
        telemetry::record_published(&span, &results.as_ref().map(|p| &p.results[..]));
        let produced = results.map_err(to_status)?;
        Ok(Response::new(proto::ProduceResponse { request_id, ..convert::produce_response(produced) }))
    }

    type ProduceStreamStream = BoxStream<proto::ProduceResponse>;

    async fn produce_stream(
        &self,
        request: Request<Streaming<proto::ProduceRequest>>,
    ) -> Result<Response<Self::ProduceStreamStream>, Status> {
        let caller = caller_of(&request);
        let inbound = request.into_inner().map(|m| match m {
            Ok(m) => Ok(PipelineItem {
                tag: m.request_id,
                request: convert::produce_request(m),
                permit: BudgetPermit::none(),
            }),
            Err(s) => Err(BrokerError::MalformedRequest { what: "ProduceStream".into(), why: s.message().to_string() }),
        });
        Ok(Response::new(self.produce_stream_of(caller, Box::pin(inbound))))
    }

    async fn fetch(&self, request: Request<proto::FetchRequest>) -> Result<Response<proto::FetchResponse>, Status> {
        let (mut head, records) = self.fetch_parts(request).await?;
        head.records = records.map(codec::TopicRecords::into_proto).unwrap_or_default();
        Ok(Response::new(head))
    }

    type SubscribeStream = BoxStream<proto::SubscribeResponse>;

    async fn subscribe(
        &self,
        request: Request<proto::SubscribeRequest>,
    ) -> Result<Response<Self::SubscribeStream>, Status> {
        let caller = caller_of(&request);
        let messages = self.subscribe_budgeted(&caller, request.into_inner(), false)?;
        Ok(Response::new(Box::pin(messages.map(|m| {
            m.and_then(|((mut head, records), _permit)| {
                head.records = records.map(codec::WireRecords::into_proto).transpose()?.unwrap_or_default();
                Ok(head)
            })
        }))))
    }

    async fn list_offsets(
        &self,
        request: Request<proto::ListOffsetsRequest>,
    ) -> Result<Response<proto::ListOffsetsResponse>, Status> {
        let caller = caller_of(&request);
        self.allow(&caller, "ListOffsets", topic(&request.get_ref().topic))?;
        let r = request.into_inner();
        let at = convert::position(r.at, Position::Latest).map_err(to_status)?;
        let found = self.broker.list_offsets(&caller, &r.topic, r.partition, at).await.map_err(to_status)?;
        Ok(Response::new(proto::ListOffsetsResponse {
            offset: found.offset,
            log_start_offset: found.log_start_offset,
            high_watermark: found.high_watermark,
        }))
    }

    async fn join_group(
        &self,
        request: Request<proto::JoinGroupRequest>,
    ) -> Result<Response<proto::JoinGroupResponse>, Status> {
        let caller = caller_of(&request);
        self.allow(&caller, "JoinGroup", group(&request.get_ref().group))?;
        let m = self.broker.join_group(&caller, convert::join_group(request.into_inner())).map_err(to_status)?;
        Ok(Response::new(proto::JoinGroupResponse {
            member_id: m.member_id,
            generation: m.generation,
            assignments: convert::assignments(&m.assignment),
        }))
    }

    async fn heartbeat(
        &self,
        request: Request<proto::HeartbeatRequest>,
    ) -> Result<Response<proto::HeartbeatResponse>, Status> {
        let caller = caller_of(&request);
        self.allow(&caller, "Heartbeat", group(&request.get_ref().group))?;
        let r = request.into_inner();
        let m = self.broker.heartbeat(&caller, &r.group, &r.member_id).map_err(to_status)?;
        Ok(Response::new(proto::HeartbeatResponse {
            generation: m.generation,
            assignments: convert::assignments(&m.assignment),
        }))
    }

    async fn leave_group(
        &self,
        request: Request<proto::LeaveGroupRequest>,
    ) -> Result<Response<proto::LeaveGroupResponse>, Status> {
        let caller = caller_of(&request);
        self.allow(&caller, "LeaveGroup", group(&request.get_ref().group))?;
        let r = request.into_inner();
        self.broker.leave_group(&caller, &r.group, &r.member_id).map_err(to_status)?;
        Ok(Response::new(proto::LeaveGroupResponse {}))
    }

    async fn commit_offsets(
        &self,
        request: Request<proto::CommitOffsetsRequest>,
    ) -> Result<Response<proto::CommitOffsetsResponse>, Status> {
        let (broker, caller) = (self.broker.clone(), caller_of(&request));
        self.allow(&caller, "CommitOffsets", group(&request.get_ref().group))?;
        for o in &request.get_ref().offsets {
            self.allow_also(&caller, Operation::Consume, topic(&o.topic))?;
        }
        let commit = convert::commit_offsets(request.into_inner());
        blocking(move || broker.commit_offsets(&caller, commit)).await?;
        Ok(Response::new(proto::CommitOffsetsResponse {}))
    }

    async fn fetch_committed_offsets(
        &self,
        request: Request<proto::FetchCommittedOffsetsRequest>,
    ) -> Result<Response<proto::FetchCommittedOffsetsResponse>, Status> {
        let caller = caller_of(&request);
        self.allow(&caller, "FetchCommittedOffsets", group(&request.get_ref().group))?;
        let r = request.into_inner();
        let offsets = self.broker.committed_offsets(&caller, &r.group, r.topic.as_deref());
        Ok(Response::new(proto::FetchCommittedOffsetsResponse {
            offsets: offsets.into_iter().map(convert::committed_out).collect(),
        }))
    }

    async fn list_groups(
        &self,
        request: Request<proto::ListGroupsRequest>,
    ) -> Result<Response<proto::ListGroupsResponse>, Status> {
        let caller = caller_of(&request);
        let groups = self
            .broker
            .list_groups(&caller)
            .into_iter()
            .filter(|(g, ..)| self.may(&caller, Operation::Describe, group(g)))
            .map(|(group, state, generation, members)| proto::GroupSummary {
                group,
                state: state.to_string(),
                generation,
                members: members as u32,
            })
            .collect();
        Ok(Response::new(proto::ListGroupsResponse { groups }))
    }

    async fn describe_group(
        &self,
        request: Request<proto::DescribeGroupRequest>,
    ) -> Result<Response<proto::DescribeGroupResponse>, Status> {
        let caller = caller_of(&request);
        self.allow(&caller, "DescribeGroup", group(&request.get_ref().group))?;
        let info = self.broker.describe_group(&caller, &request.into_inner().group).map_err(to_status)?;
        Ok(Response::new(convert::group_description(info)))
    }

    async fn reset_group_offsets(
        &self,
        request: Request<proto::ResetGroupOffsetsRequest>,
    ) -> Result<Response<proto::ResetGroupOffsetsResponse>, Status> {
        let caller = caller_of(&request);
        self.allow(&caller, "ResetGroupOffsets", group(&request.get_ref().group))?;
        let reset = convert::reset_offsets(request.into_inner()).map_err(to_status)?;
        let resets = self.broker.reset_group_offsets(&caller, reset).await.map_err(to_status)?;
        Ok(Response::new(proto::ResetGroupOffsetsResponse {
            resets: resets
                .into_iter()
                .map(|x| proto::OffsetReset {
                    topic: x.topic,
                    partition: x.partition,
                    old_offset: x.old_offset,
                    new_offset: x.new_offset,
                })
                .collect(),
        }))
    }

    async fn delete_group(
        &self,
        request: Request<proto::DeleteGroupRequest>,
    ) -> Result<Response<proto::DeleteGroupResponse>, Status> {
        let caller = caller_of(&request);
        self.allow(&caller, "DeleteGroup", group(&request.get_ref().group))?;
        self.broker.delete_group(&caller, &request.into_inner().group).await.map_err(to_status)?;
        Ok(Response::new(proto::DeleteGroupResponse {}))
    }

    async fn share_fetch(
        &self,
        request: Request<proto::ShareFetchRequest>,
    ) -> Result<Response<proto::ShareFetchResponse>, Status> {
        let caller = caller_of(&request);
        self.allow(&caller, "ShareFetch", group(&request.get_ref().group))?;
        let request = convert::share_fetch_request(request.into_inner());
        let records = self.broker.share_fetch(&caller, request).await.map_err(to_status)?;
        Ok(Response::new(proto::ShareFetchResponse {
            records: records.into_iter().map(convert::share_record).collect(),
        }))
    }

    async fn acknowledge(
        &self,
        request: Request<proto::AcknowledgeRequest>,
    ) -> Result<Response<proto::AcknowledgeResponse>, Status> {
        let caller = caller_of(&request);
        self.allow(&caller, "Acknowledge", group(&request.get_ref().group))?;
        let r = request.into_inner();
        let entries = r
            .acknowledgements
            .into_iter()
            .map(convert::acknowledgement)
            .collect::<Result<Vec<_>, _>>()
            .map_err(to_status)?;
        let results = self.broker.acknowledge(&caller, &r.group, entries).await.map_err(to_status)?;
        let results = results.into_iter().map(convert::ack_result).collect();
        Ok(Response::new(proto::AcknowledgeResponse { results }))
    }

    type ShareSubscribeStream = BoxStream<proto::ShareSubscribeResponse>;

    async fn share_subscribe(
        &self,
        request: Request<Streaming<proto::ShareSubscribeRequest>>,
    ) -> Result<Response<Self::ShareSubscribeStream>, Status> {
        let caller = caller_of(&request);
        let mut inbound = request.into_inner();
        let first = match inbound.message().await? {
            Some(first) => first,
            None => return Err(Status::invalid_argument("ShareSubscribe: the first message names the group")),
        };
        self.allow(&caller, "ShareSubscribe", group(&first.group))?;
        let subscription = convert::share_subscribe_request(&first);
        let first_acks = first.acknowledgements;
        let acks = futures::stream::iter([Ok(first_acks)])
            .chain(inbound.map(|m| m.map(|m| m.acknowledgements)))
            .filter(|m| std::future::ready(!matches!(m, Ok(a) if a.is_empty())))
            .map(|m| match m {
                Ok(acks) => acks.into_iter().map(convert::acknowledgement).collect(),
                Err(s) => {
                    Err(BrokerError::MalformedRequest { what: "ShareSubscribe".into(), why: s.message().to_string() })
                }
            });
        let messages = self.broker.share_subscribe(&caller, subscription, Box::pin(acks)).map_err(to_status)?;
        Ok(Response::new(Box::pin(messages.map(|m| m.map(convert::share_stream_message).map_err(to_status)))))
    }

    async fn alter_share_group(
        &self,
        request: Request<proto::AlterShareGroupRequest>,
    ) -> Result<Response<proto::ShareGroupDescription>, Status> {
        let caller = caller_of(&request);
        self.allow(&caller, "AlterShareGroup", group(&request.get_ref().group))?;
        let r = request.into_inner();
        let info = self
            .broker
            .alter_share_group(&caller, &r.group, r.config.into_iter().collect())
            .await
            .map_err(to_status)?;
        Ok(Response::new(convert::share_group_description(info)))
    }

    async fn describe_share_group(
        &self,
        request: Request<proto::DescribeShareGroupRequest>,
    ) -> Result<Response<proto::ShareGroupDescription>, Status> {
        let caller = caller_of(&request);
        self.allow(&caller, "DescribeShareGroup", group(&request.get_ref().group))?;
        let info = self.broker.describe_share_group(&caller, &request.into_inner().group).map_err(to_status)?;
        Ok(Response::new(convert::share_group_description(info)))
    }

    async fn list_share_groups(
        &self,
        request: Request<proto::ListShareGroupsRequest>,
    ) -> Result<Response<proto::ListShareGroupsResponse>, Status> {
        let caller = caller_of(&request);
        let mut groups = self.broker.list_share_groups(&caller);
        groups.retain(|g| self.may(&caller, Operation::Describe, group(g)));
        Ok(Response::new(proto::ListShareGroupsResponse { groups }))
    }

    async fn delete_share_group(
        &self,
        request: Request<proto::DeleteShareGroupRequest>,
    ) -> Result<Response<proto::DeleteShareGroupResponse>, Status> {
        let caller = caller_of(&request);
        self.allow(&caller, "DeleteShareGroup", group(&request.get_ref().group))?;
        self.broker.delete_share_group(&caller, &request.into_inner().group).await.map_err(to_status)?;
        Ok(Response::new(proto::DeleteShareGroupResponse {}))
    }

    async fn redrive_dead_letters(
        &self,
        request: Request<proto::RedriveDeadLettersRequest>,
    ) -> Result<Response<proto::RedriveDeadLettersResponse>, Status> {
        let caller = caller_of(&request);
        self.allow(&caller, "RedriveDeadLetters", group(&request.get_ref().group))?;
        let r = request.into_inner();
        let moved =
            self.broker.redrive_dead_letters(&caller, &r.group, r.max_records as usize).await.map_err(to_status)?;
        Ok(Response::new(proto::RedriveDeadLettersResponse { moved }))
    }

    async fn create_alert_rule(
        &self,
        request: Request<proto::CreateAlertRuleRequest>,
    ) -> Result<Response<proto::AlertRuleDescription>, Status> {
        let caller = caller_of(&request);
        self.allow(&caller, "CreateAlertRule", topic(&alert_topic_of(request.get_ref())))?;
        let rule = convert::alert_rule_request(request.into_inner());
        let info = self.broker.create_alert_rule(&caller, rule).await.map_err(to_status)?;
        Ok(Response::new(convert::alert_rule_description(info)))
    }

    async fn list_alert_rules(
        &self,
        request: Request<proto::ListAlertRulesRequest>,
    ) -> Result<Response<proto::ListAlertRulesResponse>, Status> {
        let caller = caller_of(&request);
        let rules = self
            .broker
            .list_alert_rules(&caller)
            .into_iter()
            .filter(|r| self.may(&caller, Operation::Describe, topic(&r.rule.alert_topic)))
            .map(convert::alert_rule_description)
            .collect();
        Ok(Response::new(proto::ListAlertRulesResponse { rules }))
    }

    async fn describe_alert_rule(
        &self,
        request: Request<proto::DescribeAlertRuleRequest>,
    ) -> Result<Response<proto::AlertRuleDescription>, Status> {
        let caller = caller_of(&request);
        self.allow_rule(&caller, "DescribeAlertRule", &request.get_ref().name)?;
        let info = self.broker.describe_alert_rule(&caller, &request.into_inner().name).map_err(to_status)?;
        Ok(Response::new(convert::alert_rule_description(info)))
    }

    async fn delete_alert_rule(
        &self,
        request: Request<proto::DeleteAlertRuleRequest>,
    ) -> Result<Response<proto::DeleteAlertRuleResponse>, Status> {
        let caller = caller_of(&request);
        self.allow_rule(&caller, "DeleteAlertRule", &request.get_ref().name)?;
        self.broker.delete_alert_rule(&caller, &request.into_inner().name).await.map_err(to_status)?;
        Ok(Response::new(proto::DeleteAlertRuleResponse {}))
    }
}
