//! The gRPC codec of every strata service and client: tonic-prost's, except
//! that the encoder reserves the message's exact size before writing it;
//! and [`frame_message`], which frames a message with record batches as
//! body chunks that share the batches' bytes (`routes.rs`, `client`).
//!
//! tonic encodes into a buffer that starts at 8 KiB and grows as prost
//! writes, so a 100 KB produce request or an 8 MiB fetch response was
//! reallocated and copied several times on its way out (`_int_realloc`
//! was 5% of produce CPU). One `encoded_len` pass is far cheaper.

use std::collections::VecDeque;
use std::marker::PhantomData;
use std::sync::Arc;

use bytes::{Buf, BufMut, Bytes, BytesMut};

use prost::Message;
use tonic::codec::{BufferSettings, Codec, EncodeBuf, Encoder};
use tonic::Status;
use tonic_prost::ProstDecoder;

/// Named by the generated code (`build.rs`: `codec_path`).
#[derive(Debug, Clone)]
pub struct StrataCodec<T, U>(PhantomData<(T, U)>);

impl<T, U> Default for StrataCodec<T, U> {
    fn default() -> Self {
        StrataCodec(PhantomData)
    }
}

impl<T, U> Codec for StrataCodec<T, U>
where
    T: Message + Send + 'static,
    U: Message + Default + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = SizedEncoder<T>;
    type Decoder = ProstDecoder<U>;

    fn encoder(&mut self) -> Self::Encoder {
        SizedEncoder(PhantomData)
    }

    fn decoder(&mut self) -> Self::Decoder {
        ProstDecoder::new(BufferSettings::default())
    }
}

/// Encodes a prost message into a buffer grown once to its exact size.
#[derive(Debug, Clone)]
pub struct SizedEncoder<T>(PhantomData<T>);

impl<T: Message> Encoder for SizedEncoder<T> {
    type Item = T;
    type Error = Status;

    fn encode(&mut self, item: T, buf: &mut EncodeBuf<'_>) -> Result<(), Status> {
        buf.reserve(item.encoded_len());
        item.encode(buf).map_err(|e| Status::internal(format!("encoding a response: {e}")))
    }
}

use crate::config::FETCH_RECORDS_MAX;
use crate::config::PUSH_SHARED_BATCH_BYTES_MIN as CHUNK_MIN;

/// Length of the gRPC message prefix: compressed flag and u32 length.
pub const GRPC_PREFIX: usize = 5;

/// One gRPC message as body chunks: the prefix and `head` (the message
/// without its batches) encoded by prost, then each batch as a `bytes`
/// entry of field `field` (1-15): its field header followed by the stored
/// bytes, shared, not copied. Protobuf lets fields come in any order, so
/// any decoder reads the message `head` plus these batches.
pub fn frame_message<M: Message>(head: &M, batches: Vec<Bytes>, field: u8) -> VecDeque<Bytes> {
    debug_assert!((1..16).contains(&field), "a one-byte field key");
    let key = (field << 3) | 2;
    let mut out = VecDeque::new();
    let head_len = head.encoded_len();
    let batches_len: usize = batches.iter().map(|b| len_delimited(b.len())).sum();
    // Small batches are copied into chunks of at most about 64 KiB; the
    // first is sized to what it will hold, so it never grows.
    let inline: usize = batches
        .iter()
        .map(|b| {
            1 + prost::encoding::encoded_len_varint(b.len() as u64) + if b.len() < CHUNK_MIN { b.len() } else { 0 }
        })
        .sum();
    let mut chunk = new_chunk(GRPC_PREFIX + head_len + inline.min(RECORD_CHUNK_BYTES));
    chunk.put_u8(0);
    chunk.put_u32((head_len + batches_len) as u32);
    head.encode(&mut chunk).expect("the buffer grows as needed");
    for batch in batches {
        let shared = batch.len() >= CHUNK_MIN;
        let need = 1 + prost::encoding::encoded_len_varint(batch.len() as u64) + if shared { 0 } else { batch.len() };
        make_room(&mut chunk, &mut out, need);
        chunk.put_u8(key);
        prost::encoding::encode_varint(batch.len() as u64, &mut chunk);
        if shared {
            out.push_back(chunk.split().freeze());
            out.push_back(batch);
        } else {
            chunk.extend_from_slice(&batch);
        }
    }
    if !chunk.is_empty() {
        out.push_back(chunk.freeze());
    }
    out
}

/// Bytes at which [`frame_message`] and [`frame_records`] start a new
/// chunk: small enough for
/// the allocator to recycle (a whole-response buffer of 8 MiB came back as
/// freshly faulted, zeroed pages each time: `clear_page_erms`).
const RECORD_CHUNK_BYTES: usize = 64 << 10;

