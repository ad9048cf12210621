//! CA and server private keys: EC P-256 and P-384 on `ring`.
//!
//! Invariant: a [`PrivateKey`] always holds a PKCS#8 document that `ring`
//! accepted, and the key pair parsed from it. The DER only leaves through
//! [`PrivateKey::pkcs8_der`] (to be sealed under the KEK) or
//! [`PrivateKey::to_pem`] (a zeroizing string); `Debug` shows the algorithm only.

use crate::domain::text;
use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

use rcgen::{PKCS_ECDSA_P256_SHA256, PKCS_ECDSA_P384_SHA384, PublicKeyData, SignatureAlgorithm};
use ring::rand::{SecureRandom, SystemRandom};
use ring::signature::{
    ECDSA_P256_SHA256_ASN1_SIGNING, ECDSA_P384_SHA384_ASN1_SIGNING, EcdsaKeyPair, EcdsaSigningAlgorithm, KeyPair as _,
};
use zeroize::Zeroizing;

use super::CaError;
use super::asn1::{OID_P256_DER, OID_P384_DER, sec1_to_pkcs8};
use super::encoding::{secret_blocks, secret_to_pem};

/// The key algorithms trustmesh generates and accepts for CA keys.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum KeyAlgorithm {
    EcP256,
    EcP384,
}

/// An EC private key (PKCS#8) and its parsed `ring` key pair.
#[derive(Clone)]
pub struct PrivateKey {
    algorithm: KeyAlgorithm,
    pkcs8: Zeroizing<Vec<u8>>,
    pair: Arc<EcdsaKeyPair>,
}

impl PrivateKey {
    /// A fresh key from `rng`.
    pub fn generate(alg: KeyAlgorithm, rng: &dyn SecureRandom) -> Result<Self, CaError> {
        let doc = EcdsaKeyPair::generate_pkcs8(alg.ring_signing(), rng)
            .map_err(|_| CaError::KeyGeneration { algorithm: alg })?;
        Self::from_pkcs8_der(doc.as_ref())
    }

    /// An EC P-256 or P-384 key in PKCS#8 DER.
    pub fn from_pkcs8_der(der: &[u8]) -> Result<Self, CaError> {
        let rng = SystemRandom::new();
        let mut last = None;
        for alg in [KeyAlgorithm::EcP256, KeyAlgorithm::EcP384] {
            match EcdsaKeyPair::from_pkcs8(alg.ring_signing(), der, &rng) {
                Ok(pair) => {
                    return Ok(Self { algorithm: alg, pkcs8: Zeroizing::new(der.to_vec()), pair: Arc::new(pair) });
                }
                Err(e) => last = Some(e),
            }
        }
        let detail = last.map(|e| e.to_string()).unwrap_or_default();
        Err(CaError::InvalidKey { reason: format!("not an EC P-256 or P-384 PKCS#8 key ({detail})") })
    }

    /// A key in PEM: "PRIVATE KEY" (PKCS#8) or "EC PRIVATE KEY" (SEC1, as
    /// `openssl ecparam -genkey` writes it, with or without its EC PARAMETERS block).
    pub fn from_pem(pem: &str) -> Result<Self, CaError> {
        let blocks = secret_blocks(pem)?;
        let Some(block) = blocks.iter().find(|b| b.label == "PRIVATE KEY" || b.label == "EC PRIVATE KEY") else {
            let found: Vec<&str> = blocks.iter().map(|b| b.label.as_str()).collect();
            return Err(CaError::InvalidKey {
                reason: if found.is_empty() {
                    "no PEM block found".to_string()
                } else {
                    format!("expected a PRIVATE KEY or EC PRIVATE KEY PEM block, found {}", found.join(", "))
                },
            });
        };
        if block.label == "PRIVATE KEY" {
            return Self::from_pkcs8_der(&block.der);
        }
        // SEC1: the curve is in the key's own parameters (or implied by its
        // size); ring checks it against the PKCS#8 wrapper we try.
        for curve in [OID_P256_DER, OID_P384_DER] {
            if let Ok(key) = Self::from_pkcs8_der(&sec1_to_pkcs8(&block.der, curve)) {
                return Ok(key);
            }
        }
        Err(CaError::InvalidKey {
            reason: "the EC PRIVATE KEY is not a P-256 or P-384 key with its public key included".to_string(),
        })
    }

