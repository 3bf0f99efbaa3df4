//! The compression codecs of Kafka record batches (attributes bits 0-2):
//! gzip, snappy (raw, or xerial-framed as Kafka's Java client writes it),
//! lz4 (the frame format) and zstd. Batches are stored as their producer
//! compressed them; the broker decompresses only to validate a batch on
//! produce and to serve decoded records, never without a bound on the
//! output (a small batch may claim gigabytes).
//!
//! Crates: flate2 (gzip, pure-Rust backend), snap (snappy), lz4_flex
//! (pure Rust, the fastest lz4 frame codec in Rust), zstd (bindings to the
//! reference libzstd: the pure-Rust decoders are several times slower).

use std::io::Read;

/// A batch's compression codec.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    None,
    Gzip,
    Snappy,
    Lz4,
    Zstd,
}

impl Compression {
    /// The codec named by a batch's attributes (bits 0-2), if known.
    pub fn from_attributes(attributes: u16) -> Option<Compression> {
        match attributes & 0x07 {
            0 => Some(Compression::None),
            1 => Some(Compression::Gzip),
            2 => Some(Compression::Snappy),
            3 => Some(Compression::Lz4),
            4 => Some(Compression::Zstd),
            _ => None,
        }
    }

    /// The attributes bits of this codec.
    pub fn bits(self) -> u16 {
        match self {
            Compression::None => 0,
            Compression::Gzip => 1,
            Compression::Snappy => 2,
            Compression::Lz4 => 3,
            Compression::Zstd => 4,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Compression::None => "none",
            Compression::Gzip => "gzip",
            Compression::Snappy => "snappy",
            Compression::Lz4 => "lz4",
            Compression::Zstd => "zstd",
        }
    }
}

/// The magic of snappy-java's (xerial) framing, then version and compat.
const XERIAL_MAGIC: &[u8; 8] = b"\x82SNAPPY\x00";
const XERIAL_HEADER_LEN: usize = 16;

/// Decompresses `data`, refusing to produce more than `max` bytes.
pub fn decompress(codec: Compression, data: &[u8], max: usize) -> Result<Vec<u8>, String> {
    let too_large = || format!("{} data decompresses to more than {max} bytes", codec.name());
    match codec {
        Compression::None => Ok(data.to_vec()),
        Compression::Gzip => read_capped(flate2::read::MultiGzDecoder::new(data), max, codec),
        Compression::Lz4 => read_capped(lz4_flex::frame::FrameDecoder::new(data), max, codec),
        Compression::Zstd => {
            let decoder = zstd::stream::read::Decoder::new(data).map_err(|e| format!("zstd: {e}"))?;
            read_capped(decoder, max, codec)
        }
        Compression::Snappy if data.starts_with(XERIAL_MAGIC) => {
            let mut out = Vec::new();
            let mut rest = data.get(XERIAL_HEADER_LEN..).ok_or("truncated xerial snappy header")?;
            while !rest.is_empty() {
                let len = rest.get(..4).ok_or("truncated xerial snappy block length")?;
                let len = u32::from_be_bytes(len.try_into().expect("4 bytes")) as usize;
                let block = rest.get(4..4 + len).ok_or("xerial snappy block runs past the end")?;
                let n = snap::raw::decompress_len(block).map_err(|e| format!("snappy: {e}"))?;
                if out.len().saturating_add(n) > max {
                    return Err(too_large());
                }
                out.extend(snap::raw::Decoder::new().decompress_vec(block).map_err(|e| format!("snappy: {e}"))?);
                rest = &rest[4 + len..];
            }
            Ok(out)
        }
        Compression::Snappy => {
            let n = snap::raw::decompress_len(data).map_err(|e| format!("snappy: {e}"))?;
            if n > max {
                return Err(too_large());
            }
            snap::raw::Decoder::new().decompress_vec(data).map_err(|e| format!("snappy: {e}"))
        }
    }
}

fn read_capped(reader: impl Read, max: usize, codec: Compression) -> Result<Vec<u8>, String> {
    let mut out = Vec::new();
    reader.take((max as u64).saturating_add(1)).read_to_end(&mut out).map_err(|e| format!("{}: {e}", codec.name()))?;
    if out.len() > max {
        return Err(format!("{} data decompresses to more than {max} bytes", codec.name()));
    }
    Ok(out)
}

/// Compresses `data` as a Kafka producer would (snappy in xerial framing).
pub fn compress(codec: Compression, data: &[u8]) -> Vec<u8> {
    use std::io::Write;
    match codec {
        Compression::None => data.to_vec(),
        Compression::Gzip => {
            let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
            e.write_all(data).expect("writing to a Vec");
            e.finish().expect("writing to a Vec")
        }
        Compression::Lz4 => {
            let mut e = lz4_flex::frame::FrameEncoder::new(Vec::new());
            e.write_all(data).expect("writing to a Vec");
            e.finish().expect("writing to a Vec")
        }
        Compression::Zstd => zstd::bulk::compress(data, 3).expect("zstd compresses any input"),
        Compression::Snappy => {
            let mut out = XERIAL_MAGIC.to_vec();
            out.extend_from_slice(&1u32.to_be_bytes());
            out.extend_from_slice(&1u32.to_be_bytes());
            for block in data.chunks(32 << 10) {
                let compressed = snap::raw::Encoder::new().compress_vec(block).expect("snappy compresses any input");
                out.extend_from_slice(&(compressed.len() as u32).to_be_bytes());
                out.extend_from_slice(&compressed);
            }
            out
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CODECS: [Compression; 5] =
        [Compression::None, Compression::Gzip, Compression::Snappy, Compression::Lz4, Compression::Zstd];

    #[test]
    fn every_codec_round_trips_and_refuses_a_bomb() {
        let data: Vec<u8> = (0..200_000u32).flat_map(|i| (i % 7).to_le_bytes()).collect();
        for codec in CODECS {
            let packed = compress(codec, &data);
            assert_eq!(decompress(codec, &packed, data.len()).unwrap(), data, "{codec:?}");
            if codec != Compression::None {
                let err = decompress(codec, &packed, data.len() - 1).unwrap_err();
                assert!(err.contains("more than"), "{codec:?}: {err}");
                assert!(decompress(codec, &packed[..packed.len() / 2], usize::MAX).is_err(), "{codec:?}: truncated");
            }
        }
        // Raw (unframed) snappy, as librdkafka may send it.
        let raw = snap::raw::Encoder::new().compress_vec(&data).unwrap();
        assert_eq!(decompress(Compression::Snappy, &raw, data.len()).unwrap(), data);
        assert_eq!(Compression::from_attributes(0x0B), Some(Compression::Lz4), "bits 0-2 only");
        assert_eq!(Compression::from_attributes(5), None);
    }
}
