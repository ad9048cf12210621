//! Registration entries (SPEC §3): create, list, show and delete, each
//! authorized by Cedar (`manage_entries` on `Entry::"<id>"`; `Entry::"*"` for
//! the list), validated, and audited — every refusal, and each change in the
//! same transaction as the change itself. The entry list is published through
//! a `watch` ([`Issuer::entries_watch`]): loaded at start, replaced after
//! every create and delete; the SDS and Workload API servers match callers
//! against it, never against the store.

use crate::domain::text;
use std::collections::BTreeSet;
use std::sync::Arc;

use ring::rand::SecureRandom;
use tokio::sync::watch;

use super::AuditAction;
use super::auth::{Caller, audit};
use super::{Issuer, IssuerError};
use crate::domain::{Entry, MAX_SELECTORS, NodeId, Principal, Selector, SpiffeId, TrustDomain};
use crate::policy::{Action, Decision, DecisionContext, Resource};
use crate::store::{EntryRecord, Store, StoreError};

/// What `entry create` asks for; validated by [`Issuer::create_entry`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EntryRequest {
    pub spiffe_id: String,
    pub selectors: Vec<String>,
    pub dns_names: Vec<String>,
    /// X.509-SVID lifetime override, seconds (at least 60).
    pub ttl_seconds: Option<u64>,
    /// JWT-SVID lifetime override, seconds (at least 10).
    pub jwt_ttl_seconds: Option<u64>,
    pub hint: Option<String>,
    pub federates_with: Vec<String>,
    /// The node whose agent alone serves it: a node name (`--node`) or its
    /// agent's ID (`--parent-id spiffe://<td>/trustmesh/agent/<node>`).
    pub node: Option<String>,
}

/// The published entry list, oldest first.
pub type EntryList = Arc<Vec<Entry>>;

/// Most DNS names and federated trust domains one entry may carry.
const MAX_LIST: usize = 32;
/// Longest hint, in bytes.
const MAX_HINT: usize = 256;
/// Longest `entry show/delete` argument (a SPIFFE ID is at most 2048 bytes).
const MAX_ARGUMENT: usize = 2048;

impl Issuer {
    /// Validates, authorizes and stores a new entry, then publishes the list.
    /// The same SPIFFE ID with the same selector set twice is refused with
    /// `IssuerError::Store(StoreError::Conflict)`.
    pub async fn create_entry(&self, caller: &Caller, req: EntryRequest) -> Result<Entry, IssuerError> {
        const ACTION: AuditAction = AuditAction::CreateEntry;
        let target = text::shorten(&req.spiffe_id, 256);
        let id = self.audited(caller, ACTION, &target, async { new_entry_id() }).await?;
        self.authorize_entry(caller, ACTION, &id, &target).await?;
        let spiffe_id = self.parse_id_audited(caller, ACTION, &req.spiffe_id).await?;
        let target = spiffe_id.to_string();
        let now = self.now().unix_timestamp();
        let max_ttl = u64::try_from(self.cfg.max_cert_ttl.whole_seconds()).unwrap_or(u64::MAX);
        let entry = self
            .audited(caller, ACTION, &target, async {
                build_entry(id, spiffe_id, &req, &self.cfg.trust_domain, max_ttl, now)
            })
            .await?;
        let record = EntryRecord::from(&entry);
        let selector = record.selectors.join(",");
        let log = audit(caller, ACTION, &target, "ok", &format!("entry {} selectors {selector}", entry.id), now);
        self.audited(caller, ACTION, &target, async { Ok(self.store.insert_entry(&record, &log).await?) }).await?;
        self.entries.send_modify(|list| {
            let mut next = list.as_ref().clone();
            next.push(entry.clone());
            next.sort_by(|a, b| (a.created_at, &a.id).cmp(&(b.created_at, &b.id)));
            *list = Arc::new(next);
        });
        tracing::info!(entry_id = %entry.id, spiffe_id = %target, selector, actor = %caller.actor(), "Registration entry created");
        Ok(entry)
    }

    /// Every entry, oldest first (from the store, so other replicas' entries show).
    pub async fn list_entries(&self, caller: &Caller) -> Result<Vec<Entry>, IssuerError> {
        self.authorize_entry(caller, AuditAction::ListEntries, "*", "").await?;
        let records =
            self.audited(caller, AuditAction::ListEntries, "", async { Ok(self.store.entries().await?) }).await?;
        records.iter().map(Entry::try_from).collect()
    }

