//! Subscriptions without a group: a push stream over every partition of
//! every topic matching a glob, including topics created after it started.
//!
//! One task per partition reads from its cursor and sends batches into a
//! small bounded channel; the gRPC stream drains it only as fast as HTTP/2
//! flow control lets the client take data, so a slow subscriber slows only
//! its own stream. Every read first takes its size from the stream's
//! [`StreamBudget`], and the share travels with the delivery until the
//! listener has handed it to the connection: a subscriber that stops
//! reading holds at most its budget, however many partitions it follows.
//! A supervisor task watches topic creations. Every task ends when the
//! stream's receiver is dropped.

use std::collections::HashMap;
use std::sync::Arc;

use bytes::Bytes;
use tokio::sync::mpsc;

use std::pin::Pin;

use futures::{Stream, StreamExt};
use tokio_stream::wrappers::ReceiverStream;

use super::budget::{BudgetPermit, StreamBudget};
use super::groups::Membership;
use super::partition::{Encoded, Partition, ReadSink, RecordEncoding};
use super::topic::Topic;
use super::{Broker, BrokerError, Position};
use super::{Caller, SubscribeRequest};
use crate::config::{PUSH_BYTES_MAX, PUSH_RAW_BYTES_MAX, PUSH_RECORDS_MAX};
use crate::group::TopicPartition;
use crate::security::{Operation, Resource};
use crate::storage::batch::StoredRecord;

/// What a subscription stream carries.
#[derive(Debug, Clone)]
pub enum SubscriptionEvent {
    Records {
        topic: String,
        partition: u32,
        records: Vec<StoredRecord>,
    },
    /// Records a listener's encoding made as they were read
    /// ([`Delivery::Encoded`]): `first` is the first one's offset, `next`
    /// the offset after the last.
    Encoded {
        topic: String,
        partition: u32,
        first: u64,
        next: u64,
        records: Encoded,
    },
    /// Stored batches as they are (a raw subscription). The first batch may
    /// start before `from`, the first offset delivered; `next` is the offset
    /// after the last batch.
    Batches {
        topic: String,
        partition: u32,
        from: u64,
        next: u64,
        batches: Vec<Bytes>,
    },
    /// The partitions the stream now holds, by topic.
    Assigned(Vec<(String, Vec<u32>)>),
}

impl SubscriptionEvent {
    /// For a delivery: its partition, the first offset it delivers and the
    /// offset after it.
    pub fn span(&self) -> Option<(&str, u32, u64, u64)> {
        match self {
            SubscriptionEvent::Records { topic, partition, records } => {
                let (first, last) = (records.first()?, records.last()?);
                Some((topic, *partition, first.offset, last.offset + 1))
            }
            SubscriptionEvent::Batches { topic, partition, from, next, .. } => Some((topic, *partition, *from, *next)),
            SubscriptionEvent::Encoded { topic, partition, first, next, .. } => {
                Some((topic, *partition, *first, *next))
            }
            SubscriptionEvent::Assigned(_) => None,
        }
    }
}

/// How a subscription delivers what it reads.
#[derive(Clone)]
pub enum Delivery {
    /// Decoded records.
    Records,
    /// Stored batches as they are.
    Batches,
    /// Records encoded by the listener's sink while they are read, with
    /// nothing built per record in between.
    Encoded(RecordEncoding),
}

/// Encodings are equal when they are the same one.
impl PartialEq for Delivery {
    fn eq(&self, other: &Delivery) -> bool {
        match (self, other) {
            (Delivery::Records, Delivery::Records) | (Delivery::Batches, Delivery::Batches) => true,
            (Delivery::Encoded(a), Delivery::Encoded(b)) => Arc::ptr_eq(a, b),
            _ => false,
        }
    }
}

impl Eq for Delivery {}

impl std::fmt::Debug for Delivery {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Delivery::Records => "Records",
            Delivery::Batches => "Batches",
            Delivery::Encoded(_) => "Encoded",
        })
    }
}

/// A delivery and its share of the stream's budget (none for `Assigned`),
/// which the listener drops once the connection has the bytes.
pub type SubscriptionItem = Result<(SubscriptionEvent, BudgetPermit), BrokerError>;

impl Delivery {
    /// Bytes one read of this delivery takes (about).
    pub fn read_bytes(&self) -> usize {
        match self {
            Delivery::Records | Delivery::Encoded(_) => PUSH_BYTES_MAX,
            Delivery::Batches => PUSH_RAW_BYTES_MAX,
        }
    }
}

