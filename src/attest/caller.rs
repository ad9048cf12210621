//! [`CallerAttestor`]: the one trait both servers (SDS and the Workload API)
//! use to learn who is calling, and [`Attestation`], its implementation for
//! both transports.

use std::collections::BTreeSet;
use std::sync::Arc;

use tonic::Status;
use tonic::metadata::MetadataMap;

use super::{AttestError, TlsPeer, UnixPeer, token_selectors, unix_selectors, x509_selectors};
use crate::domain::Selector;

/// Turns how a caller connected into the selectors it holds. The request
/// extensions carry [`UnixPeer`] (local socket) or [`TlsPeer`] (TLS port);
/// the metadata carries `authorization: Bearer …` on the TLS port. The
/// returned `Status` ends the call (`PermissionDenied`, `Unauthenticated`,
/// `Unavailable` for a transient failure).
#[async_trait::async_trait]
pub trait CallerAttestor: Send + Sync + 'static {
    async fn selectors(
        &self,
        metadata: &MetadataMap,
        extensions: &http::Extensions,
    ) -> Result<BTreeSet<Selector>, Status>;
}

/// Attests local-socket callers only: `unix:uid`, `unix:gid`, `unix:user`,
/// `unix:group`, `unix:path`, `unix:sha256` of the calling process.
#[derive(Debug, Clone, Copy, Default)]
pub struct LocalAttestor;

impl LocalAttestor {
    async fn attest(peer: UnixPeer) -> Result<BTreeSet<Selector>, Status> {
        // Reads /proc and may hash the executable: off the async threads.
        let attested = tokio::task::spawn_blocking(move || unix_selectors(&peer))
            .await
            .map_err(|e| Status::unavailable(format!("attestation did not finish: {e}")))?;
        attested.map_err(|e| match e {
            AttestError::Io { .. } => Status::unavailable(format!("attestation failed, try again: {e}")),
            _ => Status::permission_denied(format!("no identity issued: the caller cannot be attested: {e}")),
        })
    }
}

#[async_trait::async_trait]
impl CallerAttestor for LocalAttestor {
    async fn selectors(
        &self,
        _metadata: &MetadataMap,
        extensions: &http::Extensions,
    ) -> Result<BTreeSet<Selector>, Status> {
        match extensions.get::<UnixPeer>() {
            Some(peer) => Self::attest(*peer).await,
            None => {
                Err(Status::permission_denied("no identity issued: the caller did not connect over the local socket"))
            }
        }
    }
}

/// Checks a bearer token presented on the TLS port (signature, lifetime,
/// certificate binding, single use, which it spends) and names the subject
/// it was minted for. `app` wires the issuer in.
#[async_trait::async_trait]
pub trait BearerVerifier: Send + Sync + 'static {
    async fn subject(&self, bearer: &str, peer_cert_der: Option<&[u8]>) -> Result<String, String>;
}

/// The bearer token of a request's `authorization` metadata, without its
/// `Bearer ` prefix: the one place the TLS-port servers read it (with
/// [`vault_token`] for the PKI API).
pub fn bearer(metadata: &MetadataMap) -> Option<String> {
    bearer_of(metadata.get("authorization").and_then(|v| v.to_str().ok()))
}

/// The token of a PKI API request (HTTP): `X-Vault-Token`, as Vault clients
/// send it, else an `Authorization: Bearer` header.
pub fn vault_token(headers: &http::HeaderMap) -> Option<String> {
    let vault = headers.get("x-vault-token").and_then(|v| v.to_str().ok()).map(str::trim).filter(|t| !t.is_empty());
    vault.map(str::to_string).or_else(|| bearer_of(headers.get("authorization").and_then(|v| v.to_str().ok())))
}

fn bearer_of(authorization: Option<&str>) -> Option<String> {
    authorization
        .and_then(|v| v.strip_prefix("Bearer ").or_else(|| v.strip_prefix("bearer ")))
        .map(|v| v.trim().to_string())
}

/// Attests local-socket callers from `/proc`, and TLS callers from a bearer
/// token (through a [`BearerVerifier`]) and/or a client certificate
/// (verified against the bundle by the TLS layer).
pub struct Attestation {
    tokens: Arc<dyn BearerVerifier>,
}

impl Attestation {
    pub fn new(tokens: Arc<dyn BearerVerifier>) -> Self {
        Self { tokens }
    }

    async fn remote(&self, metadata: &MetadataMap, peer: &TlsPeer) -> Result<BTreeSet<Selector>, Status> {
        let mut selectors = BTreeSet::new();
        if let Some(cert) = &peer.certificate {
            selectors.extend(x509_selectors(cert).map_err(|e| Status::unauthenticated(e.to_string()))?);
        }
        if let Some(bearer) = bearer(metadata) {
            let subject =
                self.tokens.subject(&bearer, peer.certificate.as_deref()).await.map_err(Status::unauthenticated)?;
            selectors.extend(token_selectors(&subject));
        }
        if selectors.is_empty() {
            return Err(Status::unauthenticated("no bearer token and no client certificate: nothing to attest"));
        }
        Ok(selectors)
    }
}

#[async_trait::async_trait]
impl CallerAttestor for Attestation {
    async fn selectors(
        &self,
        metadata: &MetadataMap,
        extensions: &http::Extensions,
    ) -> Result<BTreeSet<Selector>, Status> {
        if let Some(peer) = extensions.get::<UnixPeer>() {
            return LocalAttestor::attest(*peer).await;
        }
        if let Some(peer) = extensions.get::<TlsPeer>() {
            return self.remote(metadata, peer).await;
        }
        Err(Status::unauthenticated("the transport carries no peer information"))
    }
}
