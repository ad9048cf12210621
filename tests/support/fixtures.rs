//! Identity fixtures shared by the in-process tests of the cache, SDS and the
//! Workload API: registration entries and selector sets, SVIDs (fake ones
//! for protocol tests, real ones minted by an issuer), trust snapshots and
//! identity sets, and [`FakeSource`], an `IdentitySource` the test drives.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Display;
use std::sync::Arc;

use parking_lot::Mutex;
use time::OffsetDateTime;
use tokio::sync::watch;
use trustmesh::ca::{KeyAlgorithm, PrivateKey};
use trustmesh::cache::{CacheError, IdentitySet, IdentitySource, IdentityWatch, Svid};
use trustmesh::domain::{Entry, Selector, SpiffeId, TrustDomain};
use trustmesh::issuer::{Caller, GenerateRequest, Issuer};
use trustmesh::trust::{DenyList, TrustSnapshot};

/// Selectors from their text forms (`unix:uid:1000`, `token:sub:node-a`).
pub fn selectors(texts: &[impl AsRef<str>]) -> BTreeSet<Selector> {
    texts.iter().map(|t| Selector::parse(t.as_ref()).unwrap()).collect()
}

/// The registration entry `entry-<spiffe_id>` for `spiffe_id`, created at
/// `created_at` (oldest first decides `default`), selected by `selectors`;
/// no DNS names, default lifetimes.
pub fn entry(spiffe_id: impl Display, created_at: i64, selectors: &[impl AsRef<str>]) -> Entry {
    let spiffe_id = SpiffeId::parse(&spiffe_id.to_string()).unwrap();
    Entry {
        id: format!("entry-{spiffe_id}"),
        spiffe_id,
        selectors: self::selectors(selectors),
        dns_names: vec![],
        ttl_seconds: None,
        jwt_ttl_seconds: None,
        hint: None,
        federates_with: vec![],
        created_at,
        node: None,
    }
}

/// An SVID of `spiffe_id` that is no certificate, for protocol tests: its
/// chain is one fake PEM block holding `serial`; its key is real.
pub fn fake_svid(spiffe_id: &str, serial: &str) -> Arc<Svid> {
    Arc::new(Svid {
        entry_id: format!("entry-{spiffe_id}"),
        spiffe_id: SpiffeId::parse(spiffe_id).unwrap(),
        hint: None,
        // Not a certificate: its serial stands for one.
        chain_der: vec![serial.as_bytes().to_vec()],
        key: PrivateKey::generate(KeyAlgorithm::EcP256, &ring::rand::SystemRandom::new()).unwrap(),
        serial: serial.into(),
        issuer: String::new(),
        not_before: OffsetDateTime::UNIX_EPOCH,
        not_after: OffsetDateTime::UNIX_EPOCH,
        jwt_ttl: None,
    })
}

/// A real SVID of `spiffe_id`, valid for an hour, minted by `issuer`, with
/// the Workload API `hint`.
pub async fn minted_svid(issuer: &Issuer, spiffe_id: &str, hint: Option<&str>) -> Arc<Svid> {
    let req = GenerateRequest {
        common_name: String::new(),
        spiffe_id: spiffe_id.into(),
        dns_names: vec![],
        ttl_seconds: 3600,
    };
    let issued = issuer.generate(&Caller::system(), &req).await.unwrap();
    let chain_der = pem::parse_many(&issued.chain_pem).unwrap().into_iter().map(|p| p.contents().to_vec()).collect();
    let at = |t: i64| OffsetDateTime::from_unix_timestamp(t).unwrap();
    Arc::new(Svid {
        entry_id: format!("entry-{spiffe_id}"),
        spiffe_id: SpiffeId::parse(spiffe_id).unwrap(),
        hint: hint.map(str::to_string),
        chain_der,
        key: issued.private_key.unwrap(),
        serial: issued.record.serial.clone(),
        issuer: issued.record.issuer_id.clone(),
        not_before: at(issued.record.not_before),
        not_after: at(issued.record.not_after),
        jwt_ttl: None,
    })
}

/// A trust snapshot of example.org at `revision` with no CA, for protocol
/// tests: its bundle and CRL are fake PEM blocks holding `tag`.
pub fn fake_trust(revision: u64, tag: &str) -> Arc<TrustSnapshot> {
    Arc::new(TrustSnapshot {
        revision,
        trust_domain: TrustDomain::parse("example.org").unwrap(),
        cas: Vec::new(),
        bundle_pem: format!("-----BEGIN CERTIFICATE-----\n{tag}\n-----END CERTIFICATE-----\n"),
        crls: Vec::new(),
        crl_pem: format!("-----BEGIN X509 CRL-----\nCRL-{tag}\n-----END X509 CRL-----\n"),
        profiles: Default::default(),
        jwks: serde_json::json!({"keys": []}),
        deny: Arc::new(DenyList::default()),
        generation: revision,
        built_at: OffsetDateTime::from_unix_timestamp(1_700_000_000 + revision as i64).unwrap(),
        published_at: std::time::Instant::now(),
    })
}

