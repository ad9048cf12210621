//! One driver per xDS stream: attests the caller, follows its identities
//! through a `watch`, feeds requests and state changes to the protocol state
//! machine, and sends what it returns. The driver is the response stream
//! itself (no extra task): it lives exactly as long as the RPC.
//!
//! Per ACK the work is: read the request's fields past its node
//! (`reader.rs`: Envoy's ~61 KB node is skipped as it arrives, never copied),
//! decode the few bytes left, compare a nonce, log. The node is decoded once,
//! from the first request.
//! Per push: diff against the catalog all streams of the identity set share,
//! and write the reply as one gRPC frame ([`ReplyBody`]): a few fields and a
//! copy of each pre-encoded resource.

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll, Wake, Waker, ready};

use futures::Stream;
use futures::task::AtomicWaker;
use prost::Message as _;
use prost::bytes::Bytes;
use tonic::body::Body;
use tonic::{Request, Status};

use super::delta::{DeltaReply, DeltaStream};
use super::metrics::SdsMetrics;
use super::protocol::{Catalog, Notice, ProtocolError};
use super::reader::{Message, NodeSeen, Requests};
use super::service::Shared;
use super::sotw::{SotwReply, SotwStream};
use super::{MAX_MESSAGE_BYTES, SdsError, status, wire};
use crate::cache::IdentityWatch;
use crate::domain::text;
use crate::domain::throttle::Throttle;
use crate::trust::{AckHandle, AckTracker};

/// Which protocol variant a stream speaks.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Kind {
    Sotw,
    Delta,
}

/// Serves one streaming call. `default_type` is the implicit type URL of the
/// SDS endpoints; `None` on ADS, where every request must name its type.
pub(crate) async fn serve(
    shared: Arc<Shared>,
    req: http::Request<Body>,
    kind: Kind,
    default_type: Option<&'static str>,
) -> http::Response<Body> {
    match kind {
        Kind::Sotw => serve_as::<SotwStream>(shared, req, default_type).await,
        Kind::Delta => serve_as::<DeltaStream>(shared, req, default_type).await,
    }
}

type Replies<R> = Pin<Box<dyn Stream<Item = Result<R, Status>> + Send>>;

async fn serve_as<M: Machine>(
    shared: Arc<Shared>,
    req: http::Request<Body>,
    default_type: Option<&'static str>,
) -> http::Response<Body> {
    // Only identity encoding is served (what tonic's `Grpc` refuses the same way).
    if let Some(encoding) = req.headers().get(GRPC_ENCODING).filter(|v| v.as_bytes() != b"identity") {
        let name = text::shorten(&String::from_utf8_lossy(encoding.as_bytes()), 64);
        return Status::unimplemented(format!("Content is compressed with `{name}` which isn't supported")).into_http();
    }
    let (parts, body) = req.into_parts();
    let requests = Requests::new(body, M::NODE_FIELD, MAX_MESSAGE_BYTES);
    let request = Request::from_http(http::Request::from_parts(parts, ()));
    let watch = match shared.caller(&request).await {
        Ok(watch) => watch,
        Err(s) => return s.into_http(),
    };
    let driver = Driver::<M>::new(shared, watch, requests, default_type);
    let replies: Replies<M::Response> =
        Box::pin(futures::stream::unfold(driver, |mut d| async move { d.next().await.map(|r| (r, d)) }));
    let mut response = http::Response::new(Body::new(ReplyBody::<M> { replies, done: false }));
    response.headers_mut().insert(http::header::CONTENT_TYPE, http::HeaderValue::from_static("application/grpc"));
    response
}

const GRPC_ENCODING: &str = "grpc-encoding";

/// The response body: each reply framed as one gRPC message as soon as the
/// driver yields it, then the status as trailers. It replaces tonic's
/// encoder, which would copy every reply into a per-stream buffer allocated
/// for the stream's whole life and poll the driver once more before sending
/// (a poll of the request stream, at every push on every stream): here a
/// reply is written once into a buffer of its own size
/// ([`Machine::encode`]: pre-encoded resources, a few fields by hand) that
/// the socket write frees, and an idle stream holds no output buffer.
struct ReplyBody<M: Machine> {
    replies: Replies<M::Response>,
    done: bool,
}

