//! PKCS#10 certificate signing requests, parsed and checked in full before
//! anything is signed: size, encoding, key type, proof of possession, and
//! the one SPIFFE ID they ask for ([`parse_csr`]), or, for a profile's
//! `sign`, every name they ask for, judged by the profile later
//! ([`parse_csr_request`]).

use std::borrow::Cow;
use std::net::IpAddr;

use x509_parser::certification_request::X509CertificationRequest;
use x509_parser::cri_attributes::ParsedCriAttribute;
use x509_parser::extensions::{GeneralName, ParsedExtension};
use x509_parser::oid_registry::{OID_PKCS1_SHA1WITHRSA, OID_SHA1_WITH_RSA, OID_X509_EXT_SUBJECT_ALT_NAME};
use x509_parser::prelude::FromDer;

use crate::domain::{KeyShape, SpiffeId, TrustDomain};

use super::CaError;
use super::asn1::{KeyKind, announced_len};
use super::template::check_dns_name;
use crate::domain::text::{self, MAX_DNS_NAMES};

/// Largest CSR accepted, PEM or DER.
pub const MAX_CSR_BYTES: usize = 64 * 1024;

const CSR_LABELS: [&str; 2] = ["CERTIFICATE REQUEST", "NEW CERTIFICATE REQUEST"];

/// A parsed and fully checked PKCS#10 CSR.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Csr {
    /// The one URI SAN, a SPIFFE ID of the expected trust domain.
    pub spiffe_id: SpiffeId,
    /// DNS SANs, each a valid DNS name.
    pub dns_names: Vec<String>,
    /// SubjectPublicKeyInfo DER of the key whose possession was proven.
    pub public_key_der: Vec<u8>,
    /// "EC-P256", "EC-P384", "Ed25519", "RSA-2048", …
    pub key_algorithm: String,
}

/// A CSR whose encoding, key and signature are checked, with every name it
/// asks for, for a profile to judge.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CsrRequest {
    /// The subject's first CN, when it has one.
    pub common_name: Option<String>,
    pub uris: Vec<String>,
    pub dns_names: Vec<String>,
    pub ips: Vec<IpAddr>,
    /// SubjectPublicKeyInfo DER of the key whose possession was proven.
    pub public_key_der: Vec<u8>,
    pub key: KeyShape,
    /// "EC-P256", "RSA-2048", "Ed25519", …
    pub key_algorithm: String,
}

/// Parses a CSR (PEM "CERTIFICATE REQUEST" / "NEW CERTIFICATE REQUEST", or
/// DER) and checks it: at most 64 KiB, an accepted key type, a valid
/// self-signature, exactly one URI SAN that is a SPIFFE ID in `trust_domain`,
/// and valid DNS SANs (no other SAN types).
pub fn parse_csr(input: &[u8], trust_domain: &TrustDomain) -> Result<Csr, CaError> {
    let req = parse_csr_request(input)?;
    if !req.ips.is_empty() {
        return Err(CaError::CsrSan { reason: "only URI and DNS names are accepted, found an IP address".into() });
    }
    let [uri] = req.uris.as_slice() else {
        return Err(CaError::CsrUriSanCount { count: req.uris.len() });
    };
    let spiffe_id = SpiffeId::parse(uri).map_err(|source| CaError::CsrSpiffeId { source })?;
    if !spiffe_id.is_member_of(trust_domain) {
        return Err(CaError::ForeignTrustDomain {
            spiffe_id: spiffe_id.to_string(),
            found: spiffe_id.trust_domain().to_string(),
            expected: trust_domain.to_string(),
        });
    }
    if req.dns_names.len() > MAX_DNS_NAMES {
        return Err(CaError::TooManyDnsNames { count: req.dns_names.len(), limit: MAX_DNS_NAMES });
    }
    for name in &req.dns_names {
        check_dns_name(name)?;
    }
    Ok(Csr {
        spiffe_id,
        dns_names: req.dns_names,
        public_key_der: req.public_key_der,
        key_algorithm: req.key_algorithm,
    })
}

/// Parses and checks a CSR as [`parse_csr`] does, up to and including its
/// proof of possession, and returns every name it asks for: its CN and its
/// URI, DNS and IP SANs (any other SAN type is refused).
pub fn parse_csr_request(input: &[u8]) -> Result<CsrRequest, CaError> {
    if input.len() > MAX_CSR_BYTES {
        return Err(CaError::CsrTooLarge { size: input.len(), limit: MAX_CSR_BYTES });
    }
    let der = csr_der(input)?;
    let (rest, req) = X509CertificationRequest::from_der(&der).map_err(|e| encoding(&der, &e.to_string()))?;
    if !rest.is_empty() {
        return Err(encoding_error(format!("{} trailing bytes after the csr", rest.len())));
    }
    let info = &req.certification_request_info;

    let kind = KeyKind::of(&info.subject_pki);
    kind.check_subject_key()?;

    let alg = &req.signature_algorithm.algorithm;
    if *alg == OID_PKCS1_SHA1WITHRSA || *alg == OID_SHA1_WITH_RSA {
        return Err(CaError::CsrSignature {
            reason: "SHA-1 signatures are not accepted; sign the csr with SHA-256".to_string(),
        });
    }
    req.verify_signature().map_err(|e| CaError::CsrSignature { reason: e.to_string() })?;
    let key = kind.shape().ok_or_else(|| CaError::UnsupportedKey {
        key_type: kind.to_string(),
        reason: "unknown public key algorithm".into(),
    })?;
    let (uris, dns_names, ips) = requested_names(&req)?;
    let common_name = info.subject.iter_common_name().next().and_then(|cn| cn.as_str().ok()).map(str::to_string);
    Ok(CsrRequest {
        common_name,
        uris,
        dns_names,
        ips,
        public_key_der: info.subject_pki.raw.to_vec(),
        key,
        key_algorithm: kind.to_string(),
    })
}

