//! CA creation and import: profiles, chains, key matching.

use time::Duration;
use x509_parser::oid_registry::{OID_SIG_ECDSA_WITH_SHA256, OID_SIG_ECDSA_WITH_SHA384};

use super::{INTERMEDIATE_DAYS, ROOT_DAYS, hierarchy, intermediate, now, now_s, serial, x509};
use crate::ca::cert::{authority_key_id, uri_sans};
use crate::ca::{
    CaCertificate, CaError, IntermediateParams, KeyAlgorithm, PrivateKey, Signer, create_intermediate, import_ca,
};
use crate::domain::TrustDomain;

#[test]
fn root_profile() {
    let root = &hierarchy().root;
    let c = &root.cert;
    assert!(c.self_signed);
    assert_eq!(c.common_name, "trustmesh Root CA");
    assert_eq!(c.algorithm, "EC-P384");
    assert_eq!(c.path_len(), Some(1));
    assert_eq!(c.not_before, now_s() - Duration::seconds(60));
    assert_eq!(c.not_after, now_s() + Duration::days(ROOT_DAYS));
    assert_eq!(c.trust_domain().map(|t| t.as_str()), Some("example.org"));
    assert_eq!(root.root(), c);
    assert!(root.parents.is_empty());
    assert_eq!(root.key().algorithm(), KeyAlgorithm::EcP384);
    let x = x509(&c.der);
    assert_eq!(x.signature_algorithm.algorithm, OID_SIG_ECDSA_WITH_SHA384);
    let bc = x.basic_constraints().unwrap().unwrap();
    assert!(bc.critical && bc.value.ca);
    let ku = x.key_usage().unwrap().unwrap();
    assert!(ku.critical && ku.value.key_cert_sign() && ku.value.crl_sign());
    assert_eq!(uri_sans(&x), ["spiffe://example.org"]);
    assert!(c.subject_key_id().is_some());
    assert_eq!(CaCertificate::from_der(&c.der).unwrap(), *c);
}

#[test]
fn intermediate_profile() {
    let h = hierarchy();
    let c = &h.services.cert;
    assert!(!c.self_signed);
    assert_eq!(c.algorithm, "EC-P256");
    assert_eq!(c.path_len(), Some(0));
    assert_eq!(c.not_after, now_s() + Duration::days(INTERMEDIATE_DAYS));
    assert_eq!(h.services.parents, vec![h.root.cert.clone()]);
    assert_eq!(h.services.root(), &h.root.cert);
    let x = x509(&c.der);
    assert_eq!(x.signature_algorithm.algorithm, OID_SIG_ECDSA_WITH_SHA384, "signed by the P-384 root");
    assert_eq!(authority_key_id(&x), h.root.cert.subject_key_id());
    // A P-256 CA signs with ECDSA-SHA256.
    let below =
        create_intermediate(&h.services, &intermediate("x"), serial(5), now(), &ring::rand::SystemRandom::new());
    assert!(matches!(below, Err(CaError::Chain { .. })), "pathlen 0 forbids a CA below");
    let leaf_signer_alg = {
        let (issued, _) = crate::ca::issue_server_certificate(
            &h.services,
            &super::id("spiffe://example.org/s"),
            &[],
            Duration::hours(1),
            serial(6),
            now(),
            &ring::rand::SystemRandom::new(),
        )
        .unwrap();
        x509(&issued.der).signature_algorithm.algorithm.to_id_string()
    };
    assert_eq!(leaf_signer_alg, OID_SIG_ECDSA_WITH_SHA256.to_id_string());
}

#[test]
fn intermediate_is_capped_and_stays_in_its_trust_domain() {
    let h = hierarchy();
    let long = IntermediateParams { lifetime: Duration::days(ROOT_DAYS * 2), ..intermediate("long") };
    let c = create_intermediate(&h.root, &long, serial(7), now(), &ring::rand::SystemRandom::new()).unwrap();
    assert_eq!(c.cert.not_after, h.root.cert.not_after);
    let foreign = IntermediateParams { trust_domain: TrustDomain::parse("other.org").unwrap(), ..intermediate("f") };
    let err = create_intermediate(&h.root, &foreign, serial(8), now(), &ring::rand::SystemRandom::new()).unwrap_err();
    assert!(matches!(err, CaError::TrustDomainMismatch { .. }), "{err}");
}

