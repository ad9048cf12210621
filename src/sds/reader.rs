//! Reads xDS requests off the request body: gRPC framing, and one pass over
//! each message's top-level protobuf fields that keeps every field but the
//! node of a request after the first.
//!
//! Envoy sends its whole node — about 61 KB with Envoy 1.40's 516 extensions
//! — on every request, ACKs included, unless its bootstrap sets
//! `set_node_on_first_message_only` (most bootstraps written for other
//! control planes do not). xDS needs the node only on a stream's first
//! request. So:
//!
//! - the first request is kept whole; its node is decoded once, by the driver;
//! - in every later request the node's bytes are skipped as they arrive:
//!   never copied whole, never decoded, never buffered. Only its first
//!   [`NODE_HEAD`] bytes are kept while it passes, to compare the node's id
//!   and cluster — the fields Envoy writes first — with the first node's and
//!   tell a node that changed mid-stream ([`NodeSeen::Changed`]). The rest
//!   cannot be compared as bytes: Envoy writes the maps in its node (the
//!   metadata, the build version's fields) in no fixed order, so the same
//!   node differs from one request to the next. A changed node changes
//!   nothing: the stream keeps the identity and validator of its first
//!   request, and the driver says so in a warning. (Envoy never does it: its
//!   node is fixed at start-up.)
//! - every other field (version, names, type URL, nonce, a NACK's
//!   `error_detail`, fields this version does not know) is copied verbatim
//!   into a buffer of the message's own size, decoded, and dropped: between
//!   requests a stream holds no read buffer at all.
//!
//! gRPC framing rules (the same answers tonic's decoder gives): a message
//! whose compressed flag is set is refused (the stream negotiated no
//! encoding); a length above the limit is `OUT_OF_RANGE` before any of it is
//! read; a body that ends inside a message is truncated. Protobuf rules: a
//! field number 0, a group or an unknown wire type, a varint longer than ten
//! bytes, and a field that runs past its message's end are malformed.
//!
//! [`Framer`] is the pure state machine (bytes in, messages out), tested as
//! data in `reader/tests.rs`; [`Requests`] feeds it from the HTTP body.

use std::collections::VecDeque;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use http_body::Body as _;
use prost::bytes::Bytes;
use tonic::Status;
use tonic::body::Body;

/// gRPC message prefix: compression flag (1 byte) + length (4 bytes, big-endian).
const PREFIX: usize = 5;
/// How much of a node's start is read for its id and cluster.
pub(crate) const NODE_HEAD: usize = 256;
/// A varint is at most ten bytes.
const MAX_VARINT: usize = 10;
/// What a later request reserves up front: ACKs are a few hundred bytes.
const SMALL: usize = 1024;
/// What the first request reserves up front (Envoy's is about 61 KB); the
/// buffer grows as bytes arrive, never on a length alone.
const FIRST: usize = 64 * 1024;

/// One request, its node kept only if it is the stream's first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Message {
    /// The request's protobuf bytes, without a skipped node.
    pub bytes: Bytes,
    pub node: NodeSeen,
}

/// What became of a request's node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum NodeSeen {
    /// The first request's node, kept in [`Message::bytes`] (or no node in
    /// the first request).
    First,
    /// A later request without a node.
    Absent,
    /// A later request's node, skipped: the first node's id and cluster.
    Same,
    /// A later request's node, skipped: another id or cluster than the first's.
    Changed,
}

/// Why a body cannot be read as xDS requests.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum FrameError {
    #[error("protocol error: received message with compressed-flag but no grpc-encoding was specified")]
    Compressed,
    #[error("Error, decoded message length too large: found {len} bytes, the limit is: {max} bytes")]
    TooLarge { len: usize, max: usize },
    #[error("the request body ended inside a message")]
    Truncated,
    #[error("malformed request: {0}")]
    Malformed(&'static str),
}

impl From<FrameError> for Status {
    fn from(e: FrameError) -> Self {
        let msg = e.to_string();
        match e {
            FrameError::Compressed | FrameError::Truncated => Status::internal(msg),
            FrameError::TooLarge { .. } => Status::out_of_range(msg),
            FrameError::Malformed(_) => Status::invalid_argument(msg),
        }
    }
}

