//! Request headers on the local socket that the HTTP/2 stack would refuse.
//!
//! grpc-core (and so grpcio, the transport of the PyPI `spiffe` client, and
//! every other C-core language) sends the percent-encoded socket path as the
//! `:authority` of a `unix:` target, e.g. `%2Ftmp%2Ftrustmesh%2Fpublic%2Fapi.sock`.
//! `h2` parses `:authority` as a URI authority, which has no `%` in a host,
//! and resets the stream with PROTOCOL_ERROR before any service sees the
//! request. On a Unix socket the authority means nothing (the peer is known
//! from the kernel), so the local socket drops an `:authority` that is not a
//! valid authority and serves the request.
//!
//! [`AuthorityFilter`] is a pure state machine over the bytes a client sends:
//! every other frame passes through unchanged; each header block (HEADERS and
//! its CONTINUATIONs) is decoded with the client's HPACK state and encoded
//! again as literals that never use the dynamic table, so what the server's
//! decoder sees stays consistent whatever the client indexed. A connection
//! that does not start with the HTTP/2 preface (HTTP/1.1) passes through
//! untouched. Anything the filter cannot read (malformed HPACK, a frame out
//! of place, a header block over [`MAX_HEADER_BLOCK`]) is handed on as it
//! came, and so is the rest of the connection: `h2` then answers it with its
//! own GOAWAY, the error a client would get without the filter.
//! [`FilteredStream`] applies the filter to a socket.

use std::io;
use std::mem::MaybeUninit;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use loona_hpack::Decoder;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const FRAME_HEADER: usize = 9;
const HEADERS: u8 = 0x1;
const CONTINUATION: u8 = 0x9;
const END_STREAM: u8 = 0x1;
const END_HEADERS: u8 = 0x4;
const PADDED: u8 = 0x8;
const PRIORITY: u8 = 0x20;
/// Largest frame payload every HTTP/2 peer accepts (SETTINGS_MAX_FRAME_SIZE's
/// initial value); the re-encoded blocks are cut to it.
const MAX_FRAME: usize = 16_384;
/// The server never announces SETTINGS_HEADER_TABLE_SIZE, so clients may use
/// the protocol's initial 4,096 bytes of dynamic table, and no more.
const HEADER_TABLE_SIZE: usize = 4_096;
/// Largest header block (encoded, or decoded and encoded again) the filter
/// buffers; hyper refuses decoded header lists past 16 KiB anyway.
pub const MAX_HEADER_BLOCK: usize = 64 * 1024;

/// Where the filter is in the client's byte stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Matching the connection preface; `n` bytes matched so far.
    Preface(usize),
    /// At a frame boundary.
    FrameHeader,
    /// Inside the payload of a frame that passes unchanged.
    Forward(usize),
    /// Collecting the payload of a HEADERS or CONTINUATION frame.
    HeaderFrame { len: usize, kind: u8, flags: u8, stream: u32 },
    /// Everything passes unchanged from here on.
    Passthrough,
}

/// A header block whose END_HEADERS has not arrived yet.
#[derive(Debug)]
struct OpenBlock {
    stream: u32,
    /// END_STREAM and PRIORITY of the HEADERS frame.
    flags: u8,
    priority: Option<[u8; 5]>,
    fragment: Vec<u8>,
    /// The frames as they came, handed on if the block cannot be read.
    raw: Vec<u8>,
}

/// Why a connection left the filter; `h2` reports the same input to the client.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FilterError {
    #[error("header block over {MAX_HEADER_BLOCK} bytes")]
    TooLarge,
    #[error("malformed HPACK header block: {0}")]
    Hpack(String),
    #[error("HEADERS frame with bad padding or priority")]
    BadHeadersFrame,
    #[error("frame of type {0:#x} where a CONTINUATION was due")]
    Interleaved(u8),
    #[error("CONTINUATION without an open header block")]
    StrayContinuation,
    #[error("HEADERS frame on stream 0")]
    StreamZero,
}

/// The client-to-server half of one connection; see the module doc.
pub struct AuthorityFilter {
    phase: Phase,
    decoder: Decoder<'static>,
    /// Bytes of a frame header or a header frame's payload not complete yet.
    pending: Vec<u8>,
    open: Option<OpenBlock>,
    /// Invalid `:authority` fields dropped so far.
    dropped: u64,
    /// Why the filter stepped aside, if it did.
    failure: Option<FilterError>,
}

