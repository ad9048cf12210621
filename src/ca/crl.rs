//! Certificate revocation lists: v2 CRLs with a CRL number, the issuer's
//! key identifier and per-entry reason codes, validated after signing.

use std::collections::HashSet;

use time::{Duration, OffsetDateTime};
use x509_parser::prelude::FromDer;
use x509_parser::revocation_list::CertificateRevocationList;

use crate::domain::{RevocationReason, Serial};

use super::asn1::{
    TAG_BIT_STRING, TAG_ENUMERATED, TAG_INTEGER, TAG_OCTET_STRING, TAG_SEQUENCE, push_tlv, push_unsigned, tlv,
};
use super::cert::parse;
use super::encoding::to_pem;
use super::template::{CA_BACKDATE, cert_time, end_of};
use super::{CaCertificate, CaError, Signer};

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

/// Builds and signs a v2 CRL: thisUpdate = now - 60 s, nextUpdate =
/// now + `validity`, CRL number `number`, AKI = the issuer's SKI, one entry
/// per distinct serial with its reason code (none for `unspecified`, as
/// RFC 5280 §5.3.1 asks).
///
/// The DER is written directly, in time linear in the number of entries
/// (100,000 revoked serials are a 4 MB CRL), then parsed back and checked.
pub fn build_crl(
    issuer: &Signer,
    entries: &[CrlEntry],
    number: u64,
    now: OffsetDateTime,
    validity: Duration,
) -> Result<Crl, CaError> {
    let this_update = cert_time(now - CA_BACKDATE)?;
    let next_update = cert_time(end_of(now, validity)?)?;
    let ca = parse(&issuer.cert.der)?;
    let mut seen: HashSet<&[u8]> = HashSet::with_capacity(entries.len());
    let mut revoked = Vec::with_capacity(entries.len() * 48);
    for entry in entries {
        if !seen.insert(entry.serial.as_bytes()) {
            continue;
        }
        push_entry(&mut revoked, entry)?;
    }
    let key_id = match issuer.cert.subject_key_id() {
        Some(ski) => ski.to_vec(),
        None => ring::digest::digest(&ring::digest::SHA256, ca.public_key().subject_public_key.as_ref()).as_ref()[..20]
            .to_vec(),
    };
    let key = issuer.key();
    let mut tbs = Vec::with_capacity(revoked.len() + 512);
    tbs.extend_from_slice(&[TAG_INTEGER, 0x01, 0x01]); // v2
    tbs.extend_from_slice(key.signature_algorithm_der());
    tbs.extend_from_slice(ca.subject().as_raw());
    push_time(&mut tbs, this_update);
    push_time(&mut tbs, next_update);
    if !revoked.is_empty() {
        push_tlv(&mut tbs, TAG_SEQUENCE, &revoked);
    }
    drop(revoked);
    push_tlv(&mut tbs, TAG_CONTEXT_0, &tlv(TAG_SEQUENCE, &crl_extensions(&key_id, number)));
    let tbs = tlv(TAG_SEQUENCE, &tbs);
    let signature = key.sign(&tbs)?;
    let mut bits = Vec::with_capacity(signature.len() + 1);
    bits.push(0); // no unused bits
    bits.extend_from_slice(&signature);
    let mut body = tbs;
    body.extend_from_slice(key.signature_algorithm_der());
    push_tlv(&mut body, TAG_BIT_STRING, &bits);
    let der = tlv(TAG_SEQUENCE, &body);
    validate_crl(issuer, &der, &seen, number, this_update)
        .map_err(|reason| CaError::Crl { reason: format!("the CRL just signed failed validation: {reason}") })?;
    Ok(Crl { der, issuer_fingerprint: issuer.cert.fingerprint.clone(), this_update, next_update, number })
}

/// Largest CRL accepted for import (PEM or DER).
pub const MAX_CRL_BYTES: usize = 1024 * 1024;

