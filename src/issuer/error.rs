//! The one error type of the issuing service. Servers map it to their wire
//! status in exactly one function each.

use crate::ca::CaError;
use crate::domain::DomainError;
use crate::store::StoreError;
use crate::token::TokenError;

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum IssuerError {
    /// No usable credentials: missing, malformed, expired, replayed or mis-bound token.
    #[error("unauthenticated: {0}")]
    Unauthenticated(String),
    /// Authenticated, but the policy refused (the text names the deciding policies).
    #[error("permission denied: {0}")]
    PermissionDenied(String),
    /// The identity is on the deny list.
    #[error("identity {spiffe_id} is denied: {reason}")]
    Denied { spiffe_id: String, reason: String },
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    #[error("not found: {0}")]
    NotFound(String),
    /// A precondition of the PKI is not met (e.g. the root key is offline).
    #[error("failed precondition: {0}")]
    FailedPrecondition(String),
    #[error(transparent)]
    Ca(#[from] CaError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("internal error: {0}")]
    Internal(String),
}

impl From<DomainError> for IssuerError {
    fn from(e: DomainError) -> Self {
        Self::InvalidArgument(e.to_string())
    }
}

impl From<TokenError> for IssuerError {
    fn from(e: TokenError) -> Self {
        Self::Unauthenticated(e.to_string())
    }
}

impl IssuerError {
    /// A short, stable label for metrics (`error_type`).
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Unauthenticated(_) => "unauthenticated",
            Self::PermissionDenied(_) => "permission_denied",
            Self::Denied { .. } => "denied",
            Self::InvalidArgument(_) => "invalid_argument",
            Self::NotFound(_) => "not_found",
            Self::FailedPrecondition(_) => "failed_precondition",
            Self::Ca(_) => "invalid_request",
            Self::Store(_) => "store",
            Self::Internal(_) => "internal",
        }
    }
}
