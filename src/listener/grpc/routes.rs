//! The routes of `strata.v1.Broker` that strata answers itself, and the
//! limits every request of the service is read under.
//!
//! - **Zero-copy responses.** tonic encodes every response message into one
//!   buffer, so a raw subscription copied each pushed batch from the
//!   segment's mapping into that buffer before the kernel copied it again
//!   into the socket: 11% of the CPU of a page-cache read on a 2-core VM.
//!   Subscribe and Fetch are framed here as gRPC messages whose
//!   `record_batches` are the stored bytes themselves, as separate body
//!   chunks; hyper sends a chunk above 256 bytes with a vectored write from
//!   where it lies. Everything else of a message is encoded by prost.
//! - **Requests decoded from the frames they arrive in** (Produce and
//!   ProduceStream): tonic copied each into a fresh buffer first (12% of
//!   the CPU of a raw produce); a record batch now stays a slice of the
//!   received frame until it is written.
//! - **Bounded memory per client.** Every request is read under the
//!   broker's request budget (`budget.rs`): its declared size is taken
//!   before the rest is read, so while the budget is spent flow control
//!   holds senders back; a request must arrive whole within
//!   `request_read_timeout_ms` of its first byte; a produce request's
//!   records and headers are counted before it is decoded, and what
//!   decoding them will take is budgeted too (16 MiB of empty records
//!   once took 2.6 GB). A Subscribe response keeps its share of the
//!   stream's read-ahead budget until hyper has its bytes, and chunks are
//!   handed over at most `PUSH_CHUNK_BYTES_MAX` at a time, so a stalled
//!   subscriber holds its budget and one chunk, not a backlog.
//!
//! Every other method is read here under the same limits, then handed to
//! tonic's generated service as a complete body.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Buf, Bytes};
use futures::future::BoxFuture;
use futures::{Stream, StreamExt};
use http_body::Frame;
use http_body_util::BodyExt;
use prost::Message;
use tokio::time::Instant;
use tonic::body::Body;
use tonic::metadata::MetadataMap;
use tonic::server::NamedService;
use tonic::{Request, Status};

use super::codec::{frame_plain, frame_records, frame_with_records, Frames, WireRecords, GRPC_PREFIX};
use super::convert;
use super::service::BrokerService;
use super::status::to_status;
use crate::broker::budget::{BudgetPermit, RequestBudget};
use crate::broker::produce::in_place;
use crate::broker::{BrokerError, Caller, PipelineItem, Via};
use crate::config::{
    DECODED_HEADER_BYTES, DECODED_RECORD_BYTES, DECODE_BUDGET_WAIT, DECODE_INLINE_BYTES_MAX, DECODE_INLINE_RECORDS_MAX,
    HEADERS_PER_RECORD_MAX, PUSH_CHUNK_BYTES_MAX,
};
use crate::listener::accept::PeerInfo;
use crate::proto;
use crate::proto::broker_server::Broker as _;

/// The routes this module answers.
pub const SUBSCRIBE_PATH: &str = "/strata.v1.Broker/Subscribe";
pub const FETCH_PATH: &str = "/strata.v1.Broker/Fetch";
pub const PRODUCE_PATH: &str = "/strata.v1.Broker/Produce";
pub const PRODUCE_STREAM_PATH: &str = "/strata.v1.Broker/ProduceStream";
pub const SHARE_SUBSCRIBE_PATH: &str = "/strata.v1.Broker/ShareSubscribe";

/// The unary methods of `strata.v1.Broker`, whose durations are kept in
/// `strata_request_duration_seconds` (a test checks the list against the
/// proto). Streams (Subscribe, ProduceStream) last as long as the client
/// wants and are not timed.
pub const UNARY_METHODS: &[&str] = &[
    "CreateTopic",
    "DeleteTopic",
    "ListTopics",
    "DescribeTopic",
    "AlterTopicConfig",
    "CreatePartitions",
    "InitProducer",
    "Produce",
    "Fetch",
    "ListOffsets",
    "JoinGroup",
    "Heartbeat",
    "LeaveGroup",
    "CommitOffsets",
    "FetchCommittedOffsets",
    "ListGroups",
    "DescribeGroup",
    "ResetGroupOffsets",
    "DeleteGroup",
    "ShareFetch",
    "Acknowledge",
    "AlterShareGroup",
    "DescribeShareGroup",
    "ListShareGroups",
    "DeleteShareGroup",
    "RedriveDeadLetters",
    "CreateAlertRule",
    "ListAlertRules",
    "DescribeAlertRule",
    "DeleteAlertRule",
];

/// Field numbers of `record_batches` in the two responses.
const SUBSCRIBE_BATCHES_FIELD: u8 = 9;
pub(super) const FETCH_BATCHES_FIELD: u8 = 5;
/// Field numbers in `ProduceRequest` and `Record`, for counting before decoding.
const PRODUCE_RECORDS_FIELD: u64 = 3;
const PRODUCE_BATCH_FIELD: u64 = 7;
const RECORD_HEADERS_FIELD: u64 = 3;

