//! The identity cache: the one source that the SDS server (and next the
//! Workload API) read identities from.
//!
//! For every entry some connected caller holds, the cache keeps the current
//! X.509-SVID with a fresh server-generated P-256 key, and replaces it at 50 %
//! of its lifetime ±10 % jitter. Callers follow an [`IdentitySet`] through a
//! `tokio::sync::watch`: one immutable value per change, shared by every
//! stream of that caller. Entries no caller holds are not kept warm: their
//! SVID lingers until its rotation point (a caller that reconnects gets it
//! again) and is then dropped. Each entry's mints are rate-limited
//! (`budget.rs`).
//!
//! Boundary: servers consume identities only through [`IdentitySource`], so a
//! node agent can serve the same sockets with identities it obtains from a
//! remote trustmesh server. The cache itself consumes two narrow inputs,
//! handed to it by `app`: an [`SvidMinter`] (the issuer in `serve`) and a
//! `watch` of [`TrustSnapshot`]s; it never imports the issuer.
//!
//! Layout: `identity.rs` ([`IdentityCache`], the watch entry point),
//! `state.rs` (sets, warm entries, publication), `driver.rs` (one rotation
//! task per warm entry), `follow.rs` (entry and trust/deny-list changes),
//! `timing.rs` (injected timer and jitter), `metrics.rs`.

mod budget;
mod driver;
mod follow;
mod identity;
mod metrics;
mod state;
mod timing;

pub use budget::{BURST as MINT_BURST, REFILL as MINT_REFILL};
pub use driver::{Urgency, issued_lifetime, renewal_urgency};
pub use identity::{CacheInputs, CacheOptions, DEFAULT_REISSUE_RATE, IdentityCache};
pub use timing::{FixedJitter, Jitter, ManualTimer, RingJitter, Timer, TokioTimer, rotation_at};

use std::collections::BTreeSet;
use std::sync::Arc;

use time::OffsetDateTime;
use tokio::sync::watch;

use crate::ca::{IssuedCertificate, PrivateKey};
use crate::domain::{Entry, Selector, SpiffeId};
use crate::trust::TrustSnapshot;

/// One X.509-SVID with its key.
#[derive(Debug)]
pub struct Svid {
    pub entry_id: String,
    pub spiffe_id: SpiffeId,
    pub hint: Option<String>,
    /// Leaf followed by its issuing intermediate, DER (its PEM is
    /// [`Svid::chain_pem`], written when a server encodes it).
    pub chain_der: Vec<Vec<u8>>,
    /// Never logged; leaves the process only inside SDS / Workload API responses.
    pub key: PrivateKey,
    pub serial: String,
    /// Fingerprint of the CA that signed it (SHA-256 of its DER, hex).
    pub issuer: String,
    pub not_before: OffsetDateTime,
    pub not_after: OffsetDateTime,
    /// JWT-SVID lifetime set by the entry (`None`: the server's default).
    pub jwt_ttl: Option<time::Duration>,
}

impl Svid {
    /// The chain, PEM (leaf, then the issuing intermediate).
    pub fn chain_pem(&self) -> String {
        self.chain_der.iter().map(|der| crate::ca::cert_to_pem(der)).collect()
    }
}

/// Everything one caller holds at one moment.
#[derive(Debug, Clone)]
pub struct IdentitySet {
    /// Moves forward with every change of this set.
    pub version: u64,
    /// One per entitled entry, oldest entry first: `svids[0]` is `default`.
    pub svids: Vec<Arc<Svid>>,
    /// Entitled identities that currently get no SVID, with the reason
    /// (denied identity, issuance failure).
    pub withheld: Vec<(SpiffeId, String)>,
    /// The trust bundle and CRLs.
    pub trust: Arc<TrustSnapshot>,
}

impl IdentitySet {
    /// The SVID named by `name`: `default` or a SPIFFE ID.
    pub fn svid(&self, name: &str) -> Option<&Arc<Svid>> {
        if name == "default" {
            return self.svids.first();
        }
        self.svids.iter().find(|s| s.spiffe_id.to_string() == name)
    }
}

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CacheError {
    /// The caller's selectors match no registration entry.
    #[error("no registration entry matches the caller's selectors")]
    NoEntry,
    #[error("identities unavailable: {0}")]
    Unavailable(String),
}

/// A caller's live view of its identities. Dropping it releases the caller's
/// entries; when no caller holds an entry any more, its SVID is not renewed.
pub struct IdentityWatch {
    pub updates: watch::Receiver<Arc<IdentitySet>>,
    /// Released on drop (implementation-defined).
    pub guard: Box<dyn Send + Sync>,
}

impl IdentityWatch {
    pub fn current(&self) -> Arc<IdentitySet> {
        self.updates.borrow().clone()
    }
}

/// Mints X.509-SVIDs for registration entries with fresh keys: the issuer in
/// `serve`, a remote server for an agent.
#[async_trait::async_trait]
pub trait SvidMinter: Send + Sync + 'static {
    /// A new SVID for `entry` (its SPIFFE ID, DNS names and lifetime).
    async fn mint(&self, entry: &Entry) -> Result<MintedSvid, MintError>;

    /// After a failed mint for an entry nothing is served for yet: an SVID
    /// the minter kept that is still good (an agent restarted while its
    /// server is away serves its cache). The server keeps none.
    fn kept(&self, _entry: &Entry) -> Option<MintedSvid> {
        None
    }
}

/// What a minter returns: the certificate, its key, and the chain PEM
/// (leaf, then the issuing intermediate). The key is never logged.
pub struct MintedSvid {
    pub certificate: IssuedCertificate,
    pub key: PrivateKey,
    pub chain_pem: String,
}

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum MintError {
    /// The identity is on the deny list: nothing is issued until it is allowed.
    #[error("identity {spiffe_id} is denied: {reason}")]
    Denied { spiffe_id: String, reason: String },
    /// Anything else (retried with backoff).
    #[error("{0}")]
    Failed(String),
}

/// Where servers get identities from.
#[async_trait::async_trait]
pub trait IdentitySource: Send + Sync + 'static {
    /// Starts following the identities of a caller with these selectors. The
    /// first set is complete when this returns (SVIDs minted if needed).
    /// `NoEntry` when the selectors match no entry.
    async fn watch(&self, selectors: BTreeSet<Selector>) -> Result<IdentityWatch, CacheError>;

    /// The trust bundle and CRLs alone (for callers that hold no SVID).
    fn trust(&self) -> watch::Receiver<Arc<TrustSnapshot>>;
}
