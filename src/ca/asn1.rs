//! Small DER helpers: the handful of encodings rcgen and x509-parser do not
//! give us (wrapping a SEC1 key into PKCS#8), and naming the key type of a
//! SubjectPublicKeyInfo the way the CLI prints it ("EC-P256", "RSA-2048").

use std::fmt;

use x509_parser::oid_registry::{
    OID_EC_P256, OID_KEY_TYPE_EC_PUBLIC_KEY, OID_NIST_EC_P384, OID_PKCS1_RSAENCRYPTION, OID_SIG_ED25519,
};
use x509_parser::public_key::PublicKey;
use x509_parser::x509::SubjectPublicKeyInfo;
use zeroize::Zeroizing;

use super::CaError;
use crate::domain::KeyShape;

const MIN_RSA_BITS: usize = 2048;
const MAX_RSA_BITS: usize = 8192;

/// `id-ecPublicKey` (1.2.840.10045.2.1), DER-encoded with tag and length.
pub(crate) const OID_EC_PUBLIC_KEY_DER: &[u8] = &[0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01];
/// `prime256v1` (1.2.840.10045.3.1.7).
pub(crate) const OID_P256_DER: &[u8] = &[0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07];
/// `secp384r1` (1.3.132.0.34).
pub(crate) const OID_P384_DER: &[u8] = &[0x06, 0x05, 0x2b, 0x81, 0x04, 0x00, 0x22];

pub(crate) const TAG_INTEGER: u8 = 0x02;
pub(crate) const TAG_BIT_STRING: u8 = 0x03;
pub(crate) const TAG_OCTET_STRING: u8 = 0x04;
pub(crate) const TAG_ENUMERATED: u8 = 0x0a;
pub(crate) const TAG_SEQUENCE: u8 = 0x30;

/// The kind of a public key, as found in a SubjectPublicKeyInfo.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum KeyKind {
    EcP256,
    EcP384,
    /// An EC key on another curve (the curve OID, or "unnamed").
    EcOther(String),
    Ed25519,
    /// RSA with its modulus size in bits.
    Rsa(usize),
    /// Anything else (the algorithm OID).
    Other(String),
}

impl KeyKind {
    pub(crate) fn of(spki: &SubjectPublicKeyInfo<'_>) -> Self {
        let alg = &spki.algorithm.algorithm;
        if *alg == OID_KEY_TYPE_EC_PUBLIC_KEY {
            let curve = spki.algorithm.parameters.as_ref().and_then(|p| p.as_oid().ok());
            match curve {
                Some(c) if c == OID_EC_P256 => Self::EcP256,
                Some(c) if c == OID_NIST_EC_P384 => Self::EcP384,
                Some(c) => Self::EcOther(c.to_id_string()),
                None => Self::EcOther("unnamed".to_string()),
            }
        } else if *alg == OID_SIG_ED25519 {
            Self::Ed25519
        } else if *alg == OID_PKCS1_RSAENCRYPTION {
            match spki.parsed() {
                Ok(PublicKey::RSA(rsa)) => Self::Rsa(unsigned_bits(rsa.modulus)),
                _ => Self::Rsa(0),
            }
        } else {
            Self::Other(alg.to_id_string())
        }
    }

    pub(crate) fn is_rsa(&self) -> bool {
        matches!(self, Self::Rsa(_))
    }

    /// The key as a profile judges it (`None` for keys trustmesh refuses anyway).
    pub(crate) fn shape(&self) -> Option<KeyShape> {
        match self {
            Self::EcP256 => Some(KeyShape::Ec(256)),
            Self::EcP384 => Some(KeyShape::Ec(384)),
            Self::Ed25519 => Some(KeyShape::Ed25519),
            Self::Rsa(bits) => u32::try_from(*bits).ok().map(KeyShape::Rsa),
            Self::EcOther(_) | Self::Other(_) => None,
        }
    }

    /// The subject keys trustmesh certifies: EC P-256, EC P-384, Ed25519 and
    /// RSA from 2048 to 8192 bits (what `ring` verifies).
    pub(crate) fn check_subject_key(&self) -> Result<(), CaError> {
        let refuse =
            |reason: &str| Err(CaError::UnsupportedKey { key_type: self.to_string(), reason: reason.to_string() });
        match self {
            Self::EcP256 | Self::EcP384 | Self::Ed25519 => Ok(()),
            Self::Rsa(bits) if *bits < MIN_RSA_BITS => refuse("RSA keys need at least 2048 bits"),
            Self::Rsa(bits) if *bits > MAX_RSA_BITS => refuse("RSA keys of more than 8192 bits"),
            Self::Rsa(_) => Ok(()),
            Self::EcOther(_) => refuse("only the P-256 and P-384 curves"),
            Self::Other(_) => refuse("unknown public key algorithm"),
        }
    }
}

impl fmt::Display for KeyKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::EcP256 => f.write_str("EC-P256"),
            Self::EcP384 => f.write_str("EC-P384"),
            Self::EcOther(curve) => write!(f, "EC-{curve}"),
            Self::Ed25519 => f.write_str("Ed25519"),
            Self::Rsa(bits) => write!(f, "RSA-{bits}"),
            Self::Other(oid) => write!(f, "key algorithm {oid}"),
        }
    }
}

