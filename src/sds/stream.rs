//! One driver per xDS stream: attests the caller, follows its identities
//! through a `watch`, feeds requests and state changes to the protocol state
//! machine, and sends what it returns. The driver is the response stream
//! itself (no extra task): it lives exactly as long as the RPC.
//!
//! Per ACK the work is: decode the request (the node stays undecoded bytes),
//! compare a nonce, log. The node is decoded once, from the first request.

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::Arc;

use futures::Stream;
use prost::Message as _;
use prost::bytes::Bytes;
use tonic::body::Body;
use tonic::codec::{BufferSettings, Codec};
use tonic::server::Grpc;
use tonic::{Request, Status, Streaming};
use tonic_prost::ProstCodec;

use super::delta::DeltaStream;
use super::metrics::SdsMetrics;
use super::protocol::{Catalog, Notice, ProtocolError};
use super::resources::SecretCatalog;
use super::service::Shared;
use super::sotw::SotwStream;
use super::tap::{First, FirstMessageTap};
use super::{MAX_MESSAGE_BYTES, SdsError, status, wire};
use crate::cache::IdentityWatch;

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

type Responses<R> = Pin<Box<dyn Stream<Item = Result<R, Status>> + Send>>;

/// Initial size of the codec's per-stream buffers (tonic's default is 8 KiB
/// each way): after the first request, an xDS request is a few hundred bytes.
const DECODE_BUFFER: usize = 1024;
/// Responses larger than this are flushed as they are encoded (tonic's default).
const YIELD_THRESHOLD: usize = 32 * 1024;

/// The prost codec with [`DECODE_BUFFER`]-sized buffers.
struct SmallBuffers<T, U>(std::marker::PhantomData<(T, U)>);

impl<T, U> Codec for SmallBuffers<T, U>
where
    T: prost::Message + Send + 'static,
    U: prost::Message + Default + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = <ProstCodec<T, U> as Codec>::Encoder;
    type Decoder = <ProstCodec<T, U> as Codec>::Decoder;

    fn encoder(&mut self) -> Self::Encoder {
        ProstCodec::<T, U>::raw_encoder(BufferSettings::new(DECODE_BUFFER, YIELD_THRESHOLD))
    }

    fn decoder(&mut self) -> Self::Decoder {
        ProstCodec::<T, U>::raw_decoder(BufferSettings::new(DECODE_BUFFER, YIELD_THRESHOLD))
    }
}

async fn serve_as<M: Machine>(
    shared: Arc<Shared>,
    req: http::Request<Body>,
    default_type: Option<&'static str>,
) -> http::Response<Body> {
    // The first message (with Envoy's large node) goes to the driver past
    // tonic's decoder, whose buffer would otherwise stay that large (`tap.rs`).
    let (parts, body) = req.into_parts();
    let (body, first) = FirstMessageTap::new(body, MAX_MESSAGE_BYTES);
    let first = Arc::new(parking_lot::Mutex::new(Some(first)));
    let req = http::Request::from_parts(parts, Body::new(body));
    let codec = SmallBuffers::<M::Response, M::Request>(std::marker::PhantomData);
    let mut grpc = Grpc::new(codec).max_decoding_message_size(MAX_MESSAGE_BYTES);
    let svc = tower::service_fn(move |request: Request<Streaming<M::Request>>| {
        let shared = shared.clone();
        let first = first.lock().take();
        async move {
            let watch = shared.caller(&request).await?;
            let driver = Driver::<M>::new(shared, watch, request.into_inner(), first, default_type);
            let responses: Responses<M::Response> =
                Box::pin(futures::stream::unfold(driver, |mut d| async move { d.next().await.map(|r| (r, d)) }));
            Ok::<_, Status>(tonic::Response::new(responses))
        }
    });
    grpc.streaming(svc, req).await
}

