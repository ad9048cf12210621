//! Wire messages built from the published state: one full-state message per
//! change, as the Workload API standard asks.

use std::collections::HashMap;

use serde_json::Value as Json;

use super::WorkloadError;
use crate::cache::IdentitySet;
use crate::proto::spiffe::google::protobuf::{ListValue, NullValue, Struct, Value, value::Kind};
use crate::proto::spiffe::{JwtBundlesResponse, X509BundlesResponse, X509svid, X509svidResponse};
use crate::trust::TrustSnapshot;

/// Every SVID of the set, with the bundle, the DER CRLs and the federated
/// bundles. `NoIdentity` when the set holds no SVID (any more).
pub(super) fn x509_svid_response(set: &IdentitySet) -> Result<X509svidResponse, WorkloadError> {
    if set.svids.is_empty() {
        return Err(no_identity(set));
    }
    let bundle = bundle_der(&set.trust)?;
    let svids = set
        .svids
        .iter()
        .map(|svid| X509svid {
            spiffe_id: svid.spiffe_id.to_string(),
            x509_svid: svid.chain_der.concat(),
            x509_svid_key: svid.key.pkcs8_der().to_vec(),
            bundle: bundle.clone(),
            hint: svid.hint.clone().unwrap_or_default(),
        })
        .collect();
    Ok(X509svidResponse { svids, crl: crls(&set.trust), federated_bundles: HashMap::new() })
}

/// The trust domain's bundle (concatenated DER) and the DER CRLs.
pub(super) fn x509_bundles_response(trust: &TrustSnapshot) -> Result<X509BundlesResponse, WorkloadError> {
    let bundles = HashMap::from([(trust.trust_domain.id_string(), bundle_der(trust)?)]);
    Ok(X509BundlesResponse { crl: crls(trust), bundles })
}

/// The trust domain's JWKS (JSON bytes), keyed by its SPIFFE ID.
pub(super) fn jwt_bundles_response(trust: &TrustSnapshot) -> Result<JwtBundlesResponse, WorkloadError> {
    let jwks =
        serde_json::to_vec(&trust.jwks).map_err(|e| WorkloadError::Internal(format!("encoding the JWKS: {e}")))?;
    Ok(JwtBundlesResponse { bundles: HashMap::from([(trust.trust_domain.id_string(), jwks)]) })
}

/// `PermissionDenied` with the reason the caller holds no SVID.
pub(super) fn no_identity(set: &IdentitySet) -> WorkloadError {
    match set.withheld.first() {
        Some((id, reason)) => WorkloadError::NoIdentity(format!("{id} is withheld: {reason}")),
        None => WorkloadError::NoIdentity("the caller's selectors match no registration entry".into()),
    }
}

/// JWT claims as a `google.protobuf.Struct` (numbers become doubles).
pub(super) fn claims_struct(claims: &Json) -> Struct {
    match claims {
        Json::Object(map) => Struct { fields: map.iter().map(|(k, v)| (k.clone(), value(v))).collect() },
        _ => Struct::default(),
    }
}

fn value(json: &Json) -> Value {
    let kind = match json {
        Json::Null => Kind::NullValue(NullValue::NullValue as i32),
        Json::Bool(b) => Kind::BoolValue(*b),
        Json::Number(n) => Kind::NumberValue(n.as_f64().unwrap_or_default()),
        Json::String(s) => Kind::StringValue(s.clone()),
        Json::Array(items) => Kind::ListValue(ListValue { values: items.iter().map(value).collect() }),
        Json::Object(_) => Kind::StructValue(claims_struct(json)),
    };
    Value { kind: Some(kind) }
}

fn crls(trust: &TrustSnapshot) -> Vec<Vec<u8>> {
    trust.crls.iter().map(|c| c.der.clone()).collect()
}

/// Root and intermediates of the bundle PEM, as concatenated DER.
fn bundle_der(trust: &TrustSnapshot) -> Result<Vec<u8>, WorkloadError> {
    let blocks = pem::parse_many(&trust.bundle_pem)
        .map_err(|e| WorkloadError::Internal(format!("the published trust bundle is not PEM: {e}")))?;
    if blocks.is_empty() {
        return Err(WorkloadError::Unavailable("the trust bundle is not published yet".into()));
    }
    Ok(blocks.iter().filter(|b| b.tag() == "CERTIFICATE").flat_map(|b| b.contents().to_vec()).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn claims_become_a_struct_with_every_json_kind() {
        let claims = serde_json::json!({
            "sub": "spiffe://example.org/a", "aud": ["x", "y"], "exp": 1800000300, "n": null, "b": true,
            "nested": { "k": 1.5 },
        });
        let s = claims_struct(&claims);
        assert_eq!(s.fields["sub"].kind, Some(Kind::StringValue("spiffe://example.org/a".into())));
        assert_eq!(s.fields["exp"].kind, Some(Kind::NumberValue(1_800_000_300.0)));
        assert_eq!(s.fields["b"].kind, Some(Kind::BoolValue(true)));
        assert_eq!(s.fields["n"].kind, Some(Kind::NullValue(0)));
        let Some(Kind::ListValue(aud)) = &s.fields["aud"].kind else { panic!("aud is not a list") };
        assert_eq!(aud.values.len(), 2);
        let Some(Kind::StructValue(nested)) = &s.fields["nested"].kind else { panic!("nested is not a struct") };
        assert_eq!(nested.fields["k"].kind, Some(Kind::NumberValue(1.5)));
        assert!(claims_struct(&serde_json::json!("not an object")).fields.is_empty());
    }

    #[test]
    fn an_empty_bundle_is_unavailable_not_an_empty_message() {
        let td = crate::domain::TrustDomain::parse("example.org").unwrap();
        let trust = TrustSnapshot::empty(&td);
        assert!(matches!(bundle_der(&trust), Err(WorkloadError::Unavailable(_))));
        let jwt = jwt_bundles_response(&trust).unwrap();
        assert_eq!(jwt.bundles["spiffe://example.org"], br#"{"keys":[]}"#.to_vec());
    }
}
