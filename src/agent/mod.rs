//! The node agent (`trustmesh agent`, SPEC §12): one per node, serving the
//! node's local socket — the same SDS/ADS and Workload API `serve` serves —
//! from a cache fed by the server, and carrying on while the server is away.
//!
//! The agent is the server's [`IdentityCache`] with other inputs: its
//! [`SvidMinter`](crate::cache::SvidMinter) has the server sign CSRs for keys
//! made here (`minter.rs`), its entries and trust state arrive over one
//! pushed stream (`follow.rs`, checked by `crate::sync`), and what it holds
//! is kept in its data directory (`disk.rs`) so a restart serves at once.
//! `link.rs` is the connection to the server (replicas in turn), `jwt.rs`
//! the JWT-SVIDs. `app` wires these to the socket servers and the HTTP port.
//!
//! Boundary: the agent never imports the issuer; it speaks to the server
//! only through `proto::agent`.

mod disk;
mod follow;
mod jwt;
mod link;
mod minter;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use parking_lot::Mutex;
use tokio::sync::watch;

pub use disk::{Disk, DiskError, KEK_FILE, check_modes};
pub use follow::{BACKOFF_MAX, SyncStatus};
pub use jwt::AgentJwt;
pub use link::Link;

use crate::ca::Kek;
use crate::cache::{CacheInputs, CacheOptions, IdentityCache};
use crate::domain::{Clock, NodeId, TrustDomain};
use crate::net::client::ServerTrust;
use crate::sync::Revisions;
use crate::trust::{Acknowledgements, TrustSnapshot};

/// What the agent needs to start.
pub struct AgentParts {
    pub servers: Vec<String>,
    pub node: NodeId,
    pub data_dir: PathBuf,
    /// `--trust-bundle`: needed for the first contact only.
    pub trust_bundle: Option<String>,
    pub join_token_file: Option<PathBuf>,
    pub kek: Kek,
    pub clock: Arc<dyn Clock>,
}

/// A started agent: what the socket servers read, and the loops to spawn.
pub struct Agent {
    pub cache: Arc<IdentityCache>,
    pub jwt: Arc<AgentJwt>,
    pub acks: Arc<Acknowledgements>,
    pub status: Arc<SyncStatus>,
    pub link: Arc<Link>,
    pub trust: watch::Receiver<Arc<TrustSnapshot>>,
    pub tasks: Vec<futures::future::BoxFuture<'static, ()>>,
}

/// Why the agent could not start (exit 64, one line).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct StartError(pub String);

