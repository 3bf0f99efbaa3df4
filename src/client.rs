//! strata's gRPC calls that move record batches, without copying them.
//!
//! tonic's client copies every HTTP/2 DATA frame of a response into one
//! buffer before decoding a message from it (for a raw subscription 10% of
//! the CPU of a page-cache read), and copies every request into one buffer
//! before sending it (for a raw produce of client-encoded batches, 17% of
//! the CPU). Here a request with a `record_batch` goes out as body chunks
//! that share the batch's bytes (`listener::grpc::codec::frame_message`), and
//! response frames are kept as they arrive, in a queue of shared buffers,
//! from which prost decodes each `record_batches` entry as a slice of the
//! frame holding it (the broker sends each large batch as a frame of its
//! own: `listener::grpc::routes`). A message split across frames still decodes; only
//! a batch that straddles two frames is copied. The wire format is plain
//! gRPC: these talk to any strata broker, and tonic's client reads the same.

use std::collections::VecDeque;
use std::convert::Infallible;

use bytes::Bytes;
use futures::StreamExt;
use http_body::Frame;
use http_body_util::BodyExt;
use hyper_util::rt::TokioIo;
use prost::Message;
use tokio::sync::mpsc;
use tonic::body::Body;
use tonic::transport::{Channel, Endpoint, Uri};
use tonic::Status;

use crate::listener::grpc::codec::{frame_message, frame_plain, Frames, Incremental};
use crate::proto;

/// What a TLS connection reads from its socket at a time, at most.
///
/// rustls reads its records from the socket a few KiB at a time (at most
/// one record, 16 KiB); a raw subscription over TLS at 1.4 GB/s made about
/// 70,000 of those reads a second, each a syscall and often a wake-up. Read
/// in large bites under rustls instead: the copy from this buffer costs
/// less than the syscalls it saves (`bench consume --raw --subscribe --tls`,
/// with the broker's larger TLS writes, alternated 5x: 1,083-1,208 ->
/// 1,401-1,622 MB/s; 1.35-1.57 -> 1.04-1.24 CPU-s/GB).
const TLS_READ_BUFFER_BYTES: usize = 256 << 10;

/// Connects `endpoint`; over TLS (an `https://` URL with a TLS config set)
/// through a socket read in [`TLS_READ_BUFFER_BYTES`] bites. tonic layers
/// its TLS over the connector, so certificates and ALPN are as with
/// `Endpoint::connect`.
pub async fn connect(endpoint: Endpoint, tls: bool) -> Result<Channel, tonic::transport::Error> {
    if !tls {
        return endpoint.tcp_nodelay(true).connect().await;
    }
    let connector = tower::service_fn(|uri: Uri| async move {
        // An IPv6 literal comes bracketed, as in the URL.
        let host = uri.host().unwrap_or("localhost").trim_start_matches('[').trim_end_matches(']').to_string();
        let port = uri.port_u16().unwrap_or(443);
        let tcp = tokio::net::TcpStream::connect((host.as_str(), port)).await?;
        tcp.set_nodelay(true)?;
        Ok::<_, std::io::Error>(TokioIo::new(tokio::io::BufReader::with_capacity(TLS_READ_BUFFER_BYTES, tcp)))
    });
    endpoint.connect_with_connector(connector).await
}

/// The gRPC paths these calls use.
const SUBSCRIBE_PATH: &str = "/strata.v1.Broker/Subscribe";
const FETCH_PATH: &str = "/strata.v1.Broker/Fetch";
const PRODUCE_PATH: &str = "/strata.v1.Broker/Produce";
const PRODUCE_STREAM_PATH: &str = "/strata.v1.Broker/ProduceStream";

/// Field number of `record_batch` in ProduceRequest.
const PRODUCE_BATCH_FIELD: u8 = 7;

/// Largest response message accepted (a raw push is about 2 MiB).
pub const MESSAGE_BYTES_MAX: usize = 256 << 20;

