#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use ring::hmac;
use serde_json::{Value, json};

use super::*;
use crate::domain::TokenKind;

const NOW: i64 = 1_750_000_000;

fn signer(kid: &str) -> Es256Signer {
    Es256Signer::from_pkcs8(kid.into(), &generate_es256_pkcs8(&ring::rand::SystemRandom::new()).unwrap()).unwrap()
}

fn rules() -> TokenRules {
    TokenRules::new("trustmesh", "trustmesh-api")
}

fn claims() -> TokenClaims {
    TokenClaims {
        iss: "trustmesh".into(),
        sub: "node-a".into(),
        aud: "trustmesh-api".into(),
        exp: NOW + 3600,
        iat: NOW,
        nbf: None,
        jti: new_jti(&ring::rand::SystemRandom::new()).unwrap(),
        kind: TokenKind::Node,
        single_use: false,
        spiffe_ids: vec![],
        cnf_x5t_s256: None,
    }
}

fn setup() -> (Es256Signer, Vec<VerifyingKey>) {
    let s = signer("k1");
    let keys = vec![s.verifying_key().unwrap()];
    (s, keys)
}

/// A token with any header and payload, signed by `s` (or with `sig`).
fn forge(header: &Value, payload: &Value, sig: &[u8]) -> String {
    let h = B64.encode(serde_json::to_vec(header).unwrap());
    let p = B64.encode(serde_json::to_vec(payload).unwrap());
    format!("{h}.{p}.{}", B64.encode(sig))
}

fn verify_err(token: &str, keys: &[VerifyingKey]) -> String {
    verify(token, keys, &rules(), NOW, None).unwrap_err().to_string()
}

#[test]
fn round_trip() {
    let (s, keys) = setup();
    let mut c = claims();
    c.kind = TokenKind::Bootstrap;
    c.single_use = true;
    c.nbf = Some(NOW - 5);
    c.spiffe_ids = vec!["spiffe://example.org/svc/a".into()];
    c.cnf_x5t_s256 = Some("Rvc6LtXrtcjJsf0zZacc2MCETnUOWu59cz3H4ohh4-o".into());
    let token = mint(&s, &c).unwrap();
    let got = verify(&token, &keys, &rules(), NOW + 10, c.cnf_x5t_s256.as_deref()).unwrap();
    assert_eq!(got, c);
    let header: Value = serde_json::from_slice(&B64.decode(token.split('.').next().unwrap()).unwrap()).unwrap();
    assert_eq!(header, json!({"alg": "ES256", "kid": "k1", "typ": "JWT"}));
    assert!(format!("{s:?}").contains("redacted"));
    assert_ne!(new_jti(&ring::rand::SystemRandom::new()).unwrap(), new_jti(&ring::rand::SystemRandom::new()).unwrap());
    assert_eq!(B64.decode(new_jti(&ring::rand::SystemRandom::new()).unwrap()).unwrap().len(), 16);
}

#[test]
fn audience_array_and_key_rotation() {
    let (old, mut keys) = setup();
    let new = signer("k2");
    keys.push(new.verifying_key().unwrap());
    let mut payload = claims().to_json();
    payload["aud"] = json!(["other", "trustmesh-api"]);
    for s in [&old, &new] {
        let token = s.sign(&payload).unwrap();
        assert_eq!(verify(&token, &keys, &rules(), NOW, None).unwrap().sub, "node-a");
    }
}

#[test]
fn refuses_lifetime_issuer_audience() {
    let (s, keys) = setup();
    let token = mint(&s, &claims()).unwrap();
    let at = |now: i64| verify(&token, &keys, &rules(), now, None);
    assert_eq!(at(NOW + 3600 + 30).unwrap_err(), TokenError::Expired { at: NOW + 3600 });
    assert!(at(NOW + 3600 + 29).is_ok(), "leeway applies to exp");
    assert_eq!(at(NOW - 31).unwrap_err(), TokenError::NotYetValid { at: NOW });
    assert!(at(NOW - 30).is_ok(), "leeway applies to iat");
    let mut c = claims();
    c.nbf = Some(NOW + 600);
    let err = verify_err(&mint(&s, &c).unwrap(), &keys);
    assert!(err.contains("not valid before"), "{err}");

    let mut c = claims();
    c.aud = "someone-else".into();
    let err = verify_err(&mint(&s, &c).unwrap(), &keys);
    assert!(err.contains("audience") && err.contains("someone-else"), "{err}");
    let mut c = claims();
    c.iss = "evil".into();
    let err = verify_err(&mint(&s, &c).unwrap(), &keys);
    assert!(err.contains("issuer \"evil\""), "{err}");
}