    pub fn algorithm(&self) -> KeyAlgorithm {
        self.algorithm
    }

    /// The PKCS#8 document, for sealing under the KEK.
    pub fn pkcs8_der(&self) -> &[u8] {
        &self.pkcs8
    }

    /// PKCS#8 PEM ("PRIVATE KEY").
    pub fn to_pem(&self) -> Zeroizing<String> {
        secret_to_pem("PRIVATE KEY", &self.pkcs8)
    }

    /// The SubjectPublicKeyInfo DER of the public half.
    pub fn public_key_der(&self) -> Vec<u8> {
        RcgenKey(self).subject_public_key_info()
    }

    /// An ASN.1 DER ECDSA signature over `msg` (SHA-256 for P-256, SHA-384 for P-384).
    pub(crate) fn sign(&self, msg: &[u8]) -> Result<Vec<u8>, CaError> {
        let rng = SystemRandom::new();
        self.pair
            .sign(&rng, msg)
            .map(|sig| sig.as_ref().to_vec())
            .map_err(|_| CaError::Crl { reason: "the signing key refused to sign".into() })
    }

    /// The DER `AlgorithmIdentifier` of the signatures [`PrivateKey::sign`] makes.
    pub(crate) fn signature_algorithm_der(&self) -> &'static [u8] {
        match self.algorithm {
            // ecdsa-with-SHA256 (1.2.840.10045.4.3.2), no parameters
            KeyAlgorithm::EcP256 => &[0x30, 0x0a, 0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03, 0x02],
            // ecdsa-with-SHA384 (1.2.840.10045.4.3.3)
            KeyAlgorithm::EcP384 => &[0x30, 0x0a, 0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03, 0x03],
        }
    }

    /// The adapter rcgen signs with.
    pub(crate) fn rcgen(&self) -> RcgenKey<'_> {
        RcgenKey(self)
    }
}

impl fmt::Debug for PrivateKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PrivateKey").field("algorithm", &self.algorithm).finish_non_exhaustive()
    }
}

impl KeyAlgorithm {
    fn ring_signing(self) -> &'static EcdsaSigningAlgorithm {
        match self {
            Self::EcP256 => &ECDSA_P256_SHA256_ASN1_SIGNING,
            Self::EcP384 => &ECDSA_P384_SHA384_ASN1_SIGNING,
        }
    }

    /// The certificate signature algorithm of a key of this type
    /// (P-256 signs with ECDSA-SHA256, P-384 with ECDSA-SHA384).
    fn rcgen(self) -> &'static SignatureAlgorithm {
        match self {
            Self::EcP256 => &PKCS_ECDSA_P256_SHA256,
            Self::EcP384 => &PKCS_ECDSA_P384_SHA384,
        }
    }
}

impl fmt::Display for KeyAlgorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::EcP256 => "EC-P256",
            Self::EcP384 => "EC-P384",
        })
    }
}

impl FromStr for KeyAlgorithm {
    type Err = CaError;

    /// "EC-P256" / "EC-P384", any case.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_uppercase().as_str() {
            "EC-P256" => Ok(Self::EcP256),
            "EC-P384" => Ok(Self::EcP384),
            _ => Err(CaError::UnknownAlgorithm { value: text::shorten(s, 64) }),
        }
    }
}

/// A borrowed [`PrivateKey`] seen through rcgen's signing traits. Kept
/// private so rcgen does not leak into the public API, and so rcgen never
/// holds a (non-zeroizing) copy of the key.
pub(crate) struct RcgenKey<'a>(&'a PrivateKey);

