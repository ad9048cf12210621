//! The one error type of the CA core.
//!
//! Messages are lowercase, name the offending value (a subject, a label, a
//! serial, a size) and never contain key material: a sealed blob, a PEM body
//! or a key byte never reaches a `format!` here.

use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::domain::DomainError;

use super::KeyAlgorithm;

/// Everything that can go wrong in the CA core.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CaError {
    // --- keys -------------------------------------------------------------
    #[error("unknown key algorithm {value:?} (expected EC-P256 or EC-P384)")]
    UnknownAlgorithm { value: String },
    #[error("generating an {algorithm} key failed")]
    KeyGeneration { algorithm: KeyAlgorithm },
    #[error("invalid private key: {reason}")]
    InvalidKey { reason: String },
    #[error("the private key does not match the certificate {subject:?}")]
    KeyMismatch { subject: String },
    #[error("cannot generate a {key} key: {reason}")]
    LeafKey { key: String, reason: String },

    // --- key-encryption key -------------------------------------------------
    #[error("invalid key-encryption key: {reason}")]
    InvalidKek { reason: String },
    #[error("cannot seal data: {reason}")]
    Seal { reason: &'static str },
    #[error("cannot open sealed data: {reason}")]
    Unseal { reason: &'static str },

    // --- certificates and chains -------------------------------------------
    #[error("invalid PEM: {reason}")]
    Pem { reason: String },
    #[error("no CERTIFICATE block found in the PEM input")]
    NoCertificates,
    #[error("invalid certificate: {reason}")]
    InvalidCertificate { reason: String },
    #[error("certificate {subject:?} cannot act as a CA: {reason}")]
    NotACa { subject: String, reason: String },
    #[error("invalid CA chain: {reason}")]
    Chain { reason: String },

    // --- CSRs -------------------------------------------------------------
    #[error("csr is {size} bytes, more than the {limit} bytes accepted")]
    CsrTooLarge { size: usize, limit: usize },
    #[error("csr is not valid PEM or DER: {reason}")]
    CsrEncoding { reason: String },
    #[error("expected a CERTIFICATE REQUEST PEM block, found {found}")]
    CsrPemLabel { found: String },
    #[error("key type {key_type} is not accepted ({reason}); use EC P-256, EC P-384, Ed25519 or RSA >= 2048")]
    UnsupportedKey { key_type: String, reason: String },
    #[error("csr signature does not verify (proof of possession failed): {reason}")]
    CsrSignature { reason: String },
    #[error("csr must carry exactly one URI SAN (the SPIFFE ID), found {count}")]
    CsrUriSanCount { count: usize },
    #[error("csr URI SAN is not a valid SPIFFE ID: {source}")]
    CsrSpiffeId {
        #[source]
        source: DomainError,
    },
    #[error("csr subjectAltName is not accepted: {reason}")]
    CsrSan { reason: String },
    #[error("SPIFFE ID {spiffe_id} belongs to trust domain {found}, not to {expected}")]
    ForeignTrustDomain { spiffe_id: String, found: String, expected: String },

    #[error("CA {subject:?} serves trust domain {found}, not {expected}")]
    TrustDomainMismatch { subject: String, found: String, expected: String },

    // --- issuance ---------------------------------------------------------
    #[error(
        "{spiffe_id} is under {reserved}/, which names trustmesh's own components; \
         only the Transport CA signs those"
    )]
    ReservedIdentity { spiffe_id: String, reserved: &'static str },
    #[error("{count} DNS names requested; a certificate carries at most {limit}")]
    TooManyDnsNames { count: usize, limit: usize },
    #[error("invalid DNS name {name:?}: {reason}")]
    DnsName { name: String, reason: &'static str },
    #[error("invalid common name {name:?}: {reason}")]
    CommonName { name: String, reason: &'static str },
    #[error("serial {serial} has {bits} significant bits; at least 128 are required")]
    SerialTooShort { serial: String, bits: usize },
    #[error("invalid certificate usage: {reason}")]
    Usage { reason: String },
    #[error("lifetime must be positive, got {seconds} s")]
    Lifetime { seconds: i64 },
    #[error("issuer {subject:?} expired at {}", rfc3339(.not_after))]
    IssuerExpired { subject: String, not_after: OffsetDateTime },
    #[error("time {} cannot be written into a certificate", rfc3339(.value))]
    Time { value: OffsetDateTime },
    #[error("signing failed: {reason}")]
    Signing { reason: String },
    #[error("the certificate just signed (serial {serial}) failed validation: {reason}")]
    SelfCheck { serial: String, reason: String },

    // --- revocation -------------------------------------------------------
    #[error("invalid CRL request: {reason}")]
    Crl { reason: String },
    #[error("not an acceptable CRL: {reason}")]
    InvalidCrl { reason: String },

    #[error("the system random number generator failed")]
    Randomness,
}

impl CaError {
    /// Whether the error is about what a caller sent (a CSR, a CRL, PEM, a
    /// name, a lifetime) rather than about this CA: the caller can fix it.
    pub fn is_bad_input(&self) -> bool {
        matches!(
            self,
            Self::UnknownAlgorithm { .. }
                | Self::InvalidKey { .. }
                | Self::KeyMismatch { .. }
                | Self::Pem { .. }
                | Self::NoCertificates
                | Self::InvalidCertificate { .. }
                | Self::NotACa { .. }
                | Self::Chain { .. }
                | Self::CsrTooLarge { .. }
                | Self::CsrEncoding { .. }
                | Self::CsrPemLabel { .. }
                | Self::UnsupportedKey { .. }
                | Self::CsrSignature { .. }
                | Self::CsrUriSanCount { .. }
                | Self::CsrSpiffeId { .. }
                | Self::CsrSan { .. }
                | Self::ForeignTrustDomain { .. }
                | Self::TrustDomainMismatch { .. }
                | Self::ReservedIdentity { .. }
                | Self::TooManyDnsNames { .. }
                | Self::DnsName { .. }
                | Self::CommonName { .. }
                | Self::Lifetime { .. }
                | Self::Usage { .. }
                | Self::LeafKey { .. }
                | Self::Crl { .. }
                | Self::InvalidCrl { .. }
        )
    }

    /// An rcgen failure while building or signing; rcgen errors carry no key bytes.
    pub(crate) fn signing(e: rcgen::Error) -> Self {
        Self::Signing { reason: e.to_string() }
    }

    pub(crate) fn certificate(reason: impl Into<String>) -> Self {
        Self::InvalidCertificate { reason: reason.into() }
    }
}

/// An instant as RFC 3339 (`2025-01-01T00:00:00Z`), for messages.
pub(crate) fn rfc3339(t: &OffsetDateTime) -> String {
    t.format(&Rfc3339).unwrap_or_else(|_| format!("unix {}", t.unix_timestamp()))
}
