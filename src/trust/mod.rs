//! The published trust state: what every proxy, workload and reader of the
//! HTTP endpoints is told about the trust domain at one moment — the CAs and
//! their bundle, the CRLs, the JWT-SVID keys, and the deny list — as one
//! immutable [`TrustSnapshot`] per change, shared by every reader, so a change
//! is encoded once and every stream sends the same bytes.
//!
//! Boundary: a leaf. It imports only `domain` and `ca` types. The issuer
//! builds snapshots; the identity cache, SDS and the Workload API read them
//! (through a `tokio::sync::watch` handed to them by `app`), and none of
//! them needs the issuer to do so.

mod acks;
mod deny;

use std::sync::Arc;

use time::{Duration, OffsetDateTime};

use crate::ca::Crl;
use crate::domain::{CaRole, CaState, TrustDomain};

pub use acks::{AckHandle, AckTracker, Acknowledgements, Behind};
pub use deny::{DenyList, RevokedSerials};

/// The longest an HTTP connection through a trustmesh-configured Envoy
/// lives (`max_connection_duration` of every bootstrap): a peer re-handshakes,
/// and meets the current CRL, at least this often.
pub const MAX_CONNECTION_SECS: u32 = 3600;
/// Clock skew allowed between trustmesh and the proxies.
pub const CLOCK_SKEW: Duration = Duration::minutes(5);
/// How long after its notAfter a revoked certificate stays on the pushed deny
/// list: a connection opened just before the certificate expired lives up to
/// [`MAX_CONNECTION_SECS`], plus clock skew.
pub const CONNECTION_GRACE: Duration = Duration::seconds(MAX_CONNECTION_SECS as i64).saturating_add(CLOCK_SKEW);

/// A CA as operators see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CaView {
    pub role: CaRole,
    pub common_name: String,
    pub fingerprint: String,
    pub algorithm: String,
    pub not_before: i64,
    pub not_after: i64,
    pub state: CaState,
    pub key_online: bool,
}

/// The CAs that sign certificates issued under a profile without a SPIFFE ID
/// (role `profiles`), and their CRLs. Published for the PKI API only
/// (`/v1/<mount>/ca_chain`, `/v1/<mount>/crl`): never part of the bundle or
/// the CRL set the mesh validates with, so such a certificate is refused by
/// every Envoy and workload of the trust domain.
#[derive(Debug, Clone, Default)]
pub struct ProfilesTrust {
    /// The unexpired profiles CAs, oldest first, PEM.
    pub bundle_pem: String,
    pub crls: Vec<Crl>,
    /// `crls`, PEM, concatenated.
    pub crl_pem: String,
}

#[derive(Debug, Clone)]
pub struct TrustSnapshot {
    /// Moves forward with every publication.
    pub revision: u64,
    pub trust_domain: TrustDomain,
    /// Every unexpired CA: root first, then intermediates oldest first
    /// (the profiles CAs too).
    pub cas: Vec<CaView>,
    /// Root and unexpired intermediates, PEM: the mesh's bundle (without the profiles CAs).
    pub bundle_pem: String,
    /// One CRL per CA of the bundle whose key is online, and the imported
    /// ones of CAs whose key is not.
    pub crls: Vec<Crl>,
    /// All CRLs, PEM, concatenated.
    pub crl_pem: String,
    /// The profiles CAs and their CRLs, apart from the mesh's.
    pub profiles: ProfilesTrust,
    /// JWT-SVID signing keys.
    pub jwks: serde_json::Value,
    /// What proxies refuse on already-open connections, and every revoked serial.
    pub deny: Arc<DenyList>,
    /// The generation of the revocation state this snapshot was built from.
    pub generation: u64,
    pub built_at: OffsetDateTime,
    /// When it was published (for push latency metrics).
    pub published_at: std::time::Instant,
}

impl TrustSnapshot {
    /// The state before anything was published.
    pub fn empty(td: &TrustDomain) -> Self {
        Self {
            revision: 0,
            trust_domain: td.clone(),
            cas: Vec::new(),
            bundle_pem: String::new(),
            crls: Vec::new(),
            crl_pem: String::new(),
            profiles: ProfilesTrust::default(),
            jwks: serde_json::json!({ "keys": [] }),
            deny: Arc::new(DenyList::default()),
            generation: 0,
            built_at: OffsetDateTime::UNIX_EPOCH,
            published_at: std::time::Instant::now(),
        }
    }

    /// The earliest nextUpdate of any published CRL (the profiles CAs' too).
    pub fn earliest_next_update(&self) -> Option<OffsetDateTime> {
        self.crls.iter().chain(&self.profiles.crls).map(|c| c.next_update).min()
    }

    /// The CRL issued by the CA with this fingerprint (a profiles CA's too).
    pub fn crl_of(&self, issuer_fingerprint: &str) -> Option<&Crl> {
        self.crls.iter().chain(&self.profiles.crls).find(|c| c.issuer_fingerprint == issuer_fingerprint)
    }

    /// The active profiles CA.
    pub fn profiles_ca(&self) -> Option<&CaView> {
        self.cas.iter().find(|c| c.role == CaRole::Profiles && c.state == CaState::Active)
    }

    /// The active root CA (while a root rotates, the prepared or old one is
    /// beside it), or the only root there is.
    pub fn root(&self) -> Option<&CaView> {
        let roots = || self.cas.iter().filter(|c| c.role == CaRole::Root);
        roots().find(|c| c.state == CaState::Active).or_else(|| roots().next())
    }

    /// The active Services CA (the issuer of workload SVIDs).
    pub fn services(&self) -> Option<&CaView> {
        self.cas.iter().find(|c| c.role == CaRole::Services && c.state == CaState::Active)
    }

    /// Whether certificates signed by the CA with this fingerprint are to be
    /// replaced now: it is tainted or revoked (`pki ca taint`, `pki ca revoke`).
    pub fn retired(&self, fingerprint: &str) -> bool {
        self.cas.iter().any(|c| c.fingerprint == fingerprint && matches!(c.state, CaState::Tainted | CaState::Revoked))
    }
}
