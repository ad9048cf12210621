//! The secret builders and the catalog: names, both validator forms with the
//! CRLs in each, shared encodings.

use std::sync::Arc;

use envoy_types::pb::envoy::config::core::v3::DataSource;
use envoy_types::pb::envoy::config::core::v3::data_source::Specifier;
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::{
    CertificateValidationContext, Secret, SpiffeCertValidatorConfig, secret,
};
use envoy_types::pb::google::protobuf::Any;
use prost::Message;
use time::OffsetDateTime;

use super::*;
use crate::ca::{KeyAlgorithm, PrivateKey};
use crate::cache::{IdentitySet, Svid};
use crate::domain::{SpiffeId, TrustDomain};
use crate::sds::memo::SecretCache;
use crate::sds::protocol::{Catalog, Lookup, SECRET_TYPE};
use crate::trust::TrustSnapshot;

const BUNDLE: &str = "-----BEGIN CERTIFICATE-----\nROOT\n-----END CERTIFICATE-----\n\
                      -----BEGIN CERTIFICATE-----\nSERVICES\n-----END CERTIFICATE-----\n";
const ROOT_CRL: &str = "-----BEGIN X509 CRL-----\nROOTCRL\n-----END X509 CRL-----\n";
const SERVICES_CRL: &str = "-----BEGIN X509 CRL-----\nSERVICESCRL\n-----END X509 CRL-----\n";

fn trust(revision: u64) -> Arc<TrustSnapshot> {
    let mut t = TrustSnapshot::empty(&TrustDomain::parse("example.org").unwrap());
    t.revision = revision;
    t.bundle_pem = BUNDLE.into();
    t.crl_pem = format!("{ROOT_CRL}{SERVICES_CRL}");
    t.built_at = OffsetDateTime::from_unix_timestamp(1_700_000_000 + revision as i64).unwrap();
    Arc::new(t)
}

fn svid(id: &str, serial: &str) -> Arc<Svid> {
    Arc::new(Svid {
        entry_id: format!("entry-{serial}"),
        spiffe_id: SpiffeId::parse(id).unwrap(),
        hint: None,
        // Not a certificate: its serial stands for one.
        chain_der: vec![serial.as_bytes().to_vec()],
        key: PrivateKey::generate(KeyAlgorithm::EcP256, &ring::rand::SystemRandom::new()).unwrap(),
        serial: serial.into(),
        issuer: String::new(),
        not_before: OffsetDateTime::UNIX_EPOCH,
        not_after: OffsetDateTime::UNIX_EPOCH,
        jwt_ttl: None,
    })
}

fn set(svids: Vec<Arc<Svid>>, trust: Arc<TrustSnapshot>) -> Arc<IdentitySet> {
    let withheld = vec![(SpiffeId::parse("spiffe://example.org/denied").unwrap(), "identity denied".to_string())];
    Arc::new(IdentitySet { version: 1, svids, withheld, trust })
}

fn text(ds: &Option<DataSource>) -> &str {
    match ds {
        Some(DataSource { specifier: Some(Specifier::InlineString(s)), .. }) => s,
        other => panic!("not an inline string: {other:?}"),
    }
}

fn decode(found: &Lookup) -> Secret {
    let Lookup::Found(e) = found else { panic!("missing: {found:?}") };
    let any = Any::decode(e.any.clone()).unwrap();
    assert_eq!(any.type_url, SECRET_TYPE);
    let secret = Secret::decode(any.value.as_slice()).unwrap();
    assert_eq!(secret.name, e.name);
    secret
}

fn context(secret: &Secret) -> &CertificateValidationContext {
    match &secret.r#type {
        Some(secret::Type::ValidationContext(c)) => c,
        other => panic!("not a validation context: {other:?}"),
    }
}

fn missing(found: Lookup) -> String {
    match found {
        Lookup::Missing(reason) => reason,
        Lookup::Found(e) => panic!("found {e:?}"),
    }
}

#[test]
fn spiffe_validator_carries_the_crls_inside_the_bundle() {
    let secret = validation_context("spiffe://example.org", &trust(1), ValidatorMode::Spiffe);
    let ctx = context(&secret);
    assert!(ctx.trusted_ca.is_none() && ctx.crl.is_none(), "the SPIFFE validator ignores crl");
    let custom = ctx.custom_validator_config.as_ref().unwrap();
    assert_eq!(custom.name, "envoy.tls.cert_validator.spiffe");
    let typed = custom.typed_config.as_ref().unwrap();
    assert_eq!(
        typed.type_url,
        "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.SPIFFECertValidatorConfig"
    );
    let config = SpiffeCertValidatorConfig::decode(typed.value.as_slice()).unwrap();
    assert_eq!(config.trust_domains.len(), 1);
    assert_eq!(config.trust_domains[0].name, "example.org");
    let pem = text(&config.trust_domains[0].trust_bundle);
    assert_eq!(pem, format!("{BUNDLE}{ROOT_CRL}{SERVICES_CRL}"));
}

#[test]
fn trusted_ca_form_has_every_crl_in_crl() {
    let secret = validation_context("ROOTCA", &trust(1), ValidatorMode::TrustedCa);
    let ctx = context(&secret);
    assert!(ctx.custom_validator_config.is_none());
    assert_eq!(text(&ctx.trusted_ca), BUNDLE);
    let crl = text(&ctx.crl);
    assert!(crl.contains("ROOTCRL") && crl.contains("SERVICESCRL"), "{crl}");
    // No CRL published: no crl field (an empty one would be refused by Envoy).
    let mut t = (*trust(1)).clone();
    t.crl_pem.clear();
    assert!(context(&validation_context("ROOTCA", &t, ValidatorMode::TrustedCa)).crl.is_none());
}

