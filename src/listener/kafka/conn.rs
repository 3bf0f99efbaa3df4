//! One Kafka connection. Requests are read one frame at a time (a 4-byte
//! length, then the request), each under the broker's request budget
//! (taken before the body is read) and `request_read_timeout_ms`, and
//! answered in the order they came, as the protocol requires.
//!
//! Requests are handled in order, one at a time, as Kafka does, with one
//! exception that keeps pipelined producers fast: a Produce is written to
//! its partitions before the next request is read, but its wait for the
//! flush policy is left to the writer task, so the fsyncs of several
//! in-flight produce requests overlap (group commit covers them together).
//! At most `PIPELINE_MAX` responses wait to be written.
//!
//! A frame that cannot be a request (a length over the limit, an unknown
//! API key, a version not served, bytes that do not decode) closes the
//! connection with a log line naming the peer and the reason, as Kafka
//! does; ApiVersions of an unknown version is answered (v0, with
//! UNSUPPORTED_VERSION and the ranges) so clients can negotiate.

use std::net::SocketAddr;
use std::sync::Arc;

use crate::listener::accept::Conn;
use crate::security::{Operation, Resource};
use bytes::{Buf, BufMut, Bytes, BytesMut};
use futures::future::BoxFuture;
use kafka_protocol::messages::{ApiKey, RequestHeader, ResponseHeader};
use kafka_protocol::protocol::{Decodable, Encodable};
use tokio::io::{AsyncReadExt, AsyncWriteExt, BufWriter};

type OwnedReadHalf = tokio::io::ReadHalf<Conn>;
type OwnedWriteHalf = tokio::io::WriteHalf<Conn>;
use tokio::sync::mpsc;

use super::versions;
use crate::broker::caller::{Caller, Via};
use crate::broker::Broker;

/// Responses queued for the writer (in-flight produce requests included).
const PIPELINE_MAX: usize = 32;

/// How far past the frame being read one read may go (see `read_loop`).
const READ_AHEAD_BYTES: usize = 64 << 10;

/// Room over `max_request_bytes` for a frame's headers and framing.
const FRAME_OVERHEAD_BYTES: usize = 64 << 10;

/// What one connection's handlers share.
pub(super) struct Ctx {
    pub broker: Arc<Broker>,
    pub caller: Caller,
    /// The address this connection came in on (advertised when no other is set).
    pub local: SocketAddr,
    /// Whether the connection is TLS (SASL PLAIN without it sends the token
    /// in the clear: allowed, with a warning).
    pub tls: bool,
    /// The principal SASL PLAIN authenticated (security on).
    pub sasl_principal: std::sync::Mutex<Option<String>>,
    /// Request duration histograms by API key, looked up once per connection.
    pub durations: std::sync::Mutex<std::collections::HashMap<i16, prometheus_client::metrics::histogram::Histogram>>,
}

impl Ctx {
    /// Times one request of `key` until the returned timer is dropped.
    fn timer(&self, key: ApiKey) -> crate::metrics::Timer {
        let mut durations = self.durations.lock().unwrap_or_else(|e| e.into_inner());
        let histogram = durations
            .entry(key as i16)
            .or_insert_with(|| self.broker.metrics().request_histogram("kafka", &format!("{key:?}")));
        crate::metrics::Timer::start(histogram.clone())
    }
}

