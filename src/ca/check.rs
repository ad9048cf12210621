//! Validation of what was just signed, before anyone sees it (as SPIRE's
//! `ca.go` does): the certificate is parsed back from its DER, its signature
//! and every link above it are verified, and the profile is re-checked
//! against what was asked for. Any difference is a [`CaError::SelfCheck`].

use std::net::IpAddr;

use time::OffsetDateTime;
use x509_parser::certificate::X509Certificate;
use x509_parser::extensions::GeneralName;
use x509_parser::x509::X509Version;

use crate::domain::{Serial, SpiffeId, TrustDomain};

use super::cert::{authority_key_id, parse, subject_key_id, uri_sans, verify_issued_by};
use super::error::rfc3339;
use super::{CaCertificate, CaError, LeafUsage, Signer};

/// What a leaf (X.509-SVID or server certificate) must contain.
pub(crate) struct LeafExpectation<'a> {
    pub spiffe_id: Option<&'a SpiffeId>,
    pub dns_names: &'a [String],
    pub ips: &'a [IpAddr],
    pub spki: &'a [u8],
    pub serial: &'a Serial,
    pub not_before: OffsetDateTime,
    pub not_after: OffsetDateTime,
    /// Exactly these key usages and extended key usages.
    pub usage: &'a LeafUsage,
}

/// What a CA certificate created here must contain.
pub(crate) struct CaExpectation<'a> {
    pub trust_domain: &'a TrustDomain,
    pub path_len: Option<u32>,
    pub serial: &'a Serial,
    pub not_before: OffsetDateTime,
    pub not_after: OffsetDateTime,
}

/// Checks a freshly signed leaf against its issuer and the request.
pub(crate) fn validate_leaf(issuer: &Signer, der: &[u8], want: &LeafExpectation<'_>) -> Result<(), CaError> {
    let fail = |reason: String| CaError::SelfCheck { serial: want.serial.to_string(), reason };
    let x = parse(der).map_err(|e| fail(e.to_string()))?;
    verify_issued_by(der, &issuer.cert).map_err(fail)?;
    // The issuer's own chain up to the root was verified when the `Signer`
    // was built (`Signer::new`) and cannot change afterwards, so each leaf
    // costs one signature verification, not one per chain link.
    common(&x, want.serial, want.not_before, want.not_after, &issuer.cert).map_err(fail)?;

    if x.public_key().raw != want.spki {
        return Err(fail("the subject public key is not the requested one".into()));
    }
    let expects_names = want.spiffe_id.is_some() || !want.dns_names.is_empty() || !want.ips.is_empty();
    let names = sans(&x, expects_names).map_err(fail)?;
    let want_uris: Vec<String> = want.spiffe_id.iter().map(|id| id.to_string()).collect();
    if names.uris != want_uris {
        return Err(fail(format!("URI SANs are {:?}, expected exactly {want_uris:?}", names.uris)));
    }
    if names.dns != want.dns_names {
        return Err(fail(format!("DNS SANs are {:?}, expected {:?}", names.dns, want.dns_names)));
    }
    if names.ips != want.ips {
        return Err(fail(format!("IP SANs are {:?}, expected {:?}", names.ips, want.ips)));
    }
    match x.basic_constraints() {
        Ok(Some(bc)) if bc.critical && !bc.value.ca => {}
        _ => return Err(fail("basicConstraints is not a critical CA:FALSE".into())),
    }
    match x.key_usage() {
        Ok(Some(ku)) if ku.critical && want.usage.matches_key_usage(ku.value) => {}
        Ok(None) if want.usage.key_usages.is_empty() => {}
        _ => return Err(fail(format!("keyUsage is not the critical {:?}", want.usage.key_usages))),
    }
    match x.extended_key_usage() {
        Ok(Some(eku)) if want.usage.matches_ext_key_usage(eku.value) => {}
        Ok(None) if want.usage.ext_key_usages.is_empty() => {}
        _ => return Err(fail(format!("extendedKeyUsage is not {:?}", want.usage.ext_key_usages))),
    }
    if authority_key_id(&x).is_none() || subject_key_id(&x).is_none() {
        return Err(fail("authority or subject key identifier missing".into()));
    }
    Ok(())
}