#[test]
fn refuses_tampering() {
    let (s, keys) = setup();
    let token = mint(&s, &claims()).unwrap();
    let parts: Vec<&str> = token.split('.').collect();
    let mut payload = claims().to_json();
    payload["principal"] = json!("admin");
    let tampered = format!("{}.{}.{}", parts[0], B64.encode(payload.to_string()), parts[2]);
    assert_eq!(verify(&tampered, &keys, &rules(), NOW, None).unwrap_err(), TokenError::BadSignature);
    let mut sig = B64.decode(parts[2]).unwrap();
    sig[10] ^= 1;
    let tampered = format!("{}.{}.{}", parts[0], parts[1], B64.encode(&sig));
    assert_eq!(verify_err(&tampered, &keys), "token signature does not verify");
    let other = signer("k1");
    let forged = mint(&other, &claims()).unwrap();
    assert_eq!(verify(&forged, &keys, &rules(), NOW, None).unwrap_err(), TokenError::BadSignature);
}

#[test]
fn refuses_alg_none_and_hmac() {
    let (s, keys) = setup();
    let payload = claims().to_json();
    let none = forge(&json!({"alg": "none", "kid": "k1", "typ": "JWT"}), &payload, b"");
    assert!(none.ends_with('.'));
    let err = verify_err(&none, &keys);
    assert!(err.starts_with("alg none is refused"), "{err}");

    // HS256 keyed with the public key bytes, in both forms a confused verifier might use.
    for key_bytes in [s.public_key_der(), keys[0].public_key_der()[26..].to_vec()] {
        let h = B64.encode(json!({"alg": "HS256", "kid": "k1", "typ": "JWT"}).to_string());
        let p = B64.encode(payload.to_string());
        let key = hmac::Key::new(hmac::HMAC_SHA256, &key_bytes);
        let tag = hmac::sign(&key, format!("{h}.{p}").as_bytes());
        let token = format!("{h}.{p}.{}", B64.encode(tag.as_ref()));
        let err = verify_err(&token, &keys);
        assert!(err.starts_with("alg HS256 is refused"), "{err}");
    }
    for alg in [json!("es256"), json!("RS256"), json!(["ES256"])] {
        let token = forge(&json!({"alg": alg, "kid": "k1"}), &payload, b"x");
        assert!(verify_err(&token, &keys).contains("is refused"));
    }
    let token = forge(&json!({"kid": "k1"}), &payload, b"x");
    assert_eq!(verify_err(&token, &keys), "token header has no alg");
}

#[test]
fn refuses_bad_headers_and_shapes() {
    let (s, keys) = setup();
    let payload = claims().to_json();
    let err = verify_err(&forge(&json!({"alg": "ES256", "kid": "nope"}), &payload, b"x"), &keys);
    assert_eq!(err, "token key id \"nope\" is unknown");
    let err = verify_err(&forge(&json!({"alg": "ES256"}), &payload, b"x"), &keys);
    assert_eq!(err, "token header has no kid");
    let crit = json!({"alg": "ES256", "kid": "k1", "crit": ["b64"], "b64": false});
    assert!(verify_err(&forge(&crit, &payload, b"x"), &keys).contains("crit"));

    let token = mint(&s, &claims()).unwrap();
    let parts: Vec<&str> = token.split('.').collect();
    let two = format!("{}.{}", parts[0], parts[1]);
    assert_eq!(verify(&two, &keys, &rules(), NOW, None).unwrap_err(), TokenError::Segments { count: 2 });
    let four = format!("{token}.{}", parts[2]);
    assert_eq!(verify(&four, &keys, &rules(), NOW, None).unwrap_err(), TokenError::Segments { count: 4 });
    let not_json = format!("{}.{}.{}", B64.encode("not json"), parts[1], parts[2]);
    assert!(verify_err(&not_json, &keys).starts_with("token header is not a JSON object"));
    let padded = format!("{}=.{}.{}", parts[0], parts[1], parts[2]);
    assert!(verify_err(&padded, &keys).contains("base64url"));
    let array = format!("{}.{}.{}", B64.encode("[1]"), parts[1], parts[2]);
    assert!(verify_err(&array, &keys).contains("not a JSON object"));

    let huge = format!("{}.{}.{}", parts[0], "A".repeat(MAX_TOKEN_LEN), parts[2]);
    let err = verify(&huge, &keys, &rules(), NOW, None).unwrap_err();
    assert!(matches!(err, TokenError::TooLarge { max: MAX_TOKEN_LEN, .. }));
    let mut c = claims();
    c.spiffe_ids = vec!["spiffe://example.org/a".repeat(20); 30];
    assert!(matches!(mint(&s, &c).unwrap_err(), TokenError::TooLarge { .. }));
}

