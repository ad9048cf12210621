//! The tonic adapter: attest, follow the caller's identities, send.

use std::pin::Pin;
use std::sync::Arc;

use futures::{Stream, StreamExt as _, stream};
use tonic::{Request, Response, Status};

use super::messages::{claims_struct, jwt_bundles_response, no_identity, x509_bundles_response, x509_svid_response};
use super::{WorkloadApi, WorkloadError, status};
use crate::cache::{IdentitySet, IdentityWatch};
use crate::domain::SpiffeId;
use crate::proto::spiffe::spiffe_workload_api_server::SpiffeWorkloadApi;
use crate::proto::spiffe::{
    JwtBundlesRequest, JwtBundlesResponse, Jwtsvid, JwtsvidRequest, JwtsvidResponse, ValidateJwtsvidRequest,
    ValidateJwtsvidResponse, X509BundlesRequest, X509BundlesResponse, X509svidRequest, X509svidResponse,
};

type Updates<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

pub(super) struct Service {
    api: WorkloadApi,
}

impl Service {
    pub(super) fn new(api: WorkloadApi) -> Self {
        Self { api }
    }

    /// Attests the caller and starts following its identities.
    async fn watch<T>(&self, request: &Request<T>) -> Result<IdentityWatch, Status> {
        let selectors = self.api.attestor.selectors(request.metadata(), request.extensions()).await?;
        self.api.identities.watch(selectors).await.map_err(|e| status(e.into()))
    }
}

#[tonic::async_trait]
impl SpiffeWorkloadApi for Service {
    type FetchX509SVIDStream = Updates<X509svidResponse>;
    type FetchX509BundlesStream = Updates<X509BundlesResponse>;
    type FetchJWTBundlesStream = Updates<JwtBundlesResponse>;

    async fn fetch_x509svid(
        &self,
        request: Request<X509svidRequest>,
    ) -> Result<Response<Self::FetchX509SVIDStream>, Status> {
        let watch = self.watch(&request).await?;
        Ok(Response::new(follow(watch, |set| set.version, x509_svid_response)?))
    }

    async fn fetch_x509_bundles(
        &self,
        request: Request<X509BundlesRequest>,
    ) -> Result<Response<Self::FetchX509BundlesStream>, Status> {
        let watch = self.watch(&request).await?;
        let build = |set: &IdentitySet| match set.svids.is_empty() {
            true => Err(no_identity(set)),
            false => x509_bundles_response(&set.trust),
        };
        Ok(Response::new(follow(watch, |set| set.trust.revision, build)?))
    }

    async fn fetch_jwtsvid(&self, request: Request<JwtsvidRequest>) -> Result<Response<JwtsvidResponse>, Status> {
        let audience = request.get_ref().audience.clone();
        if audience.is_empty() {
            return Err(status(WorkloadError::InvalidArgument("audience is required to fetch a JWT-SVID".into())));
        }
        let wanted = match request.get_ref().spiffe_id.as_str() {
            "" => None,
            id => Some(SpiffeId::parse(id).map_err(|e| status(WorkloadError::InvalidArgument(e.to_string())))?),
        };
        let set = self.watch(&request).await?.current();
        if set.svids.is_empty() {
            return Err(status(no_identity(&set)));
        }
        if let Some(id) = wanted.as_ref().filter(|id| !set.svids.iter().any(|s| &s.spiffe_id == *id)) {
            return Err(status(WorkloadError::NotEntitled(id.to_string())));
        }
        let mut svids: Vec<Jwtsvid> = Vec::new();
        for svid in &set.svids {
            let id = svid.spiffe_id.to_string();
            if wanted.as_ref().is_some_and(|w| w != &svid.spiffe_id) || svids.iter().any(|s| s.spiffe_id == id) {
                continue;
            }
            let token = self
                .api
                .jwt
                .mint(&svid.spiffe_id, &audience, svid.jwt_ttl.unwrap_or_else(|| self.api.jwt.default_ttl()))
                .await
                .map_err(|e| status(e.into()))?;
            tracing::debug!(spiffe_id = %id, audiences = audience.len(), "JWT-SVID issued");
            svids.push(Jwtsvid { spiffe_id: id, svid: token, hint: svid.hint.clone().unwrap_or_default() });
        }
        Ok(Response::new(JwtsvidResponse { svids }))
    }

    async fn fetch_jwt_bundles(
        &self,
        request: Request<JwtBundlesRequest>,
    ) -> Result<Response<Self::FetchJWTBundlesStream>, Status> {
        let watch = self.watch(&request).await?;
        let build = |set: &IdentitySet| match set.svids.is_empty() {
            true => Err(no_identity(set)),
            false => jwt_bundles_response(&set.trust),
        };
        Ok(Response::new(follow(watch, |set| set.trust.jwks.clone(), build)?))
    }

    async fn validate_jwtsvid(
        &self,
        request: Request<ValidateJwtsvidRequest>,
    ) -> Result<Response<ValidateJwtsvidResponse>, Status> {
        let invalid = |m: &str| status(WorkloadError::InvalidArgument(m.into()));
        let ValidateJwtsvidRequest { audience, svid } = request.get_ref();
        if audience.is_empty() {
            return Err(invalid("audience is required to validate a JWT-SVID"));
        }
        if svid.is_empty() {
            return Err(invalid("svid (the JWT-SVID to validate) is required"));
        }
        // Validating needs an attested caller, not an identity of its own.
        self.api.attestor.selectors(request.metadata(), request.extensions()).await?;
        let claims = self.api.jwt.validate(svid, audience).map_err(|e| status(e.into()))?;
        let spiffe_id = claims.get("sub").and_then(serde_json::Value::as_str).unwrap_or_default().to_string();
        Ok(Response::new(ValidateJwtsvidResponse { spiffe_id, claims: Some(claims_struct(&claims)) }))
    }
}

/// The stream of one caller: the first message now (an error is returned as
/// the call's status), then one message per change of `key`. The caller's
/// identities stay held while the stream lives. A later error (the caller
/// lost every identity, the source closed) ends the stream with that status.
fn follow<T, K, F>(watch: IdentityWatch, key: fn(&IdentitySet) -> K, build: F) -> Result<Updates<T>, Status>
where
    T: Send + 'static,
    K: PartialEq + Send + 'static,
    F: Fn(&IdentitySet) -> Result<T, WorkloadError> + Send + Sync + 'static,
{
    let mut watch = watch;
    let first: Arc<IdentitySet> = watch.updates.borrow_and_update().clone();
    let message = build(&first).map_err(status)?;
    let state = Some((watch, key(&first)));
    let build = Arc::new(build);
    let rest = stream::unfold(state, move |state| {
        let build = build.clone();
        async move {
            let (mut watch, mut last) = state?;
            loop {
                if watch.updates.changed().await.is_err() {
                    let closed = WorkloadError::Unavailable("the identity source closed; reconnect".into());
                    return Some((Err(status(closed)), None));
                }
                let set = watch.updates.borrow_and_update().clone();
                let now = key(&set);
                if now == last {
                    continue;
                }
                last = now;
                return match build(&set) {
                    Ok(message) => Some((Ok(message), Some((watch, last)))),
                    Err(e) => Some((Err(status(e)), None)),
                };
            }
        }
    });
    Ok(Box::pin(stream::once(async move { Ok(message) }).chain(rest)))
}
