//! Record batch codec: the unit the log stores, reads, checksums and
//! recovers. Format version 1 (magic byte 1); all integers little-endian.
//!
//! Batch header (55 bytes):
//!
//! | pos | size | field              | notes                                             |
//! |-----|------|--------------------|---------------------------------------------------|
//! | 0   | 8    | base_offset u64    | offset of the first record; set by the log writer |
//! | 8   | 4    | batch_length u32   | bytes after this field (= total length - 12)      |
//! | 12  | 1    | magic u8           | format version, 1                                 |
//! | 13  | 4    | crc u32            | CRC-32 (IEEE) of bytes 17..end                    |
//! | 17  | 2    | attributes u16     | reserved, 0                                       |
//! | 19  | 4    | last_offset_delta  | record_count - 1                                  |
//! | 23  | 8    | first_timestamp i64| ms since the Unix epoch                           |
//! | 31  | 8    | max_timestamp i64  |                                                   |
//! | 39  | 8    | producer_id i64    | -1 when the producer is not idempotent            |
//! | 47  | 4    | first_sequence i32 | -1 when the producer is not idempotent            |
//! | 51  | 4    | record_count u32   |                                                   |
//! | 55  | ...  | records            |                                                   |
//!
//! The CRC does not cover the base offset, so the writer can stamp offsets
//! into a batch encoded (and checksummed) by another thread.
//!
//! Record (varint = unsigned LEB128, zigzag = signed LEB128 zigzag):
//!
//! | field            | type                                           |
//! |------------------|------------------------------------------------|
//! | length           | varint: bytes of the record after this field    |
//! | offset_delta     | varint                                          |
//! | timestamp_delta  | zigzag, relative to first_timestamp             |
//! | key              | varint length + bytes (length 0 = no key)       |
//! | value            | varint length + bytes                           |
//! | header_count     | varint                                          |
//! | headers          | per header: varint length + UTF-8 name, varint length + value |
//!
//! Decoding never trusts a length it has not bounds-checked: every length is
//! checked against the bytes that remain before it is used.

use bytes::Bytes;

/// Size of the fixed batch header.
pub const HEADER_LEN: usize = 55;
/// Bytes before the `batch_length` field's end: base offset + length.
pub const LENGTH_PREFIX_LEN: usize = 12;
/// Current format version.
pub const MAGIC: u8 = 1;
const CRC_START: usize = 17;
pub use crate::config::BATCH_BYTES_LIMIT;
/// Producer id stored for batches without an idempotent producer.
pub const NO_PRODUCER: i64 = -1;

/// A record as a producer supplies it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Record {
    pub key: Bytes,
    pub value: Bytes,
    pub headers: Vec<(String, Bytes)>,
    /// Milliseconds since the Unix epoch; already resolved (never 0 = "now" here).
    pub timestamp_ms: i64,
}

/// A record read back from the log, with its offset.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredRecord {
    pub offset: u64,
    pub timestamp_ms: i64,
    pub key: Bytes,
    pub value: Bytes,
    pub headers: Vec<(String, Bytes)>,
}

/// Idempotent-producer identity of a batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProducerStamp {
    pub producer_id: i64,
    pub first_sequence: i32,
}

/// Why a byte range is not a valid batch.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BatchError {
    #[error("truncated: need {needed} bytes, have {available}")]
    Truncated { needed: usize, available: usize },
    #[error("unsupported magic byte {0}")]
    BadMagic(u8),
    #[error("batch length {0} is outside the valid range")]
    BadLength(u64),
    #[error("CRC mismatch: stored {stored:#010x}, computed {computed:#010x}")]
    BadCrc { stored: u32, computed: u32 },
    #[error("malformed record: {0}")]
    BadRecord(&'static str),
}

/// The parsed fixed header of a batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchHeader {
    pub base_offset: u64,
    /// Total bytes of the batch including the header.
    pub total_len: usize,
    pub magic: u8,
    pub crc: u32,
    pub attributes: u16,
    pub last_offset_delta: u32,
    pub first_timestamp: i64,
    pub max_timestamp: i64,
    pub producer_id: i64,
    pub first_sequence: i32,
    pub record_count: u32,
}