/// Makes room for `need` more bytes in `chunk`: when they do not fit, the
/// chunk goes out as it is and a new one starts, rather than growing it
/// (growing copied the chunk, and its realloc faulted in zeroed pages).
fn make_room(chunk: &mut BytesMut, out: &mut VecDeque<Bytes>, need: usize) {
    if chunk.capacity() - chunk.len() < need {
        if !chunk.is_empty() {
            out.push_back(chunk.split().freeze());
        }
        *chunk = new_chunk(RECORD_CHUNK_BYTES.max(need));
    }
}

/// Bytes skipped at the start of each large chunk's buffer.
const CHUNK_SKEW_BYTES: usize = 2 << 10;

/// Chunks smaller than this (most messages: acks, produce responses, a few
/// records) start at their buffer's start: the skew would be most of their
/// memory, and copies that small do not take the stalling path.
const CHUNK_SKEW_MIN_CAPACITY: usize = 16 << 10;

/// An empty chunk; a large one starts [`CHUNK_SKEW_BYTES`] into its buffer. A
/// buffer fresh from the allocator starts on a page; rustls copies each
/// 16 KiB of it into a record buffer of its own that also starts on a page,
/// 14 bytes further on (its 5-byte header, HTTP/2's 9), and with source
/// and destination that close modulo 4 KiB this CPU's `rep movsb` (glibc's
/// memcpy for large copies) stalls on every load that seems to hit a store
/// still pending: TLS per-record reads spent 17-20% of their samples in that
/// copy, against 4% for the same bytes copied from stored batches.
fn new_chunk(capacity: usize) -> BytesMut {
    if capacity < CHUNK_SKEW_MIN_CAPACITY {
        return BytesMut::with_capacity(capacity);
    }
    let mut chunk = BytesMut::with_capacity(capacity + CHUNK_SKEW_BYTES);
    chunk.put_bytes(0, CHUNK_SKEW_BYTES);
    chunk.advance(CHUNK_SKEW_BYTES);
    chunk
}

/// Field number of `value` in `StoredRecord`.
const VALUE_FIELD: u8 = 6;

/// A record as `StoredRecord` (field 1 of FetchResponse and
/// SubscribeResponse) on the wire, its value apart: the value is sent after
/// the other fields (protobuf allows any order), shared when large.
pub trait WireRecord {
    /// Takes the value out (what is left is encoded by the other two).
    fn take_value(&mut self) -> Bytes;
    /// Encoded length of every field but the value.
    fn len_without_value(&self) -> usize;
    /// Encodes every field but the value.
    fn encode_without_value(&self, buf: &mut BytesMut);
}

impl WireRecord for crate::proto::StoredRecord {
    fn take_value(&mut self) -> Bytes {
        std::mem::take(&mut self.value)
    }

    fn len_without_value(&self) -> usize {
        debug_assert!(self.value.is_empty(), "taken");
        self.encoded_len()
    }

    fn encode_without_value(&self, buf: &mut BytesMut) {
        self.encode_raw(buf);
    }
}

/// Stored records of one partition, encoded straight from storage: no
/// prost `StoredRecord` per record (its topic `String` and header
/// `HashMap` were an allocation or two per record).
#[derive(Debug)]
pub struct TopicRecords {
    pub topic: String,
    pub partition: u32,
    pub records: Vec<crate::storage::batch::StoredRecord>,
}

impl TopicRecords {
    /// The same records as prost messages (for tonic's own paths).
    pub fn into_proto(self) -> Vec<crate::proto::StoredRecord> {
        let (topic, partition) = (self.topic, self.partition);
        self.records.into_iter().map(|r| super::convert::stored_record(&topic, partition, r)).collect()
    }
}

/// A `StoredRecord` field by field as prost writes it: defaults (empty,
/// zero) omitted; header entries in stored order (a repeated key decodes as
/// its last value, as collecting them into the map did).
struct StoredOf<'a> {
    topic: &'a str,
    partition: u32,
    record: crate::storage::batch::StoredRecord,
}

fn len_delimited(len: usize) -> usize {
    1 + prost::encoding::encoded_len_varint(len as u64) + len
}

fn varint_field(v: u64) -> usize {
    if v == 0 {
        0
    } else {
        1 + prost::encoding::encoded_len_varint(v)
    }
}

fn bytes_field(b: &[u8]) -> usize {
    if b.is_empty() {
        0
    } else {
        len_delimited(b.len())
    }
}

fn put_bytes_field(buf: &mut BytesMut, field: u8, b: &[u8]) {
    if !b.is_empty() {
        buf.put_u8((field << 3) | 2);
        prost::encoding::encode_varint(b.len() as u64, buf);
        buf.put_slice(b);
    }
}

fn put_varint_field(buf: &mut BytesMut, field: u8, v: u64) {
    if v != 0 {
        buf.put_u8(field << 3);
        prost::encoding::encode_varint(v, buf);
    }
}

fn header_entry_len(k: &str, v: &[u8]) -> usize {
    bytes_field(k.as_bytes()) + bytes_field(v)
}

