//! The SPIFFE Workload API server (`SpiffeWorkloadAPI`, SPEC §3–4 and the
//! SPIFFE Workload Endpoint / Workload API standards) for the local socket.
//!
//! Every call must carry the security header `workload.spiffe.io: true`
//! (`InvalidArgument` without it). The caller is attested by a
//! [`CallerAttestor`] from what the transport put into the request
//! extensions (`attest::UnixPeer` on the socket); its identities come from an
//! [`IdentitySource`], JWT-SVIDs from a [`JwtSvidSource`].
//!
//! * `FetchX509SVID` streams every SVID the caller holds with bundle and DER
//!   CRLs: the first message at once, then one full-state message per change
//!   of the caller's `IdentitySet` (rotation, bundle, CRL, entry change).
//! * `FetchX509Bundles` / `FetchJWTBundles` stream bundles and CRLs / JWKS,
//!   sent again only when they change.
//! * `FetchJWTSVID` mints ES256 JWT-SVIDs; `ValidateJWTSVID` checks one.
//!
//! Boundary: this module reads identities only through [`IdentitySource`] and
//! never imports another server. Status codes are chosen in one function,
//! [`status`]. Tokens and keys are never logged.

mod messages;
mod service;

use std::sync::Arc;

use axum::Router;
use tonic::Status;

use crate::cache::{CacheError, IdentitySource};
use crate::domain::SpiffeId;
use crate::proto::spiffe::spiffe_workload_api_server::SpiffeWorkloadApiServer;

pub use crate::attest::{CallerAttestor, LocalAttestor};

/// The security header every Workload API call must carry (value `true`).
pub const SECURITY_HEADER: &str = "workload.spiffe.io";
/// Largest request message accepted (audiences, a JWT to validate).
const MAX_REQUEST_MESSAGE: usize = 64 * 1024;

/// Signs and checks JWT-SVIDs (the issuer in `serve`, the server through an
/// agent; wired by `app`).
#[async_trait::async_trait]
pub trait JwtSvidSource: Send + Sync + 'static {
    /// Lifetime of a JWT-SVID whose entry sets none.
    fn default_ttl(&self) -> time::Duration;
    /// Signs a JWT-SVID for `id`.
    async fn mint(&self, id: &SpiffeId, audience: &[String], ttl: time::Duration) -> Result<String, JwtSvidError>;
    /// Checks signature, expiry, audience and trust domain; returns the claims.
    fn validate(&self, token: &str, audience: &str) -> Result<serde_json::Value, JwtSvidError>;
}

/// What can go wrong minting or validating a JWT-SVID.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum JwtSvidError {
    /// Bad request or a token that does not validate (the text says why).
    #[error("{0}")]
    Invalid(String),
    /// The identity may not get a JWT-SVID (denied, policy).
    #[error("{0}")]
    Denied(String),
    /// Transient: try again.
    #[error("JWT-SVIDs are unavailable: {0}")]
    Unavailable(String),
    #[error("internal error: {0}")]
    Internal(String),
}