/// The limits every request of the service is read under.
#[derive(Debug, Clone)]
pub struct RequestLimits {
    /// Largest message.
    pub message_bytes_max: usize,
    /// A message must arrive whole within this long of its first byte.
    pub read_timeout: Duration,
    /// Most records one produce request may carry.
    pub records_max: usize,
    /// Bytes of requests in flight, broker wide.
    pub budget: RequestBudget,
}

/// The generated `strata.v1.Broker` service, with Subscribe, Fetch, Produce
/// and ProduceStream answered here and every request read under limits.
#[derive(Debug, Clone)]
pub struct Routes<S> {
    /// tonic's generated server: every other method.
    inner: S,
    /// The handlers these routes run.
    service: BrokerService,
    limits: RequestLimits,
    /// Duration histograms of the unary methods, by path.
    durations: std::sync::Arc<std::collections::HashMap<String, prometheus_client::metrics::histogram::Histogram>>,
}

impl<S> Routes<S> {
    pub fn new(inner: S, service: BrokerService, limits: RequestLimits) -> Self {
        let metrics = service.broker.metrics();
        let durations = UNARY_METHODS
            .iter()
            .map(|m| (format!("/strata.v1.Broker/{m}"), metrics.request_histogram("grpc", m)))
            .collect();
        Routes { inner, service, limits, durations: std::sync::Arc::new(durations) }
    }
}

/// The principal [`Routes`] authenticated a request as.
#[derive(Debug, Clone)]
pub struct Authenticated(pub Option<String>);

/// The caller of a request, from the connection info tonic put in it and
/// the principal authenticated here.
pub fn caller_of(extensions: &http::Extensions) -> Caller {
    let peer = extensions.get::<PeerInfo>().and_then(|i| i.remote);
    let mut caller = Caller::anonymous(Via::Grpc, peer);
    caller.principal = extensions.get::<Authenticated>().and_then(|a| a.0.clone());
    caller
}

/// The bearer token of `authorization: Bearer <token>`.
fn bearer(headers: &http::HeaderMap) -> Option<&[u8]> {
    let value = headers.get(http::header::AUTHORIZATION)?.as_bytes();
    let token = value.strip_prefix(b"Bearer ").or_else(|| value.strip_prefix(b"bearer "))?;
    Some(token.trim_ascii())
}

impl<S: NamedService> NamedService for Routes<S> {
    const NAME: &'static str = S::NAME;
}

impl<S> tower::Service<http::Request<Body>> for Routes<S>
where
    S: tower::Service<http::Request<Body>, Response = http::Response<Body>, Error = Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = BoxFuture<'static, Result<http::Response<Body>, Infallible>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: http::Request<Body>) -> Self::Future {
        // Who is calling, before anything is read: no or bad credentials
        // (with security on) are refused here, for every method.
        let cn = request.extensions().get::<PeerInfo>().and_then(|i| i.cn.clone());
        match self.service.broker.authorizer().authenticate(bearer(request.headers()), cn.as_deref()) {
            Ok(principal) => {
                request.extensions_mut().insert(Authenticated(principal));
            }
            Err(e) => {
                tracing::info!(path = request.uri().path(), error = %e, "refused an unauthenticated call");
                return Box::pin(std::future::ready(Ok(to_status(e).into_http())));
            }
        }
        let timer = self.durations.get(request.uri().path()).cloned().map(crate::metrics::Timer::start);
        let answer = self.route(request);
        match timer {
            None => answer,
            Some(timer) => Box::pin(async move {
                let response = answer.await;
                drop(timer);
                response
            }),
        }
    }
}

impl<S> Routes<S>
where
    S: tower::Service<http::Request<Body>, Response = http::Response<Body>, Error = Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    fn route(&mut self, request: http::Request<Body>) -> BoxFuture<'static, Result<http::Response<Body>, Infallible>> {
        let (service, limits) = (self.service.clone(), self.limits.clone());
        match request.uri().path() {
            SUBSCRIBE_PATH => Box::pin(async move { Ok(respond(subscribe(service, request, limits).await)) }),
            FETCH_PATH => Box::pin(async move { Ok(respond(fetch(service, request, limits).await)) }),
            PRODUCE_PATH => Box::pin(async move { Ok(respond(produce(service, request, limits).await)) }),
            PRODUCE_STREAM_PATH => Box::pin(async move { Ok(respond(Ok(produce_stream(service, request, limits)))) }),
            path => {
                // The generated service is always ready; take the one that
                // was polled and leave a clone in its place.
                let ready = self.inner.clone();
                let mut inner = std::mem::replace(&mut self.inner, ready);
                if path == SHARE_SUBSCRIBE_PATH {
                    // A stream of small acknowledgements that lasts as long
                    // as the member: tonic decodes it message by message,
                    // each under max_request_bytes.
                    return Box::pin(async move { inner.call(request).await });
                }
                Box::pin(buffered(inner, request, limits))
            }
        }
    }
}