impl Default for AuthorityFilter {
    fn default() -> Self {
        Self::new()
    }
}

impl AuthorityFilter {
    pub fn new() -> Self {
        let mut decoder = Decoder::new();
        decoder.set_max_allowed_table_size(HEADER_TABLE_SIZE);
        Self { phase: Phase::Preface(0), decoder, pending: Vec::new(), open: None, dropped: 0, failure: None }
    }

    /// True once every further byte passes unchanged.
    pub fn is_passthrough(&self) -> bool {
        self.phase == Phase::Passthrough
    }

    /// How many invalid `:authority` fields were dropped.
    pub fn dropped(&self) -> u64 {
        self.dropped
    }

    /// Why the filter stepped aside, if it did because of the input.
    pub fn failure(&self) -> Option<&FilterError> {
        self.failure.as_ref()
    }

    /// How many bytes of a frame that passes unchanged (a DATA frame's
    /// payload) come next: the caller may hand them on without [`push`]
    /// (then reports them with [`forwarded`]).
    ///
    /// [`push`]: Self::push
    /// [`forwarded`]: Self::forwarded
    pub fn forwarding(&self) -> usize {
        match self.phase {
            Phase::Forward(remaining) => remaining,
            _ => 0,
        }
    }

    /// `n` bytes (at most [`forwarding`](Self::forwarding)) were handed on
    /// unchanged by the caller.
    pub fn forwarded(&mut self, n: usize) {
        if let Phase::Forward(remaining) = self.phase {
            let n = n.min(remaining);
            self.phase = if n == remaining { Phase::FrameHeader } else { Phase::Forward(remaining - n) };
        }
    }

    /// Takes the next bytes from the client; appends what the server should
    /// read to `out`. Bytes of an incomplete frame header or header frame are
    /// held until the rest arrives.
    pub fn push(&mut self, mut input: &[u8], out: &mut Vec<u8>) {
        loop {
            match self.phase {
                Phase::Passthrough => {
                    out.extend_from_slice(input);
                    return;
                }
                Phase::Preface(matched) => {
                    if input.is_empty() {
                        return;
                    }
                    let n = input.len().min(PREFACE.len() - matched);
                    if input[..n] != PREFACE[matched..matched + n] {
                        // Not HTTP/2 with prior knowledge: hand on what was held.
                        out.extend_from_slice(&PREFACE[..matched]);
                        self.phase = Phase::Passthrough;
                        continue;
                    }
                    input = &input[n..];
                    self.phase = if matched + n == PREFACE.len() {
                        out.extend_from_slice(PREFACE);
                        Phase::FrameHeader
                    } else {
                        Phase::Preface(matched + n)
                    };
                }
                Phase::Forward(remaining) => {
                    if input.is_empty() {
                        return;
                    }
                    let n = input.len().min(remaining);
                    out.extend_from_slice(&input[..n]);
                    input = &input[n..];
                    self.phase = if n == remaining { Phase::FrameHeader } else { Phase::Forward(remaining - n) };
                }
                Phase::FrameHeader => {
                    let Some(header) = self.take(&mut input, FRAME_HEADER) else { return };
                    let len = usize::from(header[0]) << 16 | usize::from(header[1]) << 8 | usize::from(header[2]);
                    let kind = header[3];
                    let flags = header[4];
                    let stream = u32::from_be_bytes([header[5], header[6], header[7], header[8]]) & 0x7fff_ffff;
                    if kind == HEADERS || kind == CONTINUATION {
                        if len > MAX_HEADER_BLOCK {
                            self.step_aside(FilterError::TooLarge, &header, out);
                        } else {
                            self.pending = header;
                            self.phase = Phase::HeaderFrame { len, kind, flags, stream };
                        }
                    } else if self.open.is_some() {
                        self.step_aside(FilterError::Interleaved(kind), &header, out);
                    } else {
                        out.extend_from_slice(&header);
                        self.phase = if len == 0 { Phase::FrameHeader } else { Phase::Forward(len) };
                    }
                }
                Phase::HeaderFrame { len, kind, flags, stream } => {
                    let Some(frame) = self.take(&mut input, FRAME_HEADER + len) else { return };
                    self.phase = Phase::FrameHeader;
                    if let Err(e) = self.header_frame(&frame, kind, flags, stream, out) {
                        self.step_aside(e, &frame, out);
                    }
                }
            }
        }
    }

