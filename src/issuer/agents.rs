//! Node agents (SPEC §12), as the server sees them: attestation with a
//! single-use join token, the node SVID from the Transport CA and its
//! renewal, X.509-SVIDs signed for CSRs of entries bound to the agent's node
//! (the key stays on the node), JWT-SVIDs for those entries, the agent list
//! and eviction.
//!
//! An agent authenticates by its node SVID: the TLS handshake checked its
//! chain against the bundle; here its identity
//! (`spiffe://<td>/trustmesh/agent/<node>`) and its serial against the
//! revoked ones. Evicting a node revokes its node SVID, so every later call
//! and its stream are refused; a new join token attests it again.

use time::Duration;
use tracing::Instrument;

use super::auth::{Caller, audit};
use super::issue::{Issuance, SubjectKey};
use super::revocation::revoked_entry;
use super::trust_state::TrustChange;
use super::{AuditAction, Credentials, Issuer, IssuerError, MAX_REQUEST_BYTES};
use crate::ca::{self, IssuedCertificate};
use crate::domain::{Entry, NodeId, text};
use crate::policy::{Action, DecisionContext, Resource};
use crate::store::{AgentRecord, CertFilter, RevokeOutcome};

/// A node SVID just issued.
#[derive(Debug, Clone)]
pub struct NodeSvid {
    /// Leaf, then the Transport CA.
    pub chain_pem: String,
    /// The trust bundle of the moment.
    pub bundle_pem: String,
}

/// An agent, authenticated by its node SVID.
#[derive(Debug, Clone)]
pub struct AgentIdentity {
    pub node: NodeId,
    /// Of the node SVID it presented.
    pub serial: String,
    caller: Caller,
}

impl AgentIdentity {
    pub fn caller(&self) -> &Caller {
        &self.caller
    }
}

/// One answer of [`Issuer::sign_for_agent`].
#[derive(Debug)]
pub enum SvidSigned {
    /// Leaf, then the issuing intermediate.
    Chain(String),
    Denied(String),
    Refused(String),
}

impl Issuer {
    /// `Attest`: the join token (single-use, minted for `node`) and a CSR
    /// for the node's identity; returns the node SVID. The token is spent
    /// once the CSR is checked.
    pub async fn attest_agent(&self, node: &str, token: &str, csr: &[u8]) -> Result<NodeSvid, IssuerError> {
        const ACTION: AuditAction = AuditAction::AttestAgent;
        let node = match NodeId::parse(node) {
            Ok(node) => node,
            Err(e) => return Err(self.unauthenticated(ACTION, IssuerError::InvalidArgument(e.to_string())).await),
        };
        let caller = match self.join_caller(token, &node).await {
            Ok(caller) => caller,
            Err(e) => return Err(self.unauthenticated(ACTION, e).await),
        };
        let svid = self.node_svid(&caller, ACTION, &node, csr, true).await?;
        tracing::info!(node = %node, "Node attested");
        Ok(svid)
    }

    /// `RenewNodeSvid`: a node SVID for a new key, over mTLS with the current one.
    pub async fn renew_agent(&self, agent: &AgentIdentity, csr: &[u8]) -> Result<NodeSvid, IssuerError> {
        self.node_svid(&agent.caller, AuditAction::RenewAgent, &agent.node, csr, false).await
    }

    /// The agent presenting this client certificate; refused (and audited)
    /// when there is none, when it is not a node SVID of this trust domain,
    /// or when it is revoked (an evicted node).
    pub async fn authenticate_agent(
        &self,
        creds: &Credentials,
        action: AuditAction,
    ) -> Result<AgentIdentity, IssuerError> {
        match self.agent_identity(creds.peer_cert_der.as_deref()) {
            Ok(agent) => Ok(agent),
            Err(e) => Err(self.unauthenticated(action, e).await),
        }
    }

