//! The gRPC codec of every strata service and client: tonic-prost's, except
//! that the encoder reserves the message's exact size before writing it.
//!
//! tonic encodes into a buffer that starts at 8 KiB and grows as prost
//! writes, so a 100 KB produce request or an 8 MiB fetch response was
//! reallocated and copied several times on its way out (`_int_realloc`
//! was 5% of produce CPU). One `encoded_len` pass is far cheaper.

use std::marker::PhantomData;

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