/// Opens a Subscribe stream on `channel`.
pub async fn subscribe(channel: &Channel, request: proto::SubscribeRequest) -> Result<SubscribeStream, Status> {
    let body = call(channel, SUBSCRIBE_PATH, body_of(frame_plain(&request))).await?;
    Ok(MessageStream::new(body))
}

/// One Fetch call on `channel`; its records are decoded as they arrive
/// (`codec::Incremental`).
pub async fn fetch(channel: &Channel, request: proto::FetchRequest) -> Result<proto::FetchResponse, Status> {
    let mut body = call(channel, FETCH_PATH, body_of(frame_plain(&request))).await?;
    let mut frames = Frames::new(MESSAGE_BYTES_MAX);
    let mut decoder = Incremental::default();
    let mut message = None;
    while next_frame(&mut body, &mut frames).await?.is_some() {
        if message.is_none() {
            message = decoder.feed(&mut frames)?;
        }
    }
    if message.is_none() {
        message = decoder.feed(&mut frames)?;
    }
    if frames.remaining() > 0 {
        return Err(Status::internal("more than one message in a unary response"));
    }
    message.ok_or_else(|| Status::internal("a unary response without its message"))
}

/// One Produce call on `channel`; a `record_batch` is sent from where it lies.
pub async fn produce(channel: &Channel, request: proto::ProduceRequest) -> Result<proto::ProduceResponse, Status> {
    unary(channel, PRODUCE_PATH, produce_chunks(request)).await
}

/// Opens a ProduceStream on `channel`: up to `depth` requests queued to
/// send (the broker acknowledges each by `request_id`).
pub async fn produce_stream(channel: &Channel, depth: usize) -> Result<ProduceStream, Status> {
    let (tx, rx) = mpsc::channel::<VecDeque<Bytes>>(depth.max(1));
    let frames = tokio_stream::wrappers::ReceiverStream::new(rx)
        .flat_map(futures::stream::iter)
        .map(|chunk| Ok::<_, Infallible>(Frame::data(chunk)));
    let body = call(channel, PRODUCE_STREAM_PATH, Body::new(http_body_util::StreamBody::new(frames))).await?;
    Ok(ProduceStream { requests: tx, responses: MessageStream::new(body) })
}

/// A ProduceStream call.
#[derive(Debug)]
pub struct ProduceStream {
    /// Framed requests, in the order they are sent.
    requests: mpsc::Sender<VecDeque<Bytes>>,
    responses: MessageStream<proto::ProduceResponse>,
}

impl ProduceStream {
    /// Queues `request`, waiting while `depth` are already queued.
    pub async fn send(&mut self, request: proto::ProduceRequest) -> Result<(), Status> {
        self.requests.send(produce_chunks(request)).await.map_err(|_| Status::unavailable("the produce stream closed"))
    }

    /// The next acknowledgement; None once the broker ended the stream.
    pub async fn message(&mut self) -> Result<Option<proto::ProduceResponse>, Status> {
        self.responses.message().await
    }
}

/// A produce request as body chunks: its batch, if any, shared.
fn produce_chunks(mut request: proto::ProduceRequest) -> VecDeque<Bytes> {
    let batch = std::mem::take(&mut request.record_batch);
    let batches = if batch.is_empty() { Vec::new() } else { vec![batch] };
    frame_message(&request, batches, PRODUCE_BATCH_FIELD)
}

/// A request body of these chunks.
fn body_of(chunks: VecDeque<Bytes>) -> Body {
    Body::new(Chunks(chunks))
}

/// A request body of chunks in hand. Unlike a stream of them it says when
/// it has no more, so hyper ends the request with its last DATA frame
/// instead of an empty one after it: one write fewer per unary call, and
/// one frame fewer for the broker to read.
struct Chunks(VecDeque<Bytes>);

impl http_body::Body for Chunks {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        std::task::Poll::Ready(self.0.pop_front().map(|chunk| Ok(Frame::data(chunk))))
    }

    fn is_end_stream(&self) -> bool {
        self.0.is_empty()
    }
}