/// Everything a Workload API call can fail with, mapped to a gRPC code by [`status`].
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum WorkloadError {
    #[error("security header {SECURITY_HEADER}: true is missing")]
    MissingHeader,
    #[error("no identity issued: {0}")]
    NoIdentity(String),
    #[error("the caller is not entitled to {0}")]
    NotEntitled(String),
    #[error("{0}")]
    InvalidArgument(String),
    #[error(transparent)]
    Jwt(#[from] JwtSvidError),
    #[error("identities unavailable: {0}")]
    Unavailable(String),
    #[error("internal error: {0}")]
    Internal(String),
}

impl From<CacheError> for WorkloadError {
    fn from(e: CacheError) -> Self {
        match e {
            CacheError::NoEntry => Self::NoIdentity("the caller's selectors match no registration entry".into()),
            CacheError::Unavailable(reason) => Self::Unavailable(reason),
            // Variants the cache may add later are transient until mapped here.
            #[allow(unreachable_patterns)]
            other => Self::Unavailable(other.to_string()),
        }
    }
}

/// The one mapping from [`WorkloadError`] to gRPC status codes.
pub fn status(e: WorkloadError) -> Status {
    let message = e.to_string();
    match e {
        WorkloadError::MissingHeader | WorkloadError::InvalidArgument(_) => Status::invalid_argument(message),
        WorkloadError::Jwt(JwtSvidError::Invalid(_)) => Status::invalid_argument(message),
        WorkloadError::NoIdentity(_) | WorkloadError::NotEntitled(_) => Status::permission_denied(message),
        WorkloadError::Jwt(JwtSvidError::Denied(_)) => Status::permission_denied(message),
        WorkloadError::Unavailable(_) | WorkloadError::Jwt(JwtSvidError::Unavailable(_)) => {
            Status::unavailable(message)
        }
        WorkloadError::Internal(_) | WorkloadError::Jwt(_) => Status::internal(message),
    }
}

/// The Workload API service, ready to mount on the local socket.
#[derive(Clone)]
pub struct WorkloadApi {
    identities: Arc<dyn IdentitySource>,
    attestor: Arc<dyn CallerAttestor>,
    jwt: Arc<dyn JwtSvidSource>,
}

impl WorkloadApi {
    pub fn new(
        identities: Arc<dyn IdentitySource>,
        attestor: Arc<dyn CallerAttestor>,
        jwt: Arc<dyn JwtSvidSource>,
    ) -> Self {
        Self { identities, attestor, jwt }
    }

    /// The gRPC routes (`/SpiffeWorkloadAPI/*`), security header enforced.
    /// Merge with other routers of the local socket; serve with `net::serve_unix`.
    pub fn routes(self) -> Router {
        self.add_to(tonic::service::Routes::default()).prepare().into_axum_router()
    }

    /// Adds the service to a listener's gRPC routes.
    pub fn add_to(self, routes: tonic::service::Routes) -> tonic::service::Routes {
        let server =
            SpiffeWorkloadApiServer::new(service::Service::new(self)).max_decoding_message_size(MAX_REQUEST_MESSAGE);
        routes.add_service(tonic::service::interceptor::InterceptedService::new(server, require_security_header))
    }
}

/// Refuses a call without `workload.spiffe.io: true` before it reaches a handler.
fn require_security_header(request: tonic::Request<()>) -> Result<tonic::Request<()>, Status> {
    match request.metadata().get(SECURITY_HEADER).map(|v| v.to_str()) {
        Some(Ok("true")) => Ok(request),
        _ => Err(status(WorkloadError::MissingHeader)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_security_header_is_required_with_value_true() {
        let mut request = tonic::Request::new(());
        let refused = require_security_header(tonic::Request::new(())).unwrap_err();
        assert_eq!(refused.code(), tonic::Code::InvalidArgument);
        assert!(refused.message().contains("workload.spiffe.io"), "{}", refused.message());
        request.metadata_mut().insert(SECURITY_HEADER, "false".parse().unwrap());
        assert_eq!(require_security_header(request).unwrap_err().code(), tonic::Code::InvalidArgument);
        let mut request = tonic::Request::new(());
        request.metadata_mut().insert(SECURITY_HEADER, "true".parse().unwrap());
        assert!(require_security_header(request).is_ok());
    }

    #[test]
    fn errors_map_to_the_codes_the_standard_names() {
        let code = |e| status(e).code();
        assert_eq!(code(WorkloadError::NoIdentity("x".into())), tonic::Code::PermissionDenied);
        assert_eq!(code(WorkloadError::NotEntitled("x".into())), tonic::Code::PermissionDenied);
        assert_eq!(code(WorkloadError::Jwt(JwtSvidError::Invalid("x".into()))), tonic::Code::InvalidArgument);
        assert_eq!(code(WorkloadError::Unavailable("x".into())), tonic::Code::Unavailable);
        assert_eq!(code(CacheError::NoEntry.into()), tonic::Code::PermissionDenied);
        assert_eq!(code(CacheError::Unavailable("db".into()).into()), tonic::Code::Unavailable);
    }
}