impl BatchHeader {
    /// Parses and sanity-checks a header; `max_batch_len` bounds the length field.
    pub fn parse(buf: &[u8], max_batch_len: usize) -> Result<BatchHeader, BatchError> {
        if buf.len() < HEADER_LEN {
            return Err(BatchError::Truncated { needed: HEADER_LEN, available: buf.len() });
        }
        let batch_length = u32_at(buf, 8) as u64;
        let total = batch_length + LENGTH_PREFIX_LEN as u64;
        if total < HEADER_LEN as u64 || total > max_batch_len as u64 {
            return Err(BatchError::BadLength(total));
        }
        let magic = buf[12];
        if magic != MAGIC {
            return Err(BatchError::BadMagic(magic));
        }
        let header = BatchHeader {
            base_offset: u64_at(buf, 0),
            total_len: total as usize,
            magic,
            crc: u32_at(buf, 13),
            attributes: u16::from_le_bytes([buf[17], buf[18]]),
            last_offset_delta: u32_at(buf, 19),
            first_timestamp: u64_at(buf, 23) as i64,
            max_timestamp: u64_at(buf, 31) as i64,
            producer_id: u64_at(buf, 39) as i64,
            first_sequence: u32_at(buf, 47) as i32,
            record_count: u32_at(buf, 51),
        };
        if header.record_count == 0 || header.last_offset_delta != header.record_count - 1 {
            return Err(BatchError::BadRecord("record count disagrees with offset delta"));
        }
        Ok(header)
    }

    pub fn last_offset(&self) -> u64 {
        self.base_offset + self.last_offset_delta as u64
    }

    pub fn next_offset(&self) -> u64 {
        self.last_offset() + 1
    }

    pub fn producer(&self) -> Option<ProducerStamp> {
        (self.producer_id != NO_PRODUCER)
            .then_some(ProducerStamp { producer_id: self.producer_id, first_sequence: self.first_sequence })
    }
}

/// Checks the CRC of a whole batch (`buf.len()` must equal the header's total length).
pub fn verify_crc(header: &BatchHeader, buf: &[u8]) -> Result<(), BatchError> {
    if buf.len() != header.total_len {
        return Err(BatchError::Truncated { needed: header.total_len, available: buf.len() });
    }
    let computed = crc32fast::hash(&buf[CRC_START..]);
    if computed != header.crc {
        return Err(BatchError::BadCrc { stored: header.crc, computed });
    }
    Ok(())
}

/// Parses the header of a complete batch and verifies its CRC.
pub fn validate(buf: &[u8], max_batch_len: usize) -> Result<BatchHeader, BatchError> {
    let header = BatchHeader::parse(buf, max_batch_len)?;
    if buf.len() < header.total_len {
        return Err(BatchError::Truncated { needed: header.total_len, available: buf.len() });
    }
    verify_crc(&header, &buf[..header.total_len])?;
    Ok(header)
}

/// Encodes records into a batch with base offset 0 (the log stamps the real
/// one with [`set_base_offset`]). `records` must not be empty.
pub fn encode(records: &[Record], producer: Option<ProducerStamp>) -> Vec<u8> {
    assert!(!records.is_empty(), "a batch holds at least one record");
    let first_timestamp = records[0].timestamp_ms;
    let max_timestamp = records.iter().map(|r| r.timestamp_ms).max().unwrap_or(0);
    let body: usize = records.iter().map(|r| encoded_record_len(r, 0, 0) + 10).sum();
    let mut buf = Vec::with_capacity(HEADER_LEN + body);
    buf.resize(HEADER_LEN, 0);
    for (delta, record) in records.iter().enumerate() {
        // Wrapping: any i64 pair round-trips (decode adds back with wrapping_add),
        // so hostile timestamps cannot overflow.
        encode_record(&mut buf, record, delta as u64, record.timestamp_ms.wrapping_sub(first_timestamp));
    }
    let (producer_id, first_sequence) = match producer {
        Some(p) => (p.producer_id, p.first_sequence),
        None => (NO_PRODUCER, -1),
    };
    let total = buf.len();
    buf[8..12].copy_from_slice(&((total - LENGTH_PREFIX_LEN) as u32).to_le_bytes());
    buf[12] = MAGIC;
    buf[17..19].copy_from_slice(&0u16.to_le_bytes());
    buf[19..23].copy_from_slice(&(records.len() as u32 - 1).to_le_bytes());
    buf[23..31].copy_from_slice(&first_timestamp.to_le_bytes());
    buf[31..39].copy_from_slice(&max_timestamp.to_le_bytes());
    buf[39..47].copy_from_slice(&producer_id.to_le_bytes());
    buf[47..51].copy_from_slice(&first_sequence.to_le_bytes());
    buf[51..55].copy_from_slice(&(records.len() as u32).to_le_bytes());
    let crc = crc32fast::hash(&buf[CRC_START..]);
    buf[13..17].copy_from_slice(&crc.to_le_bytes());
    buf
}

