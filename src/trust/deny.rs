//! What proxies must refuse on connections that are already open, and what a
//! cache of SVIDs must stop serving: the denied identities with their
//! reasons (matched on the peer's URI SAN), the SHA-256 fingerprints of
//! revoked certificates of identities that are not denied (matched on the
//! `Hash=` of `x-forwarded-client-cert`), and every revoked serial that can
//! still matter.

use std::collections::BTreeMap;

/// Revoked serials (lowercase hex), structurally shared: a snapshot takes
/// the set of the revocation state in O(1), whatever its size.
pub type RevokedSerials = rpds::HashTrieSetSync<String>;

#[derive(Debug, Clone, Default)]
pub struct DenyList {
    /// Moves forward with every change of what proxies are told (identities,
    /// certificates); not with a serial that only the cache needs.
    pub revision: u64,
    /// Denied SPIFFE ID → why it was denied.
    pub identities: BTreeMap<String, String>,
    /// Fingerprints of revoked certificates of identities not denied, sorted.
    pub certificates: Vec<String>,
    /// Every revoked serial, unexpired or within the connection grace.
    pub serials: RevokedSerials,
}

impl DenyList {
    /// Nothing for proxies to refuse.
    pub fn is_empty(&self) -> bool {
        self.identities.is_empty() && self.certificates.is_empty()
    }

    /// Why `spiffe_id` is denied, if it is.
    pub fn denial(&self, spiffe_id: &str) -> Option<&str> {
        self.identities.get(spiffe_id).map(String::as_str)
    }

    pub fn is_revoked(&self, serial: &str) -> bool {
        self.serials.contains(serial)
    }

    /// Whether proxies would be told the same thing (the revision aside).
    pub fn same_for_proxies(&self, other: &DenyList) -> bool {
        self.identities == other.identities && self.certificates == other.certificates
    }
}