impl WireRecord for StoredOf<'_> {
    fn take_value(&mut self) -> Bytes {
        std::mem::take(&mut self.record.value)
    }

    fn len_without_value(&self) -> usize {
        self.fields().len()
    }

    fn encode_without_value(&self, buf: &mut BytesMut) {
        self.fields().put(buf);
    }
}

impl StoredOf<'_> {
    fn fields(&self) -> StoredFields<'_, impl Iterator<Item = (&str, &[u8])> + Clone> {
        let r = &self.record;
        StoredFields {
            topic: self.topic,
            partition: self.partition,
            offset: r.offset,
            timestamp_ms: r.timestamp_ms,
            key: &r.key,
            headers: r.headers.iter().map(|(k, v)| (k.as_str(), &v[..])),
        }
    }
}

/// A `StoredRecord`'s fields but its value, as prost writes them.
struct StoredFields<'a, H> {
    topic: &'a str,
    partition: u32,
    offset: u64,
    timestamp_ms: i64,
    key: &'a [u8],
    /// The header entries, in stored order.
    headers: H,
}

impl<'a, H: Iterator<Item = (&'a str, &'a [u8])> + Clone> StoredFields<'a, H> {
    fn len(&self) -> usize {
        bytes_field(self.topic.as_bytes())
            + varint_field(self.partition as u64)
            + varint_field(self.offset)
            + varint_field(self.timestamp_ms as u64)
            + bytes_field(self.key)
            + self.headers.clone().map(|(k, v)| len_delimited(header_entry_len(k, v))).sum::<usize>()
    }

    fn put(&self, buf: &mut BytesMut) {
        put_bytes_field(buf, 1, self.topic.as_bytes());
        put_varint_field(buf, 2, self.partition as u64);
        put_varint_field(buf, 3, self.offset);
        put_varint_field(buf, 4, self.timestamp_ms as u64);
        put_bytes_field(buf, 5, self.key);
        for (k, v) in self.headers.clone() {
            buf.put_u8((HEADERS_FIELD << 3) | 2);
            prost::encoding::encode_varint(header_entry_len(k, v) as u64, buf);
            put_bytes_field(buf, 1, k.as_bytes());
            put_bytes_field(buf, 2, v);
        }
    }
}

/// Field number of `headers` in `StoredRecord`.
const HEADERS_FIELD: u8 = 7;

/// [`frame_records`] for records as stored (`None`: no records).
pub fn frame_stored_records<M: Message>(
    head: &M,
    records: Option<TopicRecords>,
    batches: Vec<Bytes>,
    batch_field: u8,
) -> VecDeque<Bytes> {
    match records {
        None => frame_message(head, batches, batch_field),
        Some(records) => frame_with_records(head, batches, batch_field, stored_record_chunks(records)),
    }
}

/// One gRPC message as body chunks, like [`frame_message`], for a
/// FetchResponse or SubscribeResponse whose `records` (field 1) were taken
/// out of `head` (see [`record_chunks`]).
pub fn frame_records<M: Message, R: WireRecord>(
    head: &M,
    records: Vec<R>,
    batches: Vec<Bytes>,
    batch_field: u8,
) -> VecDeque<Bytes> {
    frame_with_records(head, batches, batch_field, record_chunks(records))
}

/// Records encoded as `records` entries (field 1) of a FetchResponse or
/// SubscribeResponse: their length on the wire and the chunks that hold
/// them, to follow the message's head ([`frame_with_records`]).
pub type RecordChunks = crate::broker::partition::Encoded;

/// [`record_chunks`] for records as stored.
pub fn stored_record_chunks(records: TopicRecords) -> RecordChunks {
    let TopicRecords { topic, partition, records } = records;
    record_chunks(records.into_iter().map(|record| StoredOf { topic: &topic, partition, record }).collect())
}

/// `records` as `records` entries: each record's size is computed once
/// (prost's `encode` would size every record, headers map included, once
/// for the message length and again for its own), the records go into
/// chunks of about 64 KiB rather than one buffer of the whole response,
/// and a value of 16 KiB or more is sent as its own chunk, shared with the
/// stored batch.
pub fn record_chunks<R: WireRecord>(mut records: Vec<R>) -> RecordChunks {
    let mut out = RecordWriter::default();
    if records.is_empty() {
        return out.finish();
    }
    let values: Vec<Bytes> = records.iter_mut().map(|r| r.take_value()).collect();
    let lens: Vec<usize> = records.iter().zip(&values).map(|(r, v)| r.len_without_value() + bytes_field(v)).collect();
    for ((record, value), len) in records.iter().zip(values).zip(lens) {
        out.put(len, |chunk| record.encode_without_value(chunk), &value, || value.clone());
    }
    out.finish()
}

/// Writes `records` entries into chunks of about 64 KiB (see
/// [`record_chunks`]).
#[derive(Debug, Default)]
struct RecordWriter {
    out: RecordChunks,
    chunk: BytesMut,
}

