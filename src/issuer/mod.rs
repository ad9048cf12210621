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
//!
//! Rooms: `start.rs` (start-up and its background tasks), `hierarchy.rs`
//! (creating and loading the CAs), `ca_admin.rs` (adding a CA, the server's
//! certificate), `auth.rs` + `audit.rs` (who calls, what is recorded),
//! `issue.rs` + `svid.rs` + `jwt_svid.rs` (issuance), `profiles.rs` +
//! `profile_issue.rs` (issuance profiles and issuing under them), `revoke.rs` (revoke,
//! deny, allow), `rotation.rs` (a CA's prepare, activate, taint, revoke), `trust_state.rs` (the one path of a change to memory and
//! the publisher) with `publish.rs` (the pure snapshot builder) and
//! `revocation.rs` (the in-memory revocation state), `feed.rs` (other
//! replicas' changes), `crl_import.rs`, `entries.rs`, `tokens.rs`,
//! `queries.rs` (read-only calls), `maintenance.rs`, `metrics.rs`.

mod agents;
mod audit;
mod auth;
mod ca_admin;
mod crl_import;
mod entries;
mod error;
mod feed;
mod hierarchy;
mod issue;
mod jwt_svid;
mod maintenance;
mod metrics;
mod profile_issue;
mod profiles;
mod publish;
mod queries;
mod revocation;
mod revoke;
mod rotation;
mod start;
mod svid;
mod tokens;
mod trust_state;

use std::sync::Arc;

use parking_lot::RwLock;
use time::Duration;
use tokio::sync::watch;

use crate::ca::{Kek, Signer};
use crate::domain::{Clock, SerialSource, TrustDomain};
use crate::policy::PolicyEngine;
use crate::store::Store;
use crate::token::{Es256Signer, TokenRules, VerifyingKey};
use crate::trust::{Acknowledgements, TrustSnapshot};

pub use agents::{AgentIdentity, NodeSvid, SvidSigned};
pub use audit::AuditAction;
pub use auth::{Caller, Credentials};
pub use entries::{EntryList, EntryRequest};
pub use error::IssuerError;
pub use hierarchy::{InitParams, InitReport};
pub use issue::{GenerateRequest, Issued, SignRequest};
pub use maintenance::MaintenanceReport;
pub use metrics::Metrics;
pub use profile_issue::{ProfileIssued, ProfileRequest};
pub use queries::Status;
pub use rotation::{CaListing, PrepareRequest};
pub use start::{BackgroundTask, Existing, IssuerParts, Started};
pub use tokens::{MintRequest, Minted};

/// Largest request payload (CSR, token) accepted, in bytes.
pub const MAX_REQUEST_BYTES: usize = 1024 * 1024;

/// Settings of the issuing service, already validated by `config`.
#[derive(Debug, Clone)]
pub struct IssuerConfig {
    pub trust_domain: TrustDomain,
    /// Default X.509-SVID lifetime.
    pub svid_ttl: Duration,
    /// Lifetime of a node agent's node SVID (`TRUSTMESH_AGENT_SVID_TTL`).
    pub agent_svid_ttl: Duration,
    /// Longest lifetime any certificate request may ask for.
    pub max_cert_ttl: Duration,
    pub jwt_svid_ttl: Duration,
    pub bootstrap_ttl: Duration,
    /// nextUpdate - thisUpdate of every CRL.
    pub crl_validity: Duration,
    /// Extra DNS names / IPs for the server's own TLS certificate.
    pub server_names: Vec<String>,
    /// The PKI mounts served (`/v1/<mount>/…`), each with its own profiles.
    pub mounts: Vec<String>,
    /// Intermediates rotate by themselves (`--ca-rotation auto`, `rotation.rs`).
    pub ca_rotation_auto: bool,
}

impl IssuerConfig {
    pub fn new(trust_domain: TrustDomain) -> Self {
        Self {
            trust_domain,
            svid_ttl: Duration::hours(1),
            agent_svid_ttl: Duration::hours(24),
            max_cert_ttl: Duration::days(90),
            jwt_svid_ttl: Duration::minutes(5),
            bootstrap_ttl: Duration::hours(24),
            crl_validity: Duration::days(7),
            server_names: Vec::new(),
            mounts: vec![crate::domain::profile::DEFAULT_MOUNT.to_string()],
            ca_rotation_auto: false,
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
    /// Signs certificates issued under a profile without a SPIFFE ID; `None`
    /// until it exists (it needs the root key online).
    pub profiles: Option<Arc<Signer>>,
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

/// The keys in use, each set replaced whole when a CA or signing key changes.
struct Keys {
    signers: RwLock<Arc<Signers>>,
    tokens: RwLock<Arc<TokenKeys>>,
}

pub struct Issuer {
    cfg: IssuerConfig,
    store: Arc<dyn Store>,
    kek: Kek,
    clock: Arc<dyn Clock>,
    serials: Arc<dyn SerialSource>,
    policy: PolicyEngine,
    keys: Keys,
    /// The registration entries, oldest first (`entries.rs`).
    entries: watch::Sender<EntryList>,
    /// The issuance profiles (`profiles.rs`).
    profiles: profiles::Profiles,
    /// What is published, and what it is built from (`trust_state.rs`).
    trust: trust_state::TrustState,
    /// Which trust revision each connected stream has acknowledged: SDS
    /// streams report into it, `pki ca activate` asks it (`rotation.rs`).
    acks: Arc<Acknowledgements>,
    /// This process among the replicas (random at each start), in the
    /// acknowledgement reports other replicas read (`rotation.rs`).
    replica: String,
    metrics: Metrics,
}

impl Issuer {
    pub fn config(&self) -> &IssuerConfig {
        &self.cfg
    }

    pub fn trust_domain(&self) -> &TrustDomain {
        &self.cfg.trust_domain
    }

    /// The current public trust state (bundle, CRLs, JWKS, deny list).
    pub fn snapshot(&self) -> Arc<TrustSnapshot> {
        self.trust.snapshot()
    }

    /// Where the streams serving this issuer's trust state report what they
    /// have acknowledged.
    pub fn acknowledgements(&self) -> Arc<Acknowledgements> {
        self.acks.clone()
    }

    /// Follows every new trust state as it is published.
    pub fn subscribe(&self) -> watch::Receiver<Arc<TrustSnapshot>> {
        self.trust.subscribe()
    }

    pub fn now(&self) -> time::OffsetDateTime {
        self.clock.now()
    }

    /// Ready to serve: the CA is loaded and published, and the store answers.
    pub async fn ready(&self) -> Result<(), String> {
        self.store.ping().await.map_err(|e| e.to_string())?;
        if self.snapshot().revision == 0 {
            return Err("CA not loaded".into());
        }
        Ok(())
    }

    /// This process among the replicas (random at each start).
    pub fn replica(&self) -> &str {
        &self.replica
    }

    fn signers(&self) -> Arc<Signers> {
        self.keys.signers.read().clone()
    }

    fn token_keys(&self) -> Arc<TokenKeys> {
        self.keys.tokens.read().clone()
    }
}
