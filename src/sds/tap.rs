//! Takes the first gRPC message of a stream out of the request body before
//! tonic's decoder sees it.
//!
//! Envoy's first xDS request carries its whole node (≈ 61 KB with Envoy
//! 1.40's 516 extensions); every later request is a few hundred bytes. A
//! decoder that reads the first one keeps a buffer that size for as long as
//! the stream lives — most of a stream's memory at 10,000 streams. The tap
//! collects the first message in its own buffer, hands it to the stream's
//! driver through a oneshot, and passes everything after it through, so the
//! decoder only ever holds small messages.
//!
//! The response headers are not held back: the tap works as tonic reads the
//! body, and clients that wait for response headers before sending their
//! first message still get them at once.
//!
//! What the tap does not handle itself it passes through untouched, and the
//! driver then reads the first message from tonic as usual: a compressed
//! message, a message larger than the decoder accepts (tonic refuses it with
//! `OutOfRange`), a body that ends or fails before the first message is
//! complete.

use std::pin::Pin;
use std::task::{Context, Poll};

use http_body::{Body, Frame, SizeHint};
use prost::bytes::{Buf, Bytes, BytesMut};
use tokio::sync::oneshot;

/// gRPC message prefix: compression flag (1 byte) + length (4 bytes, big-endian).
const PREFIX: usize = 5;

/// What the driver gets: the first message's bytes (without the prefix), or
/// `None` when the tap stood aside and the message comes through tonic.
pub(crate) type First = oneshot::Receiver<Option<Bytes>>;

pub(crate) struct FirstMessageTap<B: Body> {
    inner: B,
    state: State<B::Error>,
    max_message: usize,
}

type Polled<E> = Option<Result<Frame<Bytes>, E>>;

enum State<E> {
    Collecting {
        buf: BytesMut,
        tx: Option<oneshot::Sender<Option<Bytes>>>,
    },
    /// Bytes to hand on, then an inner result already taken, then the inner body.
    Passing {
        pending: Option<Bytes>,
        deferred: Option<Polled<E>>,
    },
}

impl<B: Body> FirstMessageTap<B> {
    pub(crate) fn new(inner: B, max_message: usize) -> (Self, First) {
        let (tx, rx) = oneshot::channel();
        let state = State::Collecting { buf: BytesMut::new(), tx: Some(tx) };
        (Self { inner, state, max_message }, rx)
    }
}

/// What the collected bytes say.
enum Progress {
    /// Not yet a whole message.
    More,
    /// The first message is complete: its length.
    Message(usize),
    /// Not ours to decode (compressed, too large): pass everything on.
    StandAside,
}

fn progress(buf: &BytesMut, max_message: usize) -> Progress {
    if buf.len() < PREFIX {
        return Progress::More;
    }
    let compressed = buf[0] != 0;
    let len = u32::from_be_bytes([buf[1], buf[2], buf[3], buf[4]]) as usize;
    if compressed || len > max_message {
        return Progress::StandAside;
    }
    if buf.len() < PREFIX + len {
        return Progress::More;
    }
    Progress::Message(len)
}