impl RecordWriter {
    /// One record of `len` bytes: `fields` writes all but its value, which
    /// is copied after them, or, when large, sent as its own chunk
    /// (`shared`, the stored bytes).
    fn put(&mut self, len: usize, fields: impl FnOnce(&mut BytesMut), value: &[u8], shared: impl FnOnce() -> Bytes) {
        let share = value.len() >= CHUNK_MIN;
        // What this record writes into the chunk (a shared value does not).
        let inline = len_delimited(len) - if share { value.len() } else { 0 };
        if self.chunk.capacity() == 0 {
            self.chunk = new_chunk(RECORD_CHUNK_BYTES.max(inline));
        }
        make_room(&mut self.chunk, &mut self.out.chunks, inline);
        let chunk = &mut self.chunk;
        chunk.put_u8((1 << 3) | 2);
        prost::encoding::encode_varint(len as u64, chunk);
        fields(chunk);
        if !value.is_empty() {
            chunk.put_u8((VALUE_FIELD << 3) | 2);
            prost::encoding::encode_varint(value.len() as u64, chunk);
            if share {
                self.out.chunks.push_back(chunk.split().freeze());
                self.out.chunks.push_back(shared());
            } else {
                chunk.extend_from_slice(value);
            }
        }
        self.out.len += len_delimited(len);
    }

    fn finish(mut self) -> RecordChunks {
        if !self.chunk.is_empty() {
            self.out.chunks.push_back(self.chunk.freeze());
        }
        self.out
    }
}

/// Stored records of one partition encoded as `records` entries while
/// they are read ([`crate::broker::partition::ReadSink`]): each record goes
/// from the stored batch straight into the response's chunks, with no
/// `StoredRecord` built, kept and dropped per record in between.
#[derive(Debug)]
pub struct RecordEncoder {
    topic: String,
    partition: u32,
    records: usize,
    writer: RecordWriter,
    /// Headers of records that carry a trace context, when collected.
    traced: Option<Vec<Vec<(String, Bytes)>>>,
}

impl RecordEncoder {
    /// `traced`: also keep the headers of up to `RECEIVE_LINKS_MAX` records
    /// that carry a trace context (for a receive span's links).
    pub fn new(topic: &str, partition: u32, traced: bool) -> Self {
        RecordEncoder {
            topic: topic.to_string(),
            partition,
            records: 0,
            writer: RecordWriter::default(),
            traced: traced.then(Vec::new),
        }
    }

    /// The encoded records, and the trace headers collected.
    pub fn finish(self) -> (RecordChunks, Vec<Vec<(String, Bytes)>>) {
        (self.writer.finish(), self.traced.unwrap_or_default())
    }
}

impl crate::broker::partition::EncodingSink for RecordEncoder {
    fn finish(self: Box<Self>) -> RecordChunks {
        (*self).finish().0
    }
}

/// The encoding a Subscribe stream's reads go through: records straight
/// into `records` entries ([`RecordEncoder`]; no trace headers kept).
pub fn subscribe_encoding() -> crate::broker::partition::RecordEncoding {
    Arc::new(|topic: &str, partition: u32| Box::new(RecordEncoder::new(topic, partition, false)))
}

/// Records of a response: as stored, or already encoded as they were read.
#[derive(Debug)]
pub enum WireRecords {
    Stored(TopicRecords),
    Encoded(RecordChunks),
}

impl WireRecords {
    /// The records as prost messages (for tonic's own paths).
    pub fn into_proto(self) -> Result<Vec<crate::proto::StoredRecord>, Status> {
        match self {
            WireRecords::Stored(records) => Ok(records.into_proto()),
            // `records` entries are a SubscribeResponse of only records.
            WireRecords::Encoded(chunks) => {
                let bytes: Vec<u8> = chunks.chunks.iter().flat_map(|c| c.iter().copied()).collect();
                crate::proto::SubscribeResponse::decode(&bytes[..])
                    .map(|m| m.records)
                    .map_err(|e| Status::internal(format!("records encoded as read do not decode: {e}")))
            }
        }
    }

    pub fn into_chunks(self) -> RecordChunks {
        match self {
            WireRecords::Stored(records) => stored_record_chunks(records),
            WireRecords::Encoded(chunks) => chunks,
        }
    }
}

impl crate::broker::partition::ReadSink for RecordEncoder {
    fn len(&self) -> usize {
        self.records
    }

    fn push(&mut self, r: &crate::storage::batch::RecordView<'_>) {
        let fields = StoredFields {
            topic: &self.topic,
            partition: self.partition,
            offset: r.offset,
            timestamp_ms: r.timestamp_ms,
            key: r.key(),
            headers: r.headers(),
        };
        let value = r.value();
        self.writer.put(fields.len() + bytes_field(value), |chunk| fields.put(chunk), value, || r.value_bytes());
        self.records += 1;
        if let Some(traced) = self.traced.as_mut().filter(|t| t.len() < crate::telemetry::RECEIVE_LINKS_MAX) {
            if r.headers().any(|(k, _)| k == crate::telemetry::TRACEPARENT) {
                traced.push(r.headers().map(|(k, v)| (k.to_string(), Bytes::copy_from_slice(v))).collect());
            }
        }
    }
}