/// A handler's answer.
pub(super) enum Reply {
    /// No response (Produce with acks=0).
    None,
    /// The encoded response body.
    Now(Body),
    /// The body once the flush policy is met (Produce).
    Later(BoxFuture<'static, Result<Body, String>>),
}

/// An encoded response body, in parts written one after the other: the
/// encoding, with stored record batches in it where they go, not copied.
pub(super) struct Body(Vec<Bytes>);

impl Body {
    pub(super) fn len(&self) -> usize {
        self.0.iter().map(Bytes::len).sum()
    }
}

/// Encodes a response body at `version`.
pub(super) fn encode<M: Encodable>(message: &M, version: i16) -> Result<Body, String> {
    encode_spliced(message, version, &[])
}

/// Encodes a response body at `version` whose byte fields include the
/// buffers in `splices` (stored batches a Fetch returns): those are put in
/// the body as they are (shared, not copied), the rest is encoded into one
/// buffer sized before encoding.
pub(super) fn encode_spliced<M: Encodable>(message: &M, version: i16, splices: &[Bytes]) -> Result<Body, String> {
    let failed = |e: anyhow::Error| format!("cannot encode the response: {e}");
    let size = message.compute_size(version).map_err(failed)?;
    let spliced: usize = splices.iter().map(Bytes::len).sum();
    let mut buf = SpliceBuf {
        splices,
        done: Vec::new(),
        done_len: 0,
        head: BytesMut::with_capacity(size.saturating_sub(spliced)),
        lost: false,
        scratch: Vec::new(),
    };
    message.encode(&mut buf, version).map_err(failed)?;
    if buf.lost {
        // The codec went back over a spliced part (it does not for the
        // messages spliced today): encode into one plain buffer instead.
        let mut plain = BytesMut::with_capacity(size);
        message.encode(&mut plain, version).map_err(failed)?;
        return Ok(Body(vec![plain.freeze()]));
    }
    let mut parts = buf.done;
    if !buf.head.is_empty() {
        parts.push(buf.head.freeze());
    }
    Ok(Body(parts))
}

/// Byte fields shorter than this are copied even when they could be spliced.
const SPLICE_MIN_BYTES: usize = 4096;

/// The codec's output buffer for `encode_spliced`: a byte field that is one
/// of `splices` (the same memory, as the codec passes it through) becomes a
/// part of its own; everything else goes into `head`.
struct SpliceBuf<'a> {
    splices: &'a [Bytes],
    /// Parts finished, and their total length.
    done: Vec<Bytes>,
    done_len: usize,
    head: BytesMut,
    /// The codec asked for bytes already handed on (seek or range before
    /// `head`): the result is discarded and encoded plainly.
    lost: bool,
    scratch: Vec<u8>,
}

// SAFETY: every method forwards to `head`, a BytesMut, whose own contract
// holds; `put_slice` only appends (to `head`, or a shared part). The codec's
// buffer trait requires BufMut, an unsafe trait; nothing here is unchecked.
#[allow(unsafe_code)]
unsafe impl bytes::BufMut for SpliceBuf<'_> {
    fn remaining_mut(&self) -> usize {
        self.head.remaining_mut()
    }

    unsafe fn advance_mut(&mut self, cnt: usize) {
        // SAFETY: the caller initialised `cnt` bytes of `head.chunk_mut()`.
        unsafe { self.head.advance_mut(cnt) }
    }

    fn chunk_mut(&mut self) -> &mut bytes::buf::UninitSlice {
        self.head.chunk_mut()
    }

    fn put_slice(&mut self, src: &[u8]) {
        if src.len() >= SPLICE_MIN_BYTES {
            let same = |b: &&Bytes| b.as_ptr() == src.as_ptr() && b.len() == src.len();
            if let Some(b) = self.splices.iter().find(same) {
                if !self.head.is_empty() {
                    let head = self.head.split().freeze();
                    self.done_len += head.len();
                    self.done.push(head);
                }
                self.done_len += b.len();
                self.done.push(b.clone());
                return;
            }
        }
        self.head.extend_from_slice(src);
    }
}

impl kafka_protocol::protocol::buf::ByteBufMut for SpliceBuf<'_> {
    fn offset(&self) -> usize {
        self.done_len + self.head.len()
    }

    fn seek(&mut self, offset: usize) {
        match offset.checked_sub(self.done_len) {
            Some(at) => self.head.resize(at, 0),
            None => self.lost = true,
        }
    }

    fn range(&mut self, r: std::ops::Range<usize>) -> &mut [u8] {
        if r.start >= self.done_len && r.end - self.done_len <= self.head.len() {
            return &mut self.head[r.start - self.done_len..r.end - self.done_len];
        }
        self.lost = true;
        self.scratch.resize(r.len(), 0);
        &mut self.scratch
    }
}