/// Validates a batch a client encoded (a raw produce): exactly one batch of
/// this format, CRC intact, reserved attributes 0, every record well formed
/// with dense offset deltas 0..n, header timestamps that agree with the
/// records, and a producer stamp that is either absent (-1/-1) or
/// non-negative. Returns the header and the (zero-copy) records.
pub fn validate_client_batch(batch: &Bytes) -> Result<(BatchHeader, Vec<StoredRecord>), BatchError> {
    let header = BatchHeader::parse(batch, BATCH_BYTES_LIMIT)?;
    if header.total_len != batch.len() {
        return Err(BatchError::BadLength(batch.len() as u64));
    }
    verify_crc(&header, batch)?;
    if header.attributes != 0 {
        return Err(BatchError::BadRecord("attributes are reserved and must be 0"));
    }
    let stamp_ok = (header.producer_id == NO_PRODUCER && header.first_sequence == -1)
        || (header.producer_id >= 0 && header.first_sequence >= 0);
    if !stamp_ok {
        return Err(BatchError::BadRecord("producer id and sequence must both be -1 or both be non-negative"));
    }
    let records = decode_records(batch)?;
    if records.len() != header.record_count as usize {
        return Err(BatchError::BadRecord("record count disagrees with the records"));
    }
    for (i, r) in records.iter().enumerate() {
        if r.offset != header.base_offset + i as u64 {
            return Err(BatchError::BadRecord("offset deltas must be 0, 1, 2, ..."));
        }
    }
    if records[0].timestamp_ms != header.first_timestamp {
        return Err(BatchError::BadRecord("first record's timestamp delta must be 0"));
    }
    if records.iter().map(|r| r.timestamp_ms).max() != Some(header.max_timestamp) {
        return Err(BatchError::BadRecord("max_timestamp disagrees with the records"));
    }
    Ok((header, records))
}

/// Stamps the base offset into an encoded batch (not covered by the CRC).
pub fn set_base_offset(batch: &mut [u8], base_offset: u64) {
    batch[0..8].copy_from_slice(&base_offset.to_le_bytes());
}

/// Decodes the records of a validated batch. `batch` is the whole batch; the
/// returned keys, values and header values are zero-copy slices of it.
pub fn decode_records(batch: &Bytes) -> Result<Vec<StoredRecord>, BatchError> {
    let header = BatchHeader::parse(batch, usize::MAX)?;
    let end = header.total_len.min(batch.len());
    let mut records = Vec::with_capacity(header.record_count.min(1 << 16) as usize);
    let mut pos = HEADER_LEN;
    while pos < end {
        let len = read_varint(batch, &mut pos, end)? as usize;
        let record_end = pos
            .checked_add(len)
            .filter(|&e| e <= end)
            .ok_or(BatchError::BadRecord("record length past the batch end"))?;
        let offset_delta = read_varint(batch, &mut pos, record_end)?;
        let ts_delta = unzigzag(read_varint(batch, &mut pos, record_end)?);
        let key = read_bytes(batch, &mut pos, record_end)?;
        let value = read_bytes(batch, &mut pos, record_end)?;
        let header_count = read_varint(batch, &mut pos, record_end)?;
        if header_count > (record_end - pos) as u64 {
            return Err(BatchError::BadRecord("header count larger than the record"));
        }
        let mut headers = Vec::with_capacity(header_count as usize);
        for _ in 0..header_count {
            let name = read_bytes(batch, &mut pos, record_end)?;
            let name =
                std::str::from_utf8(&name).map_err(|_| BatchError::BadRecord("header name is not UTF-8"))?.to_string();
            let value = read_bytes(batch, &mut pos, record_end)?;
            headers.push((name, value));
        }
        if pos != record_end {
            return Err(BatchError::BadRecord("record length disagrees with its fields"));
        }
        if offset_delta > header.last_offset_delta as u64 {
            return Err(BatchError::BadRecord("offset delta past the batch's last offset"));
        }
        records.push(StoredRecord {
            offset: header.base_offset + offset_delta,
            timestamp_ms: header.first_timestamp.wrapping_add(ts_delta),
            key,
            value,
            headers,
        });
    }
    if records.len() != header.record_count as usize {
        return Err(BatchError::BadRecord("record count disagrees with the records"));
    }
    Ok(records)
}

