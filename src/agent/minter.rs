//! SVIDs for the node's entries: a fresh P-256 key made here (it never
//! leaves the node), a CSR the server signs — CSRs of concurrent mints go in
//! one `SignSvids` call — and each SVID kept on disk with its key sealed, so
//! an agent restarted while its server is away serves what it had.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use parking_lot::Mutex;
use ring::rand::SystemRandom;
use tokio::sync::{mpsc, oneshot, watch};

use super::disk::{Disk, StoredSvid};
use super::link::Link;
use crate::ca::{self, IssuedCertificate, KeyAlgorithm, PrivateKey};
use crate::cache::{MintError, MintedSvid, SvidMinter};
use crate::domain::{Clock, Entry};
use crate::proto::agent::v1 as pb;
use crate::trust::TrustSnapshot;

/// Most CSRs sent in one call.
const BATCH: usize = 128;

/// An SVID kept for an entry: the chain and the key, as on disk.
struct Kept {
    chain_pem: String,
    key: PrivateKey,
    cert: IssuedCertificate,
    /// Handed to the cache already (then a mint asks the server for a new one).
    served: AtomicBool,
}

struct Job {
    entry_id: String,
    csr: Vec<u8>,
    reply: oneshot::Sender<Result<pb::SignedSvid, String>>,
}

pub struct AgentMinter {
    link: Arc<Link>,
    disk: Arc<Disk>,
    trust: watch::Receiver<Arc<TrustSnapshot>>,
    clock: Arc<dyn Clock>,
    kept: Mutex<HashMap<String, Arc<Kept>>>,
    jobs: mpsc::Sender<Job>,
}

impl AgentMinter {
    /// The minter, with the SVIDs kept on disk; spawns the batcher.
    pub fn new(
        link: Arc<Link>,
        disk: Arc<Disk>,
        stored: Vec<StoredSvid>,
        trust: watch::Receiver<Arc<TrustSnapshot>>,
        clock: Arc<dyn Clock>,
    ) -> Arc<Self> {
        let mut kept = HashMap::new();
        for s in stored {
            let leaf = ca::certs_from_pem(&s.chain_pem).ok().and_then(|d| d.into_iter().next());
            match leaf.map(|d| IssuedCertificate::from_der(&d)) {
                Some(Ok(cert)) => {
                    let served = AtomicBool::new(false);
                    kept.insert(s.entry_id, Arc::new(Kept { chain_pem: s.chain_pem, key: s.key, cert, served }));
                }
                _ => disk.remove_svid(&s.entry_id),
            }
        }
        let (jobs, rx) = mpsc::channel(1024);
        tokio::spawn(batcher(link.clone(), rx));
        Arc::new(Self { link, disk, trust, clock, kept: Mutex::new(kept), jobs })
    }

    /// The kept SVID of `entry`, if it may still be served: same identity,
    /// unexpired, not revoked, its CA not retired.
    fn usable(&self, entry: &Entry) -> Option<Arc<Kept>> {
        let kept = self.kept.lock().get(&entry.id).cloned()?;
        let trust = self.trust.borrow();
        let issuer = ca::certs_from_pem(&kept.chain_pem).ok()?.get(1).map(|d| ca::fingerprint(d)).unwrap_or_default();
        let good = kept.cert.spiffe_id.as_ref() == Some(&entry.spiffe_id)
            && kept.cert.not_after > self.clock.now()
            && !trust.deny.is_revoked(&kept.cert.serial.to_string())
            && trust.deny.denial(&entry.spiffe_id.to_string()).is_none()
            && !trust.retired(&issuer);
        good.then_some(kept)
    }

    fn minted(kept: &Kept) -> Result<MintedSvid, MintError> {
        let key = PrivateKey::from_pkcs8_der(kept.key.pkcs8_der()).map_err(|e| MintError::Failed(e.to_string()))?;
        Ok(MintedSvid { certificate: kept.cert.clone(), key, chain_pem: kept.chain_pem.clone() })
    }

