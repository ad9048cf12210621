//! What the agent protocol (`proto/trustmesh/agent/v1/agent.proto`, SPEC
//! §12) carries, both ways: a node's registration entries and the published
//! trust state, written by the server from its [`TrustSnapshot`] and read
//! back by the agent into one — checked as it is read, because a server that
//! sends garbage must not empty an agent's cache.
//!
//! Reading checks everything the agent's proxies will be told: the trust
//! domain is the agent's, every certificate of the bundle parses, every CRL
//! is signed by a CA of that bundle, the JWKS is a JSON object, entries are
//! valid and bound to the agent's node, and each list is bounded. A state
//! that fails any check is refused whole; the agent keeps what it had.
//!
//! Revisions: a snapshot's `revision` and its deny list's `revision` number
//! what one process published. An agent that fails over to another replica
//! receives another replica's numbers, so it numbers what it applies itself
//! ([`Revisions`]), and reports acknowledgements back in the server's numbers.

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests;

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;

use time::OffsetDateTime;

use crate::ca::{self, CaCertificate};
use crate::domain::{CaRole, CaState, Entry, NodeId, Selector, SpiffeId, TrustDomain};
use crate::proto::agent::v1 as pb;
use crate::trust::{CaView, DenyList, ProfilesTrust, RevokedSerials, TrustSnapshot};

/// The largest state message either side accepts (a CRL set of 100,000
/// revoked certificates is about 4 MB, and their serials as much again).
pub const MAX_STATE_BYTES: usize = 64 * 1024 * 1024;
/// The largest message an agent sends (reports, CSR batches).
pub const MAX_AGENT_MESSAGE_BYTES: usize = 4 * 1024 * 1024;
/// Bounds of one state.
const MAX_ENTRIES: usize = 100_000;
const MAX_CAS: usize = 64;
const MAX_CRLS: usize = 64;
const MAX_SERIALS: usize = 2_000_000;

/// The trust state as the server sends it.
pub fn trust_to_wire(t: &TrustSnapshot) -> pb::Trust {
    pb::Trust {
        revision: t.revision,
        generation: t.generation,
        trust_domain: t.trust_domain.as_str().to_string(),
        cas: t
            .cas
            .iter()
            .filter(|c| c.role != CaRole::Profiles)
            .map(|c| pb::Ca {
                role: c.role.as_str().into(),
                common_name: c.common_name.clone(),
                fingerprint: c.fingerprint.clone(),
                algorithm: c.algorithm.clone(),
                not_before: c.not_before,
                not_after: c.not_after,
                state: c.state.as_str().into(),
                key_online: c.key_online,
            })
            .collect(),
        bundle_pem: t.bundle_pem.clone(),
        crls: t.crls.iter().map(|c| c.der.clone()).collect(),
        jwks_json: t.jwks.to_string(),
        deny_revision: t.deny.revision,
        denials: t
            .deny
            .identities
            .iter()
            .map(|(id, reason)| pb::Denial { spiffe_id: id.clone(), reason: reason.clone() })
            .collect(),
        denied_certificates: t.deny.certificates.clone(),
        revoked_serials: t.deny.serials.iter().cloned().collect(),
        built_at: t.built_at.unix_timestamp(),
    }
}

/// An entry as the server sends it.
pub fn entry_to_wire(e: &Entry) -> pb::Entry {
    pb::Entry {
        id: e.id.clone(),
        spiffe_id: e.spiffe_id.to_string(),
        selectors: e.selectors.iter().map(ToString::to_string).collect(),
        dns_names: e.dns_names.clone(),
        ttl_seconds: e.ttl_seconds.unwrap_or(0),
        jwt_ttl_seconds: e.jwt_ttl_seconds.unwrap_or(0),
        hint: e.hint.clone().unwrap_or_default(),
        federates_with: e.federates_with.iter().map(|td| td.as_str().to_string()).collect(),
        created_at: e.created_at,
    }
}

/// Why a state from the server was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the server sent a state the agent refuses: {0}")]
pub struct BadState(pub String);

fn bad<T>(why: impl Into<String>) -> Result<T, BadState> {
    Err(BadState(why.into()))
}

/// The entries of `node`, checked: valid, unique, bound to no other node.
pub fn entries_from_wire(list: &[pb::Entry], node: &NodeId) -> Result<Vec<Entry>, BadState> {
    if list.len() > MAX_ENTRIES {
        return bad(format!("{} entries, more than {MAX_ENTRIES}", list.len()));
    }
    let mut out = Vec::with_capacity(list.len());
    for e in list {
        let fail = |why: String| BadState(format!("entry {}: {why}", crate::domain::text::shorten(&e.id, 64)));
        if e.id.is_empty() || e.id.len() > 64 || out.iter().any(|o: &Entry| o.id == e.id) {
            return Err(fail("missing, too long or repeated id".into()));
        }
        let entry = Entry {
            id: e.id.clone(),
            spiffe_id: SpiffeId::parse(&e.spiffe_id).map_err(|x| fail(x.to_string()))?,
            selectors: e
                .selectors
                .iter()
                .map(|s| Selector::parse(s))
                .collect::<Result<_, _>>()
                .map_err(|x| fail(x.to_string()))?,
            dns_names: e.dns_names.clone(),
            ttl_seconds: (e.ttl_seconds > 0).then_some(e.ttl_seconds),
            jwt_ttl_seconds: (e.jwt_ttl_seconds > 0).then_some(e.jwt_ttl_seconds),
            hint: (!e.hint.is_empty()).then(|| e.hint.clone()),
            federates_with: e
                .federates_with
                .iter()
                .map(|td| TrustDomain::parse(td))
                .collect::<Result<_, _>>()
                .map_err(|x| fail(x.to_string()))?,
            created_at: e.created_at,
            node: Some(node.clone()),
        };
        entry.validate().map_err(|x| fail(x.to_string()))?;
        for name in &entry.dns_names {
            ca::check_dns_name(name).map_err(|x| fail(x.to_string()))?;
        }
        out.push(entry);
    }
    out.sort_by(|a, b| (a.created_at, &a.id).cmp(&(b.created_at, &b.id)));
    Ok(out)
}

