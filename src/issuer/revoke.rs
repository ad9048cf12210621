//! Revocation: one certificate, or every certificate of a denied identity,
//! and lifting a denial. The change is durable (with its audit record) in
//! one transaction whose result is applied to memory ([`Issuer::apply`])
//! before the call returns; the publisher then publishes it.

use super::AuditAction;
use super::auth::{Caller, audit};
use super::revocation::revoked_entry;
use super::trust_state::TrustChange;
use super::{Issuer, IssuerError};
use crate::ca::RevocationReason;
use crate::domain::{Serial, SpiffeId, text};
use crate::policy::{Action, Resource};
use crate::store::{CertFilter, CertRecord, DenyRecord, RevokeOutcome, RevokedEntry};
use crate::trust::CONNECTION_GRACE;

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
        let record = audit(caller, ACTION, &target, "ok", reason, at);
        let revocation = self.store.revoke(&target, reason, at, &record).await?;
        let not_found = || IssuerError::NotFound(format!("no certificate with serial {target}"));
        let cert = revocation.certificate.ok_or_else(not_found)?;
        match revocation.outcome {
            RevokeOutcome::NotFound => return Err(not_found()),
            RevokeOutcome::AlreadyRevoked => return Ok((cert, true)),
            RevokeOutcome::Revoked => {}
        }
        tracing::warn!(serial = %target, spiffe_id = %cert.spiffe_id, reason, actor = %caller.actor(), "Certificate revoked");
        self.metrics.revoked(1);
        self.apply(TrustChange::Revoked(revoked_entry(cert.clone()).into_iter().collect()));
        Ok((cert, false))
    }

    /// Puts an identity on the deny list and revokes its unexpired
    /// certificates in the same transaction; what it revoked comes back from
    /// that transaction and goes to memory, with no further store round
    /// trip. Returns the revoked serials.
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
        let denial = DenyRecord {
            spiffe_id: target.clone(),
            reason: reason.to_string(),
            denied_at: now,
            denied_by: caller.actor(),
        };
        let record = audit(caller, ACTION, &target, "ok", reason, now);
        let revoked = self.store.deny(&denial, now, &record).await?;
        let serials: Vec<String> = revoked.iter().map(|r| r.serial.clone()).collect();
        tracing::warn!(spiffe_id = %target, reason, revoked = serials.len(), actor = %caller.actor(), "Identity denied");
        self.metrics.revoked(serials.len() as u64);
        self.metrics.denied();
        self.apply(TrustChange::Denied { denial, revoked });
        Ok(serials)
    }

    /// Lifts a denial. Serials revoked by it stay revoked.
    pub async fn allow(&self, caller: &Caller, spiffe_id: &str) -> Result<bool, IssuerError> {
        const ACTION: AuditAction = AuditAction::Policy(Action::AllowIdentity);
        let id = self.parse_id_audited(caller, ACTION, spiffe_id).await?;
        let target = id.to_string();
        self.authorize(caller, Action::AllowIdentity, &Resource::Identity(id), &target).await?;
        let now = self.now().unix_timestamp();
        let record = audit(caller, ACTION, &target, "ok", "", now);
        let was_denied = self.store.allow(&target, &record).await?;
        tracing::info!(spiffe_id = %target, was_denied, actor = %caller.actor(), "Identity allowed");
        self.apply(TrustChange::Allowed(target));
        Ok(was_denied)
    }

    /// The revoked, still relevant certificates of one identity, from the
    /// store (what another replica's denial revoked).
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