impl<B> Body for FirstMessageTap<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Unpin,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Polled<B::Error>> {
        let this = &mut *self;
        loop {
            match &mut this.state {
                State::Passing { pending, deferred } => {
                    if let Some(bytes) = pending.take().filter(|b| !b.is_empty()) {
                        return Poll::Ready(Some(Ok(Frame::data(bytes))));
                    }
                    if let Some(polled) = deferred.take() {
                        return Poll::Ready(polled);
                    }
                    return Pin::new(&mut this.inner).poll_frame(cx);
                }
                State::Collecting { buf, tx } => {
                    let polled = match Pin::new(&mut this.inner).poll_frame(cx) {
                        Poll::Pending => return Poll::Pending,
                        Poll::Ready(polled) => polled,
                    };
                    let next = match polled {
                        Some(Ok(frame)) => match frame.into_data() {
                            Ok(data) => {
                                buf.extend_from_slice(&data);
                                progress(buf, this.max_message)
                            }
                            // Trailers before a whole message: tonic judges it all.
                            Err(trailers) => {
                                stand_aside(tx);
                                let pending = Some(std::mem::take(buf).freeze());
                                this.state = State::Passing { pending, deferred: Some(Some(Ok(trailers))) };
                                continue;
                            }
                        },
                        // The end or an error before a whole message: the same.
                        end_or_error => {
                            stand_aside(tx);
                            let pending = Some(std::mem::take(buf).freeze());
                            this.state = State::Passing { pending, deferred: Some(end_or_error) };
                            continue;
                        }
                    };
                    match next {
                        Progress::More => {}
                        Progress::StandAside => {
                            stand_aside(tx);
                            let pending = Some(std::mem::take(buf).freeze());
                            this.state = State::Passing { pending, deferred: None };
                        }
                        Progress::Message(len) => {
                            let mut rest = std::mem::take(buf).freeze();
                            rest.advance(PREFIX);
                            let message = rest.split_to(len);
                            if let Some(tx) = tx.take() {
                                let _ = tx.send(Some(message));
                            }
                            // The collecting buffer goes with this state.
                            this.state = State::Passing { pending: Some(rest), deferred: None };
                        }
                    }
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        matches!(&self.state, State::Passing { pending: None, deferred: None }) && self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::default()
    }
}

fn stand_aside(tx: &mut Option<oneshot::Sender<Option<Bytes>>>) {
    if let Some(tx) = tx.take() {
        let _ = tx.send(None);
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::panic)]

    use std::collections::VecDeque;
    use std::convert::Infallible;

    use super::*;

    /// A body that yields the given chunks, one per poll, then ends.
    struct Chunks(VecDeque<Bytes>);

    impl Body for Chunks {
        type Data = Bytes;
        type Error = Infallible;

        fn poll_frame(mut self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Polled<Infallible>> {
            Poll::Ready(self.0.pop_front().map(|b| Ok(Frame::data(b))))
        }
    }

    fn message(flag: u8, payload: &[u8]) -> Vec<u8> {
        let mut m = vec![flag];
        m.extend_from_slice(&(payload.len() as u32).to_be_bytes());
        m.extend_from_slice(payload);
        m
    }

    /// Everything the tap passes on, and what the driver got.
    fn run(chunks: Vec<Vec<u8>>, max: usize) -> (Vec<u8>, Option<Bytes>) {
        let body = Chunks(chunks.into_iter().map(Bytes::from).collect());
        let (mut tap, mut first) = FirstMessageTap::new(body, max);
        let waker = futures::task::noop_waker();
        let mut cx = Context::from_waker(&waker);
        let mut passed = Vec::new();
        while let Poll::Ready(Some(frame)) = Pin::new(&mut tap).poll_frame(&mut cx) {
            passed.extend_from_slice(&frame.unwrap().into_data().unwrap());
        }
        (passed, first.try_recv().unwrap())
    }

    #[test]
    fn the_first_message_goes_to_the_driver_even_split_across_frames() {
        let big = vec![7u8; 70_000];
        let first = message(0, &big);
        let second = message(0, b"ack");
        let mut stream = first.clone();
        stream.extend_from_slice(&second);
        // Split at awkward places: inside the prefix, inside the message, across both.
        let chunks = vec![stream[..3].to_vec(), stream[3..40_000].to_vec(), stream[40_000..].to_vec()];
        let (passed, got) = run(chunks, 4 << 20);
        assert_eq!(got.unwrap().as_ref(), big.as_slice());
        assert_eq!(passed, second, "only what follows the first message reaches tonic");
    }

    #[test]
    fn compressed_oversized_and_truncated_first_messages_are_left_to_tonic() {
        let compressed = message(1, b"zipped");
        assert_eq!(run(vec![compressed.clone()], 1024), (compressed, None));
        let large = message(0, &[1u8; 2048]);
        assert_eq!(run(vec![large.clone()], 1024), (large, None));
        let truncated = message(0, b"incomplete")[..8].to_vec();
        assert_eq!(run(vec![truncated.clone()], 1024), (truncated, None));
        assert_eq!(run(vec![], 1024), (Vec::new(), None));
    }
}