/// A call whose response is one message.
async fn unary<M: Message + Default>(
    channel: &Channel,
    path: &'static str,
    request: VecDeque<Bytes>,
) -> Result<M, Status> {
    let mut body = call(channel, path, body_of(request)).await?;
    let mut frames = Frames::new(MESSAGE_BYTES_MAX);
    while next_frame(&mut body, &mut frames).await?.is_some() {}
    let message = frames.next_message::<M>()?;
    if frames.remaining() > 0 {
        return Err(Status::internal("more than one message in a unary response"));
    }
    message.ok_or_else(|| Status::internal("a unary response without its message"))
}

/// Sends a request with `body` to `path` and returns the response body
/// once the broker accepted the call.
async fn call(channel: &Channel, path: &'static str, body: Body) -> Result<Body, Status> {
    let request = http::Request::builder()
        .method(http::Method::POST)
        .uri(path)
        .header(http::header::CONTENT_TYPE, "application/grpc")
        .header(http::header::TE, "trailers")
        .body(body)
        .map_err(|e| Status::internal(format!("building the request: {e}")))?;
    let mut channel = channel.clone();
    tower::ServiceExt::ready(&mut channel).await.map_err(transport)?;
    let response = tower::Service::call(&mut channel, request).await.map_err(transport)?;
    if response.status() != http::StatusCode::OK {
        return Err(Status::unknown(format!("the broker answered HTTP {}", response.status())));
    }
    // A call refused before any message is a trailers-only response.
    if let Some(status) = Status::from_header_map(response.headers()).filter(|s| s.code() != tonic::Code::Ok) {
        return Err(status);
    }
    Ok(response.into_body())
}

fn transport(e: tonic::transport::Error) -> Status {
    Status::unavailable(format!("cannot reach the broker: {e}"))
}

/// Reads the next DATA frame of `body` into `frames`: Some(()), or None
/// once the trailers said OK (an error status is returned as the error).
async fn next_frame(body: &mut Body, frames: &mut Frames) -> Result<Option<()>, Status> {
    let frame = match body.frame().await {
        Some(Ok(frame)) => frame,
        Some(Err(status)) => return Err(status),
        None => return Err(Status::internal("the response ended without a gRPC status")),
    };
    match frame.into_data() {
        Ok(data) => {
            frames.push(data);
            Ok(Some(()))
        }
        Err(frame) => {
            let trailers = frame.into_trailers().unwrap_or_default();
            let status =
                Status::from_header_map(&trailers).ok_or_else(|| Status::internal("trailers without a gRPC status"))?;
            if status.code() != tonic::Code::Ok {
                return Err(status);
            }
            Ok(None)
        }
    }
}

/// The messages of one Subscribe call.
pub type SubscribeStream = MessageStream<proto::SubscribeResponse>;

/// The response messages of a streaming call.
#[derive(Debug)]
pub struct MessageStream<M> {
    /// The response body: DATA frames, then the status in trailers.
    body: Body,
    /// Received bytes not yet decoded.
    frames: Frames,
    /// The trailers arrived: no message follows.
    ended: bool,
    _message: std::marker::PhantomData<fn() -> M>,
}

impl<M: Message + Default> MessageStream<M> {
    fn new(body: Body) -> Self {
        MessageStream { body, frames: Frames::new(MESSAGE_BYTES_MAX), ended: false, _message: std::marker::PhantomData }
    }

