//! [`JwtSvidSource`] for the issuing service: JWT-SVIDs signed in-process
//! with the `jwt-svid` key (a future node agent would fetch them instead).

use super::{JwtSvidError, JwtSvidSource};
use crate::domain::SpiffeId;
use crate::issuer::{Issuer, IssuerError};

impl JwtSvidSource for Issuer {
    fn default_ttl(&self) -> time::Duration {
        self.config().jwt_svid_ttl
    }

    fn mint(&self, id: &SpiffeId, audience: &[String], ttl: time::Duration) -> Result<String, JwtSvidError> {
        self.mint_jwt_svid(id, audience, ttl).map_err(jwt_error)
    }

    fn validate(&self, token: &str, audience: &str) -> Result<serde_json::Value, JwtSvidError> {
        self.validate_jwt_svid(token, audience).map_err(jwt_error)
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