    /// Moves bytes from `input` into `pending` until it holds `want`; then
    /// returns them.
    fn take(&mut self, input: &mut &[u8], want: usize) -> Option<Vec<u8>> {
        let n = input.len().min(want.saturating_sub(self.pending.len()));
        self.pending.extend_from_slice(&input[..n]);
        *input = &input[n..];
        (self.pending.len() == want).then(|| std::mem::take(&mut self.pending))
    }

    /// One complete HEADERS or CONTINUATION frame. On error the open block
    /// keeps only the frames before this one.
    fn header_frame(
        &mut self,
        frame: &[u8],
        kind: u8,
        flags: u8,
        stream: u32,
        out: &mut Vec<u8>,
    ) -> Result<(), FilterError> {
        let payload = &frame[FRAME_HEADER..];
        let block = if kind == HEADERS {
            if self.open.is_some() {
                return Err(FilterError::Interleaved(HEADERS));
            }
            if stream == 0 {
                return Err(FilterError::StreamZero);
            }
            let (priority, fragment) = split_headers_payload(payload, flags)?;
            self.open.insert(OpenBlock {
                stream,
                flags: flags & (END_STREAM | PRIORITY),
                priority,
                fragment: fragment.to_vec(),
                raw: Vec::new(),
            })
        } else {
            let open = self.open.as_mut().filter(|o| o.stream == stream).ok_or(FilterError::StrayContinuation)?;
            if open.fragment.len() + payload.len() > MAX_HEADER_BLOCK {
                return Err(FilterError::TooLarge);
            }
            open.fragment.extend_from_slice(payload);
            open
        };
        if flags & END_HEADERS == 0 {
            block.raw.extend_from_slice(frame);
            return Ok(());
        }
        let Some(block) = self.open.take() else { return Ok(()) };
        match self.reencode(&block.fragment) {
            Ok(encoded) => {
                write_header_frames(block.stream, block.flags, block.priority, &encoded, out);
                Ok(())
            }
            Err(e) => {
                self.open = Some(block);
                Err(e)
            }
        }
    }

    /// Decodes a complete header block with the client's HPACK state and
    /// encodes it again without the dynamic table, less an `:authority` that
    /// is not a valid authority.
    fn reencode(&mut self, fragment: &[u8]) -> Result<Vec<u8>, FilterError> {
        let mut encoded = Vec::with_capacity(fragment.len() * 2);
        let mut dropped = 0;
        let mut too_large = false;
        self.decoder
            .decode_with_cb(fragment, |name, value| {
                if &*name == b":authority" && http::uri::Authority::try_from(&*value).is_err() {
                    dropped += 1;
                } else if encoded.len() + name.len() + value.len() + 10 > MAX_HEADER_BLOCK {
                    too_large = true;
                } else {
                    encode_literal(&name, &value, &mut encoded);
                }
            })
            .map_err(|e| FilterError::Hpack(e.to_string()))?;
        if too_large {
            return Err(FilterError::TooLarge);
        }
        self.dropped += dropped;
        Ok(encoded)
    }

    /// Hands on the open block's frames and `current` as they came, and
    /// every byte after them.
    fn step_aside(&mut self, why: FilterError, current: &[u8], out: &mut Vec<u8>) {
        tracing::debug!(error = %why, "local socket: header filter stepped aside");
        if let Some(open) = self.open.take() {
            out.extend_from_slice(&open.raw);
        }
        out.extend_from_slice(current);
        self.failure = Some(why);
        self.phase = Phase::Passthrough;
    }

    /// The client closed its side: hands on whatever was held (a truncated
    /// frame), so the server sees exactly the truncation the client sent.
    pub fn finish(&mut self, out: &mut Vec<u8>) {
        if let Phase::Preface(matched) = self.phase {
            out.extend_from_slice(&PREFACE[..matched]);
        }
        if let Some(open) = self.open.take() {
            out.extend_from_slice(&open.raw);
        }
        out.append(&mut self.pending);
        self.phase = Phase::Passthrough;
    }
}

