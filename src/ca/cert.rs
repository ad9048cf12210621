//! CA certificates and signers.
//!
//! Invariant: a [`CaCertificate`] can only be made by parsing, and only holds
//! a certificate with basicConstraints CA:TRUE and keyUsage keyCertSign. A
//! [`Signer`] only exists when its key matches its certificate and its chain
//! links, signature by signature, up to a self-signed root.

use time::OffsetDateTime;
use x509_parser::certificate::X509Certificate;
use x509_parser::extensions::{GeneralName, ParsedExtension};
use x509_parser::prelude::FromDer;

use crate::domain::{Serial, TrustDomain};

use super::asn1::KeyKind;
use super::encoding::{fingerprint, to_pem};
use super::key::RcgenKey;
use super::{CaError, PrivateKey};

/// Longest chain above a signer that we accept.
const MAX_PARENTS: usize = 8;

/// A parsed CA certificate (the public part of a CA).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CaCertificate {
    pub der: Vec<u8>,
    /// SHA-256 of the DER, lowercase hex.
    pub fingerprint: String,
    /// The subject CN ("" when there is none).
    pub common_name: String,
    pub not_before: OffsetDateTime,
    pub not_after: OffsetDateTime,
    /// Subject equals issuer and the certificate verifies with its own key.
    pub self_signed: bool,
    /// Key type of the certificate: "EC-P256", "EC-P384", "RSA-4096", …
    pub algorithm: String,
    /// What its parent's CRL lists when it is revoked.
    pub serial: Serial,
    subject_key_id: Option<Vec<u8>>,
    path_len: Option<u32>,
    trust_domain: Option<TrustDomain>,
}

/// A CA that can sign: its certificate, its key, and the chain above it up
/// to the root (issuer first, root last; empty for a root).
#[derive(Debug, Clone)]
pub struct Signer {
    pub cert: CaCertificate,
    key: PrivateKey,
    pub parents: Vec<CaCertificate>,
}

impl CaCertificate {
    /// Parses one DER certificate and checks that it is a CA certificate.
    pub fn from_der(der: &[u8]) -> Result<Self, CaError> {
        let x = parse(der)?;
        let subject = display_name(&x);
        let not_a_ca = |reason: &str| CaError::NotACa { subject: subject.clone(), reason: reason.to_string() };
        let bc =
            x.basic_constraints().map_err(|e| CaError::certificate(format!("{subject}: basicConstraints: {e}")))?;
        let path_len = match bc {
            Some(bc) if bc.value.ca => bc.value.path_len_constraint,
            _ => return Err(not_a_ca("basicConstraints CA:TRUE is missing")),
        };
        match x.key_usage() {
            Ok(Some(ku)) if ku.value.key_cert_sign() => {}
            Ok(_) => return Err(not_a_ca("keyUsage keyCertSign is missing")),
            Err(e) => return Err(CaError::certificate(format!("{subject}: keyUsage: {e}"))),
        }
        let self_signed = x.subject().as_raw() == x.issuer().as_raw() && x.verify_signature(None).is_ok();
        let serial =
            Serial::from_bytes(x.raw_serial()).map_err(|e| CaError::certificate(format!("{subject}: serial: {e}")))?;
        Ok(Self {
            der: der.to_vec(),
            fingerprint: fingerprint(der),
            common_name: common_name(&x).unwrap_or_default(),
            not_before: x.validity().not_before.to_datetime(),
            not_after: x.validity().not_after.to_datetime(),
            self_signed,
            algorithm: KeyKind::of(x.public_key()).to_string(),
            serial,
            subject_key_id: subject_key_id(&x),
            path_len,
            trust_domain: trust_domain(&x),
        })
    }

    /// PEM ("CERTIFICATE").
    pub fn to_pem(&self) -> String {
        to_pem("CERTIFICATE", &self.der)
    }

    /// The trust domain named by a `spiffe://<td>` URI SAN, if the CA has one.
    pub fn trust_domain(&self) -> Option<&TrustDomain> {
        self.trust_domain.as_ref()
    }

    /// The subjectKeyIdentifier, if present.
    pub fn subject_key_id(&self) -> Option<&[u8]> {
        self.subject_key_id.as_deref()
    }

    /// basicConstraints pathLenConstraint (`None`: unlimited).
    pub fn path_len(&self) -> Option<u32> {
        self.path_len
    }

    /// The CN, or the fingerprint when the certificate has no CN.
    pub(crate) fn label(&self) -> String {
        if self.common_name.is_empty() { format!("sha256:{}", self.fingerprint) } else { self.common_name.clone() }
    }
}

impl Signer {
    /// Checks that `key` matches `cert` and that `parents` link `cert` to a
    /// self-signed root (signatures, names, key identifiers, path lengths).
    pub fn new(cert: CaCertificate, key: PrivateKey, parents: Vec<CaCertificate>) -> Result<Self, CaError> {
        let x = parse(&cert.der)?;
        if x.public_key().raw != key.public_key_der().as_slice() {
            return Err(CaError::KeyMismatch { subject: cert.label() });
        }
        verify_chain(&cert, &parents)?;
        Ok(Self { cert, key, parents })
    }

    pub fn key(&self) -> &PrivateKey {
        &self.key
    }

    /// The root at the top of the chain (the signer itself for a root).
    pub fn root(&self) -> &CaCertificate {
        self.parents.last().unwrap_or(&self.cert)
    }

    /// The signer's certificate, then its parents up to the root.
    pub fn chain(&self) -> impl Iterator<Item = &CaCertificate> {
        std::iter::once(&self.cert).chain(self.parents.iter())
    }