/// Checks a freshly signed CA certificate. `parent` is `None` for a root
/// (whose signature [`Signer::new`] has verified with its own key).
pub(crate) fn validate_ca(
    cert: &CaCertificate,
    parent: Option<&CaCertificate>,
    want: &CaExpectation<'_>,
) -> Result<(), CaError> {
    let fail = |reason: String| CaError::SelfCheck { serial: want.serial.to_string(), reason };
    let x = parse(&cert.der).map_err(|e| fail(e.to_string()))?;
    common(&x, want.serial, want.not_before, want.not_after, parent.unwrap_or(cert)).map_err(fail)?;
    match x.basic_constraints() {
        Ok(Some(bc)) if bc.critical && bc.value.ca && bc.value.path_len_constraint == want.path_len => {}
        _ => {
            return Err(fail(format!("basicConstraints is not a critical CA:TRUE, pathlen {:?}", want.path_len)));
        }
    }
    match x.key_usage() {
        Ok(Some(ku)) if ku.critical && ku.value.key_cert_sign() && ku.value.crl_sign() => {}
        _ => {
            return Err(fail("keyUsage is not a critical keyCertSign + cRLSign".into()));
        }
    }
    let want_uri = want.trust_domain.id_string();
    if uri_sans(&x) != [want_uri.as_str()] {
        return Err(fail(format!("URI SANs are {:?}, expected [{want_uri:?}]", uri_sans(&x))));
    }
    if subject_key_id(&x).is_none() || (parent.is_some() && authority_key_id(&x).is_none()) {
        return Err(fail("authority or subject key identifier missing".into()));
    }
    Ok(())
}

/// Version, serial and validity (inside the issuer's).
fn common(
    x: &X509Certificate<'_>,
    serial: &Serial,
    not_before: OffsetDateTime,
    not_after: OffsetDateTime,
    issuer: &CaCertificate,
) -> Result<(), String> {
    if x.version() != X509Version::V3 {
        return Err(format!("version is {}, expected 3", x.version().0 + 1));
    }
    let raw = x.raw_serial();
    let trimmed = &raw[raw.iter().take_while(|b| **b == 0).count()..];
    if trimmed != serial.as_bytes() {
        return Err(format!("serial is {}, expected {serial}", hex::encode(trimmed)));
    }
    let validity = x.validity();
    let (nb, na) = (validity.not_before.to_datetime(), validity.not_after.to_datetime());
    if nb != not_before || na != not_after {
        return Err(format!(
            "validity is {} .. {}, expected {} .. {}",
            rfc3339(&nb),
            rfc3339(&na),
            rfc3339(&not_before),
            rfc3339(&not_after)
        ));
    }
    if nb < issuer.not_before || na > issuer.not_after {
        return Err(format!(
            "validity {} .. {} is not inside the issuer's {} .. {}",
            rfc3339(&nb),
            rfc3339(&na),
            rfc3339(&issuer.not_before),
            rfc3339(&issuer.not_after)
        ));
    }
    Ok(())
}

struct Sans {
    uris: Vec<String>,
    dns: Vec<String>,
    ips: Vec<IpAddr>,
}

/// The SANs; a missing extension is an error only when names are expected.
fn sans(x: &X509Certificate<'_>, expected: bool) -> Result<Sans, String> {
    let mut out = Sans { uris: Vec::new(), dns: Vec::new(), ips: Vec::new() };
    let ext = match x.subject_alternative_name().map_err(|e| format!("subjectAltName: {e}"))? {
        Some(ext) => ext,
        None if !expected => return Ok(out),
        None => return Err("subjectAltName is missing".into()),
    };
    for name in &ext.value.general_names {
        match name {
            GeneralName::URI(u) => out.uris.push((*u).to_string()),
            GeneralName::DNSName(d) => out.dns.push((*d).to_string()),
            GeneralName::IPAddress(bytes) => out.ips.push(ip_from(bytes)?),
            other => return Err(format!("unexpected SAN {other:?}")),
        }
    }
    Ok(out)
}

fn ip_from(bytes: &[u8]) -> Result<IpAddr, String> {
    if let Ok(v4) = <[u8; 4]>::try_from(bytes) {
        return Ok(IpAddr::from(v4));
    }
    <[u8; 16]>::try_from(bytes).map(IpAddr::from).map_err(|_| format!("IP SAN of {} bytes", bytes.len()))
}