/// The priority fields and the header block fragment of a HEADERS payload.
fn split_headers_payload(payload: &[u8], flags: u8) -> Result<(Option<[u8; 5]>, &[u8]), FilterError> {
    let mut body = payload;
    let mut pad = 0;
    if flags & PADDED != 0 {
        let (&n, rest) = body.split_first().ok_or(FilterError::BadHeadersFrame)?;
        pad = usize::from(n);
        body = rest;
    }
    let mut priority = None;
    if flags & PRIORITY != 0 {
        let (fields, rest) = body.split_first_chunk::<5>().ok_or(FilterError::BadHeadersFrame)?;
        priority = Some(*fields);
        body = rest;
    }
    let end = body.len().checked_sub(pad).ok_or(FilterError::BadHeadersFrame)?;
    Ok((priority, &body[..end]))
}

/// A literal header field without indexing, with a literal name (RFC 7541
/// §6.2.2): never touches the server decoder's dynamic table.
fn encode_literal(name: &[u8], value: &[u8], out: &mut Vec<u8>) {
    out.push(0);
    for s in [name, value] {
        // Writing to a Vec cannot fail.
        let _ = loona_hpack::encoder::encode_integer_into(s.len(), 7, 0, out);
        out.extend_from_slice(s);
    }
}

/// One HEADERS frame and as many CONTINUATIONs as `block` needs.
fn write_header_frames(stream: u32, flags: u8, priority: Option<[u8; 5]>, block: &[u8], out: &mut Vec<u8>) {
    let first_room = MAX_FRAME - priority.map_or(0, |p| p.len());
    let (first, mut rest) = block.split_at(block.len().min(first_room));
    let end = if rest.is_empty() { END_HEADERS } else { 0 };
    let len = first.len() + priority.map_or(0, |p| p.len());
    frame_header(len, HEADERS, flags | end, stream, out);
    if let Some(p) = priority {
        out.extend_from_slice(&p);
    }
    out.extend_from_slice(first);
    while !rest.is_empty() {
        let (chunk, tail) = rest.split_at(rest.len().min(MAX_FRAME));
        frame_header(chunk.len(), CONTINUATION, if tail.is_empty() { END_HEADERS } else { 0 }, stream, out);
        out.extend_from_slice(chunk);
        rest = tail;
    }
}

fn frame_header(len: usize, kind: u8, flags: u8, stream: u32, out: &mut Vec<u8>) {
    let len = (len as u32).to_be_bytes();
    out.extend_from_slice(&len[1..]);
    out.push(kind);
    out.push(flags);
    out.extend_from_slice(&stream.to_be_bytes());
}

/// A socket whose incoming bytes pass through an [`AuthorityFilter`];
/// writes go straight to the socket.
pub struct FilteredStream<S> {
    inner: S,
    filter: AuthorityFilter,
    out: Vec<u8>,
    read: usize,
    eof: bool,
}

impl<S> FilteredStream<S> {
    pub fn new(inner: S) -> Self {
        Self { inner, filter: AuthorityFilter::new(), out: Vec::new(), read: 0, eof: false }
    }
}

/// How much is read from the socket at a time while the filter is active.
const READ_CHUNK: usize = 8 * 1024;

