//! JWT-SVIDs behind an agent: signed by the server (its JWT-SVID key never
//! leaves it), for identities of the node's entries; validated here against
//! the JWKS the server pushed, so validation works while the server is away.

use std::sync::Arc;

use tokio::sync::watch;

use super::link::Link;
use crate::domain::{Clock, SpiffeId};
use crate::proto::agent::v1 as pb;
use crate::token::{VerifyingKey, validate_jwt_svid};
use crate::trust::TrustSnapshot;
use crate::workload::{JwtSvidError, JwtSvidSource};

pub struct AgentJwt {
    pub link: Arc<Link>,
    pub trust: watch::Receiver<Arc<TrustSnapshot>>,
    pub clock: Arc<dyn Clock>,
}

#[async_trait::async_trait]
impl JwtSvidSource for AgentJwt {
    /// Zero: the server applies the entry's lifetime or its own default.
    fn default_ttl(&self) -> time::Duration {
        time::Duration::ZERO
    }

    async fn mint(&self, id: &SpiffeId, audience: &[String], ttl: time::Duration) -> Result<String, JwtSvidError> {
        let mut client = self.link.client().await.map_err(JwtSvidError::Unavailable)?;
        let request = pb::MintJwtSvidRequest {
            spiffe_id: id.to_string(),
            audience: audience.to_vec(),
            ttl_seconds: u64::try_from(ttl.whole_seconds()).unwrap_or(0),
        };
        match client.mint_jwt_svid(request).await {
            Ok(reply) => Ok(reply.into_inner().token),
            Err(status) => {
                let message = status.message().to_string();
                Err(match status.code() {
                    tonic::Code::InvalidArgument => JwtSvidError::Invalid(message),
                    tonic::Code::PermissionDenied => JwtSvidError::Denied(message),
                    _ => {
                        self.link.failed();
                        JwtSvidError::Unavailable(format!("the server: {message}"))
                    }
                })
            }
        }
    }

    fn validate(&self, token: &str, audience: &str) -> Result<serde_json::Value, JwtSvidError> {
        let trust = self.trust.borrow().clone();
        let keys: Vec<VerifyingKey> = trust
            .jwks
            .get("keys")
            .and_then(serde_json::Value::as_array)
            .map(|keys| keys.iter().filter_map(|k| VerifyingKey::from_jwk(k).ok()).collect())
            .unwrap_or_default();
        let now = self.clock.now().unix_timestamp();
        validate_jwt_svid(token, audience, &keys, &trust.trust_domain, now).map_err(JwtSvidError::Invalid)
    }
}