/// A trust state from the server, checked against the agent's trust domain.
/// `revision` and the deny list's revision are the server's; [`Revisions`]
/// renumbers them.
pub fn trust_from_wire(t: &pb::Trust, td: &TrustDomain) -> Result<TrustSnapshot, BadState> {
    if t.trust_domain != td.as_str() {
        return bad(format!("trust domain {:?}, expected {td}", crate::domain::text::shorten(&t.trust_domain, 64)));
    }
    if t.cas.len() > MAX_CAS || t.crls.len() > MAX_CRLS || t.revoked_serials.len() > MAX_SERIALS {
        return bad("more CAs, CRLs or revoked serials than any server publishes");
    }
    let ders = ca::certs_from_pem(&t.bundle_pem).map_err(|e| BadState(format!("bundle: {e}")))?;
    if ders.is_empty() {
        return bad("an empty bundle");
    }
    let bundle = ders
        .iter()
        .map(|d| CaCertificate::from_der(d))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| BadState(format!("bundle: {e}")))?;
    let issuers: Vec<&CaCertificate> = bundle.iter().collect();
    let crls = t
        .crls
        .iter()
        .map(|der| ca::parse_crl(der, &issuers))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| BadState(format!("CRL: {e}")))?;
    let mut cas = Vec::with_capacity(t.cas.len());
    for c in &t.cas {
        let (Some(role), Some(state)) = (CaRole::parse(&c.role), CaState::parse(&c.state)) else {
            return bad(format!("CA with role {:?} and state {:?}", c.role, c.state));
        };
        cas.push(CaView {
            role,
            common_name: c.common_name.clone(),
            fingerprint: c.fingerprint.clone(),
            algorithm: c.algorithm.clone(),
            not_before: c.not_before,
            not_after: c.not_after,
            state,
            key_online: c.key_online,
        });
    }
    let jwks: serde_json::Value = serde_json::from_str(&t.jwks_json).map_err(|e| BadState(format!("JWKS: {e}")))?;
    if !jwks.get("keys").is_some_and(serde_json::Value::is_array) {
        return bad("a JWKS without a keys array");
    }
    let mut identities = BTreeMap::new();
    for d in &t.denials {
        SpiffeId::parse(&d.spiffe_id).map_err(|e| BadState(format!("deny list: {e}")))?;
        identities.insert(d.spiffe_id.clone(), d.reason.clone());
    }
    let serials: RevokedSerials = t.revoked_serials.iter().cloned().collect();
    let deny = DenyList { revision: t.deny_revision, identities, certificates: t.denied_certificates.clone(), serials };
    let crl_pem = crls.iter().map(ca::Crl::to_pem).collect();
    Ok(TrustSnapshot {
        revision: t.revision,
        trust_domain: td.clone(),
        cas,
        bundle_pem: t.bundle_pem.clone(),
        crls,
        crl_pem,
        profiles: ProfilesTrust::default(),
        jwks,
        deny: Arc::new(deny),
        generation: t.generation,
        built_at: OffsetDateTime::from_unix_timestamp(t.built_at).unwrap_or(OffsetDateTime::UNIX_EPOCH),
        published_at: std::time::Instant::now(),
    })
}

/// The agent's own numbering of what it applies, and the server revision
/// each of its revisions stands for.
#[derive(Debug, Default)]
pub struct Revisions {
    local: u64,
    deny_local: u64,
    last_deny: Option<Arc<DenyList>>,
    /// (local revision, server revision), oldest first; at most [`KEPT`].
    map: VecDeque<(u64, u64)>,
}

/// How many local revisions are remembered for ack reports.
const KEPT: usize = 256;

impl Revisions {
    /// Renumbers `t` (received as the server's revision) after the last
    /// applied state; the deny list keeps its number while proxies would be
    /// told the same.
    pub fn renumber(&mut self, mut t: TrustSnapshot) -> TrustSnapshot {
        self.local += 1;
        let server = t.revision;
        t.revision = self.local;
        let same = self.last_deny.as_ref().is_some_and(|d| d.same_for_proxies(&t.deny));
        if !same {
            self.deny_local += 1;
        }
        let mut deny = (*t.deny).clone();
        deny.revision = self.deny_local;
        let deny = Arc::new(deny);
        self.last_deny = Some(deny.clone());
        t.deny = deny;
        self.map.push_back((self.local, server));
        while self.map.len() > KEPT {
            self.map.pop_front();
        }
        t
    }

    /// The server revision held by proxies that hold local revision `local`
    /// (0 when it is no longer known).
    pub fn server_revision(&self, local: u64) -> u64 {
        self.map.iter().rev().find(|(l, _)| *l <= local).map_or(0, |(_, s)| *s)
    }

    /// A new server stream: its revisions are not comparable with the last
    /// one's, so what proxies held is reported afresh.
    pub fn forget_server(&mut self) {
        self.map.clear();
    }
}