/// A protocol state machine as the driver uses it.
pub(crate) trait Machine: Send + Sized + 'static {
    type Request: prost::Message + Default + Send + 'static;
    type Response: prost::Message + Send + 'static;
    const FLAVOR: &'static str;

    fn node(req: &Self::Request) -> &Bytes;
    fn start(catalog: Arc<dyn Catalog>) -> Self;
    fn request(&mut self, req: Self::Request, default_type: Option<&str>) -> Result<Out<Self>, ProtocolError>;
    fn state(&mut self, catalog: Arc<dyn Catalog>) -> Out<Self>;
}

pub(crate) type Out<M> = (Vec<<M as Machine>::Response>, Vec<Notice>);

/// Both flavours drive the same loop; only their wire types differ.
macro_rules! machine {
    ($ty:ident, $req:ty, $resp:ty, $flavor:literal) => {
        impl Machine for $ty {
            type Request = $req;
            type Response = $resp;
            const FLAVOR: &'static str = $flavor;

            fn node(req: &Self::Request) -> &Bytes {
                &req.node
            }
            fn start(catalog: Arc<dyn Catalog>) -> Self {
                $ty::new(catalog)
            }
            fn request(&mut self, req: Self::Request, default_type: Option<&str>) -> Result<Out<Self>, ProtocolError> {
                let step = self.on_request(req.into_input(default_type))?;
                Ok((step.replies.into_iter().map(Into::into).collect(), step.notices))
            }
            fn state(&mut self, catalog: Arc<dyn Catalog>) -> Out<Self> {
                let step = self.on_state(catalog);
                (step.replies.into_iter().map(Into::into).collect(), step.notices)
            }
        }
    };
}

machine!(SotwStream, wire::DiscoveryRequest, wire::DiscoveryResponse, "sotw");
machine!(DeltaStream, wire::DeltaDiscoveryRequest, wire::DeltaDiscoveryResponse, "delta");

struct Driver<M: Machine> {
    shared: Arc<Shared>,
    watch: IdentityWatch,
    requests: Streaming<M::Request>,
    /// The first request, taken out of the body by the tap (`None` once read).
    first: Option<First>,
    default_type: Option<&'static str>,
    /// Set by the first request (it carries the node).
    machine: Option<(M, wire::NodeInfo)>,
    queue: VecDeque<Result<M::Response, Status>>,
    done: bool,
    /// The trust snapshot revision of the last catalog (for push latency).
    trust_revision: u64,
}

enum Event<T> {
    First(Option<prost::bytes::Bytes>),
    Request(Result<Option<T>, Status>),
    Changed(bool),
}

