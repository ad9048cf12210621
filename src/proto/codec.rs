//! The protobuf codec of trustmesh's own gRPC services (admin API, agent
//! protocol, Workload API): prost's, except that a request body that is not a
//! valid message is the caller's error (`INVALID_ARGUMENT`), not the server's
//! (`INTERNAL`), and that a stream's buffers start small: a long-lived stream
//! (an agent's `Sync`, a workload's `FetchX509SVID`) keeps its buffers for
//! its whole life, and most of its messages are far smaller than prost's
//! 8 KiB default (a buffer grows when a message needs it).

use tonic::codec::{BufferSettings, Codec, DecodeBuf, Decoder};
use tonic::{Code, Status};
use tonic_prost::prost::Message;
use tonic_prost::{ProstCodec, ProstDecoder, ProstEncoder};

pub struct InputCodec<T, U>(ProstCodec<T, U>);

impl<T, U> Default for InputCodec<T, U> {
    fn default() -> Self {
        Self(ProstCodec::default())
    }
}

impl<T, U> Codec for InputCodec<T, U>
where
    T: Message + Send + 'static,
    U: Message + Default + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = InputEncoder<T>;
    type Decoder = InputDecoder<U>;

    fn encoder(&mut self) -> Self::Encoder {
        InputEncoder(self.0.encoder())
    }

    fn decoder(&mut self) -> Self::Decoder {
        InputDecoder(self.0.decoder())
    }
}

/// A stream's encode and decode buffers: 1 KiB to start; tonic's yield
/// threshold (32 KiB).
fn buffer_settings() -> BufferSettings {
    BufferSettings::new(1024, 32 * 1024)
}

pub struct InputEncoder<T>(ProstEncoder<T>);

impl<T: Message> tonic::codec::Encoder for InputEncoder<T> {
    type Item = T;
    type Error = Status;

    fn encode(&mut self, item: T, buf: &mut tonic::codec::EncodeBuf<'_>) -> Result<(), Status> {
        self.0.encode(item, buf)
    }

    fn buffer_settings(&self) -> BufferSettings {
        buffer_settings()
    }
}

pub struct InputDecoder<U>(ProstDecoder<U>);

impl<U: Message + Default> Decoder for InputDecoder<U> {
    type Item = U;
    type Error = Status;

    fn decode(&mut self, buf: &mut DecodeBuf<'_>) -> Result<Option<U>, Status> {
        self.0.decode(buf).map_err(|s| match s.code() {
            Code::Internal => Status::invalid_argument(format!("the request is not a valid message: {}", s.message())),
            _ => s,
        })
    }

    fn buffer_settings(&self) -> BufferSettings {
        buffer_settings()
    }
}