    /// One entry, by entry id or by a SPIFFE ID that names exactly one entry.
    pub async fn show_entry(&self, caller: &Caller, id_or_spiffe_id: &str) -> Result<Entry, IssuerError> {
        self.resolve(caller, AuditAction::ShowEntry, id_or_spiffe_id).await
    }

    /// Deletes one entry (by entry id, or a SPIFFE ID that names exactly one)
    /// and publishes the list without it. Returns what was deleted.
    pub async fn delete_entry(&self, caller: &Caller, id_or_spiffe_id: &str) -> Result<Entry, IssuerError> {
        const ACTION: AuditAction = AuditAction::DeleteEntry;
        let entry = self.resolve(caller, ACTION, id_or_spiffe_id).await?;
        let target = entry.spiffe_id.to_string();
        let log = audit(caller, ACTION, &target, "ok", &format!("entry {}", entry.id), self.now().unix_timestamp());
        let deleted = self
            .audited(caller, ACTION, &target, async { Ok(self.store.delete_entry(&entry.id, &log).await?) })
            .await?;
        if !deleted {
            let err = IssuerError::NotFound(format!("no entry with id {}", entry.id));
            return self.refuse(caller, ACTION, &target, err).await;
        }
        self.entries.send_modify(|list| {
            *list = Arc::new(list.iter().filter(|e| e.id != entry.id).cloned().collect());
        });
        tracing::info!(entry_id = %entry.id, spiffe_id = %target, actor = %caller.actor(), "Registration entry deleted");
        Ok(entry)
    }

    /// Follows the entry list: the current one at once, then every change.
    pub fn entries_watch(&self) -> watch::Receiver<EntryList> {
        self.entries.subscribe()
    }

    /// The entry list now.
    pub fn entries(&self) -> EntryList {
        self.entries.borrow().clone()
    }

    /// May `principal`, attested with `selectors`, obtain `id`? Sets Cedar's
    /// `entry_matched` from the current entries (an entry naming `id` whose
    /// selectors are all among `selectors`). A node token's selectors are
    /// `attest::token_selectors(node id)`. Not audited: a server that refuses
    /// on this decision writes the audit record itself.
    pub fn decide_svid(&self, principal: &Principal, selectors: &BTreeSet<Selector>, id: &SpiffeId) -> Decision {
        let matched = self.entries.borrow().iter().any(|e| &e.spiffe_id == id && e.matches(selectors));
        let ctx = DecisionContext { entry_matched: Some(matched), ..Default::default() };
        let resource = Resource::Identity(id.clone());
        self.policy.decide_with(principal, Action::ObtainSvid, &resource, &self.cfg.trust_domain, &ctx)
    }

    /// Authorizes `manage_entries` on `Entry::"<entry_id>"`; a refusal is
    /// audited under `action` (create_entry, delete_entry, …).
    async fn authorize_entry(
        &self,
        caller: &Caller,
        action: AuditAction,
        entry_id: &str,
        target: &str,
    ) -> Result<(), IssuerError> {
        let resource = Resource::Entry(entry_id.to_string());
        let decision = self.policy.decide(&caller.principal, Action::ManageEntries, &resource, &self.cfg.trust_domain);
        if decision.allowed {
            return self.spend(caller).await;
        }
        tracing::warn!(
            principal = %caller.actor(),
            action = %action,
            entry_id,
            target,
            reasons = ?decision.policy_ids,
            "Permission denied for action"
        );
        self.refuse(caller, action, target, IssuerError::PermissionDenied(decision.to_string())).await
    }

    /// Finds the entry an argument names, authorizing before revealing
    /// whether it exists.
    async fn resolve(&self, caller: &Caller, action: AuditAction, arg: &str) -> Result<Entry, IssuerError> {
        let shown = text::shorten(arg, 256);
        let wanted = self.audited(caller, action, &shown, async { EntryRef::parse(arg) }).await?;
        let records = self.audited(caller, action, &shown, async { Ok(self.store.entries().await?) }).await?;
        let found: Vec<&EntryRecord> = records.iter().filter(|r| wanted.names(r)).collect();
        let resource_id = match found.as_slice() {
            [one] => one.id.as_str(),
            _ => shown.as_str(),
        };
        self.authorize_entry(caller, action, resource_id, &shown).await?;
        let err = match found.as_slice() {
            [one] => return self.audited(caller, action, &shown, async { Entry::try_from(*one) }).await,
            [] => IssuerError::NotFound(format!("no entry {shown}")),
            many => IssuerError::InvalidArgument(format!(
                "{shown} names {} entries ({}): give an entry id",
                many.len(),
                many.iter().map(|r| r.id.as_str()).collect::<Vec<_>>().join(", ")
            )),
        };
        self.refuse(caller, action, &shown, err).await
    }
}

