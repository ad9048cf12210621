//! Revocation: one certificate, or every certificate of a denied identity.
//! The change is durable (with its audit record) and in memory before the
//! call returns; the publisher task then builds the new CRL set once and
//! publishes it, with the deny list, as one snapshot. However many changes
//! arrive while a build runs, the next build covers them all.

use std::sync::Arc;

use super::AuditAction;
use super::auth::{Caller, audit};
use std::sync::Weak;
use std::time::Duration as StdDuration;

use tokio::sync::watch;

use super::revocation::revoked_entry;
use super::{Issuer, IssuerError};
use crate::trust::{CONNECTION_GRACE, CaView, TrustSnapshot};
use crate::ca::{self, CaCertificate, RevocationReason};
use crate::domain::{Serial, SpiffeId, text};
use crate::policy::{Action, Resource};
use crate::store::{CaRole, CertFilter, CertRecord, DenyRecord, RevokeOutcome, RevokedEntry};

impl Issuer {
    /// Revokes one certificate. Returns the record after the change and
    /// whether it had been revoked before.
    pub async fn revoke(&self, caller: &Caller, serial: &str, reason: &str) -> Result<(CertRecord, bool), IssuerError> {
        const ACTION: AuditAction = AuditAction::Policy(Action::RevokeCertificate);
        // Bounded first, authorized next, parsed in detail last: a caller
        // that may not revoke learns nothing about what it sent.
        self.bounded(caller, ACTION, serial, &[("serial", serial, text::MAX_SERIAL), ("reason", reason, 64)]).await?;
        let resource = Resource::Certificate(serial.to_ascii_lowercase());
        self.authorize(caller, Action::RevokeCertificate, &resource, serial).await?;
        let serial: Serial = self.audited(caller, ACTION, serial, async { Ok(serial.parse::<Serial>()?) }).await?;
        let target = serial.to_string();
        let reason = if reason.is_empty() { "unspecified" } else { reason };
        self.audited(caller, ACTION, &target, async {
            reason.parse::<RevocationReason>().map_err(|e| IssuerError::InvalidArgument(e.to_string()))
        })
        .await?;
        let at = self.now().unix_timestamp();
        let record = audit(caller, AuditAction::Policy(Action::RevokeCertificate), &target, "ok", reason, at);
        let outcome = self.store.revoke(&target, reason, at, &record).await?;
        let cert = self
            .store
            .certificate(&target)
            .await?
            .ok_or_else(|| IssuerError::NotFound(format!("no certificate with serial {target}")))?;
        match outcome {
            RevokeOutcome::NotFound => {
                return Err(IssuerError::NotFound(format!("no certificate with serial {target}")));
            }
            RevokeOutcome::AlreadyRevoked => return Ok((cert, true)),
            RevokeOutcome::Revoked => {}
        }
        tracing::warn!(serial = %target, spiffe_id = %cert.spiffe_id, reason, actor = %caller.actor(), "Certificate revoked");
        self.metrics.revoked(1);
        self.apply_revoked(revoked_entry(cert.clone()));
        Ok((cert, false))
    }

    /// Puts an identity on the deny list and revokes its unexpired certificates
    /// in the same transaction. Returns the revoked serials.
    pub async fn deny(&self, caller: &Caller, spiffe_id: &str, reason: &str) -> Result<Vec<String>, IssuerError> {
        const ACTION: AuditAction = AuditAction::Policy(Action::DenyIdentity);
        self.bounded(caller, ACTION, spiffe_id, &[("reason", reason, text::MAX_REASON)]).await?;
        let id = self.parse_id_audited(caller, ACTION, spiffe_id).await?;
        let target = id.to_string();
        self.authorize(caller, Action::DenyIdentity, &Resource::Identity(id.clone()), &target).await?;
        if reason.trim().is_empty() {
            let err = IssuerError::InvalidArgument("a reason of 1 to 1024 characters is required".into());
            return self.refuse(caller, ACTION, &target, err).await;
        }
        let now = self.now().unix_timestamp();
        let entry = DenyRecord {
            spiffe_id: target.clone(),
            reason: reason.to_string(),
            denied_at: now,
            denied_by: caller.actor(),
        };
        let record = audit(caller, AuditAction::Policy(Action::DenyIdentity), &target, "ok", reason, now);
        let serials = self.store.deny(&entry, now, &record).await?;
        tracing::warn!(spiffe_id = %target, reason, revoked = serials.len(), actor = %caller.actor(), "Identity denied");
        self.metrics.revoked(serials.len() as u64);
        self.metrics.denied();
        self.revocations.lock().apply_denied(entry);
        // The denial is committed and in memory; the revoked serials follow
        // (a failure to read them back is caught up by the next reload).
        match self.revoked_of(&target).await {
            Ok(certs) => self.apply_revoked(certs),
            Err(e) => {
                tracing::error!(spiffe_id = %target, error = %e, "reading back the revoked certificates failed");
                self.changed();
            }
        }
        Ok(serials)
    }

