//! `strata.v1.Broker` implemented over [`crate::broker::Broker`]: decode,
//! call, encode. No business logic lives here.

use std::collections::BTreeMap;
use std::pin::Pin;
use std::sync::Arc;

use futures::{Stream, StreamExt};
use tokio::sync::{mpsc, Semaphore};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use super::convert;
use super::status::{map_decode_status, to_status};
use crate::broker::budget::BudgetPermit;
use crate::broker::subscription::{Delivery, SubscriptionEvent};
use crate::broker::{Broker, Position};
use crate::proto;

/// Produce requests one ProduceStream may have in flight (awaiting fsync).
pub const PIPELINE_DEPTH_MAX: usize = 256;

#[derive(Debug, Clone)]
pub struct BrokerService {
    pub broker: Arc<Broker>,
}

pub type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send + 'static>>;

/// One message of a ProduceStream as the listener read it.
#[derive(Debug)]
pub struct Inbound {
    /// The decoded request, or why this one message was refused (answered
    /// with its error; the stream goes on).
    pub request: Result<proto::ProduceRequest, Status>,
    /// The request's share of the broker's request budget, held until its
    /// batches are written.
    pub permit: BudgetPermit,
}

impl BrokerService {
    /// ProduceStream over any source of requests: tonic's decoder, or
    /// `server::push`'s, which keeps record batches in the frames they
    /// arrived in. A request that fails (or was refused before decoding)
    /// is answered with its error in the response and the stream goes on;
    /// a transport error ends it, after the responses still waiting for
    /// their fsync are sent.
    pub fn produce_stream_of<S>(&self, mut inbound: S) -> BoxStream<proto::ProduceResponse>
    where
        S: Stream<Item = Result<Inbound, Status>> + Send + Unpin + 'static,
    {
        let (tx, rx) = mpsc::channel(PIPELINE_DEPTH_MAX);
        let broker = self.broker.clone();
        let mut stopping = broker.watch_stopping();
        tokio::spawn(async move {
            let depth = Arc::new(Semaphore::new(PIPELINE_DEPTH_MAX));
            let ended = loop {
                let next = tokio::select! {
                    m = inbound.next() => m.transpose(),
                    // End the stream on shutdown so graceful stop does not
                    // wait for the client to hang up.
                    _ = crate::broker::stopped(&mut stopping) => Ok(None),
                };
                let Inbound { request, permit: budget } = match next {
                    Ok(Some(m)) => m,
                    Ok(None) => break None,
                    Err(status) => break Some(map_decode_status(status)),
                };
                let Ok(permit) = depth.clone().acquire_owned().await else {
                    break None;
                };
                let request_id = request.as_ref().map_or(0, |r| r.request_id);
                // Written here, in stream order, so a partition sees the
                // stream's batches in the order they were sent; the fsync
                // wait happens concurrently below.
                let pending = match request.and_then(convert::produce_request) {
                    Ok(req) => broker.produce_pending(req).await.map_err(to_status),
                    Err(s) => Err(s),
                };
                // The batches are written: the request's bytes may go.
                drop(budget);
                let tx = tx.clone();
                // Nothing to wait for (flush never/interval, or an error):
                // answer here, saving a task and a wake-up per request.
                let ready = pending.as_ref().map_or(true, |p| !p.needs_sync());
                let respond = async move {
                    let _permit = permit;
                    let result = match pending {
                        Ok(p) => p.wait().await.map_err(to_status),
                        Err(s) => Err(s),
                    };
                    let _ = tx.send(Ok(produce_response(request_id, result))).await;
                };
                if ready {
                    respond.await;
                } else {
                    tokio::spawn(respond);
                }
            };
            if let Some(status) = ended {
                // Every response still waiting for its fsync goes first.
                let _ = depth.acquire_many(PIPELINE_DEPTH_MAX as u32).await;
                let _ = tx.send(Err(status)).await;
            }
        });
        Box::pin(ReceiverStream::new(rx))
    }
}