/// Decodes a request body at `version`; an error closes the connection.
pub(super) fn decode<M: Decodable>(key: ApiKey, version: i16, body: &mut Bytes) -> Result<M, String> {
    M::decode(body, version).map_err(|e| format!("malformed {key:?} v{version} request: {e}"))
}

struct Outgoing {
    correlation_id: i32,
    header_version: i16,
    reply: Reply,
    /// Its bytes' share of the connection's response queue, given back
    /// once written: a client that stops reading holds at most about
    /// `max_request_bytes` of responses, however many it asks for.
    _queued: Option<tokio::sync::OwnedSemaphorePermit>,
}

pub(super) async fn serve_connection(
    broker: Arc<Broker>,
    stream: Conn,
    (peer, cn, tls): (Option<SocketAddr>, Option<String>, bool),
    local: SocketAddr,
) {
    let mut caller = Caller::anonymous(Via::Kafka, peer);
    // A client certificate's CN, else the anonymous principal (if any);
    // SASL PLAIN may authenticate later.
    caller.principal = broker.authorizer().authenticate(None, cn.as_deref()).ok().flatten();
    let ctx = Ctx { broker, caller, local, tls, sasl_principal: Default::default(), durations: Default::default() };
    let (rd, wr) = tokio::io::split(stream);
    let (tx, rx) = mpsc::channel(PIPELINE_MAX);
    let writer = tokio::spawn(write_loop(wr, rx));
    let peer_text = peer.map_or("unknown".to_string(), |p| p.to_string());
    match read_loop(&ctx, rd, tx).await {
        Ok(()) => tracing::debug!(peer = %peer_text, "kafka connection closed"),
        Err(reason) => tracing::warn!(peer = %peer_text, %reason, "closing kafka connection"),
    }
    // The responses already due are still written.
    match writer.await {
        Ok(Err(reason)) => tracing::debug!(peer = %peer_text, %reason, "kafka connection: response not written"),
        Err(e) => tracing::warn!(peer = %peer_text, error = %e, "kafka connection writer failed"),
        Ok(Ok(())) => {}
    }
}