/// Reads a CRL signed elsewhere (an offline root's, made with `openssl ca
/// -gencrl`): PEM ("X509 CRL") or DER, issued and signed by one of
/// `issuers`, v2 with a CRL number and a nextUpdate. Whether its times and
/// number are acceptable now is the caller's decision.
pub fn parse_crl(input: &[u8], issuers: &[&CaCertificate]) -> Result<Crl, CaError> {
    let invalid = |reason: String| CaError::InvalidCrl { reason };
    if input.len() > MAX_CRL_BYTES {
        return Err(invalid(format!("{} bytes, more than the {MAX_CRL_BYTES} accepted", input.len())));
    }
    let der = match std::str::from_utf8(input).ok().filter(|t| t.trim_start().starts_with("-----BEGIN")) {
        Some(text) => {
            let block = pem::parse(text).map_err(|e| invalid(format!("invalid PEM: {e}")))?;
            if block.tag() != "X509 CRL" {
                return Err(invalid(format!("expected an X509 CRL PEM block, found {}", block.tag())));
            }
            block.into_contents()
        }
        None => input.to_vec(),
    };
    let (rest, crl) = CertificateRevocationList::from_der(&der).map_err(|e| invalid(format!("not a DER CRL: {e}")))?;
    if !rest.is_empty() {
        return Err(invalid(format!("{} bytes after the CRL", rest.len())));
    }
    if crl.version().map(|v| v.0) != Some(1) {
        return Err(invalid("not a v2 CRL".into()));
    }
    let mut named = false;
    let mut issuer = None;
    for ca in issuers {
        let cert = parse(&ca.der)?;
        if cert.subject().as_raw() != crl.issuer().as_raw() {
            continue;
        }
        named = true;
        if crl.verify_signature(cert.public_key()).is_ok() {
            issuer = Some(*ca);
            break;
        }
    }
    let Some(issuer) = issuer else {
        return Err(invalid(if named {
            format!("its signature does not verify with the key of {}", crl.issuer())
        } else {
            format!("its issuer {} is not a CA of this trust domain", crl.issuer())
        }));
    };
    let number = crl
        .crl_number()
        .and_then(|n| u64::try_from(n).ok())
        .ok_or_else(|| invalid("it has no CRL number (or one above 2^64)".into()))?;
    let next_update = crl.next_update().ok_or_else(|| invalid("it has no nextUpdate".into()))?.to_datetime();
    Ok(Crl {
        issuer_fingerprint: issuer.fingerprint.clone(),
        this_update: crl.last_update().to_datetime(),
        next_update,
        number,
        der,
    })
}

/// `[0] EXPLICIT` context tag of the TBSCertList's crlExtensions.
const TAG_CONTEXT_0: u8 = 0xa0;
/// `[0] IMPLICIT` keyIdentifier inside AuthorityKeyIdentifier.
const TAG_KEY_ID: u8 = 0x80;
const OID_REASON_CODE: &[u8] = &[0x06, 0x03, 0x55, 0x1d, 0x15];
const OID_CRL_NUMBER: &[u8] = &[0x06, 0x03, 0x55, 0x1d, 0x14];
const OID_AUTHORITY_KEY_ID: &[u8] = &[0x06, 0x03, 0x55, 0x1d, 0x23];

/// One `revokedCertificates` element, written in place (no allocation).
fn push_entry(out: &mut Vec<u8>, entry: &CrlEntry) -> Result<(), CaError> {
    let at = cert_time(entry.revoked_at)?;
    let reason = entry.reason.filter(|r| *r != RevocationReason::Unspecified);
    let serial = entry.serial.as_bytes();
    let serial_len = 2 + serial.len() + usize::from(serial.first().is_none_or(|b| b & 0x80 != 0));
    let time_len = if (1950..2050).contains(&at.year()) { 15 } else { 17 };
    let ext_len = if reason.is_some() { 14 } else { 0 };
    let len = serial_len + time_len + ext_len;
    // A serial is at most 20 bytes (RFC 5280 §4.1.2.2), so the entry is short.
    let Ok(short) = u8::try_from(len).map(|l| l.min(0x7f)) else {
        return Err(CaError::Crl { reason: "a serial number is too long".into() });
    };
    if usize::from(short) != len {
        return Err(CaError::Crl { reason: "a serial number is too long".into() });
    }
    out.extend_from_slice(&[TAG_SEQUENCE, short]);
    push_unsigned(out, serial);
    push_time(out, at);
    if let Some(reason) = reason {
        // Extensions { Extension { reasonCode, OCTET STRING { ENUMERATED code } } }
        out.extend_from_slice(&[TAG_SEQUENCE, 12, TAG_SEQUENCE, 10]);
        out.extend_from_slice(OID_REASON_CODE);
        out.extend_from_slice(&[TAG_OCTET_STRING, 3, TAG_ENUMERATED, 1, reason.code()]);
    }
    Ok(())
}

