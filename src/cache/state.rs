//! The cache's shared state: live selector sets and the warm entries ("slots")
//! they hold, and the one function that turns them into [`IdentitySet`]s.
//!
//! Invariants (all under one `parking_lot::Mutex`, never held across `.await`):
//! * a slot exists while at least one live set holds its entry, and then
//!   exactly one rotation task (its driver) runs for it; when the last holder
//!   leaves, a slot with an SVID lingers until its rotation point, so a caller
//!   that comes back within that time gets the same SVID (no new mint), and
//!   the driver then removes it instead of renewing;
//! * a set exists exactly while at least one [`super::IdentityWatch`] guard
//!   for its selectors is alive;
//! * a set is republished only when what it would contain changed, with a
//!   version taken from one counter, so versions only move forward — even
//!   across a set dropped and created again.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

use parking_lot::Mutex;
use tokio::sync::{Notify, watch};
use tokio::task::AbortHandle;

use super::budget::MintBudgets;
use super::metrics::CacheMetrics;
use super::timing::{Jitter, Timer};
use super::{IdentitySet, Svid, SvidMinter};
use crate::domain::throttle::Throttle;
use crate::domain::{Clock, Entry, Selector, SpiffeId};
use crate::trust::TrustSnapshot;

/// A canonical selector set (sorted, no duplicates): the key of a shared watch.
pub(super) type Key = BTreeSet<Selector>;

pub(super) struct Inner {
    pub(super) minter: Arc<dyn SvidMinter>,
    pub(super) trust_updates: watch::Receiver<Arc<TrustSnapshot>>,
    pub(super) clock: Arc<dyn Clock>,
    pub(super) timer: Arc<dyn Timer>,
    pub(super) jitter: Arc<dyn Jitter>,
    /// Between two re-issues of SVIDs whose CA was retired.
    pub(super) reissue_interval: time::Duration,
    /// The longest wait between retries of a failed issuance.
    pub(super) backoff_max: time::Duration,
    pub(super) entries: watch::Receiver<Arc<Vec<Entry>>>,
    pub(super) state: Mutex<State>,
    pub(super) metrics: CacheMetrics,
    /// At most one "rate-limited" log line per interval.
    pub(super) throttle_log: Mutex<Throttle>,
}

pub(super) struct State {
    pub(super) sets: HashMap<Key, SetState>,
    pub(super) slots: HashMap<String, Slot>,
    pub(super) trust: Arc<TrustSnapshot>,
    /// Bumped whenever a deny-list check starts; a mint that saw another
    /// value re-checks its identity before its SVID is handed out.
    pub(super) deny_epoch: u64,
    /// How often each entry may still be minted.
    pub(super) budgets: MintBudgets,
    /// Entries whose SVID (signed by a retired CA) waits for its re-issue.
    pub(super) reissuing: std::collections::HashSet<String>,
    versions: u64,
    generations: u64,
}

pub(super) struct SetState {
    pub(super) refs: usize,
    /// Entitled entries, oldest first.
    pub(super) entry_ids: Vec<String>,
    pub(super) tx: watch::Sender<Arc<IdentitySet>>,
}

/// One warm entry.
pub(super) struct Slot {
    pub(super) entry: Entry,
    /// Tells a driver of an earlier slot for the same entry id that it is stale.
    pub(super) generation: u64,
    /// Live sets holding this entry; 0 while the slot lingers.
    pub(super) holders: usize,
    pub(super) svid: Option<Arc<Svid>>,
    /// Why the entry has (or may soon have) no SVID.
    pub(super) withheld: Option<String>,
    /// Withheld because the identity is on the deny list.
    pub(super) denied: bool,
    /// `true` once the first issuance attempt settled (SVID, denial or failure).
    pub(super) settled: watch::Sender<bool>,
    /// Makes the driver act now (entry changed, denial lifted).
    pub(super) wake: Arc<Notify>,
    task: Option<AbortHandle>,
}

impl State {
    pub(super) fn new(trust: Arc<TrustSnapshot>) -> Self {
        Self {
            sets: HashMap::new(),
            slots: HashMap::new(),
            trust,
            deny_epoch: 0,
            budgets: MintBudgets::default(),
            reissuing: std::collections::HashSet::new(),
            versions: 0,
            generations: 0,
        }
    }

    /// Removes a slot and stops its driver.
    pub(super) fn remove_slot(&mut self, entry_id: &str) {
        if let Some(mut slot) = self.slots.remove(entry_id) {
            if let Some(task) = slot.task.take() {
                task.abort();
            }
            tracing::debug!(entry_id, spiffe_id = %slot.entry.spiffe_id, "SVID no longer kept");
        }
    }