#[test]
fn refuses_bad_claims() {
    let (s, keys) = setup();
    let mut payload = claims().to_json();
    payload["principal"] = json!("root");
    let err = verify_err(&s.sign(&payload).unwrap(), &keys);
    assert!(err.contains("principal \"root\" is unknown"), "{err}");
    let mut payload = claims().to_json();
    payload["exp"] = json!("tomorrow");
    let err = verify_err(&s.sign(&payload).unwrap(), &keys);
    assert!(err.contains("claim exp"), "{err}");
    let mut payload = claims().to_json();
    payload.as_object_mut().unwrap().remove("aud");
    assert!(verify_err(&s.sign(&payload).unwrap(), &keys).contains("claim aud is missing"));
    let mut c = claims();
    c.exp = c.iat;
    assert!(mint(&s, &c).is_err());
}

#[test]
fn certificate_binding() {
    let (s, keys) = setup();
    let bound = "Rvc6LtXrtcjJsf0zZacc2MCETnUOWu59cz3H4ohh4-o";
    let other = "Xk9pLmN3qRst4uVw5xYz6aBcDeFgHiJkLmNoPqRsT-U";
    let mut c = claims();
    c.cnf_x5t_s256 = Some(bound.into());
    let token = mint(&s, &c).unwrap();
    let err = verify(&token, &keys, &rules(), NOW, None).unwrap_err();
    assert_eq!(err.to_string(), "token is bound to a certificate but none was presented");
    let err = verify(&token, &keys, &rules(), NOW, Some(other)).unwrap_err().to_string();
    assert!(err.contains(bound) && err.contains(other), "{err}");
    assert!(verify(&token, &keys, &rules(), NOW, Some(bound)).is_ok());
    // an unbound token does not care which certificate the connection has
    let token = mint(&s, &claims()).unwrap();
    assert!(verify(&token, &keys, &rules(), NOW, Some(other)).is_ok());
}

#[test]
fn jwks_matches_spki_point() {
    let (s, keys) = setup();
    let doc = jwks(&keys);
    let jwk = &doc["keys"][0];
    assert_eq!(jwk["kty"], "EC");
    assert_eq!(jwk["crv"], "P-256");
    assert_eq!(jwk["alg"], "ES256");
    assert_eq!(jwk["use"], "sig");
    assert_eq!(jwk["kid"], "k1");
    let spki = s.public_key_der();
    assert_eq!(spki.len(), 91);
    let mut point = vec![0x04];
    point.extend(B64.decode(jwk["x"].as_str().unwrap()).unwrap());
    point.extend(B64.decode(jwk["y"].as_str().unwrap()).unwrap());
    assert_eq!(point, spki[26..]);
    // and back: a key read from the JWKS and from SPKI both verify
    let from_jwk = VerifyingKey::from_jwk(jwk).unwrap();
    let from_spki = VerifyingKey::from_spki_der("k1".into(), &spki).unwrap();
    assert_eq!(from_jwk, from_spki);
    let token = mint(&s, &claims()).unwrap();
    assert!(verify(&token, &[from_jwk], &rules(), NOW, None).is_ok());
}