impl<M: Machine> http_body::Body for ReplyBody<M> {
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, Status>>> {
        if self.done {
            return Poll::Ready(None);
        }
        let trailers = match ready!(self.replies.as_mut().poll_next(cx)) {
            Some(Ok(reply)) => return Poll::Ready(Some(frame::<M>(&reply))),
            Some(Err(status)) => status,
            None => Status::ok(""),
        };
        self.done = true;
        let mut headers = http::HeaderMap::new();
        match trailers.add_header(&mut headers) {
            Ok(()) => Poll::Ready(Some(Ok(http_body::Frame::trailers(headers)))),
            Err(status) => Poll::Ready(Some(Err(status))),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.done
    }
}

/// One gRPC message: not compressed, a 4-byte big-endian length, the reply.
fn frame<M: Machine>(reply: &M::Response) -> Result<http_body::Frame<Bytes>, Status> {
    let mut buf = Vec::with_capacity(5 + M::encoded_len(reply));
    buf.extend_from_slice(&[0; 5]);
    M::encode(reply, &mut buf);
    let len = u32::try_from(buf.len() - 5).map_err(|_| Status::internal("an xDS response larger than 4 GiB"))?;
    buf[1..5].copy_from_slice(&len.to_be_bytes());
    Ok(http_body::Frame::data(Bytes::from(buf)))
}

/// A protocol state machine as the driver uses it.
pub(crate) trait Machine: Send + Sized + 'static {
    type Request: prost::Message + Default + Send + 'static;
    type Response: Send + 'static;
    const FLAVOR: &'static str;
    /// The node's field number in [`Machine::Request`].
    const NODE_FIELD: u32;

    fn node(req: &Self::Request) -> &Bytes;
    fn nonce(reply: &Self::Response) -> u64;
    fn start(catalog: Arc<dyn Catalog>) -> Self;
    fn request(&mut self, req: Self::Request, default_type: Option<&str>) -> Result<Out<Self>, ProtocolError>;
    fn state(&mut self, catalog: Arc<dyn Catalog>) -> Out<Self>;
    /// Appends a reply as its xDS response message.
    fn encode(reply: &Self::Response, buf: &mut Vec<u8>);
    /// About the bytes [`Machine::encode`] appends (to allocate once).
    fn encoded_len(reply: &Self::Response) -> usize;
}

pub(crate) type Out<M> = (Vec<<M as Machine>::Response>, Vec<Notice>);

/// Both flavours drive the same loop; only their wire types differ.
macro_rules! machine {
    ($ty:ident, $req:ty, $resp:ty, $encode:path, $len:path, $flavor:literal, $node_field:literal) => {
        impl Machine for $ty {
            type Request = $req;
            type Response = $resp;
            const FLAVOR: &'static str = $flavor;
            const NODE_FIELD: u32 = $node_field;

            fn node(req: &Self::Request) -> &Bytes {
                &req.node
            }
            fn nonce(reply: &Self::Response) -> u64 {
                reply.nonce
            }
            fn start(catalog: Arc<dyn Catalog>) -> Self {
                $ty::new(catalog)
            }
            fn request(&mut self, req: Self::Request, default_type: Option<&str>) -> Result<Out<Self>, ProtocolError> {
                let step = self.on_request(req.into_input(default_type))?;
                Ok((step.replies, step.notices))
            }
            fn state(&mut self, catalog: Arc<dyn Catalog>) -> Out<Self> {
                let step = self.on_state(catalog);
                (step.replies, step.notices)
            }
            fn encode(reply: &Self::Response, buf: &mut Vec<u8>) {
                $encode(reply, buf)
            }
            fn encoded_len(reply: &Self::Response) -> usize {
                $len(reply)
            }
        }
    };
}

machine!(SotwStream, wire::DiscoveryRequest, SotwReply, wire::encode_sotw, wire::sotw_len, "sotw", 2);
machine!(DeltaStream, wire::DeltaDiscoveryRequest, DeltaReply, wire::encode_delta, wire::delta_len, "delta", 1);

struct Driver<M: Machine> {
    shared: Arc<Shared>,
    watch: IdentityWatch,
    requests: Requests,
    /// Whether the request body may have something: see [`BodyWake`].
    body: Arc<BodyWake>,
    body_waker: Waker,
    default_type: Option<&'static str>,
    /// Set by the first request (it carries the node).
    machine: Option<(M, wire::NodeInfo)>,
    queue: VecDeque<Result<M::Response, Status>>,
    done: bool,
    /// The trust snapshot revision of the last catalog (for push latency).
    trust_revision: u64,
    /// Warnings about this stream's requests (NACKs, unavailable names):
    /// the first at once, then one line per interval.
    warnings: Throttle,
    /// Which trust revision the client holds, reported to the server's
    /// acknowledgements (for `pki ca activate`) once the node is known.
    tracker: AckTracker,
    ack: Option<AckHandle>,
}

enum Event {
    Request(Result<Option<Message>, Status>),
    Changed(bool),
}

impl<M: Machine> Driver<M> {
    fn new(shared: Arc<Shared>, watch: IdentityWatch, requests: Requests, default_type: Option<&'static str>) -> Self {
        let body = Arc::new(BodyWake { woken: AtomicBool::new(true), task: AtomicWaker::new() });
        Self {
            shared,
            watch,
            requests,
            body_waker: Waker::from(body.clone()),
            body,
            default_type,
            machine: None,
            queue: VecDeque::new(),
            done: false,
            trust_revision: 0,
            warnings: Throttle::new(WARNING_INTERVAL),
            tracker: AckTracker::default(),
            ack: None,
        }
    }

