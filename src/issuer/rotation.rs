//! CA rotation without restarts (SPEC §14): `prepare` → `activate` →
//! `taint` → `revoke`, for an intermediate, or for the root together with
//! the intermediates below it.
//!
//! Each step is one state change in the store (audited, in the change feed
//! other replicas follow), after which the CAs are loaded again and a new
//! trust state is published before the call returns. Each step refuses what
//! would break traffic:
//! * `prepare` puts the new CA in every bundle with its own empty CRL; it
//!   signs nothing, so no proxy can meet a certificate it does not trust.
//! * `activate` waits until every stream connected to this server has
//!   acknowledged a bundle holding the CA (`--force` does not wait); it
//!   names who has not.
//! * `taint` makes the identity cache re-issue every SVID the CA signed,
//!   at a bounded pace (`cache`), under the active CA.
//! * `revoke` is refused while unexpired certificates chain to the CA
//!   (`--force` revokes anyway); the CA leaves every bundle and its serial
//!   goes into its parent's CRL (`publish.rs`).
//!
//! The states and the steps between them are `domain::CaState`.

use std::collections::{BTreeMap, HashMap};

use time::{Duration, OffsetDateTime};

use super::AuditAction;
use super::auth::{Caller, audit};
use super::hierarchy::{self, INTERMEDIATES};
use super::{Issuer, IssuerError};
use crate::ca::{self, IntermediateParams, KeyAlgorithm, RootParams, Signer};
use crate::domain::{CaRole, CaState, CaStep};
use crate::policy::{Action, Resource};
use crate::store::CaRecord;

/// The default lifetime of a new root, in days.
pub const ROOT_DAYS: u32 = 3650;
/// The default lifetime of a new intermediate, in days.
pub const INTERMEDIATE_DAYS: u32 = 730;
/// How long `create-intermediary` waits for every stream to acknowledge
/// the CA it prepared before it activates it.
pub const ACKNOWLEDGEMENT_WAIT: std::time::Duration = std::time::Duration::from_secs(10);
/// How often this replica tells the others (through the store) which
/// prepared CAs its streams have not acknowledged; it writes when that
/// changes, and at least every `REPORT_REFRESH` seconds.
const REPORT_INTERVAL: std::time::Duration = std::time::Duration::from_millis(250);
const REPORT_REFRESH: i64 = 2;
/// Reports older than this (seconds) are from replicas that are gone.
const REPORT_FRESH: i64 = 10;
/// Streams named in a refused activation, at most.
const NAMED: usize = 10;

/// `pki ca prepare`.
#[derive(Debug, Clone)]
pub struct PrepareRequest {
    pub role: CaRole,
    /// Default: the role's name and the time of preparation.
    pub common_name: Option<String>,
    /// Default: [`ROOT_DAYS`] or [`INTERMEDIATE_DAYS`], within the parent's life.
    pub ttl_days: Option<u32>,
}

/// One CA as `pki ca list` shows it.
#[derive(Debug, Clone)]
pub struct CaListing {
    pub record: CaRecord,
    /// Unexpired, unrevoked certificates it signed.
    pub live_certificates: u64,
    /// The CA that signed it (`None` for a root).
    pub parent: Option<String>,
}