/// Bytes one record takes in a batch, excluding its own length prefix.
fn encoded_record_len(record: &Record, offset_delta: u64, ts_delta: i64) -> usize {
    let mut len = varint_len(offset_delta)
        + varint_len(zigzag(ts_delta))
        + varint_len(record.key.len() as u64)
        + record.key.len()
        + varint_len(record.value.len() as u64)
        + record.value.len()
        + varint_len(record.headers.len() as u64);
    for (name, value) in &record.headers {
        len += varint_len(name.len() as u64) + name.len() + varint_len(value.len() as u64) + value.len();
    }
    len
}

/// Upper bound of the encoded size of a batch of these records, for limits.
pub fn encoded_len(records: &[Record]) -> usize {
    HEADER_LEN + records.iter().map(|r| encoded_record_len(r, u32::MAX as u64, i64::MAX) + 5).sum::<usize>()
}

fn encode_record(buf: &mut Vec<u8>, record: &Record, offset_delta: u64, ts_delta: i64) {
    write_varint(buf, encoded_record_len(record, offset_delta, ts_delta) as u64);
    write_varint(buf, offset_delta);
    write_varint(buf, zigzag(ts_delta));
    write_varint(buf, record.key.len() as u64);
    buf.extend_from_slice(&record.key);
    write_varint(buf, record.value.len() as u64);
    buf.extend_from_slice(&record.value);
    write_varint(buf, record.headers.len() as u64);
    for (name, value) in &record.headers {
        write_varint(buf, name.len() as u64);
        buf.extend_from_slice(name.as_bytes());
        write_varint(buf, value.len() as u64);
        buf.extend_from_slice(value);
    }
}

fn u32_at(buf: &[u8], pos: usize) -> u32 {
    u32::from_le_bytes(buf[pos..pos + 4].try_into().expect("4 bytes"))
}

fn u64_at(buf: &[u8], pos: usize) -> u64 {
    u64::from_le_bytes(buf[pos..pos + 8].try_into().expect("8 bytes"))
}

fn zigzag(v: i64) -> u64 {
    ((v << 1) ^ (v >> 63)) as u64
}

fn unzigzag(v: u64) -> i64 {
    ((v >> 1) as i64) ^ -((v & 1) as i64)
}

fn varint_len(mut v: u64) -> usize {
    let mut n = 1;
    while v >= 0x80 {
        v >>= 7;
        n += 1;
    }
    n
}

pub(crate) fn write_varint(buf: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        buf.push((v as u8) | 0x80);
        v >>= 7;
    }
    buf.push(v as u8);
}

pub(crate) fn read_varint(buf: &[u8], pos: &mut usize, end: usize) -> Result<u64, BatchError> {
    let mut value = 0u64;
    for shift in (0..64).step_by(7) {
        if *pos >= end {
            return Err(BatchError::BadRecord("varint runs past the end"));
        }
        let byte = buf[*pos];
        *pos += 1;
        value |= ((byte & 0x7f) as u64) << shift;
        if byte & 0x80 == 0 {
            return Ok(value);
        }
    }
    Err(BatchError::BadRecord("varint longer than 10 bytes"))
}