impl<S: AsyncRead + Unpin> AsyncRead for FilteredStream<S> {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            if this.read < this.out.len() {
                let n = buf.remaining().min(this.out.len() - this.read);
                buf.put_slice(&this.out[this.read..this.read + n]);
                this.read += n;
                if this.read == this.out.len() {
                    // An idle connection (an Envoy between pushes) keeps no buffer.
                    this.out = Vec::new();
                    this.read = 0;
                }
                return Poll::Ready(Ok(()));
            }
            if this.eof {
                return Poll::Ready(Ok(()));
            }
            if this.filter.is_passthrough() {
                return Pin::new(&mut this.inner).poll_read(cx, buf);
            }
            // Inside a frame that passes unchanged (a DATA payload: Envoy's
            // 61 KB node on every xDS request): straight from the socket into
            // the reader's buffer, with no copy through the filter.
            let forwarding = this.filter.forwarding().min(buf.remaining());
            if forwarding > 0 {
                let mut direct = ReadBuf::new(buf.initialize_unfilled_to(forwarding));
                ready!(Pin::new(&mut this.inner).poll_read(cx, &mut direct))?;
                let n = direct.filled().len();
                if n == 0 {
                    this.filter.finish(&mut this.out);
                    this.eof = true;
                    continue;
                }
                buf.advance(n);
                this.filter.forwarded(n);
                return Poll::Ready(Ok(()));
            }
            // Not zeroed: the socket fills it and only filled bytes are read.
            let mut chunk = [MaybeUninit::<u8>::uninit(); READ_CHUNK];
            let mut chunk = ReadBuf::uninit(&mut chunk);
            ready!(Pin::new(&mut this.inner).poll_read(cx, &mut chunk))?;
            if chunk.filled().is_empty() {
                this.filter.finish(&mut this.out);
                this.eof = true;
            } else {
                this.filter.push(chunk.filled(), &mut this.out);
            }
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for FilteredStream<S> {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use loona_hpack::{Decoder, Encoder};

    use super::*;

    const GRPC_CORE_AUTHORITY: &[u8] = b"%2Ftmp%2Ftrustmesh%2Fpublic%2Fapi.sock";
    const SETTINGS: u8 = 0x4;
    const DATA: u8 = 0x0;

    fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        frame_header(payload.len(), kind, flags, stream, &mut out);
        out.extend_from_slice(payload);
        out
    }

    fn request(authority: &[u8], path: &[u8]) -> Vec<(Vec<u8>, Vec<u8>)> {
        [
            (&b":method"[..], &b"POST"[..]),
            (b":scheme", b"http"),
            (b":path", path),
            (b":authority", authority),
            (b"te", b"trailers"),
            (b"content-type", b"application/grpc"),
            (b"workload.spiffe.io", b"true"),
        ]
        .iter()
        .map(|(n, v)| (n.to_vec(), v.to_vec()))
        .collect()
    }

    fn encode(encoder: &mut Encoder, headers: &[(Vec<u8>, Vec<u8>)]) -> Vec<u8> {
        encoder.encode(headers.iter().map(|(n, v)| (&n[..], &v[..])))
    }

    /// (type, flags, stream, payload) of every frame after the preface.
    fn frames(mut bytes: &[u8]) -> Vec<(u8, u8, u32, Vec<u8>)> {
        bytes = bytes.strip_prefix(PREFACE).expect("the preface comes first");
        let mut out = Vec::new();
        while !bytes.is_empty() {
            let len = usize::from(bytes[0]) << 16 | usize::from(bytes[1]) << 8 | usize::from(bytes[2]);
            let stream = u32::from_be_bytes([bytes[5], bytes[6], bytes[7], bytes[8]]);
            out.push((bytes[3], bytes[4], stream, bytes[FRAME_HEADER..FRAME_HEADER + len].to_vec()));
            bytes = &bytes[FRAME_HEADER + len..];
        }
        out
    }

    fn filter_all(input: &[u8]) -> (Vec<u8>, AuthorityFilter) {
        let mut filter = AuthorityFilter::new();
        let mut out = Vec::new();
        filter.push(input, &mut out);
        (out, filter)
    }

    fn connection(blocks: &[Vec<u8>]) -> Vec<u8> {
        let mut input = PREFACE.to_vec();
        input.extend(frame(SETTINGS, 0, 0, &[0, 3, 0, 0, 0, 100]));
        for (i, block) in blocks.iter().enumerate() {
            let stream = 1 + 2 * i as u32;
            input.extend(frame(HEADERS, END_HEADERS, stream, block));
            input.extend(frame(DATA, END_STREAM, stream, b"\0\0\0\0\0"));
        }
        input
    }

    /// A string literal without Huffman coding.
    fn string(s: &[u8], out: &mut Vec<u8>) {
        loona_hpack::encoder::encode_integer_into(s.len(), 7, 0, out).unwrap();
        out.extend_from_slice(s);
    }