impl Issuer {
    /// Creates the next CA of a role, in state `prepared`: an intermediate
    /// under the active root, or a new root with one intermediate per role
    /// under it. Returns the new CAs, the first the one asked for.
    pub async fn prepare_ca(&self, caller: &Caller, req: &PrepareRequest) -> Result<Vec<CaRecord>, IssuerError> {
        const ACTION: AuditAction = AuditAction::PrepareCa;
        let target = req.role.as_str();
        self.authorize(caller, Action::CreateIntermediary, &Resource::Ca, target).await?;
        if let Some(cn) = &req.common_name
            && (cn.trim().is_empty() || cn.len() > 64)
        {
            let err = IssuerError::InvalidArgument("a CA's common name has 1 to 64 characters".into());
            return self.refuse(caller, ACTION, target, err).await;
        }
        if req.ttl_days.is_some_and(|d| !(1..=3650).contains(&d)) {
            let err = IssuerError::InvalidArgument("--ttl-days is 1 to 3650".into());
            return self.refuse(caller, ACTION, target, err).await;
        }
        let waiting =
            self.snapshot().cas.iter().find(|c| c.state == CaState::Prepared && covers(req.role, c.role)).cloned();
        if let Some(c) = waiting {
            let err = IssuerError::FailedPrecondition(format!(
                "{} CA {} ({}) is prepared already: activate it, or revoke it to discard it",
                c.role,
                c.common_name,
                short(&c.fingerprint)
            ));
            return self.refuse(caller, ACTION, target, err).await;
        }
        let records = self.audited(caller, ACTION, target, async { self.new_cas(req) }).await?;
        for record in &records {
            self.store.insert_ca(record).await?;
        }
        let named: Vec<&str> = records.iter().map(|r| r.id.as_str()).collect();
        let log = audit(
            caller,
            ACTION,
            &records[0].id,
            "ok",
            &format!("prepared {}", named.join(", ")),
            self.now().unix_timestamp(),
        );
        self.store.append_audit(&log).await?;
        for r in &records {
            tracing::info!(ca_name = %r.common_name, fingerprint = %r.id, role = r.role.as_str(), "CA prepared");
        }
        self.reload_cas().await?;
        Ok(records)
    }

    /// Makes a prepared CA (a root: with the prepared intermediates below
    /// it) the signer of its role; the one it replaces becomes `old`.
    pub async fn activate_ca(&self, caller: &Caller, id: &str, force: bool) -> Result<Vec<CaRecord>, IssuerError> {
        let (ca, group) = self.step_target(caller, id, CaStep::Activate).await?;
        if !force && let Err(err) = self.acknowledged_by_all(&group).await {
            return self.refuse(caller, step_action(CaStep::Activate), &ca.id, err).await;
        }
        self.set_states(caller, &group, CaState::Active, force).await
    }

    /// Marks an old CA (a root: with the intermediates below it) tainted:
    /// every live SVID it signed is re-issued under the active CA.
    pub async fn taint_ca(&self, caller: &Caller, id: &str) -> Result<Vec<CaRecord>, IssuerError> {
        let (_, group) = self.step_target(caller, id, CaStep::Taint).await?;
        self.set_states(caller, &group, CaState::Tainted, false).await
    }

    /// Revokes a CA that is not active (a root: with every CA below it):
    /// out of the bundles, into its parent's CRL. Refused while unexpired
    /// certificates chain to it, unless `force`.
    pub async fn revoke_ca(&self, caller: &Caller, id: &str, force: bool) -> Result<Vec<CaRecord>, IssuerError> {
        let (ca, group) = self.step_target(caller, id, CaStep::Revoke).await?;
        if !force {
            let live = self.live_by_issuer().await?;
            let counted: Vec<String> = group
                .iter()
                .filter_map(|c| live.get(&c.id).map(|n| format!("{} ({}): {n}", c.common_name, short(&c.id))))
                .collect();
            if !counted.is_empty() {
                let err = IssuerError::FailedPrecondition(format!(
                    "unexpired certificates chain to CA {} — {}; taint it and wait until they are re-issued, \
                     or revoke with --force",
                    ca.common_name,
                    counted.join(", ")
                ));
                return self.refuse(caller, step_action(CaStep::Revoke), &ca.id, err).await;
            }
        }
        self.set_states(caller, &group, CaState::Revoked, force).await
    }

    /// Every CA with its state and how many live certificates it signed.
    pub async fn list_cas(&self, caller: &Caller) -> Result<Vec<CaListing>, IssuerError> {
        self.authorize(caller, Action::ReadStatus, &Resource::Ca, "cas").await?;
        let records = self.store.cas().await?;
        let live = self.live_by_issuer().await?;
        let parents = hierarchy::parents(&records)?;
        Ok(records
            .into_iter()
            .map(|record| CaListing {
                live_certificates: live.get(&record.id).copied().unwrap_or(0),
                parent: parents.get(&record.id).cloned(),
                record,
            })
            .collect())
    }