/// The DER of the CSR: the one CSR block of PEM input, or the input itself.
fn csr_der(input: &[u8]) -> Result<Cow<'_, [u8]>, CaError> {
    let start = input.iter().position(|b| !b.is_ascii_whitespace()).unwrap_or(input.len());
    if !input[start..].starts_with(b"-----BEGIN") {
        return match input.first() {
            Some(0x30) => Ok(Cow::Borrowed(input)),
            Some(b) => {
                Err(encoding_error(format!("neither a PEM block nor DER (DER starts with 0x30, found 0x{b:02x})")))
            }
            None => Err(encoding_error("empty input".to_string())),
        };
    }
    let blocks = ::pem::parse_many(input).map_err(|e| encoding_error(e.to_string()))?;
    if blocks.is_empty() {
        return Err(encoding_error("no complete PEM block (missing END line?)".to_string()));
    }
    let labels: Vec<String> = blocks.iter().map(|b| text::shorten(b.tag(), 64)).collect();
    let mut csrs: Vec<::pem::Pem> = blocks.into_iter().filter(|b| CSR_LABELS.contains(&b.tag())).collect();
    if csrs.len() > 1 {
        return Err(encoding_error(format!("{} CERTIFICATE REQUEST blocks, expected one", csrs.len())));
    }
    let Some(first) = csrs.pop() else {
        return Err(CaError::CsrPemLabel { found: labels.join(", ") });
    };
    Ok(Cow::Owned(first.into_contents()))
}

type Names = (Vec<String>, Vec<String>, Vec<IpAddr>);

/// URI, DNS and IP SANs requested in the extensionRequest attribute.
fn requested_names(req: &X509CertificationRequest<'_>) -> Result<Names, CaError> {
    let san_error = |reason: String| CaError::CsrSan { reason };
    let mut uris = Vec::new();
    let mut dns = Vec::new();
    let mut ips = Vec::new();
    let mut seen = false;
    for attr in req.certification_request_info.iter_attributes() {
        let ParsedCriAttribute::ExtensionRequest(ext_req) = attr.parsed_attribute() else {
            continue;
        };
        for ext in ext_req.extensions.iter().filter(|e| e.oid == OID_X509_EXT_SUBJECT_ALT_NAME) {
            if seen {
                return Err(san_error("more than one subjectAltName extension".to_string()));
            }
            seen = true;
            let ParsedExtension::SubjectAlternativeName(san) = ext.parsed_extension() else {
                return Err(san_error("the subjectAltName extension is malformed".to_string()));
            };
            for name in &san.general_names {
                match name {
                    GeneralName::URI(u) => uris.push((*u).to_string()),
                    GeneralName::DNSName(d) => dns.push((*d).to_string()),
                    GeneralName::IPAddress(bytes) => ips.push(ip_of(bytes).ok_or_else(|| {
                        san_error(format!("an IP address SAN of {} bytes (4 or 16 expected)", bytes.len()))
                    })?),
                    other => {
                        return Err(san_error(format!(
                            "only URI, DNS and IP names are accepted, found {}",
                            kind_of(other)
                        )));
                    }
                }
            }
        }
    }
    Ok((uris, dns, ips))
}

fn ip_of(bytes: &[u8]) -> Option<IpAddr> {
    match bytes.len() {
        4 => <[u8; 4]>::try_from(bytes).ok().map(IpAddr::from),
        16 => <[u8; 16]>::try_from(bytes).ok().map(IpAddr::from),
        _ => None,
    }
}

fn kind_of(name: &GeneralName<'_>) -> &'static str {
    match name {
        GeneralName::OtherName(..) => "an otherName",
        GeneralName::RFC822Name(_) => "an email address",
        GeneralName::X400Address(_) => "an X.400 address",
        GeneralName::DirectoryName(_) => "a directory name",
        GeneralName::EDIPartyName(_) => "an EDI party name",
        GeneralName::IPAddress(_) => "an IP address",
        GeneralName::RegisteredID(_) => "a registered ID",
        GeneralName::Invalid(..) => "an undecodable name",
        GeneralName::URI(_) => "a URI",
        GeneralName::DNSName(_) => "a DNS name",
    }
}

fn encoding(der: &[u8], parser_error: &str) -> CaError {
    match announced_len(der) {
        Some(n) if n > der.len() => {
            encoding_error(format!("truncated: the DER header announces {n} bytes, only {} are present", der.len()))
        }
        _ => encoding_error(parser_error.to_string()),
    }
}

fn encoding_error(reason: String) -> CaError {
    CaError::CsrEncoding { reason }
}
