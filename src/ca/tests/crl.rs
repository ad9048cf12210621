//! CRLs: round trip through x509-parser, reasons, numbers, signature.

use time::Duration;
use x509_parser::prelude::FromDer;
use x509_parser::revocation_list::CertificateRevocationList;

use super::{hierarchy, now, now_s, serial, x509};
use crate::ca::cert::authority_key_id;
use crate::ca::{CaError, CrlEntry, RevocationReason, build_crl};

#[test]
fn crl_round_trip() {
    let h = hierarchy();
    let entries = [
        CrlEntry {
            serial: serial(30),
            revoked_at: now() - Duration::minutes(5),
            reason: Some(RevocationReason::KeyCompromise),
        },
        CrlEntry { serial: serial(31), revoked_at: now(), reason: None },
        CrlEntry { serial: serial(30), revoked_at: now(), reason: None },
    ];
    let crl = build_crl(&h.services, &entries, 42, now(), Duration::hours(24)).unwrap();
    assert_eq!(crl.number, 42);
    assert_eq!(crl.issuer_fingerprint, h.services.cert.fingerprint);
    assert_eq!(crl.this_update, now_s() - Duration::seconds(60));
    assert_eq!(crl.next_update, now_s() + Duration::hours(24));
    assert!(crl.to_pem().starts_with("-----BEGIN X509 CRL-----\n"));

    let (rest, parsed) = CertificateRevocationList::from_der(&crl.der).unwrap();
    assert!(rest.is_empty());
    assert_eq!(parsed.version().map(|v| v.0), Some(1), "v2");
    assert_eq!(parsed.last_update().to_datetime(), now_s() - Duration::seconds(60));
    assert_eq!(parsed.next_update().map(|t| t.to_datetime()), Some(now_s() + Duration::hours(24)));
    assert_eq!(parsed.crl_number().map(|n| n.to_u64_digits()), Some(vec![42]));
    let ca = x509(&h.services.cert.der);
    parsed.verify_signature(ca.public_key()).unwrap();
    assert_eq!(parsed.issuer().as_raw(), ca.subject().as_raw());

    let revoked: Vec<_> = parsed.iter_revoked_certificates().collect();
    assert_eq!(revoked.len(), 2, "the duplicate serial is listed once");
    assert_eq!(revoked[0].raw_serial(), serial(30).as_bytes());
    assert_eq!(revoked[0].reason_code().map(|(_, r)| r.0), Some(1));
    assert_eq!(revoked[0].revocation_date.to_datetime(), now_s() - Duration::minutes(5));
    assert_eq!(revoked[1].raw_serial(), serial(31).as_bytes());
    assert!(revoked[1].reason_code().is_none());

    let aki = parsed.extensions().iter().find_map(|e| match e.parsed_extension() {
        x509_parser::extensions::ParsedExtension::AuthorityKeyIdentifier(a) => a.key_identifier.as_ref().map(|k| k.0),
        _ => None,
    });
    assert_eq!(aki, h.services.cert.subject_key_id());
    assert_eq!(authority_key_id(&ca), h.root.cert.subject_key_id());
}

#[test]
fn empty_crl_and_refusals() {
    let h = hierarchy();
    let crl = build_crl(&h.root, &[], 0, now(), Duration::days(7)).unwrap();
    let (_, parsed) = CertificateRevocationList::from_der(&crl.der).unwrap();
    assert_eq!(parsed.iter_revoked_certificates().count(), 0);
    let err = build_crl(&h.root, &[], 1, now(), Duration::ZERO).unwrap_err();
    assert!(matches!(err, CaError::Lifetime { .. }), "{err}");
}

