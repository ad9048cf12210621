//! CRLs of CAs whose key is offline. With an imported intermediate the root
//! key stays outside trustmesh, so trustmesh cannot sign the root's CRL — yet
//! Envoy refuses every chain once one of its CAs has CRLs and another has
//! none. The operator signs the root's CRL where the root key lives (`openssl
//! ca -gencrl`) and imports it (`trustmesh pki crl import`); it is published
//! with the CRLs trustmesh signs, in every validation context, the Workload
//! API and `/pki/crl`, and its nextUpdate counts in `crl_next_update`, so the
//! alert fires before it lapses.
//!
//! Refused: anything that is not a v2 CRL with a number and a nextUpdate,
//! signed by a CA of this database whose key is offline; one that is already
//! expired or issued in the future; one whose CRL number is not above the
//! imported one's (a replayed or older CRL).

use super::AuditAction;
use super::auth::{Caller, audit};
use super::trust_state::TrustChange;
use super::{Issuer, IssuerError};
use crate::ca::{self, CaCertificate, Crl};
use crate::policy::{Action, Resource};
use crate::store::{CaRecord, ImportedCrlRecord, Store};

/// How far a thisUpdate may be ahead of this server's clock.
const CLOCK_SKEW: time::Duration = time::Duration::minutes(5);
const ACTION: AuditAction = AuditAction::Policy(Action::ImportCrl);

impl Issuer {
    /// Imports a CRL (PEM or DER) signed elsewhere for an offline CA.
    pub async fn import_crl(&self, caller: &Caller, input: &[u8]) -> Result<Crl, IssuerError> {
        self.authorize(caller, Action::ImportCrl, &Resource::Ca, "").await?;
        let records = self.trust.ca_records();
        let certs = records.iter().map(|r| CaCertificate::from_der(&r.cert_der)).collect::<Result<Vec<_>, _>>()?;
        let refs: Vec<&CaCertificate> = certs.iter().collect();
        let crl = self.audited(caller, ACTION, "", async { Ok(ca::parse_crl(input, &refs)?) }).await?;
        let target = crl.issuer_fingerprint.clone();
        let Some(record) = records.iter().find(|r| r.id == target) else {
            return Err(IssuerError::Internal("the CRL's issuer left the CA list".into()));
        };
        let now = self.now();
        let refusal = if record.sealed_key.is_some() {
            Some(format!(
                "trustmesh signs the CRLs of {:?} itself; only a CA whose key is offline takes an imported CRL",
                record.common_name
            ))
        } else if crl.next_update <= now {
            Some(format!("the CRL expired at {} (its nextUpdate): sign a fresh one", crl.next_update))
        } else if crl.this_update > now + CLOCK_SKEW {
            Some(format!("the CRL's thisUpdate {} is in the future", crl.this_update))
        } else {
            None
        };
        if let Some(reason) = refusal {
            return self.refuse(caller, ACTION, &target, IssuerError::InvalidArgument(reason)).await;
        }
        let current = self.store.imported_crls().await?.into_iter().find(|c| c.issuer_id == target);
        let number = i64::try_from(crl.number).unwrap_or(i64::MAX);
        if let Some(current) = current.filter(|c| c.number >= number) {
            let reason = format!(
                "CRL number {} is not above the imported CRL's {} (a replayed or older CRL)",
                crl.number, current.number
            );
            return self.refuse(caller, ACTION, &target, IssuerError::FailedPrecondition(reason)).await;
        }
        let stored = ImportedCrlRecord {
            issuer_id: target.clone(),
            crl_der: crl.der.clone(),
            number,
            this_update: crl.this_update.unix_timestamp(),
            next_update: crl.next_update.unix_timestamp(),
            imported_at: now.unix_timestamp(),
        };
        let detail = format!("CRL number {}, nextUpdate {}", crl.number, crl.next_update);
        let log = audit(caller, ACTION, &target, "ok", &detail, now.unix_timestamp());
        if !self.store.import_crl(&stored, &log).await? {
            let reason = format!("a CRL numbered {} or higher was imported meanwhile", crl.number);
            return Err(IssuerError::FailedPrecondition(reason));
        }
        tracing::info!(ca_name = %record.common_name, fingerprint = %target, number = crl.number, next_update = %crl.next_update, actor = %caller.actor(), "CRL imported");
        self.apply(TrustChange::Imported(load(self.store.as_ref(), &records).await?));
        Ok(crl)
    }
}

/// The stored imported CRLs that still parse against the CAs `records`.
pub(super) async fn load(store: &dyn Store, records: &[CaRecord]) -> Result<Vec<Crl>, IssuerError> {
    let certs = records.iter().map(|r| CaCertificate::from_der(&r.cert_der)).collect::<Result<Vec<_>, _>>()?;
    let refs: Vec<&CaCertificate> = certs.iter().collect();
    let mut crls = Vec::new();
    for stored in store.imported_crls().await? {
        match ca::parse_crl(&stored.crl_der, &refs) {
            Ok(crl) => crls.push(crl),
            Err(e) => tracing::error!(fingerprint = %stored.issuer_id, error = %e, "stored imported CRL left out"),
        }
    }
    Ok(crls)
}