/// A varint being read, with its raw bytes (copied out verbatim if kept).
#[derive(Debug, Clone, Copy, Default)]
struct Varint {
    raw: [u8; MAX_VARINT],
    len: usize,
    value: u64,
}

impl Varint {
    /// Takes one byte; `Ok(true)` once the varint is complete.
    fn push(&mut self, byte: u8) -> Result<bool, FrameError> {
        if self.len == MAX_VARINT {
            return Err(FrameError::Malformed("a varint longer than ten bytes"));
        }
        self.raw[self.len] = byte;
        self.value |= u64::from(byte & 0x7f) << (7 * self.len);
        self.len += 1;
        Ok(byte & 0x80 == 0)
    }

    fn raw(&self) -> &[u8] {
        &self.raw[..self.len]
    }
}

#[derive(Debug, Clone, Copy)]
enum State {
    /// Reading the 5-byte message prefix.
    Prefix { raw: [u8; PREFIX], got: usize },
    /// Inside a message, `left` bytes of it still to come.
    Fields { left: usize, field: Field },
}

#[derive(Debug, Clone, Copy)]
enum Field {
    /// A field's key (number and wire type).
    Key(Varint),
    /// A length-delimited field's length, after its key.
    Length { key: Varint, number: u64, length: Varint },
    /// A varint value, copied byte by byte.
    VarintValue { got: usize },
    /// `left` bytes of value to copy into the message, or to skip.
    Value { left: usize, what: Value },
}

#[derive(Debug, Clone, Copy)]
enum Value {
    Copy,
    /// A later request's node: skipped, its first bytes kept in `node_head`.
    SkipNode {
        at: usize,
    },
}

/// The per-stream framing and field state machine.
#[derive(Debug)]
pub(crate) struct Framer {
    node_field: u64,
    max_message: usize,
    state: State,
    /// The message being assembled (empty, with no allocation, between
    /// messages).
    out: Vec<u8>,
    /// Requests completed so far.
    messages: u64,
    /// The id and cluster fields of the first request's node, as encoded.
    first_identity: Vec<u8>,
    /// Where the first request's node sits in `out`, while it is assembled.
    first_node_at: Option<(usize, usize)>,
    /// The start of a later request's node, while it is skipped.
    node_head: Vec<u8>,
    /// Whether the message being assembled carried a node, and whether it differed.
    node: Option<bool>,
}

impl Framer {
    /// `node_field`: the node's field number in this stream's request type.
    pub(crate) fn new(node_field: u32, max_message: usize) -> Self {
        Self {
            node_field: u64::from(node_field),
            max_message,
            state: State::Prefix { raw: [0; PREFIX], got: 0 },
            out: Vec::new(),
            messages: 0,
            first_identity: Vec::new(),
            first_node_at: None,
            node_head: Vec::new(),
            node: None,
        }
    }

    /// Whether the body may end here (between messages).
    pub(crate) fn at_boundary(&self) -> bool {
        matches!(self.state, State::Prefix { got: 0, .. })
    }

    /// Reads `chunk`, appending each request it completes to `done`. After an
    /// error the framer is spent: the stream ends.
    pub(crate) fn push(&mut self, mut chunk: &[u8], done: &mut VecDeque<Message>) -> Result<(), FrameError> {
        while !chunk.is_empty() {
            let used = match self.state {
                State::Prefix { raw, got } => self.prefix(raw, got, chunk)?,
                State::Fields { left, field } => self.field(left, field, chunk)?,
            };
            chunk = &chunk[used..];
            // An empty message, or a message whose last field just ended.
            if let State::Fields { left: 0, field: Field::Key(Varint { len: 0, .. }) } = self.state {
                done.push_back(self.finish_message());
            }
        }
        Ok(())
    }

