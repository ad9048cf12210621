//! ES256 JSON Web Tokens, written on `ring` directly (SPEC §8).
//!
//! Two layers:
//!
//! - [`jws`](self::Es256Signer): compact JWS with exactly one algorithm,
//!   ES256 (ECDSA P-256 with SHA-256, fixed-size signatures). There is no
//!   HMAC path and no `alg: none` path at all, so the classic algorithm
//!   confusion attacks (an HS256 token keyed with the public key, an unsigned
//!   token) have nothing to confuse: the header's `alg` must be exactly
//!   `"ES256"` before a key is even looked up.
//! - [`TokenClaims`], [`mint`] and [`verify`]: trustmesh's own admin, node and
//!   bootstrap tokens on top, with issuer, audience, lifetime, kind and
//!   certificate binding (`cnf.x5t#S256`, RFC 8705) checks.
//!
//! Boundary: this module is pure. Time comes in as unix seconds; the only
//! randomness is `ring`'s `SystemRandom` (ECDSA nonces, [`new_jti`]).
//! Single-use replay protection needs state and is therefore **not** checked
//! here: the caller looks the `jti` of a token with `single_use` up in the
//! store (and remembers it until `exp`) after [`verify`] succeeds.
//!
//! Invariant: no error message contains token or key material. Key ids,
//! issuers, audiences and certificate thumbprints are not secrets and are
//! named so an operator can tell what is wrong.

mod claims;
mod jws;

pub use claims::{TokenClaims, TokenRules, check_claims, mint, new_jti, verify};
pub use jws::{
    Es256Signer, MAX_TOKEN_LEN, SignatureMemo, VerifyingKey, generate_es256_pkcs8, jwks, validate_jwt_svid,
    verify_es256,
};

/// Everything that can be wrong with a token or a token key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TokenError {
    /// The key given to sign or verify with is unusable (the message never
    /// contains the key bytes).
    #[error("invalid token key {kid:?}: {reason}")]
    Key { kid: String, reason: String },
    #[error("token signing failed: {0}")]
    Signing(String),
    #[error("token is {len} bytes, more than the {max} bytes allowed")]
    TooLarge { len: usize, max: usize },
    #[error("token has {count} dot-separated parts, expected 3 (header.payload.signature)")]
    Segments { count: usize },
    #[error("token {part} is not valid unpadded base64url")]
    Base64 { part: &'static str },
    #[error("token {part} is not a JSON object: {reason}")]
    Json { part: &'static str, reason: String },
    #[error("token header has no alg")]
    MissingAlg,
    /// Any `alg` but exactly `"ES256"`: `none`, `HS256`, `RS256`, `es256`, …
    #[error("alg {alg} is refused: only ES256 tokens are accepted")]
    AlgRefused { alg: String },
    #[error("token header has a crit parameter, which is refused")]
    CritRefused,
    #[error("token header has no kid")]
    MissingKid,
    #[error("token key id {kid:?} is unknown")]
    UnknownKid { kid: String },
    #[error("token signature does not verify")]
    BadSignature,
    /// A claim is missing or has the wrong type.
    #[error("token claim {claim} {reason}")]
    Claim { claim: &'static str, reason: String },
    #[error("token expired at {at} (unix seconds)")]
    Expired { at: i64 },
    #[error("token is not valid before {at} (unix seconds)")]
    NotYetValid { at: i64 },
    #[error("token issuer {found:?} is not the expected {expected:?}")]
    WrongIssuer { expected: String, found: String },
    #[error("token audience {found:?} does not contain {expected:?}")]
    WrongAudience { expected: String, found: Vec<String> },
    #[error("token principal {0:?} is unknown (expected admin, node or bootstrap)")]
    UnknownKind(String),
    #[error("token is bound to a certificate but none was presented")]
    CertificateMissing,
    #[error(
        "certificate binding mismatch: token cnf x5t#S256 is {token_thumbprint} \
         but the presented certificate is {presented_thumbprint}"
    )]
    CertificateMismatch { token_thumbprint: String, presented_thumbprint: String },
}

#[cfg(test)]
mod tests;