/// Any other method: its one request message read under the limits, then
/// the call to tonic's route with the message as a complete body. The
/// request's share of the budget is held until the handler is done.
async fn buffered<S>(
    mut inner: S,
    request: http::Request<Body>,
    limits: RequestLimits,
) -> Result<http::Response<Body>, Infallible>
where
    S: tower::Service<http::Request<Body>, Response = http::Response<Body>, Error = Infallible>,
{
    let (parts, body) = request.into_parts();
    let mut reader = MessageReader::new(body, limits);
    let (bytes, _permit) = match reader.only_raw().await {
        Ok(read) => read,
        Err(e) => return Ok(to_status(e).into_http()),
    };
    let body = Body::new(http_body_util::Full::new(bytes));
    inner.call(http::Request::from_parts(parts, body)).await
}

/// Runs the Subscribe handler and streams its answer; each message keeps
/// its share of the stream's budget until hyper has all of it.
async fn subscribe(
    service: BrokerService,
    request: http::Request<Body>,
    limits: RequestLimits,
) -> Result<Framed, Status> {
    let (request, _permit) = decode_request::<proto::SubscribeRequest>(request, limits).await?;
    let caller = caller_of(request.extensions());
    let stream = service.subscribe_budgeted(&caller, request.into_inner(), true)?;
    Ok(Box::pin(stream.map(|m| m.map(|((head, records), permit)| (frame_subscribe_parts(head, records), permit)))))
}

/// Runs the Fetch handler: its one message, then the status.
async fn fetch(service: BrokerService, request: http::Request<Body>, limits: RequestLimits) -> Result<Framed, Status> {
    let ahead = request.extensions().get::<PeerInfo>().map(|i| i.fetch_ahead.clone());
    let (request, _permit) = decode_request::<proto::FetchRequest>(request, limits).await?;
    let chunks = super::ahead::fetch(&service, request, ahead).await?;
    Ok(Box::pin(futures::stream::once(futures::future::ready(Ok((chunks, BudgetPermit::none()))))))
}

/// Runs the Produce handler on a request decoded from its frames.
async fn produce(
    service: BrokerService,
    request: http::Request<Body>,
    limits: RequestLimits,
) -> Result<Framed, Status> {
    let (parts, body) = request.into_parts();
    let mut reader = MessageReader::new(body, limits);
    let (message, _permit) = reader.only::<proto::ProduceRequest>(count_produce).await.map_err(to_status)?;
    let request = Request::from_parts(MetadataMap::from_headers(parts.headers), parts.extensions, message);
    let response = service.produce(request).await?.into_inner();
    Ok(Box::pin(futures::stream::once(futures::future::ready(Ok((frame_plain(&response), BudgetPermit::none()))))))
}

/// Runs the ProduceStream handler over requests decoded from the frames
/// they arrive in. A request refused before decoding (too large, too many
/// records, malformed) is answered with its error and the stream goes on.
fn produce_stream(service: BrokerService, request: http::Request<Body>, limits: RequestLimits) -> Framed {
    let caller =
        caller_of(request.extensions()).with_trace(crate::telemetry::TraceContext::from_headers(request.headers()));
    let reader = MessageReader::new(request.into_body(), limits);
    let requests = futures::stream::unfold(Some(reader), |state| async move {
        let mut reader = state?;
        let item = match reader.next::<proto::ProduceRequest>(count_produce).await {
            Ok(Read::Message(m, permit)) => {
                PipelineItem { tag: m.request_id, request: convert::produce_request(m), permit }
            }
            Ok(Read::Refused(e)) => PipelineItem { tag: 0, request: Err(e), permit: BudgetPermit::none() },
            Ok(Read::End) => return None,
            Err(e) => return Some((Err(e), None)),
        };
        Some((Ok(item), Some(reader)))
    });
    let responses = service.produce_stream_of(caller, Box::pin(requests));
    Box::pin(responses.map(|m| m.map(|m| (frame_plain(&m), BudgetPermit::none()))))
}

/// Response messages, each already framed as body chunks, with the share
/// of a budget they hold.
type Framed = Pin<Box<dyn Stream<Item = Result<(VecDeque<Bytes>, BudgetPermit), Status>> + Send>>;

/// The HTTP response for a handler's outcome: its messages then trailers,
/// or, refused before any message, a trailers-only response.
fn respond(outcome: Result<Framed, Status>) -> http::Response<Body> {
    match outcome {
        Ok(messages) => {
            let body = PushBody { messages, queued: VecDeque::new(), holding: BudgetPermit::none(), ended: false };
            let mut response = http::Response::new(Body::new(body));
            response
                .headers_mut()
                .insert(http::header::CONTENT_TYPE, http::HeaderValue::from_static("application/grpc"));
            response
        }
        Err(status) => status.into_http(),
    }
}

/// Decodes the one message of a unary request body, under the limits.
async fn decode_request<M: Message + Default>(
    request: http::Request<Body>,
    limits: RequestLimits,
) -> Result<(Request<M>, BudgetPermit), Status> {
    let (parts, body) = request.into_parts();
    let mut reader = MessageReader::new(body, limits);
    let (message, permit) = reader.only::<M>(|_, _| Ok(Counts::default())).await.map_err(to_status)?;
    Ok((Request::from_parts(MetadataMap::from_headers(parts.headers), parts.extensions, message), permit))
}