/// One message of a subscription.
#[derive(Debug)]
pub struct StreamMessage {
    /// Group streams, with every message: the membership (member id,
    /// generation and the partitions it holds).
    pub membership: Option<Membership>,
    /// Streams without a group, when it changes: every partition streamed.
    pub streaming: Option<Vec<TopicPartition>>,
    /// Records or batches, if this message carries any.
    pub delivery: Option<SubscriptionEvent>,
    /// The delivery's share of the stream's budget: drop it once the
    /// connection has the bytes.
    pub permit: BudgetPermit,
}

/// A subscription's messages; dropping it ends the subscription (and, with
/// a group, the membership) at once.
pub type Subscription = Pin<Box<dyn Stream<Item = Result<StreamMessage, BrokerError>> + Send>>;

impl Broker {
    /// A push subscription. Without a group, every partition of every
    /// matching topic is streamed from `from` (default `Latest`; topics
    /// created later from their beginning). With a group, the stream is a
    /// group membership: it streams the partitions assigned to it, each
    /// from `from` (default: the committed offset, else `fallback`, default
    /// `Latest`), and follows rebalances. It ends when the broker shuts down.
    pub fn subscribe(
        self: &Arc<Self>,
        caller: &Caller,
        request: SubscribeRequest,
    ) -> Result<Subscription, BrokerError> {
        self.check_running()?;
        let SubscribeRequest { pattern, group, from, fallback, delivery } = request;
        let fallback = fallback.unwrap_or(Position::Latest);
        if matches!(fallback, Position::Committed | Position::Offset(_) | Position::Timestamp(_)) {
            return Err(BrokerError::InvalidRequest("fallback must be EARLIEST or LATEST".into()));
        }
        let mut stopping = self.watch_stopping();
        let until_shutdown = async move { super::stopped(&mut stopping).await };
        if let Some(group) = group {
            let from = from.unwrap_or(Position::Committed);
            let events = self.subscribe_group(caller, pattern, group, (from, fallback), delivery)?;
            let messages = ReceiverStream::new(events).map(|event| {
                event.map(|e| StreamMessage {
                    membership: Some(Membership {
                        member_id: e.member_id,
                        generation: e.generation,
                        assignment: e.assignment,
                    }),
                    streaming: None,
                    delivery: e.records,
                    permit: e.permit,
                })
            });
            return Ok(Box::pin(messages.take_until(until_shutdown)));
        }
        // No group, so nothing is committed: COMMITTED means the fallback.
        let from = match from.unwrap_or(Position::Latest) {
            Position::Committed => fallback,
            other => other,
        };
        let events = self.subscribe_all(caller.clone(), pattern, from, delivery);
        // Mapped, not forwarded by a task: when the listener drops the
        // stream (its client went away), the partition tasks see it at once.
        let messages = ReceiverStream::new(events).map(|event| {
            event.map(|(e, permit)| match e {
                SubscriptionEvent::Assigned(held) => StreamMessage {
                    membership: None,
                    streaming: Some(
                        held.into_iter().flat_map(|(t, ps)| ps.into_iter().map(move |p| (t.clone(), p))).collect(),
                    ),
                    delivery: None,
                    permit,
                },
                delivered => StreamMessage { membership: None, streaming: None, delivery: Some(delivered), permit },
            })
        });
        Ok(Box::pin(messages.take_until(until_shutdown)))
    }