#[test]
fn refuses_bad_keys_without_leaking_them() {
    let secret = generate_es256_pkcs8(&ring::rand::SystemRandom::new()).unwrap();
    let mut broken = secret.clone();
    broken.truncate(40);
    let err = Es256Signer::from_pkcs8("k1".into(), &broken).unwrap_err().to_string();
    assert!(err.starts_with("invalid token key \"k1\""), "{err}");
    assert!(!err.contains(&hex::encode(&broken[30..40])));
    assert!(Es256Signer::from_pkcs8(String::new(), &secret).is_err());
    assert!(VerifyingKey::from_spki_der("k".into(), &[0x30, 0x00]).is_err());
    let jwk = json!({"kty": "EC", "crv": "P-384", "x": "AA", "y": "AA", "kid": "k"});
    assert!(VerifyingKey::from_jwk(&jwk).is_err());
}

// ---- the signature memo ------------------------------------------------------

#[test]
fn a_remembered_token_is_checked_again_on_every_claim() {
    let (s, keys) = setup();
    let memo = SignatureMemo::default();
    let mut c = claims();
    c.cnf_x5t_s256 = Some("bound-thumbprint".into());
    let token = mint(&s, &c).unwrap();
    let verify_remembered = |rules: &TokenRules, now: i64, thumbprint: &str| {
        memo.verify(&token, &keys).and_then(|value| check_claims(&value, rules, now, Some(thumbprint)))
    };
    assert_eq!(verify_remembered(&rules(), NOW, "bound-thumbprint").unwrap(), c);
    assert_eq!(memo.len(), 1);
    // The signature comes from memory; expiry, audience and binding do not.
    assert_eq!(verify_remembered(&rules(), NOW, "bound-thumbprint").unwrap(), c);
    assert!(matches!(verify_remembered(&rules(), NOW + 7200, "bound-thumbprint"), Err(TokenError::Expired { .. })));
    assert!(matches!(verify_remembered(&rules(), NOW, "another"), Err(TokenError::CertificateMismatch { .. })));
    let other_audience = TokenRules::new("trustmesh", "elsewhere");
    assert!(matches!(
        verify_remembered(&other_audience, NOW, "bound-thumbprint"),
        Err(TokenError::WrongAudience { .. })
    ));
    assert_eq!(memo.len(), 1);
}

#[test]
fn refused_tokens_are_never_remembered() {
    let (s, keys) = setup();
    let memo = SignatureMemo::default();
    let token = mint(&s, &claims()).unwrap();
    let (head, sig) = token.rsplit_once('.').unwrap();
    let mut bytes = B64.decode(sig).unwrap();
    bytes[10] ^= 1;
    let tampered = format!("{head}.{}", B64.encode(bytes));
    for _ in 0..2 {
        assert!(matches!(memo.verify(&tampered, &keys), Err(TokenError::BadSignature)));
    }
    let foreign = mint(&signer("k1"), &claims()).unwrap();
    assert!(matches!(memo.verify(&foreign, &keys), Err(TokenError::BadSignature)));
    assert!(memo.is_empty());
}

/// A token remembered under one key set proves nothing under another (a
/// rotated or withdrawn key): it is verified again and refused.
#[test]
fn a_remembered_token_counts_only_while_its_key_is_asked_with() {
    let (s, keys) = setup();
    let memo = SignatureMemo::default();
    let token = mint(&s, &claims()).unwrap();
    memo.verify(&token, &keys).unwrap();
    let replaced = vec![signer("k1").verifying_key().unwrap()];
    assert!(matches!(memo.verify(&token, &replaced), Err(TokenError::BadSignature)));
    assert!(matches!(memo.verify(&token, &[]), Err(TokenError::UnknownKid { .. })));
    assert!(memo.verify(&token, &keys).is_ok());
}

#[test]
fn the_memo_is_bounded() {
    let (s, keys) = setup();
    let memo = SignatureMemo::default();
    for _ in 0..SignatureMemo::CAPACITY + 3 {
        memo.verify(&mint(&s, &claims()).unwrap(), &keys).unwrap();
        assert!(memo.len() <= SignatureMemo::CAPACITY);
    }
}