/// What a message will take to decode beyond its bytes.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct Counts {
    records: usize,
    headers: usize,
}

/// One step of reading a stream of request messages.
#[derive(Debug)]
enum Read<M> {
    Message(M, BudgetPermit),
    /// This message was refused (and skipped); the stream goes on.
    Refused(BrokerError),
    End,
}

/// Reads gRPC messages from a request body under the limits.
struct MessageReader {
    body: Body,
    frames: Frames,
    limits: RequestLimits,
}

impl MessageReader {
    fn new(body: Body, limits: RequestLimits) -> Self {
        let frames = Frames::new(usize::MAX);
        MessageReader { body, frames, limits }
    }

    /// Reads frames until `want` bytes are buffered; false when the body
    /// ended first. Past `deadline`, DEADLINE_EXCEEDED.
    async fn fill(&mut self, want: usize, deadline: Option<Instant>) -> Result<bool, BrokerError> {
        while self.frames.remaining() < want {
            let frame = match deadline {
                None => self.body.frame().await,
                Some(d) => match tokio::time::timeout_at(d, self.body.frame()).await {
                    Ok(f) => f,
                    Err(_) => {
                        let timeout_ms = self.limits.read_timeout.as_millis() as u64;
                        return Err(BrokerError::RequestTimeout { timeout_ms });
                    }
                },
            };
            match frame {
                Some(Ok(frame)) => {
                    if let Ok(data) = frame.into_data() {
                        self.frames.push(data);
                    }
                }
                Some(Err(e)) => return Err(BrokerError::ConnectionFailed(e.to_string())),
                None => return Ok(false),
            }
        }
        Ok(true)
    }

    /// Reads and drops `n` bytes, never holding more than a frame of them.
    async fn skip(&mut self, mut n: usize, deadline: Instant) -> Result<(), BrokerError> {
        while n > 0 {
            if self.frames.remaining() == 0 && !self.fill(1, Some(deadline)).await? {
                return Err(ended_inside());
            }
            let step = n.min(self.frames.remaining());
            self.frames.advance(step);
            n -= step;
        }
        Ok(())
    }

    /// The next message's bytes (prefix removed, left in `frames`) and its
    /// share of the budget; `Refused` for a message that cannot be taken.
    async fn next_raw(&mut self, deadline: Option<Instant>) -> Result<Read<usize>, BrokerError> {
        if !self.fill(1, deadline).await? {
            return Ok(Read::End);
        }
        let deadline = deadline.unwrap_or_else(|| Instant::now() + self.limits.read_timeout);
        if !self.fill(GRPC_PREFIX, Some(deadline)).await? {
            return Err(ended_inside());
        }
        let mut prefix = [0u8; GRPC_PREFIX];
        self.frames.peek(&mut prefix);
        self.frames.advance(GRPC_PREFIX);
        let len = u32::from_be_bytes([prefix[1], prefix[2], prefix[3], prefix[4]]) as usize;
        let max = self.limits.message_bytes_max;
        if len > max {
            self.skip(len, deadline).await?;
            let refused = BrokerError::RequestTooLarge { size: len, limit: max, setting: "max_request_bytes" };
            return Ok(Read::Refused(refused));
        }
        if prefix[0] != 0 {
            self.skip(len, deadline).await?;
            return Ok(Read::Refused(BrokerError::Unsupported("compressed requests are not supported".into())));
        }
        let permit = self.limits.budget.acquire(GRPC_PREFIX + len).await?;
        if !self.fill(len, Some(deadline)).await? {
            return Err(ended_inside());
        }
        Ok(Read::Message(len, permit))
    }

    /// The next message, counted with `count` and budgeted before decoding.
    async fn next<M: Message + Default>(
        &mut self,
        count: fn(&Frames, usize) -> Result<Counts, String>,
    ) -> Result<Read<M>, BrokerError> {
        self.next_with::<M>(None, count).await
    }

    async fn next_with<M: Message + Default>(
        &mut self,
        deadline: Option<Instant>,
        count: fn(&Frames, usize) -> Result<Counts, String>,
    ) -> Result<Read<M>, BrokerError> {
        let (len, mut permit) = match self.next_raw(deadline).await? {
            Read::Message(len, permit) => (len, permit),
            Read::Refused(status) => return Ok(Read::Refused(status)),
            Read::End => return Ok(Read::End),
        };
        let name = std::any::type_name::<M>().rsplit("::").next().unwrap_or("request");
        let counts = match count(&self.frames, len) {
            Ok(c) => c,
            Err(why) => {
                self.frames.advance(len);
                return Ok(Read::Refused(BrokerError::MalformedRequest { what: name.to_string(), why }));
            }
        };
        if counts.records > self.limits.records_max {
            self.frames.advance(len);
            return Ok(Read::Refused(BrokerError::TooManyRecords {
                records: counts.records,
                max: self.limits.records_max,
            }));
        }
        let decoded = counts.records * DECODED_RECORD_BYTES + counts.headers * DECODED_HEADER_BYTES;
        if decoded > 0 {
            match self.limits.budget.acquire_within(decoded, DECODE_BUDGET_WAIT).await {
                Some(extra) => permit.merge(extra),
                None => {
                    self.frames.advance(len);
                    return Ok(Read::Refused(BrokerError::Busy(format!(
                        "the broker has no room to decode a request of {} records now \
                         (queued.max.request.bytes = {}); retry",
                        counts.records,
                        self.limits.budget.total()
                    ))));
                }
            }
        }
        let heavy = len >= DECODE_INLINE_BYTES_MAX || counts.records >= DECODE_INLINE_RECORDS_MAX;
        let decoded =
            if heavy { in_place(|| decode::<M>(&mut self.frames, len)) } else { decode(&mut self.frames, len) };
        Ok(match decoded {
            Ok(m) => Read::Message(m, permit),
            Err(status) => Read::Refused(status),
        })
    }

