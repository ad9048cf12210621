//! Making CAs: a self-signed root, intermediates below a signer, and
//! importing an existing CA (certificate chain + key) from PEM.

use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyIdMethod, KeyUsagePurpose};
use ring::rand::SecureRandom;
use time::{Duration, OffsetDateTime};

use crate::domain::{Serial, TrustDomain};

use super::check::{CaExpectation, validate_ca};
use super::encoding::certs_from_pem;
use super::template::{CA_BACKDATE, cert_time, end_of, subject, trust_domain_san};
use super::{CaCertificate, CaError, KeyAlgorithm, PrivateKey, Signer};

/// Path length of a root: one level of intermediates, then leaves.
const ROOT_PATH_LEN: u8 = 1;

/// What `trustmesh pki init` (or the zero-config start) asks of a root.
#[derive(Debug, Clone)]
pub struct RootParams {
    pub common_name: String,
    pub algorithm: KeyAlgorithm,
    pub lifetime: Duration,
    pub trust_domain: TrustDomain,
}

/// An intermediate below a signer (the Services and Transport CAs).
#[derive(Debug, Clone)]
pub struct IntermediateParams {
    pub common_name: String,
    pub lifetime: Duration,
    pub trust_domain: TrustDomain,
}

/// A CA whose key was given to us (an offline root's intermediate, or a root).
#[derive(Debug, Clone)]
pub struct ImportedCa {
    pub signer: Signer,
}

/// A new self-signed root: CA:TRUE pathlen 1 (critical), keyUsage
/// keyCertSign + cRLSign (critical), SKI, URI SAN `spiffe://<td>`,
/// subject CN + O=trustmesh, notBefore backdated 60 s.
pub fn create_root(
    params: &RootParams,
    serial: Serial,
    now: OffsetDateTime,
    rng: &dyn SecureRandom,
) -> Result<Signer, CaError> {
    let not_before = cert_time(now - CA_BACKDATE)?;
    let not_after = cert_time(end_of(now, params.lifetime)?)?;
    let key = PrivateKey::generate(params.algorithm, rng)?;
    let template = ca_template(
        &params.common_name,
        &params.trust_domain,
        BasicConstraints::Constrained(ROOT_PATH_LEN),
        &serial,
        not_before,
        not_after,
    )?;
    let cert = template.self_signed(&key.rcgen()).map_err(CaError::signing)?;
    let cert = CaCertificate::from_der(cert.der())?;
    validate_ca(
        &cert,
        None,
        &CaExpectation {
            trust_domain: &params.trust_domain,
            path_len: Some(u32::from(ROOT_PATH_LEN)),
            serial: &serial,
            not_before,
            not_after,
        },
    )?;
    Signer::new(cert, key, Vec::new())
}

/// A new intermediate signed by `parent`: fresh EC P-256 key, CA:TRUE
/// pathlen 0, keyUsage keyCertSign + cRLSign, AKI + SKI, URI SAN
/// `spiffe://<td>`; its validity is capped by the parent's.
pub fn create_intermediate(
    parent: &Signer,
    params: &IntermediateParams,
    serial: Serial,
    now: OffsetDateTime,
    rng: &dyn SecureRandom,
) -> Result<Signer, CaError> {
    if let Some(td) = parent.cert.trust_domain()
        && *td != params.trust_domain
    {
        return Err(CaError::TrustDomainMismatch {
            subject: parent.cert.label(),
            found: td.to_string(),
            expected: params.trust_domain.to_string(),
        });
    }
    if parent.cert.not_after <= now {
        return Err(CaError::IssuerExpired { subject: parent.cert.label(), not_after: parent.cert.not_after });
    }
    let not_before = cert_time((now - CA_BACKDATE).max(parent.cert.not_before))?;
    let not_after = cert_time(end_of(now, params.lifetime)?.min(parent.cert.not_after))?;
    let key = PrivateKey::generate(KeyAlgorithm::EcP256, rng)?;
    let mut template = ca_template(
        &params.common_name,
        &params.trust_domain,
        BasicConstraints::Constrained(0),
        &serial,
        not_before,
        not_after,
    )?;
    template.use_authority_key_identifier_extension = true;
    let issuer = parent.rcgen_issuer()?;
    let cert = template.signed_by(&key.rcgen(), &issuer).map_err(CaError::signing)?;
    let cert = CaCertificate::from_der(cert.der())?;
    validate_ca(
        &cert,
        Some(&parent.cert),
        &CaExpectation {
            trust_domain: &params.trust_domain,
            path_len: Some(0),
            serial: &serial,
            not_before,
            not_after,
        },
    )?;
    let mut parents = Vec::with_capacity(parent.parents.len() + 1);
    parents.push(parent.cert.clone());
    parents.extend(parent.parents.iter().cloned());
    Signer::new(cert, key, parents)
}

/// Imports a CA: `cert_pem` holds its certificate, optionally followed by
/// its parents up to a self-signed root; `key_pem` its private key (PKCS#8
/// or SEC1, EC P-256/P-384). Every certificate must be a CA with
/// keyCertSign, the key must match, each certificate must be signed by the
/// next, and the last must be self-signed.
pub fn import_ca(cert_pem: &str, key_pem: &str) -> Result<ImportedCa, CaError> {
    let ders = certs_from_pem(cert_pem)?;
    let mut certs = Vec::with_capacity(ders.len());
    for (i, der) in ders.iter().enumerate() {
        let cert = CaCertificate::from_der(der).map_err(|e| match e {
            CaError::InvalidCertificate { reason } => {
                CaError::certificate(format!("certificate #{} of the PEM input: {reason}", i + 1))
            }
            other => other,
        })?;
        certs.push(cert);
    }
    let key = PrivateKey::from_pem(key_pem)?;
    let mut certs = certs.into_iter();
    let cert = certs.next().ok_or(CaError::NoCertificates)?;
    let signer = Signer::new(cert, key, certs.collect())?;
    Ok(ImportedCa { signer })
}

fn ca_template(
    common_name: &str,
    td: &TrustDomain,
    constraints: BasicConstraints,
    serial: &Serial,
    not_before: OffsetDateTime,
    not_after: OffsetDateTime,
) -> Result<CertificateParams, CaError> {
    let mut p = CertificateParams::default();
    p.distinguished_name = subject(Some(common_name))?;
    p.serial_number = Some(rcgen::SerialNumber::from_slice(serial.as_bytes()));
    p.not_before = not_before;
    p.not_after = not_after;
    p.is_ca = IsCa::Ca(constraints);
    p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    p.subject_alt_names = vec![trust_domain_san(td)?];
    p.key_identifier_method = KeyIdMethod::Sha256;
    Ok(p)
}
