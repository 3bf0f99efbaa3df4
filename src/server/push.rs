//! `Subscribe` without copying stored bytes on the way out.
//!
//! tonic encodes every response message into one buffer, so a raw
//! subscription copied each pushed batch from the segment's mapping into
//! that buffer before the kernel copied it again into the socket: 11% of
//! the CPU of a page-cache read on a 2-core VM. This route answers the
//! Subscribe path itself: it decodes the request, runs the same handler
//! (`BrokerService::subscribe`), and frames each `SubscribeResponse` as a
//! gRPC message whose `record_batches` are the stored bytes themselves, as
//! separate body chunks. hyper sends a chunk above 256 bytes with a
//! vectored write from where it lies, so a batch goes from the page cache
//! to the socket with the kernel's one copy. Everything else of the message
//! (records, assignments, offsets) is encoded by prost as before, and every
//! other method goes to tonic's generated service unchanged.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{BufMut, Bytes, BytesMut};
use futures::future::BoxFuture;
use futures::Stream;
use http_body::Frame;
use http_body_util::BodyExt;
use prost::Message;
use tonic::body::Body;
use tonic::metadata::MetadataMap;
use tonic::server::NamedService;
use tonic::{Request, Status};

use super::service::BrokerService;
use crate::proto;
use crate::proto::broker_server::Broker as _;

/// The route this module answers.
pub const SUBSCRIBE_PATH: &str = "/strata.v1.Broker/Subscribe";

/// Stored batches smaller than this are copied next to their field header
/// instead of going out as a chunk of their own: each chunk is an HTTP/2
/// DATA frame and a write, which costs more than copying a few KiB.
const CHUNK_MIN: usize = 16 << 10;

/// Length of the gRPC message prefix: compressed flag and u32 length.
const GRPC_PREFIX: usize = 5;

/// The generated `strata.v1.Broker` service, with Subscribe answered here.
#[derive(Debug, Clone)]
pub struct ZeroCopySubscribe<S> {
    /// tonic's generated server: every other method.
    inner: S,
    /// The handler Subscribe runs.
    service: BrokerService,
    /// Largest request accepted, as for the other methods.
    request_bytes_max: usize,
}

impl<S> ZeroCopySubscribe<S> {
    pub fn new(inner: S, service: BrokerService, request_bytes_max: usize) -> Self {
        ZeroCopySubscribe { inner, service, request_bytes_max }
    }
}

impl<S: NamedService> NamedService for ZeroCopySubscribe<S> {
    const NAME: &'static str = S::NAME;
}

impl<S> tower::Service<http::Request<Body>> for ZeroCopySubscribe<S>
where
    S: tower::Service<http::Request<Body>, Response = http::Response<Body>, Error = Infallible>,
    S::Future: Send + 'static,
{
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = BoxFuture<'static, Result<http::Response<Body>, Infallible>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<Body>) -> Self::Future {
        if request.uri().path() != SUBSCRIBE_PATH {
            return Box::pin(self.inner.call(request));
        }
        let (service, limit) = (self.service.clone(), self.request_bytes_max);
        Box::pin(async move { Ok(subscribe(service, request, limit).await.unwrap_or_else(Status::into_http)) })
    }
}

/// Decodes the one request message, runs the handler, streams its answer.
async fn subscribe(
    service: BrokerService,
    request: http::Request<Body>,
    limit: usize,
) -> Result<http::Response<Body>, Status> {
    let (parts, body) = request.into_parts();
    let bytes = http_body_util::Limited::new(body, limit + GRPC_PREFIX)
        .collect()
        .await
        .map_err(|e| match e.downcast::<http_body_util::LengthLimitError>() {
            Ok(_) => Status::resource_exhausted(format!("request too large: over the limit of {limit} bytes")),
            Err(e) => Status::unavailable(format!("reading the request: {e}")),
        })?
        .to_bytes();
    let message = proto::SubscribeRequest::decode(unframe(bytes)?)
        .map_err(|e| Status::invalid_argument(format!("malformed SubscribeRequest: {e}")))?;
    let request = Request::from_parts(MetadataMap::from_headers(parts.headers), parts.extensions, message);
    let stream = service.subscribe(request).await?.into_inner();
    let mut response = http::Response::new(Body::new(PushBody { stream, queued: VecDeque::new(), ended: false }));
    response.headers_mut().insert(http::header::CONTENT_TYPE, http::HeaderValue::from_static("application/grpc"));
    Ok(response)
}

