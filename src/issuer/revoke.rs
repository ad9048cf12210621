//! Revocation: one certificate, or every certificate of a denied identity.
//! The change is durable (with its audit record) before the call returns; the
//! new CRL set is then built once and published as one snapshot.

use std::sync::Arc;

use super::auth::{Caller, audit};
use super::{CaView, Issuer, IssuerError, TrustSnapshot};
use crate::ca::{self, CaCertificate, CrlEntry, RevocationReason};
use crate::domain::{Serial, SpiffeId};
use crate::policy::{Action, Resource};
use crate::store::{CaRole, CertRecord, DenyRecord, RevokeOutcome};

impl Issuer {
    /// Revokes one certificate. Returns the record after the change and
    /// whether it had been revoked before.
    pub async fn revoke(&self, caller: &Caller, serial: &str, reason: &str) -> Result<(CertRecord, bool), IssuerError> {
        let serial: Serial =
            self.audited(caller, "revoke_certificate", serial, async { Ok(serial.parse::<Serial>()?) }).await?;
        let target = serial.to_string();
        let reason = if reason.is_empty() { "unspecified" } else { reason };
        self.audited(caller, "revoke_certificate", &target, async {
            reason.parse::<RevocationReason>().map_err(|e| IssuerError::InvalidArgument(e.to_string()))
        })
        .await?;
        self.authorize(caller, Action::RevokeCertificate, &Resource::Certificate(target.clone()), &target).await?;
        let at = self.now().unix_timestamp();
        let record = audit(caller, "revoke_certificate", &target, "ok", reason, at);
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
        self.refresh_after_change().await;
        Ok((cert, false))
    }

    /// Puts an identity on the deny list and revokes its unexpired certificates
    /// in the same transaction. Returns the revoked serials.
    pub async fn deny(&self, caller: &Caller, spiffe_id: &str, reason: &str) -> Result<Vec<String>, IssuerError> {
        let id = self.parse_id_audited(caller, "deny_identity", spiffe_id).await?;
        let target = id.to_string();
        if reason.trim().is_empty() || reason.len() > 1024 {
            return self
                .refuse(
                    caller,
                    "deny_identity",
                    &target,
                    IssuerError::InvalidArgument("a reason of 1 to 1024 characters is required".into()),
                )
                .await;
        }
        self.authorize(caller, Action::DenyIdentity, &Resource::Identity(id.clone()), &target).await?;
        let now = self.now().unix_timestamp();
        let entry = DenyRecord {
            spiffe_id: target.clone(),
            reason: reason.to_string(),
            denied_at: now,
            denied_by: caller.actor(),
        };
        let record = audit(caller, "deny_identity", &target, "ok", reason, now);
        let serials = self.store.deny(&entry, now, &record).await?;
        tracing::warn!(spiffe_id = %target, reason, revoked = serials.len(), actor = %caller.actor(), "Identity denied");
        self.metrics.revoked(serials.len() as u64);
        self.refresh_after_change().await;
        Ok(serials)
    }

    /// Lifts a denial. Serials revoked by it stay revoked.
    pub async fn allow(&self, caller: &Caller, spiffe_id: &str) -> Result<bool, IssuerError> {
        let id = self.parse_id_audited(caller, "allow_identity", spiffe_id).await?;
        let target = id.to_string();
        self.authorize(caller, Action::AllowIdentity, &Resource::Identity(id), &target).await?;
        let now = self.now().unix_timestamp();
        let record = audit(caller, "allow_identity", &target, "ok", "", now);
        let was_denied = self.store.allow(&target, &record).await?;
        tracing::info!(spiffe_id = %target, was_denied, actor = %caller.actor(), "Identity allowed");
        self.refresh_after_change().await;
        Ok(was_denied)
    }

    pub async fn deny_list(&self, caller: &Caller) -> Result<Vec<DenyRecord>, IssuerError> {
        self.authorize(caller, Action::ReadDenied, &Resource::AuditLog, "").await?;
        Ok(self.store.deny_list().await?)
    }

    /// Builds one CRL per CA whose key is online (unexpired revoked serials
    /// only), and publishes them with the bundle as a new snapshot.
    pub async fn rebuild_crls(&self) -> Result<Arc<TrustSnapshot>, IssuerError> {
        let _guard = self.crl_lock.lock().await;
        let started = std::time::Instant::now();
        let now = self.now();
        let signers = self.signers();
        let records = self.store.cas().await?;
        let number = u64::try_from(now.unix_timestamp_nanos() / 1_000_000).unwrap_or(0);
        let mut crls = Vec::new();
        for signer in &signers.crl_signers {
            if signer.cert.not_after <= now {
                continue;
            }
            let entries = self
                .store
                .revoked_unexpired(&signer.cert.fingerprint, now.unix_timestamp())
                .await?
                .into_iter()
                .filter_map(|e| {
                    Some(CrlEntry {
                        serial: e.serial.parse().ok()?,
                        revoked_at: time::OffsetDateTime::from_unix_timestamp(e.revoked_at).ok()?,
                        reason: e.reason.as_deref().and_then(|r| r.parse().ok()),
                    })
                })
                .collect::<Vec<_>>();
            crls.push(ca::build_crl(signer, &entries, number, now, self.cfg.crl_validity)?);
        }
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
        let previous = self.snapshot();
        let snapshot = Arc::new(TrustSnapshot {
            revision: previous.revision + 1,
            trust_domain: self.cfg.trust_domain.clone(),
            cas,
            bundle_pem,
            crl_pem,
            crls,
            jwks,
            built_at: now,
        });
        let entries: usize = snapshot.crl_pem.len();
        self.snapshot.send_replace(snapshot.clone());
        tracing::info!(
            crls = snapshot.crls.len(),
            bytes = entries,
            duration_ms = started.elapsed().as_secs_f64() * 1000.0,
            revision = snapshot.revision,
            "CRL re-signed"
        );
        Ok(snapshot)
    }

    /// After a committed change: rebuild and publish. A failure here is logged,
    /// never reported as a failure of the change (it is durable; the next
    /// maintenance pass converges).
    async fn refresh_after_change(&self) {
        if let Err(e) = self.rebuild_crls().await {
            tracing::error!(error = %e, "CRL rebuild after a revocation failed; will retry");
        }
        self.metrics.refresh_counts(self).await;
    }

    pub(crate) async fn parse_id_audited(
        &self,
        caller: &Caller,
        action: &str,
        spiffe_id: &str,
    ) -> Result<SpiffeId, IssuerError> {
        let target: String = spiffe_id.chars().take(256).collect();
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
