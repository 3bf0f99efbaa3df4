//! The recovery checkpoint (`recovery.checkpoint`): a point in the log known
//! to be durable, plus the idempotent producer state at that point. After an
//! unclean stop, recovery scans only from here, so its time does not grow with
//! the size of the log. Replaced atomically (temp, fsync, rename, dir fsync).
//!
//! Layout, little-endian:
//!
//! | size | field                                                  |
//! |------|--------------------------------------------------------|
//! | 4    | magic `STCK`                                           |
//! | 1    | version (1)                                            |
//! | 8    | segment base offset                                    |
//! | 8    | byte position in that segment (a batch boundary)       |
//! | 8    | next offset at that position                           |
//! | 4    | producer count P                                       |
//! | P x  | producer id i64, batch count u8, per batch: first sequence i32, record count u32, base offset u64, last offset u64 |
//! | 4    | CRC-32 of everything before it                         |

use super::producer::{ProducerBatch, ProducerState, BATCHES_PER_PRODUCER, PRODUCERS_MAX};

pub const FILE_NAME: &str = "recovery.checkpoint";
const MAGIC: &[u8; 4] = b"STCK";
const VERSION: u8 = 1;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checkpoint {
    pub segment_base: u64,
    pub position: u64,
    pub next_offset: u64,
    pub producers: ProducerState,
}

impl Checkpoint {
    pub fn encode(&self) -> Vec<u8> {
        let mut buf = Vec::with_capacity(64 + self.producers.len() * 40);
        buf.extend_from_slice(MAGIC);
        buf.push(VERSION);
        buf.extend_from_slice(&self.segment_base.to_le_bytes());
        buf.extend_from_slice(&self.position.to_le_bytes());
        buf.extend_from_slice(&self.next_offset.to_le_bytes());
        buf.extend_from_slice(&(self.producers.len() as u32).to_le_bytes());
        for (pid, batches) in self.producers.iter() {
            buf.extend_from_slice(&pid.to_le_bytes());
            buf.push(batches.len() as u8);
            for b in batches {
                buf.extend_from_slice(&b.first_sequence.to_le_bytes());
                buf.extend_from_slice(&b.record_count.to_le_bytes());
                buf.extend_from_slice(&b.base_offset.to_le_bytes());
                buf.extend_from_slice(&b.last_offset.to_le_bytes());
            }
        }
        let crc = crc32fast::hash(&buf);
        buf.extend_from_slice(&crc.to_le_bytes());
        buf
    }

    /// Decodes a checkpoint; any inconsistency yields a reason, never a panic.
    pub fn decode(buf: &[u8]) -> Result<Checkpoint, &'static str> {
        if buf.len() < 4 + 1 + 24 + 4 + 4 {
            return Err("too short");
        }
        let (body, crc) = buf.split_at(buf.len() - 4);
        if crc32fast::hash(body).to_le_bytes() != crc {
            return Err("CRC mismatch");
        }
        let mut r = Reader { buf: body, pos: 0 };
        if r.take(4)? != MAGIC {
            return Err("bad magic");
        }
        if r.take(1)?[0] != VERSION {
            return Err("unsupported version");
        }
        let segment_base = r.u64()?;
        let position = r.u64()?;
        let next_offset = r.u64()?;
        let count = r.u32()? as usize;
        if count > PRODUCERS_MAX {
            return Err("too many producers");
        }
        let mut producers = ProducerState::default();
        for _ in 0..count {
            let pid = r.u64()? as i64;
            let n = r.take(1)?[0] as usize;
            if n > BATCHES_PER_PRODUCER {
                return Err("too many batches for a producer");
            }
            for _ in 0..n {
                let batch = ProducerBatch {
                    first_sequence: r.u32()? as i32,
                    record_count: r.u32()?,
                    base_offset: r.u64()?,
                    last_offset: r.u64()?,
                };
                producers.record(pid, batch);
            }
        }
        if r.pos != body.len() {
            return Err("trailing bytes");
        }
        Ok(Checkpoint { segment_base, position, next_offset, producers })
    }
}

struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], &'static str> {
        let end = self.pos.checked_add(n).filter(|&e| e <= self.buf.len()).ok_or("truncated")?;
        let s = &self.buf[self.pos..end];
        self.pos = end;
        Ok(s)
    }
    fn u32(&mut self) -> Result<u32, &'static str> {
        Ok(u32::from_le_bytes(self.take(4)?.try_into().expect("4 bytes")))
    }
    fn u64(&mut self) -> Result<u64, &'static str> {
        Ok(u64::from_le_bytes(self.take(8)?.try_into().expect("8 bytes")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn round_trip() {
        let mut producers = ProducerState::default();
        producers.record(3, ProducerBatch { first_sequence: 0, record_count: 2, base_offset: 10, last_offset: 11 });
        let cp = Checkpoint { segment_base: 5, position: 4096, next_offset: 12, producers };
        assert_eq!(Checkpoint::decode(&cp.encode()).unwrap(), cp);
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
            let _ = Checkpoint::decode(&bytes);
        }
    }
}