    /// Two requests as grpc-core encodes them: `:authority`, `content-type`
    /// and `te` are added to the dynamic table by the first block, and the
    /// second names them by dynamic index only.
    fn grpc_core_blocks(paths: [&[u8]; 2]) -> Vec<Vec<u8>> {
        paths
            .iter()
            .enumerate()
            .map(|(i, path)| {
                let mut b = vec![0x83, 0x86]; // :method POST, :scheme http (static)
                b.push(0x04); // :path, name static 4, not indexed
                string(path, &mut b);
                if i == 0 {
                    b.push(0x41); // :authority, name static 1, indexed
                    string(GRPC_CORE_AUTHORITY, &mut b);
                    b.push(0x40 | 31); // content-type, name static 31, indexed
                    string(b"application/grpc", &mut b);
                    b.push(0x40); // te: literal name, indexed
                    string(b"te", &mut b);
                    string(b"trailers", &mut b);
                } else {
                    b.extend([0x80 | 64, 0x80 | 63, 0x80 | 62]); // the three, newest first
                }
                b
            })
            .collect()
    }

    #[test]
    fn grpc_core_authority_is_dropped_and_the_rest_survives_dynamic_table_use() {
        let paths: [&[u8]; 2] = [b"/SpiffeWorkloadAPI/FetchX509SVID", b"/SpiffeWorkloadAPI/FetchJWTSVID"];
        let blocks = grpc_core_blocks(paths);
        // What the client meant, as a decoder that shares its state reads it.
        let mut client_view = Decoder::new();
        let meant: Vec<_> = blocks.iter().map(|b| client_view.decode(b).unwrap()).collect();
        assert_eq!(meant[1][3], (b":authority".to_vec(), GRPC_CORE_AUTHORITY.to_vec()));
        let (out, filter) = filter_all(&connection(&blocks));
        assert_eq!(filter.dropped(), 2);
        assert!(filter.failure().is_none());

        let frames = frames(&out);
        let kinds: Vec<u8> = frames.iter().map(|f| f.0).collect();
        assert_eq!(kinds, [SETTINGS, HEADERS, DATA, HEADERS, DATA]);
        assert_eq!(frames[0].3, [0, 3, 0, 0, 0, 100]);
        assert_eq!((frames[2].1, frames[2].2, &frames[2].3[..]), (END_STREAM, 1, &b"\0\0\0\0\0"[..]));
        // One server-side decoder reads both blocks: its table state agrees.
        let mut server = Decoder::new();
        for (i, expected) in meant.into_iter().enumerate() {
            let (kind, flags, stream, payload) = &frames[1 + 2 * i];
            assert_eq!((*kind, *flags, *stream), (HEADERS, END_HEADERS, 1 + 2 * i as u32));
            let decoded = server.decode(payload).unwrap();
            let kept: Vec<_> = expected.into_iter().filter(|(n, _)| n != b":authority").collect();
            assert_eq!(decoded, kept);
            assert_eq!(decoded[2], (b":path".to_vec(), paths[i].to_vec()));
        }
    }

    #[test]
    fn a_valid_authority_is_kept() {
        for authority in [&b"localhost"[..], b"trustmesh.example.org:4020", b"127.0.0.1:4020"] {
            let headers = request(authority, b"/x");
            let (out, filter) = filter_all(&connection(&[encode(&mut Encoder::new(), &headers)]));
            assert_eq!(filter.dropped(), 0);
            assert_eq!(Decoder::new().decode(&frames(&out)[1].3).unwrap(), headers);
        }
    }

    #[test]
    fn any_split_of_the_input_gives_the_same_output() {
        let input = connection(&grpc_core_blocks([b"/a", b"/b"]));
        let (whole, _) = filter_all(&input);
        for size in [1, 2, 7, 9, 10, 24, 100] {
            let mut filter = AuthorityFilter::new();
            let mut out = Vec::new();
            for chunk in input.chunks(size) {
                filter.push(chunk, &mut out);
            }
            assert_eq!(out, whole, "chunks of {size}");
        }
    }

