//! The gRPC codec of the chat service: prost, with two changes.
//! - A request that is not a valid protobuf message (for example a string
//!   field that is not UTF-8) is INVALID_ARGUMENT naming the problem;
//!   tonic's prost decoder calls it INTERNAL, which blames the server.
//! - Smaller starting buffers (they grow as needed): most chat messages are
//!   a few hundred bytes, and every open Connect stream holds one buffer for
//!   each direction.

use prost::Message;
use tonic::{
    codec::{BufferSettings, DecodeBuf, Decoder},
    Status,
};
use tonic_prost::{ProstCodec, ProstDecoder, ProstEncoder};

/// Starting size of the encode and decode buffers (tonic's default is 8 KiB).
const BUFFER: usize = 1024;
/// tonic's default: encoded responses are yielded to the transport past this.
const YIELD_THRESHOLD: usize = 32 * 1024;

fn settings() -> BufferSettings {
    BufferSettings::new(BUFFER, YIELD_THRESHOLD)
}

/// Used by the generated server (see `codec_path` in build.rs).
#[derive(Debug, Clone, Default)]
pub struct ChatCodec<T, U>(std::marker::PhantomData<(T, U)>);

impl<T, U> tonic::codec::Codec for ChatCodec<T, U>
where
    T: Message + Send + 'static,
    U: Message + Default + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = ProstEncoder<T>;
    type Decoder = RequestDecoder<U>;

    fn encoder(&mut self) -> Self::Encoder {
        ProstCodec::<T, U>::raw_encoder(settings())
    }

    fn decoder(&mut self) -> Self::Decoder {
        RequestDecoder(ProstCodec::<T, U>::raw_decoder(settings()))
    }
}

#[derive(Debug, Clone)]
pub struct RequestDecoder<U>(ProstDecoder<U>);

impl<U: Message + Default> Decoder for RequestDecoder<U> {
    type Item = U;
    type Error = Status;

    fn decode(&mut self, buf: &mut DecodeBuf<'_>) -> Result<Option<U>, Status> {
        self.0.decode(buf).map_err(|status| {
            Status::invalid_argument(format!(
                "chat.InvalidMessage: the request is not a valid protobuf message of this \
                 method ({}); check the field types, and that strings are UTF-8",
                status.message()
            ))
        })
    }

    fn buffer_settings(&self) -> BufferSettings {
        self.0.buffer_settings()
    }
}
