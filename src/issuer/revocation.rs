//! The revocation state in memory: every revoked certificate that can still
//! matter (unexpired, or expired less than [`CONNECTION_GRACE`] ago), by
//! issuing CA, and the deny list.
//!
//! It is loaded from the store once, before anything is served (a control
//! plane that answers with an empty deny list un-revokes everyone), and then
//! changed by this process's own revocations and by the change feed of other
//! replicas (`feed.rs`). CRLs and the pushed deny list are built from it, never
//! from a table scan, so a revocation costs the same at any list size.
//!
//! Every `apply_*` is idempotent: a change seen twice (made here, then read
//! back from the feed) leaves the same state.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use rpds::RedBlackTreeMapSync;
use time::OffsetDateTime;

use crate::ca::{CrlEntry, RevocationReason};
use crate::store::{CertRecord, CertStatus, DenyRecord, RevokedEntry, Store, StoreResult};
use crate::trust::{CONNECTION_GRACE, DenyList, RevokedSerials};

/// One revoked certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Revoked {
    entry: CrlEntry,
    spiffe_id: String,
    fingerprint: String,
    not_after: i64,
}

/// Persistent (structurally shared) maps: a copy costs O(1), so the
/// publisher takes one under the lock and builds from it after letting go,
/// while revocations go on changing the state.
type Serials = RedBlackTreeMapSync<String, Revoked>;
type Denials = RedBlackTreeMapSync<String, DenyRecord>;

#[derive(Debug, Default)]
pub(crate) struct Revocations {
    /// Issuer fingerprint → serial (hex) → certificate.
    by_issuer: HashMap<String, Serials>,
    /// Every serial of `by_issuer`.
    serials: RevokedSerials,
    denied: Denials,
    /// Moves with every change (CRL content or deny list).
    generation: u64,
}

/// The revocation state at one generation, what a publication is built from.
#[derive(Debug, Clone, Default)]
pub(crate) struct RevocationView {
    by_issuer: HashMap<String, Serials>,
    serials: RevokedSerials,
    denied: Denials,
    pub generation: u64,
}

impl RevocationView {
    /// The CRL entries of one issuer: revoked certificates not yet expired.
    pub(crate) fn crl_entries(&self, issuer_fingerprint: &str, now: OffsetDateTime) -> Vec<CrlEntry> {
        let now = now.unix_timestamp();
        self.by_issuer
            .get(issuer_fingerprint)
            .map(|m| m.values().filter(|r| r.not_after > now).map(|r| r.entry.clone()).collect())
            .unwrap_or_default()
    }

    /// The deny list of this state; `previous` (the one last published) is
    /// returned as it is when nothing changed, and its revision moves only
    /// when what proxies are told changes.
    pub(crate) fn deny_list(&self, now: OffsetDateTime, previous: &Arc<DenyList>) -> Arc<DenyList> {
        let horizon = (now - CONNECTION_GRACE).unix_timestamp();
        let identities: BTreeMap<String, String> =
            self.denied.iter().map(|(id, d)| (id.clone(), d.reason.clone())).collect();
        let certificates: BTreeSet<&String> = self
            .by_issuer
            .values()
            .flat_map(|m| m.values())
            // A certificate without a SPIFFE ID (a profile's) never reaches
            // a proxy of the mesh: only its CRL lists it.
            .filter(|r| r.not_after > horizon && !r.spiffe_id.is_empty() && !self.denied.contains_key(&r.spiffe_id))
            .map(|r| &r.fingerprint)
            .collect();
        let same_for_proxies =
            identities == previous.identities && certificates.iter().copied().eq(previous.certificates.iter());
        if same_for_proxies && self.serials.ptr_eq(&previous.serials) {
            return previous.clone();
        }
        let revision = if same_for_proxies { previous.revision } else { previous.revision + 1 };
        let certificates = certificates.into_iter().cloned().collect();
        Arc::new(DenyList { revision, identities, certificates, serials: self.serials.clone() })
    }
}

impl Revocations {
    /// Everything that can still matter at `now`, from the store.
    pub(crate) async fn load(store: &dyn Store, now: OffsetDateTime) -> StoreResult<Self> {
        let mut state = Self::default();
        state.reload(store, now).await?;
        Ok(state)
    }

    async fn reload(&mut self, store: &dyn Store, now: OffsetDateTime) -> StoreResult<()> {
        let since = (now - CONNECTION_GRACE).unix_timestamp();
        let revoked = store.revoked_unexpired_all(since).await?;
        let denied = store.deny_list().await?;
        self.denied = denied.into_iter().map(|d| (d.spiffe_id.clone(), d)).collect();
        for r in revoked {
            self.insert(r);
        }
        self.touch();
        Ok(())
    }