    #[tokio::test]
    async fn data_payloads_read_straight_from_the_socket_give_the_same_bytes() {
        use tokio::io::AsyncReadExt as _;
        let mut input = connection(&grpc_core_blocks([b"/a", b"/b"]));
        let payload: Vec<u8> = (0..70_000u32).map(|i| i as u8).collect();
        input.extend_from_slice(&frame(DATA, 0, 1, &payload));
        input.extend_from_slice(&frame(DATA, 1, 3, b"tail"));
        let (expected, _) = filter_all(&input);
        for read_size in [1, 5, 9, 1000, 16_384, 100_000] {
            let mut stream = FilteredStream::new(input.as_slice());
            let (mut got, mut buf) = (Vec::new(), vec![0; read_size]);
            loop {
                let n = stream.read(&mut buf).await.unwrap();
                if n == 0 {
                    break;
                }
                got.extend_from_slice(&buf[..n]);
            }
            assert_eq!(got, expected, "reads of {read_size}");
        }
    }

    #[test]
    fn continuations_padding_priority_and_end_stream_are_honoured() {
        let headers = request(GRPC_CORE_AUTHORITY, b"/padded");
        let block = encode(&mut Encoder::new(), &headers);
        let (head, tail) = block.split_at(10);
        let mut payload = vec![3]; // pad length
        payload.extend_from_slice(&[0x80, 0, 0, 1, 200]); // exclusive dependency on 1, weight 200
        payload.extend_from_slice(head);
        payload.extend_from_slice(&[0, 0, 0]);
        let mut input = PREFACE.to_vec();
        input.extend(frame(HEADERS, PADDED | PRIORITY | END_STREAM, 3, &payload));
        input.extend(frame(CONTINUATION, END_HEADERS, 3, tail));
        let (out, filter) = filter_all(&input);
        assert!(filter.failure().is_none());
        let frames = frames(&out);
        assert_eq!(frames.len(), 1);
        let (kind, flags, stream, payload) = &frames[0];
        assert_eq!((*kind, *flags, *stream), (HEADERS, PRIORITY | END_STREAM | END_HEADERS, 3));
        assert_eq!(payload[..5], [0x80, 0, 0, 1, 200]);
        let kept: Vec<_> = headers.into_iter().filter(|(n, _)| n != b":authority").collect();
        assert_eq!(Decoder::new().decode(&payload[5..]).unwrap(), kept);
    }

    #[test]
    fn a_block_over_one_frame_is_sent_as_headers_and_continuations() {
        let mut headers = request(b"localhost", b"/big");
        for i in 0..8 {
            headers.push((format!("x-big-{i}").into_bytes(), vec![b'v'; 5_000]));
        }
        let mut input = PREFACE.to_vec();
        let block = encode(&mut Encoder::new(), &headers);
        let (a, rest) = block.split_at(MAX_FRAME);
        input.extend(frame(HEADERS, 0, 1, a));
        input.extend(frame(CONTINUATION, END_HEADERS, 1, rest));
        let (out, _) = filter_all(&input);
        let frames = frames(&out);
        let kinds: Vec<(u8, u8)> = frames.iter().map(|f| (f.0, f.1)).collect();
        assert_eq!(kinds, [(HEADERS, 0), (CONTINUATION, 0), (CONTINUATION, END_HEADERS)], "40 KB in 16 KiB frames");
        assert!(frames.iter().all(|f| f.3.len() <= MAX_FRAME && f.2 == 1));
        let joined: Vec<u8> = frames.iter().flat_map(|f| f.3.clone()).collect();
        assert_eq!(Decoder::new().decode(&joined).unwrap(), headers);
    }

    #[test]
    fn http1_and_a_near_preface_pass_through_unchanged() {
        for input in [&b"GET /health HTTP/1.1\r\nhost: x\r\n\r\n"[..], b"PRI * HTTP/1.1\r\n\r\n", b"P"] {
            let mut filter = AuthorityFilter::new();
            let mut out = Vec::new();
            for b in input {
                filter.push(std::slice::from_ref(b), &mut out);
            }
            filter.finish(&mut out);
            assert_eq!(out, input);
        }
    }

