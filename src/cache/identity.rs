//! [`IdentityCache`]: the [`IdentitySource`] backed by an [`SvidMinter`].
//! Callers with the same selectors share one watch channel; each warm entry
//! is minted once, however many callers hold it.

use std::collections::BTreeSet;
use std::sync::Arc;

use parking_lot::Mutex;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::metrics::CacheMetrics;
use super::state::{Inner, Key, State};
use super::timing::{Jitter, RingJitter, Timer, TokioTimer};
use super::{CacheError, IdentitySet, IdentitySource, IdentityWatch, SvidMinter, follow};
use crate::domain::throttle::Throttle;
use crate::domain::{Clock, Entry, Selector, entitled};
use crate::trust::TrustSnapshot;

/// The identity cache. Construct with [`IdentityCache::new`], then start its
/// followers once with [`IdentityCache::spawn`] (inside a tokio runtime).
pub struct IdentityCache {
    inner: Arc<Inner>,
}

/// Injected time and randomness (tests pin both).
#[derive(Clone)]
pub struct CacheOptions {
    /// Waits for rotations and retries. Default: [`TokioTimer`] on the cache's clock.
    pub timer: Option<Arc<dyn Timer>>,
    /// Where in 40–60 % of its lifetime each SVID is replaced. Default: [`RingJitter`].
    pub jitter: Arc<dyn Jitter>,
    /// How many SVIDs signed by a tainted or revoked CA are re-issued per
    /// second (`pki ca taint`). Default: [`DEFAULT_REISSUE_RATE`].
    pub reissue_rate: u32,
    /// The longest wait between retries of a failed issuance (30 s; an
    /// agent, whose server may come back at any moment, uses 5 s).
    pub backoff_max: time::Duration,
}

/// SVIDs re-issued per second after their CA is tainted: a fleet's worth of
/// signatures spread out rather than all at once.
pub const DEFAULT_REISSUE_RATE: u32 = 100;

impl Default for CacheOptions {
    fn default() -> Self {
        Self {
            timer: None,
            jitter: Arc::new(RingJitter::default()),
            reissue_rate: DEFAULT_REISSUE_RATE,
            backoff_max: super::driver::BACKOFF_MAX,
        }
    }
}

/// What a cache is made of: who mints, the registration entries and the
/// trust state to follow, and the clock.
pub struct CacheInputs {
    pub minter: Arc<dyn SvidMinter>,
    /// The registration entries, oldest first.
    pub entries: watch::Receiver<Arc<Vec<Entry>>>,
    /// The published trust state (bundle, CRLs, deny list).
    pub trust: watch::Receiver<Arc<TrustSnapshot>>,
    pub clock: Arc<dyn Clock>,
}

impl IdentityCache {
    pub fn new(inputs: CacheInputs) -> Arc<Self> {
        Self::with_options(inputs, CacheOptions::default())
    }

    pub fn with_options(inputs: CacheInputs, options: CacheOptions) -> Arc<Self> {
        let CacheInputs { minter, entries, trust, clock } = inputs;
        let timer = options.timer.unwrap_or_else(|| Arc::new(TokioTimer::new(clock.clone())));
        let state = State::new(trust.borrow().clone());
        Arc::new(Self {
            inner: Arc::new(Inner {
                minter,
                trust_updates: trust,
                clock,
                timer,
                jitter: options.jitter,
                reissue_interval: time::Duration::seconds(1) / options.reissue_rate.max(1),
                backoff_max: options.backoff_max.max(time::Duration::seconds(1)),
                entries,
                state: Mutex::new(state),
                metrics: CacheMetrics::new(),
                throttle_log: Mutex::new(Throttle::new(std::time::Duration::from_secs(10))),
            }),
        })
    }

    /// Starts following entry and trust changes. The task ends when the
    /// cache is dropped (at its next input) or both inputs close.
    pub fn spawn(self: &Arc<Self>) -> JoinHandle<()> {
        let weak = Arc::downgrade(&self.inner);
        let entries = self.inner.entries.clone();
        let trust = self.inner.trust_updates.clone();
        tokio::spawn(async move {
            tokio::join!(follow::follow_entries(weak.clone(), entries), follow::follow_trust(weak, trust));
        })
    }

    /// Distinct selector sets currently followed.
    pub fn selector_sets(&self) -> usize {
        self.inner.state.lock().sets.len()
    }

