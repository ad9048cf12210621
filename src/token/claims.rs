//! trustmesh's own tokens (SPEC §8): admin, node and bootstrap JWTs.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use ring::rand::SecureRandom;
use serde_json::{Map, Value, json};

use super::TokenError;
#[cfg(doc)]
use super::jws::SignatureMemo;
use super::jws::{Es256Signer, VerifyingKey, verify_es256};
use crate::domain::TokenKind;
use crate::domain::text::quoted;

/// The claims of a trustmesh token.
///
/// On the wire: `iss`, `sub`, `aud`, `exp`, `iat`, `nbf` (optional), `jti`,
/// `principal` (`"admin"`, `"node"` or `"bootstrap"`), `single_use` (only when
/// true), `spiffe_ids` (only when not empty) and `cnf: {"x5t#S256": …}` when
/// the token is bound to a certificate (RFC 8705).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenClaims {
    pub iss: String,
    /// Admin name, node id or bootstrap subject.
    pub sub: String,
    pub aud: String,
    pub exp: i64,
    pub iat: i64,
    pub nbf: Option<i64>,
    pub jti: String,
    /// Claim `principal`.
    pub kind: TokenKind,
    /// The caller must refuse a second use of `jti` (checked against the
    /// store, not here).
    pub single_use: bool,
    /// For bootstrap tokens: the SPIFFE IDs the token was minted for.
    pub spiffe_ids: Vec<String>,
    /// Claim `cnf.x5t#S256`: base64url SHA-256 of the bound certificate's DER.
    pub cnf_x5t_s256: Option<String>,
}

/// What [`verify`] expects of every token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenRules {
    pub issuer: String,
    pub audience: String,
    /// Clock skew tolerated on `exp`, `nbf` and `iat` (30 s is usual).
    pub leeway_seconds: i64,
}

impl TokenRules {
    /// Rules with the usual 30 s leeway.
    pub fn new(issuer: impl Into<String>, audience: impl Into<String>) -> Self {
        Self { issuer: issuer.into(), audience: audience.into(), leeway_seconds: 30 }
    }
}

/// Signs `claims` as an ES256 JWT.
pub fn mint(signer: &Es256Signer, claims: &TokenClaims) -> Result<String, TokenError> {
    if claims.jti.is_empty() {
        return Err(TokenError::Claim { claim: "jti", reason: "must not be empty".into() });
    }
    if claims.exp <= claims.iat {
        return Err(TokenError::Claim { claim: "exp", reason: "must be after iat".into() });
    }
    signer.sign(&claims.to_json())
}

/// Verifies a trustmesh token: [`verify_es256`], then `iss`, `aud` (a string,
/// or an array containing the expected audience), `exp` (expired →
/// [`TokenError::Expired`]), `nbf`/`iat` in the future beyond the leeway
/// ([`TokenError::NotYetValid`]), a known `principal`, and — when the token
/// carries `cnf.x5t#S256` — that the certificate presented on the connection
/// (`presented_cert_sha256_b64url`, base64url SHA-256 of its DER) is the one
/// the token is bound to.
///
/// Not checked here: single-use replay. When `single_use` is set the caller
/// must record the `jti` in the store until `exp` and refuse a second use.
pub fn verify(
    token: &str,
    keys: &[VerifyingKey],
    rules: &TokenRules,
    now: i64,
    presented_cert_sha256_b64url: Option<&str>,
) -> Result<TokenClaims, TokenError> {
    check_claims(&verify_es256(token, keys)?, rules, now, presented_cert_sha256_b64url)
}

/// Every check of [`verify`] after the signature, on the claims object
/// [`verify_es256`] or a [`SignatureMemo`] returned.
pub fn check_claims(
    value: &Value,
    rules: &TokenRules,
    now: i64,
    presented_cert_sha256_b64url: Option<&str>,
) -> Result<TokenClaims, TokenError> {
    let claims = TokenClaims::from_json(value)?;
    if claims.iss != rules.issuer {
        return Err(TokenError::WrongIssuer { expected: quoted(&rules.issuer), found: quoted(&claims.iss) });
    }
    let audiences = audiences(value)?;
    if !audiences.contains(&rules.audience) {
        return Err(TokenError::WrongAudience {
            expected: quoted(&rules.audience),
            found: audiences.iter().take(8).map(|a| quoted(a)).collect(),
        });
    }
    let leeway = rules.leeway_seconds.max(0);
    if now.saturating_sub(leeway) >= claims.exp {
        return Err(TokenError::Expired { at: claims.exp });
    }
    for at in claims.nbf.into_iter().chain([claims.iat]) {
        if at > now.saturating_add(leeway) {
            return Err(TokenError::NotYetValid { at });
        }
    }
    if let Some(bound) = &claims.cnf_x5t_s256 {
        let presented = presented_cert_sha256_b64url.ok_or(TokenError::CertificateMissing)?;
        if bound.trim_end_matches('=') != presented.trim_end_matches('=') {
            return Err(TokenError::CertificateMismatch {
                token_thumbprint: quoted(bound),
                presented_thumbprint: quoted(presented),
            });
        }
    }
    Ok(claims)
}

