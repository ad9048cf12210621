//! The two inputs the cache follows besides its callers:
//!
//! * **entries** — on every new value, each live selector set is matched
//!   again: entries that now match are minted and added, entries that no
//!   longer match (deleted) are withdrawn in the next version at once;
//! * **trust** — every new [`TrustSnapshot`] (bundle, CRLs, deny list;
//!   republished by every revocation, deny, allow and CRL re-signing) goes to
//!   every live set as a new version sharing the one `Arc`: SVIDs of newly
//!   denied identities are withdrawn in that same version, drivers of
//!   identities whose denial was lifted are woken, and a revoked SVID is
//!   replaced at once. Everything needed is in the snapshot's deny list.
//!
//! Both followers hold the cache weakly and end when it is gone.

use std::collections::HashMap;
use std::sync::{Arc, Weak};

use tokio::sync::watch;

use super::state::{Inner, Key};
use crate::domain::{Entry, entitled};
use crate::trust::TrustSnapshot;

pub(super) async fn follow_entries(cache: Weak<Inner>, mut entries: watch::Receiver<Arc<Vec<Entry>>>) {
    loop {
        let current = entries.borrow_and_update().clone();
        let Some(inner) = cache.upgrade() else { return };
        inner.on_entries(&current);
        drop(inner);
        if entries.changed().await.is_err() {
            return;
        }
    }
}

pub(super) async fn follow_trust(cache: Weak<Inner>, mut trust: watch::Receiver<Arc<TrustSnapshot>>) {
    loop {
        let current = trust.borrow_and_update().clone();
        let Some(inner) = cache.upgrade() else { return };
        let due = inner.on_trust(current);
        drop(inner);
        if !due.is_empty() {
            tokio::spawn(reissue(cache.clone(), due));
        }
        if trust.changed().await.is_err() {
            return;
        }
    }
}

impl Inner {
    /// Re-matches every live set against `entries`.
    fn on_entries(self: &Arc<Self>, entries: &[Entry]) {
        let mut state = self.state.lock();
        let by_id: HashMap<&str, &Entry> = entries.iter().map(|e| (e.id.as_str(), e)).collect();
        for slot in state.slots.values_mut() {
            let Some(&now) = by_id.get(slot.entry.id.as_str()) else { continue };
            if *now != slot.entry {
                if now.spiffe_id != slot.entry.spiffe_id {
                    // Another identity now: neither the old SVID nor its denial applies.
                    slot.svid = None;
                    slot.withheld = None;
                    slot.denied = false;
                }
                slot.entry = now.clone();
                slot.wake.notify_one();
            }
        }
        let keys: Vec<Key> = state.sets.keys().cloned().collect();
        for key in keys {
            let ids: Vec<String> = entitled(entries, &key).iter().map(|e| e.id.clone()).collect();
            let Some(set) = state.sets.get_mut(&key) else { continue };
            if set.entry_ids == ids {
                continue;
            }
            let old = std::mem::replace(&mut set.entry_ids, ids.clone());
            for id in ids.iter().filter(|id| !old.contains(id)) {
                if let Some(&entry) = by_id.get(id.as_str()) {
                    self.acquire(&mut state, entry);
                }
            }
            for id in old.iter().filter(|id| !ids.contains(id)) {
                self.release(&mut state, id);
            }
        }
        state.publish_all();
        self.record_sizes(&state);
    }

    /// Takes a new trust snapshot: SVIDs of identities on its deny list are
    /// withdrawn in the same version, drivers of identities whose denial was
    /// lifted are woken, and an SVID that was revoked is replaced at once.
    /// Returns the SVIDs signed by a CA the snapshot retires (tainted or
    /// revoked), to be re-issued at the cache's pace.
    fn on_trust(&self, trust: Arc<TrustSnapshot>) -> Vec<(String, u64)> {
        let mut state = self.state.lock();
        state.deny_epoch += 1;
        for slot in state.slots.values_mut() {
            let id = slot.entry.spiffe_id.to_string();
            if let Some(reason) = trust.deny.denial(&id) {
                if let Some(svid) = slot.svid.take() {
                    tracing::warn!(
                        spiffe_id = %id,
                        entry_id = %slot.entry.id,
                        serial = %svid.serial,
                        reason = %reason,
                        "SVID withdrawn: identity denied"
                    );
                }
                slot.withheld = Some(format!("identity {id} is denied: {reason}"));
                slot.denied = true;
                // The outcome of a first issuance still to come is known now.
                slot.settled.send_if_modified(|s| !std::mem::replace(s, true));
            } else if slot.denied {
                slot.denied = false;
                slot.wake.notify_one();
            } else if let Some(svid) = &slot.svid
                && trust.deny.is_revoked(&svid.serial)
            {
                tracing::warn!(
                    spiffe_id = %id,
                    entry_id = %slot.entry.id,
                    serial = %svid.serial,
                    "SVID revoked: replacing it now"
                );
                slot.wake.notify_one();
            }
        }
        // A lingering SVID just withdrawn has nothing left to keep.
        let bare: Vec<String> =
            state.slots.iter().filter(|(_, s)| s.holders == 0 && s.svid.is_none()).map(|(id, _)| id.clone()).collect();
        for id in bare {
            state.remove_slot(&id);
        }
        let mut due: Vec<(String, u64)> = state
            .slots
            .iter()
            .filter(|(_, slot)| slot.svid.as_ref().is_some_and(|svid| trust.retired(&svid.issuer)))
            .map(|(id, slot)| (id.clone(), slot.generation))
            .filter(|(id, _)| !state.reissuing.contains(id))
            .collect();
        due.sort();
        state.reissuing.extend(due.iter().map(|(id, _)| id.clone()));
        state.trust = trust;
        state.publish_all();
        due
    }
}

/// Re-issues the SVIDs of `due` (signed by a retired CA), one per
/// `reissue_interval`: each driver is woken and mints under the active CA,
/// unless its SVID was replaced meanwhile.
async fn reissue(cache: Weak<Inner>, due: Vec<(String, u64)>) {
    let Some(inner) = cache.upgrade() else { return };
    let (timer, start, interval) = (inner.timer.clone(), inner.clock.now(), inner.reissue_interval);
    tracing::info!(
        svids = due.len(),
        per_second = 1.0 / interval.as_seconds_f64(),
        "re-issuing SVIDs signed by a retired CA"
    );
    drop(inner);
    for (i, (entry_id, generation)) in due.into_iter().enumerate() {
        timer.sleep_until(start + interval * u32::try_from(i).unwrap_or(u32::MAX)).await;
        let Some(inner) = cache.upgrade() else { return };
        let mut state = inner.state.lock();
        state.reissuing.remove(&entry_id);
        let trust = state.trust.clone();
        if let Some(slot) = state.slot_mut(&entry_id, generation)
            && slot.svid.as_ref().is_some_and(|svid| trust.retired(&svid.issuer))
        {
            slot.wake.notify_one();
        }
    }
}
