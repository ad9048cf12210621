//! Tests across the CA core: hierarchy, CSRs, issuance, import, CRLs.
//! The fixtures below build one root (P-384) and one Services CA (P-256)
//! once per test binary, so tests stay fast.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod chain;
mod crl;
mod csr;
mod issue;

use std::sync::OnceLock;

use rcgen::{CertificateParams, KeyPair, SanType};
use time::{Duration, OffsetDateTime};
use x509_parser::certificate::X509Certificate;
use x509_parser::prelude::FromDer;

use crate::domain::{Serial, SpiffeId, TrustDomain};

use super::{IntermediateParams, KeyAlgorithm, RootParams, Signer, create_intermediate, create_root};

/// 2025-01-01T00:00:00.5Z: sub-second part on purpose (certificates hold whole seconds).
pub(super) fn now() -> OffsetDateTime {
    OffsetDateTime::from_unix_timestamp_nanos(1_735_689_600_500_000_000).unwrap()
}

/// `now()` truncated to whole seconds.
pub(super) fn now_s() -> OffsetDateTime {
    OffsetDateTime::from_unix_timestamp(1_735_689_600).unwrap()
}

pub(super) fn td() -> TrustDomain {
    TrustDomain::parse("example.org").unwrap()
}

pub(super) fn id(s: &str) -> SpiffeId {
    SpiffeId::parse(s).unwrap()
}

/// A 135-bit serial, distinct per `n`.
pub(super) fn serial(n: u8) -> Serial {
    let mut bytes = vec![0x42, n];
    bytes.extend_from_slice(&[0xa5; 15]);
    Serial::from_bytes(&bytes).unwrap()
}

pub(super) const ROOT_DAYS: i64 = 3650;
pub(super) const INTERMEDIATE_DAYS: i64 = 730;

pub(super) struct Hierarchy {
    pub root: Signer,
    pub services: Signer,
}

/// The zero-config hierarchy of SPEC §2: a P-384 root and a P-256 Services CA.
pub(super) fn hierarchy() -> &'static Hierarchy {
    static H: OnceLock<Hierarchy> = OnceLock::new();
    H.get_or_init(|| {
        let root = create_root(
            &RootParams {
                common_name: "trustmesh Root CA".into(),
                algorithm: KeyAlgorithm::EcP384,
                lifetime: Duration::days(ROOT_DAYS),
                trust_domain: td(),
            },
            serial(1),
            now(),
            &ring::rand::SystemRandom::new(),
        )
        .unwrap();
        let services = create_intermediate(
            &root,
            &intermediate("trustmesh Services CA"),
            serial(2),
            now(),
            &ring::rand::SystemRandom::new(),
        )
        .unwrap();
        Hierarchy { root, services }
    })
}

pub(super) fn intermediate(name: &str) -> IntermediateParams {
    IntermediateParams { common_name: name.into(), lifetime: Duration::days(INTERMEDIATE_DAYS), trust_domain: td() }
}

/// A CSR signed by `key` with the given SANs (URIs then DNS names).
pub(super) fn csr_der(key: &KeyPair, uris: &[&str], dns: &[&str]) -> Vec<u8> {
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    for u in uris {
        params.subject_alt_names.push(SanType::URI((*u).try_into().unwrap()));
    }
    for d in dns {
        params.subject_alt_names.push(SanType::DnsName((*d).try_into().unwrap()));
    }
    params.serialize_request(key).unwrap().der().to_vec()
}

pub(super) fn csr_pem(key: &KeyPair, uris: &[&str], dns: &[&str]) -> String {
    super::encoding::to_pem("CERTIFICATE REQUEST", &csr_der(key, uris, dns))
}

pub(super) fn p256() -> KeyPair {
    KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap()
}

pub(super) fn x509(der: &[u8]) -> X509Certificate<'_> {
    let (rest, x) = X509Certificate::from_der(der).unwrap();
    assert!(rest.is_empty());
    x
}