impl<M: Machine> Driver<M> {
    fn new(
        shared: Arc<Shared>,
        watch: IdentityWatch,
        requests: Streaming<M::Request>,
        first: Option<First>,
        default_type: Option<&'static str>,
    ) -> Self {
        Self {
            shared,
            watch,
            requests,
            first,
            default_type,
            machine: None,
            queue: VecDeque::new(),
            done: false,
            trust_revision: 0,
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
            let tapped = self.first.is_some();
            let event = tokio::select! {
                biased;
                f = async {
                    match self.first.as_mut() {
                        Some(rx) => rx.await.ok().flatten(),
                        None => None,
                    }
                }, if tapped => Event::First(f),
                r = self.requests.message() => Event::Request(r),
                c = self.watch.updates.changed(), if started => Event::Changed(c.is_ok()),
            };
            let outcome = match event {
                Event::First(first) => {
                    self.first = None;
                    match first.map(M::Request::decode) {
                        Some(Ok(req)) => self.on_request(req),
                        Some(Err(e)) => Err(SdsError::Request(e.to_string())),
                        // The tap stood aside: the first message comes through tonic.
                        None => Ok(()),
                    }
                }
                Event::Request(Ok(Some(req))) => {
                    // The tap hands the first message over before tonic can see
                    // the second; take it first if both arrived together.
                    match self.first.as_mut().map(|rx| rx.try_recv()) {
                        Some(Ok(Some(bytes))) => {
                            self.first = None;
                            match M::Request::decode(bytes) {
                                Ok(first) => self.on_request(first).and_then(|()| self.on_request(req)),
                                Err(e) => Err(SdsError::Request(e.to_string())),
                            }
                        }
                        _ => self.on_request(req),
                    }
                }
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

    fn on_request(&mut self, req: M::Request) -> Result<(), SdsError> {
        let default_type = self.default_type;
        if self.machine.is_none() {
            let node = wire::parse_node(M::node(&req)).map_err(|e| SdsError::Node(e.to_string()))?;
            if let Some(why) = &node.ignored {
                tracing::warn!(node_id = %node.id, "node metadata ignored: {why}");
            }
            tracing::info!(node_id = %node.id, cluster = %node.cluster, flavor = M::FLAVOR, validator = ?node.validator, "xds stream opened");
            self.shared.metrics.stream_opened(M::FLAVOR);
            let catalog = self.catalog(node.validator);
            self.machine = Some((M::start(catalog), node));
        }
        let Some((machine, node)) = self.machine.as_mut() else { return Ok(()) };
        let (replies, notices) = machine.request(req, default_type)?;
        log_notices(&node.id, &notices);
        count(&self.shared.metrics, &notices, "request", replies.len());
        self.queue.extend(replies.into_iter().map(Ok));
        Ok(())
    }

    fn on_state(&mut self) {
        let Some(mode) = self.machine.as_ref().map(|(_, n)| n.validator) else { return };
        let previous = self.trust_revision;
        let catalog = self.catalog(mode);
        let trust = self.watch.current().trust.clone();
        let Some((machine, node)) = self.machine.as_mut() else { return };
        let (replies, notices) = machine.state(catalog);
        log_notices(&node.id, &notices);
        count(&self.shared.metrics, &notices, "push", replies.len());
        if !replies.is_empty() {
            if trust.revision != previous {
                self.shared.metrics.pushed(trust.published_at.elapsed());
            }
            tracing::debug!(node_id = %node.id, responses = replies.len(), "xds push");
        }
        self.queue.extend(replies.into_iter().map(Ok));
    }

    fn catalog(&mut self, mode: crate::sds::ValidatorMode) -> Arc<dyn Catalog> {
        let set = self.watch.updates.borrow_and_update().clone();
        self.trust_revision = set.trust.revision;
        Arc::new(SecretCatalog::new(set, mode, self.shared.cache.clone()))
    }

    fn node_id(&self) -> &str {
        self.machine.as_ref().map(|(_, n)| n.id.as_str()).unwrap_or_default()
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

/// Logs what the state machine noticed, with the house field names.
pub(crate) fn log_notices(node_id: &str, notices: &[Notice]) {
    for n in notices {
        match n {
            Notice::Ack { type_url, nonce, version } => {
                tracing::debug!(node_id, type_url = %type_url, nonce = %nonce, version = %version, "xds ack");
            }
            Notice::Nack { type_url, nonce, detail } => {
                let detail: String = detail.message.chars().take(1024).collect();
                tracing::warn!(node_id, type_url = %type_url, nonce = %nonce, error_detail = %detail, "xds nack: the client rejected a response; not resending it");
            }
            Notice::StaleNonce { type_url, nonce } => {
                tracing::debug!(node_id, type_url = %type_url, nonce = %nonce, "xds request with a stale nonce ignored");
            }
            Notice::Unavailable { type_url, name, reason } => {
                let resource: String = name.chars().take(256).collect();
                tracing::warn!(node_id, type_url = %type_url, resource = %resource, reason = %reason, "requested resource unavailable");
            }
            Notice::UnknownType { type_url } => {
                let type_url: String = type_url.chars().take(256).collect();
                tracing::warn!(node_id, type_url = %type_url, "requested type URL is not served");
            }
        }
    }
}