    /// The next response, `Some(Err)` to end the stream with a status, `None`
    /// when the client closed it.
    async fn next(&mut self) -> Option<Result<M::Response, Status>> {
        loop {
            if let Some(item) = self.queue.pop_front() {
                return Some(item);
            }
            if self.done {
                return None;
            }
            let started = self.machine.is_some();
            let (requests, body, body_waker) = (&mut self.requests, &*self.body, &self.body_waker);
            // A change is looked at before the request stream, and the
            // request stream only when it signalled (`BodyWake`): a wake-up
            // by the watch (ten thousand streams at once) then costs no poll
            // of the request body, the dearer of the two (it takes the HTTP/2
            // connection's lock, shared with the connection's task).
            let event = tokio::select! {
                biased;
                c = self.watch.updates.changed(), if started => Event::Changed(c.is_ok()),
                r = std::future::poll_fn(|cx| poll_request(requests, body, body_waker, cx)) => Event::Request(r),
            };
            let outcome = match event {
                Event::Request(Ok(Some(message))) => self.on_message(message),
                Event::Request(Ok(None)) => return None,
                Event::Request(Err(s)) => {
                    tracing::debug!(node_id = %self.node_id(), code = ?s.code(), error = %s.message(), "xds stream ended by the client");
                    self.done = true;
                    return Some(Err(s));
                }
                Event::Changed(true) => {
                    self.on_state();
                    Ok(())
                }
                Event::Changed(false) => Err(SdsError::Closed),
            };
            if let Err(e) = outcome {
                tracing::warn!(node_id = %self.node_id(), error = %e, "xds stream ended with an error");
                self.done = true;
                let s = status(e);
                self.shared.metrics.refused(s.code());
                self.queue.push_back(Err(s));
            }
        }
    }

    fn on_message(&mut self, message: Message) -> Result<(), SdsError> {
        let req = M::Request::decode(message.bytes).map_err(|e| SdsError::Request(e.to_string()))?;
        if message.node == NodeSeen::Changed
            && let Some((_, node)) = &self.machine
            && let Some(held_back) = self.warnings.admit(std::time::Instant::now())
        {
            tracing::warn!(node_id = %node.id, warnings_held_back = held_back, "xds request with another node ignored: the stream keeps the node of its first request; reconnect to change it");
        }
        self.on_request(req)
    }

    fn on_request(&mut self, req: M::Request) -> Result<(), SdsError> {
        let default_type = self.default_type;
        if self.machine.is_none() {
            let node = wire::parse_node(M::node(&req)).map_err(|e| SdsError::Node(e.to_string()))?;
            if let Some(why) = &node.ignored {
                tracing::warn!(node_id = %node.id, "node metadata ignored: {why}");
            }
            tracing::info!(node_id = %node.id, cluster = %node.cluster, flavor = M::FLAVOR, validator = ?node.validator, "xds stream opened");
            self.shared.metrics.stream_opened(M::FLAVOR);
            let (catalog, _) = self.catalog(node.validator);
            self.ack = Some(self.shared.acks.register(&node.id, "sds"));
            self.machine = Some((M::start(catalog), node));
        }
        let Some((machine, node)) = self.machine.as_mut() else { return Ok(()) };
        let (replies, notices) = machine.request(req, default_type)?;
        log_notices(&node.id, &notices, &mut self.warnings);
        count(&self.shared.metrics, &notices, "request", replies.len());
        self.track(&replies, &notices);
        self.queue.extend(replies.into_iter().map(Ok));
        Ok(())
    }

    /// Follows what the client holds: what was sent, what it answered.
    fn track(&mut self, replies: &[M::Response], notices: &[Notice]) {
        for n in notices {
            match n {
                Notice::Ack { nonce, .. } => nonce.parse().map_or((), |n| self.tracker.ack(n)),
                Notice::Nack { nonce, .. } => nonce.parse().map_or((), |n| self.tracker.nack(n)),
                _ => {}
            }
        }
        for reply in replies {
            self.tracker.sent(M::nonce(reply), self.trust_revision);
        }
        if let Some(ack) = &self.ack {
            ack.acked(self.tracker.holds(self.trust_revision));
        }
    }

