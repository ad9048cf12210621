//! A fake SVID minter over a real in-memory CA, and the trust state a test
//! changes by hand: the identity cache tested without an issuer or a store.
//! Certificates are real (a P-384 root, a P-256 Services CA, the X.509-SVID
//! profile), so keys, serials and lifetimes are what the cache would get;
//! denials and revocations are what the test says they are.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use parking_lot::Mutex;
use time::Duration;
use tokio::sync::watch;

use trustmesh::ca::{
    self, IntermediateParams, KeyAlgorithm, PrivateKey, RootParams, Signer, SvidRequest, create_intermediate,
    create_root,
};
use trustmesh::cache::{MintError, MintedSvid, SvidMinter};
use trustmesh::domain::{CaRole, CaState, Clock, Entry, ManualClock, RandomSerials, SerialSource, TrustDomain};
use trustmesh::trust::{CaView, DenyList, RevokedSerials, TrustSnapshot};

/// Default lifetime of the SVIDs it mints (an entry may set its own).
pub const SVID_TTL: Duration = Duration::hours(1);

pub struct FakeCa {
    clock: ManualClock,
    services: Signer,
    bundle_pem: String,
    state: Mutex<State>,
    trust: watch::Sender<Arc<TrustSnapshot>>,
}

#[derive(Default)]
struct State {
    /// Mint attempts by SPIFFE ID (refused ones too).
    attempts: HashMap<String, usize>,
    /// Serials minted by SPIFFE ID.
    minted: HashMap<String, Vec<String>>,
    /// Serial → (SPIFFE ID, fingerprint) of every certificate minted.
    certificates: HashMap<String, (String, String)>,
    denied: BTreeMap<String, String>,
    revoked: Vec<String>,
    /// The Services CA's rotation state, once a test set one.
    services_state: Option<CaState>,
}

impl FakeCa {
    /// A CA for example.org on `clock`, and its first trust snapshot.
    pub fn new(clock: ManualClock) -> Arc<Self> {
        let td = TrustDomain::parse("example.org").unwrap();
        let serials = RandomSerials::default();
        let now = clock.now();
        let root = create_root(
            &RootParams {
                common_name: "fake Root CA".into(),
                algorithm: KeyAlgorithm::EcP384,
                lifetime: Duration::days(3650),
                trust_domain: td.clone(),
            },
            serials.next_serial().unwrap(),
            now,
            &ring::rand::SystemRandom::new(),
        )
        .unwrap();
        let params = IntermediateParams {
            common_name: "fake Services CA".into(),
            lifetime: Duration::days(730),
            trust_domain: td,
        };
        let services =
            create_intermediate(&root, &params, serials.next_serial().unwrap(), now, &ring::rand::SystemRandom::new())
                .unwrap();
        let bundle_pem = format!("{}{}", root.cert.to_pem(), services.cert.to_pem());
        let mut first = TrustSnapshot::empty(&TrustDomain::parse("example.org").unwrap());
        first.revision = 1;
        first.bundle_pem = bundle_pem.clone();
        Arc::new(Self {
            clock,
            services,
            bundle_pem,
            state: Mutex::default(),
            trust: watch::Sender::new(Arc::new(first)),
        })
    }

    /// The trust state as the cache follows it.
    pub fn trust(&self) -> watch::Receiver<Arc<TrustSnapshot>> {
        self.trust.subscribe()
    }

    pub fn snapshot(&self) -> Arc<TrustSnapshot> {
        self.trust.borrow().clone()
    }

    /// Certificates minted for `spiffe_id`.
    pub fn minted(&self, spiffe_id: &str) -> usize {
        self.state.lock().minted.get(spiffe_id).map_or(0, Vec::len)
    }

    /// Mint attempts for `spiffe_id`, refused ones included.
    pub fn attempts(&self, spiffe_id: &str) -> usize {
        self.state.lock().attempts.get(spiffe_id).copied().unwrap_or(0)
    }