/// A fresh token id: 128 random bits from `rng`, base64url. Fails only when
/// the random number generator does, and then no token is minted.
pub fn new_jti(rng: &dyn SecureRandom) -> Result<String, TokenError> {
    let mut bytes = [0u8; 16];
    rng.fill(&mut bytes).map_err(|_| TokenError::Signing("the system random number generator failed".into()))?;
    Ok(B64.encode(bytes))
}

impl TokenClaims {
    /// The wire form of the claims.
    pub fn to_json(&self) -> Value {
        let mut map = Map::new();
        map.insert("iss".into(), json!(self.iss));
        map.insert("sub".into(), json!(self.sub));
        map.insert("aud".into(), json!(self.aud));
        map.insert("exp".into(), json!(self.exp));
        map.insert("iat".into(), json!(self.iat));
        if let Some(nbf) = self.nbf {
            map.insert("nbf".into(), json!(nbf));
        }
        map.insert("jti".into(), json!(self.jti));
        map.insert("principal".into(), json!(self.kind.as_str()));
        if self.single_use {
            map.insert("single_use".into(), json!(true));
        }
        if !self.spiffe_ids.is_empty() {
            map.insert("spiffe_ids".into(), json!(self.spiffe_ids));
        }
        if let Some(x5t) = &self.cnf_x5t_s256 {
            map.insert("cnf".into(), json!({ "x5t#S256": x5t }));
        }
        Value::Object(map)
    }

    /// Reads claims from a verified payload. `aud` keeps the first audience
    /// of an array; [`verify`] checks the whole array.
    pub fn from_json(value: &Value) -> Result<Self, TokenError> {
        let aud = audiences(value)?.into_iter().next().unwrap_or_default();
        let principal = string(value, "principal")?;
        let kind = [TokenKind::Admin, TokenKind::Node, TokenKind::Bootstrap, TokenKind::Join]
            .into_iter()
            .find(|k| k.as_str() == principal)
            .ok_or_else(|| TokenError::UnknownKind(quoted(&principal)))?;
        let single_use = match value.get("single_use") {
            None | Some(Value::Null) => false,
            Some(Value::Bool(b)) => *b,
            Some(_) => return Err(bad("single_use", "must be a boolean")),
        };
        let spiffe_ids = match value.get("spiffe_ids") {
            None | Some(Value::Null) => Vec::new(),
            Some(Value::Array(items)) => items
                .iter()
                .map(|v| v.as_str().map(str::to_string))
                .collect::<Option<Vec<_>>>()
                .ok_or_else(|| bad("spiffe_ids", "must be an array of strings"))?,
            Some(_) => return Err(bad("spiffe_ids", "must be an array of strings")),
        };
        let cnf_x5t_s256 = match value.get("cnf") {
            None | Some(Value::Null) => None,
            Some(cnf) => Some(
                cnf.get("x5t#S256")
                    .and_then(Value::as_str)
                    .filter(|s| !s.is_empty())
                    .ok_or_else(|| bad("cnf", "must be an object with a string x5t#S256"))?
                    .to_string(),
            ),
        };
        Ok(Self {
            iss: string(value, "iss")?,
            sub: string(value, "sub")?,
            aud,
            exp: seconds(value, "exp")?.ok_or_else(|| bad("exp", "is missing"))?,
            iat: seconds(value, "iat")?.ok_or_else(|| bad("iat", "is missing"))?,
            nbf: seconds(value, "nbf")?,
            jti: string(value, "jti")?,
            kind,
            single_use,
            spiffe_ids,
            cnf_x5t_s256,
        })
    }
}

fn bad(claim: &'static str, reason: &str) -> TokenError {
    TokenError::Claim { claim, reason: reason.into() }
}

fn string(value: &Value, claim: &'static str) -> Result<String, TokenError> {
    match value.get(claim) {
        Some(Value::String(s)) if !s.is_empty() => Ok(s.clone()),
        Some(Value::String(_)) => Err(bad(claim, "is empty")),
        None | Some(Value::Null) => Err(bad(claim, "is missing")),
        Some(_) => Err(bad(claim, "must be a string")),
    }
}

fn seconds(value: &Value, claim: &'static str) -> Result<Option<i64>, TokenError> {
    match value.get(claim) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => v.as_i64().map(Some).ok_or_else(|| bad(claim, "must be an integer number of unix seconds")),
    }
}

fn audiences(value: &Value) -> Result<Vec<String>, TokenError> {
    let list = match value.get("aud") {
        Some(Value::String(s)) => vec![s.clone()],
        Some(Value::Array(items)) => items
            .iter()
            .map(|v| v.as_str().map(str::to_string))
            .collect::<Option<Vec<_>>>()
            .ok_or_else(|| bad("aud", "must be a string or an array of strings"))?,
        None | Some(Value::Null) => return Err(bad("aud", "is missing")),
        Some(_) => return Err(bad("aud", "must be a string or an array of strings")),
    };
    if list.is_empty() {
        return Err(bad("aud", "is an empty array"));
    }
    Ok(list)
}