    /// Takes the content of a freshly loaded state (a replica that fell
    /// behind the change feed's retention), keeping the generation moving forward.
    pub(crate) fn replace(&mut self, fresh: Revocations) {
        self.by_issuer = fresh.by_issuer;
        self.serials = fresh.serials;
        self.denied = fresh.denied;
        self.touch();
    }

    /// The state as it is now, in O(number of issuers).
    pub(crate) fn view(&self) -> RevocationView {
        RevocationView {
            by_issuer: self.by_issuer.clone(),
            serials: self.serials.clone(),
            denied: self.denied.clone(),
            generation: self.generation,
        }
    }

    /// A certificate was revoked.
    pub(crate) fn apply_revoked(&mut self, r: RevokedEntry) {
        if self.insert(r) {
            self.touch();
        }
    }

    /// An identity was denied (its certificates come through `apply_revoked`).
    pub(crate) fn apply_denied(&mut self, record: DenyRecord) {
        if self.denied.get(&record.spiffe_id) != Some(&record) {
            self.denied.insert_mut(record.spiffe_id.clone(), record);
            self.touch();
        }
    }

    /// A denial was lifted.
    pub(crate) fn apply_allowed(&mut self, spiffe_id: &str) {
        if self.denied.remove_mut(spiffe_id) {
            self.touch();
        }
    }

    pub(crate) fn is_revoked(&self, serial: &str) -> bool {
        self.serials.contains(serial)
    }

    pub(crate) fn denial(&self, spiffe_id: &str) -> Option<&DenyRecord> {
        self.denied.get(spiffe_id)
    }

    /// Moves with every change; a publication records the one it was built from.
    pub(crate) fn generation(&self) -> u64 {
        self.generation
    }

    /// Drops certificates that expired more than [`CONNECTION_GRACE`] ago.
    /// Returns how many went.
    pub(crate) fn prune(&mut self, now: OffsetDateTime) -> usize {
        let horizon = (now - CONNECTION_GRACE).unix_timestamp();
        let mut gone = Vec::new();
        for m in self.by_issuer.values_mut() {
            let expired: Vec<String> =
                m.iter().filter(|(_, r)| r.not_after <= horizon).map(|(s, _)| s.clone()).collect();
            for serial in expired {
                m.remove_mut(&serial);
                self.serials.remove_mut(&serial);
                gone.push(serial);
            }
        }
        if !gone.is_empty() {
            self.touch();
        }
        gone.len()
    }

    fn insert(&mut self, r: RevokedEntry) -> bool {
        let Ok(serial) = r.serial.parse() else {
            tracing::warn!(serial = %r.serial, "a revoked certificate's serial in the store is unreadable");
            return false;
        };
        let Ok(revoked_at) = OffsetDateTime::from_unix_timestamp(r.revoked_at) else { return false };
        let entry = CrlEntry {
            serial,
            revoked_at,
            reason: r.reason.as_deref().and_then(|reason| reason.parse::<RevocationReason>().ok()),
        };
        let value = Revoked { entry, spiffe_id: r.spiffe_id, fingerprint: r.fingerprint, not_after: r.not_after };
        let slot = self.by_issuer.entry(r.issuer_id.clone()).or_default();
        if slot.get(&r.serial) == Some(&value) {
            return false;
        }
        slot.insert_mut(r.serial.clone(), value);
        self.serials.insert_mut(r.serial);
        true
    }

    fn touch(&mut self) {
        self.generation += 1;
    }
}