    /// Entries held by a live caller (lingering slots are not kept warm).
    pub(super) fn warm(&self) -> usize {
        self.slots.values().filter(|s| s.holders > 0).count()
    }

    /// The slot of `entry_id` if it is still the one a driver was started for.
    pub(super) fn slot_mut(&mut self, entry_id: &str, generation: u64) -> Option<&mut Slot> {
        self.slots.get_mut(entry_id).filter(|s| s.generation == generation)
    }

    /// Republishes every set holding `entry_id`.
    pub(super) fn publish_holding(&mut self, entry_id: &str) {
        let Self { sets, slots, trust, versions, .. } = self;
        for set in sets.values().filter(|s| s.entry_ids.iter().any(|id| id == entry_id)) {
            publish(set, slots, trust, versions);
        }
    }

    /// Republishes every set (those whose content did not change stay put).
    pub(super) fn publish_all(&mut self) {
        let Self { sets, slots, trust, versions, .. } = self;
        for set in sets.values() {
            publish(set, slots, trust, versions);
        }
    }

    pub(super) fn publish_set(&mut self, key: &Key) {
        let Self { sets, slots, trust, versions, .. } = self;
        if let Some(set) = sets.get(key) {
            publish(set, slots, trust, versions);
        }
    }

    /// A set with no holder yet; the caller then adds its entries.
    pub(super) fn new_set(&mut self, key: Key) -> &mut SetState {
        let empty = IdentitySet { version: 0, svids: Vec::new(), withheld: Vec::new(), trust: self.trust.clone() };
        let (tx, _) = watch::channel(Arc::new(empty));
        self.sets.entry(key).or_insert(SetState { refs: 0, entry_ids: Vec::new(), tx })
    }
}

impl Inner {
    /// One more holder of `entry`; the first one creates the slot and starts
    /// its driver (which mints at once).
    pub(super) fn acquire(self: &Arc<Self>, state: &mut State, entry: &Entry) {
        if let Some(slot) = state.slots.get_mut(&entry.id) {
            slot.holders += 1;
            return;
        }
        state.generations += 1;
        let generation = state.generations;
        let task = super::driver::spawn(self.clone(), entry.id.clone(), generation);
        state.slots.insert(
            entry.id.clone(),
            Slot {
                entry: entry.clone(),
                generation,
                holders: 1,
                svid: None,
                withheld: None,
                denied: false,
                settled: watch::Sender::new(false),
                wake: Arc::new(Notify::new()),
                task: Some(task),
            },
        );
    }

    /// One holder fewer. After the last one, a slot with an SVID lingers
    /// (its driver removes it at the rotation point instead of renewing);
    /// one without is removed at once.
    pub(super) fn release(&self, state: &mut State, entry_id: &str) {
        let Some(slot) = state.slots.get_mut(entry_id) else { return };
        slot.holders = slot.holders.saturating_sub(1);
        if slot.holders == 0 && slot.svid.is_none() {
            state.remove_slot(entry_id);
        }
    }

    /// Removes one holder of the set `key` (an [`super::IdentityWatch`] dropped).
    pub(super) fn leave(&self, key: &Key) {
        let mut state = self.state.lock();
        let Some(set) = state.sets.get_mut(key) else { return };
        set.refs = set.refs.saturating_sub(1);
        if set.refs == 0
            && let Some(set) = state.sets.remove(key)
        {
            for id in &set.entry_ids {
                self.release(&mut state, id);
            }
        }
        self.record_sizes(&state);
    }

    pub(super) fn record_sizes(&self, state: &State) {
        self.metrics.sizes(state.sets.len(), state.warm());
    }
}

/// Sends the set's new content, if it differs from what it holds.
fn publish(set: &SetState, slots: &HashMap<String, Slot>, trust: &Arc<TrustSnapshot>, versions: &mut u64) {
    let mut svids = Vec::new();
    let mut withheld: Vec<(SpiffeId, String)> = Vec::new();
    for slot in set.entry_ids.iter().filter_map(|id| slots.get(id)) {
        match (&slot.svid, &slot.withheld) {
            (Some(svid), _) => svids.push(svid.clone()),
            (None, Some(reason)) => withheld.push((slot.entry.spiffe_id.clone(), reason.clone())),
            (None, None) => {} // first issuance still running
        }
    }
    let unchanged = {
        let current = set.tx.borrow();
        Arc::ptr_eq(&current.trust, trust)
            && current.withheld == withheld
            && current.svids.len() == svids.len()
            && current.svids.iter().zip(&svids).all(|(a, b)| Arc::ptr_eq(a, b))
    };
    if unchanged {
        return;
    }
    *versions += 1;
    set.tx.send_replace(Arc::new(IdentitySet { version: *versions, svids, withheld, trust: trust.clone() }));
}