/// AuthorityKeyIdentifier and CRLNumber.
fn crl_extensions(key_id: &[u8], number: u64) -> Vec<u8> {
    let mut aki = OID_AUTHORITY_KEY_ID.to_vec();
    push_tlv(&mut aki, TAG_OCTET_STRING, &tlv(TAG_SEQUENCE, &tlv(TAG_KEY_ID, key_id)));
    let mut value = Vec::new();
    push_unsigned(&mut value, &number.to_be_bytes());
    let mut crl_number = OID_CRL_NUMBER.to_vec();
    push_tlv(&mut crl_number, TAG_OCTET_STRING, &value);
    let mut out = tlv(TAG_SEQUENCE, &aki);
    push_tlv(&mut out, TAG_SEQUENCE, &crl_number);
    out
}

/// UTCTime through 2049, GeneralizedTime from 2050 (RFC 5280 §5.1.2.4).
fn push_time(out: &mut Vec<u8>, t: OffsetDateTime) {
    let year = u32::try_from(t.year()).unwrap_or(0);
    let utc = (1950..2050).contains(&year);
    if utc {
        out.extend_from_slice(&[TAG_UTC_TIME, 13]);
        push_digits(out, year % 100);
    } else {
        out.extend_from_slice(&[TAG_GENERALIZED_TIME, 15]);
        push_digits(out, year / 100);
        push_digits(out, year % 100);
    }
    for part in [u8::from(t.month()), t.day(), t.hour(), t.minute(), t.second()] {
        push_digits(out, u32::from(part));
    }
    out.push(b'Z');
}

/// Two decimal digits.
fn push_digits(out: &mut Vec<u8>, n: u32) {
    out.extend_from_slice(&[b'0' + (n / 10 % 10) as u8, b'0' + (n % 10) as u8]);
}

const TAG_UTC_TIME: u8 = 0x17;
const TAG_GENERALIZED_TIME: u8 = 0x18;