    /// The one message of a unary request (anything after it is an error),
    /// received within the read timeout.
    async fn only<M: Message + Default>(
        &mut self,
        count: fn(&Frames, usize) -> Result<Counts, String>,
    ) -> Result<(M, BudgetPermit), BrokerError> {
        let deadline = Instant::now() + self.limits.read_timeout;
        let read = self.next_with::<M>(Some(deadline), count).await?;
        let (message, permit) = match read {
            Read::Message(m, permit) => (m, permit),
            Read::Refused(e) => return Err(e),
            Read::End => return Err(no_message()),
        };
        self.expect_end(deadline).await?;
        Ok((message, permit))
    }

    /// The one message of a unary request as bytes, prefix included.
    async fn only_raw(&mut self) -> Result<(Bytes, BudgetPermit), BrokerError> {
        let deadline = Instant::now() + self.limits.read_timeout;
        let (len, permit) = match self.next_raw(Some(deadline)).await? {
            Read::Message(len, permit) => (len, permit),
            Read::Refused(e) => return Err(e),
            Read::End => return Err(no_message()),
        };
        let mut bytes = bytes::BytesMut::with_capacity(GRPC_PREFIX + len);
        bytes.extend_from_slice(&[0]);
        bytes.extend_from_slice(&(len as u32).to_be_bytes());
        bytes.extend_from_slice(&self.frames.copy_to_bytes(len));
        self.expect_end(deadline).await?;
        Ok((bytes.freeze(), permit))
    }

    async fn expect_end(&mut self, deadline: Instant) -> Result<(), BrokerError> {
        if self.frames.remaining() > 0 || self.fill(1, Some(deadline)).await? {
            let why = "more than one gRPC message in a unary call".into();
            return Err(BrokerError::MalformedRequest { what: "request".into(), why });
        }
        Ok(())
    }
}

fn ended_inside() -> BrokerError {
    BrokerError::MalformedRequest { what: "request".into(), why: "the request stream ended inside a message".into() }
}

fn no_message() -> BrokerError {
    BrokerError::MalformedRequest { what: "request".into(), why: "no gRPC message in the body".into() }
}

/// Decodes the first `len` bytes of `frames` (consuming them).
fn decode<M: Message + Default>(frames: &mut Frames, len: usize) -> Result<M, BrokerError> {
    M::decode(Buf::take(&mut *frames, len)).map_err(|e| {
        let name = std::any::type_name::<M>().rsplit("::").next().unwrap_or("request");
        BrokerError::MalformedRequest { what: name.to_string(), why: e.to_string() }
    })
}

/// Counts a ProduceRequest's records and their headers without decoding
/// it: a walk over the protobuf fields (and the record batch's header).
fn count_produce(frames: &Frames, len: usize) -> Result<Counts, String> {
    let mut view = frames.prefix(len);
    let mut counts = Counts::default();
    while view.has_remaining() {
        let (field, wire) = read_key(&mut view)?;
        match (field, wire) {
            (PRODUCE_RECORDS_FIELD, 2) => {
                let n = read_len(&mut view)?;
                let mut record = view.prefix(n);
                counts.records += 1;
                counts.headers += count_headers(&mut record)?;
                view.advance(n);
            }
            (PRODUCE_BATCH_FIELD, 2) => {
                let n = read_len(&mut view)?;
                let mut header = [0u8; crate::storage::batch::HEADER_LEN];
                if n >= header.len() {
                    view.prefix(header.len()).copy_to_slice(&mut header);
                    counts.records += crate::storage::batch::BatchHeader::parse(&header, usize::MAX)
                        .map(|h| h.record_count as usize)
                        .unwrap_or(0);
                }
                view.advance(n);
            }
            (_, wire) => skip_field(&mut view, wire)?,
        }
    }
    Ok(counts)
}

/// Headers of one encoded `Record`; more than a record may have is refused here.
fn count_headers(record: &mut Frames) -> Result<usize, String> {
    let mut headers = 0;
    while record.has_remaining() {
        let (field, wire) = read_key(record)?;
        if field == RECORD_HEADERS_FIELD && wire == 2 {
            headers += 1;
            if headers > HEADERS_PER_RECORD_MAX {
                return Err(format!("a record has more than {HEADERS_PER_RECORD_MAX} headers"));
            }
        }
        skip_field(record, wire)?;
    }
    Ok(headers)
}