    /// Streams every partition of every topic matching `pattern`, starting
    /// at `from`; topics created later are streamed from their beginning.
    fn subscribe_all(
        self: &Arc<Self>,
        caller: Caller,
        pattern: String,
        from: Position,
        delivery: Delivery,
    ) -> mpsc::Receiver<SubscriptionItem> {
        let (tx, rx) = mpsc::channel(4);
        let broker = self.clone();
        let budget = self.stream_budget();
        tokio::spawn(async move {
            let mut version = broker.watch_topics();
            let mut acl = broker.authorizer().watch();
            let mut streaming: HashMap<String, Arc<Topic>> = HashMap::new();
            let mut first = true;
            loop {
                version.borrow_and_update();
                // Only topics the caller may consume (security on).
                let topics: Vec<_> = broker
                    .matching_topics(&pattern)
                    .into_iter()
                    .filter(|t| {
                        broker.authorizer().allows(&caller, Operation::Consume, &Resource::Topic(t.name.clone()))
                    })
                    .collect();
                let mut changed = first;
                for topic in &topics {
                    let before = streaming.get(&topic.name);
                    if before.is_some_and(|t| Arc::ptr_eq(t, topic)) {
                        continue;
                    }
                    changed = true;
                    let start = if first { from } else { Position::Earliest };
                    // A topic that grew keeps its partitions (the same ones):
                    // only the added ones start streaming, from their start.
                    let streamed =
                        |p: &Arc<Partition>| before.is_some_and(|t| t.partitions.iter().any(|q| Arc::ptr_eq(p, q)));
                    for p in topic.partitions.iter().filter(|p| !streamed(p)) {
                        let (p, tx, budget) = (p.clone(), tx.clone(), budget.clone());
                        tokio::spawn(stream_partition(broker.clone(), p, start, delivery.clone(), tx, budget));
                    }
                    streaming.insert(topic.name.clone(), topic.clone());
                }
                streaming.retain(|name, _| topics.iter().any(|t| &t.name == name));
                if changed {
                    let held =
                        topics.iter().map(|t| (t.name.clone(), t.partitions.iter().map(|p| p.id).collect())).collect();
                    if tx.send(Ok((SubscriptionEvent::Assigned(held), BudgetPermit::none()))).await.is_err() {
                        return;
                    }
                }
                first = false;
                tokio::select! {
                    r = version.changed() => if r.is_err() { return },
                    _ = acl.changed() => {
                        // Reloaded ACLs: a topic streamed but no longer
                        // allowed ends the subscription.
                        for name in streaming.keys() {
                            let topic = Resource::Topic(name.clone());
                            if let Err(e) = broker.authorizer().authorize(&caller, Operation::Consume, &topic) {
                                let _ = tx.send(Err(e)).await;
                                return;
                            }
                        }
                    }
                    _ = tx.closed() => return,
                }
            }
        });
        rx
    }
}

/// Pushes one partition's records from `from` on until the receiver goes.
pub async fn stream_partition(
    broker: Arc<Broker>,
    partition: Arc<Partition>,
    from: Position,
    delivery: Delivery,
    tx: mpsc::Sender<SubscriptionItem>,
    budget: StreamBudget,
) {
    let mut offset = match broker.resolve(&partition, from).await {
        Ok(o) => o,
        Err(e) => {
            let _ = tx.send(Err(e)).await;
            return;
        }
    };
    let mut hw = partition.watch();
    loop {
        let permit = tokio::select! {
            p = budget.acquire(delivery.read_bytes()) => p,
            _ = tx.closed() => return,
        };
        match read_next(&partition, offset, &delivery).await {
            Ok(Some(event)) => {
                offset = event.span().map_or(offset, |(_, _, _, next)| next);
                if tx.send(Ok((event, permit))).await.is_err() {
                    return;
                }
                continue;
            }
            Ok(None) => drop(permit),
            Err(BrokerError::OffsetOutOfRange { log_start_offset, .. }) if offset < log_start_offset => {
                // Retention deleted what this stream had not read yet: go on
                // from the oldest record still there (Kafka's "earliest" reset).
                tracing::warn!(topic = %partition.topic, partition = partition.id, from = offset, to = log_start_offset, "subscriber fell behind retention; skipping ahead");
                offset = log_start_offset;
                continue;
            }
            Err(e) => {
                let _ = tx.send(Err(e)).await;
                return;
            }
        }
        hw.borrow_and_update();
        if partition.log.high_watermark() > offset {
            continue;
        }
        tokio::select! {
            r = hw.changed() => if r.is_err() { return },
            _ = tx.closed() => return,
        }
    }
}

/// The next delivery of a partition from `offset`, or None at its end.
async fn read_next(
    partition: &Arc<Partition>,
    offset: u64,
    delivery: &Delivery,
) -> Result<Option<SubscriptionEvent>, BrokerError> {
    let (topic, id) = (partition.topic.clone(), partition.id);
    Ok(match delivery {
        Delivery::Records => {
            let read = partition.read(offset, PUSH_RECORDS_MAX, PUSH_BYTES_MAX).await?;
            (!read.records.is_empty()).then_some(SubscriptionEvent::Records {
                topic,
                partition: id,
                records: read.records,
            })
        }
        Delivery::Encoded(encoding) => {
            let sink = encoding(&topic, id);
            let read = partition.read_into(offset, PUSH_RECORDS_MAX, PUSH_BYTES_MAX, sink).await?;
            partition.count_fetched(read.records.len() as u64, read.batch_bytes);
            read.first_offset.map(|first| SubscriptionEvent::Encoded {
                topic,
                partition: id,
                first,
                next: read.next_offset,
                records: read.records.finish(),
            })
        }
        Delivery::Batches => {
            let read = partition.read_raw(offset, PUSH_RAW_BYTES_MAX).await?;
            read.next_offset().map(|next| SubscriptionEvent::Batches {
                topic,
                partition: id,
                from: offset,
                next,
                batches: read.batches,
            })
        }
    })
}
