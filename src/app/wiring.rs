//! The issuer behind the narrow traits the caches and servers declare: what
//! they consume, nothing more. Here, and only here, they meet.

use std::sync::Arc;

use tokio::sync::watch;

use crate::attest::BearerVerifier;
use crate::cache::{MintError, MintedSvid, SvidMinter};
use crate::domain::{Entry, SpiffeId};
use crate::issuer::{AuditAction, Credentials, EntryList, Issuer, IssuerError};
use crate::policy::Action;
use crate::workload::{JwtSvidError, JwtSvidSource};

/// The entries the server's own socket serves: those bound to no node
/// (an entry with `--node` is served by that node's agent alone).
pub fn unbound_entries(issuer: &Issuer) -> watch::Receiver<EntryList> {
    let mut all = issuer.entries_watch();
    let unbound =
        |list: &EntryList| -> EntryList { Arc::new(list.iter().filter(|e| e.node.is_none()).cloned().collect()) };
    let (tx, rx) = watch::channel(unbound(&all.borrow_and_update()));
    tokio::spawn(async move {
        while all.changed().await.is_ok() {
            let next = unbound(&all.borrow_and_update());
            tx.send_if_modified(|current| {
                let changed = *current != next;
                if changed {
                    *current = next;
                }
                changed
            });
        }
    });
    rx
}

/// The issuer as each consumer sees it.
#[derive(Clone)]
pub struct IssuerSide(pub Arc<Issuer>);

#[async_trait::async_trait]
impl SvidMinter for IssuerSide {
    async fn mint(&self, entry: &Entry) -> Result<MintedSvid, MintError> {
        match self.0.issue_for_entry(entry).await {
            Ok((certificate, key, chain_pem)) => Ok(MintedSvid { certificate, key, chain_pem }),
            Err(IssuerError::Denied { spiffe_id, reason }) => Err(MintError::Denied { spiffe_id, reason }),
            Err(e) => Err(MintError::Failed(e.to_string())),
        }
    }
}

#[async_trait::async_trait]
impl BearerVerifier for IssuerSide {
    async fn subject(&self, bearer: &str, peer_cert_der: Option<&[u8]>) -> Result<String, String> {
        let creds = Credentials { bearer: Some(bearer.to_string()), peer_cert_der: peer_cert_der.map(<[u8]>::to_vec) };
        let caller =
            self.0.authenticate(&creds, AuditAction::Policy(Action::ObtainSvid)).await.map_err(|e| e.to_string())?;
        self.0.spend(&caller).await.map_err(|e| e.to_string())?;
        Ok(caller.subject())
    }
}

#[async_trait::async_trait]
impl JwtSvidSource for IssuerSide {
    fn default_ttl(&self) -> time::Duration {
        self.0.config().jwt_svid_ttl
    }

    async fn mint(&self, id: &SpiffeId, audience: &[String], ttl: time::Duration) -> Result<String, JwtSvidError> {
        self.0.mint_jwt_svid(id, audience, ttl).map_err(jwt_error)
    }

    fn validate(&self, token: &str, audience: &str) -> Result<serde_json::Value, JwtSvidError> {
        self.0.validate_jwt_svid(token, audience).map_err(jwt_error)
    }
}

fn jwt_error(e: IssuerError) -> JwtSvidError {
    let message = e.to_string();
    match e {
        IssuerError::InvalidArgument(_) | IssuerError::Unauthenticated(_) => JwtSvidError::Invalid(message),
        IssuerError::Denied { .. } | IssuerError::PermissionDenied(_) => JwtSvidError::Denied(message),
        IssuerError::FailedPrecondition(_) | IssuerError::Store(_) => JwtSvidError::Unavailable(message),
        _ => JwtSvidError::Internal(message),
    }
}