    fn prefix(&mut self, mut raw: [u8; PREFIX], got: usize, chunk: &[u8]) -> Result<usize, FrameError> {
        let used = (PREFIX - got).min(chunk.len());
        raw[got..got + used].copy_from_slice(&chunk[..used]);
        if got + used < PREFIX {
            self.state = State::Prefix { raw, got: got + used };
            return Ok(used);
        }
        if raw[0] != 0 {
            return Err(FrameError::Compressed);
        }
        let len = u32::from_be_bytes([raw[1], raw[2], raw[3], raw[4]]) as usize;
        if len > self.max_message {
            return Err(FrameError::TooLarge { len, max: self.max_message });
        }
        let reserve = len.min(if self.messages == 0 { FIRST } else { SMALL });
        self.out = Vec::with_capacity(reserve);
        self.node = None;
        self.state = State::Fields { left: len, field: Field::Key(Varint::default()) };
        Ok(used)
    }

    fn field(&mut self, left: usize, field: Field, chunk: &[u8]) -> Result<usize, FrameError> {
        let (used, next) = match field {
            Field::Key(mut key) => {
                if !key.push(chunk[0])? {
                    (1, Field::Key(key))
                } else {
                    (1, self.after_key(key, left - 1)?)
                }
            }
            Field::Length { key, number, mut length } => {
                if !length.push(chunk[0])? {
                    (1, Field::Length { key, number, length })
                } else {
                    (1, self.after_length(key, number, length, left - 1)?)
                }
            }
            Field::VarintValue { got } => {
                if got == MAX_VARINT {
                    return Err(FrameError::Malformed("a varint longer than ten bytes"));
                }
                self.out.push(chunk[0]);
                match chunk[0] & 0x80 {
                    0 => (1, Field::Key(Varint::default())),
                    _ => (1, Field::VarintValue { got: got + 1 }),
                }
            }
            Field::Value { left: value_left, what } => {
                let used = value_left.min(chunk.len());
                let bytes = &chunk[..used];
                let what = match what {
                    Value::Copy => {
                        self.out.extend_from_slice(bytes);
                        Value::Copy
                    }
                    Value::SkipNode { at } => {
                        self.skip_node(at, bytes, used == value_left);
                        Value::SkipNode { at: at + used }
                    }
                };
                match value_left - used {
                    0 => (used, Field::Key(Varint::default())),
                    rest => (used, Field::Value { left: rest, what }),
                }
            }
        };
        if used > left {
            return Err(FrameError::Malformed("a field runs past the end of its message"));
        }
        let left = left - used;
        if left == 0 && !matches!(next, Field::Key(Varint { len: 0, .. })) {
            return Err(FrameError::Malformed("a field runs past the end of its message"));
        }
        self.state = State::Fields { left, field: next };
        Ok(used)
    }

    /// What follows a complete key; `left`: the message bytes after it.
    fn after_key(&mut self, key: Varint, left: usize) -> Result<Field, FrameError> {
        let number = key.value >> 3;
        if number == 0 {
            return Err(FrameError::Malformed("field number 0"));
        }
        let fixed = match key.value & 7 {
            0 => {
                self.out.extend_from_slice(key.raw());
                return Ok(Field::VarintValue { got: 0 });
            }
            2 => return Ok(Field::Length { key, number, length: Varint::default() }),
            1 => 8,
            5 => 4,
            _ => return Err(FrameError::Malformed("a group or an unknown wire type")),
        };
        if fixed > left {
            return Err(FrameError::Malformed("a field runs past the end of its message"));
        }
        self.out.extend_from_slice(key.raw());
        Ok(Field::Value { left: fixed, what: Value::Copy })
    }