/// The identity set `version` of `svids` (the first is `default`) with
/// `trust`, nothing withheld.
pub fn identity_set(version: u64, svids: Vec<Arc<Svid>>, trust: Arc<TrustSnapshot>) -> IdentitySet {
    IdentitySet { version, svids, withheld: Vec::new(), trust }
}

/// An `IdentitySource` the test drives: each caller is named by a selector
/// it must hold (`token:sub:alice`, `unix:uid:1000`) and gets the identity
/// sets the test publishes under that name; a caller that holds no published
/// name has no entry.
pub struct FakeSource {
    callers: Mutex<BTreeMap<Selector, watch::Sender<Arc<IdentitySet>>>>,
    /// Withdrawn callers' channels, kept so their open watches stay open.
    withdrawn: Mutex<Vec<watch::Sender<Arc<IdentitySet>>>>,
    trust: watch::Receiver<Arc<TrustSnapshot>>,
}

impl FakeSource {
    /// No caller yet; `trust` is what [`IdentitySource::trust`] follows.
    pub fn new(trust: watch::Receiver<Arc<TrustSnapshot>>) -> Self {
        Self { callers: Mutex::default(), withdrawn: Mutex::default(), trust }
    }

    /// Publishes `set` as the current identities of `caller`.
    pub fn publish(&self, caller: &str, set: IdentitySet) {
        let mut callers = self.callers.lock();
        match callers.get(&selector(caller)) {
            Some(tx) => {
                tx.send_replace(Arc::new(set));
            }
            None => {
                callers.insert(selector(caller), watch::channel(Arc::new(set)).0);
            }
        }
    }

    /// The caller's current set, changed by `f`, as the next version;
    /// panics if nothing was published for it.
    pub fn update(&self, caller: &str, f: impl FnOnce(&mut IdentitySet)) {
        let callers = self.callers.lock();
        let tx = callers.get(&selector(caller)).unwrap_or_else(|| panic!("nothing published for {caller}"));
        tx.send_modify(|current| {
            let mut set = (**current).clone();
            set.version += 1;
            f(&mut set);
            *current = Arc::new(set);
        });
    }

    /// The caller's current set; panics if nothing was published for it.
    pub fn current(&self, caller: &str) -> Arc<IdentitySet> {
        let callers = self.callers.lock();
        let tx = callers.get(&selector(caller)).unwrap_or_else(|| panic!("nothing published for {caller}"));
        tx.borrow().clone()
    }

    /// `caller` has no entry from now on (its open watches stay open).
    pub fn withdraw(&self, caller: &str) {
        if let Some(tx) = self.callers.lock().remove(&selector(caller)) {
            self.withdrawn.lock().push(tx);
        }
    }

    /// Like the real cache: every new trust snapshot becomes the next version
    /// of every published set (a task, for as long as the snapshots come).
    pub fn follow_trust(self: &Arc<Self>) {
        let (source, mut snapshots) = (Arc::clone(self), self.trust.clone());
        tokio::spawn(async move {
            while snapshots.changed().await.is_ok() {
                let trust = snapshots.borrow_and_update().clone();
                for tx in source.callers.lock().values() {
                    tx.send_modify(|set| {
                        *set =
                            Arc::new(IdentitySet { version: set.version + 1, trust: trust.clone(), ..(**set).clone() })
                    });
                }
            }
        });
    }
}

#[async_trait::async_trait]
impl IdentitySource for FakeSource {
    async fn watch(&self, selectors: BTreeSet<Selector>) -> Result<IdentityWatch, CacheError> {
        let callers = self.callers.lock();
        match selectors.iter().find_map(|s| callers.get(s)) {
            Some(tx) => Ok(IdentityWatch { updates: tx.subscribe(), guard: Box::new(()) }),
            None => Err(CacheError::NoEntry),
        }
    }

    fn trust(&self) -> watch::Receiver<Arc<TrustSnapshot>> {
        self.trust.clone()
    }
}

fn selector(text: &str) -> Selector {
    Selector::parse(text).unwrap_or_else(|e| panic!("{text:?} is not a selector: {e}"))
}

/// `trustmesh pki profile create` of the profile `tenant` (mount `pki`): EC
/// P-256 client certificates whose CN is a tenant id (`tenant-*`), no SPIFFE ID.
pub const TENANT_PROFILE: [&str; 10] = [
    "pki",
    "profile",
    "create",
    "tenant",
    "--key-type",
    "ec",
    "--allowed-domain",
    "tenant-*",
    "--allow-glob-domains",
    "--client-only",
];