/// The CRL and deny-list view of a certificate record, if it is revoked.
pub(crate) fn revoked_entry(cert: CertRecord) -> Option<RevokedEntry> {
    (cert.status == CertStatus::Revoked).then(|| RevokedEntry {
        serial: cert.serial,
        revoked_at: cert.revoked_at.unwrap_or_default(),
        reason: cert.revocation_reason,
        not_after: cert.not_after,
        issuer_id: cert.issuer_id,
        spiffe_id: cert.spiffe_id,
        fingerprint: cert.fingerprint,
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use time::Duration;

    fn revoked(serial: &str, id: &str, not_after: i64) -> RevokedEntry {
        RevokedEntry {
            serial: serial.into(),
            revoked_at: 1_000,
            reason: Some("keyCompromise".into()),
            not_after,
            issuer_id: "ca1".into(),
            spiffe_id: id.into(),
            fingerprint: format!("fp-{serial}"),
        }
    }

    fn denial(id: &str) -> DenyRecord {
        DenyRecord { spiffe_id: id.into(), reason: "stolen".into(), denied_at: 1_000, denied_by: "admin".into() }
    }

    fn at(s: i64) -> OffsetDateTime {
        OffsetDateTime::from_unix_timestamp(s).unwrap()
    }

    #[test]
    fn changes_are_idempotent_and_move_the_generation_once() {
        let mut state = Revocations::default();
        state.apply_revoked(revoked("0a1b", "spiffe://td/a", 10_000));
        let g = state.generation();
        state.apply_revoked(revoked("0a1b", "spiffe://td/a", 10_000));
        assert_eq!(state.generation(), g, "the same revocation twice is one change");
        state.apply_denied(denial("spiffe://td/a"));
        state.apply_denied(denial("spiffe://td/a"));
        assert_eq!(state.generation(), g + 1);
        state.apply_allowed("spiffe://td/a");
        state.apply_allowed("spiffe://td/a");
        assert_eq!(state.generation(), g + 2);
        assert!(state.is_revoked("0a1b"));
        assert!(!state.is_revoked("0a1c"));
    }

    #[test]
    fn crls_list_only_unexpired_serials() {
        let mut state = Revocations::default();
        state.apply_revoked(revoked("0a01", "spiffe://td/a", 2_000));
        state.apply_revoked(revoked("0a02", "spiffe://td/a", 5_000));
        let listed: Vec<String> =
            state.view().crl_entries("ca1", at(3_000)).iter().map(|e| e.serial.to_string()).collect();
        assert_eq!(listed, vec!["0a02".to_string()]);
        assert!(state.view().crl_entries("other", at(3_000)).is_empty());
    }

    fn empty() -> Arc<DenyList> {
        Arc::new(DenyList::default())
    }

    #[test]
    fn the_deny_list_holds_identities_and_hashes_of_other_revoked_certificates() {
        let mut state = Revocations::default();
        state.apply_revoked(revoked("0a01", "spiffe://td/a", 10_000));
        state.apply_revoked(revoked("0a02", "spiffe://td/b", 10_000));
        state.apply_denied(denial("spiffe://td/a"));
        let list = state.view().deny_list(at(3_000), &empty());
        assert_eq!(list.identities.keys().collect::<Vec<_>>(), ["spiffe://td/a"]);
        assert_eq!(list.denial("spiffe://td/a"), Some("stolen"), "with its reason");
        assert!(list.is_revoked("0a01") && list.is_revoked("0a02") && !list.is_revoked("0a03"));
        assert_eq!(list.certificates, vec!["fp-0a02".to_string()], "a's certificate is covered by its URI SAN");
        assert_eq!(list.revision, 1);
        // The same content: the same list, the same revision.
        assert!(Arc::ptr_eq(&list, &state.view().deny_list(at(3_000), &list)));
        // Allowed again: the URI SAN goes, the revoked certificate's hash comes.
        state.apply_allowed("spiffe://td/a");
        let next = state.view().deny_list(at(3_000), &list);
        assert!(next.identities.is_empty());
        assert_eq!(next.certificates, vec!["fp-0a01".to_string(), "fp-0a02".to_string()]);
        assert_eq!(next.revision, 2);
    }

    #[test]
    fn expired_certificates_stay_on_the_deny_list_for_the_connection_grace_then_go() {
        let mut state = Revocations::default();
        state.apply_revoked(revoked("0a01", "spiffe://td/b", 10_000));
        let just_expired = at(10_001);
        assert!(state.view().crl_entries("ca1", just_expired).is_empty(), "out of the CRL once expired");
        assert_eq!(
            state.view().deny_list(just_expired, &empty()).certificates.len(),
            1,
            "still cut on open connections"
        );
        assert_eq!(state.prune(just_expired), 0);
        let later = at(10_000) + CONNECTION_GRACE + Duration::seconds(1);
        assert_eq!(state.prune(later), 1);
        assert!(state.view().deny_list(later, &empty()).certificates.is_empty());
        assert!(!state.is_revoked("0a01"));
    }

    /// A view is a copy: changes after it was taken do not show in it.
    #[test]
    fn a_view_keeps_the_state_it_was_taken_at() {
        let mut state = Revocations::default();
        state.apply_revoked(revoked("0a01", "spiffe://td/a", 10_000));
        let view = state.view();
        state.apply_revoked(revoked("0a02", "spiffe://td/a", 10_000));
        state.apply_denied(denial("spiffe://td/a"));
        assert_eq!(state.prune(at(20_000)), 2);
        assert_eq!(view.crl_entries("ca1", at(3_000)).len(), 1);
        assert_eq!(view.deny_list(at(3_000), &empty()).certificates, vec!["fp-0a01".to_string()]);
        assert!(view.generation < state.generation());
        assert_eq!(state.view().crl_entries("ca1", at(3_000)).len(), 0);
    }
}
