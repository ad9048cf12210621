//! Fingerprints and PEM.
//!
//! Public material goes through the `pem` crate. Private keys are decoded and
//! encoded here instead, into [`Zeroizing`] buffers allocated once at their
//! final size, so no copy of a key outlives the call.

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use ring::digest;
use zeroize::Zeroizing;

use super::CaError;

/// SHA-256 of `der`, lowercase hex: the identifier of certificates and CAs.
pub fn fingerprint(der: &[u8]) -> String {
    hex::encode(digest::digest(&digest::SHA256, der))
}

/// SHA-256 of `der`, base64url without padding: the `x5t#S256` confirmation
/// of a certificate-bound token (RFC 8705).
pub fn sha256_b64url(der: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(digest::digest(&digest::SHA256, der))
}

/// Every CERTIFICATE block of `pem`, in order; other blocks are skipped.
pub fn certs_from_pem(pem: &str) -> Result<Vec<Vec<u8>>, CaError> {
    let blocks = ::pem::parse_many(pem).map_err(|e| CaError::Pem { reason: e.to_string() })?;
    let certs: Vec<Vec<u8>> =
        blocks.into_iter().filter(|b| b.tag() == "CERTIFICATE").map(::pem::Pem::into_contents).collect();
    if certs.is_empty() {
        return Err(CaError::NoCertificates);
    }
    Ok(certs)
}

/// PEM text of public DER (LF line endings).
pub(crate) fn to_pem(label: &str, der: &[u8]) -> String {
    let config = ::pem::EncodeConfig::new().set_line_ending(::pem::LineEnding::LF);
    ::pem::encode_config(&::pem::Pem::new(label, der), config)
}

/// One DER certificate as PEM ("CERTIFICATE").
pub fn cert_to_pem(der: &[u8]) -> String {
    to_pem("CERTIFICATE", der)
}

/// PEM text of secret DER, built in one zeroizing buffer.
pub(crate) fn secret_to_pem(label: &str, der: &[u8]) -> Zeroizing<String> {
    const LINE: usize = 48; // 64 base64 characters
    let body_len = der.len().div_ceil(3) * 4;
    let lines = der.len().div_ceil(LINE);
    let mut out = Zeroizing::new(String::with_capacity(2 * (label.len() + 17) + body_len + lines));
    out.push_str("-----BEGIN ");
    out.push_str(label);
    out.push_str("-----\n");
    let mut buf = Zeroizing::new([0u8; 64]);
    for chunk in der.chunks(LINE) {
        let n = STANDARD.encode_slice(chunk, &mut buf[..]).unwrap_or(0);
        out.extend(buf[..n].iter().map(|b| char::from(*b)));
        out.push('\n');
    }
    out.push_str("-----END ");
    out.push_str(label);
    out.push_str("-----\n");
    out
}

/// One decoded PEM block holding secret material.
pub(crate) struct SecretBlock {
    pub label: String,
    pub der: Zeroizing<Vec<u8>>,
}