/// Reads and handles requests until the client closes (Ok) or sends what
/// cannot be a request (Err: why).
async fn read_loop(ctx: &Ctx, mut rd: OwnedReadHalf, tx: mpsc::Sender<Outgoing>) -> Result<(), String> {
    let config = ctx.broker.config();
    let frame_max = config.request_bytes_max + FRAME_OVERHEAD_BYTES;
    let read_timeout = config.request_read_timeout;
    let mut stopping = ctx.broker.watch_stopping();
    let queue_bytes = config.request_bytes_max;
    let queue = Arc::new(tokio::sync::Semaphore::new(queue_bytes));
    // Frames are read through one buffer per connection, in reads of up to
    // `READ_AHEAD_BYTES` past what is due: a request's bytes are not copied
    // or zeroed first, the length and body of small requests come in one
    // read, and once a request's bytes are dropped (a produce's are, once
    // written) the next request reuses their allocation instead of faulting
    // in fresh pages.
    let mut buf = BytesMut::with_capacity(READ_AHEAD_BYTES);
    loop {
        while buf.len() < 4 {
            tokio::select! {
                r = read_more(&mut rd, &mut buf, 4) => match r {
                    Ok(0) if buf.is_empty() => return Ok(()),
                    Ok(0) => return Err(format!("the connection closed inside a frame's length ({} of 4 bytes)", buf.len())),
                    Ok(_) => {}
                    Err(e) => return Err(format!("read failed: {e}")),
                },
                _ = crate::broker::stopped(&mut stopping) => return Ok(()),
            }
        }
        let len = i32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]);
        if len < 8 || len as usize > frame_max {
            return Err(format!(
                "frame length {len} is outside 8..={frame_max} bytes (max_request_bytes plus headers); \
                 not a Kafka client, or a request over the limit"
            ));
        }
        let len = len as usize;
        let permit = ctx.broker.request_budget().acquire(len).await.map_err(|e| e.to_string())?;
        buf.advance(4);
        let whole = async {
            while buf.len() < len {
                match read_more(&mut rd, &mut buf, len).await {
                    Ok(0) => return Err(format!("the connection closed inside a {len}-byte request")),
                    Ok(_) => {}
                    Err(e) => return Err(format!("the connection failed inside a {len}-byte request: {e}")),
                }
            }
            Ok(())
        };
        match tokio::time::timeout(read_timeout, whole).await {
            Ok(r) => r?,
            Err(_) => {
                return Err(format!(
                    "a {len}-byte request did not arrive whole within {} ms (request_read_timeout_ms)",
                    read_timeout.as_millis()
                ))
            }
        }
        let body = buf.split_to(len);
        let out = handle_frame(ctx, body.freeze()).await?;
        drop(permit);
        if let Some(mut out) = out {
            let size = match &out.reply {
                Reply::Now(b) => b.len(),
                _ => 64,
            };
            let share = size.clamp(1, queue_bytes) as u32;
            let Ok(queued) = queue.clone().acquire_many_owned(share).await else { return Ok(()) };
            out._queued = Some(queued);
            if tx.send(out).await.is_err() {
                return Ok(()); // The writer stopped: the client is gone.
            }
        }
    }
}

/// Reads at least one byte into `buf`, making room for `due` bytes (what
/// the current frame still needs) plus up to `READ_AHEAD_BYTES`. Ok(0): EOF.
async fn read_more(rd: &mut OwnedReadHalf, buf: &mut BytesMut, due: usize) -> std::io::Result<usize> {
    let want = due.saturating_sub(buf.len()).max(1) + READ_AHEAD_BYTES;
    buf.reserve(want);
    // Limited, so the bytes read ahead of the budget stay within
    // READ_AHEAD_BYTES even when a reused buffer has more room.
    rd.read_buf(&mut (&mut *buf).limit(want)).await
}

/// Decodes the header, dispatches, and returns what to write (None: nothing).
async fn handle_frame(ctx: &Ctx, frame: Bytes) -> Result<Option<Outgoing>, String> {
    let raw_key = i16::from_be_bytes([frame[0], frame[1]]);
    let version = i16::from_be_bytes([frame[2], frame[3]]);
    let correlation_id = i32::from_be_bytes([frame[4], frame[5], frame[6], frame[7]]);
    let Ok(key) = ApiKey::try_from(raw_key) else {
        return Err(format!("unknown API key {raw_key} (correlation id {correlation_id})"));
    };
    if !versions::serves(key, version) {
        if key == ApiKey::ApiVersions {
            // KIP-511: answer in v0 with the ranges, so the client can pick.
            let body = encode(&versions::unsupported_response(), 0)?;
            return Ok(Some(Outgoing { correlation_id, header_version: 0, reply: Reply::Now(body), _queued: None }));
        }
        return Err(format!("{key:?} v{version} is not served ({})", versions::range_text(key)));
    }
    let mut body = frame;
    let header: RequestHeader = RequestHeader::decode(&mut body, key.request_header_version(version))
        .map_err(|e| format!("malformed {key:?} v{version} request header: {e}"))?;
    let client = header.client_id.as_ref().map(|c| c.as_str()).unwrap_or("");
    let span = tracing::debug_span!("kafka", api = ?key, version, correlation_id, client);
    let timer = ctx.timer(key);
    let reply = tracing::Instrument::instrument(dispatch(ctx, key, version, client, body), span).await?;
    // A produce's time runs until its flush policy is met.
    let reply = match reply {
        Reply::Later(done) => Reply::Later(Box::pin(async move {
            let body = done.await;
            drop(timer);
            body
        })),
        reply => reply,
    };
    let header_version = key.response_header_version(version);
    Ok(match reply {
        Reply::None => None,
        reply => Some(Outgoing { correlation_id, header_version, reply, _queued: None }),
    })
}

