//! The server side of the agent protocol (SPEC §12) on the TLS port:
//! `Attest` with a join token, then — with the node SVID as client
//! certificate — node SVID renewal, CSR signing for the node's entries,
//! JWT-SVIDs, and `Sync`, the stream that pushes the node's entries and the
//! trust state after every change (nothing is polled).
//!
//! One `Sync` stream per agent: it sends the complete state at once, then
//! again whenever the trust snapshot or the node's entries change (a burst
//! of changes coalesces into the newest state); it registers in the
//! issuer's acknowledgements as kind `agent`, reporting the revision the
//! agent's proxies hold, so a CA is activated only once they trust it; it
//! ends when the node SVID it opened with is revoked (`agent evict`).

use std::pin::Pin;
use std::sync::Arc;

use futures::Stream;
use parking_lot::Mutex;
use tokio::sync::mpsc;
use tonic::{Request, Response, Status, Streaming};

use super::grpc::status;
use crate::attest::TlsPeer;
use crate::domain::Entry;
use crate::issuer::{AgentIdentity, AuditAction, Credentials, Issuer, SvidSigned};
use crate::policy::Action;
use crate::proto::agent::v1 as pb;
use crate::sync::{MAX_AGENT_MESSAGE_BYTES, MAX_STATE_BYTES, entry_to_wire, trust_to_wire};
use crate::trust::TrustSnapshot;

/// Most CSRs one `SignSvids` call may carry.
const MAX_CSRS_PER_CALL: usize = 256;

/// The trust state of the newest revision, written once for every stream.
type Encoded = Arc<Mutex<Option<(u64, Arc<pb::Trust>)>>>;

pub struct AgentService {
    issuer: Arc<Issuer>,
    encoded: Encoded,
}

/// The service, with its message limits.
pub fn server(issuer: Arc<Issuer>) -> pb::agent_server::AgentServer<AgentService> {
    pb::agent_server::AgentServer::new(AgentService { issuer, encoded: Arc::default() })
        .max_decoding_message_size(MAX_AGENT_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_STATE_BYTES)
}

impl AgentService {
    async fn agent<T>(&self, request: &Request<T>, action: AuditAction) -> Result<AgentIdentity, Status> {
        self.issuer.authenticate_agent(&credentials(request), action).await.map_err(status)
    }
}

fn credentials<T>(request: &Request<T>) -> Credentials {
    let peer_cert_der = request.extensions().get::<TlsPeer>().and_then(|p| p.certificate.clone());
    Credentials { bearer: None, peer_cert_der }
}

fn node_svid(svid: crate::issuer::NodeSvid) -> pb::NodeSvid {
    pb::NodeSvid { chain_pem: svid.chain_pem, bundle_pem: svid.bundle_pem }
}

type SyncStream = Pin<Box<dyn Stream<Item = Result<pb::SyncState, Status>> + Send>>;

#[tonic::async_trait]
impl pb::agent_server::Agent for AgentService {
    async fn attest(&self, request: Request<pb::AttestRequest>) -> Result<Response<pb::NodeSvid>, Status> {
        let req = request.into_inner();
        let svid = self.issuer.attest_agent(&req.node_id, &req.join_token, &req.csr).await.map_err(status)?;
        Ok(Response::new(node_svid(svid)))
    }

    async fn renew_node_svid(
        &self,
        request: Request<pb::RenewNodeSvidRequest>,
    ) -> Result<Response<pb::NodeSvid>, Status> {
        let agent = self.agent(&request, AuditAction::RenewAgent).await?;
        let svid = self.issuer.renew_agent(&agent, &request.into_inner().csr).await.map_err(status)?;
        Ok(Response::new(node_svid(svid)))
    }

    async fn sign_svids(
        &self,
        request: Request<pb::SignSvidsRequest>,
    ) -> Result<Response<pb::SignSvidsResponse>, Status> {
        let agent = self.agent(&request, AuditAction::Policy(Action::ObtainSvid)).await?;
        let req = request.into_inner();
        if req.csrs.len() > MAX_CSRS_PER_CALL {
            return Err(Status::invalid_argument(format!(
                "{} CSRs in one call, more than {MAX_CSRS_PER_CALL}",
                req.csrs.len()
            )));
        }
        let mut svids = Vec::with_capacity(req.csrs.len());
        for csr in req.csrs {
            let (chain_pem, error, denied) = match self.issuer.sign_for_agent(&agent, &csr.entry_id, &csr.csr).await {
                SvidSigned::Chain(chain) => (chain, String::new(), false),
                SvidSigned::Denied(why) => (String::new(), why, true),
                SvidSigned::Refused(why) => (String::new(), why, false),
            };
            svids.push(pb::SignedSvid { entry_id: csr.entry_id, chain_pem, error, denied });
        }
        Ok(Response::new(pb::SignSvidsResponse { svids }))
    }

