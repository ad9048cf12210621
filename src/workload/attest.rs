//! [`LocalAttestor`]: attests local-socket callers from the kernel's peer
//! credentials and `/proc` (`attest::unix_selectors`, SPEC §3).

use std::collections::BTreeSet;

use tonic::Status;
use tonic::metadata::MetadataMap;

use super::CallerSelectors;
use crate::attest::{AttestError, UnixPeer, unix_selectors};
use crate::domain::Selector;

/// The attestor of the local socket: `unix:uid`, `unix:gid`, `unix:user`,
/// `unix:group`, `unix:path`, `unix:sha256` of the calling process.
#[derive(Debug, Clone, Copy, Default)]
pub struct LocalAttestor;

#[async_trait::async_trait]
impl CallerSelectors for LocalAttestor {
    async fn selectors(
        &self,
        _metadata: &MetadataMap,
        extensions: &http::Extensions,
    ) -> Result<BTreeSet<Selector>, Status> {
        let Some(peer) = extensions.get::<UnixPeer>().copied() else {
            return Err(Status::permission_denied(
                "no identity issued: the caller did not connect over the local socket",
            ));
        };
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