    fn agent_identity(&self, cert_der: Option<&[u8]>) -> Result<AgentIdentity, IssuerError> {
        let unauthenticated = |why: String| IssuerError::Unauthenticated(why);
        let der =
            cert_der.ok_or_else(|| unauthenticated("no client certificate: an agent presents its node SVID".into()))?;
        let cert = IssuedCertificate::from_der(der).map_err(|e| unauthenticated(format!("client certificate: {e}")))?;
        let id =
            cert.spiffe_id.as_ref().ok_or_else(|| unauthenticated("the client certificate has no SPIFFE ID".into()))?;
        let node = NodeId::of_agent_id(id, &self.cfg.trust_domain).ok_or_else(|| {
            unauthenticated(format!("{id} is not a node SVID (spiffe://<td>/trustmesh/agent/<node>)"))
        })?;
        let serial = cert.serial.to_string();
        if self.snapshot().deny.is_revoked(&serial) {
            return Err(unauthenticated(format!(
                "the node SVID {serial} of node {node} is revoked (evicted?): attest again with a new join token"
            )));
        }
        if cert.not_after <= self.now() {
            return Err(unauthenticated(format!("the node SVID of node {node} has expired")));
        }
        Ok(AgentIdentity { caller: Issuer::agent_caller(&node), node, serial })
    }

    async fn node_svid(
        &self,
        caller: &Caller,
        action: AuditAction,
        node: &NodeId,
        csr: &[u8],
        attested: bool,
    ) -> Result<NodeSvid, IssuerError> {
        let id = node.spiffe_id(&self.cfg.trust_domain)?;
        let target = id.to_string();
        if csr.len() > MAX_REQUEST_BYTES {
            let err =
                IssuerError::InvalidArgument(format!("csr of {} bytes is larger than the 1 MiB limit", csr.len()));
            return self.refuse(caller, action, &target, err).await;
        }
        let parsed = self
            .audited(caller, action, &target, async {
                ca::parse_csr(csr, &self.cfg.trust_domain).map_err(|e| IssuerError::InvalidArgument(e.to_string()))
            })
            .await?;
        if parsed.spiffe_id != id || !parsed.dns_names.is_empty() {
            let err = IssuerError::InvalidArgument(format!(
                "the CSR of node {node} must name exactly {id}, found {} with {} DNS names",
                parsed.spiffe_id,
                parsed.dns_names.len()
            ));
            return self.refuse(caller, action, &target, err).await;
        }
        self.spend(caller).await?;
        let now = self.now();
        let signer = self.signers().transport.clone();
        let serial = self.serials.next_serial()?;
        let lifetime = self.cfg.agent_svid_ttl;
        let cert = self
            .audited(caller, action, &target, async {
                Ok(ca::issue_node_svid(
                    &signer,
                    node,
                    &self.cfg.trust_domain,
                    &parsed.public_key_der,
                    lifetime,
                    serial,
                    now,
                )?)
            })
            .await?;
        let mut record = super::issue::cert_record(&cert, &signer.cert.fingerprint, None, None);
        record.node = Some(node.to_string());
        let log = audit(
            caller,
            action,
            &target,
            "ok",
            &format!("serial {} until {}", record.serial, record.not_after),
            now.unix_timestamp(),
        );
        self.store.record_issuance(&record, &log).await?;
        let agent = AgentRecord {
            node: node.to_string(),
            spiffe_id: target.clone(),
            serial: record.serial.clone(),
            not_after: record.not_after,
            attested_at: now.unix_timestamp(),
            replica: None,
            last_seen: None,
            svids: 0,
            evicted_at: None,
        };
        if !self.store.put_agent(&agent, attested, &log).await? {
            let err =
                IssuerError::Unauthenticated(format!("node {node} was evicted: attest again with a new join token"));
            return self.refuse(caller, action, &target, err).await;
        }
        tracing::info!(node = %node, serial = %record.serial, not_after = record.not_after, "Node SVID issued");
        Ok(NodeSvid {
            chain_pem: format!("{}{}", cert.to_pem(), signer.cert.to_pem()),
            bundle_pem: self.snapshot().bundle_pem.clone(),
        })
    }

    /// The entries bound to `node`, oldest first.
    pub fn node_entries(&self, node: &NodeId) -> Vec<Entry> {
        self.entries().iter().filter(|e| e.node.as_ref() == Some(node)).cloned().collect()
    }

