//! The key-encryption key: AES-256-GCM over CA and signing keys at rest.
//!
//! Sealed form (version 1): `b"tmk1" || nonce (12 random bytes) || ciphertext || tag (16)`.
//! The associated data binds a blob to where it is stored (for example the
//! CA fingerprint), so a sealed key copied onto another row does not open.

use std::fmt;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use ring::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use ring::rand::SecureRandom;
use zeroize::{Zeroize as _, Zeroizing};

use super::CaError;

const MAGIC: &[u8; 4] = b"tmk1";
const KEY_LEN: usize = 32;
const TAG_LEN: usize = 16;

/// An AES-256-GCM key-encryption key.
pub struct Kek {
    key: LessSafeKey,
}

impl Kek {
    /// A fresh random KEK and its file form (base64 of the 32 bytes, newline).
    pub fn generate(rng: &dyn SecureRandom) -> Result<(Self, Zeroizing<String>), CaError> {
        let mut bytes = Zeroizing::new([0u8; KEY_LEN]);
        rng.fill(&mut bytes[..]).map_err(|_| CaError::Randomness)?;
        let mut text = Zeroizing::new(String::with_capacity(KEY_LEN.div_ceil(3) * 4 + 1));
        STANDARD.encode_string(&bytes[..], &mut text);
        text.push('\n');
        Ok((Self::from_bytes(&bytes[..])?, text))
    }

    /// Reads the file form: base64 of exactly 32 bytes; whitespace around it is ignored.
    pub fn from_file_contents(text: &str) -> Result<Self, CaError> {
        let trimmed = text.trim();
        if trimmed.is_empty() {
            return Err(CaError::InvalidKek { reason: "the file is empty".to_string() });
        }
        let mut bytes = Zeroizing::new(vec![0u8; base64::decoded_len_estimate(trimmed.len())]);
        let n = STANDARD
            .decode_slice(trimmed.as_bytes(), &mut bytes[..])
            .map_err(|_| CaError::InvalidKek { reason: "the file is not valid base64".to_string() })?;
        if n != KEY_LEN {
            return Err(CaError::InvalidKek {
                reason: format!("expected {KEY_LEN} bytes after base64 decoding, found {n}"),
            });
        }
        Self::from_bytes(&bytes[..n])
    }

    /// Encrypts `plaintext`, authenticating `aad` with it.
    pub fn seal(&self, plaintext: &[u8], aad: &[u8], rng: &dyn SecureRandom) -> Result<Vec<u8>, CaError> {
        let mut nonce = [0u8; NONCE_LEN];
        rng.fill(&mut nonce).map_err(|_| CaError::Randomness)?;
        let mut out = Vec::with_capacity(MAGIC.len() + NONCE_LEN + plaintext.len() + TAG_LEN);
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&nonce);
        out.extend_from_slice(plaintext);
        // Encrypted in place: the plaintext copy is overwritten, and the
        // capacity reserved above means no reallocation leaves one behind.
        let sealed = self.key.seal_in_place_separate_tag(
            Nonce::assume_unique_for_key(nonce),
            Aad::from(aad),
            &mut out[MAGIC.len() + NONCE_LEN..],
        );
        let Ok(tag) = sealed else {
            out.zeroize();
            return Err(CaError::Seal { reason: "encryption failed" });
        };
        out.extend_from_slice(tag.as_ref());
        Ok(out)
    }

    /// Decrypts a blob made by [`Kek::seal`] with the same `aad`.
    pub fn open(&self, sealed: &[u8], aad: &[u8]) -> Result<Zeroizing<Vec<u8>>, CaError> {
        if sealed.len() < MAGIC.len() + NONCE_LEN + TAG_LEN {
            return Err(CaError::Unseal { reason: "the sealed data is too short" });
        }
        let (magic, rest) = sealed.split_at(MAGIC.len());
        if magic != MAGIC {
            return Err(CaError::Unseal { reason: "unknown sealed format (expected version tmk1)" });
        }
        let (nonce, ciphertext) = rest.split_at(NONCE_LEN);
        let nonce = Nonce::try_assume_unique_for_key(nonce).map_err(|_| CaError::Unseal { reason: "bad nonce" })?;
        let mut buf = Zeroizing::new(ciphertext.to_vec());
        let len = self
            .key
            .open_in_place(nonce, Aad::from(aad), &mut buf[..])
            .map_err(|_| CaError::Unseal {
                reason: "authentication failed (wrong key-encryption key, wrong context, or modified data)",
            })?
            .len();
        buf.truncate(len);
        Ok(buf)
    }

    fn from_bytes(bytes: &[u8]) -> Result<Self, CaError> {
        let key = UnboundKey::new(&AES_256_GCM, bytes)
            .map_err(|_| CaError::InvalidKek { reason: format!("expected {KEY_LEN} bytes") })?;
        Ok(Self { key: LessSafeKey::new(key) })
    }
}

impl fmt::Debug for Kek {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Kek(AES-256-GCM, redacted)")
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_through_the_file_form() {
        let (kek, file) = Kek::generate(&ring::rand::SystemRandom::new()).unwrap();
        assert!(file.ends_with('\n'));
        assert_eq!(file.trim().len(), 44);
        let sealed = kek.seal(b"secret key bytes", b"ca-1", &ring::rand::SystemRandom::new()).unwrap();
        assert_eq!(&sealed[..4], b"tmk1");
        assert_eq!(sealed.len(), 4 + 12 + 16 + 16);
        let reread = Kek::from_file_contents(&format!("  {}  \n", file.trim())).unwrap();
        assert_eq!(reread.open(&sealed, b"ca-1").unwrap().as_slice(), b"secret key bytes");
        // Fresh nonce every time.
        assert_ne!(
            kek.seal(b"x", b"", &ring::rand::SystemRandom::new()).unwrap(),
            kek.seal(b"x", b"", &ring::rand::SystemRandom::new()).unwrap()
        );
        assert_eq!(format!("{kek:?}"), "Kek(AES-256-GCM, redacted)");
    }

    #[test]
    fn wrong_kek_aad_or_tampering_fail() {
        let (kek, _) = Kek::generate(&ring::rand::SystemRandom::new()).unwrap();
        let (other, _) = Kek::generate(&ring::rand::SystemRandom::new()).unwrap();
        let sealed = kek.seal(b"secret", b"ca-1", &ring::rand::SystemRandom::new()).unwrap();
        for (k, blob, aad) in [(&other, sealed.clone(), &b"ca-1"[..]), (&kek, sealed.clone(), &b"ca-2"[..])] {
            let err = k.open(&blob, aad).unwrap_err().to_string();
            assert!(err.contains("authentication failed"), "{err}");
        }
        for i in [4, 20, sealed.len() - 1] {
            let mut t = sealed.clone();
            t[i] ^= 1;
            assert!(kek.open(&t, b"ca-1").is_err(), "byte {i}");
        }
        let mut v = sealed.clone();
        v[3] = b'9';
        assert!(kek.open(&v, b"ca-1").unwrap_err().to_string().contains("tmk1"));
        assert!(kek.open(&sealed[..20], b"ca-1").unwrap_err().to_string().contains("short"));
    }

    #[test]
    fn file_form_is_checked() {
        assert!(Kek::from_file_contents("").unwrap_err().to_string().contains("empty"));
        let err = Kek::from_file_contents("not base64 !!!").unwrap_err().to_string();
        assert!(err.contains("base64") && !err.contains("!!!"), "{err}");
        let short = STANDARD.encode([7u8; 16]);
        let err = Kek::from_file_contents(&short).unwrap_err().to_string();
        assert!(err.contains("found 16"), "{err}");
    }
}