/// The check after signing. It walks the DER just written — independently of
/// the encoder above: every length, the issuer name, the times, each listed
/// serial against the request, the extensions — and verifies the signature
/// over the TBS bytes with the CA's public key. Linear and allocation-free,
/// so 100,000 entries cost milliseconds; the encoder itself is checked
/// against x509-parser and openssl by the tests.
pub(super) fn validate_crl(
    issuer: &Signer,
    der: &[u8],
    serials: &HashSet<&[u8]>,
    number: u64,
    this_update: OffsetDateTime,
) -> Result<(), String> {
    let ca = parse(&issuer.cert.der).map_err(|e| e.to_string())?;
    let key = issuer.key();
    let (list, rest) = expect(der, TAG_SEQUENCE, "CertificateList")?;
    if !rest.is_empty() {
        return Err("trailing bytes".to_string());
    }
    let (tbs, after_tbs) = expect(list, TAG_SEQUENCE, "TBSCertList")?;
    let tbs_der = &list[..list.len() - after_tbs.len()];
    let (alg_len, after_alg) = raw_tlv(after_tbs)?;
    if &after_tbs[..alg_len] != key.signature_algorithm_der() {
        return Err("signature algorithm differs from the key's".to_string());
    }
    let (bits, end) = expect(after_alg, TAG_BIT_STRING, "signature")?;
    if !end.is_empty() || bits.first() != Some(&0) {
        return Err("malformed signature bit string".to_string());
    }
    let verifier = match key.algorithm() {
        super::KeyAlgorithm::EcP256 => &ring::signature::ECDSA_P256_SHA256_ASN1,
        super::KeyAlgorithm::EcP384 => &ring::signature::ECDSA_P384_SHA384_ASN1,
    };
    ring::signature::UnparsedPublicKey::new(verifier, ca.public_key().subject_public_key.data.as_ref())
        .verify(tbs_der, &bits[1..])
        .map_err(|_| "signature does not verify with the CA's key".to_string())?;

    let (version, rest) = expect(tbs, TAG_INTEGER, "version")?;
    if version != [1] {
        return Err("not a v2 CRL".to_string());
    }
    let (alg_len, rest2) = raw_tlv(rest)?;
    if &rest[..alg_len] != key.signature_algorithm_der() {
        return Err("inner signature algorithm differs".to_string());
    }
    let (name_len, rest) = raw_tlv(rest2)?;
    if &rest2[..name_len] != ca.subject().as_raw() {
        return Err("issuer name differs from the CA subject".to_string());
    }
    let mut expected_time = Vec::with_capacity(17);
    push_time(&mut expected_time, this_update);
    let (time_len, mut rest) = raw_tlv(rest)?;
    if rest2[name_len..name_len + time_len] != expected_time[..] {
        return Err("thisUpdate differs".to_string());
    }
    let (_, after_next) = raw_tlv(rest)?; // nextUpdate (written from the same clock)
    rest = after_next;
    let mut listed = 0usize;
    if rest.first() == Some(&TAG_SEQUENCE) {
        let (mut entries, after) = expect(rest, TAG_SEQUENCE, "revokedCertificates")?;
        rest = after;
        while !entries.is_empty() {
            let (entry, next) = expect(entries, TAG_SEQUENCE, "revoked entry")?;
            let (serial, _) = expect(entry, TAG_INTEGER, "serial")?;
            if !serials.contains(trim(serial)) {
                return Err("a revoked serial differs from the request".to_string());
            }
            listed += 1;
            entries = next;
        }
    }
    if listed != serials.len() {
        return Err(format!("{listed} serials listed, {} requested", serials.len()));
    }
    let (extensions, end) = expect(rest, TAG_CONTEXT_0, "crlExtensions")?;
    if !end.is_empty() {
        return Err("trailing bytes in the TBSCertList".to_string());
    }
    let (extensions, _) = expect(extensions, TAG_SEQUENCE, "Extensions")?;
    let mut number_der = Vec::new();
    push_unsigned(&mut number_der, &number.to_be_bytes());
    let mut found = false;
    let mut items = extensions;
    while !items.is_empty() {
        let (ext, next) = expect(items, TAG_SEQUENCE, "Extension")?;
        if let Some(value) = ext.strip_prefix(OID_CRL_NUMBER) {
            let (octets, _) = expect(value, TAG_OCTET_STRING, "CRLNumber")?;
            found = octets == number_der.as_slice();
        }
        items = next;
    }
    if !found {
        return Err(format!("CRL number is not {number}"));
    }
    Ok(())
}

/// The content of the TLV at the start of `input` (which must carry `tag`), and what follows it.
fn expect<'a>(input: &'a [u8], tag: u8, what: &str) -> Result<(&'a [u8], &'a [u8]), String> {
    if input.first() != Some(&tag) {
        return Err(format!("{what}: unexpected tag"));
    }
    let (total, rest) = raw_tlv(input)?;
    let header = match input.get(1) {
        Some(&first) if first >= 0x80 => 2 + usize::from(first & 0x7f),
        _ => 2,
    };
    Ok((&input[header..total], rest))
}

/// Total length (header included) of the TLV at the start of `input`, and what follows it.
fn raw_tlv(input: &[u8]) -> Result<(usize, &[u8]), String> {
    let total = crate::ca::asn1::announced_len(input).ok_or("truncated or over-long DER length")?;
    if total > input.len() {
        return Err("truncated DER".to_string());
    }
    Ok((total, &input[total..]))
}

fn trim(bytes: &[u8]) -> &[u8] {
    &bytes[bytes.iter().take_while(|b| **b == 0).count()..]
}