/// What each served Kafka API asks of the authorizer, checked by its
/// handler on each topic or group it names ([`Ctx::check`]); `None`: served
/// before authentication. A test checks that every API in
/// `versions::SERVED` is here, and with security on an API missing from
/// the table is refused, so a new one cannot be left unchecked.
pub const KAFKA_API_OPERATIONS: &[(ApiKey, Option<Operation>)] = &[
    (ApiKey::ApiVersions, None),
    (ApiKey::SaslHandshake, None),
    (ApiKey::SaslAuthenticate, None),
    (ApiKey::Produce, Some(Operation::Produce)),
    (ApiKey::Fetch, Some(Operation::Consume)),
    (ApiKey::ListOffsets, Some(Operation::Describe)),
    (ApiKey::Metadata, Some(Operation::Describe)),
    (ApiKey::DescribeConfigs, Some(Operation::Describe)),
    (ApiKey::CreateTopics, Some(Operation::Admin)),
    (ApiKey::DeleteTopics, Some(Operation::Admin)),
    (ApiKey::CreatePartitions, Some(Operation::Admin)),
    (ApiKey::InitProducerId, Some(Operation::Produce)),
    // The coordinator's address is no secret: any authenticated caller.
    (ApiKey::FindCoordinator, Some(Operation::Describe)),
    (ApiKey::JoinGroup, Some(Operation::Group)),
    (ApiKey::SyncGroup, Some(Operation::Group)),
    (ApiKey::Heartbeat, Some(Operation::Group)),
    (ApiKey::LeaveGroup, Some(Operation::Group)),
    (ApiKey::OffsetCommit, Some(Operation::Group)),
    (ApiKey::OffsetFetch, Some(Operation::Group)),
    (ApiKey::ListGroups, Some(Operation::Describe)),
    (ApiKey::DescribeGroups, Some(Operation::Describe)),
];

/// With security on, a Kafka client must authenticate (SASL PLAIN, a
/// client certificate, or the configured anonymous principal) before any
/// API but ApiVersions and the SASL ones; each API then checks its own
/// topics and groups through [`Ctx::check`].
fn kafka_allowed(ctx: &Ctx, key: ApiKey) -> Result<(), String> {
    if !ctx.broker.authorizer().is_on() {
        return Ok(());
    }
    let Some((_, op)) = KAFKA_API_OPERATIONS.iter().find(|(k, _)| *k == key) else {
        return Err(format!("{key:?} has no entry in the authorization table"));
    };
    if op.is_none() || ctx.principal().is_some() {
        return Ok(());
    }
    Err(format!(
        "{key:?} before authenticating: this broker requires SASL PLAIN (username = user, password = token) or a client certificate"
    ))
}

impl Ctx {
    /// The principal: SASL PLAIN's, else the connection's (certificate CN
    /// or anonymous).
    pub fn principal(&self) -> Option<String> {
        let sasl = self.sasl_principal.lock().unwrap_or_else(|e| e.into_inner()).clone();
        sasl.or_else(|| self.caller.principal.clone())
    }

    /// The caller with its current principal.
    pub fn caller(&self) -> Caller {
        let mut caller = self.caller.clone();
        caller.principal = self.principal();
        caller
    }

    /// `op` on `resource` for this connection, or the Kafka error code
    /// (TOPIC_, GROUP_ or CLUSTER_AUTHORIZATION_FAILED) and why.
    pub fn check(&self, op: Operation, resource: Resource) -> Result<(), (i16, String)> {
        self.broker
            .authorizer()
            .authorize(&self.caller(), op, &resource)
            .map_err(|e| (super::errors::of(&e), e.to_string()))
    }