    /// The CA `id` and the CAs the step moves with it (a root's children
    /// that are in the same state), after authorization and the state check.
    async fn step_target(
        &self,
        caller: &Caller,
        id: &str,
        step: CaStep,
    ) -> Result<(CaRecord, Vec<CaRecord>), IssuerError> {
        let action = step_action(step);
        self.authorize(caller, Action::CreateIntermediary, &Resource::Ca, id).await?;
        let id = id.trim().to_ascii_lowercase();
        if id.is_empty() || id.len() > 64 || !id.bytes().all(|b| b.is_ascii_hexdigit()) {
            let err = IssuerError::InvalidArgument("a CA id is the 64 hex digits `pki ca list` shows".into());
            return self.refuse(caller, action, &id, err).await;
        }
        let records = self.store.cas().await?;
        let Some(ca) = records.iter().find(|r| r.id == id).cloned() else {
            let err = IssuerError::NotFound(format!("no CA with id {id}; `pki ca list` shows them"));
            return self.refuse(caller, action, &id, err).await;
        };
        if let Err(why) = ca.state.after(step) {
            let err = IssuerError::FailedPrecondition(format!("CA {} is {}: {why}", ca.common_name, ca.state));
            return self.refuse(caller, action, &id, err).await;
        }
        let mut group = vec![ca.clone()];
        if ca.role == CaRole::Root {
            let parents = hierarchy::parents(&records)?;
            group.extend(
                records
                    .iter()
                    .filter(|r| parents.get(&r.id) == Some(&ca.id) && r.state.after(step).is_ok())
                    .filter(|r| step != CaStep::Activate || r.state == CaState::Prepared)
                    .cloned(),
            );
        }
        Ok((ca, group))
    }

    /// Waits until every stream has acknowledged `group`, or `limit` passed.
    pub(super) async fn acknowledged_within(&self, group: &[CaRecord], limit: std::time::Duration) {
        let deadline = tokio::time::Instant::now() + limit;
        while self.acknowledged_by_all(group).await.is_err() && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    }

    /// Refused unless every stream connected here has acknowledged a trust
    /// revision holding every CA of `group`, and no other replica (one that
    /// reported within [`REPORT_FRESH`] seconds) has a stream that has not,
    /// or has not reported since the CA was prepared.
    async fn acknowledged_by_all(&self, group: &[CaRecord]) -> Result<(), IssuerError> {
        let mut since = 0;
        for ca in group {
            since = since.max(self.trust.first_published(&ca.id).ok_or_else(|| {
                IssuerError::FailedPrecondition(format!(
                    "CA {} is not in this server's bundles yet; retry in a moment",
                    ca.common_name
                ))
            })?);
        }
        let mut named: Vec<String> = self
            .acks
            .behind(since)
            .iter()
            .map(|b| format!("{} ({}, acknowledged revision {})", b.node_id, b.kind, b.acked))
            .collect();
        let local = named.len();
        let now = self.now().unix_timestamp();
        for (replica, pending, at) in self.store.acknowledgement_reports(now - REPORT_FRESH).await? {
            if replica == self.replica {
                continue;
            }
            let pending: BTreeMap<String, Vec<String>> = serde_json::from_str(&pending).unwrap_or_default();
            for ca in group {
                if at <= ca.created_at {
                    named.push(format!("replica {replica} (no report since CA {} was prepared)", ca.common_name));
                } else if let Some(nodes) = pending.get(&ca.id) {
                    named.extend(nodes.iter().map(|n| format!("{n} on replica {replica}")));
                }
            }
        }
        if named.is_empty() {
            return Ok(());
        }
        let total = named.len();
        if total > NAMED {
            named.truncate(NAMED);
            named.push(format!("and {} more", total - NAMED));
        }
        Err(IssuerError::FailedPrecondition(format!(
            "{total} streams have not acknowledged a bundle holding CA {} ({local} of the {} connected here, \
             revision {since}): {}; retry once they have, or activate with --force",
            group[0].common_name,
            self.acks.len(),
            named.join(", ")
        )))
    }

    /// The prepared CAs some stream connected here has not acknowledged, with
    /// who (a CA not yet published here: by every stream).
    fn unacknowledged_here(&self) -> BTreeMap<String, Vec<String>> {
        let snapshot = self.snapshot();
        let mut pending = BTreeMap::new();
        for ca in snapshot.cas.iter().filter(|c| c.state == CaState::Prepared) {
            let nodes: Vec<String> = match self.trust.first_published(&ca.fingerprint) {
                None => vec!["every stream (not yet in its bundles)".into()],
                Some(revision) => {
                    self.acks.behind(revision).into_iter().map(|b| format!("{} ({})", b.node_id, b.kind)).collect()
                }
            };
            if !nodes.is_empty() {
                pending.insert(ca.fingerprint.clone(), nodes);
            }
        }
        pending
    }

