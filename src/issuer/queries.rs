//! The read-only admin queries: status, certificates, the deny list, the
//! audit log, the bundle. Each is authorized like any other call.

use super::auth::Caller;
use super::{AuditAction, Issuer, IssuerError};
use crate::domain::{Serial, text};
use crate::policy::{Action, Resource};
use crate::store::{AuditFilter, AuditRecord, CertFilter, CertRecord, DenyRecord};
use crate::trust::CaView;

/// PKI health as `pki status` shows it.
#[derive(Debug, Clone)]
pub struct Status {
    pub healthy: bool,
    pub warnings: Vec<String>,
    pub cas: Vec<CaView>,
    pub active_certificates: u64,
    pub denied_identities: u64,
}

impl Issuer {
    pub async fn status(&self, caller: &Caller) -> Result<Status, IssuerError> {
        self.authorize(caller, Action::ReadStatus, &Resource::Ca, "").await?;
        let snapshot = self.snapshot();
        let now = self.now().unix_timestamp();
        let mut warnings = Vec::new();
        for ca in &snapshot.cas {
            let left = ca.not_after - now;
            if ca.state == crate::domain::CaState::Active
                && ca.role != crate::store::CaRole::Root
                && left < 180 * 86_400
            {
                warnings.push(format!("{} expires in {} days: rotate it", ca.common_name, left / 86_400));
            }
        }
        if snapshot.earliest_next_update().is_some_and(|next| next.unix_timestamp() <= now) {
            warnings.push("a published CRL has passed its nextUpdate".into());
        }
        // A failing store makes the PKI unhealthy; the status still answers.
        let mut counted = |count: Result<u64, crate::store::StoreError>| {
            count.unwrap_or_else(|e| {
                warnings.push(format!("database: {e}"));
                0
            })
        };
        let active_certificates = counted(self.store.active_certificate_count(now).await);
        let denied_identities = counted(self.store.deny_list().await.map(|d| d.len() as u64));
        if let Err(e) = self.store.ping().await {
            warnings.push(format!("database: {e}"));
        }
        warnings.dedup();
        Ok(Status {
            healthy: warnings.is_empty(),
            warnings,
            cas: snapshot.cas.clone(),
            active_certificates,
            denied_identities,
        })
    }

    pub async fn audit_log(&self, caller: &Caller, filter: &AuditFilter) -> Result<Vec<AuditRecord>, IssuerError> {
        self.authorize(caller, Action::ReadAudit, &Resource::AuditLog, "").await?;
        Ok(self.store.audit(filter).await?)
    }

    pub async fn bundle(&self, caller: &Caller) -> Result<String, IssuerError> {
        self.authorize(caller, Action::ReadBundle, &Resource::Ca, "").await?;
        Ok(self.snapshot().bundle_pem.clone())
    }

    pub async fn list_certificates(
        &self,
        caller: &Caller,
        filter: &CertFilter,
    ) -> Result<Vec<CertRecord>, IssuerError> {
        self.authorize(caller, Action::ReadCertificates, &Resource::AuditLog, "").await?;
        Ok(self.store.certificates(filter).await?)
    }

    pub async fn deny_list(&self, caller: &Caller) -> Result<Vec<DenyRecord>, IssuerError> {
        self.authorize(caller, Action::ReadDenied, &Resource::AuditLog, "").await?;
        Ok(self.store.deny_list().await?)
    }
}

/// Most certificates one listing of a mount returns (newest first).
pub const MAX_MOUNT_LISTING: u32 = 100_000;

impl Issuer {
    /// One certificate by serial (hex, `:` between octets allowed), as the
    /// PKI API's `cert/:serial` reads it; the read is audited.
    pub async fn certificate(&self, caller: &Caller, serial: &str) -> Result<Option<CertRecord>, IssuerError> {
        const ACTION: AuditAction = AuditAction::Policy(Action::ReadCertificates);
        self.bounded(caller, ACTION, serial, &[("serial", serial, text::MAX_SERIAL)]).await?;
        let resource = Resource::Certificate(serial.to_ascii_lowercase());
        self.authorize(caller, Action::ReadCertificates, &resource, serial).await?;
        let serial: Serial = self.audited(caller, ACTION, serial, async { Ok(serial.parse::<Serial>()?) }).await?;
        let found = self.store.certificate(&serial.to_string()).await?;
        let outcome = if found.is_some() { "read" } else { "not found" };
        self.audit_read(caller, ACTION, &serial.to_string(), outcome).await?;
        Ok(found)
    }

    /// The certificates issued under a mount's profiles, newest first (at
    /// most [`MAX_MOUNT_LISTING`]); the read is audited.
    pub async fn mount_certificates(&self, caller: &Caller, mount: &str) -> Result<Vec<CertRecord>, IssuerError> {
        const ACTION: AuditAction = AuditAction::Policy(Action::ReadCertificates);
        self.authorize(caller, Action::ReadCertificates, &Resource::AuditLog, mount).await?;
        let filter =
            CertFilter { mount: Some(mount.to_string()), limit: Some(MAX_MOUNT_LISTING), ..CertFilter::default() };
        let certificates = self.store.certificates(&filter).await?;
        self.audit_read(caller, ACTION, mount, &format!("{} certificates listed", certificates.len())).await?;
        Ok(certificates)
    }
}
