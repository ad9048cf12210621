//! What this issuer publishes, and the one way it changes: every change to
//! what is revoked or trusted — made by a call here or read from another
//! replica's change feed — is a [`TrustChange`] taken to memory by
//! [`Issuer::apply`]; the publisher task then builds one snapshot
//! ([`publish::build`]) for however many changes arrived, from memory alone.
//! A `deny` commits its transaction, applies what the store returned, and
//! makes no further store round trip.

use std::collections::HashMap;
use std::sync::{Arc, Weak};
use std::time::Duration as StdDuration;

use parking_lot::{Mutex, RwLock};
use time::OffsetDateTime;
use tokio::sync::watch;

use super::publish::{self, CaPart, Inputs};
use super::revocation::Revocations;
use super::{Issuer, IssuerConfig, IssuerError};
use crate::ca::Crl;
use crate::store::{CaRecord, DenyRecord, RevokedEntry, Store};
use crate::trust::TrustSnapshot;

/// Retry delay after a failed publication.
const PUBLISH_RETRY: StdDuration = StdDuration::from_secs(1);

/// The published state and what it is built from.
pub(super) struct TrustState {
    snapshot: watch::Sender<Arc<TrustSnapshot>>,
    /// Revoked certificates and the deny list (`revocation.rs`).
    revocations: Mutex<Revocations>,
    /// The CA half of the snapshot, rebuilt when a CA changes or expires.
    ca: RwLock<(Arc<CaPart>, Arc<Vec<CaRecord>>)>,
    /// CRLs signed elsewhere for CAs whose key is offline (`crl_import.rs`).
    imported: RwLock<Vec<Crl>>,
    /// Bumped after every change; the publisher builds once for however many.
    requests: watch::Sender<u64>,
    /// Builds one at a time, so snapshots publish in order.
    build: tokio::sync::Mutex<()>,
    /// When an expiring CA was last warned about (`maintenance.rs`).
    pub(super) expiry_warned: Mutex<Option<OffsetDateTime>>,
    /// The revision of the first snapshot published here that held each CA
    /// (by fingerprint): what a stream must have acknowledged to trust it.
    first_published: Mutex<HashMap<String, u64>>,
}

/// A change to what is revoked or trusted, made here or by another replica.
pub(super) enum TrustChange {
    /// Certificates were revoked.
    Revoked(Vec<RevokedEntry>),
    /// An identity was denied, and these of its certificates revoked with it.
    Denied { denial: DenyRecord, revoked: Vec<RevokedEntry> },
    /// A denial was lifted.
    Allowed(String),
    /// The CAs are now these.
    Cas(Vec<CaRecord>),
    /// The imported CRLs are now these.
    Imported(Vec<Crl>),
    /// Everything, read again (a replica that fell behind the feed).
    Reloaded(Revocations),
}

impl TrustState {
    /// The state to serve from: revocations, CAs and imported CRLs as stored.
    /// Returns the receiver of publication requests, for the publisher task.
    pub(super) async fn load(
        store: &dyn Store,
        cfg: &IssuerConfig,
        cas: Vec<CaRecord>,
        now: OffsetDateTime,
    ) -> Result<(Self, watch::Receiver<u64>), IssuerError> {
        // The deny list and revoked serials are in memory before anything is served.
        let revocations = Revocations::load(store, now).await?;
        let imported = super::crl_import::load(store, &cas).await?;
        let part = CaPart::build(&cas, now.unix_timestamp())?;
        let (requests, receiver) = watch::channel(0u64);
        let state = Self {
            snapshot: watch::Sender::new(Arc::new(TrustSnapshot::empty(&cfg.trust_domain))),
            revocations: Mutex::new(revocations),
            ca: RwLock::new((Arc::new(part), Arc::new(cas))),
            imported: RwLock::new(imported),
            requests,
            build: tokio::sync::Mutex::new(()),
            expiry_warned: Mutex::new(None),
            first_published: Mutex::default(),
        };
        Ok((state, receiver))
    }

    pub(super) fn snapshot(&self) -> Arc<TrustSnapshot> {
        self.snapshot.borrow().clone()
    }

    pub(super) fn subscribe(&self) -> watch::Receiver<Arc<TrustSnapshot>> {
        self.snapshot.subscribe()
    }

    /// Takes the CAs as they are now; the CA half is rebuilt from them.
    fn set_cas(&self, records: Vec<CaRecord>, now: OffsetDateTime) {
        match CaPart::build(&records, now.unix_timestamp()) {
            Ok(part) => *self.ca.write() = (Arc::new(part), Arc::new(records)),
            Err(e) => {
                tracing::error!(error = %e, "a stored CA certificate is unreadable; the bundle keeps the last good one")
            }
        }
    }

    /// The revision of the first snapshot published here holding the CA
    /// with this fingerprint in its bundles.
    pub(super) fn first_published(&self, fingerprint: &str) -> Option<u64> {
        self.first_published.lock().get(fingerprint).copied()
    }