/// A ProduceStream response: the results, or the error in its fields.
fn produce_response(
    request_id: u64,
    result: Result<Vec<crate::broker::ProduceResult>, Status>,
) -> proto::ProduceResponse {
    match result {
        Ok(results) => {
            proto::ProduceResponse { results: convert::produce_results(results), request_id, ..Default::default() }
        }
        Err(s) => proto::ProduceResponse {
            request_id,
            error_code: s.code() as i32,
            error_message: s.message().to_string(),
            ..Default::default()
        },
    }
}

#[tonic::async_trait]
impl proto::broker_server::Broker for BrokerService {
    async fn create_topic(
        &self,
        request: Request<proto::CreateTopicRequest>,
    ) -> Result<Response<proto::TopicDescription>, Status> {
        let r = request.into_inner();
        let config: BTreeMap<String, String> = r.config.into_iter().collect();
        let info = self.broker.create_topic(&r.name, r.partitions, config).await.map_err(to_status)?;
        Ok(Response::new(convert::topic_description(info)))
    }

    async fn delete_topic(
        &self,
        request: Request<proto::DeleteTopicRequest>,
    ) -> Result<Response<proto::DeleteTopicResponse>, Status> {
        self.broker.delete_topic(&request.into_inner().name).await.map_err(to_status)?;
        Ok(Response::new(proto::DeleteTopicResponse {}))
    }

    async fn list_topics(
        &self,
        request: Request<proto::ListTopicsRequest>,
    ) -> Result<Response<proto::ListTopicsResponse>, Status> {
        let topics = self.broker.list_topics(&request.into_inner().topic_pattern).await.map_err(to_status)?;
        Ok(Response::new(proto::ListTopicsResponse {
            topics: topics.into_iter().map(convert::topic_description).collect(),
        }))
    }

    async fn describe_topic(
        &self,
        request: Request<proto::DescribeTopicRequest>,
    ) -> Result<Response<proto::TopicDescription>, Status> {
        let info = self.broker.describe_topic(&request.into_inner().name).await.map_err(to_status)?;
        Ok(Response::new(convert::topic_description(info)))
    }

    async fn alter_topic_config(
        &self,
        request: Request<proto::AlterTopicConfigRequest>,
    ) -> Result<Response<proto::TopicDescription>, Status> {
        let r = request.into_inner();
        let info = self.broker.alter_topic_config(&r.name, r.config.into_iter().collect()).await.map_err(to_status)?;
        Ok(Response::new(convert::topic_description(info)))
    }

    async fn init_producer(
        &self,
        _request: Request<proto::InitProducerRequest>,
    ) -> Result<Response<proto::InitProducerResponse>, Status> {
        let broker = self.broker.clone();
        let producer_id = tokio::task::spawn_blocking(move || broker.init_producer())
            .await
            .map_err(|e| Status::internal(e.to_string()))?
            .map_err(to_status)?;
        Ok(Response::new(proto::InitProducerResponse { producer_id }))
    }

    async fn produce(
        &self,
        request: Request<proto::ProduceRequest>,
    ) -> Result<Response<proto::ProduceResponse>, Status> {
        let r = request.into_inner();
        let request_id = r.request_id;
        let results = self.broker.produce(convert::produce_request(r)?).await.map_err(to_status)?;
        Ok(Response::new(proto::ProduceResponse {
            results: convert::produce_results(results),
            request_id,
            ..Default::default()
        }))
    }

    type ProduceStreamStream = BoxStream<proto::ProduceResponse>;

    async fn produce_stream(
        &self,
        request: Request<Streaming<proto::ProduceRequest>>,
    ) -> Result<Response<Self::ProduceStreamStream>, Status> {
        let inbound = request.into_inner().map(|m| m.map(|m| Inbound { request: Ok(m), permit: BudgetPermit::none() }));
        Ok(Response::new(self.produce_stream_of(inbound)))
    }

