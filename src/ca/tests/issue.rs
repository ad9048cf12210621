//! Issuance: root → Services CA → leaf, and the X.509-SVID profile of the leaf.

use std::net::IpAddr;

use rcgen::PublicKeyData as _;
use time::Duration;
use x509_parser::extensions::GeneralName;

use crate::domain::{Serial, SpiffeId};

use super::{csr_der, hierarchy, id, now, now_s, p256, serial, td, x509};
use crate::ca::cert::{authority_key_id, subject_key_id};
use crate::ca::check::{LeafExpectation, validate_leaf};
use crate::ca::{
    CaError, ExtKeyUsage, IssuedCertificate, KeyUsage, LeafRequest, LeafUsage, SvidRequest, issue_leaf_certificate,
    issue_server_certificate, issue_svid, parse_csr,
};

const RSA_2048_CSR: &str = include_str!("fixtures/rsa2048.csr");

fn issue(spki: &[u8], spiffe_id: &str, dns: &[String], lifetime: Duration) -> Result<IssuedCertificate, CaError> {
    let spiffe_id = id(spiffe_id);
    issue_svid(
        &hierarchy().services,
        &SvidRequest {
            spiffe_id: &spiffe_id,
            dns_names: dns,
            public_key_der: spki,
            lifetime,
            serial: serial(10),
            common_name: None,
        },
        now(),
    )
}

#[test]
fn p256_csr_to_svid_has_the_svid_profile() {
    let h = hierarchy();
    let key = p256();
    let csr = parse_csr(&csr_der(&key, &["spiffe://example.org/web"], &["web.example.org"]), &td()).unwrap();
    assert_eq!(csr.key_algorithm, "EC-P256");
    let issued = issue(&csr.public_key_der, "spiffe://example.org/web", &csr.dns_names, Duration::hours(1)).unwrap();
    assert_eq!(issued.spiffe_id.as_ref().map(ToString::to_string).as_deref(), Some("spiffe://example.org/web"));
    assert_eq!(issued.fingerprint, crate::ca::fingerprint(&issued.der));
    assert!(issued.to_pem().starts_with("-----BEGIN CERTIFICATE-----\n"));

    let x = x509(&issued.der);
    // Exactly one URI SAN, then the DNS SAN.
    let san = x.subject_alternative_name().unwrap().unwrap();
    let uris: Vec<_> = san.value.general_names.iter().filter(|n| matches!(n, GeneralName::URI(_))).collect();
    assert_eq!(uris, [&GeneralName::URI("spiffe://example.org/web")]);
    assert_eq!(san.value.general_names[1], GeneralName::DNSName("web.example.org"));
    // CA:FALSE, critical.
    let bc = x.basic_constraints().unwrap().unwrap();
    assert!(bc.critical && !bc.value.ca);
    // keyUsage digitalSignature only, critical.
    let ku = x.key_usage().unwrap().unwrap();
    assert!(ku.critical && ku.value.digital_signature() && !ku.value.key_encipherment());
    assert!(!ku.value.key_cert_sign());
    // EKU serverAuth + clientAuth.
    let eku = x.extended_key_usage().unwrap().unwrap();
    assert!(eku.value.server_auth && eku.value.client_auth);
    // Serial as requested, >= 128 bits.
    assert_eq!(x.raw_serial(), serial(10).as_bytes());
    assert!(serial(10).bits() >= 128);
    // notBefore now - 30 s, notAfter now + 1 h (whole seconds).
    assert_eq!(x.validity().not_before.to_datetime(), now_s() - Duration::seconds(30));
    assert_eq!(x.validity().not_after.to_datetime(), now_s() + Duration::hours(1));
    assert_eq!(issued.not_before, now_s() - Duration::seconds(30));
    // AKI = issuer SKI; SKI present; signature verifies with the issuer key.
    assert_eq!(authority_key_id(&x), h.services.cert.subject_key_id());
    assert!(subject_key_id(&x).is_some());
    let issuer = x509(&h.services.cert.der);
    x.verify_signature(Some(issuer.public_key())).unwrap();
    assert_eq!(x.issuer().as_raw(), issuer.subject().as_raw());
    assert_eq!(x.public_key().raw, csr.public_key_der.as_slice());
}

#[test]
fn not_after_is_capped_by_the_issuer() {
    let h = hierarchy();
    let key = p256();
    let spki = key.subject_public_key_info();
    let issued = issue(&spki, "spiffe://example.org/long", &[], Duration::days(10_000)).unwrap();
    assert_eq!(issued.not_after, h.services.cert.not_after);
    assert_eq!(x509(&issued.der).validity().not_after.to_datetime(), h.services.cert.not_after);
}