impl PublicKeyData for RcgenKey<'_> {
    fn der_bytes(&self) -> &[u8] {
        self.0.pair.public_key().as_ref()
    }

    fn algorithm(&self) -> &'static SignatureAlgorithm {
        self.0.algorithm.rcgen()
    }
}

impl rcgen::SigningKey for RcgenKey<'_> {
    fn sign(&self, msg: &[u8]) -> Result<Vec<u8>, rcgen::Error> {
        self.0.sign(msg).map_err(|_| rcgen::Error::RingUnspecified)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    /// Written by `openssl ecparam -name prime256v1 -genkey` (a throwaway
    /// test key): SEC1 with curve parameters, after an EC PARAMETERS block.
    const OPENSSL_SEC1: &str = "-----BEGIN EC PARAMETERS-----
BggqhkjOPQMBBw==
-----END EC PARAMETERS-----
-----BEGIN EC PRIVATE KEY-----
MHcCAQEEIL8pTReBWosdAk+z+w4nQpy4iVks8pTBNktQxjRPmKHJoAoGCCqGSM49
AwEHoUQDQgAEVzTG2ovReF7xTqkttL89t02CtzRk6xDhU7gVw3DbVFZTak+qeVkA
Rz6ZEJm/yeSBI0ckzIxAY7SnPJk5KE1j6g==
-----END EC PRIVATE KEY-----
";

    #[test]
    fn algorithm_names_round_trip() {
        for alg in [KeyAlgorithm::EcP256, KeyAlgorithm::EcP384] {
            assert_eq!(alg.to_string().parse::<KeyAlgorithm>().unwrap(), alg);
        }
        assert_eq!("ec-p384".parse::<KeyAlgorithm>().unwrap(), KeyAlgorithm::EcP384);
        let err = "RSA-2048".parse::<KeyAlgorithm>().unwrap_err().to_string();
        assert!(err.contains("RSA-2048") && err.contains("EC-P256"), "{err}");
    }

    #[test]
    fn generate_and_reload() {
        let key = PrivateKey::generate(KeyAlgorithm::EcP384, &ring::rand::SystemRandom::new()).unwrap();
        assert_eq!(key.algorithm(), KeyAlgorithm::EcP384);
        let again = PrivateKey::from_pem(&key.to_pem()).unwrap();
        assert_eq!(again.pkcs8_der(), key.pkcs8_der());
        assert_eq!(again.public_key_der(), key.public_key_der());
        let debug = format!("{key:?}");
        assert!(debug.contains("EcP384") && debug.len() < 60, "{debug}");
    }

    #[test]
    fn reads_openssl_sec1() {
        let key = PrivateKey::from_pem(OPENSSL_SEC1).unwrap();
        assert_eq!(key.algorithm(), KeyAlgorithm::EcP256);
        assert!(key.to_pem().starts_with("-----BEGIN PRIVATE KEY-----\n"));
    }

    #[test]
    fn reads_sec1_without_parameters() {
        // ring's PKCS#8 holds a SEC1 key without curve parameters; unwrap it.
        let key = PrivateKey::generate(KeyAlgorithm::EcP384, &ring::rand::SystemRandom::new()).unwrap();
        let (_, pkcs8) = x509_parser::der_parser::der::parse_der_sequence(key.pkcs8_der()).unwrap();
        let sec1 = pkcs8.as_sequence().unwrap()[2].as_slice().unwrap();
        let pem = secret_to_pem("EC PRIVATE KEY", sec1);
        let back = PrivateKey::from_pem(&pem).unwrap();
        assert_eq!(back.public_key_der(), key.public_key_der());
    }

    #[test]
    fn refuses_other_keys() {
        let err = PrivateKey::from_pkcs8_der(b"junk").unwrap_err().to_string();
        assert!(err.contains("P-256"), "{err}");
        let cert = "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n";
        let err = PrivateKey::from_pem(cert).unwrap_err().to_string();
        assert!(err.contains("found CERTIFICATE"), "{err}");
        let ed = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519).unwrap();
        assert!(PrivateKey::from_pem(&ed.serialize_pem()).is_err());
    }
}