    /// Denies an identity (nothing more is minted for it) and publishes.
    pub fn deny(&self, spiffe_id: &str, reason: &str) -> Arc<TrustSnapshot> {
        {
            let mut state = self.state.lock();
            state.denied.insert(spiffe_id.to_string(), reason.to_string());
            let serials = state.minted.get(spiffe_id).cloned().unwrap_or_default();
            state.revoked.extend(serials);
        }
        self.publish()
    }

    pub fn allow(&self, spiffe_id: &str) -> Arc<TrustSnapshot> {
        self.state.lock().denied.remove(spiffe_id);
        self.publish()
    }

    /// Revokes one certificate and publishes.
    pub fn revoke(&self, serial: &str) -> Arc<TrustSnapshot> {
        self.state.lock().revoked.push(serial.to_string());
        self.publish()
    }

    /// Sets the Services CA's rotation state (e.g. tainted) and publishes.
    pub fn set_services_state(&self, state: CaState) -> Arc<TrustSnapshot> {
        self.state.lock().services_state = Some(state);
        self.publish()
    }

    /// The fingerprint of the CA that signs what it mints.
    pub fn services_fingerprint(&self) -> String {
        self.services.cert.fingerprint.clone()
    }

    /// A new snapshot of the current state (a new revision, new CRLs).
    pub fn publish(&self) -> Arc<TrustSnapshot> {
        let state = self.state.lock();
        let previous = self.snapshot();
        let mut serials = RevokedSerials::default();
        let mut certificates: Vec<String> = Vec::new();
        for serial in &state.revoked {
            serials.insert_mut(serial.clone());
            if let Some((id, fingerprint)) = state.certificates.get(serial)
                && !state.denied.contains_key(id)
            {
                certificates.push(fingerprint.clone());
            }
        }
        certificates.sort();
        let deny =
            DenyList { revision: previous.deny.revision + 1, identities: state.denied.clone(), certificates, serials };
        let mut next = TrustSnapshot::empty(&previous.trust_domain);
        next.revision = previous.revision + 1;
        next.bundle_pem = self.bundle_pem.clone();
        next.deny = Arc::new(deny);
        if let Some(state) = state.services_state {
            let c = &self.services.cert;
            next.cas = vec![CaView {
                role: CaRole::Services,
                common_name: c.common_name.clone(),
                fingerprint: c.fingerprint.clone(),
                algorithm: c.algorithm.clone(),
                not_before: c.not_before.unix_timestamp(),
                not_after: c.not_after.unix_timestamp(),
                state,
                key_online: true,
            }];
        }
        let next = Arc::new(next);
        self.trust.send_replace(next.clone());
        next
    }
}

#[async_trait::async_trait]
impl SvidMinter for FakeCa {
    async fn mint(&self, entry: &Entry) -> Result<MintedSvid, MintError> {
        let id = entry.spiffe_id.to_string();
        {
            let mut state = self.state.lock();
            *state.attempts.entry(id.clone()).or_default() += 1;
            if let Some(reason) = state.denied.get(&id) {
                return Err(MintError::Denied { spiffe_id: id, reason: reason.clone() });
            }
        }
        let key = PrivateKey::generate(KeyAlgorithm::EcP256, &ring::rand::SystemRandom::new()).unwrap();
        let request = SvidRequest {
            spiffe_id: &entry.spiffe_id,
            dns_names: &entry.dns_names,
            public_key_der: &key.public_key_der(),
            lifetime: entry.ttl_seconds.map_or(SVID_TTL, |s| Duration::seconds(i64::from(s))),
            serial: RandomSerials::default().next_serial().unwrap(),
            common_name: None,
        };
        let certificate =
            ca::issue_svid(&self.services, &request, self.clock.now()).map_err(|e| MintError::Failed(e.to_string()))?;
        let serial = certificate.serial.to_string();
        let mut state = self.state.lock();
        state.minted.entry(id.clone()).or_default().push(serial.clone());
        state.certificates.insert(serial, (id, certificate.fingerprint.clone()));
        let chain_pem = format!("{}{}", certificate.to_pem(), self.services.cert.to_pem());
        Ok(MintedSvid { certificate, key, chain_pem })
    }
}