    /// What follows a length-delimited field's length.
    fn after_length(&mut self, key: Varint, number: u64, length: Varint, left: usize) -> Result<Field, FrameError> {
        let len = usize::try_from(length.value).unwrap_or(usize::MAX);
        if len > left {
            return Err(FrameError::Malformed("a field runs past the end of its message"));
        }
        let next = |what| match len {
            0 => Field::Key(Varint::default()),
            _ => Field::Value { left: len, what },
        };
        if number == self.node_field && self.messages > 0 {
            // A second node in one message (protobuf merges them): changed.
            if self.node.is_some() {
                self.node = Some(true);
            }
            if len == 0 {
                self.node.get_or_insert(!self.first_identity.is_empty());
            }
            return Ok(next(Value::SkipNode { at: 0 }));
        }
        self.out.extend_from_slice(key.raw());
        self.out.extend_from_slice(length.raw());
        if number == self.node_field {
            self.first_node_at = Some((self.out.len(), len));
        }
        Ok(next(Value::Copy))
    }

    /// Passes `bytes`, at offset `at` of a later node, keeping its first
    /// [`NODE_HEAD`] bytes; at the node's `end`, compares its id and cluster
    /// with the first node's.
    fn skip_node(&mut self, at: usize, bytes: &[u8], end: bool) {
        if at < NODE_HEAD {
            let keep = (NODE_HEAD - at).min(bytes.len());
            self.node_head.extend_from_slice(&bytes[..keep]);
        }
        if end {
            let head = std::mem::take(&mut self.node_head);
            let changed = leading_identity(&head) != self.first_identity.as_slice();
            *self.node.get_or_insert(changed) |= changed;
        }
    }

    fn finish_message(&mut self) -> Message {
        let out = std::mem::take(&mut self.out);
        let node = if self.messages == 0 {
            if let Some((at, len)) = self.first_node_at.take() {
                self.first_identity = leading_identity(&out[at..at + len.min(NODE_HEAD)]).to_vec();
            }
            NodeSeen::First
        } else {
            match self.node {
                None => NodeSeen::Absent,
                Some(false) => NodeSeen::Same,
                Some(true) => NodeSeen::Changed,
            }
        };
        self.messages += 1;
        self.state = State::Prefix { raw: [0; PREFIX], got: 0 };
        Message { bytes: Bytes::from(out), node }
    }
}

/// The leading id (field 1) and cluster (field 2) of an encoded
/// `envoy.config.core.v3.Node`, as far as `node` holds them.
fn leading_identity(node: &[u8]) -> &[u8] {
    let mut rest = node;
    while let [0x0a | 0x12, ..] = rest {
        let mut after_key = &rest[1..];
        let Ok(len) = prost::encoding::decode_varint(&mut after_key) else { break };
        let len = usize::try_from(len).unwrap_or(usize::MAX);
        rest = after_key.get(len..).unwrap_or_default();
    }
    &node[..node.len() - rest.len()]
}

/// The requests of one stream, read from its HTTP body through a [`Framer`].
pub(crate) struct Requests {
    body: Body,
    framer: Framer,
    ready: VecDeque<Message>,
    /// The body ended (or failed): what remains is in `ready`, then this.
    end: Option<Result<(), Status>>,
}

impl Requests {
    pub(crate) fn new(body: Body, node_field: u32, max_message: usize) -> Self {
        Self { body, framer: Framer::new(node_field, max_message), ready: VecDeque::new(), end: None }
    }

    /// The next request; `None` once the client closed its side.
    pub(crate) fn poll_next(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Message, Status>>> {
        loop {
            if let Some(message) = self.ready.pop_front() {
                return Poll::Ready(Some(Ok(message)));
            }
            if let Some(end) = &self.end {
                return Poll::Ready(end.clone().err().map(Err));
            }
            let polled = ready!(Pin::new(&mut self.body).poll_frame(cx));
            self.end = match polled {
                Some(Ok(frame)) => match frame.into_data() {
                    Ok(data) => self.framer.push(&data, &mut self.ready).err().map(|e| Err(e.into())),
                    // Request trailers: the client's side is done.
                    Err(_) => Some(self.boundary()),
                },
                Some(Err(status)) => Some(Err(status)),
                None => Some(self.boundary()),
            };
        }
    }

    fn boundary(&self) -> Result<(), Status> {
        match self.framer.at_boundary() {
            true => Ok(()),
            false => Err(FrameError::Truncated.into()),
        }
    }
}

#[cfg(test)]
mod tests;
