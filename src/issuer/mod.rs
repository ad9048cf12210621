//! The issuing service: the one place where store, CA core, policy and tokens
//! meet. Every admin and signing call enters here with the caller's
//! credentials; it authenticates, asks the policy, acts, writes the audit
//! record in the same transaction as the change, and publishes the new trust
//! state as an immutable snapshot.
//!
//! Invariants:
//! * Nothing is issued to a denied identity, and a deny revokes the identity's
//!   unexpired certificates in the same transaction.
//! * Every refusal (authentication, policy, deny list, bad input) is audited.
//! * CA private keys exist in memory only inside [`Signers`]; the published
//!   [`TrustSnapshot`] holds public material only.

mod audit;
mod auth;
mod bootstrap;
mod crl_import;
mod entries;
mod error;
mod feed;
mod issue;
mod jwt_svid;
mod maintenance;
mod metrics;
mod revocation;
mod revoke;
mod svid;
mod tokens;

use std::sync::Arc;

use parking_lot::RwLock;
use time::Duration;
use tokio::sync::watch;

use crate::ca::{Kek, Signer};
use crate::domain::{Clock, SerialSource, TrustDomain};
use crate::policy::PolicyEngine;
use crate::store::Store;
use crate::token::{Es256Signer, TokenRules, VerifyingKey};
use crate::trust::TrustSnapshot;

pub use audit::AuditAction;
pub use auth::{Caller, Credentials};
pub use bootstrap::{InitParams, InitReport};
pub use entries::{EntryList, EntryRequest};
pub use error::IssuerError;
pub use issue::{GenerateRequest, Issued, SignRequest};
pub use maintenance::MaintenanceReport;
pub use metrics::Metrics;
pub use tokens::{MintRequest, Minted, Status};

/// Largest request payload (CSR, token) accepted, in bytes.
pub const MAX_REQUEST_BYTES: usize = 1024 * 1024;

/// Settings of the issuing service, already validated by `config`.
#[derive(Debug, Clone)]
pub struct IssuerConfig {
    pub trust_domain: TrustDomain,
    /// Default X.509-SVID lifetime.
    pub svid_ttl: Duration,
    /// Longest lifetime any certificate request may ask for.
    pub max_cert_ttl: Duration,
    pub jwt_svid_ttl: Duration,
    pub bootstrap_ttl: Duration,
    /// nextUpdate - thisUpdate of every CRL.
    pub crl_validity: Duration,
    /// Extra DNS names / IPs for the server's own TLS certificate.
    pub server_names: Vec<String>,
}

impl IssuerConfig {
    pub fn new(trust_domain: TrustDomain) -> Self {
        Self {
            trust_domain,
            svid_ttl: Duration::hours(1),
            max_cert_ttl: Duration::days(90),
            jwt_svid_ttl: Duration::minutes(5),
            bootstrap_ttl: Duration::hours(24),
            crl_validity: Duration::days(7),
            server_names: Vec::new(),
        }
    }

    /// The `iss` and `aud` of trustmesh's own tokens.
    pub fn token_rules(&self) -> TokenRules {
        TokenRules {
            issuer: format!("trustmesh/{}", self.trust_domain),
            audience: "trustmesh".to_string(),
            leeway_seconds: 30,
        }
    }
}

/// The active signing CAs, with their keys.
pub(crate) struct Signers {
    pub services: Arc<Signer>,
    pub transport: Arc<Signer>,
    /// `None` when the root key is kept offline (imported intermediate).
    pub root: Option<Arc<Signer>>,
    /// Every CA whose key is online, for CRL signing (includes the above).
    pub crl_signers: Vec<Arc<Signer>>,
}

pub(crate) struct TokenKeys {
    pub signer: Es256Signer,
    pub verifying: Vec<VerifyingKey>,
    /// Tokens accepted under `verifying` (replaced with it).
    pub accepted: crate::token::SignatureMemo,
    pub jwt_svid_keys: Vec<VerifyingKey>,
    /// The newest unexpired `jwt-svid` key; `None` when the store has none.
    pub jwt_svid_signer: Option<Es256Signer>,
}

pub struct Issuer {
    cfg: IssuerConfig,
    store: Arc<dyn Store>,
    kek: Kek,
    clock: Arc<dyn Clock>,
    serials: Arc<dyn SerialSource>,
    policy: PolicyEngine,
    signers: RwLock<Arc<Signers>>,
    tokens: RwLock<Arc<TokenKeys>>,
    snapshot: watch::Sender<Arc<TrustSnapshot>>,
    /// The registration entries, oldest first (`entries.rs`).
    entries: watch::Sender<EntryList>,
    metrics: Metrics,
    /// Serialises CRL rebuilds so snapshots publish in order.
    crl_lock: tokio::sync::Mutex<()>,
    /// Revoked certificates and the deny list, in memory (`revocation.rs`).
    revocations: parking_lot::Mutex<revocation::Revocations>,
    /// Bumped after every committed change; the publisher task (`revoke.rs`)
    /// builds and publishes one snapshot for however many bumps it missed.
    publish: watch::Sender<u64>,
    /// CRLs signed elsewhere for CAs whose key is offline (`crl_import.rs`).
    imported_crls: RwLock<Vec<crate::ca::Crl>>,
    last_expiry_warning: parking_lot::Mutex<Option<time::OffsetDateTime>>,
}

impl Issuer {
    pub fn config(&self) -> &IssuerConfig {
        &self.cfg
    }

    pub fn trust_domain(&self) -> &TrustDomain {
        &self.cfg.trust_domain
    }

    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    pub fn policy(&self) -> &PolicyEngine {
        &self.policy
    }

    /// The current public trust state (bundle, CRLs, JWKS).
    pub fn snapshot(&self) -> Arc<TrustSnapshot> {
        self.snapshot.borrow().clone()
    }

    /// Follows every new trust state as it is published.
    pub fn subscribe(&self) -> watch::Receiver<Arc<TrustSnapshot>> {
        self.snapshot.subscribe()
    }

    pub fn now(&self) -> time::OffsetDateTime {
        self.clock.now()
    }

    fn signers(&self) -> Arc<Signers> {
        self.signers.read().clone()
    }

    fn token_keys(&self) -> Arc<TokenKeys> {
        self.tokens.read().clone()
    }
}
