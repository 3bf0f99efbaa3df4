//! The record batch format strata stored before it adopted Kafka's
//! (format version 1, magic byte 1 at byte 12, little-endian). Read only:
//! to upgrade data directories written by earlier versions in place, and
//! for `strata log dump` / `log verify` on them.
//!
//! Batch header (55 bytes): base_offset u64, batch_length u32 (bytes after
//! it), magic u8 = 1, crc u32 (CRC-32 IEEE of bytes 17..end), attributes
//! u16 (0), last_offset_delta u32, first_timestamp i64, max_timestamp i64,
//! producer_id i64 (-1: none), first_sequence i32 (-1: none), record_count
//! u32. Records: length, offset delta (unsigned LEB128 varints), timestamp
//! delta (zigzag LEB128), key and value (varint length, 0 = none), header
//! count, headers (varint length + UTF-8 name, varint length + value).

use bytes::Bytes;

/// Size of the fixed batch header.
pub const HEADER_LEN: usize = 55;
/// Bytes before the `batch_length` field's end: base offset + length.
pub const LENGTH_PREFIX_LEN: usize = 12;
/// This format's version.
pub const MAGIC: u8 = 1;
const CRC_START: usize = 17;
pub use crate::config::BATCH_BYTES_LIMIT;
/// Producer id stored for batches without an idempotent producer.
pub const NO_PRODUCER: i64 = -1;

use super::batch::StoredRecord;

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

    /// The idempotent producer id and first sequence, if there is one.
    pub fn producer(&self) -> Option<(i64, i32)> {
        (self.producer_id != NO_PRODUCER).then_some((self.producer_id, self.first_sequence))
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

fn u32_at(buf: &[u8], pos: usize) -> u32 {
    u32::from_le_bytes(buf[pos..pos + 4].try_into().expect("4 bytes"))
}

fn u64_at(buf: &[u8], pos: usize) -> u64 {
    u64::from_le_bytes(buf[pos..pos + 8].try_into().expect("8 bytes"))
}

fn unzigzag(v: u64) -> i64 {
    ((v >> 1) as i64) ^ -((v & 1) as i64)
}

fn read_varint(buf: &[u8], pos: &mut usize, end: usize) -> Result<u64, BatchError> {
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
