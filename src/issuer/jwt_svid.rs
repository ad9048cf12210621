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
use crate::token::verify_es256;

/// Most audiences one JWT-SVID may carry.
const MAX_AUDIENCES: usize = 16;
/// Longest audience accepted, in bytes.
const MAX_AUDIENCE_LEN: usize = 256;
/// Tolerated clock skew on `iat` / `nbf` in the future.
const LEEWAY_SECONDS: i64 = 30;

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
        let invalid = |reason: String| IssuerError::InvalidArgument(format!("invalid JWT-SVID: {reason}"));
        if audience.is_empty() {
            return Err(IssuerError::InvalidArgument("audience is required to validate a JWT-SVID".into()));
        }
        if token.is_empty() {
            return Err(IssuerError::InvalidArgument("the JWT-SVID to validate is empty".into()));
        }
        let claims = verify_es256(token, &self.token_keys().jwt_svid_keys).map_err(|e| invalid(e.to_string()))?;
        let sub = claims.get("sub").and_then(Value::as_str).ok_or_else(|| invalid("claim sub is missing".into()))?;
        let id = SpiffeId::parse(sub).map_err(|e| invalid(format!("claim sub: {e}")))?;
        if !id.is_member_of(self.trust_domain()) {
            return Err(invalid(format!("subject {id} is not in trust domain {}", self.trust_domain())));
        }
        let now = self.now().unix_timestamp();
        let exp = claims.get("exp").and_then(Value::as_i64).ok_or_else(|| invalid("claim exp is missing".into()))?;
        if exp <= now {
            return Err(invalid(format!("token expired at {exp} (unix seconds)")));
        }
        for name in ["iat", "nbf"] {
            if let Some(at) = claims.get(name).and_then(Value::as_i64).filter(|at| *at > now + LEEWAY_SECONDS) {
                return Err(invalid(format!("claim {name} {at} is in the future")));
            }
        }
        let audiences: Vec<&str> = match claims.get("aud") {
            Some(Value::String(a)) => vec![a.as_str()],
            Some(Value::Array(items)) => items.iter().filter_map(Value::as_str).collect(),
            _ => return Err(invalid("claim aud is missing".into())),
        };
        if !audiences.contains(&audience) {
            return Err(invalid(format!(
                "audience {:?} is not among the token's audiences {:?}",
                text::quoted(audience),
                audiences.iter().map(|a| text::quoted(a)).collect::<Vec<_>>()
            )));
        }
        Ok(claims)
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