    async fn set_states(
        &self,
        caller: &Caller,
        group: &[CaRecord],
        to: CaState,
        forced: bool,
    ) -> Result<Vec<CaRecord>, IssuerError> {
        let now = self.now().unix_timestamp();
        let action = CaStep::reaching(to).map_or(AuditAction::PrepareCa, step_action);
        let mut changed = Vec::with_capacity(group.len());
        for ca in group {
            let note = format!("{} {} -> {to}{}", ca.common_name, ca.state, if forced { " (forced)" } else { "" });
            let log = audit(caller, action, &ca.id, "ok", &note, now);
            let record = self.store.set_ca_state(&ca.id, to, now, &log).await?;
            tracing::info!(ca_name = %record.common_name, fingerprint = %record.id, state = %to, forced, "CA state changed");
            changed.push(record);
        }
        self.reload_cas().await?;
        Ok(changed)
    }

    /// Unexpired, unrevoked certificates per issuing CA.
    async fn live_by_issuer(&self) -> Result<HashMap<String, u64>, IssuerError> {
        let now = self.now().unix_timestamp();
        Ok(self.store.live_certificates_by_issuer(now).await?.into_iter().collect())
    }

    /// The new CAs of `req`, keys sealed, state `prepared`.
    fn new_cas(&self, req: &PrepareRequest) -> Result<Vec<CaRecord>, IssuerError> {
        let now = self.now();
        let rng = ring::rand::SystemRandom::new();
        let stamp = now.replace_nanosecond(0).unwrap_or(now);
        let stamp = stamp.format(&time::format_description::well_known::Rfc3339).unwrap_or_default();
        let name = |base: &str| req.common_name.clone().unwrap_or_else(|| format!("{base} {stamp}"));
        let prepared =
            |signer: &Signer, role: CaRole| hierarchy::ca_record(signer, role, CaState::Prepared, &self.kek, now);
        if req.role == CaRole::Root {
            let days = req.ttl_days.unwrap_or(ROOT_DAYS);
            let algorithm = self.signers().root.as_ref().map_or(KeyAlgorithm::EcP384, |r| r.key().algorithm());
            let params = RootParams {
                common_name: name("trustmesh Root CA"),
                algorithm,
                lifetime: Duration::days(i64::from(days)),
                trust_domain: self.cfg.trust_domain.clone(),
            };
            let root = ca::create_root(&params, self.serials.next_serial()?, now, &rng)?;
            let mut records = vec![prepared(&root, CaRole::Root)?];
            let below = INTERMEDIATE_DAYS.min(days);
            for (role, base) in INTERMEDIATES {
                let signer = self.intermediate(&root, &format!("{base} {stamp}"), below, now)?;
                records.push(prepared(&signer, role)?);
            }
            return Ok(records);
        }
        let signers = self.signers();
        let Some(root) = signers.root.clone() else {
            let root = self.snapshot().root().map(|r| format!("{} ({})", r.common_name, short(&r.fingerprint)));
            return Err(IssuerError::FailedPrecondition(format!(
                "the key of root CA {} is offline: prepare the new intermediate where the root key is kept",
                root.unwrap_or_else(|| "?".into())
            )));
        };
        let base = INTERMEDIATES.iter().find(|(r, _)| *r == req.role).map_or("trustmesh CA", |(_, n)| *n);
        let signer = self.intermediate(&root, &name(base), req.ttl_days.unwrap_or(INTERMEDIATE_DAYS), now)?;
        Ok(vec![prepared(&signer, req.role)?])
    }

    /// An intermediate under `parent`, refused if it would outlive it.
    fn intermediate(
        &self,
        parent: &Signer,
        common_name: &str,
        days: u32,
        now: OffsetDateTime,
    ) -> Result<Signer, IssuerError> {
        let lifetime = Duration::days(i64::from(days));
        if now + lifetime > parent.cert.not_after {
            let left = (parent.cert.not_after - now).whole_days();
            return Err(IssuerError::InvalidArgument(format!(
                "a CA of {days} days would outlive its parent {}, which expires on {} ({left} days from now)",
                parent.cert.common_name,
                parent.cert.not_after.date()
            )));
        }
        let params = IntermediateParams {
            common_name: common_name.to_string(),
            lifetime,
            trust_domain: self.cfg.trust_domain.clone(),
        };
        Ok(ca::create_intermediate(
            parent,
            &params,
            self.serials.next_serial()?,
            now,
            &ring::rand::SystemRandom::new(),
        )?)
    }

