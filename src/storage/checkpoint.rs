//! The recovery checkpoint (`recovery.checkpoint`): where recovery after an
//! unclean stop starts scanning, so its time does not grow with the size of
//! the log. It holds two points, each with the idempotent producer state
//! there:
//!
//! - the **durable** point: everything before it was fsynced. After a power
//!   loss (a new boot), recovery may trust nothing past it.
//! - the **written** point of the boot that wrote the checkpoint: everything
//!   before it was written (a completed `pwrite`), so it is in the page cache
//!   or on disk. After a process crash in the same boot (the kernel's
//!   `boot_id` is unchanged) the kernel still has those bytes, so recovery
//!   starts here and does not rescan what `never` and `interval` topics have
//!   not fsynced yet (up to a whole segment per partition).
//!
//! Written as a hint (temp file and rename, no fsync): a lost or torn
//! checkpoint only makes the next recovery scan more.
//!
//! Layout, little-endian:
//!
//! | size | field                                                  |
//! |------|--------------------------------------------------------|
//! | 4    | magic `STCK`                                           |
//! | 1    | version (3; 2 had no producer epochs, 1 ended after the first point) |
//! | ...  | durable point (below)                                  |
//! | 1    | 1 if a written point follows, else 0                   |
//! | 16   | boot id of the kernel that wrote it (`/proc/sys/kernel/random/boot_id`) |
//! | ...  | written point                                          |
//! | 4    | CRC-32 of everything before it                         |
//!
//! A point:
//!
//! | size | field                                                  |
//! |------|--------------------------------------------------------|
//! | 8    | segment base offset                                    |
//! | 8    | byte position in that segment (a batch boundary)       |
//! | 8    | next offset at that position                           |
//! | 4    | producer count P                                       |
//! | P x  | producer id i64, epoch i16 (not in versions 1-2: 0), batch count u8, per batch: first sequence i32, record count u32, base offset u64, last offset u64 |

use super::producer::{ProducerBatch, ProducerState, BATCHES_PER_PRODUCER, PRODUCERS_MAX};

pub const FILE_NAME: &str = "recovery.checkpoint";
const MAGIC: &[u8; 4] = b"STCK";
const VERSION: u8 = 3;

/// A point in the log (a batch boundary) and the producer state there.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checkpoint {
    pub segment_base: u64,
    pub position: u64,
    pub next_offset: u64,
    pub producers: ProducerState,
    /// The written point, trusted only by a recovery in the same boot.
    pub same_boot: Option<SameBoot>,
}

/// The point up to which the log was written when the checkpoint was taken,
/// and the kernel boot in which that holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SameBoot {
    pub boot_id: u128,
    pub segment_base: u64,
    pub position: u64,
    pub next_offset: u64,
    pub producers: ProducerState,
}

impl Checkpoint {
    pub fn encode(&self) -> Vec<u8> {
        let mut buf = Vec::with_capacity(96 + self.producers.len() * 80);
        buf.extend_from_slice(MAGIC);
        buf.push(VERSION);
        encode_point(&mut buf, self.segment_base, self.position, self.next_offset, &self.producers);
        match &self.same_boot {
            None => buf.push(0),
            Some(w) => {
                buf.push(1);
                buf.extend_from_slice(&w.boot_id.to_le_bytes());
                encode_point(&mut buf, w.segment_base, w.position, w.next_offset, &w.producers);
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
        let version = r.take(1)?[0];
        if !(1..=VERSION).contains(&version) {
            return Err("unsupported version");
        }
        let (segment_base, position, next_offset, producers) = decode_point(&mut r, version)?;
        let same_boot = match if version == 1 { 0 } else { r.take(1)?[0] } {
            0 => None,
            1 => {
                let boot_id = u128::from_le_bytes(r.take(16)?.try_into().expect("16 bytes"));
                let (segment_base, position, next_offset, producers) = decode_point(&mut r, version)?;
                Some(SameBoot { boot_id, segment_base, position, next_offset, producers })
            }
            _ => return Err("bad written-point flag"),
        };
        if r.pos != body.len() {
            return Err("trailing bytes");
        }
        Ok(Checkpoint { segment_base, position, next_offset, producers, same_boot })
    }
}

fn encode_point(buf: &mut Vec<u8>, segment_base: u64, position: u64, next_offset: u64, producers: &ProducerState) {
    buf.extend_from_slice(&segment_base.to_le_bytes());
    buf.extend_from_slice(&position.to_le_bytes());
    buf.extend_from_slice(&next_offset.to_le_bytes());
    buf.extend_from_slice(&(producers.len() as u32).to_le_bytes());
    for (pid, entry) in producers.iter() {
        buf.extend_from_slice(&pid.to_le_bytes());
        buf.extend_from_slice(&entry.epoch.to_le_bytes());
        buf.push(entry.batches.len() as u8);
        for b in &entry.batches {
            buf.extend_from_slice(&b.first_sequence.to_le_bytes());
            buf.extend_from_slice(&b.record_count.to_le_bytes());
            buf.extend_from_slice(&b.base_offset.to_le_bytes());
            buf.extend_from_slice(&b.last_offset.to_le_bytes());
        }
    }
}

fn decode_point(r: &mut Reader<'_>, version: u8) -> Result<(u64, u64, u64, ProducerState), &'static str> {
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
        let epoch = if version >= 3 { i16::from_le_bytes(r.take(2)?.try_into().expect("2 bytes")) } else { 0 };
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
            producers.record(pid, epoch, batch);
        }
    }
    Ok((segment_base, position, next_offset, producers))
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
        producers.record(3, 2, ProducerBatch { first_sequence: 0, record_count: 2, base_offset: 10, last_offset: 11 });
        let mut cp = Checkpoint { segment_base: 5, position: 4096, next_offset: 12, producers, same_boot: None };
        assert_eq!(Checkpoint::decode(&cp.encode()).unwrap(), cp);
        let mut later = cp.producers.clone();
        later.record(3, 2, ProducerBatch { first_sequence: 2, record_count: 1, base_offset: 12, last_offset: 12 });
        cp.same_boot = Some(SameBoot {
            boot_id: u128::MAX - 7,
            segment_base: 5,
            position: 8192,
            next_offset: 13,
            producers: later,
        });
        assert_eq!(Checkpoint::decode(&cp.encode()).unwrap(), cp);
    }

    /// Data directories written before the written point existed still
    /// recover from their (durable) checkpoint.
    #[test]
    fn version_1_decodes_as_a_durable_point_only() {
        let cp = Checkpoint {
            segment_base: 5,
            position: 4096,
            next_offset: 12,
            producers: ProducerState::default(),
            same_boot: None,
        };
        let mut v1 = cp.encode();
        v1.truncate(v1.len() - 5); // the CRC and the written-point flag
        v1[4] = 1;
        let crc = crc32fast::hash(&v1);
        v1.extend_from_slice(&crc.to_le_bytes());
        assert_eq!(Checkpoint::decode(&v1).unwrap(), cp);
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
            let _ = Checkpoint::decode(&bytes);
        }
    }
}