    /// Whether `op` on `resource` is allowed (for filtering lists).
    pub fn may(&self, op: Operation, resource: Resource) -> bool {
        self.broker.authorizer().allows(&self.caller(), op, &resource)
    }
}

async fn dispatch(ctx: &Ctx, key: ApiKey, version: i16, client: &str, mut body: Bytes) -> Result<Reply, String> {
    use super::{admin, fetch, groups, produce};
    kafka_allowed(ctx, key)?;
    let b = &mut body;
    let now = |r: Result<Body, String>| r.map(Reply::Now);
    match key {
        ApiKey::ApiVersions => now(encode(&versions::response(version), version)),
        ApiKey::Produce => produce::produce(ctx, decode(key, version, b)?, version).await,
        ApiKey::Fetch => {
            let (response, batches) = fetch::fetch(ctx, decode(key, version, b)?, version).await;
            now(encode_spliced(&response, version, &batches))
        }
        ApiKey::ListOffsets => now(encode(&admin::list_offsets(ctx, decode(key, version, b)?).await, version)),
        ApiKey::Metadata => now(encode(&admin::metadata(ctx, decode(key, version, b)?, version).await, version)),
        ApiKey::CreatePartitions => {
            now(encode(&admin::create_partitions(ctx, decode(key, version, b)?).await, version))
        }
        ApiKey::CreateTopics => {
            now(encode(&admin::create_topics(ctx, decode(key, version, b)?, version).await, version))
        }
        ApiKey::DeleteTopics => {
            now(encode(&admin::delete_topics(ctx, decode(key, version, b)?, version).await, version))
        }
        ApiKey::DescribeConfigs => now(encode(&admin::describe_configs(ctx, decode(key, version, b)?).await, version)),
        ApiKey::InitProducerId => now(encode(&admin::init_producer_id(ctx, decode(key, version, b)?).await, version)),
        ApiKey::SaslHandshake => now(encode(&admin::sasl_handshake(decode(key, version, b)?), version)),
        ApiKey::SaslAuthenticate => now(encode(&admin::sasl_authenticate(ctx, decode(key, version, b)?), version)),
        ApiKey::FindCoordinator => {
            now(encode(&groups::find_coordinator(ctx, decode(key, version, b)?, version), version))
        }
        ApiKey::JoinGroup => {
            now(encode(&groups::join_group(ctx, decode(key, version, b)?, version, client).await, version))
        }
        ApiKey::SyncGroup => now(encode(&groups::sync_group(ctx, decode(key, version, b)?, version).await, version)),
        ApiKey::Heartbeat => now(encode(&groups::heartbeat(ctx, decode(key, version, b)?), version)),
        ApiKey::LeaveGroup => now(encode(&groups::leave_group(ctx, decode(key, version, b)?, version), version)),
        ApiKey::OffsetCommit => now(encode(&groups::offset_commit(ctx, decode(key, version, b)?).await, version)),
        ApiKey::OffsetFetch => now(encode(&groups::offset_fetch(ctx, decode(key, version, b)?, version), version)),
        ApiKey::ListGroups => now(encode(&groups::list_groups(ctx, decode(key, version, b)?, version), version)),
        ApiKey::DescribeGroups => now(encode(&groups::describe_groups(ctx, decode(key, version, b)?), version)),
        other => Err(format!("{other:?} is not served")),
    }
}