/// `head` framed by [`frame_message`] with its batches, followed by
/// `records` (protobuf lets fields come in any order: the prefix's length
/// covers them too).
pub fn frame_with_records<M: Message>(
    head: &M,
    batches: Vec<Bytes>,
    batch_field: u8,
    records: RecordChunks,
) -> VecDeque<Bytes> {
    let mut out = frame_message(head, batches, batch_field);
    if records.len == 0 {
        return out;
    }
    let mut first = BytesMut::from(out.pop_front().expect("a prefix chunk"));
    let total = u32::from_be_bytes(first[1..GRPC_PREFIX].try_into().expect("4 bytes")) as usize + records.len;
    first[1..GRPC_PREFIX].copy_from_slice(&(total as u32).to_be_bytes());
    out.push_front(first.freeze());
    out.extend(records.chunks);
    out
}

/// Received DATA frames, shared, in order.
#[derive(Debug)]
pub struct Frames {
    chunks: VecDeque<Bytes>,
    /// Bytes in `chunks`.
    remaining: usize,
    /// Largest message accepted.
    limit: usize,
}

impl Frames {
    /// No frames yet; messages over `limit` bytes are refused.
    pub fn new(limit: usize) -> Self {
        Frames { chunks: VecDeque::new(), remaining: 0, limit }
    }

    /// Bytes received and not yet decoded.
    pub fn remaining(&self) -> usize {
        self.remaining
    }

    pub fn push(&mut self, chunk: Bytes) {
        if !chunk.is_empty() {
            self.remaining += chunk.len();
            self.chunks.push_back(chunk);
        }
    }

    /// The length of the first message, once its gRPC prefix is here
    /// (refused when compressed or over the limit).
    fn message_len(&self) -> Result<Option<usize>, Status> {
        if self.remaining < GRPC_PREFIX {
            return Ok(None);
        }
        let mut prefix = [0u8; GRPC_PREFIX];
        self.peek(&mut prefix);
        if prefix[0] != 0 {
            return Err(Status::internal("compressed messages are not supported"));
        }
        let len = u32::from_be_bytes([prefix[1], prefix[2], prefix[3], prefix[4]]) as usize;
        if len > self.limit {
            return Err(Status::resource_exhausted(format!(
                "message of {len} bytes is too large: over the limit of {}",
                self.limit
            )));
        }
        Ok(Some(len))
    }

    /// Decodes the first message once all of it is here.
    pub fn next_message<M: Message + Default>(&mut self) -> Result<Option<M>, Status> {
        let Some(len) = self.message_len()? else { return Ok(None) };
        if self.remaining < GRPC_PREFIX + len {
            return Ok(None);
        }
        self.advance(GRPC_PREFIX);
        M::decode(Buf::take(&mut *self, len)).map(Some).map_err(|e| {
            let name = std::any::type_name::<M>().rsplit("::").next().unwrap_or("message");
            Status::internal(format!("malformed {name}: {e}"))
        })
    }

    /// A view of the first `len` bytes (shared, not copied).
    pub fn prefix(&self, len: usize) -> Frames {
        let mut out = Frames::new(self.limit);
        let mut left = len.min(self.remaining);
        for chunk in &self.chunks {
            if left == 0 {
                break;
            }
            let n = left.min(chunk.len());
            out.push(chunk.slice(..n));
            left -= n;
        }
        out
    }

    /// Copies the first `out.len()` bytes into `out` without consuming them.
    pub fn peek(&self, out: &mut [u8]) {
        let mut filled = 0;
        for chunk in &self.chunks {
            let n = chunk.len().min(out.len() - filled);
            out[filled..filled + n].copy_from_slice(&chunk[..n]);
            filled += n;
            if filled == out.len() {
                return;
            }
        }
    }
}

/// A message whose field 1 is its records (FetchResponse,
/// SubscribeResponse): what [`Incremental`] decodes as it arrives.
pub trait WithRecords: Message + Default {
    type Record: Message + Default;
    fn records_mut(&mut self) -> &mut Vec<Self::Record>;
}

impl WithRecords for crate::proto::FetchResponse {
    type Record = crate::proto::StoredRecord;
    fn records_mut(&mut self) -> &mut Vec<Self::Record> {
        &mut self.records
    }
}

/// Decodes one gRPC message at a time field by field as its bytes arrive,
/// each record (field 1) by prost as soon as all of it is there, so a
/// client decodes a large response while the rest of it is still on the
/// way, and from bytes just received (still in the cache), rather than all
/// of it once the last byte came. Fields other than the records go through
/// prost's `merge` one at a time: the message decodes as prost would.
#[derive(Debug, Default)]
pub struct Incremental<M> {
    message: M,
    /// Bytes of the message not decoded yet; None before its prefix.
    left: Option<usize>,
}

