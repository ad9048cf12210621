//! Why a certificate was revoked: every CRLReason of RFC 5280 §5.3.1, the
//! one list the CA (reason codes in CRLs), the store (reason names in
//! records) and the CLI (`--reason`) share.

use std::fmt;
use std::str::FromStr;

use super::DomainError;
use super::text::quoted;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RevocationReason {
    Unspecified,
    KeyCompromise,
    CaCompromise,
    AffiliationChanged,
    Superseded,
    CessationOfOperation,
    CertificateHold,
    RemoveFromCrl,
    PrivilegeWithdrawn,
    AaCompromise,
}

impl RevocationReason {
    pub const ALL: [Self; 10] = [
        Self::Unspecified,
        Self::KeyCompromise,
        Self::CaCompromise,
        Self::AffiliationChanged,
        Self::Superseded,
        Self::CessationOfOperation,
        Self::CertificateHold,
        Self::RemoveFromCrl,
        Self::PrivilegeWithdrawn,
        Self::AaCompromise,
    ];

    /// The RFC 5280 name, as stored and as written on the command line.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Unspecified => "unspecified",
            Self::KeyCompromise => "keyCompromise",
            Self::CaCompromise => "cACompromise",
            Self::AffiliationChanged => "affiliationChanged",
            Self::Superseded => "superseded",
            Self::CessationOfOperation => "cessationOfOperation",
            Self::CertificateHold => "certificateHold",
            Self::RemoveFromCrl => "removeFromCRL",
            Self::PrivilegeWithdrawn => "privilegeWithdrawn",
            Self::AaCompromise => "aACompromise",
        }
    }

    /// The RFC 5280 CRLReason code (7 is not used).
    pub fn code(self) -> u8 {
        match self {
            Self::Unspecified => 0,
            Self::KeyCompromise => 1,
            Self::CaCompromise => 2,
            Self::AffiliationChanged => 3,
            Self::Superseded => 4,
            Self::CessationOfOperation => 5,
            Self::CertificateHold => 6,
            Self::RemoveFromCrl => 8,
            Self::PrivilegeWithdrawn => 9,
            Self::AaCompromise => 10,
        }
    }

    /// The reason of a code read from a CRL.
    pub fn from_code(code: u8) -> Option<Self> {
        Self::ALL.into_iter().find(|r| r.code() == code)
    }
}

impl fmt::Display for RevocationReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for RevocationReason {
    type Err = DomainError;

    /// The RFC 5280 names; case, `-`, `_` and spaces are ignored
    /// ("key-compromise" and "KEY_COMPROMISE" are keyCompromise).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let norm = |v: &str| -> String {
            v.chars().filter(|c| !matches!(c, '-' | '_' | ' ')).map(|c| c.to_ascii_lowercase()).collect()
        };
        let wanted = norm(s);
        Self::ALL.into_iter().find(|r| norm(r.as_str()) == wanted).ok_or_else(|| DomainError::RevocationReason {
            value: quoted(s),
            expected: Self::ALL.map(Self::as_str).join(", "),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_rfc_5280_reason_round_trips_by_name_and_code() {
        for r in RevocationReason::ALL {
            assert_eq!(r.as_str().parse::<RevocationReason>(), Ok(r));
            assert_eq!(RevocationReason::from_code(r.code()), Some(r));
        }
        let codes: Vec<u8> = RevocationReason::ALL.map(RevocationReason::code).to_vec();
        assert_eq!(codes, [0, 1, 2, 3, 4, 5, 6, 8, 9, 10], "7 is unused in RFC 5280");
        let err = "stolen".parse::<RevocationReason>().unwrap_err().to_string();
        assert!(err.contains("removeFromCRL") && err.contains("aACompromise"), "{err}");
    }
}
