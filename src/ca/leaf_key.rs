//! Keys the server generates for certificates it hands out with their key
//! (`issue` under a profile): EC P-256 and P-384 and Ed25519 on `ring`, RSA
//! 2048/3072/4096 on the `rsa` crate (ring verifies RSA but cannot generate
//! it), every one parsed back by `ring` before it is used.
//!
//! Invariant: a [`LeafKey`] holds a PKCS#8 document that `ring` accepted and
//! the SubjectPublicKeyInfo of its public half. The private key only leaves
//! as a zeroizing PEM string; `Debug` shows the key type only. The CA's own
//! keys are [`super::PrivateKey`]s and never one of these.

use std::fmt;

use ring::rand::SecureRandom;
use ring::signature::{
    ECDSA_P256_SHA256_ASN1_SIGNING, ECDSA_P384_SHA384_ASN1_SIGNING, EcdsaKeyPair, Ed25519KeyPair, KeyPair as _,
    RsaKeyPair,
};
use zeroize::Zeroizing;

use super::CaError;
use super::asn1::{OID_EC_PUBLIC_KEY_DER, OID_P256_DER, OID_P384_DER, TAG_BIT_STRING, TAG_SEQUENCE, tlv};
use super::encoding::secret_to_pem;
use crate::domain::KeyShape;

/// `id-Ed25519` (1.3.101.112), DER-encoded with tag and length.
const OID_ED25519_DER: &[u8] = &[0x06, 0x03, 0x2b, 0x65, 0x70];

/// A generated subject key: PKCS#8 and the public key's SubjectPublicKeyInfo.
pub struct LeafKey {
    shape: KeyShape,
    pkcs8: Zeroizing<Vec<u8>>,
    spki: Vec<u8>,
}

impl LeafKey {
    /// A fresh key of `shape` from `rng`: EC P-256/P-384, Ed25519, or RSA of
    /// 2048, 3072 or 4096 bits (RSA takes up to seconds: call it off the
    /// async workers).
    pub fn generate(shape: KeyShape, rng: &dyn SecureRandom) -> Result<Self, CaError> {
        let failed = |reason: &str| CaError::LeafKey { key: shape.to_string(), reason: reason.to_string() };
        let (pkcs8, spki) = match shape {
            KeyShape::Ec(bits @ (256 | 384)) => {
                let (alg, curve) = if bits == 256 {
                    (&ECDSA_P256_SHA256_ASN1_SIGNING, OID_P256_DER)
                } else {
                    (&ECDSA_P384_SHA384_ASN1_SIGNING, OID_P384_DER)
                };
                let doc = EcdsaKeyPair::generate_pkcs8(alg, rng).map_err(|_| failed("the generator failed"))?;
                let pkcs8 = Zeroizing::new(doc.as_ref().to_vec());
                let pair = EcdsaKeyPair::from_pkcs8(alg, &pkcs8, rng).map_err(|_| failed("ring refused it"))?;
                let alg_id = [OID_EC_PUBLIC_KEY_DER, curve].concat();
                (pkcs8, spki(&alg_id, pair.public_key().as_ref()))
            }
            KeyShape::Ed25519 => {
                let doc = Ed25519KeyPair::generate_pkcs8(rng).map_err(|_| failed("the generator failed"))?;
                let pkcs8 = Zeroizing::new(doc.as_ref().to_vec());
                let pair = Ed25519KeyPair::from_pkcs8(&pkcs8).map_err(|_| failed("ring refused it"))?;
                (pkcs8, spki(OID_ED25519_DER, pair.public_key().as_ref()))
            }
            KeyShape::Rsa(bits @ (2048 | 3072 | 4096)) => rsa_key(bits, rng).map_err(|e| failed(&e))?,
            KeyShape::Ec(_) | KeyShape::Rsa(_) => {
                return Err(failed("trustmesh generates EC P-256/P-384, Ed25519 and RSA 2048/3072/4096 keys"));
            }
        };
        Ok(Self { shape, pkcs8, spki })
    }

    pub fn shape(&self) -> KeyShape {
        self.shape
    }

    /// The SubjectPublicKeyInfo DER of the public half.
    pub fn public_key_der(&self) -> &[u8] {
        &self.spki
    }

