//! Issuing leaves: X.509-SVIDs (SPIFFE X509-SVID profile, SPEC §4),
//! certificates issued under a profile (the profile's names and usages, with
//! or without a SPIFFE ID), and the server's own TLS certificate. Every
//! certificate is validated after signing ([`super::check::validate_leaf`])
//! before it is returned.

use std::net::IpAddr;

use rcgen::{CertificateParams, IsCa, KeyIdMethod, SanType};
use ring::rand::SecureRandom;
use time::{Duration, OffsetDateTime};
use x509_parser::prelude::FromDer;
use x509_parser::x509::SubjectPublicKeyInfo;

use crate::domain::text::MAX_DNS_NAMES;
use crate::domain::{RESERVED_PATH, Serial, SpiffeId};

use super::asn1::KeyKind;
use super::check::{LeafExpectation, validate_leaf};
use super::encoding::{fingerprint, to_pem};
use super::template::{cert_time, dedup, dns_san, end_of, leaf_serial, spiffe_san, subject};
use super::{CaError, KeyAlgorithm, LeafUsage, PrivateKey, Signer};

/// One X.509-SVID to sign.
#[derive(Debug, Clone)]
pub struct SvidRequest<'a> {
    pub spiffe_id: &'a SpiffeId,
    pub dns_names: &'a [String],
    /// SubjectPublicKeyInfo DER of the subject key (from a CSR or a generated key).
    pub public_key_der: &'a [u8],
    /// Requested lifetime; notAfter = min(now + lifetime, issuer notAfter).
    pub lifetime: Duration,
    /// At least 128 significant bits.
    pub serial: Serial,
    pub common_name: Option<&'a str>,
}

/// One certificate to sign under a profile: its names and usage are what
/// the issuer allowed; a SPIFFE ID (at most one URI SAN) is optional.
#[derive(Debug, Clone)]
pub struct LeafRequest<'a> {
    pub spiffe_id: Option<&'a SpiffeId>,
    pub common_name: Option<&'a str>,
    pub dns_names: &'a [String],
    pub ips: &'a [IpAddr],
    /// SubjectPublicKeyInfo DER of the subject key.
    pub public_key_der: &'a [u8],
    /// notAfter = min(now + lifetime, issuer notAfter).
    pub lifetime: Duration,
    pub serial: Serial,
    pub usage: &'a LeafUsage,
}

/// A signed and validated leaf certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IssuedCertificate {
    pub der: Vec<u8>,
    pub serial: Serial,
    pub fingerprint: String,
    /// The URI SAN: always there in an X.509-SVID, optional under a profile.
    pub spiffe_id: Option<SpiffeId>,
    pub not_before: OffsetDateTime,
    pub not_after: OffsetDateTime,
}

impl IssuedCertificate {
    /// PEM ("CERTIFICATE").
    pub fn to_pem(&self) -> String {
        to_pem("CERTIFICATE", &self.der)
    }
}

/// Signs an X.509-SVID: one URI SAN (the SPIFFE ID) then the DNS SANs,
/// CA:FALSE, keyUsage digitalSignature (+keyEncipherment for RSA), EKU
/// serverAuth + clientAuth, AKI + SKI, notBefore now - 30 s.
///
/// Refuses an identity under [`RESERVED_PATH`]: those are trustmesh's own
/// (the server's TLS certificate), signed only by [`issue_server_certificate`].
pub fn issue_svid(
    issuer: &Signer,
    request: &SvidRequest<'_>,
    now: OffsetDateTime,
) -> Result<IssuedCertificate, CaError> {
    if request.spiffe_id.is_reserved() {
        return Err(CaError::ReservedIdentity { spiffe_id: request.spiffe_id.to_string(), reserved: RESERVED_PATH });
    }
    if request.dns_names.len() > MAX_DNS_NAMES {
        return Err(CaError::TooManyDnsNames { count: request.dns_names.len(), limit: MAX_DNS_NAMES });
    }
    let dns_names = dedup(request.dns_names);
    issue_leaf(
        issuer,
        &Leaf {
            spiffe_id: Some(request.spiffe_id),
            dns_names: &dns_names,
            ips: &[],
            spki: request.public_key_der,
            lifetime: request.lifetime,
            serial: &request.serial,
            common_name: request.common_name,
            usage: None,
        },
        now,
    )
}

/// Signs a certificate under a profile: the SPIFFE ID (if any) as its one
/// URI SAN, then the DNS and IP SANs; CA:FALSE; exactly the requested key
/// usages and extended key usages; AKI + SKI; notBefore backdated as asked.
/// Refuses a reserved identity, as [`issue_svid`] does.
pub fn issue_leaf_certificate(
    issuer: &Signer,
    request: &LeafRequest<'_>,
    now: OffsetDateTime,
) -> Result<IssuedCertificate, CaError> {
    if let Some(id) = request.spiffe_id.filter(|id| id.is_reserved()) {
        return Err(CaError::ReservedIdentity { spiffe_id: id.to_string(), reserved: RESERVED_PATH });
    }
    if request.dns_names.len() > MAX_DNS_NAMES {
        return Err(CaError::TooManyDnsNames { count: request.dns_names.len(), limit: MAX_DNS_NAMES });
    }
    let dns_names = dedup(request.dns_names);
    let mut ips = request.ips.to_vec();
    ips.dedup();
    issue_leaf(
        issuer,
        &Leaf {
            spiffe_id: request.spiffe_id,
            dns_names: &dns_names,
            ips: &ips,
            spki: request.public_key_der,
            lifetime: request.lifetime,
            serial: &request.serial,
            common_name: request.common_name,
            usage: Some(request.usage),
        },
        now,
    )
}

