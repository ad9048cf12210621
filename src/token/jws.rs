//! Compact JWS with exactly one algorithm: ES256.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use parking_lot::{Mutex, MutexGuard};
use ring::digest;
use ring::rand::{SecureRandom, SystemRandom};
use ring::signature::{self, EcdsaKeyPair, KeyPair as _};
use serde_json::{Map, Value, json};

use super::TokenError;
use crate::domain::text::quoted;

/// Longest token accepted (and minted): 8 KiB.
pub const MAX_TOKEN_LEN: usize = 8 * 1024;

/// The only JOSE algorithm trustmesh speaks.
const ALG: &str = "ES256";

/// DER prefix of a P-256 SubjectPublicKeyInfo (id-ecPublicKey, prime256v1,
/// BIT STRING of 66 bytes), followed by the 65-byte uncompressed point.
const SPKI_P256_PREFIX: [u8; 26] = [
    0x30, 0x59, 0x30, 0x13, 0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01, 0x06, 0x08, 0x2a, 0x86, 0x48, 0xce,
    0x3d, 0x03, 0x01, 0x07, 0x03, 0x42, 0x00,
];
const POINT_LEN: usize = 65;

/// An ES256 signing key with its key id. `Debug` shows the key id only.
pub struct Es256Signer {
    kid: String,
    key: EcdsaKeyPair,
    rng: SystemRandom,
}

/// A public ES256 key with its key id, as published in the JWKS.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifyingKey {
    pub kid: String,
    /// Uncompressed SEC1 point, `04 || x || y`.
    point: [u8; POINT_LEN],
}

/// Generates a fresh P-256 key as PKCS#8 DER, for [`Es256Signer::from_pkcs8`].
/// The caller stores it encrypted; it is key material.
pub fn generate_es256_pkcs8(rng: &dyn SecureRandom) -> Result<Vec<u8>, TokenError> {
    EcdsaKeyPair::generate_pkcs8(&signature::ECDSA_P256_SHA256_FIXED_SIGNING, rng)
        .map(|doc| doc.as_ref().to_vec())
        .map_err(|_| TokenError::Signing("could not generate a P-256 key".into()))
}

impl Es256Signer {
    /// Loads a P-256 private key from PKCS#8 DER.
    pub fn from_pkcs8(kid: String, pkcs8_der: &[u8]) -> Result<Self, TokenError> {
        check_kid(&kid)?;
        let rng = SystemRandom::new();
        let key =
            EcdsaKeyPair::from_pkcs8(&signature::ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8_der, &rng).map_err(|e| {
                TokenError::Key { kid: quoted(&kid), reason: format!("not a PKCS#8 P-256 private key ({e})") }
            })?;
        Ok(Self { kid, key, rng })
    }

    pub fn kid(&self) -> &str {
        &self.kid
    }

    /// The public key as SubjectPublicKeyInfo DER.
    pub fn public_key_der(&self) -> Vec<u8> {
        spki_der(self.key.public_key().as_ref())
    }

    /// The public half, for [`verify_es256`] and the JWKS.
    pub fn verifying_key(&self) -> Result<VerifyingKey, TokenError> {
        VerifyingKey::from_point(self.kid.clone(), self.key.public_key().as_ref())
    }

    /// Signs a JSON object as a compact JWS with the header
    /// `{"alg":"ES256","kid":…,"typ":"JWT"}`.
    pub fn sign(&self, claims: &Value) -> Result<String, TokenError> {
        if !claims.is_object() {
            return Err(TokenError::Json { part: "payload", reason: "claims must be a JSON object".into() });
        }
        let header = json!({ "alg": ALG, "kid": self.kid, "typ": "JWT" });
        let header = serde_json::to_vec(&header).map_err(|e| TokenError::Signing(e.to_string()))?;
        let payload = serde_json::to_vec(claims).map_err(|e| TokenError::Signing(e.to_string()))?;
        let signing_input = format!("{}.{}", B64.encode(header), B64.encode(payload));
        let sig = self
            .key
            .sign(&self.rng, signing_input.as_bytes())
            .map_err(|_| TokenError::Signing("ECDSA P-256 signing failed".into()))?;
        let token = format!("{signing_input}.{}", B64.encode(sig.as_ref()));
        if token.len() > MAX_TOKEN_LEN {
            return Err(TokenError::TooLarge { len: token.len(), max: MAX_TOKEN_LEN });
        }
        Ok(token)
    }
}

impl fmt::Debug for Es256Signer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Es256Signer").field("kid", &self.kid).field("key", &"<redacted>").finish()
    }
}

impl VerifyingKey {
    /// Loads a P-256 public key from SubjectPublicKeyInfo DER.
    pub fn from_spki_der(kid: String, spki: &[u8]) -> Result<Self, TokenError> {
        let point = spki
            .strip_prefix(SPKI_P256_PREFIX.as_slice())
            .ok_or_else(|| TokenError::Key { kid: quoted(&kid), reason: "not a P-256 SubjectPublicKeyInfo".into() })?;
        Self::from_point(kid, point)
    }