/// Loads the stored entries for the published list (start-up). An entry that
/// no longer parses is left out with an error log (its callers get no
/// identity) rather than stopping the server.
pub(super) async fn load(store: &dyn Store) -> Result<watch::Sender<EntryList>, IssuerError> {
    let entries = read(store).await?;
    tracing::info!(entries = entries.len(), "Registration entries loaded");
    Ok(watch::channel(Arc::new(entries)).0)
}

impl Issuer {
    /// Publishes the stored entry list again (another replica changed it).
    pub(super) async fn reload_entries(&self) -> Result<(), IssuerError> {
        let entries = read(self.store.as_ref()).await?;
        if **self.entries.borrow() != entries {
            tracing::info!(entries = entries.len(), "Registration entries changed by another replica");
            self.entries.send_replace(Arc::new(entries));
        }
        Ok(())
    }
}

async fn read(store: &dyn Store) -> Result<Vec<Entry>, IssuerError> {
    let mut entries = Vec::new();
    for record in store.entries().await? {
        match Entry::try_from(&record) {
            Ok(e) => entries.push(e),
            Err(e) => tracing::error!(entry_id = %record.id, error = %e, "stored registration entry left out"),
        }
    }
    Ok(entries)
}

/// An `entry show/delete` argument.
enum EntryRef {
    Id(String),
    SpiffeId(String),
}

impl EntryRef {
    fn parse(arg: &str) -> Result<Self, IssuerError> {
        if arg.len() > MAX_ARGUMENT {
            return Err(IssuerError::InvalidArgument(format!("an entry reference is at most {MAX_ARGUMENT} bytes")));
        }
        if arg.starts_with("spiffe://") {
            return Ok(Self::SpiffeId(SpiffeId::parse(arg)?.to_string()));
        }
        if arg.len() == 32 && arg.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Ok(Self::Id(arg.to_ascii_lowercase()));
        }
        let shown = text::shorten(arg, 96);
        Err(IssuerError::InvalidArgument(format!(
            "{shown:?} is neither an entry id (32 hex digits) nor a spiffe:// ID"
        )))
    }

    fn names(&self, r: &EntryRecord) -> bool {
        match self {
            Self::Id(id) => r.id == *id,
            Self::SpiffeId(id) => r.spiffe_id == *id,
        }
    }
}

/// 16 random bytes, lowercase hex.
fn new_entry_id() -> Result<String, IssuerError> {
    let mut bytes = [0u8; 16];
    ring::rand::SystemRandom::new()
        .fill(&mut bytes)
        .map_err(|_| IssuerError::Internal("the system random generator failed".into()))?;
    Ok(hex::encode(bytes))
}

