//! The published trust state: one immutable value per change, shared by every
//! reader (HTTP endpoints now; SDS and Workload API streams later), so a change
//! is encoded once and every reader sends the same bytes.

use time::OffsetDateTime;

use std::sync::Arc;

use super::DenyList;
use crate::ca::Crl;
use crate::domain::TrustDomain;
use crate::store::CaRole;

/// A CA as operators see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CaView {
    pub role: CaRole,
    pub common_name: String,
    pub fingerprint: String,
    pub algorithm: String,
    pub not_before: i64,
    pub not_after: i64,
    pub active: bool,
    pub key_online: bool,
}

#[derive(Debug, Clone)]
pub struct TrustSnapshot {
    /// Moves forward with every publication.
    pub revision: u64,
    pub trust_domain: TrustDomain,
    /// Every unexpired CA: root first, then intermediates oldest first.
    pub cas: Vec<CaView>,
    /// Root and unexpired intermediates, PEM.
    pub bundle_pem: String,
    /// One CRL per CA whose key is online.
    pub crls: Vec<Crl>,
    /// All CRLs, PEM, concatenated.
    pub crl_pem: String,
    /// JWT-SVID signing keys.
    pub jwks: serde_json::Value,
    /// What proxies refuse on already-open connections.
    pub deny: Arc<DenyList>,
    /// The generation of the revocation state this snapshot was built from.
    pub generation: u64,
    pub built_at: OffsetDateTime,
    /// When it was published (for push latency metrics).
    pub published_at: std::time::Instant,
}

impl TrustSnapshot {
    pub(crate) fn empty(td: &TrustDomain) -> Self {
        Self {
            revision: 0,
            trust_domain: td.clone(),
            cas: Vec::new(),
            bundle_pem: String::new(),
            crls: Vec::new(),
            crl_pem: String::new(),
            jwks: serde_json::json!({ "keys": [] }),
            deny: Arc::new(DenyList::default()),
            generation: 0,
            built_at: OffsetDateTime::UNIX_EPOCH,
            published_at: std::time::Instant::now(),
        }
    }

    /// The earliest nextUpdate of any published CRL.
    pub fn earliest_next_update(&self) -> Option<OffsetDateTime> {
        self.crls.iter().map(|c| c.next_update).min()
    }

    /// The CRL issued by the CA with this fingerprint.
    pub fn crl_of(&self, issuer_fingerprint: &str) -> Option<&Crl> {
        self.crls.iter().find(|c| c.issuer_fingerprint == issuer_fingerprint)
    }

    /// The root CA.
    pub fn root(&self) -> Option<&CaView> {
        self.cas.iter().find(|c| c.role == CaRole::Root)
    }

    /// The active Services CA (the issuer of workload SVIDs).
    pub fn services(&self) -> Option<&CaView> {
        self.cas.iter().find(|c| c.role == CaRole::Services && c.active)
    }
}
