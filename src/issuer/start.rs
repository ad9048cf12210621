//! Start-up: load the CA hierarchy from the store, or create it once, load
//! the trust state, publish the first snapshot, and hand back the tasks that
//! keep the issuer current for the caller to spawn.
//!
//! With several replicas on one database the first to commit the hierarchy
//! wins; the others find `init_hierarchy` returned `false` and load the
//! winner's CAs. Nothing is ever regenerated on restart.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use parking_lot::RwLock;

use super::hierarchy::{self, InitParams, InitReport};
use super::trust_state::TrustState;
use super::{Issuer, IssuerConfig, IssuerError, Keys, Metrics};
use crate::ca::Kek;
use crate::domain::{CaRole, Clock, SerialSource};

/// The lifetime of the profiles CA a PKI made before profiles gains at start.
const PROFILES_CA_DAYS: u32 = 730;
use crate::policy::PolicyEngine;
use crate::store::Store;

/// Everything an issuer is made of.
pub struct IssuerParts {
    pub cfg: IssuerConfig,
    pub store: Arc<dyn Store>,
    pub kek: Kek,
    pub clock: Arc<dyn Clock>,
    pub serials: Arc<dyn SerialSource>,
    pub policy: PolicyEngine,
    /// How to create the hierarchy when the store holds none.
    pub init: InitParams,
    /// What to do when the store already holds one.
    pub existing: Existing,
}

/// What [`Issuer::start`] does with a PKI already in the store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Existing {
    /// Load it (`serve`).
    Load,
    /// Refuse: the ceremony creates a PKI, it never takes one over (`pki init`).
    Refuse,
}

/// Work an issuer needs done in the background while it serves.
pub type BackgroundTask = Pin<Box<dyn Future<Output = ()> + Send>>;

/// A started issuer, and the tasks that keep it current: the publisher, the
/// scheduled upkeep and (on a shared database) the change-feed follower.
/// They hold the issuer weakly and end when it is dropped.
pub struct Started {
    pub issuer: Arc<Issuer>,
    pub report: InitReport,
    pub tasks: Vec<BackgroundTask>,
}

impl Started {
    /// Spawns every task on the current tokio runtime.
    pub fn spawn(self) -> (Arc<Issuer>, InitReport) {
        for task in self.tasks {
            tokio::spawn(task);
        }
        (self.issuer, self.report)
    }
}

impl Issuer {
    /// Loads the PKI from the store, creating it first with `parts.init`
    /// when the store holds none; publishes the first snapshot, with the
    /// deny list and revoked serials, before returning.
    pub async fn start(parts: IssuerParts) -> Result<Started, IssuerError> {
        let IssuerParts { cfg, store, kek, clock, serials, policy, init, existing } = parts;
        hierarchy::check_trust_domain(&cfg, store.as_ref()).await?;
        let mut created = false;
        if !hierarchy::has_root(store.as_ref()).await? {
            let (cas, keys) = hierarchy::create_hierarchy(&cfg, &init, &kek, serials.as_ref(), clock.now())?;
            created = store.init_hierarchy(&cas, &keys).await?;
        }
        if existing == Existing::Refuse && !created {
            return Err(IssuerError::FailedPrecondition(
                "the PKI is already initialized (a root CA exists in the database)".into(),
            ));
        }
        let cas = store.cas().await?;
        let signers = hierarchy::load_signers(&cas, &kek)?;
        let tokens = hierarchy::load_token_keys(store.as_ref(), &kek, clock.now().unix_timestamp()).await?;
        let root_fingerprint = signers.services.root().fingerprint.clone();
        if created {
            hierarchy::log_created(&cas, &cfg);
        }
        // The feed position is read first: changes committed while the state
        // loads are applied again (idempotently) rather than missed.
        let feed_cursor = store.change_revision().await?;
        let change_signal = store.change_signal();
        let (trust, publish_requests) = TrustState::load(store.as_ref(), &cfg, cas, clock.now()).await?;
        let issuer = Arc::new(Self {
            entries: super::entries::load(store.as_ref()).await?,
            profiles: super::profiles::Profiles::load(store.as_ref()).await?,
            cfg,
            store,
            kek,
            clock,
            serials,
            policy,
            keys: Keys { signers: RwLock::new(Arc::new(signers)), tokens: RwLock::new(Arc::new(tokens)) },
            trust,
            acks: crate::trust::Acknowledgements::new(),
            replica: replica_id()?,
            metrics: Metrics::new(),
        });
        issuer.ensure_profiles_ca().await?;
        issuer.publish().await?;
        issuer.metrics.refresh_counts(&issuer).await;
        let weak = Arc::downgrade(&issuer);
        let mut tasks: Vec<BackgroundTask> = vec![
            Box::pin(super::trust_state::publisher(weak.clone(), publish_requests)),
            Box::pin(super::maintenance::run(weak.clone())),
            Box::pin(super::rotation::report_acknowledgements(weak.clone())),
        ];
        if let Some(signal) = change_signal {
            tasks.push(Box::pin(super::feed::follow(weak, signal, feed_cursor)));
        }
        Ok(Started { issuer, report: InitReport { created, root_fingerprint }, tasks })
    }

    /// Creates the profiles CA (signed by the root) when there is none yet
    /// and the root key is online: a PKI made before profiles existed gains
    /// it at its next start (a new one is created with it). Without the root
    /// key, certificates without a SPIFFE ID cannot be issued, and say why.
    async fn ensure_profiles_ca(&self) -> Result<(), IssuerError> {
        let signers = self.signers();
        if signers.profiles.is_some() || signers.root.is_none() {
            return Ok(());
        }
        self.add_intermediate(CaRole::Profiles, hierarchy::PROFILES_CA_NAME, PROFILES_CA_DAYS).await.map(drop)
    }

    /// Whether the store holds a PKI (a root CA), without changing it.
    pub async fn holds_pki(store: &dyn Store) -> Result<bool, IssuerError> {
        hierarchy::has_root(store).await
    }

    /// Loads the CAs and signing keys again (another replica added one).
    pub(super) async fn reload_keys(&self) -> Result<(), IssuerError> {
        let cas = self.store.cas().await?;
        let signers = hierarchy::load_signers(&cas, &self.kek)?;
        let tokens = hierarchy::load_token_keys(self.store.as_ref(), &self.kek, self.now().unix_timestamp()).await?;
        *self.keys.signers.write() = Arc::new(signers);
        *self.keys.tokens.write() = Arc::new(tokens);
        let imported = super::crl_import::load(self.store.as_ref(), &cas).await?;
        tracing::info!(cas = cas.len(), "CAs and signing keys loaded again");
        self.apply(super::trust_state::TrustChange::Imported(imported));
        self.apply(super::trust_state::TrustChange::Cas(cas));
        Ok(())
    }
}

/// A name for this process among the replicas: the host's name and random hex.
fn replica_id() -> Result<String, IssuerError> {
    use ring::rand::SecureRandom;
    let mut bytes = [0u8; 6];
    ring::rand::SystemRandom::new()
        .fill(&mut bytes)
        .map_err(|_| IssuerError::Internal("no randomness for the replica's name".into()))?;
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
    Ok(format!("{}-{}", crate::domain::text::shorten(host.trim(), 32), hex::encode(bytes)))
}
