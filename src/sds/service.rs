//! The tonic services: routing by method, attestation, `FetchSecrets`. The
//! streams themselves are driven in `stream.rs` (with their requests read
//! off the body by `reader.rs`); the protocol is in the state
//! machines. Nothing here decides what a reply contains.

use crate::domain::text;
use std::convert::Infallible;
use std::sync::Arc;
use std::task::{Context, Poll};

use futures::future::BoxFuture;
use tonic::body::Body;
use tonic::server::{Grpc, NamedService};
use tonic::{Request, Status};
use tonic_prost::ProstCodec;

use super::memo::SecretCache;
use super::metrics::SdsMetrics;
use super::protocol::SECRET_TYPE;
use super::resources::Catalogs;
use super::sotw::SotwStream;
use super::stream::{self, Kind};
use super::{CallerAttestor, MAX_MESSAGE_BYTES, SdsError, status, wire};
use crate::cache::{IdentitySource, IdentityWatch};
use crate::domain::throttle::Throttle;
use crate::trust::Acknowledgements;

const SDS: &str = "envoy.service.secret.v3.SecretDiscoveryService";
const ADS: &str = "envoy.service.discovery.v3.AggregatedDiscoveryService";

/// State shared by every stream of one server.
pub(crate) struct Shared {
    pub identities: Arc<dyn IdentitySource>,
    pub attest: Arc<dyn CallerAttestor>,
    /// One catalog per identity set and validator, shared by its streams.
    pub catalogs: Catalogs,
    pub metrics: SdsMetrics,
    /// Which trust revision each stream's client holds.
    pub acks: Arc<Acknowledgements>,
}

impl Shared {
    pub fn new(
        identities: Arc<dyn IdentitySource>,
        attest: Arc<dyn CallerAttestor>,
        acks: Arc<Acknowledgements>,
    ) -> Self {
        let catalogs = Catalogs::new(Arc::new(SecretCache::new()));
        Self { identities, attest, catalogs, metrics: SdsMetrics::new(), acks }
    }

    /// Attests the caller and starts following its identities.
    pub async fn caller<T>(&self, request: &Request<T>) -> Result<IdentityWatch, Status> {
        let selectors = match self.attest.selectors(request.metadata(), request.extensions()).await {
            Ok(s) => s,
            Err(s) => {
                self.metrics.refused(s.code());
                return Err(s);
            }
        };
        match self.identities.watch(selectors).await {
            Ok(watch) => Ok(watch),
            Err(e) => {
                let e = SdsError::from(e);
                tracing::warn!(error = %e, "sds caller refused");
                let s = status(e);
                self.metrics.refused(s.code());
                Err(s)
            }
        }
    }
}

/// One gRPC service of this module: a name, and a routing of its methods.
macro_rules! xds_service {
    ($(#[$doc:meta])* $name:ident, $service:expr, |$shared:ident, $req:ident, $method:ident| $route:expr) => {
        $(#[$doc])*
        #[derive(Clone)]
        pub struct $name {
            shared: Arc<Shared>,
        }

        impl $name {
            pub(crate) fn new(shared: Arc<Shared>) -> Self {
                Self { shared }
            }
        }

        impl NamedService for $name {
            const NAME: &'static str = $service;
        }

        impl tower::Service<http::Request<Body>> for $name {
            type Response = http::Response<Body>;
            type Error = Infallible;
            type Future = Call;

            fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
                Poll::Ready(Ok(()))
            }

            fn call(&mut self, $req: http::Request<Body>) -> Self::Future {
                let $shared = self.shared.clone();
                let $method = method(&$req, $service);
                Box::pin(async move { Ok($route) })
            }
        }
    };
}

type Call = BoxFuture<'static, Result<http::Response<Body>, Infallible>>;

xds_service!(
    /// `envoy.service.secret.v3.SecretDiscoveryService`.
    SecretDiscovery,
    SDS,
    |shared, req, method| match method.as_deref() {
        Some("StreamSecrets") => stream::serve(shared, req, Kind::Sotw, Some(SECRET_TYPE)).await,
        Some("DeltaSecrets") => stream::serve(shared, req, Kind::Delta, Some(SECRET_TYPE)).await,
        Some("FetchSecrets") => fetch(shared, req).await,
        _ => unimplemented(&req),
    }
);

xds_service!(
    /// `envoy.service.discovery.v3.AggregatedDiscoveryService`: secrets and
    /// the deny-list filter config (ECDS); other type URLs get a per-request
    /// error.
    AggregatedDiscovery,
    ADS,
    |shared, req, method| match method.as_deref() {
        Some("StreamAggregatedResources") => stream::serve(shared, req, Kind::Sotw, None).await,
        Some("DeltaAggregatedResources") => stream::serve(shared, req, Kind::Delta, None).await,
        _ => unimplemented(&req),
    }
);

/// The method name of `/<service>/<method>`.
fn method(req: &http::Request<Body>, service: &str) -> Option<String> {
    let path = req.uri().path().strip_prefix('/')?;
    path.strip_prefix(service)?.strip_prefix('/').map(str::to_string)
}

fn unimplemented(req: &http::Request<Body>) -> http::Response<Body> {
    let path = text::shorten(req.uri().path(), 200);
    Status::unimplemented(format!("method {path} is not implemented")).into_http()
}

/// `FetchSecrets`: one state-of-the-world answer from the caller's current
/// identities, `version_info` = the identity-set version.
async fn fetch(shared: Arc<Shared>, req: http::Request<Body>) -> http::Response<Body> {
    let codec = ProstCodec::<wire::DiscoveryResponse, wire::DiscoveryRequest>::default();
    let mut grpc = Grpc::new(codec).max_decoding_message_size(MAX_MESSAGE_BYTES);
    let svc = tower::service_fn(move |request: Request<wire::DiscoveryRequest>| {
        let shared = shared.clone();
        async move { fetch_secrets(&shared, request).await.map(tonic::Response::new) }
    });
    grpc.unary(svc, req).await
}

async fn fetch_secrets(
    shared: &Shared,
    request: Request<wire::DiscoveryRequest>,
) -> Result<wire::DiscoveryResponse, Status> {
    let watch = shared.caller(&request).await?;
    let msg = request.into_inner();
    let node = wire::parse_node(&msg.node).map_err(|e| status(SdsError::Node(e.to_string())))?;
    let set = watch.current();
    let version = set.version.to_string();
    let catalog = shared.catalogs.of(set, node.validator);
    let named = !msg.resource_names.is_empty();
    let mut machine = SotwStream::new(catalog);
    let step = machine.on_request(msg.into_input(Some(SECRET_TYPE))).map_err(|e| status(e.into()))?;
    stream::log_notices(&node.id, &step.notices, &mut Throttle::new(stream::WARNING_INTERVAL));
    let Some(reply) = step.replies.into_iter().next() else {
        return Err(Status::internal("no reply to a first request"));
    };
    if named && reply.resources.is_empty() && !reply.failures.is_empty() {
        let reasons: Vec<String> = reply.failures.iter().take(3).map(|f| f.reason.clone()).collect();
        return Err(status(SdsError::NotFound(reasons.join("; "))));
    }
    let resources = reply.resources.len();
    let mut reply = wire::DiscoveryResponse::from(reply);
    reply.version_info = version;
    reply.nonce.clear();
    shared.metrics.responses("fetch", 1);
    tracing::debug!(node_id = %node.id, type_url = SECRET_TYPE, resources, "sds fetch answered");
    Ok(reply)
}
