//! The agent's two loops: `sync` holds the server stream over which the
//! node's entries and the trust state arrive (pushed; reconnecting to the
//! next `--server` with jittered back-off capped at 5 s, and reporting the
//! revision its proxies acknowledged), and `renew_node` renews the node SVID
//! at 50 % ± 10 % of its lifetime, logging each failure louder as the SVID
//! nears its end (seed 002 §1.2).
//!
//! A state that fails its checks (`sync::trust_from_wire`) ends the stream
//! and changes nothing: the agent keeps serving what it had.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration as StdDuration, Instant};

use parking_lot::Mutex;
use ring::rand::{SecureRandom, SystemRandom};
use tokio::sync::{mpsc, watch};

use super::disk::Disk;
use super::link::Link;
use super::minter::AgentMinter;
use crate::cache::{IdentityCache, Urgency, issued_lifetime, renewal_urgency, rotation_at};
use crate::domain::{Clock, Entry};
use crate::proto::agent::v1 as pb;
use crate::sync::{BadState, Revisions, entries_from_wire, trust_from_wire};
use crate::trust::{Acknowledgements, TrustSnapshot};

/// The longest wait before dialling again.
pub const BACKOFF_MAX: StdDuration = StdDuration::from_secs(5);
const BACKOFF_MIN: StdDuration = StdDuration::from_millis(100);
/// How often the agent looks whether its proxies caught up, while they have not.
const ACK_CHECK: StdDuration = StdDuration::from_millis(100);

/// What the agent serves from: the node's entries and the trust state.
pub struct Feeds {
    pub entries: watch::Sender<Arc<Vec<Entry>>>,
    pub trust: watch::Sender<Arc<TrustSnapshot>>,
    pub revisions: Mutex<Revisions>,
}

/// When the agent last heard a state from a server.
#[derive(Default)]
pub struct SyncStatus {
    last: Mutex<Option<Instant>>,
}

impl SyncStatus {
    pub fn synced(&self) {
        *self.last.lock() = Some(Instant::now());
    }

    /// Seconds since the last state (`None`: none since start).
    pub fn age(&self) -> Option<f64> {
        self.last.lock().map(|t| t.elapsed().as_secs_f64())
    }
}

impl Feeds {
    /// Checks and applies one state; returns the local revision it became.
    pub fn apply(&self, link: &Link, state: &pb::SyncState) -> Result<u64, BadState> {
        let entries = entries_from_wire(&state.entries, &link.node)?;
        let trust = state.trust.as_ref().ok_or_else(|| BadState("a state without trust".into()))?;
        let trust = trust_from_wire(trust, &link.trust_domain)?;
        let trust = self.revisions.lock().renumber(trust);
        let revision = trust.revision;
        link.set_bundle(&trust.bundle_pem);
        self.entries.send_if_modified(|current| {
            let changed = **current != entries;
            if changed {
                *current = Arc::new(entries);
            }
            changed
        });
        self.trust.send_replace(Arc::new(trust));
        Ok(revision)
    }
}

/// Everything the sync loop works with.
pub struct Sync {
    pub link: Arc<Link>,
    pub feeds: Arc<Feeds>,
    pub disk: Arc<Disk>,
    pub minter: Arc<AgentMinter>,
    pub acks: Arc<Acknowledgements>,
    pub cache: Arc<IdentityCache>,
    pub status: Arc<SyncStatus>,
    pub join_token_file: Option<PathBuf>,
}

/// Holds a stream to a server for as long as the agent runs.
pub async fn sync(s: Sync) {
    let mut backoff = BACKOFF_MIN;
    loop {
        match s.stream_once().await {
            Ended::Synced => backoff = BACKOFF_MIN,
            Ended::Refused => {}
        }
        s.link.failed();
        tokio::time::sleep(jittered(backoff)).await;
        backoff = (backoff * 2).min(BACKOFF_MAX);
    }
}

enum Ended {
    /// The stream delivered at least one state before it ended.
    Synced,
    Refused,
}

