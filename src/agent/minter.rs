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

/// What is known in memory of the SVID kept on disk for an entry: enough to
/// tell whether it may be served; its chain and key are read from disk when
/// it is (after a restart, or while no server answers).
struct Kept {
    spiffe_id: Option<crate::domain::SpiffeId>,
    serial: String,
    not_before: time::OffsetDateTime,
    not_after: time::OffsetDateTime,
    /// Fingerprint of the CA that signed it.
    issuer: String,
    /// Handed to the cache already (then a mint asks the server for a new one).
    served: AtomicBool,
}

impl Kept {
    fn of(chain_pem: &str, served: bool) -> Option<Self> {
        let ders = ca::certs_from_pem(chain_pem).ok()?;
        let cert = IssuedCertificate::from_der(ders.first()?).ok()?;
        Some(Self {
            spiffe_id: cert.spiffe_id,
            serial: cert.serial.to_string(),
            not_before: cert.not_before,
            not_after: cert.not_after,
            issuer: ders.get(1).map(|d| ca::fingerprint(d)).unwrap_or_default(),
            served: AtomicBool::new(served),
        })
    }
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
            match Kept::of(&s.chain_pem, false) {
                Some(k) => {
                    kept.insert(s.entry_id, Arc::new(k));
                }
                None => disk.remove_svid(&s.entry_id),
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
        let good = kept.spiffe_id.as_ref() == Some(&entry.spiffe_id)
            && kept.not_after > self.clock.now()
            && !trust.deny.is_revoked(&kept.serial)
            && trust.deny.denial(&entry.spiffe_id.to_string()).is_none()
            && !trust.retired(&kept.issuer);
        good.then_some(kept)
    }

    /// The kept SVID of `entry`, read from disk.
    fn minted(&self, entry: &Entry) -> Result<MintedSvid, MintError> {
        let failed = |why: String| MintError::Failed(why);
        let stored = self.disk.svid(&entry.id).map_err(|e| failed(e.to_string()))?;
        let stored = stored.ok_or_else(|| failed(format!("no SVID kept for entry {}", entry.id)))?;
        let leaf = ca::certs_from_pem(&stored.chain_pem).map_err(|e| failed(e.to_string()))?;
        let der = leaf.first().ok_or_else(|| failed("an empty chain kept".into()))?;
        let certificate = IssuedCertificate::from_der(der).map_err(|e| failed(e.to_string()))?;
        Ok(MintedSvid { certificate, key: stored.key, chain_pem: stored.chain_pem })
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
        if let Some(kept) = Kept::of(&signed.chain_pem, true) {
            self.kept.lock().insert(entry.id.clone(), Arc::new(kept));
        }
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
            let rotate_at = crate::cache::rotation_at(kept.not_before, kept.not_after, 0.5);
            if self.clock.now() < rotate_at && !kept.served.swap(true, Ordering::AcqRel) {
                return self.minted(entry);
            }
        }
        self.remote(entry).await
    }

    fn kept(&self, entry: &Entry) -> Option<MintedSvid> {
        self.usable(entry).and_then(|_| self.minted(entry).ok())
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