    async fn remote(&self, entry: &Entry) -> Result<MintedSvid, MintError> {
        if !self.link.connected() {
            return Err(MintError::Failed(format!("no server reachable (last tried {})", self.link.server())));
        }
        let failed = |why: String| MintError::Failed(why);
        let key =
            PrivateKey::generate(KeyAlgorithm::EcP256, &SystemRandom::new()).map_err(|e| failed(e.to_string()))?;
        let csr = ca::csr_der(&key, &entry.spiffe_id).map_err(|e| failed(e.to_string()))?;
        let (reply, answer) = oneshot::channel();
        self.jobs
            .send(Job { entry_id: entry.id.clone(), csr, reply })
            .await
            .map_err(|_| failed("the agent is stopping".into()))?;
        let signed = answer.await.map_err(|_| failed("the agent is stopping".into()))?.map_err(failed)?;
        if signed.denied {
            return Err(MintError::Denied { spiffe_id: entry.spiffe_id.to_string(), reason: signed.error });
        }
        if signed.chain_pem.is_empty() {
            return Err(failed(format!("the server refused the CSR: {}", signed.error)));
        }
        let ders = ca::certs_from_pem(&signed.chain_pem).map_err(|e| failed(format!("the server's SVID: {e}")))?;
        let cert = ders
            .first()
            .map(|d| IssuedCertificate::from_der(d))
            .transpose()
            .map_err(|e| failed(format!("the server's SVID: {e}")))?
            .ok_or_else(|| failed("the server returned no certificate".into()))?;
        if cert.spiffe_id.as_ref() != Some(&entry.spiffe_id) {
            return Err(failed(format!("the server returned an SVID that is not {}", entry.spiffe_id)));
        }
        if let Err(e) = self.disk.put_svid(&entry.id, &signed.chain_pem, &key) {
            tracing::error!(entry_id = %entry.id, error = %e, "cannot keep an SVID on disk");
        }
        let copy = PrivateKey::from_pkcs8_der(key.pkcs8_der()).map_err(|e| failed(e.to_string()))?;
        let served = AtomicBool::new(true);
        let kept = Arc::new(Kept { chain_pem: signed.chain_pem.clone(), key: copy, cert: cert.clone(), served });
        self.kept.lock().insert(entry.id.clone(), kept);
        Ok(MintedSvid { certificate: cert, key, chain_pem: signed.chain_pem })
    }

    /// Entries gone from the node: their SVIDs leave the disk.
    pub fn retain(&self, entries: &[Entry]) {
        let mut kept = self.kept.lock();
        let gone: Vec<String> = kept.keys().filter(|id| !entries.iter().any(|e| &e.id == *id)).cloned().collect();
        for id in gone {
            kept.remove(&id);
            self.disk.remove_svid(&id);
        }
    }
}

#[async_trait::async_trait]
impl SvidMinter for AgentMinter {
    async fn mint(&self, entry: &Entry) -> Result<MintedSvid, MintError> {
        // An SVID kept on disk and not yet served since the agent started,
        // before its rotation point, is served as it is: no round trip,
        // server or not (a restarted agent answers at once).
        if let Some(kept) = self.usable(entry) {
            let rotate_at = crate::cache::rotation_at(kept.cert.not_before, kept.cert.not_after, 0.5);
            if self.clock.now() < rotate_at && !kept.served.swap(true, Ordering::AcqRel) {
                return Self::minted(&kept);
            }
        }
        self.remote(entry).await
    }

    fn kept(&self, entry: &Entry) -> Option<MintedSvid> {
        self.usable(entry).and_then(|k| Self::minted(&k).ok())
    }
}

/// Sends the CSRs of concurrent mints in batches of up to [`BATCH`].
async fn batcher(link: Arc<Link>, mut jobs: mpsc::Receiver<Job>) {
    let mut batch = Vec::with_capacity(BATCH);
    while jobs.recv_many(&mut batch, BATCH).await > 0 {
        let csrs = batch.iter().map(|j| pb::SvidCsr { entry_id: j.entry_id.clone(), csr: j.csr.clone() }).collect();
        let answer = match link.client().await {
            Ok(mut client) => match client.sign_svids(pb::SignSvidsRequest { csrs }).await {
                Ok(reply) => Ok(reply.into_inner().svids),
                Err(status) => {
                    if matches!(status.code(), tonic::Code::Unavailable | tonic::Code::Unknown | tonic::Code::Cancelled)
                    {
                        link.failed();
                    }
                    Err(format!("SignSvids: {}", status.message()))
                }
            },
            Err(e) => Err(e),
        };
        match answer {
            Ok(svids) => {
                let mut svids = svids.into_iter();
                for job in batch.drain(..) {
                    let signed = svids
                        .next()
                        .filter(|s| s.entry_id == job.entry_id)
                        .ok_or_else(|| "the server answered fewer CSRs than were sent".to_string());
                    let _ = job.reply.send(signed);
                }
            }
            Err(e) => {
                for job in batch.drain(..) {
                    let _ = job.reply.send(Err(e.clone()));
                }
            }
        }
    }
}