/// Decodes every PEM block of `text` into zeroizing buffers. Refuses
/// encrypted keys (PKCS#8 "ENCRYPTED PRIVATE KEY" or legacy `Proc-Type`
/// headers) with a hint, and never echoes the block content.
pub(crate) fn secret_blocks(text: &str) -> Result<Vec<SecretBlock>, CaError> {
    let fail = |reason: &str| CaError::InvalidKey { reason: reason.to_string() };
    let mut blocks = Vec::new();
    let mut current: Option<(String, Zeroizing<String>)> = None;
    for line in text.lines().map(str::trim) {
        if let Some(label) = begin_label(line) {
            if current.is_some() {
                return Err(fail("PEM block not terminated before the next BEGIN line"));
            }
            if label == "ENCRYPTED PRIVATE KEY" {
                return Err(fail(
                    "encrypted private keys are not supported; decrypt it first (openssl pkcs8 -in key.pem -out plain.pem)",
                ));
            }
            current = Some((label.to_string(), Zeroizing::new(String::with_capacity(text.len()))));
        } else if let Some(label) = end_label(line) {
            let Some((open, body)) = current.take() else {
                return Err(fail("PEM END line without a BEGIN line"));
            };
            if open != label {
                return Err(CaError::InvalidKey { reason: format!("PEM block {open} ends with END {label}") });
            }
            blocks.push(SecretBlock { der: decode_secret(&body, &open)?, label: open });
        } else if let Some((_, body)) = current.as_mut() {
            if line.starts_with("Proc-Type:") {
                return Err(fail(
                    "encrypted private keys are not supported; decrypt it first (openssl ec -in key.pem -out plain.pem)",
                ));
            }
            if !line.contains(':') {
                body.push_str(line);
            }
        }
    }
    if current.is_some() {
        return Err(fail("PEM block has no END line"));
    }
    Ok(blocks)
}

fn decode_secret(body: &str, label: &str) -> Result<Zeroizing<Vec<u8>>, CaError> {
    let mut der = Zeroizing::new(vec![0u8; base64::decoded_len_estimate(body.len())]);
    let n = STANDARD
        .decode_slice(body.as_bytes(), &mut der[..])
        .map_err(|_| CaError::InvalidKey { reason: format!("the {label} PEM block is not valid base64") })?;
    der.truncate(n);
    Ok(der)
}

fn begin_label(line: &str) -> Option<&str> {
    line.strip_prefix("-----BEGIN ")?.strip_suffix("-----")
}

fn end_label(line: &str) -> Option<&str> {
    line.strip_prefix("-----END ")?.strip_suffix("-----")
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn fingerprints() {
        assert_eq!(fingerprint(b"abc"), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
        assert_eq!(sha256_b64url(b"abc"), "ungWv48Bz-pBQUDeXa4iI7ADYaOWF3qctBD_YfIAFa0");
    }

    #[test]
    fn secret_pem_round_trip() {
        let der: Vec<u8> = (0..=200u8).collect();
        let pem = secret_to_pem("PRIVATE KEY", &der);
        assert_eq!(pem.as_str(), to_pem("PRIVATE KEY", &der));
        let blocks = secret_blocks(&pem).unwrap();
        assert_eq!(blocks.len(), 1);
        assert_eq!(blocks[0].label, "PRIVATE KEY");
        assert_eq!(blocks[0].der.as_slice(), der.as_slice());
    }

    #[test]
    fn secret_pem_refusals() {
        let enc = "-----BEGIN ENCRYPTED PRIVATE KEY-----\nAAAA\n-----END ENCRYPTED PRIVATE KEY-----\n";
        assert!(secret_blocks(enc).err().unwrap().to_string().contains("encrypted"));
        let legacy = "-----BEGIN EC PRIVATE KEY-----\nProc-Type: 4,ENCRYPTED\nAAAA\n-----END EC PRIVATE KEY-----\n";
        assert!(secret_blocks(legacy).err().unwrap().to_string().contains("encrypted"));
        let bad = "-----BEGIN PRIVATE KEY-----\n!!!!\n-----END PRIVATE KEY-----\n";
        let err = secret_blocks(bad).err().unwrap().to_string();
        assert!(err.contains("base64") && !err.contains("!!!!"), "{err}");
        assert!(secret_blocks("-----BEGIN PRIVATE KEY-----\nAAAA\n").is_err());
    }

    #[test]
    fn certs_from_pem_needs_one() {
        assert!(matches!(certs_from_pem(""), Err(CaError::NoCertificates)));
        let two = format!("{}{}", to_pem("CERTIFICATE", b"a"), to_pem("CERTIFICATE", b"b"));
        assert_eq!(certs_from_pem(&two).unwrap(), vec![b"a".to_vec(), b"b".to_vec()]);
    }
}