impl Agent {
    /// Loads the data directory (node SVID, state, cached SVIDs), attests
    /// with the join token when there is no usable node SVID, and builds the
    /// cache. Serving starts from what was kept, server or not.
    pub async fn start(p: AgentParts) -> Result<Self, StartError> {
        let fail = |e: String| StartError(e);
        let disk = Arc::new(Disk::new(&p.data_dir, p.kek).map_err(|e| fail(e.to_string()))?);
        let bundle = match (disk.bundle().map_err(|e| fail(e.to_string()))?, &p.trust_bundle) {
            (Some(kept), _) => kept,
            (None, Some(given)) => given.clone(),
            (None, None) => {
                return Err(fail("--trust-bundle: the first start of an agent needs the server's CA bundle".into()));
            }
        };
        let trust_domain = bundle_trust_domain(&bundle).map_err(|e| fail(format!("--trust-bundle: {e}")))?;
        let link = Arc::new(Link::new(p.servers, p.node.clone(), trust_domain.clone(), disk.clone(), bundle));
        let node = disk.node().map_err(|e| fail(e.to_string()))?;
        let node =
            node.map(link::NodeSvid::from_credentials).transpose().map_err(|e| fail(format!("node SVID: {e}")))?;
        let state = disk.state().map_err(|e| fail(e.to_string()))?;
        let usable = node.as_ref().is_some_and(|n| n.not_after > p.clock.now());
        if let Some(node) = node {
            link.set_svid(node);
        }
        if !usable {
            let token = read_token(p.join_token_file.as_deref()).map_err(fail)?;
            match (token, &state) {
                (Some(token), _) => {
                    if let Err(e) = link.attest(&token).await {
                        if state.is_none() {
                            return Err(fail(format!("attestation: {e}")));
                        }
                        tracing::error!(error = %e, "attestation failed; serving the cache until a join token is accepted");
                    }
                }
                (None, None) => {
                    return Err(fail(format!(
                        "--join-token-file: node {} has no node SVID in {} yet; mint a join token with \
                         `trustmesh token mint join {}`",
                        p.node,
                        p.data_dir.display(),
                        p.node
                    )));
                }
                (None, Some(_)) => {
                    tracing::error!("the node SVID has expired; serving the cache until a join token is given")
                }
            }
        }
        let (entries_tx, entries) = watch::channel(Arc::new(Vec::new()));
        let (trust_tx, trust) = watch::channel(Arc::new(TrustSnapshot::empty(&trust_domain)));
        let feeds = Arc::new(follow::Feeds {
            entries: entries_tx,
            trust: trust_tx,
            revisions: Mutex::new(Revisions::default()),
        });
        if let Some(state) = &state {
            feeds.apply(&link, state).map_err(|e| fail(format!("{}: {e}", p.data_dir.join("state.pb").display())))?;
            tracing::info!(entries = state.entries.len(), "state loaded from the data directory");
        }
        let stored = disk.svids().map_err(|e| fail(e.to_string()))?;
        let minter = minter::AgentMinter::new(link.clone(), disk.clone(), stored, trust.clone(), p.clock.clone());
        let options = CacheOptions { backoff_max: time::Duration::seconds(5), ..CacheOptions::default() };
        let inputs = CacheInputs { minter: minter.clone(), entries, trust: trust.clone(), clock: p.clock.clone() };
        let cache = IdentityCache::with_options(inputs, options);
        let acks = Acknowledgements::new();
        let status = Arc::new(SyncStatus::default());
        let jwt = Arc::new(AgentJwt { link: link.clone(), trust: trust.clone(), clock: p.clock.clone() });
        let sync = follow::Sync {
            link: link.clone(),
            feeds,
            disk,
            minter,
            acks: acks.clone(),
            cache: cache.clone(),
            status: status.clone(),
            join_token_file: p.join_token_file.clone(),
        };
        let cache_task = cache.spawn();
        let tasks: Vec<futures::future::BoxFuture<'static, ()>> = vec![
            Box::pin(follow::sync(sync)),
            Box::pin(follow::renew_node(link.clone(), p.clock.clone(), p.join_token_file)),
            Box::pin(async move {
                let _ = cache_task.await;
            }),
        ];
        Ok(Self { cache, jwt, acks, status, link, trust, tasks })
    }

    /// Ready once it serves from a valid state: a trust bundle, and a node
    /// that was attested (reaching the server is not needed).
    pub fn ready(&self) -> Result<(), String> {
        if self.trust.borrow().bundle_pem.is_empty() {
            return Err("no state from a server yet".into());
        }
        if self.link.svid().is_none() {
            return Err("the node is not attested".into());
        }
        Ok(())
    }
}

/// The trust domain the bundle's CAs name.
fn bundle_trust_domain(pem: &str) -> Result<TrustDomain, String> {
    let trust = ServerTrust::from_bundle_pem(pem)?;
    let id = trust.expected().first().ok_or("the bundle names no trust domain")?;
    Ok(id.trust_domain().clone())
}

/// The join token in `file` (trimmed), if there is a file.
fn read_token(file: Option<&Path>) -> Result<Option<String>, String> {
    let Some(file) = file else { return Ok(None) };
    match std::fs::read_to_string(file) {
        Ok(text) if text.trim().is_empty() => Err(format!("--join-token-file {} is empty", file.display())),
        Ok(text) if text.len() > 8 * 1024 => Err(format!("--join-token-file {} is larger than 8 KiB", file.display())),
        Ok(text) => Ok(Some(text.trim().to_string())),
        Err(e) => Err(format!("--join-token-file {}: {e}", file.display())),
    }
}