    async fn mint_jwt_svid(
        &self,
        request: Request<pb::MintJwtSvidRequest>,
    ) -> Result<Response<pb::MintJwtSvidResponse>, Status> {
        let agent = self.agent(&request, AuditAction::Policy(Action::ObtainSvid)).await?;
        let req = request.into_inner();
        let token =
            self.issuer.jwt_for_agent(&agent, &req.spiffe_id, &req.audience, req.ttl_seconds).await.map_err(status)?;
        Ok(Response::new(pb::MintJwtSvidResponse { token }))
    }

    type SyncStream = SyncStream;

    async fn sync(&self, request: Request<Streaming<pb::SyncReport>>) -> Result<Response<SyncStream>, Status> {
        let agent = self.agent(&request, AuditAction::Policy(Action::ObtainSvid)).await?;
        let reports = request.into_inner();
        let (tx, rx) = mpsc::channel(1);
        tokio::spawn(follow(self.issuer.clone(), self.encoded.clone(), agent, reports, tx));
        let stream = futures::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|item| (item, rx)) });
        Ok(Response::new(Box::pin(stream)))
    }
}

/// One agent's stream: the state at once, then after every change, until
/// the agent goes, its node SVID is revoked, or the server stops.
async fn follow(
    issuer: Arc<Issuer>,
    encoded: Encoded,
    agent: AgentIdentity,
    mut reports: Streaming<pb::SyncReport>,
    tx: mpsc::Sender<Result<pb::SyncState, Status>>,
) {
    let node = agent.node.clone();
    let acks = issuer.acknowledgements().register(node.as_str(), "agent");
    let mut trust = issuer.subscribe();
    let mut entries = issuer.entries_watch();
    issuer.agent_seen(&node, true, 0).await;
    tracing::info!(node = %node, replica = %issuer.replica(), "Agent connected");
    let mut sent: Option<(u64, Vec<Entry>)> = None;
    let mut svids = 0;
    loop {
        let snapshot = trust.borrow_and_update().clone();
        if snapshot.deny.is_revoked(&agent.serial) {
            let why = format!("the node SVID {} of node {node} is revoked (evicted?)", agent.serial);
            let _ = tx.send(Err(Status::unauthenticated(why))).await;
            break;
        }
        let mine: Vec<Entry> = {
            entries.borrow_and_update();
            issuer.node_entries(&node)
        };
        let changed = sent.as_ref().is_none_or(|(revision, list)| *revision != snapshot.revision || *list != mine);
        if changed {
            let state = pb::SyncState {
                entries: mine.iter().map(entry_to_wire).collect(),
                trust: Some(shared_trust(&encoded, &snapshot).as_ref().clone()),
            };
            if tx.send(Ok(state)).await.is_err() {
                break;
            }
            sent = Some((snapshot.revision, mine));
        }
        tokio::select! {
            changed = trust.changed() => if changed.is_err() { break },
            changed = entries.changed() => if changed.is_err() { break },
            report = reports.message() => match report {
                Ok(Some(report)) => {
                    acks.acked(report.acked_revision);
                    if report.svids != svids {
                        svids = report.svids;
                        issuer.agent_seen(&node, true, svids).await;
                    }
                }
                Ok(None) => break,
                Err(e) => {
                    tracing::info!(node = %node, error = %e, "Agent stream ended");
                    // A report that is not one is the agent's to hear about.
                    if e.code() == tonic::Code::InvalidArgument {
                        let _ = tx.send(Err(e)).await;
                    }
                    break;
                }
            },
            () = tx.closed() => break,
        }
    }
    drop(acks);
    issuer.agent_seen(&node, false, svids).await;
    tracing::info!(node = %node, "Agent disconnected");
}

/// The trust state of `snapshot`, encoded once for every stream.
fn shared_trust(encoded: &Mutex<Option<(u64, Arc<pb::Trust>)>>, snapshot: &TrustSnapshot) -> Arc<pb::Trust> {
    let mut slot = encoded.lock();
    match slot.as_ref() {
        Some((revision, trust)) if *revision == snapshot.revision => trust.clone(),
        _ => {
            let trust = Arc::new(trust_to_wire(snapshot));
            *slot = Some((snapshot.revision, trust.clone()));
            trust
        }
    }
}
