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

use bytes::{BufMut, Bytes, BytesMut};
use futures::future::BoxFuture;
use kafka_protocol::messages::{ApiKey, RequestHeader, ResponseHeader};
use kafka_protocol::protocol::{Decodable, Encodable};
use tokio::io::{AsyncReadExt, AsyncWriteExt, BufWriter};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;
use tokio::sync::mpsc;

use super::versions;
use crate::broker::caller::{Caller, Via};
use crate::broker::Broker;

/// Responses queued for the writer (in-flight produce requests included).
const PIPELINE_MAX: usize = 32;

/// Room over `max_request_bytes` for a frame's headers and framing.
const FRAME_OVERHEAD_BYTES: usize = 64 << 10;

/// What one connection's handlers share.
pub(super) struct Ctx {
    pub broker: Arc<Broker>,
    pub caller: Caller,
    /// The address this connection came in on (advertised when no other is set).
    pub local: SocketAddr,
}

/// A handler's answer.
pub(super) enum Reply {
    /// No response (Produce with acks=0).
    None,
    /// The encoded response body.
    Now(BytesMut),
    /// The body once the flush policy is met (Produce).
    Later(BoxFuture<'static, Result<BytesMut, String>>),
}

/// Encodes a response body at `version`.
pub(super) fn encode<M: Encodable>(message: &M, version: i16) -> Result<BytesMut, String> {
    let mut out = BytesMut::new();
    message.encode(&mut out, version).map_err(|e| format!("cannot encode the response: {e}"))?;
    Ok(out)
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
    stream: TcpStream,
    peer: Option<SocketAddr>,
    local: SocketAddr,
) {
    let caller = Caller::anonymous(Via::Kafka, peer);
    let ctx = Ctx { broker, caller, local };
    let (rd, wr) = stream.into_split();
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
    loop {
        let mut len = [0u8; 4];
        tokio::select! {
            r = rd.read_exact(&mut len) => match r {
                Ok(_) => {}
                Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(()),
                Err(e) => return Err(format!("read failed: {e}")),
            },
            _ = crate::broker::stopped(&mut stopping) => return Ok(()),
        }
        let len = i32::from_be_bytes(len);
        if len < 8 || len as usize > frame_max {
            return Err(format!(
                "frame length {len} is outside 8..={frame_max} bytes (max_request_bytes plus headers); \
                 not a Kafka client, or a request over the limit"
            ));
        }
        let len = len as usize;
        let permit = ctx.broker.request_budget().acquire(len).await.map_err(|e| e.to_string())?;
        let mut body = BytesMut::zeroed(len);
        match tokio::time::timeout(read_timeout, rd.read_exact(&mut body)).await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => return Err(format!("the connection failed inside a {len}-byte request: {e}")),
            Err(_) => {
                return Err(format!(
                    "a {len}-byte request did not arrive whole within {} ms (request_read_timeout_ms)",
                    read_timeout.as_millis()
                ))
            }
        }
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
    let reply = tracing::Instrument::instrument(dispatch(ctx, key, version, client, body), span).await?;
    let header_version = key.response_header_version(version);
    Ok(match reply {
        Reply::None => None,
        reply => Some(Outgoing { correlation_id, header_version, reply, _queued: None }),
    })
}

async fn dispatch(ctx: &Ctx, key: ApiKey, version: i16, client: &str, mut body: Bytes) -> Result<Reply, String> {
    use super::{admin, fetch, groups, produce};
    let b = &mut body;
    let now = |r: Result<BytesMut, String>| r.map(Reply::Now);
    match key {
        ApiKey::ApiVersions => now(encode(&versions::response(version), version)),
        ApiKey::Produce => produce::produce(ctx, decode(key, version, b)?, version).await,
        ApiKey::Fetch => now(encode(&fetch::fetch(ctx, decode(key, version, b)?, version).await, version)),
        ApiKey::ListOffsets => now(encode(&admin::list_offsets(ctx, decode(key, version, b)?).await, version)),
        ApiKey::Metadata => now(encode(&admin::metadata(ctx, decode(key, version, b)?, version).await, version)),
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
            wr.write_all(&body).await?;
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