fn read_key(buf: &mut Frames) -> Result<(u64, u64), String> {
    let key = prost::encoding::decode_varint(buf).map_err(|e| e.to_string())?;
    Ok((key >> 3, key & 7))
}

fn read_len(buf: &mut Frames) -> Result<usize, String> {
    let n = prost::encoding::decode_varint(buf).map_err(|e| e.to_string())? as usize;
    if n > buf.remaining() {
        return Err(format!("a field of {n} bytes runs past the end of the message"));
    }
    Ok(n)
}

fn skip_field(buf: &mut Frames, wire: u64) -> Result<(), String> {
    let n = match wire {
        0 => {
            prost::encoding::decode_varint(buf).map_err(|e| e.to_string())?;
            0
        }
        1 => 8,
        2 => read_len(buf)?,
        5 => 4,
        w => return Err(format!("unsupported wire type {w}")),
    };
    if n > buf.remaining() {
        return Err("a field runs past the end of the message".into());
    }
    buf.advance(n);
    Ok(())
}

/// The response body: each message's chunks, then the status in trailers.
struct PushBody {
    messages: Framed,
    /// Chunks of the message being sent.
    queued: VecDeque<Bytes>,
    /// The budget share of the message being sent, given back once hyper
    /// has the last of its chunks.
    holding: BudgetPermit,
    /// Trailers sent: the stream is over.
    ended: bool,
}

impl PushBody {
    /// The next piece of the queued chunks, at most `PUSH_CHUNK_BYTES_MAX`.
    fn next_piece(&mut self) -> Option<Bytes> {
        let front = self.queued.front_mut()?;
        let piece = if front.len() > PUSH_CHUNK_BYTES_MAX {
            front.split_to(PUSH_CHUNK_BYTES_MAX)
        } else {
            self.queued.pop_front().expect("a front chunk")
        };
        if self.queued.is_empty() {
            self.holding = BudgetPermit::none();
        }
        Some(piece)
    }
}

impl http_body::Body for PushBody {
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Status>>> {
        if let Some(piece) = self.next_piece() {
            return Poll::Ready(Some(Ok(Frame::data(piece))));
        }
        if self.ended {
            return Poll::Ready(None);
        }
        let status = match self.messages.as_mut().poll_next(cx) {
            Poll::Pending => return Poll::Pending,
            Poll::Ready(Some(Ok((chunks, permit)))) => {
                self.queued = chunks;
                self.holding = permit;
                let piece = self.next_piece().expect("a message has at least its prefix");
                return Poll::Ready(Some(Ok(Frame::data(piece))));
            }
            Poll::Ready(Some(Err(status))) => status,
            Poll::Ready(None) => Status::ok(""),
        };
        self.ended = true;
        let mut trailers = http::HeaderMap::new();
        status.add_header(&mut trailers).map_err(|_| Status::internal("unencodable status"))?;
        Poll::Ready(Some(Ok(Frame::trailers(trailers))))
    }

    fn is_end_stream(&self) -> bool {
        self.ended && self.queued.is_empty()
    }
}

/// The frames of a SubscribeResponse, records and batches included.
pub fn frame_subscribe_response(mut message: proto::SubscribeResponse) -> VecDeque<Bytes> {
    let batches = std::mem::take(&mut message.record_batches);
    let records = std::mem::take(&mut message.records);
    frame_records(&message, records, batches, SUBSCRIBE_BATCHES_FIELD)
}