#[test]
fn revocation_reason_names() {
    for r in [
        RevocationReason::Unspecified,
        RevocationReason::KeyCompromise,
        RevocationReason::CaCompromise,
        RevocationReason::AffiliationChanged,
        RevocationReason::Superseded,
        RevocationReason::CessationOfOperation,
        RevocationReason::CertificateHold,
        RevocationReason::PrivilegeWithdrawn,
    ] {
        assert_eq!(r.to_string().parse::<RevocationReason>().unwrap(), r);
    }
    assert_eq!(RevocationReason::KeyCompromise.to_string(), "keyCompromise");
    assert_eq!(RevocationReason::CaCompromise.to_string(), "cACompromise");
    assert_eq!(RevocationReason::PrivilegeWithdrawn.code(), 9);
    assert_eq!("key-compromise".parse::<RevocationReason>().unwrap(), RevocationReason::KeyCompromise);
    assert_eq!("caCompromise".parse::<RevocationReason>().unwrap(), RevocationReason::CaCompromise);
    let err = "stolen".parse::<RevocationReason>().unwrap_err().to_string();
    assert!(err.contains("\"stolen\"") && err.contains("keyCompromise") && err.contains("privilegeWithdrawn"), "{err}");
}

#[test]
fn a_crl_signed_elsewhere_is_read_back_and_its_issuer_checked() {
    use crate::ca::{MAX_CRL_BYTES, parse_crl};
    let h = hierarchy();
    let built = build_crl(&h.root, &[], 7, now(), Duration::days(30)).unwrap();
    for input in [built.der.clone(), built.to_pem().into_bytes()] {
        let read = parse_crl(&input, &[&h.services.cert, &h.root.cert]).unwrap();
        assert_eq!(read.issuer_fingerprint, h.root.cert.fingerprint);
        assert_eq!((read.number, read.next_update, read.this_update), (7, built.next_update, built.this_update));
        assert_eq!(read.der, built.der);
    }
    let err = |input: &[u8], issuers: &[&crate::ca::CaCertificate]| parse_crl(input, issuers).unwrap_err().to_string();
    assert!(err(&built.der, &[&h.services.cert]).contains("is not a CA of this trust domain"));
    assert!(err(&vec![0x30; MAX_CRL_BYTES + 1], &[&h.root.cert]).contains("more than the 1048576 accepted"));
    assert!(err(b"\x30\x03\x02\x01\x01", &[&h.root.cert]).contains("not a DER CRL"));
    let mut trailing = built.der.clone();
    trailing.push(0);
    assert!(err(&trailing, &[&h.root.cert]).contains("1 bytes after the CRL"));
    let mut tampered = built.der.clone();
    let last = tampered.len() - 1;
    tampered[last] ^= 1;
    assert!(err(&tampered, &[&h.root.cert]).contains("signature does not verify"));
}

#[test]
fn the_check_after_signing_catches_every_difference() {
    use crate::ca::crl::validate_crl;
    use std::collections::HashSet;
    let h = hierarchy();
    let entries = [
        CrlEntry { serial: serial(40), revoked_at: now(), reason: Some(RevocationReason::KeyCompromise) },
        CrlEntry { serial: serial(41), revoked_at: now(), reason: None },
    ];
    let crl = build_crl(&h.services, &entries, 9, now(), Duration::days(1)).unwrap();
    let (a, b) = (serial(40), serial(41));
    let both: HashSet<&[u8]> = [a.as_bytes(), b.as_bytes()].into_iter().collect();
    validate_crl(&h.services, &crl.der, &both, 9, now_s() - Duration::seconds(60)).unwrap();
    let one: HashSet<&[u8]> = [a.as_bytes()].into_iter().collect();
    let err = |r: Result<(), String>| r.unwrap_err();
    assert!(err(validate_crl(&h.services, &crl.der, &one, 9, now_s() - Duration::seconds(60))).contains("serial"));
    assert!(err(validate_crl(&h.services, &crl.der, &both, 10, now_s() - Duration::seconds(60))).contains("number"));
    assert!(err(validate_crl(&h.services, &crl.der, &both, 9, now_s())).contains("thisUpdate"));
    assert!(err(validate_crl(&h.root, &crl.der, &both, 9, now_s() - Duration::seconds(60))).contains("algorithm"));
    // Any flipped byte of the signed part breaks the signature; a cut is truncation.
    for i in [10, crl.der.len() / 2, crl.der.len() - 80] {
        let mut bad = crl.der.clone();
        bad[i] ^= 0x01;
        assert!(validate_crl(&h.services, &bad, &both, 9, now_s() - Duration::seconds(60)).is_err(), "byte {i}");
    }
    assert!(validate_crl(&h.services, &crl.der[..crl.der.len() - 1], &both, 9, now_s()).is_err());
}