fn read_bytes(buf: &Bytes, pos: &mut usize, end: usize) -> Result<Bytes, BatchError> {
    let len = read_varint(buf, pos, end)?;
    if len > (end - *pos) as u64 {
        return Err(BatchError::BadRecord("field length past the record end"));
    }
    let start = *pos;
    *pos += len as usize;
    Ok(buf.slice(start..*pos))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn record(key: &[u8], value: &[u8], ts: i64) -> Record {
        Record {
            key: Bytes::copy_from_slice(key),
            value: Bytes::copy_from_slice(value),
            headers: vec![("h".into(), Bytes::from_static(b"v"))],
            timestamp_ms: ts,
        }
    }

    #[test]
    fn round_trip_with_offsets_and_timestamps() {
        let records = vec![record(b"k", b"one", 1000), record(b"", b"two", 900)];
        let mut buf = encode(&records, None);
        set_base_offset(&mut buf, 42);
        let header = validate(&buf, usize::MAX).unwrap();
        assert_eq!(header.base_offset, 42);
        assert_eq!(header.last_offset(), 43);
        assert_eq!(header.max_timestamp, 1000);
        let decoded = decode_records(&Bytes::from(buf)).unwrap();
        assert_eq!(decoded[1].offset, 43);
        assert_eq!(decoded[1].timestamp_ms, 900);
        assert_eq!(decoded[0].key.as_ref(), b"k");
        assert_eq!(decoded[1].value.as_ref(), b"two");
    }

    #[test]
    fn extreme_timestamps_round_trip_without_overflow() {
        let records = vec![record(b"", b"a", i64::MIN), record(b"", b"b", i64::MAX), record(b"", b"c", -1)];
        let decoded = decode_records(&Bytes::from(encode(&records, None))).unwrap();
        let ts: Vec<i64> = decoded.iter().map(|r| r.timestamp_ms).collect();
        assert_eq!(ts, [i64::MIN, i64::MAX, -1]);
    }

    #[test]
    fn flipped_byte_fails_crc() {
        let mut buf = encode(&[record(b"k", b"value", 5)], None);
        let last = buf.len() - 1;
        buf[last] ^= 0x40;
        assert!(matches!(validate(&buf, usize::MAX), Err(BatchError::BadCrc { .. })));
    }

    #[test]
    fn encoded_len_is_an_upper_bound() {
        let records = vec![record(b"key", &[7; 300], 1), record(b"", b"", 2)];
        assert!(encode(&records, None).len() <= encoded_len(&records));
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = validate(&bytes, 1 << 20);
            let _ = decode_records(&Bytes::from(bytes));
        }

        #[test]
        fn round_trip(values in proptest::collection::vec(
            (proptest::collection::vec(any::<u8>(), 0..40),
             proptest::collection::vec(any::<u8>(), 0..200),
             -1_000_000i64..1_000_000), 1..20),
            base in 0u64..u64::MAX / 2,
            pid in proptest::option::of((0i64..1000, 0i32..1000))) {
            let records: Vec<Record> = values.iter().map(|(k, v, ts)| record(k, v, 1_700_000_000_000 + ts)).collect();
            let producer = pid.map(|(producer_id, first_sequence)| ProducerStamp { producer_id, first_sequence });
            let mut buf = encode(&records, producer);
            set_base_offset(&mut buf, base);
            let header = validate(&buf, usize::MAX).unwrap();
            prop_assert_eq!(header.producer(), producer);
            let decoded = decode_records(&Bytes::from(buf)).unwrap();
            prop_assert_eq!(decoded.len(), records.len());
            for (i, (d, r)) in decoded.iter().zip(&records).enumerate() {
                prop_assert_eq!(d.offset, base + i as u64);
                prop_assert_eq!(&d.key, &r.key);
                prop_assert_eq!(&d.value, &r.value);
                prop_assert_eq!(d.timestamp_ms, r.timestamp_ms);
                prop_assert_eq!(&d.headers, &r.headers);
            }
        }

        #[test]
        fn corrupting_any_byte_after_the_offset_is_detected(pos in 8usize..200, flip in 1u8..=255) {
            let records = vec![record(b"key", &[9; 150], 10), record(b"k2", b"v2", 11)];
            let mut buf = encode(&records, None);
            let pos = pos % buf.len();
            prop_assume!(pos >= 8);
            buf[pos] ^= flip;
            // Either the header is rejected or the CRC catches it; never a silent pass.
            prop_assert!(validate(&buf, usize::MAX).is_err());
        }
    }
}