    /// Lifts a denial. Serials revoked by it stay revoked.
    pub async fn allow(&self, caller: &Caller, spiffe_id: &str) -> Result<bool, IssuerError> {
        let id = self.parse_id_audited(caller, AuditAction::Policy(Action::AllowIdentity), spiffe_id).await?;
        let target = id.to_string();
        self.authorize(caller, Action::AllowIdentity, &Resource::Identity(id), &target).await?;
        let now = self.now().unix_timestamp();
        let record = audit(caller, AuditAction::Policy(Action::AllowIdentity), &target, "ok", "", now);
        let was_denied = self.store.allow(&target, &record).await?;
        tracing::info!(spiffe_id = %target, was_denied, actor = %caller.actor(), "Identity allowed");
        self.revocations.lock().apply_allowed(&target);
        self.changed();
        Ok(was_denied)
    }

    pub async fn deny_list(&self, caller: &Caller) -> Result<Vec<DenyRecord>, IssuerError> {
        self.authorize(caller, Action::ReadDenied, &Resource::AuditLog, "").await?;
        Ok(self.store.deny_list().await?)
    }

    /// Builds one CRL per CA whose key is online (unexpired revoked serials
    /// only, from memory), and publishes them with the bundle and the deny
    /// list as a new snapshot.
    pub async fn rebuild_crls(&self) -> Result<Arc<TrustSnapshot>, IssuerError> {
        let _guard = self.crl_lock.lock().await;
        let started = std::time::Instant::now();
        let now = self.now();
        let signers = self.signers();
        let records = self.store.cas().await?;
        let number = u64::try_from(now.unix_timestamp_nanos() / 1_000_000).unwrap_or(0);
        // A copy of the state in O(1): revocations go on while this builds.
        let view = self.revocations.lock().view();
        let generation = view.generation;
        let previous = self.snapshot();
        let unchanged = previous.generation == generation;
        let before = previous.deny.clone();
        let signers: Vec<_> = signers.crl_signers.iter().filter(|s| s.cert.not_after > now).cloned().collect();
        let validity = self.cfg.crl_validity;
        // Listing 100,000 entries, signing and checking the CRL take
        // milliseconds of CPU: off the async workers.
        let (mut crls, deny, revoked) = tokio::task::spawn_blocking(move || {
            let deny = if unchanged { before } else { view.deny_list(now, &before) };
            let mut revoked = 0;
            let crls = signers
                .iter()
                .map(|signer| {
                    let entries = view.crl_entries(&signer.cert.fingerprint, now);
                    revoked += entries.len();
                    ca::build_crl(signer, &entries, number, now, validity)
                })
                .collect::<Result<Vec<_>, _>>()?;
            Ok::<_, ca::CaError>((crls, deny, revoked))
        })
        .await
        .map_err(|e| IssuerError::Internal(format!("the CRL builder stopped: {e}")))??;
        // CAs whose key is offline: the CRLs their operators imported.
        let live =
            |fingerprint: &str| records.iter().any(|r| r.id == fingerprint && r.not_after > now.unix_timestamp());
        crls.extend(self.imported_crls.read().iter().filter(|c| live(&c.issuer_fingerprint)).cloned());
        let mut cas = Vec::new();
        let mut bundle_pem = String::new();
        let mut ordered: Vec<_> = records.iter().filter(|r| r.not_after > now.unix_timestamp()).collect();
        ordered.sort_by_key(|r| (r.role != CaRole::Root, r.created_at));
        for r in ordered {
            let cert = CaCertificate::from_der(&r.cert_der)?;
            bundle_pem.push_str(&cert.to_pem());
            cas.push(CaView {
                role: r.role,
                common_name: r.common_name.clone(),
                fingerprint: r.id.clone(),
                algorithm: cert.algorithm.clone(),
                not_before: r.not_before,
                not_after: r.not_after,
                active: r.active,
                key_online: r.sealed_key.is_some(),
            });
        }
        let crl_pem: String = crls.iter().map(|c| c.to_pem()).collect();
        let jwks = crate::token::jwks(&self.token_keys().jwt_svid_keys);
        let snapshot = Arc::new(TrustSnapshot {
            revision: previous.revision + 1,
            trust_domain: self.cfg.trust_domain.clone(),
            cas,
            bundle_pem,
            crl_pem,
            crls,
            jwks,
            deny,
            generation,
            built_at: now,
            published_at: std::time::Instant::now(),
        });
        self.snapshot.send_replace(snapshot.clone());
        let seconds = started.elapsed().as_secs_f64();
        self.metrics.crl_built(seconds, snapshot.crl_pem.len());
        tracing::info!(
            crls = snapshot.crls.len(),
            revoked,
            denied = snapshot.deny.identities.len(),
            bytes = snapshot.crl_pem.len(),
            duration_ms = seconds * 1000.0,
            revision = snapshot.revision,
            "CRL re-signed"
        );
        Ok(snapshot)
    }

