//! Pieces shared by every certificate template: validity windows, subject
//! names, SANs and the checks on what callers put in them.

use crate::domain::text;
use rcgen::{DistinguishedName, DnType, SanType, SerialNumber};
use time::{Duration, OffsetDateTime};

use crate::domain::{Serial, SpiffeId, TrustDomain};

use super::CaError;

/// The organization in every subject trustmesh writes.
pub(crate) const ORGANIZATION: &str = "trustmesh";

/// Backdating of CA certificates and CRLs (clock skew between machines).
pub(crate) const CA_BACKDATE: Duration = Duration::seconds(60);
/// Backdating of leaf certificates (SPEC §4: notBefore 30 s in the past).
pub const LEAF_BACKDATE: Duration = Duration::seconds(30);

const MAX_DNS_NAME: usize = 253;
const MAX_LABEL: usize = 63;
const MAX_COMMON_NAME: usize = 64;

/// `t` in UTC, whole seconds, and representable in a certificate.
pub(crate) fn cert_time(t: OffsetDateTime) -> Result<OffsetDateTime, CaError> {
    let utc = t.to_offset(time::UtcOffset::UTC);
    let whole = utc.replace_nanosecond(0).map_err(|_| CaError::Time { value: t })?;
    if !(1950..=9999).contains(&whole.year()) {
        return Err(CaError::Time { value: t });
    }
    Ok(whole)
}

/// `now + lifetime`, refusing a non-positive lifetime and overflow.
pub(crate) fn end_of(now: OffsetDateTime, lifetime: Duration) -> Result<OffsetDateTime, CaError> {
    if !lifetime.is_positive() {
        return Err(CaError::Lifetime { seconds: lifetime.whole_seconds() });
    }
    now.checked_add(lifetime).ok_or(CaError::Time { value: now })
}

/// O = trustmesh, plus CN when given (checked: non-empty, at most 64 characters).
pub(crate) fn subject(common_name: Option<&str>) -> Result<DistinguishedName, CaError> {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, ORGANIZATION);
    if let Some(cn) = common_name {
        check_common_name(cn)?;
        dn.push(DnType::CommonName, cn);
    }
    Ok(dn)
}

fn check_common_name(cn: &str) -> Result<(), CaError> {
    let fail = |reason| CaError::CommonName { name: text::shorten(cn, 80), reason };
    if cn.trim().is_empty() {
        return Err(fail("must not be empty"));
    }
    if cn.chars().count() > MAX_COMMON_NAME {
        return Err(fail("longer than 64 characters"));
    }
    if cn.chars().any(char::is_control) {
        return Err(fail("contains control characters"));
    }
    Ok(())
}

/// The URI SAN of a SPIFFE ID.
pub(crate) fn uri_san(uri: &str) -> Result<SanType, CaError> {
    let value = uri
        .to_string()
        .try_into()
        .map_err(|e: rcgen::Error| CaError::Signing { reason: format!("URI SAN {uri:?}: {e}") })?;
    Ok(SanType::URI(value))
}

/// URI SAN `spiffe://<td>` of a CA certificate.
pub(crate) fn trust_domain_san(td: &TrustDomain) -> Result<SanType, CaError> {
    uri_san(&td.id_string())
}

pub(crate) fn spiffe_san(id: &SpiffeId) -> Result<SanType, CaError> {
    uri_san(&id.to_string())
}

/// A DNS SAN after [`check_dns_name`].
pub(crate) fn dns_san(name: &str) -> Result<SanType, CaError> {
    check_dns_name(name)?;
    let value =
        name.to_string().try_into().map_err(|_| CaError::DnsName { name: name.to_string(), reason: "not ASCII" })?;
    Ok(SanType::DnsName(value))
}

/// A DNS name as trustmesh writes it into certificates: lowercase letters,
/// digits, `-` and `.`, an optional `*.` prefix, labels of 1 to 63
/// characters that neither start nor end with `-`, at most 253 characters.
pub fn check_dns_name(name: &str) -> Result<(), CaError> {
    let fail = |reason| CaError::DnsName { name: text::shorten(name, 260), reason };
    if name.is_empty() {
        return Err(fail("empty"));
    }
    if name.len() > MAX_DNS_NAME {
        return Err(fail("longer than 253 characters"));
    }
    let rest = name.strip_prefix("*.").unwrap_or(name);
    for label in rest.split('.') {
        if label.is_empty() {
            return Err(fail("empty label (leading, trailing or doubled dot)"));
        }
        if label.len() > MAX_LABEL {
            return Err(fail("a label is longer than 63 characters"));
        }
        if label == "*" || label.contains('*') {
            return Err(fail("a wildcard is only allowed as the whole first label (*.)"));
        }
        if !label.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-') {
            return Err(fail("only lowercase letters, digits, '-' and '.' are allowed"));
        }
        if label.starts_with('-') || label.ends_with('-') {
            return Err(fail("a label starts or ends with '-'"));
        }
    }
    Ok(())
}

/// Leaf serials must carry at least 128 bits.
pub(crate) fn leaf_serial(serial: &Serial) -> Result<SerialNumber, CaError> {
    if serial.bits() < 128 {
        return Err(CaError::SerialTooShort { serial: serial.to_string(), bits: serial.bits() });
    }
    Ok(SerialNumber::from_slice(serial.as_bytes()))
}

/// Removes repeated names, keeping the first occurrence.
pub(crate) fn dedup(names: &[String]) -> Vec<String> {
    let mut out: Vec<String> = Vec::with_capacity(names.len());
    for n in names {
        if !out.contains(n) {
            out.push(n.clone());
        }
    }
    out
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn dns_names() {
        for ok in ["a", "svc.ns.svc.cluster.local", "*.example.org", "x-1.y2", &"a".repeat(63)] {
            check_dns_name(ok).unwrap();
        }
        let long = format!("{}.org", vec!["a".repeat(60); 5].join("."));
        let cases = [
            ("", "empty"),
            ("Example.org", "lowercase"),
            ("a..b", "empty label"),
            ("a.b.", "empty label"),
            (".a", "empty label"),
            ("a_b", "lowercase"),
            ("*", "wildcard"),
            ("a.*.b", "wildcard"),
            ("*a.b", "wildcard"),
            ("-a.b", "'-'"),
            ("a-.b", "'-'"),
            ("127.0.0.1:80", "lowercase"),
            (long.as_str(), "253"),
        ];
        for (name, needle) in cases {
            let err = check_dns_name(name).unwrap_err().to_string();
            assert!(err.contains(needle), "{name}: {err}");
        }
        let label = format!("{}.org", "a".repeat(64));
        assert!(check_dns_name(&label).unwrap_err().to_string().contains("63"));
    }

    #[test]
    fn times_and_lifetimes() {
        let t = OffsetDateTime::from_unix_timestamp_nanos(1_700_000_000_123_456_789).unwrap();
        assert_eq!(cert_time(t).unwrap().unix_timestamp(), 1_700_000_000);
        assert_eq!(cert_time(t).unwrap().nanosecond(), 0);
        assert!(end_of(t, Duration::ZERO).is_err());
        assert!(end_of(t, Duration::seconds(-5)).unwrap_err().to_string().contains("-5"));
        assert!(cert_time(OffsetDateTime::UNIX_EPOCH - Duration::days(365 * 30)).is_err());
    }

    #[test]
    fn common_names() {
        assert!(subject(Some("ok")).is_ok());
        assert!(subject(Some(" ")).is_err());
        assert!(subject(Some(&"x".repeat(65))).is_err());
        assert!(subject(None).unwrap().get(&DnType::CommonName).is_none());
    }
}