    /// The next message; None when the broker ended the stream with OK.
    pub async fn message(&mut self) -> Result<Option<M>, Status> {
        loop {
            if let Some(message) = self.frames.next_message()? {
                return Ok(Some(message));
            }
            if self.ended {
                return Ok(None);
            }
            if next_frame(&mut self.body, &mut self.frames).await?.is_none() {
                if self.frames.remaining() > 0 {
                    return Err(Status::internal("the stream ended inside a message"));
                }
                self.ended = true;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::listener::grpc::routes::frame_subscribe_response;

    fn sample() -> proto::SubscribeResponse {
        proto::SubscribeResponse {
            topic: "policy.updated".into(),
            partition: 1,
            first_offset: 5,
            next_offset: 900,
            record_batches: vec![
                Bytes::from(vec![3u8; 70_000]),
                Bytes::from_static(b"tiny"),
                Bytes::from(vec![4u8; 40_000]),
            ],
            ..Default::default()
        }
    }

    #[test]
    fn messages_decode_from_frames_as_sent_and_batches_are_not_copied() {
        let mut sent = frame_subscribe_response(sample());
        sent.extend(frame_subscribe_response(proto::SubscribeResponse { member_id: "m".into(), ..Default::default() }));
        let batch = sent.iter().find(|c| c.len() == 70_000).unwrap().clone();
        let mut frames = Frames::new(MESSAGE_BYTES_MAX);
        for chunk in sent {
            frames.push(chunk);
        }
        let first = frames.next_message::<proto::SubscribeResponse>().unwrap().unwrap();
        assert_eq!(first, sample());
        assert_eq!(first.record_batches[0].as_ptr(), batch.as_ptr(), "a slice of the received frame");
        assert_eq!(frames.next_message::<proto::SubscribeResponse>().unwrap().unwrap().member_id, "m");
        assert_eq!(frames.next_message::<proto::SubscribeResponse>().unwrap(), None);
        assert_eq!(frames.remaining(), 0);
    }

    #[test]
    fn messages_split_anywhere_decode_once_complete() {
        let mut sent = frame_subscribe_response(sample());
        sent.extend(frame_subscribe_response(sample()));
        let bytes: Vec<u8> = sent.iter().flat_map(|c| c.iter().copied()).collect();
        for piece in [1usize, 3, 7, 4096, 65_537] {
            let mut frames = Frames::new(MESSAGE_BYTES_MAX);
            let mut decoded = Vec::new();
            for part in bytes.chunks(piece) {
                frames.push(Bytes::copy_from_slice(part));
                while let Some(m) = frames.next_message::<proto::SubscribeResponse>().unwrap() {
                    decoded.push(m);
                }
            }
            assert_eq!(decoded, vec![sample(), sample()], "pieces of {piece} bytes");
        }
    }

    #[test]
    fn bad_prefixes_are_errors() {
        let mut frames = Frames::new(MESSAGE_BYTES_MAX);
        frames.push(Bytes::from_static(&[1, 0, 0, 0, 1, 0]));
        assert_eq!(frames.next_message::<proto::SubscribeResponse>().unwrap_err().code(), tonic::Code::Internal);
        let mut frames = Frames::new(MESSAGE_BYTES_MAX);
        frames.push(Bytes::from_static(&[0, 0xff, 0xff, 0xff, 0xff]));
        assert_eq!(
            frames.next_message::<proto::SubscribeResponse>().unwrap_err().code(),
            tonic::Code::ResourceExhausted
        );
        let mut frames = Frames::new(MESSAGE_BYTES_MAX);
        frames.push(Bytes::from_static(&[0, 0, 0, 0, 2, 0xff, 0xff]));
        assert_eq!(frames.next_message::<proto::SubscribeResponse>().unwrap_err().code(), tonic::Code::Internal);
    }

    #[tokio::test]
    async fn a_request_body_says_it_ended_with_its_last_chunk() {
        // hyper sets END_STREAM on a DATA frame only if the body says so
        // right after yielding it; otherwise it sends an empty frame more.
        let mut body = body_of(VecDeque::from([Bytes::from_static(b"head"), Bytes::from_static(b"batch")]));
        assert!(!http_body::Body::is_end_stream(&body));
        assert_eq!(body.frame().await.unwrap().unwrap().into_data().unwrap(), "head");
        assert!(!http_body::Body::is_end_stream(&body));
        assert_eq!(body.frame().await.unwrap().unwrap().into_data().unwrap(), "batch");
        assert!(http_body::Body::is_end_stream(&body), "ended with the last chunk");
        assert!(body.frame().await.is_none());
    }
}