#[test]
fn import_a_good_chain() {
    let h = hierarchy();
    let cert_pem = format!("{}{}", h.services.cert.to_pem(), h.root.cert.to_pem());
    let imported = import_ca(&cert_pem, &h.services.key().to_pem()).unwrap();
    assert_eq!(imported.signer.cert, h.services.cert);
    assert_eq!(imported.signer.parents, vec![h.root.cert.clone()]);
    // A root imports alone.
    let root = import_ca(&h.root.cert.to_pem(), &h.root.key().to_pem()).unwrap();
    assert!(root.signer.cert.self_signed && root.signer.parents.is_empty());
}

#[test]
fn import_refusals() {
    let h = hierarchy();
    let chain = format!("{}{}", h.services.cert.to_pem(), h.root.cert.to_pem());
    let other = PrivateKey::generate(KeyAlgorithm::EcP256, &ring::rand::SystemRandom::new()).unwrap();
    let err = import_ca(&chain, &other.to_pem()).unwrap_err();
    assert!(matches!(err, CaError::KeyMismatch { .. }), "{err}");
    assert!(err.to_string().contains("trustmesh Services CA"), "{err}");

    let err = import_ca(&h.services.cert.to_pem(), &h.services.key().to_pem()).unwrap_err();
    assert!(err.to_string().contains("chain does not end at a self-signed root"), "{err}");

    let reversed = format!("{}{}", h.root.cert.to_pem(), h.services.cert.to_pem());
    assert!(matches!(import_ca(&reversed, &h.root.key().to_pem()), Err(CaError::Chain { .. })));

    let wrong_parent = format!("{}{}", h.services.cert.to_pem(), h.services.cert.to_pem());
    assert!(matches!(import_ca(&wrong_parent, &h.services.key().to_pem()), Err(CaError::Chain { .. })));

    assert!(matches!(import_ca("", &h.root.key().to_pem()), Err(CaError::NoCertificates)));

    let (leaf, key) = crate::ca::issue_server_certificate(
        &h.services,
        &super::id("spiffe://example.org/s"),
        &["localhost".into()],
        Duration::hours(1),
        serial(9),
        now(),
        &ring::rand::SystemRandom::new(),
    )
    .unwrap();
    let err = import_ca(&format!("{}{}", leaf.to_pem(), h.root.cert.to_pem()), &key.to_pem()).unwrap_err();
    assert!(matches!(err, CaError::NotACa { .. }), "{err}");
    assert!(matches!(CaCertificate::from_der(&leaf.der), Err(CaError::NotACa { .. })));
}

#[test]
fn signer_new_checks_key_and_chain() {
    let h = hierarchy();
    let err = Signer::new(h.services.cert.clone(), h.root.key().clone(), vec![h.root.cert.clone()]).unwrap_err();
    assert!(matches!(err, CaError::KeyMismatch { .. }), "{err}");
    let err = Signer::new(h.services.cert.clone(), h.services.key().clone(), vec![]).unwrap_err();
    assert!(matches!(err, CaError::Chain { .. }), "{err}");
    Signer::new(h.services.cert.clone(), h.services.key().clone(), vec![h.root.cert.clone()]).unwrap();
}

#[test]
fn certs_from_pem_reads_a_bundle() {
    let h = hierarchy();
    let bundle = format!("junk before\n{}{}", h.root.cert.to_pem(), h.services.cert.to_pem());
    let ders = crate::ca::certs_from_pem(&bundle).unwrap();
    assert_eq!(ders, vec![h.root.cert.der.clone(), h.services.cert.der.clone()]);
}