    /// Entries whose SVID is currently kept warm (held by a caller).
    pub fn warm_entries(&self) -> usize {
        self.inner.state.lock().warm()
    }

    /// Retries at once every issuance that failed (an agent whose server is
    /// back): their drivers stop waiting out their back-off.
    pub fn retry_failed(&self) {
        let state = self.inner.state.lock();
        for slot in state.slots.values().filter(|s| s.withheld.is_some() && !s.denied) {
            slot.wake.notify_one();
        }
    }

    /// How many SVIDs the cache holds, and the earliest notAfter among them.
    pub fn svids(&self) -> (usize, Option<time::OffsetDateTime>) {
        let state = self.inner.state.lock();
        let held = state.slots.values().filter_map(|s| s.svid.as_ref());
        let (mut count, mut earliest) = (0, None::<time::OffsetDateTime>);
        for svid in held {
            count += 1;
            earliest = Some(earliest.map_or(svid.not_after, |e| e.min(svid.not_after)));
        }
        (count, earliest)
    }

    /// Entries whose SVID is kept for a caller that may come back, until its
    /// rotation point.
    pub fn lingering_entries(&self) -> usize {
        let state = self.inner.state.lock();
        state.slots.len() - state.warm()
    }
}

#[async_trait::async_trait]
impl IdentitySource for IdentityCache {
    async fn watch(&self, selectors: BTreeSet<Selector>) -> Result<IdentityWatch, CacheError> {
        let entries = self.inner.entries.borrow().clone();
        let matched = entitled(&entries, &selectors);
        if matched.is_empty() {
            return Err(CacheError::NoEntry);
        }
        let (guard, mut settling) = self.inner.join(&selectors, &matched);
        for first in &mut settling {
            // Err: the slot went away (entry deleted meanwhile); nothing to wait for.
            let _ = first.wait_for(|settled| *settled).await;
        }
        let updates = self.inner.open(&selectors)?;
        Ok(IdentityWatch { updates, guard: Box::new(guard) })
    }

    fn trust(&self) -> watch::Receiver<Arc<TrustSnapshot>> {
        self.inner.trust_updates.clone()
    }
}

/// Holds one reference to a selector set; dropping it releases the set.
struct SetGuard {
    inner: Arc<Inner>,
    key: Key,
}

impl Drop for SetGuard {
    fn drop(&mut self) {
        self.inner.leave(&self.key);
    }
}

impl Inner {
    /// Takes a reference to the set of `key` (creating it and its missing
    /// slots), and returns the first-issuance flags of its entries.
    fn join(self: &Arc<Self>, key: &Key, matched: &[&Entry]) -> (SetGuard, Vec<watch::Receiver<bool>>) {
        let mut state = self.state.lock();
        if !state.sets.contains_key(key) {
            state.new_set(key.clone()).entry_ids = matched.iter().map(|e| e.id.clone()).collect();
            for entry in matched {
                self.acquire(&mut state, entry);
            }
        }
        let mut settling = Vec::new();
        if let Some(set) = state.sets.get_mut(key) {
            set.refs += 1;
            for id in set.entry_ids.clone() {
                if let Some(slot) = state.slots.get(&id) {
                    settling.push(slot.settled.subscribe());
                }
            }
        }
        self.record_sizes(&state);
        (SetGuard { inner: self.clone(), key: key.clone() }, settling)
    }

    /// Publishes the set's first complete value and subscribes to it.
    /// `Unavailable` when no SVID could be issued for any entry (the caller's
    /// guard then releases the set).
    fn open(&self, key: &Key) -> Result<watch::Receiver<Arc<IdentitySet>>, CacheError> {
        let mut state = self.state.lock();
        state.publish_set(key);
        let set = state.sets.get(key).ok_or_else(|| CacheError::Unavailable("selector set released".into()))?;
        let updates = set.tx.subscribe();
        let current: Arc<IdentitySet> = updates.borrow().clone();
        if set.entry_ids.is_empty() {
            return Err(CacheError::NoEntry);
        }
        let failures: Vec<String> = set
            .entry_ids
            .iter()
            .filter_map(|id| state.slots.get(id))
            .filter(|slot| slot.svid.is_none() && !slot.denied)
            .filter_map(|slot| slot.withheld.as_ref().map(|r| format!("{}: {r}", slot.entry.spiffe_id)))
            .collect();
        if current.svids.is_empty() && !failures.is_empty() {
            return Err(CacheError::Unavailable(failures.join("; ")));
        }
        Ok(updates)
    }
}
