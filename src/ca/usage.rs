//! What a leaf certificate may be used for: its key usages, its extended key
//! usages, and how far its notBefore is backdated. An X.509-SVID has one
//! fixed usage ([`LeafUsage::svid`]); a certificate issued under a profile
//! has the profile's.

use rcgen::{ExtendedKeyUsagePurpose, KeyUsagePurpose};
use time::Duration;
use x509_parser::extensions::{ExtendedKeyUsage, KeyUsage as X509KeyUsage};

use super::CaError;
use super::template::LEAF_BACKDATE;
use crate::domain::text::quoted;

/// A key usage a leaf may carry (never keyCertSign or cRLSign).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum KeyUsage {
    DigitalSignature,
    ContentCommitment,
    KeyEncipherment,
    DataEncipherment,
    KeyAgreement,
}

/// An extended key usage a leaf may carry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ExtKeyUsage {
    ServerAuth,
    ClientAuth,
    CodeSigning,
    EmailProtection,
    TimeStamping,
    OcspSigning,
}

/// The usage of one leaf.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeafUsage {
    pub key_usages: Vec<KeyUsage>,
    pub ext_key_usages: Vec<ExtKeyUsage>,
    /// notBefore = now - backdate (never before the issuer's notBefore).
    pub backdate: Duration,
}

impl LeafUsage {
    /// The X.509-SVID profile (SPEC §4): digitalSignature (+keyEncipherment
    /// for an RSA key), serverAuth + clientAuth, backdated 30 s.
    pub fn svid(rsa: bool) -> Self {
        let mut key_usages = vec![KeyUsage::DigitalSignature];
        if rsa {
            key_usages.push(KeyUsage::KeyEncipherment);
        }
        Self {
            key_usages,
            ext_key_usages: vec![ExtKeyUsage::ServerAuth, ExtKeyUsage::ClientAuth],
            backdate: LEAF_BACKDATE,
        }
    }

    /// A profile's usage, from its Vault names (`DigitalSignature`,
    /// `ClientAuth`, …, as `domain::Profile` spells them).
    pub fn from_names(key_usages: &[&str], ext_key_usages: &[&str], backdate: Duration) -> Result<Self, CaError> {
        let unknown = |what: &str, name: &str| CaError::Usage { reason: format!("unknown {what} {}", quoted(name)) };
        let key_usages = key_usages
            .iter()
            .map(|n| KeyUsage::ALL.into_iter().find(|k| k.name() == *n).ok_or_else(|| unknown("key usage", n)))
            .collect::<Result<Vec<_>, _>>()?;
        let ext_key_usages = ext_key_usages
            .iter()
            .map(|n| {
                ExtKeyUsage::ALL.into_iter().find(|k| k.name() == *n).ok_or_else(|| unknown("extended key usage", n))
            })
            .collect::<Result<Vec<_>, _>>()?;
        if backdate.is_negative() {
            return Err(CaError::Usage { reason: "notBefore cannot be moved into the future".into() });
        }
        Ok(Self { key_usages, ext_key_usages, backdate })
    }

    pub(crate) fn rcgen_key_usages(&self) -> Vec<KeyUsagePurpose> {
        self.key_usages.iter().map(|k| k.rcgen()).collect()
    }

    pub(crate) fn rcgen_ext_key_usages(&self) -> Vec<ExtendedKeyUsagePurpose> {
        self.ext_key_usages.iter().map(|e| e.rcgen()).collect()
    }

    /// Whether a parsed keyUsage extension is exactly this (and no CA bit).
    pub(crate) fn matches_key_usage(&self, ku: &X509KeyUsage) -> bool {
        let has = |k: KeyUsage| self.key_usages.contains(&k);
        ku.digital_signature() == has(KeyUsage::DigitalSignature)
            && ku.non_repudiation() == has(KeyUsage::ContentCommitment)
            && ku.key_encipherment() == has(KeyUsage::KeyEncipherment)
            && ku.data_encipherment() == has(KeyUsage::DataEncipherment)
            && ku.key_agreement() == has(KeyUsage::KeyAgreement)
            && !ku.key_cert_sign()
            && !ku.crl_sign()
    }

    /// Whether a parsed extendedKeyUsage extension is exactly this.
    pub(crate) fn matches_ext_key_usage(&self, eku: &ExtendedKeyUsage<'_>) -> bool {
        let has = |e: ExtKeyUsage| self.ext_key_usages.contains(&e);
        eku.server_auth == has(ExtKeyUsage::ServerAuth)
            && eku.client_auth == has(ExtKeyUsage::ClientAuth)
            && eku.code_signing == has(ExtKeyUsage::CodeSigning)
            && eku.email_protection == has(ExtKeyUsage::EmailProtection)
            && eku.time_stamping == has(ExtKeyUsage::TimeStamping)
            && eku.ocsp_signing == has(ExtKeyUsage::OcspSigning)
            && !eku.any
            && eku.other.is_empty()
    }
}

impl KeyUsage {
    const ALL: [Self; 5] = [
        Self::DigitalSignature,
        Self::ContentCommitment,
        Self::KeyEncipherment,
        Self::DataEncipherment,
        Self::KeyAgreement,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Self::DigitalSignature => "DigitalSignature",
            Self::ContentCommitment => "ContentCommitment",
            Self::KeyEncipherment => "KeyEncipherment",
            Self::DataEncipherment => "DataEncipherment",
            Self::KeyAgreement => "KeyAgreement",
        }
    }

    fn rcgen(self) -> KeyUsagePurpose {
        match self {
            Self::DigitalSignature => KeyUsagePurpose::DigitalSignature,
            Self::ContentCommitment => KeyUsagePurpose::ContentCommitment,
            Self::KeyEncipherment => KeyUsagePurpose::KeyEncipherment,
            Self::DataEncipherment => KeyUsagePurpose::DataEncipherment,
            Self::KeyAgreement => KeyUsagePurpose::KeyAgreement,
        }
    }
}

impl ExtKeyUsage {
    const ALL: [Self; 6] = [
        Self::ServerAuth,
        Self::ClientAuth,
        Self::CodeSigning,
        Self::EmailProtection,
        Self::TimeStamping,
        Self::OcspSigning,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Self::ServerAuth => "ServerAuth",
            Self::ClientAuth => "ClientAuth",
            Self::CodeSigning => "CodeSigning",
            Self::EmailProtection => "EmailProtection",
            Self::TimeStamping => "TimeStamping",
            Self::OcspSigning => "OCSPSigning",
        }
    }

    fn rcgen(self) -> ExtendedKeyUsagePurpose {
        match self {
            Self::ServerAuth => ExtendedKeyUsagePurpose::ServerAuth,
            Self::ClientAuth => ExtendedKeyUsagePurpose::ClientAuth,
            Self::CodeSigning => ExtendedKeyUsagePurpose::CodeSigning,
            Self::EmailProtection => ExtendedKeyUsagePurpose::EmailProtection,
            Self::TimeStamping => ExtendedKeyUsagePurpose::TimeStamping,
            Self::OcspSigning => ExtendedKeyUsagePurpose::OcspSigning,
        }
    }
}