    /// After a committed change: have the publisher build and publish a new
    /// snapshot. Never fails: the change is durable, and the publisher
    /// retries until a snapshot with it is out.
    pub(super) fn changed(&self) {
        self.publish.send_modify(|n| *n += 1);
    }

    /// Waits until a snapshot holding every change made so far is published.
    pub async fn published(&self) {
        let wanted = self.revocations.lock().generation();
        let mut updates = self.subscribe();
        let _ = updates.wait_for(|s| s.generation >= wanted).await;
    }

    /// The denial of this identity, if it is on the deny list (in memory).
    pub fn denial(&self, spiffe_id: &str) -> Option<DenyRecord> {
        self.revocations.lock().denial(spiffe_id).cloned()
    }

    /// Whether this certificate is revoked (known to this process).
    pub fn is_revoked(&self, serial: &str) -> bool {
        self.revocations.lock().is_revoked(serial)
    }

    /// Records a committed revocation in memory and publishes it.
    fn apply_revoked(&self, certs: impl IntoIterator<Item = RevokedEntry>) {
        {
            let mut state = self.revocations.lock();
            for cert in certs {
                state.apply_revoked(cert);
            }
        }
        self.changed();
    }

    /// The revoked, still relevant certificates of one identity, from the store.
    pub(super) async fn revoked_of(&self, spiffe_id: &str) -> Result<Vec<RevokedEntry>, IssuerError> {
        let filter = CertFilter {
            spiffe_id: Some(spiffe_id.to_string()),
            unexpired_at: Some((self.now() - CONNECTION_GRACE).unix_timestamp()),
            ..CertFilter::default()
        };
        Ok(self.store.certificates(&filter).await?.into_iter().filter_map(revoked_entry).collect())
    }

    pub(crate) async fn parse_id_audited(
        &self,
        caller: &Caller,
        action: AuditAction,
        spiffe_id: &str,
    ) -> Result<SpiffeId, IssuerError> {
        let target = text::shorten(spiffe_id, 256);
        let id = self.audited(caller, action, &target, async { Ok(SpiffeId::parse(spiffe_id)?) }).await?;
        if !id.is_member_of(&self.cfg.trust_domain) {
            return self
                .refuse(
                    caller,
                    action,
                    &target,
                    IssuerError::InvalidArgument(format!("{id} is not in trust domain {}", self.cfg.trust_domain)),
                )
                .await;
        }
        Ok(id)
    }
}

/// Retry delay after a failed publication.
const PUBLISH_RETRY: StdDuration = StdDuration::from_secs(1);

/// Publishes a snapshot after every batch of changes, until the issuer is gone.
pub(super) async fn publisher(issuer: Weak<Issuer>, mut requests: watch::Receiver<u64>) {
    while requests.changed().await.is_ok() {
        requests.borrow_and_update();
        loop {
            let Some(issuer) = issuer.upgrade() else { return };
            match issuer.rebuild_crls().await {
                Ok(snapshot) => {
                    issuer.metrics.observe(&snapshot);
                    break;
                }
                Err(e) => tracing::error!(error = %e, "publishing the CRLs after a revocation failed; will retry"),
            }
            drop(issuer);
            tokio::time::sleep(PUBLISH_RETRY).await;
        }
    }
}