impl Sync {
    async fn stream_once(&self) -> Ended {
        let mut client = match self.link.client().await {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(server = %self.link.server(), error = %e, "server unreachable; serving from the cache");
                return Ended::Refused;
            }
        };
        let (reports, rx) = mpsc::channel::<pb::SyncReport>(4);
        let outbound = futures::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|r| (r, rx)) });
        let mut stream = match client.sync(outbound).await {
            Ok(r) => r.into_inner(),
            Err(status) => {
                self.refused(&status).await;
                return Ended::Refused;
            }
        };
        // A server answered: issuances go to it from now on.
        self.link.set_connected(true);
        self.feeds.revisions.lock().forget_server();
        let mut synced = false;
        let mut latest = 0;
        let mut reported = (0, u64::MAX);
        loop {
            let pending = self.acks.lowest().is_some_and(|l| l < latest);
            tokio::select! {
                message = stream.message() => match message {
                    Ok(Some(state)) => match self.feeds.apply(&self.link, &state) {
                        Ok(revision) => {
                            latest = revision;
                            self.status.synced();
                            self.link.set_connected(true);
                            if let Err(e) = self.disk.put_state(&state) {
                                tracing::error!(error = %e, "cannot keep the state on disk");
                            }
                            self.minter.retain(&self.feeds.entries.borrow());
                            if !synced {
                                synced = true;
                                // The server is back: what failed meanwhile is retried now.
                                self.cache.retry_failed();
                                tracing::info!(server = %self.link.server(), entries = state.entries.len(), "Agent synced");
                            }
                        }
                        Err(e) => {
                            tracing::error!(server = %self.link.server(), error = %e, "state refused; serving what the agent had");
                            break;
                        }
                    },
                    Ok(None) => {
                        tracing::warn!(server = %self.link.server(), "the server ended the stream");
                        break;
                    }
                    Err(status) => {
                        self.refused(&status).await;
                        break;
                    }
                },
                () = tokio::time::sleep(ACK_CHECK), if pending => {}
            }
            let held = self.acks.lowest().unwrap_or(latest).min(latest);
            let server = self.feeds.revisions.lock().server_revision(held);
            let svids = self.cache.svids().0 as u64;
            if (server, svids) != reported {
                reported = (server, svids);
                if reports.try_send(pb::SyncReport { acked_revision: server, svids }).is_err() {
                    tracing::debug!("report not sent: the stream is busy");
                }
            }
        }
        if synced { Ended::Synced } else { Ended::Refused }
    }

    async fn refused(&self, status: &tonic::Status) {
        tracing::warn!(server = %self.link.server(), code = ?status.code(), error = %status.message(), "agent stream failed");
        if status.code() == tonic::Code::Unauthenticated {
            tracing::error!(
                node = %self.link.node,
                "the server no longer accepts this node's SVID (evicted?); it needs a new join token \
                 (trustmesh token mint join NODE) in --join-token-file"
            );
            reattest(&self.link, self.join_token_file.as_deref()).await;
        }
    }
}

/// Attests again with the token the join token file holds now, unless it
/// was tried already (a spent token is not presented again and again).
pub async fn reattest(link: &Link, file: Option<&std::path::Path>) -> bool {
    let Some(token) = file.and_then(|f| std::fs::read_to_string(f).ok()) else { return false };
    if !link.new_token(token.trim()) {
        return false;
    }
    match link.attest(token.trim()).await {
        Ok(()) => {
            tracing::info!(node = %link.node, "Node attested again");
            true
        }
        Err(e) => {
            tracing::warn!(node = %link.node, error = %e, "attestation refused");
            false
        }
    }
}

/// Renews the node SVID at 50 % ± 10 % of its lifetime, for as long as the agent runs.
pub async fn renew_node(link: Arc<Link>, clock: Arc<dyn Clock>, join_token_file: Option<PathBuf>) {
    loop {
        let Some(svid) = link.svid() else {
            tokio::time::sleep(BACKOFF_MAX).await;
            continue;
        };
        let at = rotation_at(svid.not_before, svid.not_after, unit());
        let wait = (at - clock.now()).max(time::Duration::ZERO);
        tokio::time::sleep(wait.unsigned_abs()).await;
        let mut backoff = BACKOFF_MIN;
        loop {
            let now = clock.now();
            let result = if svid.not_after <= now {
                // Expired during a partition: the server refuses it now; only
                // a new join token gets the node back in.
                if reattest(&link, join_token_file.as_deref()).await {
                    break;
                }
                Err("the node SVID has expired; place a new join token in --join-token-file".to_string())
            } else {
                link.renew().await
            };
            match result {
                Ok(()) => {
                    tracing::info!(node = %link.node, "Node SVID renewed");
                    break;
                }
                Err(e) => log_failed_renewal(&svid, now, &e),
            }
            tokio::time::sleep(jittered(backoff)).await;
            backoff = (backoff * 2).min(BACKOFF_MAX);
        }
    }
}

fn log_failed_renewal(svid: &super::link::NodeSvid, now: time::OffsetDateTime, error: &str) {
    let left = svid.not_after - now;
    let seconds = left.whole_seconds();
    match renewal_urgency(left, issued_lifetime(svid.not_before, svid.not_after)) {
        Urgency::Warn => {
            tracing::warn!(cert_expires_in_seconds = seconds, error, "Node SVID renewal failed")
        }
        Urgency::Error => tracing::error!(
            cert_expires_in_seconds = seconds,
            error,
            "Node SVID renewal failed; less than 25% of its lifetime left"
        ),
        Urgency::Critical => tracing::error!(
            severity = "CRITICAL",
            cert_expires_in_seconds = seconds,
            error,
            "Node SVID renewal failed; it expires in less than 5 minutes"
        ),
    }
}

/// Uniform in [0, 1].
fn unit() -> f64 {
    let mut b = [0u8; 2];
    let _ = SystemRandom::new().fill(&mut b);
    f64::from(u16::from_le_bytes(b)) / f64::from(u16::MAX)
}

/// Between half of `d` and `d`: a fleet of agents does not dial back in step.
fn jittered(d: StdDuration) -> StdDuration {
    d.mul_f64(0.5 + unit() / 2.0)
}