#[test]
fn ed25519_and_rsa_csrs_are_issued() {
    let ed = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519).unwrap();
    let csr = parse_csr(&csr_der(&ed, &["spiffe://example.org/ed"], &[]), &td()).unwrap();
    assert_eq!(csr.key_algorithm, "Ed25519");
    let issued = issue(&csr.public_key_der, "spiffe://example.org/ed", &[], Duration::hours(1)).unwrap();
    assert!(!x509(&issued.der).key_usage().unwrap().unwrap().value.key_encipherment());

    let csr = parse_csr(RSA_2048_CSR.as_bytes(), &td()).unwrap();
    assert_eq!(csr.key_algorithm, "RSA-2048");
    assert_eq!(csr.dns_names, ["rsa.example.org"]);
    let issued = issue(&csr.public_key_der, "spiffe://example.org/rsa", &csr.dns_names, Duration::hours(1)).unwrap();
    let ku = *x509(&issued.der).key_usage().unwrap().unwrap().value;
    assert!(ku.digital_signature() && ku.key_encipherment());
}

fn request<'a>(
    spiffe_id: &'a SpiffeId,
    spki: &'a [u8],
    serial: Serial,
    lifetime: Duration,
    dns: &'a [String],
) -> SvidRequest<'a> {
    SvidRequest { spiffe_id, dns_names: dns, public_key_der: spki, lifetime, serial, common_name: None }
}

#[test]
fn issuance_refusals() {
    let spki = p256().subject_public_key_info();
    let h = hierarchy();
    let ok = id("spiffe://example.org/a");
    let hour = Duration::hours(1);
    let short = Serial::from_bytes(&[0x7f; 15]).unwrap();
    let err = issue_svid(&h.services, &request(&ok, &spki, short, hour, &[]), now()).unwrap_err();
    assert!(matches!(err, CaError::SerialTooShort { bits: 119, .. }), "{err}");
    let err = issue_svid(&h.services, &request(&ok, &spki, serial(3), Duration::ZERO, &[]), now()).unwrap_err();
    assert!(matches!(err, CaError::Lifetime { seconds: 0 }), "{err}");
    let bad_dns = vec!["Bad_Name".to_string()];
    let err = issue_svid(&h.services, &request(&ok, &spki, serial(3), hour, &bad_dns), now()).unwrap_err();
    assert!(matches!(err, CaError::DnsName { .. }) && err.to_string().contains("Bad_Name"), "{err}");
    let late = h.services.cert.not_after + Duration::seconds(1);
    let err = issue_svid(&h.services, &request(&ok, &spki, serial(3), hour, &[]), late).unwrap_err();
    assert!(matches!(err, CaError::IssuerExpired { .. }), "{err}");
    let foreign = id("spiffe://other.org/a");
    let err = issue_svid(&h.services, &request(&foreign, &spki, serial(3), hour, &[]), now()).unwrap_err();
    let text = err.to_string();
    assert!(text.contains("other.org") && text.contains("example.org"), "{text}");
    let err = issue_svid(&h.services, &request(&ok, b"junk", serial(3), hour, &[]), now()).unwrap_err();
    assert!(matches!(err, CaError::UnsupportedKey { .. }), "{err}");
    let server = id("spiffe://example.org/trustmesh/server");
    let err = issue_svid(&h.services, &request(&server, &spki, serial(3), hour, &[]), now()).unwrap_err();
    assert!(matches!(err, CaError::ReservedIdentity { .. }), "{err}");
    let many: Vec<String> = (0..10_000).map(|i| format!("n{i}.example.org")).collect();
    let err = issue_svid(&h.services, &request(&ok, &spki, serial(3), hour, &many), now()).unwrap_err();
    assert!(matches!(err, CaError::TooManyDnsNames { count: 10_000, .. }), "{err}");
    let req = SvidRequest { common_name: Some(""), ..request(&ok, &spki, serial(3), hour, &[]) };
    assert!(matches!(issue_svid(&h.services, &req, now()), Err(CaError::CommonName { .. })));
    let req = SvidRequest { common_name: Some("web"), ..request(&ok, &spki, serial(3), hour, &[]) };
    let issued = issue_svid(&h.services, &req, now()).unwrap();
    let cn = crate::ca::cert::common_name(&x509(&issued.der));
    assert_eq!(cn.as_deref(), Some("web"));
}

#[test]
fn server_certificate_has_ip_sans_and_its_own_key() {
    let h = hierarchy();
    let names: Vec<String> = ["localhost", "127.0.0.1", "::1", "localhost"].map(String::from).into();
    let (issued, key) = issue_server_certificate(
        &h.services,
        &id("spiffe://example.org/trustmesh/server"),
        &names,
        Duration::days(1),
        serial(20),
        now(),
        &ring::rand::SystemRandom::new(),
    )
    .unwrap();
    let x = x509(&issued.der);
    assert_eq!(x.public_key().raw, key.public_key_der().as_slice());
    let san = x.subject_alternative_name().unwrap().unwrap();
    let expected_ips: Vec<IpAddr> = vec!["127.0.0.1".parse().unwrap(), "::1".parse().unwrap()];
    let ips: Vec<IpAddr> = san
        .value
        .general_names
        .iter()
        .filter_map(|n| match n {
            GeneralName::IPAddress(b) if b.len() == 4 => Some(IpAddr::from(<[u8; 4]>::try_from(*b).unwrap())),
            GeneralName::IPAddress(b) => Some(IpAddr::from(<[u8; 16]>::try_from(*b).unwrap())),
            _ => None,
        })
        .collect();
    assert_eq!(ips, expected_ips);
    assert_eq!(san.value.general_names[0], GeneralName::URI("spiffe://example.org/trustmesh/server"));
    assert_eq!(san.value.general_names[1], GeneralName::DNSName("localhost"));
    assert_eq!(san.value.general_names.len(), 4, "duplicates removed");
}