    fn on_state(&mut self) {
        let Some(mode) = self.machine.as_ref().map(|(_, n)| n.validator) else { return };
        let previous = self.trust_revision;
        let (catalog, published_at) = self.catalog(mode);
        let Some((machine, node)) = self.machine.as_mut() else { return };
        let (replies, notices) = machine.state(catalog);
        log_notices(&node.id, &notices, &mut self.warnings);
        count(&self.shared.metrics, &notices, "push", replies.len());
        if !replies.is_empty() {
            if self.trust_revision != previous {
                self.shared.metrics.pushed(published_at.elapsed());
            }
            tracing::debug!(node_id = %node.id, responses = replies.len(), "xds push");
        }
        self.track(&replies, &notices);
        self.queue.extend(replies.into_iter().map(Ok));
    }

    /// The catalog of the current identity set (shared by every stream that
    /// follows the same set with the same validator), and when its trust
    /// snapshot was published.
    fn catalog(&mut self, mode: crate::sds::ValidatorMode) -> (Arc<dyn Catalog>, std::time::Instant) {
        let set = self.watch.updates.borrow_and_update().clone();
        self.trust_revision = set.trust.revision;
        let published_at = set.trust.published_at;
        (self.shared.catalogs.of(set, mode), published_at)
    }

    fn node_id(&self) -> &str {
        self.machine.as_ref().map(|(_, n)| n.id.as_str()).unwrap_or_default()
    }
}

/// Polls the request body only when it may have something: after it
/// signalled, or after it yielded (it may hold more). The body is polled
/// with a waker of its own that records its signal before waking the task,
/// so a task woken by the watch does not poll it (and take the connection's
/// lock) for nothing; three of the four polls per push and ACK were such.
pub(crate) struct BodyWake {
    woken: AtomicBool,
    task: AtomicWaker,
}

impl Wake for BodyWake {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.woken.store(true, Ordering::Release);
        self.task.wake();
    }
}

fn poll_request(
    requests: &mut Requests,
    body: &BodyWake,
    body_waker: &Waker,
    cx: &mut Context<'_>,
) -> Poll<Result<Option<Message>, Status>> {
    // Registered before the flag is read: a signal in between wakes this task.
    body.task.register(cx.waker());
    if !body.woken.swap(false, Ordering::AcqRel) {
        return Poll::Pending;
    }
    let polled = requests.poll_next(&mut Context::from_waker(body_waker));
    match polled {
        Poll::Pending => Poll::Pending,
        Poll::Ready(item) => {
            body.woken.store(true, Ordering::Release);
            Poll::Ready(item.transpose())
        }
    }
}

impl<M: Machine> Drop for Driver<M> {
    fn drop(&mut self) {
        if let Some((_, node)) = &self.machine {
            tracing::info!(node_id = %node.id, flavor = M::FLAVOR, "xds stream closed");
            self.shared.metrics.stream_closed(M::FLAVOR);
        }
    }
}

fn count(m: &SdsMetrics, notices: &[Notice], cause: &'static str, replies: usize) {
    m.responses(cause, replies);
    for n in notices {
        match n {
            Notice::Nack { .. } => m.nack(),
            Notice::Ack { .. } => m.ack(),
            _ => {}
        }
    }
}

/// How often one stream may log a warning about its requests.
pub(crate) const WARNING_INTERVAL: std::time::Duration = std::time::Duration::from_secs(10);

/// Logs what the state machine noticed, with the house field names. The
/// warnings go through `warnings`: a client that NACKs in a loop costs one
/// line per interval, which says how many were held back.
pub(crate) fn log_notices(node_id: &str, notices: &[Notice], warnings: &mut Throttle) {
    for n in notices {
        let warning = matches!(n, Notice::Nack { .. } | Notice::Unavailable { .. } | Notice::UnknownType { .. });
        let held_back = match warning {
            true => match warnings.admit(std::time::Instant::now()) {
                Some(held_back) => held_back,
                None => continue,
            },
            false => 0,
        };
        match n {
            Notice::Ack { type_url, nonce, version } => {
                tracing::debug!(node_id, type_url = %type_url, nonce = %nonce, version = %version, "xds ack");
            }
            Notice::Nack { type_url, nonce, detail } => {
                let detail = text::shorten(&detail.message, 1024);
                tracing::warn!(node_id, type_url = %type_url, nonce = %nonce, error_detail = %detail, warnings_held_back = held_back, "xds nack: the client rejected a response; not resending it");
            }
            Notice::StaleNonce { type_url, nonce } => {
                tracing::debug!(node_id, type_url = %type_url, nonce = %nonce, "xds request with a stale nonce ignored");
            }
            Notice::Unavailable { type_url, name, reason } => {
                let resource = text::shorten(name, 256);
                tracing::warn!(node_id, type_url = %type_url, resource = %resource, reason = %reason, warnings_held_back = held_back, "requested resource unavailable");
            }
            Notice::UnknownType { type_url } => {
                let type_url = text::shorten(type_url, 256);
                tracing::warn!(node_id, type_url = %type_url, warnings_held_back = held_back, "requested type URL is not served");
            }
        }
    }
}