#[test]
fn bundle_and_crls_are_separated_by_a_newline() {
    let mut t = (*trust(1)).clone();
    t.bundle_pem = BUNDLE.trim_end().to_string();
    assert!(bundle_with_crls(&t).contains("-----END CERTIFICATE-----\n-----BEGIN X509 CRL-----"));
}

#[test]
fn names_resolve_as_spire_serves_them() {
    let a = svid("spiffe://example.org/a", "01");
    let b = svid("spiffe://example.org/b", "02");
    let catalog = SecretCatalog::new(
        set(vec![a.clone(), b.clone()], trust(1)),
        ValidatorMode::Spiffe,
        Arc::new(SecretCache::new()),
    );

    let default = decode(&catalog.lookup(SECRET_TYPE, "default"));
    assert_eq!(default.name, "default");
    let Some(secret::Type::TlsCertificate(cert)) = &default.r#type else { panic!("not a certificate") };
    assert_eq!(text(&cert.certificate_chain), a.chain_pem());
    assert_eq!(text(&cert.private_key), a.key.to_pem().as_str());

    let by_id = decode(&catalog.lookup(SECRET_TYPE, "spiffe://example.org/b"));
    let Some(secret::Type::TlsCertificate(cert)) = &by_id.r#type else { panic!("not a certificate") };
    assert_eq!(text(&cert.certificate_chain), b.chain_pem());

    for name in ["ROOTCA", "ALL", "spiffe://example.org"] {
        let s = decode(&catalog.lookup(SECRET_TYPE, name));
        assert!(context(&s).custom_validator_config.is_some(), "{name}");
    }

    let cases = [
        ("spiffe://example.org/c", "the caller is not entitled to spiffe://example.org/c"),
        ("spiffe://example.org/denied", "spiffe://example.org/denied is withheld: identity denied"),
        ("spiffe://other.org", "trust domain other.org is not known here"),
        ("spiffe://example.org/a/../b", "invalid SPIFFE ID"),
        ("web-cert", "unknown resource name \"web-cert\""),
    ];
    for (name, want) in cases {
        let got = missing(catalog.lookup(SECRET_TYPE, name));
        assert!(got.contains(want), "{name}: {got}");
    }
    let got = missing(catalog.lookup("type.googleapis.com/envoy.config.cluster.v3.Cluster", "default"));
    assert!(got.contains("is not served"), "{got}");

    assert_eq!(
        catalog.wildcard(SECRET_TYPE),
        vec!["spiffe://example.org/a".to_string(), "spiffe://example.org/b".into(), "spiffe://example.org".into()]
    );
}

#[test]
fn a_caller_without_svids_is_told_why() {
    let catalog = SecretCatalog::new(set(Vec::new(), trust(1)), ValidatorMode::Spiffe, Arc::new(SecretCache::new()));
    let got = missing(catalog.lookup(SECRET_TYPE, "default"));
    assert_eq!(got, "the caller holds no SVID (spiffe://example.org/denied is withheld: identity denied)");
    let mut empty = (*trust(1)).clone();
    empty.bundle_pem.clear();
    let catalog =
        SecretCatalog::new(set(Vec::new(), Arc::new(empty)), ValidatorMode::Spiffe, Arc::new(SecretCache::new()));
    assert!(missing(catalog.lookup(SECRET_TYPE, "ROOTCA")).contains("not published yet"));
}

#[test]
fn encodings_are_shared_across_callers_and_follow_the_validator() {
    let cache = Arc::new(SecretCache::new());
    let t = trust(7);
    let a = svid("spiffe://example.org/a", "01");
    let one = SecretCatalog::new(set(vec![a.clone()], t.clone()), ValidatorMode::Spiffe, cache.clone());
    let two = SecretCatalog::new(
        set(vec![a, svid("spiffe://example.org/b", "02")], t.clone()),
        ValidatorMode::Spiffe,
        cache.clone(),
    );
    let ca = SecretCatalog::new(set(Vec::new(), t), ValidatorMode::TrustedCa, cache);
    let (Lookup::Found(x), Lookup::Found(y), Lookup::Found(z)) =
        (one.lookup(SECRET_TYPE, "ROOTCA"), two.lookup(SECRET_TYPE, "ROOTCA"), ca.lookup(SECRET_TYPE, "ROOTCA"))
    else {
        panic!("missing")
    };
    assert!(Arc::ptr_eq(&x, &y), "same trust, same validator: same bytes");
    assert!(!Arc::ptr_eq(&x, &z) && x.version != z.version, "other validator: other content");
    let (Lookup::Found(p), Lookup::Found(q)) = (one.lookup(SECRET_TYPE, "default"), two.lookup(SECRET_TYPE, "default"))
    else {
        panic!("missing")
    };
    assert!(Arc::ptr_eq(&p, &q), "the same SVID is encoded once");
    // A new trust revision is new content.
    let next = SecretCatalog::new(set(Vec::new(), trust(8)), ValidatorMode::Spiffe, Arc::new(SecretCache::new()));
    let Lookup::Found(n) = next.lookup(SECRET_TYPE, "ROOTCA") else { panic!("missing") };
    assert_eq!(n.version, x.version, "equal content, equal version, whatever the revision");
}