impl<M: WithRecords> Incremental<M> {
    /// Decodes what `frames` holds of the message: Some once all of it is.
    pub fn feed(&mut self, frames: &mut Frames) -> Result<Option<M>, Status> {
        let malformed = |e: &dyn std::fmt::Display| {
            let name = std::any::type_name::<M>().rsplit("::").next().unwrap_or("message");
            Status::internal(format!("malformed {name}: {e}"))
        };
        loop {
            let left = match self.left {
                Some(left) => left,
                None => {
                    let Some(len) = frames.message_len()? else { return Ok(None) };
                    frames.advance(GRPC_PREFIX);
                    len
                }
            };
            if left == 0 {
                self.left = None;
                return Ok(Some(std::mem::take(&mut self.message)));
            }
            self.left = Some(left);
            let Some((key, head, len)) = next_field(frames, left).map_err(|e| malformed(&e))? else { return Ok(None) };
            if frames.remaining < head + len {
                return Ok(None);
            }
            // Field 1, length-delimited: a record.
            if key == (1 << 3) | 2 {
                frames.advance(head);
                // Its bytes as one shared slice (copied only when it spans
                // two frames): prost decodes from a slice at full speed,
                // and its key and value are slices of the frame.
                let record = M::Record::decode(frames.copy_to_bytes(len)).map_err(|e| malformed(&e))?;
                let records = self.message.records_mut();
                if records.is_empty() {
                    // Room for as many more as are likely to follow, so the
                    // list is not moved to ever larger fresh pages as it
                    // grows (that copy and the page zeroing were a fifth of
                    // a per-record consumer's CPU); never for more records
                    // than the message has bytes for, nor more room than it
                    // has bytes, nor more than a Fetch returns (the room is
                    // taken before those bytes arrive: a peer that claims a
                    // huge message gets no more than this).
                    let after = left - head - len;
                    let size = std::mem::size_of::<M::Record>().max(1);
                    records.reserve(1 + (after / (head + len)).min(after / size).min(FETCH_RECORDS_MAX));
                }
                records.push(record);
            } else {
                self.message.merge(Buf::take(&mut *frames, head + len)).map_err(|e| malformed(&e))?;
            }
            self.left = Some(left - head - len);
        }
    }
}

/// The next top-level field in `frames`, within `left` bytes of its
/// message: its key, the length of its key (and length prefix) and of the
/// rest, or None while its head is not all here.
fn next_field(frames: &Frames, left: usize) -> Result<Option<(u64, usize, usize)>, &'static str> {
    // A key and a varint take 20 bytes at most: read in place when the
    // first frame holds them (nearly always), else copied together.
    let mut copied = [0u8; 20];
    let have = copied.len().min(left).min(frames.remaining);
    let head: &[u8] = match frames.chunk().get(..have) {
        Some(front) => front,
        None => {
            frames.peek(&mut copied[..have]);
            &copied[..have]
        }
    };
    let varint = |at: usize| -> Option<(u64, usize)> {
        let mut value = 0u64;
        for (i, b) in head.get(at..)?.iter().take(10).enumerate() {
            value |= u64::from(b & 0x7f) << (7 * i);
            if b & 0x80 == 0 {
                return Some((value, at + i + 1));
            }
        }
        None
    };
    let complete = |r: Option<(u64, usize)>| -> Result<Option<(u64, usize)>, &'static str> {
        match r {
            Some(r) => Ok(Some(r)),
            None if have == copied.len() || have == left => Err("a varint runs past its message"),
            None => Ok(None),
        }
    };
    let Some((key, at)) = complete(varint(0))? else { return Ok(None) };
    let (head_len, rest) = match key & 7 {
        0 => match complete(varint(at))? {
            Some((_, end)) => (end, 0),
            None => return Ok(None),
        },
        1 => (at, 8),
        5 => (at, 4),
        2 => match complete(varint(at))? {
            Some((len, end)) => (end, usize::try_from(len).map_err(|_| "a length past its message")?),
            None => return Ok(None),
        },
        _ => return Err("a field of an unsupported wire type"),
    };
    if head_len.checked_add(rest).is_none_or(|n| n > left) {
        return Err("a field runs past its message");
    }
    Ok(Some((key, head_len, rest)))
}

impl Buf for Frames {
    fn remaining(&self) -> usize {
        self.remaining
    }

    fn chunk(&self) -> &[u8] {
        self.chunks.front().map_or(&[], |c| c.as_ref())
    }

    fn advance(&mut self, mut n: usize) {
        assert!(n <= self.remaining, "advance past the end");
        self.remaining -= n;
        while n > 0 {
            let front = self.chunks.front_mut().expect("remaining counts these bytes");
            if n < front.len() {
                front.advance(n);
                return;
            }
            n -= front.len();
            self.chunks.pop_front();
        }
    }

