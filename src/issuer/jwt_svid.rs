//! JWT-SVIDs (SPEC §4, the SPIFFE JWT-SVID standard): ES256 tokens with
//! `sub` = SPIFFE ID, `aud`, `exp`, `iat` and the signing key's `kid` in the
//! header, signed with the stored signing key of purpose `jwt-svid`. The
//! public keys are the JWKS of the published [`super::TrustSnapshot`].
//!
//! Invariant: no error message contains a token; audiences, key ids and
//! SPIFFE IDs are not secrets and are named (shortened).

use crate::domain::text;
use serde_json::{Value, json};
use time::Duration;

use super::{Issuer, IssuerError};
use crate::domain::SpiffeId;
use crate::token::validate_jwt_svid;

/// Most audiences one JWT-SVID may carry.
const MAX_AUDIENCES: usize = 16;
/// Longest audience accepted, in bytes.
const MAX_AUDIENCE_LEN: usize = 256;

impl Issuer {
    /// Signs a JWT-SVID for `id` (a member of this trust domain) valid for
    /// `ttl` from now, for every audience in `audience` (at least one).
    pub fn mint_jwt_svid(&self, id: &SpiffeId, audience: &[String], ttl: Duration) -> Result<String, IssuerError> {
        check_audiences(audience)?;
        if !id.is_member_of(self.trust_domain()) {
            return Err(IssuerError::InvalidArgument(format!(
                "{id} is not in trust domain {}: no JWT-SVID is signed for it",
                self.trust_domain()
            )));
        }
        if ttl <= Duration::ZERO {
            return Err(IssuerError::InvalidArgument(format!("JWT-SVID lifetime {ttl} is not positive")));
        }
        let keys = self.token_keys();
        let signer = keys.jwt_svid_signer.as_ref().ok_or_else(|| {
            IssuerError::FailedPrecondition("no unexpired jwt-svid signing key in the database".into())
        })?;
        let now = self.now().unix_timestamp();
        let claims = json!({
            "sub": id.to_string(),
            "aud": audience,
            "iat": now,
            "exp": now.saturating_add(ttl.whole_seconds()),
        });
        signer.sign(&claims).map_err(|e| IssuerError::Internal(format!("signing a JWT-SVID for {id}: {e}")))
    }

    /// Checks a JWT-SVID of this trust domain: ES256 signature by a published
    /// `jwt-svid` key, `exp` in the future, `iat`/`nbf` not in the future,
    /// `aud` containing `audience`, `sub` a SPIFFE ID of this trust domain.
    /// Returns the claims. Every refusal is [`IssuerError::InvalidArgument`].
    pub fn validate_jwt_svid(&self, token: &str, audience: &str) -> Result<Value, IssuerError> {
        let now = self.now().unix_timestamp();
        validate_jwt_svid(token, audience, &self.token_keys().jwt_svid_keys, self.trust_domain(), now)
            .map_err(IssuerError::InvalidArgument)
    }
}

fn check_audiences(audience: &[String]) -> Result<(), IssuerError> {
    if audience.is_empty() {
        return Err(IssuerError::InvalidArgument("a JWT-SVID needs at least one audience".into()));
    }
    if audience.len() > MAX_AUDIENCES {
        return Err(IssuerError::InvalidArgument(format!(
            "{} audiences requested, at most {MAX_AUDIENCES} are allowed",
            audience.len()
        )));
    }
    for a in audience {
        if a.is_empty() || a.len() > MAX_AUDIENCE_LEN || a.chars().any(char::is_control) {
            return Err(IssuerError::InvalidArgument(format!(
                "audience {:?} must be 1 to {MAX_AUDIENCE_LEN} printable characters",
                text::quoted(a)
            )));
        }
    }
    Ok(())
}