/// The frames of a SubscribeResponse whose records are as stored or
/// encoded as they were read.
fn frame_subscribe_parts(mut head: proto::SubscribeResponse, records: Option<WireRecords>) -> VecDeque<Bytes> {
    let batches = std::mem::take(&mut head.record_batches);
    let records = records.map(WireRecords::into_chunks).unwrap_or_default();
    frame_with_records(&head, batches, SUBSCRIBE_BATCHES_FIELD, records)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::listener::grpc::codec::{frame_message, frame_stored_records, TopicRecords};

    fn joined(chunks: &VecDeque<Bytes>) -> Vec<u8> {
        chunks.iter().flat_map(|c| c.iter().copied()).collect()
    }

    #[test]
    fn framed_message_decodes_as_prost_encodes_it() {
        let big = Bytes::from(vec![7u8; 100_000]);
        let message = proto::SubscribeResponse {
            topic: "payments.eu".into(),
            partition: 3,
            first_offset: 10,
            next_offset: 300,
            record_batches: vec![Bytes::from_static(b"small"), big.clone(), Bytes::from(vec![1u8; 200]), big.clone()],
            ..Default::default()
        };
        let out = frame_subscribe_response(message.clone());
        let bytes = joined(&out);
        assert_eq!(bytes[0], 0, "uncompressed");
        let len = u32::from_be_bytes(bytes[1..5].try_into().unwrap()) as usize;
        assert_eq!(len, bytes.len() - GRPC_PREFIX);
        assert_eq!(len, message.encoded_len());
        assert_eq!(proto::SubscribeResponse::decode(&bytes[GRPC_PREFIX..]).unwrap(), message);
        // The big batches go out as the stored bytes themselves.
        let shared = out.iter().filter(|c| c.as_ptr() == big.as_ptr()).count();
        assert_eq!(shared, 2);
    }

    #[test]
    fn framed_records_decode_as_prost_encodes_them_in_bounded_chunks() {
        let big = Bytes::from(vec![9u8; 40_000]);
        let records: Vec<proto::StoredRecord> = (0..3000u64)
            .map(|i| proto::StoredRecord {
                topic: "payments.eu".into(),
                partition: 2,
                offset: i,
                timestamp_ms: 1_700_000_000_000 + i as i64,
                key: match i {
                    1500 => Bytes::from(vec![b'k'; 100_000]),
                    _ if i % 3 == 0 => Bytes::new(),
                    _ => Bytes::from(format!("k{i}")),
                },
                value: match i % 100 {
                    0 => Bytes::new(),
                    7 => big.clone(),
                    _ => Bytes::from(vec![(i % 251) as u8; 1000]),
                },
                headers: (0..i % 3).map(|h| (format!("h{h}"), Bytes::from(format!("v{i}")))).collect(),
            })
            .collect();
        let fetch = proto::FetchResponse {
            records: records.clone(),
            next_offset: 3000,
            high_watermark: 3100,
            ..Default::default()
        };
        let mut head = fetch.clone();
        let taken = std::mem::take(&mut head.records);
        let out = frame_records(&head, taken, Vec::new(), FETCH_BATCHES_FIELD);
        let bytes = joined(&out);
        let len = u32::from_be_bytes(bytes[1..5].try_into().unwrap()) as usize;
        assert_eq!(len, bytes.len() - GRPC_PREFIX);
        assert_eq!(len, fetch.encoded_len());
        assert_eq!(proto::FetchResponse::decode(&bytes[GRPC_PREFIX..]).unwrap(), fetch);
        // Chunks are filled up to 64 KiB and never grown (growing copied
        // them); only the record with a 100 KB key needs a larger one.
        let copied: Vec<usize> = out.iter().filter(|c| c.as_ptr() != big.as_ptr()).map(|c| c.len()).collect();
        assert_eq!(copied.iter().filter(|&&l| l > 64 * 1024).count(), 1, "{copied:?}");
        assert!(copied.iter().all(|&l| l <= 64 * 1024 || (100_000..101_000).contains(&l)), "{copied:?}");
        assert_eq!(out.iter().filter(|c| c.as_ptr() == big.as_ptr()).count(), 30, "big values shared, not copied");
        // With batches and no records, and in a SubscribeResponse.
        let message = proto::SubscribeResponse {
            records: records[..50].to_vec(),
            topic: "t".into(),
            record_batches: vec![big.clone()],
            ..Default::default()
        };
        let bytes = joined(&frame_subscribe_response(message.clone()));
        assert_eq!(proto::SubscribeResponse::decode(&bytes[GRPC_PREFIX..]).unwrap(), message);
        // Many small batches (copied) between large ones (shared).
        let batches: Vec<Bytes> = (0..500u32)
            .map(|i| if i % 50 == 0 { big.clone() } else { Bytes::from(vec![i as u8; 700 + i as usize]) })
            .collect();
        let message = proto::FetchResponse { record_batches: batches, next_offset: 9, ..Default::default() };
        let mut head = message.clone();
        let taken = std::mem::take(&mut head.record_batches);
        let out = frame_message(&head, taken, FETCH_BATCHES_FIELD);
        assert!(out.iter().all(|c| c.len() <= 64 * 1024 || c.as_ptr() == big.as_ptr()));
        let bytes = joined(&out);
        assert_eq!(proto::FetchResponse::decode(&bytes[GRPC_PREFIX..]).unwrap(), message);
    }

    /// Records framed straight from storage decode as the prost messages
    /// `convert::stored_record` makes of them: defaults omitted (partition 0,
    /// empty key, empty header key or value), negative timestamps, a
    /// repeated header key (its last value, as the map keeps), shared large
    /// values; in Fetch and Subscribe responses.
    #[test]
    fn records_framed_from_storage_decode_as_their_prost_messages() {
        use crate::storage::batch::StoredRecord;
        let big = Bytes::from(vec![7u8; 20_000]);
        let stored: Vec<StoredRecord> = (0..700u64)
            .map(|i| StoredRecord {
                offset: i,
                timestamp_ms: if i % 5 == 0 { -(i as i64) - 1 } else { 1_700_000_000_000 + i as i64 },
                key: if i % 4 == 0 { Bytes::new() } else { Bytes::from(format!("key-{i}")) },
                value: match i % 50 {
                    0 => Bytes::new(),
                    9 => big.clone(),
                    _ => Bytes::from(vec![(i % 251) as u8; 300 + i as usize]),
                },
                headers: match i % 4 {
                    0 => vec![],
                    1 => vec![("id".into(), Bytes::from(format!("evt-{i}")))],
                    2 => vec![("".into(), Bytes::from_static(b"v")), ("k".into(), Bytes::new())],
                    _ => {
                        vec![("dup".into(), Bytes::from_static(b"first")), ("dup".into(), Bytes::from_static(b"last"))]
                    }
                },
            })
            .collect();
        for partition in [0u32, 3] {
            let records = TopicRecords { topic: "payments.eu".into(), partition, records: stored.clone() };
            let head = proto::FetchResponse { next_offset: 700, high_watermark: 800, ..Default::default() };
            let out = frame_stored_records(&head, Some(records), Vec::new(), FETCH_BATCHES_FIELD);
            let bytes = joined(&out);
            let want = proto::FetchResponse {
                records: TopicRecords { topic: "payments.eu".into(), partition, records: stored.clone() }.into_proto(),
                ..head.clone()
            };
            assert_eq!(u32::from_be_bytes(bytes[1..5].try_into().unwrap()) as usize, bytes.len() - GRPC_PREFIX);
            assert_eq!(proto::FetchResponse::decode(&bytes[GRPC_PREFIX..]).unwrap(), want);
            assert_eq!(want.records[3].headers.get("dup").map(|v| &v[..]), Some(&b"last"[..]));
            assert_eq!(out.iter().filter(|c| c.as_ptr() == big.as_ptr()).count(), 14, "large values shared");
        }
        let records = TopicRecords { topic: "t".into(), partition: 1, records: stored[..40].to_vec() };
        let head = proto::SubscribeResponse { member_id: "m-1".into(), generation: 2, ..Default::default() };
        let bytes = joined(&frame_subscribe_parts(head.clone(), Some(WireRecords::Stored(records))));
        let want = proto::SubscribeResponse {
            records: TopicRecords { topic: "t".into(), partition: 1, records: stored[..40].to_vec() }.into_proto(),
            ..head
        };
        assert_eq!(proto::SubscribeResponse::decode(&bytes[GRPC_PREFIX..]).unwrap(), want);
    }

    #[test]
    fn every_unary_method_of_the_proto_is_timed() {
        let proto = include_str!("../../../proto/strata/v1/broker.proto");
        let unary: Vec<&str> = proto
            .lines()
            .map(str::trim)
            .filter(|l| l.starts_with("rpc ") && !l.contains("stream "))
            .map(|l| l["rpc ".len()..].split('(').next().unwrap().trim())
            .collect();
        assert!(unary.len() > 10, "{unary:?}");
        let mut listed = UNARY_METHODS.to_vec();
        listed.sort_unstable();
        let mut want = unary.clone();
        want.sort_unstable();
        assert_eq!(listed, want, "UNARY_METHODS must name every unary rpc of broker.proto");
    }

    #[test]
    fn message_without_batches_is_one_chunk() {
        let message = proto::SubscribeResponse { member_id: "m-1".into(), generation: 4, ..Default::default() };
        let out = frame_subscribe_response(message.clone());
        assert_eq!(out.len(), 1);
        assert_eq!(proto::SubscribeResponse::decode(&out[0][GRPC_PREFIX..]).unwrap(), message);
    }

    #[test]
    fn fetch_responses_frame_their_batches_as_field_5() {
        let message = proto::FetchResponse {
            next_offset: 7,
            high_watermark: 9,
            record_batches: vec![Bytes::from(vec![5u8; 20_000]), Bytes::from_static(b"b")],
            ..Default::default()
        };
        let mut head = message.clone();
        let batches = std::mem::take(&mut head.record_batches);
        let bytes = joined(&super::super::codec::frame_message(&head, batches, FETCH_BATCHES_FIELD));
        assert_eq!(proto::FetchResponse::decode(&bytes[GRPC_PREFIX..]).unwrap(), message);
    }

    #[test]
    fn produce_requests_are_counted_without_decoding() {
        let record = |headers: usize| proto::Record {
            value: Bytes::from_static(b"v"),
            headers: (0..headers).map(|i| (format!("h{i}"), Bytes::new())).collect(),
            ..Default::default()
        };
        let request = proto::ProduceRequest {
            topic: "t".into(),
            records: vec![record(0), record(2), proto::Record::default(), record(1)],
            request_id: 9,
            ..Default::default()
        };
        let mut frames = Frames::new(usize::MAX);
        let bytes = Bytes::from(request.encode_to_vec());
        // Split across frames, as they arrive.
        frames.push(bytes.slice(..7));
        frames.push(bytes.slice(7..));
        assert_eq!(count_produce(&frames, bytes.len()).unwrap(), Counts { records: 4, headers: 3 });
        assert_eq!(frames.remaining(), bytes.len(), "counting consumes nothing");
        let too_many = proto::ProduceRequest { records: vec![record(HEADERS_PER_RECORD_MAX + 1)], ..request };
        let bytes = Bytes::from(too_many.encode_to_vec());
        let mut frames = Frames::new(usize::MAX);
        frames.push(bytes.clone());
        assert!(count_produce(&frames, bytes.len()).unwrap_err().contains("headers"));
        let mut frames = Frames::new(usize::MAX);
        frames.push(Bytes::from_static(&[0x1a, 0x05, 0x00]));
        assert!(count_produce(&frames, 3).is_err(), "a field past the end is malformed");
    }
}