    async fn fetch(&self, request: Request<proto::FetchRequest>) -> Result<Response<proto::FetchResponse>, Status> {
        let r = request.into_inner();
        let from = convert::position(r.from, Position::Earliest)?;
        if r.raw_batches {
            let read = self
                .broker
                .fetch_raw(&r.topic, r.partition, from, r.max_bytes as usize, r.max_wait_ms as u64)
                .await
                .map_err(to_status)?;
            return Ok(Response::new(convert::raw_fetch_response(from, read)));
        }
        let read = self
            .broker
            .fetch(&r.topic, r.partition, from, r.max_records as usize, r.max_bytes as usize, r.max_wait_ms as u64)
            .await
            .map_err(to_status)?;
        Ok(Response::new(convert::fetch_response(&r.topic, r.partition, read)))
    }

    type SubscribeStream = BoxStream<proto::SubscribeResponse>;

    async fn subscribe(
        &self,
        request: Request<proto::SubscribeRequest>,
    ) -> Result<Response<Self::SubscribeStream>, Status> {
        let messages = self.subscribe_budgeted(request.into_inner())?;
        Ok(Response::new(Box::pin(messages.map(|m| m.map(|(m, _permit)| m)))))
    }

    async fn list_offsets(
        &self,
        request: Request<proto::ListOffsetsRequest>,
    ) -> Result<Response<proto::ListOffsetsResponse>, Status> {
        let r = request.into_inner();
        let at = convert::position(r.at, Position::Latest)?;
        let (offset, log_start_offset, high_watermark) =
            self.broker.list_offsets(&r.topic, r.partition, at).await.map_err(to_status)?;
        Ok(Response::new(proto::ListOffsetsResponse { offset, log_start_offset, high_watermark }))
    }

    async fn join_group(
        &self,
        request: Request<proto::JoinGroupRequest>,
    ) -> Result<Response<proto::JoinGroupResponse>, Status> {
        let r = request.into_inner();
        let m = self
            .broker
            .join_group(&r.group, &r.member_id, &r.topic_pattern, r.session_timeout_ms as u64, false)
            .map_err(to_status)?;
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
        let r = request.into_inner();
        let m = self.broker.heartbeat(&r.group, &r.member_id).map_err(to_status)?;
        Ok(Response::new(proto::HeartbeatResponse {
            generation: m.generation,
            assignments: convert::assignments(&m.assignment),
        }))
    }

    async fn leave_group(
        &self,
        request: Request<proto::LeaveGroupRequest>,
    ) -> Result<Response<proto::LeaveGroupResponse>, Status> {
        let r = request.into_inner();
        self.broker.leave_group(&r.group, &r.member_id).map_err(to_status)?;
        Ok(Response::new(proto::LeaveGroupResponse {}))
    }

    async fn commit_offsets(
        &self,
        request: Request<proto::CommitOffsetsRequest>,
    ) -> Result<Response<proto::CommitOffsetsResponse>, Status> {
        let r = request.into_inner();
        let offsets = r.offsets.into_iter().map(convert::committed_in).collect();
        let broker = self.broker.clone();
        tokio::task::spawn_blocking(move || broker.commit_offsets(&r.group, &r.member_id, r.generation, offsets))
            .await
            .map_err(|e| Status::internal(e.to_string()))?
            .map_err(to_status)?;
        Ok(Response::new(proto::CommitOffsetsResponse {}))
    }

    async fn fetch_committed_offsets(
        &self,
        request: Request<proto::FetchCommittedOffsetsRequest>,
    ) -> Result<Response<proto::FetchCommittedOffsetsResponse>, Status> {
        let r = request.into_inner();
        let offsets = self.broker.committed_offsets(&r.group, r.topic.as_deref());
        Ok(Response::new(proto::FetchCommittedOffsetsResponse {
            offsets: offsets.into_iter().map(convert::committed_out).collect(),
        }))
    }

    async fn list_groups(
        &self,
        _request: Request<proto::ListGroupsRequest>,
    ) -> Result<Response<proto::ListGroupsResponse>, Status> {
        let groups = self
            .broker
            .list_groups()
            .into_iter()
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
        let info = self.broker.describe_group(&request.into_inner().group).map_err(to_status)?;
        Ok(Response::new(convert::group_description(info)))
    }