    /// What the filter cannot read reaches the server exactly as sent, from
    /// the first frame of the block on, so `h2` answers it.
    #[test]
    fn unreadable_input_is_handed_on_as_it_came() {
        let good = encode(&mut Encoder::new(), &request(GRPC_CORE_AUTHORITY, b"/ok"));
        let cases: Vec<(Vec<u8>, FilterError)> = vec![
            // Indexed field 200: neither table has it.
            (
                frame(HEADERS, END_HEADERS, 1, &[0x80 | 0x7f, 73]),
                FilterError::Hpack("Header index out of bounds".into()),
            ),
            // A dynamic table larger than the server allows.
            (
                frame(HEADERS, END_HEADERS, 1, &[0x3f, 0xe1, 0x7f, 0x82]),
                FilterError::Hpack("Dynamic table size exceeds the maximum size".into()),
            ),
            ([frame(HEADERS, 0, 1, &good[..5]), frame(DATA, 0, 1, b"x")].concat(), FilterError::Interleaved(DATA)),
            (
                [frame(HEADERS, 0, 1, &good[..5]), frame(CONTINUATION, END_HEADERS, 3, &good[5..])].concat(),
                FilterError::StrayContinuation,
            ),
            (frame(CONTINUATION, END_HEADERS, 1, &good), FilterError::StrayContinuation),
            (frame(HEADERS, END_HEADERS | PADDED, 1, &[200, 1, 2]), FilterError::BadHeadersFrame),
            (frame(HEADERS, END_HEADERS, 0, &good), FilterError::StreamZero),
            (frame(HEADERS, END_HEADERS, 1, &vec![0; MAX_HEADER_BLOCK + 1]), FilterError::TooLarge),
        ];
        for (bad, why) in cases {
            let mut input = PREFACE.to_vec();
            input.extend(frame(SETTINGS, 0, 0, &[]));
            let settings_end = input.len();
            input.extend(&bad);
            input.extend(frame(HEADERS, END_HEADERS, 5, &good));
            let (out, filter) = filter_all(&input);
            assert_eq!(filter.failure(), Some(&why));
            assert!(filter.is_passthrough());
            assert_eq!(out, input, "{why}");
            assert_eq!(out[..settings_end], input[..settings_end]);
        }
    }

    #[test]
    fn continuations_past_the_limit_are_handed_on() {
        let mut input = PREFACE.to_vec();
        input.extend(frame(HEADERS, 0, 1, &[0x82]));
        for _ in 0..=MAX_HEADER_BLOCK / MAX_FRAME {
            input.extend(frame(CONTINUATION, 0, 1, &vec![0x82; MAX_FRAME]));
        }
        let (out, filter) = filter_all(&input);
        assert_eq!(filter.failure(), Some(&FilterError::TooLarge));
        assert_eq!(out, input);
    }

    #[test]
    fn a_truncated_frame_is_handed_on_at_the_end() {
        let block = encode(&mut Encoder::new(), &request(GRPC_CORE_AUTHORITY, b"/cut"));
        let mut input = PREFACE.to_vec();
        input.extend(frame(HEADERS, 0, 1, &block));
        input.extend(&frame(CONTINUATION, END_HEADERS, 1, b"abc")[..6]);
        let (mut out, mut filter) = filter_all(&input);
        assert_eq!(out, PREFACE, "nothing of an open block goes out early");
        filter.finish(&mut out);
        assert_eq!(out, input);
    }

    /// Random bytes after the preface, alone and inside valid traffic: the
    /// filter never panics and never holds more than one header block.
    #[test]
    fn garbage_never_panics() {
        let mut seed = 0x2545_f491_4f6c_dd1d_u64;
        let mut next = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        let good = connection(&[encode(&mut Encoder::new(), &request(GRPC_CORE_AUTHORITY, b"/g"))]);
        for round in 0..2_000 {
            let len = (next() % 300) as usize;
            let garbage: Vec<u8> = (0..len).map(|_| next() as u8).collect();
            let mut input = if round % 2 == 0 { PREFACE.to_vec() } else { good.clone() };
            // Frames with a small length field, so bodies get parsed too.
            if round % 3 == 0 && garbage.len() > 9 {
                let mut f = garbage.clone();
                f[0] = 0;
                f[1] = 0;
                f[2] = (garbage.len() - 9) as u8;
                f[3] = [HEADERS, CONTINUATION, DATA][round % 3];
                input.extend(f);
            } else {
                input.extend(garbage);
            }
            let mut filter = AuthorityFilter::new();
            let mut out = Vec::new();
            for chunk in input.chunks(1 + round % 50) {
                filter.push(chunk, &mut out);
            }
            filter.finish(&mut out);
            assert!(filter.pending.capacity() <= FRAME_HEADER + MAX_HEADER_BLOCK);
        }
    }
}