/// The server's own TLS certificate: a fresh P-256 key and the SVID profile,
/// with `names` split into DNS SANs and IP SANs ("127.0.0.1", "::1").
pub fn issue_server_certificate(
    issuer: &Signer,
    spiffe_id: &SpiffeId,
    names: &[String],
    lifetime: Duration,
    serial: Serial,
    now: OffsetDateTime,
    rng: &dyn SecureRandom,
) -> Result<(IssuedCertificate, PrivateKey), CaError> {
    let mut dns_names = Vec::new();
    let mut ips = Vec::new();
    for name in dedup(names) {
        match name.parse::<IpAddr>() {
            Ok(ip) => ips.push(ip),
            Err(_) => dns_names.push(name),
        }
    }
    let key = PrivateKey::generate(KeyAlgorithm::EcP256, rng)?;
    let spki = key.public_key_der();
    let issued = issue_leaf(
        issuer,
        &Leaf {
            spiffe_id: Some(spiffe_id),
            dns_names: &dns_names,
            ips: &ips,
            spki: &spki,
            lifetime,
            serial: &serial,
            common_name: None,
            usage: None,
        },
        now,
    )?;
    Ok((issued, key))
}

pub(super) struct Leaf<'a> {
    pub(super) spiffe_id: Option<&'a SpiffeId>,
    pub(super) dns_names: &'a [String],
    pub(super) ips: &'a [IpAddr],
    pub(super) spki: &'a [u8],
    pub(super) lifetime: Duration,
    pub(super) serial: &'a Serial,
    pub(super) common_name: Option<&'a str>,
    /// `None`: the X.509-SVID usage for the key's type.
    pub(super) usage: Option<&'a LeafUsage>,
}

pub(super) fn issue_leaf(issuer: &Signer, leaf: &Leaf<'_>, now: OffsetDateTime) -> Result<IssuedCertificate, CaError> {
    let serial_number = leaf_serial(leaf.serial)?;
    if let (Some(td), Some(id)) = (issuer.cert.trust_domain(), leaf.spiffe_id)
        && !id.is_member_of(td)
    {
        return Err(CaError::ForeignTrustDomain {
            spiffe_id: id.to_string(),
            found: id.trust_domain().to_string(),
            expected: td.to_string(),
        });
    }
    let requested_end = end_of(now, leaf.lifetime)?;
    if issuer.cert.not_after <= now {
        return Err(CaError::IssuerExpired { subject: issuer.cert.label(), not_after: issuer.cert.not_after });
    }
    let not_after = cert_time(requested_end.min(issuer.cert.not_after))?;

    let (_, spki) = SubjectPublicKeyInfo::from_der(leaf.spki).map_err(|e| CaError::UnsupportedKey {
        key_type: "unknown".to_string(),
        reason: format!("the public key is not a valid SubjectPublicKeyInfo: {e}"),
    })?;
    let kind = KeyKind::of(&spki);
    kind.check_subject_key()?;
    let public_key = rcgen::SubjectPublicKeyInfo::from_der(leaf.spki)
        .map_err(|e| CaError::UnsupportedKey { key_type: kind.to_string(), reason: e.to_string() })?;
    let svid_usage;
    let usage = match leaf.usage {
        Some(usage) => usage,
        None => {
            svid_usage = LeafUsage::svid(kind.is_rsa());
            &svid_usage
        }
    };
    let not_before = cert_time((now - usage.backdate).max(issuer.cert.not_before))?;

    let mut sans: Vec<SanType> = Vec::with_capacity(1 + leaf.dns_names.len() + leaf.ips.len());
    if let Some(id) = leaf.spiffe_id {
        sans.push(spiffe_san(id)?);
    }
    for name in leaf.dns_names {
        sans.push(dns_san(name)?);
    }
    sans.extend(leaf.ips.iter().map(|ip| SanType::IpAddress(*ip)));

    let mut p = CertificateParams::default();
    p.distinguished_name = subject(leaf.common_name)?;
    p.serial_number = Some(serial_number);
    p.not_before = not_before;
    p.not_after = not_after;
    p.subject_alt_names = sans;
    p.is_ca = IsCa::ExplicitNoCa;
    p.key_usages = usage.rcgen_key_usages();
    p.extended_key_usages = usage.rcgen_ext_key_usages();
    p.use_authority_key_identifier_extension = true;
    p.key_identifier_method = KeyIdMethod::Sha256;

    let cert = p.signed_by(&public_key, &issuer.rcgen_issuer()?).map_err(CaError::signing)?;
    let der = cert.der().to_vec();
    validate_leaf(
        issuer,
        &der,
        &LeafExpectation {
            spiffe_id: leaf.spiffe_id,
            dns_names: leaf.dns_names,
            ips: leaf.ips,
            spki: leaf.spki,
            serial: leaf.serial,
            not_before,
            not_after,
            usage,
        },
    )?;
    Ok(IssuedCertificate {
        fingerprint: fingerprint(&der),
        der,
        serial: leaf.serial.clone(),
        spiffe_id: leaf.spiffe_id.cloned(),
        not_before,
        not_after,
    })
}