    async fn reset_group_offsets(
        &self,
        request: Request<proto::ResetGroupOffsetsRequest>,
    ) -> Result<Response<proto::ResetGroupOffsetsResponse>, Status> {
        let r = request.into_inner();
        let to = convert::position(r.to, Position::Earliest)?;
        let resets =
            self.broker.reset_group_offsets(&r.group, &r.topic_pattern, to, r.dry_run).await.map_err(to_status)?;
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
        self.broker.delete_group(&request.into_inner().group).await.map_err(to_status)?;
        Ok(Response::new(proto::DeleteGroupResponse {}))
    }
}

/// Subscribe responses, each with its share of the stream's read-ahead
/// budget, to drop once the connection has the bytes (`push.rs`).
pub type BudgetedStream = Pin<Box<dyn Stream<Item = Result<(proto::SubscribeResponse, BudgetPermit), Status>> + Send>>;

impl BrokerService {
    /// Subscribe, with or without a group.
    pub fn subscribe_budgeted(&self, r: proto::SubscribeRequest) -> Result<BudgetedStream, Status> {
        let fallback = match r.fallback {
            Some(b) => convert::boundary(b)?,
            None => Position::Latest,
        };
        if fallback == Position::Committed {
            return Err(Status::invalid_argument("fallback must be EARLIEST or LATEST"));
        }
        let delivery = if r.raw_batches { Delivery::Batches } else { Delivery::Records };
        if let Some(group) = r.group {
            let from = convert::position(r.from, Position::Committed)?;
            return self.subscribe_group(r.topic_pattern, group, (from, fallback), delivery);
        }
        let mut from = convert::position(r.from, Position::Latest)?;
        if from == Position::Committed {
            // No group, so nothing is committed: use the fallback.
            from = fallback;
        }
        let events = self.broker.subscribe(r.topic_pattern, from, delivery);
        // Mapped, not forwarded by a task: when the client goes away, the
        // response body and with it this receiver are dropped, and the
        // subscription's tasks see that at once.
        let messages = ReceiverStream::new(events).map(|event| {
            event.map_err(to_status).map(|(e, permit)| {
                let message = match e {
                    SubscriptionEvent::Assigned(held) => proto::SubscribeResponse {
                        assignments: held
                            .into_iter()
                            .map(|(topic, partitions)| proto::TopicPartitions { topic, partitions })
                            .collect(),
                        ..Default::default()
                    },
                    delivered => convert::subscribe_response(Some(delivered)),
                };
                (message, permit)
            })
        });
        Ok(self.until_shutdown(messages))
    }

    /// Subscribe with a group: the stream is the membership.
    fn subscribe_group(
        &self,
        pattern: String,
        group: String,
        (from, fallback): (Position, Position),
        delivery: Delivery,
    ) -> Result<BudgetedStream, Status> {
        let events = self.broker.subscribe_group(pattern, group, from, fallback, delivery).map_err(to_status)?;
        // Mapped, not forwarded by a task: a client that goes away drops the
        // receiver, and the membership ends at once (see `subscribe`).
        let messages = ReceiverStream::new(events).map(|event| {
            event.map_err(to_status).map(|e| {
                let message = proto::SubscribeResponse {
                    assignments: convert::assignments(&e.assignment),
                    member_id: e.member_id,
                    generation: e.generation,
                    ..convert::subscribe_response(e.records)
                };
                (message, e.permit)
            })
        });
        Ok(self.until_shutdown(messages))
    }

    /// Ends a response stream when the broker begins to shut down.
    fn until_shutdown<S>(&self, messages: S) -> BudgetedStream
    where
        S: Stream<Item = Result<(proto::SubscribeResponse, BudgetPermit), Status>> + Send + 'static,
    {
        let mut stopping = self.broker.watch_stopping();
        Box::pin(messages.take_until(async move { crate::broker::stopped(&mut stopping).await }))
    }
}