    /// Signs one CSR for an entry of the agent's node: the entry must be
    /// bound to that node and the CSR must name the entry's identity (and no
    /// DNS name the entry does not carry); Cedar decides with
    /// `context.node_entry`. Refusals are audited and answered per CSR.
    pub async fn sign_for_agent(&self, agent: &AgentIdentity, entry_id: &str, csr: &[u8]) -> SvidSigned {
        let span = tracing::info_span!("agent_svid", node = %agent.node, entry_id = %text::shorten(entry_id, 64));
        match self.sign_for_agent_inner(agent, entry_id, csr).instrument(span).await {
            Ok(chain) => SvidSigned::Chain(chain),
            Err(IssuerError::Denied { spiffe_id, reason }) => {
                SvidSigned::Denied(format!("identity {spiffe_id} is denied: {reason}"))
            }
            Err(e) => SvidSigned::Refused(e.to_string()),
        }
    }

    async fn sign_for_agent_inner(
        &self,
        agent: &AgentIdentity,
        entry_id: &str,
        csr: &[u8],
    ) -> Result<String, IssuerError> {
        const ACTION: AuditAction = AuditAction::Policy(Action::ObtainSvid);
        let caller = &agent.caller;
        self.bounded(caller, ACTION, entry_id, &[("entry id", entry_id, 64)]).await?;
        let entry = self.entries().iter().find(|e| e.id == entry_id).cloned();
        let Some(entry) = entry.filter(|e| e.node.as_ref() == Some(&agent.node)) else {
            let err = IssuerError::PermissionDenied(format!("no entry {entry_id} is bound to node {}", agent.node));
            return self.refuse(caller, ACTION, entry_id, err).await;
        };
        let target = entry.spiffe_id.to_string();
        if csr.len() > MAX_REQUEST_BYTES {
            let err =
                IssuerError::InvalidArgument(format!("csr of {} bytes is larger than the 1 MiB limit", csr.len()));
            return self.refuse(caller, ACTION, &target, err).await;
        }
        let ctx = DecisionContext { node_entry: Some(true), ..Default::default() };
        let resource = Resource::Identity(entry.spiffe_id.clone());
        let decision =
            self.policy.decide_with(&caller.principal, ACTION_OBTAIN, &resource, &self.cfg.trust_domain, &ctx);
        if !decision.allowed {
            let err = IssuerError::PermissionDenied(format!("obtain_svid on {target}: {decision}"));
            return self.refuse(caller, ACTION, &target, err).await;
        }
        let parsed = self
            .audited(caller, ACTION, &target, async {
                ca::parse_csr(csr, &self.cfg.trust_domain).map_err(|e| IssuerError::InvalidArgument(e.to_string()))
            })
            .await?;
        if parsed.spiffe_id != entry.spiffe_id || parsed.dns_names.iter().any(|d| !entry.dns_names.contains(d)) {
            let err = IssuerError::InvalidArgument(format!(
                "the CSR names {} with DNS names [{}]; entry {} is {} with [{}]",
                parsed.spiffe_id,
                parsed.dns_names.join(", "),
                entry.id,
                entry.spiffe_id,
                entry.dns_names.join(", ")
            ));
            return self.refuse(caller, ACTION, &target, err).await;
        }
        let key = SubjectKey::Public { spki: parsed.public_key_der, algorithm: parsed.key_algorithm };
        let lifetime = self.lifetime(entry.ttl_seconds.map_or(0, u64::from));
        let mut issuance = Issuance::svid(self, ACTION_OBTAIN, &entry.spiffe_id, key, &entry.dns_names, None, lifetime);
        issuance.node = Some(&agent.node);
        Ok(self.issue(caller, issuance).await?.chain_pem)
    }