    /// rcgen's view of this CA: subject, key identifier, key usages and key.
    pub(crate) fn rcgen_issuer(&self) -> Result<rcgen::Issuer<'static, RcgenKey<'_>>, CaError> {
        let der = rustls_pki_types::CertificateDer::from(self.cert.der.as_slice());
        rcgen::Issuer::from_ca_cert_der(&der, self.key.rcgen()).map_err(|e| CaError::NotACa {
            subject: self.cert.label(),
            reason: format!("its subject cannot be re-encoded for issuing ({e})"),
        })
    }
}

/// Verifies that `cert` is signed by `parents[0]`, each parent by the next,
/// and that the last one is a self-signed root.
pub(crate) fn verify_chain(cert: &CaCertificate, parents: &[CaCertificate]) -> Result<(), CaError> {
    let chain_error = |reason: String| CaError::Chain { reason };
    if parents.len() > MAX_PARENTS {
        return Err(chain_error(format!(
            "{} certificates above the CA, at most {MAX_PARENTS} are accepted",
            parents.len()
        )));
    }
    let chain: Vec<&CaCertificate> = std::iter::once(cert).chain(parents.iter()).collect();
    for (depth, pair) in chain.windows(2).enumerate() {
        let (child, parent) = (pair[0], pair[1]);
        if child.self_signed {
            return Err(chain_error(format!("{} is self-signed but more certificates follow it", child.label())));
        }
        verify_issued_by(&child.der, parent).map_err(chain_error)?;
        // `depth` CA certificates sit between `parent` and a leaf issued by `cert`.
        if parent.path_len.is_some_and(|p| (p as usize) < depth + 1) {
            return Err(chain_error(format!(
                "{} has pathLenConstraint {} and cannot have {} CA certificate(s) below it",
                parent.label(),
                parent.path_len.unwrap_or(0),
                depth + 1
            )));
        }
    }
    match chain.last() {
        Some(top) if top.self_signed => Ok(()),
        Some(top) => Err(chain_error(format!(
            "chain does not end at a self-signed root ({} is issued by someone else; append its issuer up to the root)",
            top.label()
        ))),
        None => Err(chain_error("empty chain".to_string())),
    }
}

/// Checks one link: names, key identifiers, signature. The error is a reason text.
pub(crate) fn verify_issued_by(child_der: &[u8], parent: &CaCertificate) -> Result<(), String> {
    let child = parse(child_der).map_err(|e| e.to_string())?;
    let p = parse(&parent.der).map_err(|e| e.to_string())?;
    let child_name = display_name(&child);
    if child.issuer().as_raw() != p.subject().as_raw() {
        return Err(format!(
            "the issuer of {child_name} ({}) is not the subject of {} ({})",
            child.issuer(),
            parent.label(),
            p.subject()
        ));
    }
    if let (Some(aki), Some(ski)) = (authority_key_id(&child), parent.subject_key_id())
        && aki != ski
    {
        return Err(format!(
            "the authorityKeyIdentifier of {child_name} does not match the subjectKeyIdentifier of {}",
            parent.label()
        ));
    }
    child
        .verify_signature(Some(p.public_key()))
        .map_err(|e| format!("the signature of {child_name} does not verify with the key of {} ({e})", parent.label()))
}

pub(crate) fn parse(der: &[u8]) -> Result<X509Certificate<'_>, CaError> {
    let (rest, x) =
        X509Certificate::from_der(der).map_err(|e| CaError::certificate(format!("cannot parse DER: {e}")))?;
    if !rest.is_empty() {
        return Err(CaError::certificate(format!("{} trailing bytes after the certificate", rest.len())));
    }
    Ok(x)
}

pub(crate) fn common_name(x: &X509Certificate<'_>) -> Option<String> {
    x.subject().iter_common_name().next().and_then(|cn| cn.as_str().ok()).map(str::to_string)
}

/// The CN, or the whole subject when there is no CN.
fn display_name(x: &X509Certificate<'_>) -> String {
    common_name(x).unwrap_or_else(|| x.subject().to_string())
}

pub(crate) fn subject_key_id(x: &X509Certificate<'_>) -> Option<Vec<u8>> {
    x.iter_extensions().find_map(|ext| match ext.parsed_extension() {
        ParsedExtension::SubjectKeyIdentifier(k) => Some(k.0.to_vec()),
        _ => None,
    })
}

pub(crate) fn authority_key_id<'a>(x: &'a X509Certificate<'_>) -> Option<&'a [u8]> {
    x.iter_extensions().find_map(|ext| match ext.parsed_extension() {
        ParsedExtension::AuthorityKeyIdentifier(a) => a.key_identifier.as_ref().map(|k| k.0),
        _ => None,
    })
}

/// All URI SANs of a certificate (empty without a SAN extension).
pub(crate) fn uri_sans<'a>(x: &'a X509Certificate<'_>) -> Vec<&'a str> {
    match x.subject_alternative_name() {
        Ok(Some(san)) => san
            .value
            .general_names
            .iter()
            .filter_map(|n| match n {
                GeneralName::URI(u) => Some(*u),
                _ => None,
            })
            .collect(),
        _ => Vec::new(),
    }
}

fn trust_domain(x: &X509Certificate<'_>) -> Option<TrustDomain> {
    uri_sans(x).into_iter().find_map(|uri| {
        let name = uri.strip_prefix("spiffe://")?;
        TrustDomain::parse(name.trim_end_matches('/')).ok()
    })
}