/// The message inside a request body of exactly one uncompressed gRPC message.
fn unframe(mut body: Bytes) -> Result<Bytes, Status> {
    if body.len() < GRPC_PREFIX {
        return Err(Status::invalid_argument("malformed request: no gRPC message in the body"));
    }
    if body[0] != 0 {
        return Err(Status::unimplemented("compressed requests are not supported"));
    }
    let len = u32::from_be_bytes([body[1], body[2], body[3], body[4]]) as usize;
    if body.len() != GRPC_PREFIX + len {
        return Err(Status::invalid_argument(format!(
            "malformed request: gRPC message of {len} bytes in a body of {} bytes",
            body.len()
        )));
    }
    Ok(body.split_off(GRPC_PREFIX))
}

/// The response body: each message's chunks, then the status in trailers.
struct PushBody {
    stream: Pin<Box<dyn Stream<Item = Result<proto::SubscribeResponse, Status>> + Send>>,
    /// Chunks of the message being sent.
    queued: VecDeque<Bytes>,
    /// Trailers sent: the stream is over.
    ended: bool,
}

impl http_body::Body for PushBody {
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Status>>> {
        if let Some(chunk) = self.queued.pop_front() {
            return Poll::Ready(Some(Ok(Frame::data(chunk))));
        }
        if self.ended {
            return Poll::Ready(None);
        }
        let status = match self.stream.as_mut().poll_next(cx) {
            Poll::Pending => return Poll::Pending,
            Poll::Ready(Some(Ok(message))) => {
                frame_message(message, &mut self.queued);
                let chunk = self.queued.pop_front().expect("a message has at least its prefix");
                return Poll::Ready(Some(Ok(Frame::data(chunk))));
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

/// Appends `message` as one gRPC message to `out`: prefix and every field
/// but `record_batches` encoded by prost, then each batch (field 9) as its
/// field header followed by the stored bytes, shared, not copied. Protobuf
/// lets fields come in any order, so any decoder reads the same message.
pub fn frame_message(mut message: proto::SubscribeResponse, out: &mut VecDeque<Bytes>) {
    const RECORD_BATCHES_KEY: u8 = (9 << 3) | 2;
    let batches = std::mem::take(&mut message.record_batches);
    let head_len = message.encoded_len();
    let batches_len: usize =
        batches.iter().map(|b| 1 + prost::encoding::encoded_len_varint(b.len() as u64) + b.len()).sum();
    let mut chunk = BytesMut::with_capacity(GRPC_PREFIX + head_len + 16);
    chunk.put_u8(0);
    chunk.put_u32((head_len + batches_len) as u32);
    message.encode(&mut chunk).expect("the buffer grows as needed");
    for batch in batches {
        chunk.put_u8(RECORD_BATCHES_KEY);
        prost::encoding::encode_varint(batch.len() as u64, &mut chunk);
        if batch.len() < CHUNK_MIN {
            chunk.extend_from_slice(&batch);
        } else {
            out.push_back(chunk.split().freeze());
            out.push_back(batch);
        }
    }
    if !chunk.is_empty() {
        out.push_back(chunk.freeze());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
        let mut out = VecDeque::new();
        frame_message(message.clone(), &mut out);
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
    fn message_without_batches_is_one_chunk() {
        let message = proto::SubscribeResponse { member_id: "m-1".into(), generation: 4, ..Default::default() };
        let mut out = VecDeque::new();
        frame_message(message.clone(), &mut out);
        assert_eq!(out.len(), 1);
        assert_eq!(proto::SubscribeResponse::decode(&out[0][GRPC_PREFIX..]).unwrap(), message);
    }

    #[test]
    fn request_framing_is_checked() {
        assert_eq!(unframe(Bytes::from_static(&[0, 0, 0])).unwrap_err().code(), tonic::Code::InvalidArgument);
        assert_eq!(unframe(Bytes::from_static(&[1, 0, 0, 0, 0])).unwrap_err().code(), tonic::Code::Unimplemented);
        assert_eq!(unframe(Bytes::from_static(&[0, 0, 0, 0, 2, 1])).unwrap_err().code(), tonic::Code::InvalidArgument);
        assert_eq!(unframe(Bytes::from_static(&[0, 0, 0, 0, 1, 9])).unwrap(), Bytes::from_static(&[9]));
    }
}
