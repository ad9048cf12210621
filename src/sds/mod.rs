//! The Envoy SDS/xDS server (SPEC §6): `SecretDiscoveryService` and
//! `AggregatedDiscoveryService`, state of the world and delta, streaming each
//! caller the certificates it is entitled to and the trust bundles with CRLs.
//!
//! Code map:
//!
//! - [`protocol`], [`sotw`], [`delta`]: the per-stream protocol as pure state
//!   machines (requests and "state changed" in, replies and notices out),
//!   tested as data.
//! - [`resources`]: `Secret` protos from an [`IdentitySet`](crate::cache::IdentitySet);
//!   [`deny`]: the deny list as an HTTP RBAC filter config (ECDS);
//!   [`memo`]: each resource encoded once, bytes shared by every stream;
//!   one catalog (and so one lookup per name) per identity set and change.
//! - [`wire`]: the xDS messages with the node left undecoded after the first
//!   request; replies written by hand around the pre-encoded resources.
//! - `service`, `stream`: the thin tonic adapter (routing, attestation, one
//!   driver per stream, which is also the response body).
//! - [`bootstrap`]: the Envoy bootstrap generator behind `trustmesh envoy bootstrap`.
//!
//! Boundary: identities come only through [`IdentitySource`]; who the caller
//! is comes only through [`CallerAttestor`] (`crate::attest`, shared with the
//! Workload API). This module imports no other server.

pub mod bootstrap;
pub mod delta;
pub mod deny;
pub mod memo;
pub mod protocol;
pub mod resources;
pub mod sotw;
pub mod wire;

mod metrics;
mod reader;
mod service;
mod stream;
mod yaml;

use std::sync::Arc;

use tonic::Status;

use crate::cache::{CacheError, IdentitySource};

pub use crate::attest::CallerAttestor;
pub use protocol::{MAX_NAME_BYTES, MAX_NAMES, SECRET_TYPE};
pub use resources::ValidatorMode;
pub use service::{AggregatedDiscovery, SecretDiscovery};

/// Largest gRPC message accepted from a client; larger ones are refused by
/// the transport (`OutOfRange`) before they are decoded.
pub const MAX_MESSAGE_BYTES: usize = 4 * 1024 * 1024;

/// The SDS/ADS server. Cheap to clone; mount [`SdsServer::routes`] on every
/// listener that serves SDS.
#[derive(Clone)]
pub struct SdsServer {
    shared: Arc<service::Shared>,
}

impl SdsServer {
    /// `acks` learns which trust revision each stream's client has applied.
    pub fn new(
        identities: Arc<dyn IdentitySource>,
        attest: Arc<dyn CallerAttestor>,
        acks: Arc<crate::trust::Acknowledgements>,
    ) -> Self {
        Self { shared: Arc::new(service::Shared::new(identities, attest, acks)) }
    }

    /// Both services, ready to serve (`Routes::into_axum_router` to merge
    /// with other routes).
    pub fn routes(&self) -> tonic::service::Routes {
        tonic::service::Routes::new(self.secret_discovery()).add_service(self.aggregated_discovery())
    }

    /// Adds both services to a listener's gRPC routes.
    pub fn add_to(&self, routes: tonic::service::Routes) -> tonic::service::Routes {
        routes.add_service(self.secret_discovery()).add_service(self.aggregated_discovery())
    }

    /// `envoy.service.secret.v3.SecretDiscoveryService` alone.
    pub fn secret_discovery(&self) -> SecretDiscovery {
        SecretDiscovery::new(self.shared.clone())
    }

    /// `envoy.service.discovery.v3.AggregatedDiscoveryService` alone.
    pub fn aggregated_discovery(&self) -> AggregatedDiscovery {
        AggregatedDiscovery::new(self.shared.clone())
    }
}

/// Why a stream or fetch fails as a whole.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SdsError {
    #[error(transparent)]
    Protocol(#[from] protocol::ProtocolError),
    #[error("the node in the first request is not a valid envoy.config.core.v3.Node: {0}")]
    Node(String),
    #[error("a request is not a valid xDS request: {0}")]
    Request(String),
    #[error("no registration entry matches the caller's selectors")]
    NoEntry,
    #[error("identities unavailable: {0}")]
    Unavailable(String),
    #[error("the identity source closed the caller's identities")]
    Closed,
    #[error("none of the requested resources is available: {0}")]
    NotFound(String),
}

impl From<CacheError> for SdsError {
    fn from(e: CacheError) -> Self {
        match e {
            CacheError::NoEntry => SdsError::NoEntry,
            CacheError::Unavailable(reason) => SdsError::Unavailable(reason),
            #[allow(unreachable_patterns)]
            other => SdsError::Unavailable(other.to_string()),
        }
    }
}

/// The one mapping from SDS errors to gRPC status codes.
pub fn status(err: SdsError) -> Status {
    let msg = err.to_string();
    match err {
        SdsError::Protocol(_) | SdsError::Node(_) | SdsError::Request(_) => Status::invalid_argument(msg),
        SdsError::NoEntry => Status::permission_denied(msg),
        SdsError::NotFound(_) => Status::not_found(msg),
        SdsError::Unavailable(_) | SdsError::Closed => Status::unavailable(msg),
    }
}