/// Writes responses in request order, waiting for each produce's flush.
async fn write_loop(wr: OwnedWriteHalf, mut rx: mpsc::Receiver<Outgoing>) -> Result<(), String> {
    let mut wr = BufWriter::with_capacity(64 << 10, wr);
    while let Some(out) = rx.recv().await {
        let body = match out.reply {
            Reply::None => continue,
            Reply::Now(b) => b,
            Reply::Later(f) => f.await?,
        };
        let header = ResponseHeader::default().with_correlation_id(out.correlation_id);
        let mut head = BytesMut::with_capacity(16);
        head.put_i32(0);
        header.encode(&mut head, out.header_version).map_err(|e| format!("cannot encode a response header: {e}"))?;
        let total = head.len() - 4 + body.len();
        head[0..4].copy_from_slice(&(total as i32).to_be_bytes());
        let write = async {
            wr.write_all(&head).await?;
            for part in &body.0 {
                wr.write_all(part).await?;
            }
            if rx.is_empty() {
                wr.flush().await?;
            }
            Ok::<_, std::io::Error>(())
        };
        write.await.map_err(|e| format!("write failed: {e}"))?;
    }
    wr.flush().await.map_err(|e| format!("write failed: {e}"))?;
    let _ = wr.into_inner().shutdown().await;
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn every_served_kafka_api_is_in_the_authorization_table() {
        for (key, _, _) in super::versions::SERVED {
            assert!(
                super::KAFKA_API_OPERATIONS.iter().any(|(k, _)| k == key),
                "{key:?} is served but not in KAFKA_API_OPERATIONS"
            );
        }
        assert_eq!(super::KAFKA_API_OPERATIONS.len(), super::versions::SERVED.len());
    }

    use super::*;
    use kafka_protocol::messages::fetch_response::{FetchableTopicResponse, PartitionData};
    use kafka_protocol::messages::{FetchResponse, TopicName};

    fn plain<M: Encodable>(m: &M, version: i16) -> Vec<u8> {
        let mut out = BytesMut::new();
        m.encode(&mut out, version).unwrap();
        out.to_vec()
    }

    #[test]
    fn a_spliced_fetch_response_has_the_bytes_of_a_plain_one_at_every_version() {
        // Two partitions with big record runs (spliced), one small (copied), one empty.
        let run = |n: usize, b: u8| Bytes::from((0..n).map(|i| b.wrapping_add(i as u8)).collect::<Vec<u8>>());
        let (a, b, small) = (run(1 << 20, 1), run(70_000, 7), run(100, 9));
        let part = |i: i32, r: &Bytes| PartitionData::default().with_partition_index(i).with_records(Some(r.clone()));
        let response = FetchResponse::default().with_responses(vec![
            FetchableTopicResponse::default().with_topic(TopicName("t1".into())).with_partitions(vec![
                part(0, &a),
                part(1, &small),
                part(2, &Bytes::new()),
            ]),
            FetchableTopicResponse::default().with_topic(TopicName("t2".into())).with_partitions(vec![part(0, &b)]),
        ]);
        for version in 4..=12 {
            let body = encode_spliced(&response, version, &[a.clone(), b.clone(), small.clone()]).unwrap();
            let joined: Vec<u8> = body.0.iter().flat_map(|p| p.iter().copied()).collect();
            assert_eq!(joined, plain(&response, version), "v{version}");
            assert_eq!(body.len(), joined.len());
            // The big runs are the very buffers given, not copies.
            for big in [&a, &b] {
                assert!(body.0.iter().any(|p| p.as_ptr() == big.as_ptr() && p.len() == big.len()), "v{version}");
            }
        }
    }

    #[test]
    fn a_codec_that_seeks_back_over_a_spliced_part_gets_a_plain_encoding() {
        let splice = Bytes::from(vec![5u8; 8192]);
        let mut buf = SpliceBuf {
            splices: std::slice::from_ref(&splice),
            done: Vec::new(),
            done_len: 0,
            head: BytesMut::new(),
            lost: false,
            scratch: Vec::new(),
        };
        use kafka_protocol::protocol::buf::ByteBufMut;
        buf.put_slice(b"head");
        buf.put_slice(&splice);
        assert!(!buf.lost);
        assert_eq!(buf.offset(), 4 + 8192);
        buf.range(0..4)[0] = 1;
        assert!(buf.lost, "writing into a finished part must make the caller encode plainly");
    }
}