#[test]
fn the_post_sign_check_catches_a_profile_difference() {
    let h = hierarchy();
    let spki = p256().subject_public_key_info();
    let issued = issue(&spki, "spiffe://example.org/a", &[], Duration::hours(1)).unwrap();
    let other = id("spiffe://example.org/b");
    let (svid, rsa_svid) = (LeafUsage::svid(false), LeafUsage::svid(true));
    let mut want = LeafExpectation {
        spiffe_id: issued.spiffe_id.as_ref(),
        dns_names: &[],
        ips: &[],
        spki: &spki,
        serial: &issued.serial,
        not_before: issued.not_before,
        not_after: issued.not_after,
        usage: &svid,
    };
    validate_leaf(&h.services, &issued.der, &want).unwrap();
    want.spiffe_id = Some(&other);
    let err = validate_leaf(&h.services, &issued.der, &want).unwrap_err();
    assert!(matches!(err, CaError::SelfCheck { .. }), "{err}");
    want.spiffe_id = None;
    assert!(validate_leaf(&h.services, &issued.der, &want).is_err(), "a URI SAN that was not asked for");
    want.spiffe_id = issued.spiffe_id.as_ref();
    want.usage = &rsa_svid;
    assert!(validate_leaf(&h.services, &issued.der, &want).is_err());
    want.usage = &svid;
    // Signed by the Services CA, so it does not validate against the root.
    let err = validate_leaf(&h.root, &issued.der, &want).unwrap_err().to_string();
    assert!(err.contains("is not the subject of") || err.contains("does not verify"), "{err}");
}

/// A tenant's client certificate under a profile: a CN, no URI SAN, an IP
/// SAN, client-auth only, the profile's key usages and backdating; and the
/// post-sign check holds it to exactly that.
#[test]
fn a_profile_leaf_has_exactly_the_profiles_names_and_usages() {
    let h = hierarchy();
    let spki = p256().subject_public_key_info();
    let usage =
        LeafUsage::from_names(&["DigitalSignature", "KeyAgreement"], &["ClientAuth"], Duration::seconds(45)).unwrap();
    let ips: Vec<IpAddr> = vec!["10.0.0.7".parse().unwrap()];
    let dns = vec!["tenant-acme".to_string()];
    let request = LeafRequest {
        spiffe_id: None,
        common_name: Some("tenant-acme"),
        dns_names: &dns,
        ips: &ips,
        public_key_der: &spki,
        lifetime: Duration::days(30),
        serial: serial(11),
        usage: &usage,
    };
    let issued = issue_leaf_certificate(&h.services, &request, now()).unwrap();
    assert_eq!(issued.spiffe_id, None);
    assert_eq!(issued.not_before, now_s() - Duration::seconds(45));
    let x = x509(&issued.der);
    assert_eq!(crate::ca::cert::common_name(&x).as_deref(), Some("tenant-acme"));
    assert!(crate::ca::cert::uri_sans(&x).is_empty());
    let ku = x.key_usage().unwrap().unwrap().value;
    assert!(ku.digital_signature() && ku.key_agreement() && !ku.key_encipherment());
    let eku = x.extended_key_usage().unwrap().unwrap().value;
    assert!(eku.client_auth && !eku.server_auth);
    assert_eq!(usage.key_usages, [KeyUsage::DigitalSignature, KeyUsage::KeyAgreement]);
    assert_eq!(usage.ext_key_usages, [ExtKeyUsage::ClientAuth]);

    // No names at all: no subjectAltName extension, and the check accepts that.
    let bare = LeafRequest { dns_names: &[], ips: &[], serial: serial(12), ..request.clone() };
    let issued = issue_leaf_certificate(&h.services, &bare, now()).unwrap();
    assert!(x509(&issued.der).subject_alternative_name().unwrap().is_none());

    let reserved = id("spiffe://example.org/trustmesh/server");
    let err =
        issue_leaf_certificate(&h.services, &LeafRequest { spiffe_id: Some(&reserved), ..request }, now()).unwrap_err();
    assert!(matches!(err, CaError::ReservedIdentity { .. }), "{err}");
    assert!(LeafUsage::from_names(&["CertSign"], &[], Duration::ZERO).is_err());
}