    /// A slice of the frame when the bytes lie in one: no copy.
    fn copy_to_bytes(&mut self, len: usize) -> Bytes {
        assert!(len <= self.remaining, "copy_to_bytes past the end");
        match self.chunks.front_mut() {
            Some(front) if front.len() >= len => {
                let out = front.split_to(len);
                if front.is_empty() {
                    self.chunks.pop_front();
                }
                self.remaining -= len;
                out
            }
            _ => {
                let mut out = BytesMut::with_capacity(len);
                out.put(Buf::take(&mut *self, len));
                out.freeze()
            }
        }
    }
}

/// A message with no batches sent apart, as body chunks (one).
pub fn frame_plain<M: Message>(message: &M) -> VecDeque<Bytes> {
    frame_message(message, Vec::new(), 1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::broker::partition::ReadSink;
    use crate::proto;
    use crate::storage::batch::{self, Compression, Record};
    use proptest::prelude::*;

    fn joined(chunks: &VecDeque<Bytes>) -> Vec<u8> {
        chunks.iter().flat_map(|c| c.iter().copied()).collect()
    }

    fn record() -> impl Strategy<Value = Record> {
        let value = prop_oneof![
            8 => proptest::collection::vec(any::<u8>(), 0..300),
            1 => (CHUNK_MIN - 2..CHUNK_MIN + 300).prop_map(|n| vec![9u8; n]),
        ];
        let header = ("[a-z]{0,3}|é", proptest::collection::vec(any::<u8>(), 0..8));
        (proptest::collection::vec(any::<u8>(), 0..12), value, proptest::collection::vec(header, 0..3), any::<i64>())
            .prop_map(|(key, value, headers, timestamp_ms)| Record {
                key: key.into(),
                value: value.into(),
                headers: headers.into_iter().map(|(k, v)| (k, v.into())).collect(),
                timestamp_ms: timestamp_ms / 4,
            })
    }

    proptest! {
        /// Records encoded while they are walked in the stored batch decode
        /// as the prost messages of the records decoded first, compressed
        /// batches too; large values are shared with the batch.
        #[test]
        fn records_encoded_from_the_batch_decode_as_their_prost_messages(
            records in proptest::collection::vec(record(), 1..40),
            base in 0u64..1 << 40,
            partition in 0u32..3,
            gzip in any::<bool>(),
        ) {
            let codec = if gzip { Compression::Gzip } else { Compression::None };
            let mut encoded = batch::encode_compressed(&records, None, codec);
            batch::set_base_offset(&mut encoded, base);
            let stored = Bytes::from(encoded);
            let mut sink = RecordEncoder::new("payments.eu", partition, false);
            batch::for_each_record(&stored, |r| sink.push(r)).unwrap();
            prop_assert_eq!(sink.len(), records.len());
            let (chunks, _) = sink.finish();
            let head = proto::FetchResponse { next_offset: base + records.len() as u64, ..Default::default() };
            let out = frame_with_records(&head, Vec::new(), 5, chunks);
            let bytes = joined(&out);
            let want = proto::FetchResponse {
                records: TopicRecords {
                    topic: "payments.eu".into(),
                    partition,
                    records: batch::decode_records(&stored).unwrap(),
                }
                .into_proto(),
                ..head
            };
            prop_assert_eq!(u32::from_be_bytes(bytes[1..5].try_into().unwrap()) as usize, bytes.len() - GRPC_PREFIX);
            prop_assert_eq!(proto::FetchResponse::decode(&bytes[GRPC_PREFIX..]).unwrap(), want);
            if !gzip {
                let shared = out.iter().filter(|c| stored.as_ptr_range().contains(&c.as_ptr())).count();
                prop_assert_eq!(shared, records.iter().filter(|r| r.value.len() >= CHUNK_MIN).count());
            }
        }
    }

    #[test]
    fn trace_headers_are_kept_only_when_asked_and_up_to_the_limit() {
        let traced = |i: usize| Record {
            value: Bytes::from(vec![1u8; 10]),
            headers: if i.is_multiple_of(2) {
                vec![(crate::telemetry::TRACEPARENT.to_string(), Bytes::from(format!("tp-{i}")))]
            } else {
                Vec::new()
            },
            timestamp_ms: 1,
            ..Default::default()
        };
        let n = crate::telemetry::RECEIVE_LINKS_MAX * 2 + 4;
        let stored = Bytes::from(batch::encode(&(0..n).map(traced).collect::<Vec<_>>(), None));
        for asked in [false, true] {
            let mut sink = RecordEncoder::new("t", 0, asked);
            batch::for_each_record(&stored, |r| sink.push(r)).unwrap();
            let (_, kept) = sink.finish();
            if asked {
                assert_eq!(kept.len(), crate::telemetry::RECEIVE_LINKS_MAX);
                assert_eq!(kept[1], vec![(crate::telemetry::TRACEPARENT.to_string(), Bytes::from("tp-2"))]);
            } else {
                assert!(kept.is_empty());
            }
        }
    }

    fn fetch_response(records: usize) -> proto::FetchResponse {
        proto::FetchResponse {
            records: (0..records as u64)
                .map(|i| proto::StoredRecord {
                    topic: "payments.eu".into(),
                    partition: 2,
                    offset: 1 << 33 | i,
                    timestamp_ms: -(i as i64),
                    key: if i % 3 == 0 { Bytes::new() } else { Bytes::from(format!("k{i}")) },
                    value: Bytes::from(vec![i as u8; (i as usize * 37) % 700]),
                    headers: [("id".to_string(), Bytes::from(format!("e{i}")))].into(),
                })
                .collect(),
            next_offset: 1 << 40,
            high_watermark: 7,
            log_start_offset: 3,
            record_batches: vec![Bytes::from_static(b"batch")],
        }
    }

    /// Two responses back to back, cut into pieces of any size, decode as
    /// prost decodes them, each only once all of it is here.
    #[test]
    fn incremental_decoding_gives_what_prost_gives_from_any_pieces() {
        let (first, second) = (fetch_response(120), fetch_response(0));
        let bytes: Vec<u8> = frame_plain(&first).into_iter().chain(frame_plain(&second)).flatten().collect();
        let first_len = GRPC_PREFIX + first.encoded_len();
        for piece in [1usize, 2, 3, 7, 19, 4096, 65_537] {
            let (mut frames, mut decoder) = (Frames::new(1 << 20), Incremental::<proto::FetchResponse>::default());
            let mut decoded = Vec::new();
            let mut fed = 0;
            for part in bytes.chunks(piece) {
                frames.push(Bytes::copy_from_slice(part));
                fed += part.len();
                while let Some(m) = decoder.feed(&mut frames).unwrap() {
                    assert!(fed >= first_len, "none before all of it is here");
                    decoded.push(m);
                }
            }
            assert_eq!(decoded, vec![first.clone(), second.clone()], "pieces of {piece} bytes");
            assert_eq!(frames.remaining(), 0);
        }
    }

    /// The record list's room is taken when the first record arrives,
    /// before the rest: a peer claiming the largest message with tiny
    /// records gets room for at most a Fetch's worth of them.
    #[test]
    fn incremental_decoding_reserves_a_bounded_record_list() {
        let record = proto::StoredRecord { offset: 1, ..Default::default() };
        let mut body = vec![0x0a, record.encoded_len() as u8];
        body.extend(record.encode_to_vec());
        let claimed = 200usize << 20;
        let mut framed = vec![0];
        framed.extend((claimed as u32).to_be_bytes());
        framed.extend_from_slice(&body);
        let (mut frames, mut decoder) = (Frames::new(256 << 20), Incremental::<proto::FetchResponse>::default());
        frames.push(Bytes::from(framed));
        assert!(decoder.feed(&mut frames).unwrap().is_none(), "the rest is still to come");
        let room = decoder.message.records.capacity();
        assert!((1..=FETCH_RECORDS_MAX + 1).contains(&room), "room for {room} records");
        // A well-sized response gets room for all its records at once.
        let whole = fetch_response(300);
        let mut frames = Frames::new(1 << 20);
        let mut decoder = Incremental::<proto::FetchResponse>::default();
        frames.push(frame_plain(&whole).into_iter().flatten().collect::<Vec<u8>>().into());
        let got = decoder.feed(&mut frames).unwrap().expect("complete");
        assert_eq!(got, whole);
    }

    #[test]
    fn incremental_decoding_refuses_fields_past_their_message() {
        let feed = |body: &[u8]| {
            let mut frames = Frames::new(1 << 20);
            let mut framed = vec![0];
            framed.extend((body.len() as u32).to_be_bytes());
            framed.extend_from_slice(body);
            framed.extend_from_slice(&[0u8; 32]); // what follows the message
            frames.push(Bytes::from(framed));
            Incremental::<proto::FetchResponse>::default().feed(&mut frames)
        };
        assert!(feed(&[0x10, 0x05]).unwrap().is_some_and(|m| m.next_offset == 5));
        for bad in [&[0x0a, 0x05, 1, 2][..], &[0x10, 0x80], &[0x0b], &[0x0a, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff]]
        {
            let e = feed(bad).unwrap_err();
            assert_eq!(e.code(), tonic::Code::Internal, "{bad:?}: {e:?}");
        }
        let mut frames = Frames::new(10);
        frames.push(Bytes::from_static(&[0, 0, 0, 0, 11]));
        let e = Incremental::<proto::FetchResponse>::default().feed(&mut frames).unwrap_err();
        assert_eq!(e.code(), tonic::Code::ResourceExhausted);
    }
}