    /// A JWT-SVID for an identity of an entry bound to the agent's node.
    pub async fn jwt_for_agent(
        &self,
        agent: &AgentIdentity,
        spiffe_id: &str,
        audience: &[String],
        ttl_seconds: u64,
    ) -> Result<String, IssuerError> {
        const ACTION: AuditAction = AuditAction::Policy(Action::ObtainSvid);
        let caller = &agent.caller;
        let id = self.parse_id_audited(caller, ACTION, spiffe_id).await?;
        let Some(entry) = self.node_entries(&agent.node).into_iter().find(|e| e.spiffe_id == id) else {
            let err = IssuerError::PermissionDenied(format!("no entry of node {} names {id}", agent.node));
            return self.refuse(caller, ACTION, &id.to_string(), err).await;
        };
        if let Some(denial) = self.denial(&id.to_string()) {
            let err = IssuerError::Denied { spiffe_id: id.to_string(), reason: denial.reason };
            return self.refuse(caller, ACTION, &id.to_string(), err).await;
        }
        let ttl = match ttl_seconds {
            0 => entry.jwt_ttl_seconds.map_or(self.cfg.jwt_svid_ttl, |s| Duration::seconds(i64::from(s))),
            s => Duration::seconds(i64::try_from(s).unwrap_or(i64::MAX))
                .min(self.cfg.jwt_svid_ttl.max(Duration::hours(1))),
        };
        self.mint_jwt_svid(&id, audience, ttl)
    }

    /// Where an agent's stream is (`None`: it left) and what it serves.
    pub async fn agent_seen(&self, node: &NodeId, connected: bool, svids: u64) {
        let replica = connected.then(|| self.replica().to_string());
        let at = self.now().unix_timestamp();
        let svids = i64::try_from(svids).unwrap_or(i64::MAX);
        if let Err(e) = self.store.agent_seen(node.as_str(), replica, at, svids).await {
            tracing::warn!(node = %node, error = %e, "cannot record the agent's stream");
        }
    }

    /// Every attested node, with how many entries are bound to it.
    pub async fn list_agents(&self, caller: &Caller) -> Result<Vec<(AgentRecord, usize)>, IssuerError> {
        const ACTION: AuditAction = AuditAction::ListAgents;
        self.authorize(caller, Action::ReadCertificates, &Resource::Ca, "agents").await?;
        let agents = self.audited(caller, ACTION, "agents", async { Ok(self.store.agents().await?) }).await?;
        let entries = self.entries();
        Ok(agents
            .into_iter()
            .map(|a| {
                let n = entries.iter().filter(|e| e.node.as_ref().is_some_and(|n| n.as_str() == a.node)).count();
                (a, n)
            })
            .collect())
    }

    /// `agent evict NODE`: the node is marked evicted, then its node SVID
    /// and every SVID it obtained are revoked; its stream ends (on every
    /// replica, once the revocation reaches it). Returns how many
    /// certificates were revoked.
    pub async fn evict_agent(&self, caller: &Caller, node: &str) -> Result<u64, IssuerError> {
        const ACTION: AuditAction = AuditAction::EvictAgent;
        self.bounded(caller, ACTION, node, &[("node", node, crate::domain::MAX_NODE_LEN)]).await?;
        let node = self.audited(caller, ACTION, node, async { Ok(NodeId::parse(node)?) }).await?;
        let id = node.spiffe_id(&self.cfg.trust_domain)?;
        let target = id.to_string();
        self.authorize(caller, Action::RevokeCertificate, &Resource::Identity(id), &target).await?;
        let now = self.now().unix_timestamp();
        let log = audit(caller, ACTION, &target, "ok", "evicted", now);
        if !self.store.evict_agent(node.as_str(), now, &log).await? {
            let err = IssuerError::NotFound(format!("no attested node {node} (or it is evicted already)"));
            return self.refuse(caller, ACTION, &target, err).await;
        }
        let filter = CertFilter { node: Some(node.to_string()), unexpired_at: Some(now), ..Default::default() };
        let certs = self.store.certificates(&filter).await?;
        let mut revoked = Vec::new();
        for cert in certs {
            let log =
                audit(caller, ACTION, &cert.serial, "ok", &format!("cessationOfOperation (node {node} evicted)"), now);
            let r = self.store.revoke(&cert.serial, "cessationOfOperation", now, &log).await?;
            if r.outcome == RevokeOutcome::Revoked {
                revoked.extend(r.certificate.and_then(revoked_entry));
            }
        }
        let count = revoked.len() as u64;
        self.metrics.revoked(count);
        self.apply(TrustChange::Revoked(revoked));
        tracing::warn!(node = %node, revoked = count, actor = %caller.actor(), "Node evicted");
        Ok(count)
    }
}

const ACTION_OBTAIN: Action = Action::ObtainSvid;