/// Every check of a new entry; the SPIFFE ID is already parsed and in the
/// server's trust domain.
fn build_entry(
    id: String,
    spiffe_id: SpiffeId,
    req: &EntryRequest,
    own: &TrustDomain,
    max_ttl: u64,
    now: i64,
) -> Result<Entry, IssuerError> {
    if req.selectors.len() > MAX_SELECTORS {
        return invalid(format!("an entry takes at most {MAX_SELECTORS} selectors, got {}", req.selectors.len()));
    }
    if req.dns_names.len() > MAX_LIST || req.federates_with.len() > MAX_LIST {
        return invalid(format!("an entry takes at most {MAX_LIST} DNS names and {MAX_LIST} federated trust domains"));
    }
    if req.hint.as_ref().is_some_and(|h| h.len() > MAX_HINT) {
        return invalid(format!("a hint is at most {MAX_HINT} bytes"));
    }
    let selectors = req.selectors.iter().map(|s| Selector::parse(s)).collect::<Result<BTreeSet<_>, _>>()?;
    let mut dns_names: Vec<String> = Vec::new();
    for name in &req.dns_names {
        crate::ca::check_dns_name(name).map_err(|e| IssuerError::InvalidArgument(e.to_string()))?;
        if !dns_names.contains(name) {
            dns_names.push(name.clone());
        }
    }
    let mut federates_with: Vec<TrustDomain> = Vec::new();
    for td in &req.federates_with {
        let td = TrustDomain::parse(td)?;
        if &td == own {
            return invalid(format!("--federates-with {td} is this server's own trust domain"));
        }
        if !federates_with.contains(&td) {
            federates_with.push(td);
        }
    }
    let ttl = |name: &str, value: Option<u64>| -> Result<Option<u32>, IssuerError> {
        match value {
            None | Some(0) => Ok(None),
            Some(v) if v <= max_ttl => {
                u32::try_from(v).map(Some).or_else(|_| invalid(format!("{name} {v} is too long")))
            }
            Some(v) => invalid(format!("{name} {v} is longer than the longest certificate lifetime ({max_ttl} s)")),
        }
    };
    let node = match req.node.as_deref().filter(|n| !n.is_empty()) {
        None => None,
        Some(parent) if parent.starts_with("spiffe://") => {
            let id = SpiffeId::parse(parent)?;
            Some(NodeId::of_agent_id(&id, own).ok_or_else(|| {
                IssuerError::InvalidArgument(format!(
                    "--parent-id {id} is not a node agent of this trust domain (spiffe://{own}/trustmesh/agent/NODE)"
                ))
            })?)
        }
        Some(name) => Some(NodeId::parse(name)?),
    };
    let entry = Entry {
        id,
        spiffe_id,
        selectors,
        dns_names,
        ttl_seconds: ttl("--ttl", req.ttl_seconds)?,
        jwt_ttl_seconds: ttl("--jwt-ttl", req.jwt_ttl_seconds)?,
        hint: req.hint.clone().filter(|h| !h.is_empty()),
        federates_with,
        created_at: now,
        node,
    };
    entry.validate()?;
    Ok(entry)
}

fn invalid<T>(message: String) -> Result<T, IssuerError> {
    Err(IssuerError::InvalidArgument(message))
}

impl From<&Entry> for EntryRecord {
    fn from(e: &Entry) -> Self {
        Self {
            id: e.id.clone(),
            spiffe_id: e.spiffe_id.to_string(),
            selectors: e.selectors.iter().map(ToString::to_string).collect(),
            dns_names: e.dns_names.clone(),
            ttl_seconds: e.ttl_seconds.map(i64::from),
            jwt_ttl_seconds: e.jwt_ttl_seconds.map(i64::from),
            hint: e.hint.clone(),
            federates_with: e.federates_with.iter().map(|td| td.as_str().to_string()).collect(),
            created_at: e.created_at,
            node: e.node.as_ref().map(ToString::to_string),
        }
    }
}

impl TryFrom<&EntryRecord> for Entry {
    type Error = IssuerError;

    /// A stored entry back into the domain type; anything that no longer
    /// parses is `StoreError::Corrupt`, naming the entry.
    fn try_from(r: &EntryRecord) -> Result<Self, IssuerError> {
        let corrupt = |e: String| IssuerError::Store(StoreError::Corrupt(format!("entry {}: {e}", r.id)));
        let ttl = |v: Option<i64>| v.map(|t| u32::try_from(t).map_err(|_| corrupt(format!("ttl {t}")))).transpose();
        Ok(Self {
            id: r.id.clone(),
            spiffe_id: SpiffeId::parse(&r.spiffe_id).map_err(|e| corrupt(e.to_string()))?,
            selectors: r
                .selectors
                .iter()
                .map(|s| Selector::parse(s).map_err(|e| corrupt(e.to_string())))
                .collect::<Result<_, _>>()?,
            dns_names: r.dns_names.clone(),
            ttl_seconds: ttl(r.ttl_seconds)?,
            jwt_ttl_seconds: ttl(r.jwt_ttl_seconds)?,
            hint: r.hint.clone(),
            federates_with: r
                .federates_with
                .iter()
                .map(|td| TrustDomain::parse(td).map_err(|e| corrupt(e.to_string())))
                .collect::<Result<_, _>>()?,
            created_at: r.created_at,
            node: r.node.as_deref().map(NodeId::parse).transpose().map_err(|e| corrupt(e.to_string()))?,
        })
    }
}