    /// PKCS#8 PEM ("PRIVATE KEY").
    pub fn to_pem(&self) -> Zeroizing<String> {
        secret_to_pem("PRIVATE KEY", &self.pkcs8)
    }

    /// Vault's `private_key_type`: `rsa`, `ec` or `ed25519`.
    pub fn type_name(&self) -> &'static str {
        match self.shape {
            KeyShape::Rsa(_) => "rsa",
            KeyShape::Ec(_) => "ec",
            KeyShape::Ed25519 => "ed25519",
        }
    }
}

impl fmt::Debug for LeafKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LeafKey").field("shape", &self.shape).finish_non_exhaustive()
    }
}

/// SEQUENCE { SEQUENCE { algorithm }, BIT STRING { 0 unused bits, key } }.
fn spki(algorithm: &[u8], key: &[u8]) -> Vec<u8> {
    let bits = tlv(TAG_BIT_STRING, &[&[0u8][..], key].concat());
    tlv(TAG_SEQUENCE, &[tlv(TAG_SEQUENCE, algorithm), bits].concat())
}

/// An RSA key from the `rsa` crate with randomness from `rng`, checked by
/// ring: (PKCS#8, SubjectPublicKeyInfo).
fn rsa_key(bits: u32, rng: &dyn SecureRandom) -> Result<(Zeroizing<Vec<u8>>, Vec<u8>), String> {
    use rsa::pkcs8::{EncodePrivateKey, EncodePublicKey};
    let key = rsa::PrivateKey::new(&mut RingRng(rng), bits as usize).map_err(|e| e.to_string())?;
    let pkcs8 = Zeroizing::new(key.to_pkcs8_der().map_err(|e| e.to_string())?.as_bytes().to_vec());
    let spki = key.to_public_key().to_public_key_der().map_err(|e| e.to_string())?.as_bytes().to_vec();
    RsaKeyPair::from_pkcs8(&pkcs8).map_err(|e| format!("ring refused it: {e}"))?;
    Ok((pkcs8, spki))
}

/// ring's generator seen through the `rand_core` traits the `rsa` crate takes.
struct RingRng<'a>(&'a dyn SecureRandom);

#[derive(Debug)]
struct RngFailed;

impl fmt::Display for RngFailed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("the system random number generator failed")
    }
}

impl std::error::Error for RngFailed {}

impl rsa::rand_core::TryRng for RingRng<'_> {
    type Error = RngFailed;

    fn try_next_u32(&mut self) -> Result<u32, RngFailed> {
        let mut b = [0u8; 4];
        self.try_fill_bytes(&mut b)?;
        Ok(u32::from_le_bytes(b))
    }

    fn try_next_u64(&mut self) -> Result<u64, RngFailed> {
        let mut b = [0u8; 8];
        self.try_fill_bytes(&mut b)?;
        Ok(u64::from_le_bytes(b))
    }

    fn try_fill_bytes(&mut self, dst: &mut [u8]) -> Result<(), RngFailed> {
        self.0.fill(dst).map_err(|_| RngFailed)
    }
}

impl rsa::rand_core::TryCryptoRng for RingRng<'_> {}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use x509_parser::prelude::FromDer;
    use x509_parser::x509::SubjectPublicKeyInfo;

    #[test]
    fn every_shape_generates_a_key_whose_public_half_parses_as_that_shape() {
        let rng = ring::rand::SystemRandom::new();
        for shape in [KeyShape::Ec(256), KeyShape::Ec(384), KeyShape::Ed25519, KeyShape::Rsa(2048)] {
            let key = LeafKey::generate(shape, &rng).unwrap();
            let (rest, spki) = SubjectPublicKeyInfo::from_der(key.public_key_der()).unwrap();
            assert!(rest.is_empty());
            assert_eq!(super::super::asn1::KeyKind::of(&spki).shape(), Some(shape));
            assert!(key.to_pem().starts_with("-----BEGIN PRIVATE KEY-----\n"));
            assert!(format!("{key:?}").len() < 60);
        }
        for bad in [KeyShape::Rsa(1024), KeyShape::Ec(521)] {
            assert!(LeafKey::generate(bad, &rng).unwrap_err().to_string().contains("generates"));
        }
    }
}