    /// Loads a key from a JWK (`kty` EC, `crv` P-256, `x`, `y`, `kid`).
    pub fn from_jwk(jwk: &Value) -> Result<Self, TokenError> {
        let field = |name: &str| jwk.get(name).and_then(Value::as_str);
        let kid = field("kid").ok_or(TokenError::MissingKid)?.to_string();
        let fail = |reason: &str| TokenError::Key { kid: quoted(&kid), reason: reason.into() };
        if field("kty") != Some("EC") || field("crv") != Some("P-256") {
            return Err(fail("JWK is not kty EC with crv P-256"));
        }
        if field("alg").is_some_and(|alg| alg != ALG) {
            return Err(fail("JWK alg is not ES256"));
        }
        let coord = |name: &str| {
            field(name)
                .and_then(|s| B64.decode(s).ok())
                .filter(|b| b.len() == 32)
                .ok_or_else(|| fail("JWK x and y must be 32-byte base64url values"))
        };
        let mut point = vec![0x04];
        point.extend(coord("x")?);
        point.extend(coord("y")?);
        Self::from_point(kid, &point)
    }

    /// The public key as SubjectPublicKeyInfo DER.
    pub fn public_key_der(&self) -> Vec<u8> {
        spki_der(&self.point)
    }

    /// The key as a JWK: `{"kty":"EC","crv":"P-256","x","y","kid","alg":"ES256","use":"sig"}`.
    pub fn jwk(&self) -> Value {
        json!({
            "kty": "EC",
            "crv": "P-256",
            "x": B64.encode(&self.point[1..33]),
            "y": B64.encode(&self.point[33..]),
            "kid": self.kid,
            "alg": ALG,
            "use": "sig",
        })
    }

    fn from_point(kid: String, point: &[u8]) -> Result<Self, TokenError> {
        check_kid(&kid)?;
        let point: [u8; POINT_LEN] = point
            .try_into()
            .ok()
            .filter(|p: &[u8; POINT_LEN]| p[0] == 0x04)
            .ok_or_else(|| TokenError::Key { kid: quoted(&kid), reason: "not an uncompressed P-256 point".into() })?;
        Ok(Self { kid, point })
    }
}

/// The JWKS document: `{"keys":[…]}`.
pub fn jwks(keys: &[VerifyingKey]) -> Value {
    json!({ "keys": keys.iter().map(VerifyingKey::jwk).collect::<Vec<_>>() })
}

/// Verifies signature and header strictly; returns the claims object.
///
/// Refused, in this order: more than [`MAX_TOKEN_LEN`] bytes; not exactly 3
/// parts; a header that is not unpadded base64url of a JSON object; an `alg`
/// other than exactly `"ES256"` (there is no HMAC or unsigned path at all); a
/// `crit` header; a missing or unknown `kid`; a signature that does not
/// verify with that key (ECDSA P-256 SHA-256, 64-byte `r || s`); a payload
/// that is not a JSON object. Claims are not looked at: see [`super::verify`].
pub fn verify_es256(token: &str, keys: &[VerifyingKey]) -> Result<Value, TokenError> {
    if token.len() > MAX_TOKEN_LEN {
        return Err(TokenError::TooLarge { len: token.len(), max: MAX_TOKEN_LEN });
    }
    let parts: Vec<&str> = token.split('.').collect();
    let [header_b64, payload_b64, sig_b64] = parts.as_slice() else {
        return Err(TokenError::Segments { count: parts.len() });
    };
    let header = decode_object(header_b64, "header")?;
    match header.get("alg") {
        None => return Err(TokenError::MissingAlg),
        Some(Value::String(alg)) if alg == ALG => {}
        Some(Value::String(alg)) => return Err(TokenError::AlgRefused { alg: quoted(alg) }),
        Some(other) => {
            return Err(TokenError::AlgRefused { alg: quoted(&other.to_string()) });
        }
    }
    if header.contains_key("crit") {
        return Err(TokenError::CritRefused);
    }
    let key = find_key(&header, keys)?;
    let sig = B64.decode(sig_b64).map_err(|_| TokenError::Base64 { part: "signature" })?;
    // "header.payload": everything before the last dot (there are exactly two).
    let (signing_input, _) = token.rsplit_once('.').ok_or(TokenError::Segments { count: parts.len() })?;
    signature::UnparsedPublicKey::new(&signature::ECDSA_P256_SHA256_FIXED, &key.point)
        .verify(signing_input.as_bytes(), &sig)
        .map_err(|_| TokenError::BadSignature)?;
    Ok(Value::Object(decode_object(payload_b64, "payload")?))
}

/// SHA-256 of a token → the key that verified it and its claims.
type Accepted = HashMap<[u8; 32], (VerifyingKey, Arc<Value>)>;

