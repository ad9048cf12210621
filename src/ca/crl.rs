//! Certificate revocation lists: v2 CRLs with a CRL number, the issuer's
//! key identifier and per-entry reason codes, validated after signing.

use std::fmt;
use std::str::FromStr;

use rcgen::{CertificateRevocationListParams, KeyIdMethod, RevokedCertParams, SerialNumber};
use time::{Duration, OffsetDateTime};
use x509_parser::prelude::FromDer;
use x509_parser::revocation_list::CertificateRevocationList;

use crate::domain::Serial;

use super::cert::parse;
use super::encoding::to_pem;
use super::template::{CA_BACKDATE, cert_time, end_of};
use super::{CaError, Signer};

/// CRL reason codes (RFC 5280 §5.3.1) that trustmesh records.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RevocationReason {
    Unspecified,
    KeyCompromise,
    CaCompromise,
    AffiliationChanged,
    Superseded,
    CessationOfOperation,
    CertificateHold,
    PrivilegeWithdrawn,
}

/// One revoked certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CrlEntry {
    pub serial: Serial,
    pub revoked_at: OffsetDateTime,
    pub reason: Option<RevocationReason>,
}

/// A signed CRL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Crl {
    pub der: Vec<u8>,
    /// Fingerprint of the CA certificate that signed it.
    pub issuer_fingerprint: String,
    pub this_update: OffsetDateTime,
    pub next_update: OffsetDateTime,
    pub number: u64,
}

impl Crl {
    /// PEM ("X509 CRL").
    pub fn to_pem(&self) -> String {
        to_pem("X509 CRL", &self.der)
    }
}

const NAMES: [(RevocationReason, &str); 8] = [
    (RevocationReason::Unspecified, "unspecified"),
    (RevocationReason::KeyCompromise, "keyCompromise"),
    (RevocationReason::CaCompromise, "cACompromise"),
    (RevocationReason::AffiliationChanged, "affiliationChanged"),
    (RevocationReason::Superseded, "superseded"),
    (RevocationReason::CessationOfOperation, "cessationOfOperation"),
    (RevocationReason::CertificateHold, "certificateHold"),
    (RevocationReason::PrivilegeWithdrawn, "privilegeWithdrawn"),
];

const EXPECTED: &str = "unspecified, keyCompromise, cACompromise, affiliationChanged, superseded, \
                        cessationOfOperation, certificateHold, privilegeWithdrawn";

impl RevocationReason {
    /// The RFC 5280 CRLReason code.
    pub fn code(self) -> u8 {
        self.rcgen() as u8
    }

    fn rcgen(self) -> rcgen::RevocationReason {
        use rcgen::RevocationReason as R;
        match self {
            Self::Unspecified => R::Unspecified,
            Self::KeyCompromise => R::KeyCompromise,
            Self::CaCompromise => R::CaCompromise,
            Self::AffiliationChanged => R::AffiliationChanged,
            Self::Superseded => R::Superseded,
            Self::CessationOfOperation => R::CessationOfOperation,
            Self::CertificateHold => R::CertificateHold,
            Self::PrivilegeWithdrawn => R::PrivilegeWithdrawn,
        }
    }
}

impl fmt::Display for RevocationReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = NAMES.iter().find(|(r, _)| r == self).map_or("unspecified", |(_, n)| n);
        f.write_str(name)
    }
}

impl FromStr for RevocationReason {
    type Err = CaError;

    /// The RFC 5280 names; case, `-`, `_` and spaces are ignored
    /// ("key-compromise" and "KEY_COMPROMISE" are keyCompromise).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let norm = |v: &str| -> String {
            v.chars().filter(|c| !matches!(c, '-' | '_' | ' ')).map(|c| c.to_ascii_lowercase()).collect()
        };
        let wanted = norm(s);
        NAMES
            .iter()
            .find(|(_, name)| norm(name) == wanted)
            .map(|(r, _)| *r)
            .ok_or_else(|| CaError::UnknownRevocationReason { value: s.chars().take(64).collect(), expected: EXPECTED })
    }
}

/// Builds and signs a v2 CRL: thisUpdate = now - 60 s, nextUpdate =
/// now + `validity`, CRL number `number`, AKI = the issuer's SKI, one entry
/// per distinct serial with its reason code.
pub fn build_crl(
    issuer: &Signer,
    entries: &[CrlEntry],
    number: u64,
    now: OffsetDateTime,
    validity: Duration,
) -> Result<Crl, CaError> {
    let this_update = cert_time(now - CA_BACKDATE)?;
    let next_update = cert_time(end_of(now, validity)?)?;
    let mut revoked: Vec<RevokedCertParams> = Vec::with_capacity(entries.len());
    let mut seen: Vec<&Serial> = Vec::with_capacity(entries.len());
    for entry in entries {
        if seen.contains(&&entry.serial) {
            continue;
        }
        seen.push(&entry.serial);
        revoked.push(RevokedCertParams {
            serial_number: SerialNumber::from_slice(entry.serial.as_bytes()),
            revocation_time: cert_time(entry.revoked_at)?,
            reason_code: entry.reason.map(RevocationReason::rcgen),
            invalidity_date: None,
        });
    }
    let params = CertificateRevocationListParams {
        this_update,
        next_update,
        crl_number: SerialNumber::from(number),
        issuing_distribution_point: None,
        revoked_certs: revoked,
        key_identifier_method: match issuer.cert.subject_key_id() {
            Some(ski) => KeyIdMethod::PreSpecified(ski.to_vec()),
            None => KeyIdMethod::Sha256,
        },
    };
    let crl = params
        .signed_by(&issuer.rcgen_issuer()?)
        .map_err(|e| CaError::Crl { reason: format!("signing with {} failed: {e}", issuer.cert.label()) })?;
    let der = crl.der().to_vec();
    validate_crl(issuer, &der, &seen, number, this_update)
        .map_err(|reason| CaError::Crl { reason: format!("the CRL just signed failed validation: {reason}") })?;
    Ok(Crl { der, issuer_fingerprint: issuer.cert.fingerprint.clone(), this_update, next_update, number })
}

fn validate_crl(
    issuer: &Signer,
    der: &[u8],
    serials: &[&Serial],
    number: u64,
    this_update: OffsetDateTime,
) -> Result<(), String> {
    let (rest, crl) = CertificateRevocationList::from_der(der).map_err(|e| e.to_string())?;
    if !rest.is_empty() {
        return Err("trailing bytes".to_string());
    }
    let ca = parse(&issuer.cert.der).map_err(|e| e.to_string())?;
    if crl.issuer().as_raw() != ca.subject().as_raw() {
        return Err("issuer name differs from the CA subject".to_string());
    }
    crl.verify_signature(ca.public_key()).map_err(|e| format!("signature: {e}"))?;
    if crl.crl_number().map(|n| n.to_u64_digits()) != Some(number_digits(number)) {
        return Err(format!("CRL number is not {number}"));
    }
    if crl.last_update().to_datetime() != this_update {
        return Err("thisUpdate differs".to_string());
    }
    let listed: Vec<&[u8]> = crl.iter_revoked_certificates().map(|r| r.raw_serial()).collect();
    if listed.len() != serials.len() || serials.iter().any(|s| !listed.iter().any(|l| trim(l) == s.as_bytes())) {
        return Err("revoked serials differ from the request".to_string());
    }
    Ok(())
}

fn number_digits(n: u64) -> Vec<u64> {
    if n == 0 { Vec::new() } else { vec![n] }
}

fn trim(bytes: &[u8]) -> &[u8] {
    &bytes[bytes.iter().take_while(|b| **b == 0).count()..]
}
