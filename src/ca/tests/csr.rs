//! CSR parsing: what is accepted, and a distinct, clear error for each refusal.

use super::{csr_der, csr_pem, p256, td};
use crate::ca::encoding::to_pem;
use crate::ca::{CaError, MAX_CSR_BYTES, parse_csr};

const RSA_1024_CSR: &str = include_str!("fixtures/rsa1024.csr");
const RSA_SHA1_CSR: &str = include_str!("fixtures/rsa2048-sha1.csr");

fn refuse(input: &[u8]) -> CaError {
    parse_csr(input, &td()).expect_err("the csr should be refused")
}

#[test]
fn accepts_pem_new_label_and_der() {
    let key = p256();
    let der = csr_der(&key, &["spiffe://example.org/a"], &["a.example.org", "*.b.example.org"]);
    let from_der = parse_csr(&der, &td()).unwrap();
    assert_eq!(from_der.spiffe_id.to_string(), "spiffe://example.org/a");
    assert_eq!(from_der.dns_names, ["a.example.org", "*.b.example.org"]);
    let from_pem = parse_csr(to_pem("CERTIFICATE REQUEST", &der).as_bytes(), &td()).unwrap();
    assert_eq!(from_pem, from_der);
    let legacy = format!("\n  {}", to_pem("NEW CERTIFICATE REQUEST", &der));
    assert_eq!(parse_csr(legacy.as_bytes(), &td()).unwrap(), from_der);
    let p384 = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P384_SHA384).unwrap();
    let csr = parse_csr(csr_pem(&p384, &["spiffe://example.org/b"], &[]).as_bytes(), &td()).unwrap();
    assert_eq!(csr.key_algorithm, "EC-P384");
}

#[test]
fn refuses_garbage_truncation_and_size() {
    let err = refuse(b"hello, I am not a csr");
    assert!(matches!(err, CaError::CsrEncoding { .. }), "{err}");
    assert!(err.to_string().starts_with("csr is not valid PEM or DER: "), "{err}");
    assert!(matches!(refuse(b""), CaError::CsrEncoding { .. }));

    let der = csr_der(&p256(), &["spiffe://example.org/a"], &[]);
    let err = refuse(&der[..der.len() - 10]).to_string();
    assert!(err.contains("csr is not valid PEM or DER") && err.contains("truncated"), "{err}");
    let mut trailing = der.clone();
    trailing.extend_from_slice(b"xx");
    assert!(refuse(&trailing).to_string().contains("trailing"));

    let err = refuse(b"-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n");
    assert!(matches!(err, CaError::CsrEncoding { .. }), "{err}");

    let big = vec![b'A'; MAX_CSR_BYTES + 1];
    assert!(matches!(refuse(&big), CaError::CsrTooLarge { .. }));
}

#[test]
fn refuses_the_wrong_pem_label() {
    let key = p256();
    let err = refuse(key.serialize_pem().as_bytes());
    assert_eq!(err.to_string(), "expected a CERTIFICATE REQUEST PEM block, found PRIVATE KEY");
    assert!(!err.to_string().contains("MII"));
    let der = csr_der(&key, &["spiffe://example.org/a"], &[]);
    let two = format!("{0}{0}", to_pem("CERTIFICATE REQUEST", &der));
    assert!(matches!(refuse(two.as_bytes()), CaError::CsrEncoding { .. }));
}

#[test]
fn refuses_a_broken_self_signature() {
    let mut der = csr_der(&p256(), &["spiffe://example.org/a"], &[]);
    // The signature BIT STRING is last: flip a bit inside it.
    let last = der.len() - 2;
    der[last] ^= 0x01;
    let err = refuse(&der);
    assert!(matches!(err, CaError::CsrSignature { .. }), "{err}");
    assert!(err.to_string().contains("proof of possession"), "{err}");
}

#[test]
fn refuses_weak_keys_and_sha1() {
    let err = refuse(RSA_1024_CSR.as_bytes());
    assert!(matches!(err, CaError::UnsupportedKey { .. }), "{err}");
    assert!(err.to_string().contains("RSA-1024"), "{err}");
    let err = refuse(RSA_SHA1_CSR.as_bytes());
    assert!(matches!(err, CaError::CsrSignature { .. }) && err.to_string().contains("SHA-1"), "{err}");
}

#[test]
fn refuses_bad_uri_sans() {
    let key = p256();
    let err = refuse(&csr_der(&key, &[], &["a.example.org"]));
    assert!(matches!(err, CaError::CsrUriSanCount { count: 0 }), "{err}");
    let err = refuse(&csr_der(&key, &["spiffe://example.org/a", "spiffe://example.org/b"], &[]));
    assert!(matches!(err, CaError::CsrUriSanCount { count: 2 }), "{err}");
    assert!(err.to_string().contains("exactly one URI SAN"), "{err}");

    let err = refuse(&csr_der(&key, &["spiffe://example.org/a/../b"], &[]));
    assert!(matches!(err, CaError::CsrSpiffeId { .. }), "{err}");
    assert!(err.to_string().contains("invalid SPIFFE ID"), "{err}");
    let err = refuse(&csr_der(&key, &["https://example.org/a"], &[]));
    assert!(matches!(err, CaError::CsrSpiffeId { .. }), "{err}");

    let err = refuse(&csr_der(&key, &["spiffe://other.org/a"], &[]));
    assert!(matches!(err, CaError::ForeignTrustDomain { .. }), "{err}");
    let text = err.to_string();
    assert!(text.contains("other.org") && text.contains("example.org"), "{text}");
}

#[test]
fn refuses_bad_dns_and_other_san_types() {
    let key = p256();
    let err = refuse(&csr_der(&key, &["spiffe://example.org/a"], &["UPPER.example.org"]));
    assert!(matches!(err, CaError::DnsName { .. }), "{err}");

    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    params.subject_alt_names = vec![
        rcgen::SanType::URI("spiffe://example.org/a".try_into().unwrap()),
        rcgen::SanType::Rfc822Name("a@example.org".try_into().unwrap()),
    ];
    let der = params.serialize_request(&key).unwrap().der().to_vec();
    let err = refuse(&der);
    assert!(matches!(err, CaError::CsrSan { .. }) && err.to_string().contains("email"), "{err}");
}
