//! Certificate serial numbers: positive, random, at least 128 bits.

use super::text;
use std::fmt;
use std::str::FromStr;

use super::DomainError;

/// Random bytes after the leading byte: 128 bits of entropy.
const RANDOM_BYTES: usize = 16;

/// A certificate serial number as unsigned big-endian bytes without leading zeros.
/// Displayed as lowercase hex, the form the CLI and the store use.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Serial(Vec<u8>);

/// Where new serials come from (random in production, scripted in tests).
pub trait SerialSource: Send + Sync + 'static {
    /// A new serial; an error when no randomness is to be had (never a
    /// fallback value: two certificates must never share a serial).
    fn next_serial(&self) -> Result<Serial, DomainError>;
}

/// Serials from the system CSPRNG: a leading byte in 0x01..=0x7f (positive,
/// no leading zero) followed by 16 random bytes, so every serial has 129 to
/// 135 significant bits of which 128 are random.
#[derive(Debug)]
pub struct RandomSerials(ring::rand::SystemRandom);

impl Default for RandomSerials {
    fn default() -> Self {
        Self(ring::rand::SystemRandom::new())
    }
}

impl SerialSource for RandomSerials {
    fn next_serial(&self) -> Result<Serial, DomainError> {
        use ring::rand::SecureRandom;
        let mut bytes = [0u8; RANDOM_BYTES + 1];
        self.0.fill(&mut bytes).map_err(|_| DomainError::Randomness)?;
        bytes[0] = (bytes[0] & 0x7f).max(1);
        Ok(Serial(bytes.to_vec()))
    }
}

impl Serial {
    /// From DER INTEGER content bytes (as x509-parser or rcgen give them).
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, DomainError> {
        let trimmed: Vec<u8> = bytes.iter().copied().skip_while(|b| *b == 0).collect();
        if trimmed.is_empty() {
            return Err(DomainError::Serial { value: hex::encode(bytes), reason: "must not be zero" });
        }
        if trimmed.len() > 20 {
            return Err(DomainError::Serial { value: hex::encode(bytes), reason: "longer than 20 bytes" });
        }
        Ok(Self(trimmed))
    }

    /// Big-endian bytes without leading zeros.
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    /// Number of significant bits.
    pub fn bits(&self) -> usize {
        let lead = self.0.first().copied().unwrap_or(0);
        self.0.len() * 8 - lead.leading_zeros() as usize
    }
}

impl FromStr for Serial {
    type Err = DomainError;

    /// Accepts hex with or without `:` separators (as openssl prints them), any case.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let cleaned: String = s.trim().chars().filter(|c| *c != ':').collect();
        let cleaned = cleaned.strip_prefix("0x").unwrap_or(&cleaned);
        let padded = if cleaned.len() % 2 == 1 { format!("0{cleaned}") } else { cleaned.to_string() };
        let bytes = hex::decode(&padded)
            .map_err(|_| DomainError::Serial { value: text::shorten(s, 64), reason: "not hexadecimal" })?;
        Self::from_bytes(&bytes)
    }
}

impl fmt::Display for Serial {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(&self.0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn random_serials_are_positive_and_wide() {
        let src = RandomSerials::default();
        let a = src.next_serial().unwrap();
        let b = src.next_serial().unwrap();
        assert_ne!(a, b);
        for s in [a, b] {
            assert!(s.bits() >= 129, "{} bits", s.bits());
            assert!(s.as_bytes()[0] & 0x80 == 0 && s.as_bytes()[0] != 0);
        }
    }

    #[test]
    fn parses_openssl_forms() {
        let s: Serial = "01:AB:cd".parse().unwrap();
        assert_eq!(s.to_string(), "01abcd");
        assert_eq!("1abcd".parse::<Serial>().unwrap(), s);
        assert!("zz".parse::<Serial>().is_err());
        assert!("00".parse::<Serial>().is_err());
        assert!("ab".repeat(21).parse::<Serial>().is_err());
    }
}