/// Tokens whose signature [`verify_es256`] accepted, by SHA-256 of the whole
/// token: an operator's or a node's token is presented on every call, and its
/// ECDSA verification is the largest single cost of a call that signs one
/// certificate. Only accepted tokens are remembered, with the key that
/// verified them: a remembered token counts only while that key is among the
/// keys asked with. At most [`SignatureMemo::CAPACITY`] (the memo starts over
/// when full).
#[derive(Debug, Default)]
pub struct SignatureMemo {
    accepted: Mutex<Accepted>,
}

impl SignatureMemo {
    pub const CAPACITY: usize = 4_096;

    /// [`verify_es256`], answered from memory for a token accepted before.
    pub fn verify(&self, token: &str, keys: &[VerifyingKey]) -> Result<Arc<Value>, TokenError> {
        if token.len() > MAX_TOKEN_LEN {
            return Err(TokenError::TooLarge { len: token.len(), max: MAX_TOKEN_LEN });
        }
        let mut hash = [0u8; 32];
        hash.copy_from_slice(digest::digest(&digest::SHA256, token.as_bytes()).as_ref());
        if let Some((key, claims)) = self.accepted().get(&hash)
            && keys.contains(key)
        {
            return Ok(claims.clone());
        }
        let claims = Arc::new(verify_es256(token, keys)?);
        let key = key_of(token, keys)?;
        let mut accepted = self.accepted();
        if accepted.len() >= Self::CAPACITY {
            accepted.clear();
        }
        accepted.insert(hash, (key.clone(), claims.clone()));
        Ok(claims)
    }

    /// How many tokens are remembered.
    pub fn len(&self) -> usize {
        self.accepted().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn accepted(&self) -> MutexGuard<'_, Accepted> {
        self.accepted.lock()
    }
}

/// The key a token's header names.
fn find_key<'k>(header: &Map<String, Value>, keys: &'k [VerifyingKey]) -> Result<&'k VerifyingKey, TokenError> {
    let kid = match header.get("kid") {
        None => return Err(TokenError::MissingKid),
        Some(Value::String(kid)) => kid.as_str(),
        Some(_) => return Err(TokenError::UnknownKid { kid: "<not a string>".into() }),
    };
    keys.iter().find(|k| k.kid == kid).ok_or_else(|| TokenError::UnknownKid { kid: quoted(kid) })
}

/// The key that verified a token [`verify_es256`] accepted.
fn key_of<'k>(token: &str, keys: &'k [VerifyingKey]) -> Result<&'k VerifyingKey, TokenError> {
    let header_b64 = token.split('.').next().unwrap_or_default();
    find_key(&decode_object(header_b64, "header")?, keys)
}

fn decode_object(part_b64: &str, part: &'static str) -> Result<Map<String, Value>, TokenError> {
    let bytes = B64.decode(part_b64).map_err(|_| TokenError::Base64 { part })?;
    match serde_json::from_slice::<Value>(&bytes) {
        Ok(Value::Object(map)) => Ok(map),
        Ok(_) => Err(TokenError::Json { part, reason: "not an object".into() }),
        Err(e) => Err(TokenError::Json { part, reason: format!("invalid JSON at column {}", e.column()) }),
    }
}

fn spki_der(point: &[u8]) -> Vec<u8> {
    let mut der = SPKI_P256_PREFIX.to_vec();
    der.extend_from_slice(point);
    der
}

fn check_kid(kid: &str) -> Result<(), TokenError> {
    if kid.is_empty() || kid.len() > 128 || kid.chars().any(char::is_control) {
        return Err(TokenError::Key {
            kid: quoted(kid),
            reason: "a key id must be 1 to 128 printable characters".into(),
        });
    }
    Ok(())
}

/// Tolerated clock skew on a JWT-SVID's `iat` / `nbf` in the future.
const LEEWAY_SECONDS: i64 = 30;

/// Checks a JWT-SVID of trust domain `td` (the server's, or an agent's with
/// the keys of the JWKS it was pushed): ES256 signature by one of `keys`,
/// `exp` after `now`, `iat`/`nbf` not in the future, `aud` containing
/// `audience`, `sub` a SPIFFE ID of `td`. Returns the claims, or why not
/// (never quoting the token).
pub fn validate_jwt_svid(
    token: &str,
    audience: &str,
    keys: &[VerifyingKey],
    td: &crate::domain::TrustDomain,
    now: i64,
) -> Result<Value, String> {
    use crate::domain::{SpiffeId, text};
    let invalid = |reason: String| format!("invalid JWT-SVID: {reason}");
    if audience.is_empty() {
        return Err("audience is required to validate a JWT-SVID".into());
    }
    if token.is_empty() {
        return Err("the JWT-SVID to validate is empty".into());
    }
    let claims = verify_es256(token, keys).map_err(|e| invalid(e.to_string()))?;
    let sub = claims.get("sub").and_then(Value::as_str).ok_or_else(|| invalid("claim sub is missing".into()))?;
    let id = SpiffeId::parse(sub).map_err(|e| invalid(format!("claim sub: {e}")))?;
    if !id.is_member_of(td) {
        return Err(invalid(format!("subject {id} is not in trust domain {td}")));
    }
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