/// Significant bits of a big-endian unsigned integer (leading zeros ignored).
pub(crate) fn unsigned_bits(bytes: &[u8]) -> usize {
    let trimmed: &[u8] = match bytes.iter().position(|b| *b != 0) {
        Some(i) => &bytes[i..],
        None => return 0,
    };
    let lead = trimmed.first().copied().unwrap_or(0);
    trimmed.len() * 8 - lead.leading_zeros() as usize
}

/// Total length (header included) that the outer DER TLV of `input`
/// announces, when its header is readable. Used to report truncation.
pub(crate) fn announced_len(input: &[u8]) -> Option<usize> {
    let first = *input.get(1)?;
    if first < 0x80 {
        return Some(2 + usize::from(first));
    }
    let n = usize::from(first & 0x7f);
    if n == 0 || n > 4 {
        return None;
    }
    let bytes = input.get(2..2 + n)?;
    let len = bytes.iter().fold(0usize, |acc, b| (acc << 8) | usize::from(*b));
    Some(2 + n + len)
}

/// Wraps a SEC1 `ECPrivateKey` into a PKCS#8 `PrivateKeyInfo` for the given
/// curve (`curve_oid` is one of the `OID_P*_DER` constants).
pub(crate) fn sec1_to_pkcs8(sec1: &[u8], curve_oid: &[u8]) -> Zeroizing<Vec<u8>> {
    let mut alg = Vec::with_capacity(OID_EC_PUBLIC_KEY_DER.len() + curve_oid.len());
    alg.extend_from_slice(OID_EC_PUBLIC_KEY_DER);
    alg.extend_from_slice(curve_oid);
    let alg = tlv(TAG_SEQUENCE, &alg);
    let key = Zeroizing::new(tlv(TAG_OCTET_STRING, sec1));
    let mut body = Zeroizing::new(Vec::with_capacity(3 + alg.len() + key.len()));
    body.extend_from_slice(&[TAG_INTEGER, 0x01, 0x00]);
    body.extend_from_slice(&alg);
    body.extend_from_slice(&key);
    Zeroizing::new(tlv(TAG_SEQUENCE, &body))
}

/// One DER TLV. The output is allocated once at its final size, so no
/// partial copy of secret content is left behind by a reallocation.
pub(crate) fn tlv(tag: u8, content: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(content.len() + 6);
    push_tlv(&mut out, tag, content);
    out
}

/// Appends one DER TLV to `out`.
pub(crate) fn push_tlv(out: &mut Vec<u8>, tag: u8, content: &[u8]) {
    let len = content.len();
    out.push(tag);
    if len < 0x80 {
        out.push(len as u8);
    } else {
        let bytes = len.to_be_bytes();
        let skip = bytes.iter().take_while(|b| **b == 0).count();
        out.push(0x80 | (bytes.len() - skip) as u8);
        out.extend_from_slice(&bytes[skip..]);
    }
    out.extend_from_slice(content);
}

/// Appends a DER INTEGER holding the unsigned big-endian `magnitude`
/// (leading zeros dropped, a 0x00 added when the top bit is set).
pub(crate) fn push_unsigned(out: &mut Vec<u8>, magnitude: &[u8]) {
    let start = magnitude.iter().position(|b| *b != 0).unwrap_or(magnitude.len().saturating_sub(1));
    let digits = magnitude.get(start..).unwrap_or(&[]);
    let pad = digits.first().is_none_or(|b| b & 0x80 != 0);
    out.push(TAG_INTEGER);
    out.push((digits.len() + usize::from(pad)) as u8);
    if pad {
        out.push(0);
    }
    out.extend_from_slice(digits);
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn tlv_lengths() {
        assert_eq!(tlv(0x04, &[1, 2]), vec![0x04, 0x02, 1, 2]);
        let long = vec![0u8; 200];
        assert_eq!(&tlv(0x04, &long)[..3], &[0x04, 0x81, 200]);
        let longer = vec![0u8; 300];
        assert_eq!(&tlv(0x04, &longer)[..4], &[0x04, 0x82, 0x01, 0x2c]);
    }

    #[test]
    fn unsigned_integers() {
        let enc = |m: &[u8]| {
            let mut out = Vec::new();
            push_unsigned(&mut out, m);
            out
        };
        assert_eq!(enc(&[0x01, 0x02]), vec![0x02, 0x02, 0x01, 0x02]);
        assert_eq!(enc(&[0x00, 0x00, 0x7f]), vec![0x02, 0x01, 0x7f]);
        assert_eq!(enc(&[0x80]), vec![0x02, 0x02, 0x00, 0x80]);
        assert_eq!(enc(&[0x00]), vec![0x02, 0x01, 0x00]);
        assert_eq!(enc(&[]), vec![0x02, 0x01, 0x00]);
    }

    #[test]
    fn counts_bits() {
        assert_eq!(unsigned_bits(&[0x00, 0x80, 0x00]), 16);
        assert_eq!(unsigned_bits(&[0x01]), 1);
        assert_eq!(unsigned_bits(&[0x00]), 0);
        assert_eq!(unsigned_bits(&[]), 0);
    }
}