    /// `--ca-rotation auto`, once per maintenance pass, for each
    /// intermediate role (the root is rotated by hand): at half of the
    /// active CA's life a successor is prepared, within the root's life;
    /// once every stream connected here has acknowledged it, it is
    /// activated. The CA it replaces stays `old`, trusted until it expires.
    pub(super) async fn rotate_automatically(&self) {
        let caller = Caller::system();
        let now = self.now().unix_timestamp();
        let snapshot = self.snapshot();
        for role in [CaRole::Services, CaRole::Transport, CaRole::Profiles] {
            let of_role = |state| snapshot.cas.iter().find(|c| c.role == role && c.state == state);
            let Some(active) = of_role(CaState::Active) else { continue };
            let step = match of_role(CaState::Prepared) {
                Some(prepared) => {
                    let records = self.trust.ca_records();
                    let Some(record) = records.iter().find(|r| r.id == prepared.fingerprint) else { continue };
                    if self.acknowledged_by_all(std::slice::from_ref(record)).await.is_err() {
                        continue;
                    }
                    self.activate_ca(&caller, &prepared.fingerprint, false).await.map(drop)
                }
                None if now >= active.not_before + (active.not_after - active.not_before) / 2 => {
                    let days = self.successor_days();
                    let request = PrepareRequest { role, common_name: None, ttl_days: Some(days) };
                    self.prepare_ca(&caller, &request).await.map(drop)
                }
                None => continue,
            };
            if let Err(e) = step {
                tracing::warn!(role = role.as_str(), error = %e, "automatic CA rotation step failed; retried next pass");
            }
        }
    }

    /// The lifetime of an automatically prepared intermediate: the default,
    /// or what is left of the root's life (a day short of it).
    fn successor_days(&self) -> u32 {
        let left = self.signers().root.as_ref().map_or(0, |r| (r.cert.not_after - self.now()).whole_days() - 1);
        u32::try_from(left.clamp(1, i64::from(INTERMEDIATE_DAYS))).unwrap_or(1)
    }

    /// Loads the CAs again and publishes the trust state they make.
    pub(super) async fn reload_cas(&self) -> Result<(), IssuerError> {
        self.reload_keys().await?;
        self.publish().await.map(drop)
    }
}

/// Keeps this replica's report of unacknowledged prepared CAs current in the
/// store, for `activate` on any replica, until the issuer is gone.
pub(super) async fn report_acknowledgements(issuer: std::sync::Weak<Issuer>) {
    let mut last: Option<(String, i64)> = None;
    let mut tick = tokio::time::interval(REPORT_INTERVAL);
    loop {
        // The first report goes out at once: a replica that has said nothing
        // is one the others cannot wait for.
        tick.tick().await;
        let Some(issuer) = issuer.upgrade() else { return };
        let pending = serde_json::to_string(&issuer.unacknowledged_here()).unwrap_or_default();
        let now = issuer.now().unix_timestamp();
        if last.as_ref().is_some_and(|(said, at)| *said == pending && now - at < REPORT_REFRESH) {
            continue;
        }
        match issuer.store.report_acknowledgements(&issuer.replica, &pending, now).await {
            Ok(()) => last = Some((pending, now)),
            Err(e) => tracing::warn!(error = %e, "reporting the streams' acknowledgements failed; will retry"),
        }
    }
}

/// Whether preparing a CA of `asked` makes one of `role` (a root: one of
/// every role).
fn covers(asked: CaRole, role: CaRole) -> bool {
    asked == role || asked == CaRole::Root
}

/// What the audit log calls a step.
fn step_action(step: CaStep) -> AuditAction {
    match step {
        CaStep::Activate => AuditAction::ActivateCa,
        CaStep::Taint => AuditAction::TaintCa,
        CaStep::Revoke => AuditAction::RevokeCa,
    }
}

/// The first 16 hex digits of a fingerprint.
fn short(fingerprint: &str) -> &str {
    &fingerprint[..fingerprint.len().min(16)]
}
