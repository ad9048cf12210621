//! Registration entries: a SPIFFE ID bound to the selectors a caller must
//! present to hold it (SPEC §3, SPIRE semantics).

use std::collections::BTreeSet;

use super::{DomainError, NodeId, Selector, SpiffeId, TrustDomain};

/// Most selectors one entry may require.
pub const MAX_SELECTORS: usize = 32;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// Random, lowercase hex; assigned at creation.
    pub id: String,
    pub spiffe_id: SpiffeId,
    /// Sorted, without duplicates, 1..=MAX_SELECTORS.
    pub selectors: BTreeSet<Selector>,
    pub dns_names: Vec<String>,
    /// X.509-SVID lifetime override, seconds.
    pub ttl_seconds: Option<u32>,
    /// JWT-SVID lifetime override, seconds.
    pub jwt_ttl_seconds: Option<u32>,
    pub hint: Option<String>,
    pub federates_with: Vec<TrustDomain>,
    /// Unix seconds; orders entries (`default` is the oldest match).
    pub created_at: i64,
    /// The node whose agent alone serves it (`entry create --node`); `None`:
    /// the server's own socket serves it.
    pub node: Option<NodeId>,
}

impl Entry {
    /// A caller holds an entry when every selector of the entry is among the
    /// caller's selectors.
    pub fn matches(&self, caller: &BTreeSet<Selector>) -> bool {
        !self.selectors.is_empty() && self.selectors.is_subset(caller)
    }

    /// Checks the invariants an entry from outside must satisfy.
    pub fn validate(&self) -> Result<(), DomainError> {
        let fail = |reason: &str| Err(DomainError::Entry { reason: reason.to_string() });
        if self.selectors.is_empty() {
            return fail("an entry needs at least one --selector");
        }
        if self.selectors.len() > MAX_SELECTORS {
            return fail("an entry takes at most 32 selectors");
        }
        if self.dns_names.len() > 32 {
            return fail("an entry takes at most 32 DNS names");
        }
        if self.hint.as_ref().is_some_and(|h| h.len() > 256 || h.chars().any(char::is_control)) {
            return fail("a hint is at most 256 printable characters");
        }
        if self.ttl_seconds.is_some_and(|t| t < 60) || self.jwt_ttl_seconds.is_some_and(|t| t < 10) {
            return fail("--ttl must be at least 60 seconds (JWT: 10)");
        }
        Ok(())
    }
}

/// The entries a caller holds, oldest first (SPEC §6: `default` is the first).
pub fn entitled<'a>(entries: &'a [Entry], caller: &BTreeSet<Selector>) -> Vec<&'a Entry> {
    let mut out: Vec<&Entry> = entries.iter().filter(|e| e.matches(caller)).collect();
    out.sort_by(|a, b| (a.created_at, &a.id).cmp(&(b.created_at, &b.id)));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(id: &str, created: i64, sels: &[&str]) -> Entry {
        Entry {
            id: id.into(),
            spiffe_id: SpiffeId::parse(&format!("spiffe://example.org/{id}")).unwrap(),
            selectors: sels.iter().map(|s| Selector::parse(s).unwrap()).collect(),
            dns_names: vec![],
            ttl_seconds: None,
            jwt_ttl_seconds: None,
            hint: None,
            federates_with: vec![],
            created_at: created,
            node: None,
        }
    }

    #[test]
    fn spire_matching_semantics() {
        let caller: BTreeSet<Selector> = ["unix:uid:1000", "unix:gid:1000", "unix:path:/usr/bin/envoy"]
            .iter()
            .map(|s| Selector::parse(s).unwrap())
            .collect();
        let entries = vec![
            entry("b", 20, &["unix:uid:1000"]),
            entry("a", 10, &["unix:uid:1000", "unix:path:/usr/bin/envoy"]),
            entry("c", 5, &["unix:uid:1000", "unix:gid:0"]),
        ];
        let got: Vec<&str> = entitled(&entries, &caller).iter().map(|e| e.id.as_str()).collect();
        assert_eq!(got, ["a", "b"], "all selectors of an entry must be present; oldest first");
        assert!(!entry("x", 0, &[]).matches(&caller), "an entry without selectors matches nobody");
    }
}