    fn note_published(&self, snapshot: &TrustSnapshot) {
        let mut first = self.first_published.lock();
        for ca in snapshot.cas.iter().filter(|c| c.state.trusted()) {
            first.entry(ca.fingerprint.clone()).or_insert(snapshot.revision);
        }
    }

    /// The CAs as last applied.
    pub(super) fn ca_records(&self) -> Arc<Vec<CaRecord>> {
        self.ca.read().1.clone()
    }
}

impl Issuer {
    /// Takes a change to memory (idempotently: the same change twice, made
    /// here and then read back from the feed, changes nothing the second
    /// time) and has the publisher publish it.
    pub(super) fn apply(&self, change: TrustChange) {
        match change {
            TrustChange::Revoked(certs) => {
                let mut state = self.trust.revocations.lock();
                certs.into_iter().for_each(|c| state.apply_revoked(c));
            }
            TrustChange::Denied { denial, revoked } => {
                let mut state = self.trust.revocations.lock();
                state.apply_denied(denial);
                revoked.into_iter().for_each(|c| state.apply_revoked(c));
            }
            TrustChange::Allowed(spiffe_id) => self.trust.revocations.lock().apply_allowed(&spiffe_id),
            TrustChange::Cas(records) => self.trust.set_cas(records, self.now()),
            TrustChange::Imported(crls) => *self.trust.imported.write() = crls,
            TrustChange::Reloaded(fresh) => self.trust.revocations.lock().replace(fresh),
        }
        self.changed();
    }

    /// Has the publisher build and publish a new snapshot. Never fails: the
    /// change is in memory, and the publisher retries until it is out.
    pub(super) fn changed(&self) {
        self.trust.requests.send_modify(|n| *n += 1);
    }

    /// Waits until a snapshot holding every change made so far is published.
    pub async fn published(&self) {
        let wanted = self.trust.revocations.lock().generation();
        let mut updates = self.subscribe();
        let _ = updates.wait_for(|s| s.generation >= wanted).await;
    }

    /// The denial of this identity, if it is on the deny list (in memory).
    pub fn denial(&self, spiffe_id: &str) -> Option<DenyRecord> {
        self.trust.revocations.lock().denial(spiffe_id).cloned()
    }

    /// Whether this certificate is revoked (known to this process).
    pub fn is_revoked(&self, serial: &str) -> bool {
        self.trust.revocations.lock().is_revoked(serial)
    }

    /// Drops revoked certificates expired longer than the connection grace.
    pub(super) fn prune_revocations(&self, now: OffsetDateTime) -> usize {
        self.trust.revocations.lock().prune(now)
    }

    /// Builds a snapshot from memory (CRLs signed here, off the async
    /// workers) and publishes it.
    pub async fn publish(&self) -> Result<Arc<TrustSnapshot>, IssuerError> {
        let _one_at_a_time = self.trust.build.lock().await;
        let started = std::time::Instant::now();
        let now = self.now();
        if self.trust.ca.read().0.valid_until <= now.unix_timestamp() {
            // A CA expired since the part was built: it leaves the bundle.
            self.trust.set_cas(self.trust.ca_records().as_ref().clone(), now);
        }
        let inputs = Inputs {
            ca: self.trust.ca.read().0.clone(),
            signers: self.signers().crl_signers.clone(),
            imported: self.trust.imported.read().clone(),
            // A copy in O(1): revocations go on while this builds.
            revocations: self.trust.revocations.lock().view(),
            previous: self.snapshot(),
            jwks: crate::token::jwks(&self.token_keys().jwt_svid_keys),
            crl_validity: self.cfg.crl_validity,
            now,
        };
        let built = tokio::task::spawn_blocking(move || publish::build(inputs))
            .await
            .map_err(|e| IssuerError::Internal(format!("the CRL builder stopped: {e}")))??;
        let snapshot = Arc::new(built.snapshot);
        self.trust.note_published(&snapshot);
        self.trust.snapshot.send_replace(snapshot.clone());
        let seconds = started.elapsed().as_secs_f64();
        self.metrics.crl_built(seconds, snapshot.crl_pem.len());
        tracing::info!(
            crls = snapshot.crls.len(),
            revoked = built.revoked,
            denied = snapshot.deny.identities.len(),
            bytes = snapshot.crl_pem.len(),
            duration_ms = seconds * 1000.0,
            revision = snapshot.revision,
            "CRL re-signed"
        );
        Ok(snapshot)
    }
}

/// Publishes a snapshot after every batch of changes, until the issuer is gone.
pub(super) async fn publisher(issuer: Weak<Issuer>, mut requests: watch::Receiver<u64>) {
    while requests.changed().await.is_ok() {
        requests.borrow_and_update();
        loop {
            let Some(issuer) = issuer.upgrade() else { return };
            match issuer.publish().await {
                Ok(snapshot) => {
                    issuer.metrics.observe(&snapshot);
                    break;
                }
                Err(e) => tracing::error!(error = %e, "publishing the trust state after a change failed; will retry"),
            }
            drop(issuer);
            tokio::time::sleep(PUBLISH_RETRY).await;
        }
    }
}
