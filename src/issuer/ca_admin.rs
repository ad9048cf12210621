//! CA management: adding an intermediate (`pki ca create-intermediary`)
//! and the server's own TLS certificate from the Transport CA.

use std::sync::Arc;

use time::Duration;

use super::AuditAction;
use super::auth::Caller;
use super::hierarchy;
use super::rotation::{ACKNOWLEDGEMENT_WAIT, PrepareRequest};
use super::trust_state::TrustChange;
use super::{Issuer, IssuerError};
use crate::ca::{self, IntermediateParams, PrivateKey};
use crate::domain::{CaRole, CaState, SpiffeId};
use crate::policy::{Action, Resource};
use crate::store::CaRecord;

impl Issuer {
    /// `pki ca create-intermediary` (seed 002 §3): `prepare` and `activate`
    /// in one call. Activation waits up to [`ACKNOWLEDGEMENT_WAIT`] for every
    /// connected stream to acknowledge the new CA; if one has not by then,
    /// the call is refused naming it, and the CA stays prepared (in every
    /// bundle) for a later `pki ca activate`.
    pub async fn create_intermediary(
        &self,
        caller: &Caller,
        role: CaRole,
        common_name: &str,
        ttl_days: u32,
    ) -> Result<crate::store::CaRecord, IssuerError> {
        const ACTION: AuditAction = AuditAction::Policy(Action::CreateIntermediary);
        self.authorize(caller, Action::CreateIntermediary, &Resource::Ca, common_name).await?;
        if role == CaRole::Root || common_name.is_empty() || common_name.len() > 64 || !(1..=3650).contains(&ttl_days) {
            let err = IssuerError::InvalidArgument(
                "an intermediate needs role services or transport, a common name of 1-64 characters and 1-3650 days"
                    .into(),
            );
            return self.refuse(caller, ACTION, common_name, err).await;
        }
        let request = PrepareRequest { role, common_name: Some(common_name.into()), ttl_days: Some(ttl_days) };
        let prepared = self.prepare_ca(caller, &request).await?;
        self.acknowledged_within(&prepared, ACKNOWLEDGEMENT_WAIT).await;
        let id = prepared.first().map(|c| c.id.clone()).unwrap_or_default();
        let activated = self.activate_ca(caller, &id, false).await?;
        activated.into_iter().next().ok_or_else(|| IssuerError::Internal("activation changed no CA".into()))
    }

    /// A new intermediate signed by the root that becomes the active signer
    /// of its role at once: at start-up, before anything is served (the
    /// profiles CA of a PKI created before profiles existed).
    pub(crate) async fn add_intermediate(
        &self,
        role: CaRole,
        common_name: &str,
        ttl_days: u32,
    ) -> Result<CaRecord, IssuerError> {
        let signers = self.signers();
        let root = signers.root.clone().ok_or_else(|| {
            IssuerError::FailedPrecondition(
                "the root key is offline: create intermediates where the root key is kept".into(),
            )
        })?;
        let params = IntermediateParams {
            common_name: common_name.to_string(),
            lifetime: Duration::days(i64::from(ttl_days)),
            trust_domain: self.cfg.trust_domain.clone(),
        };
        let now = self.clock.now();
        let signer = ca::create_intermediate(
            &root,
            &params,
            self.serials.next_serial()?,
            now,
            &ring::rand::SystemRandom::new(),
        )?;
        let record = hierarchy::ca_record(&signer, role, CaState::Active, &self.kek, now)?;
        self.store.insert_ca(&record).await?;
        let cas = self.store.cas().await?;
        *self.keys.signers.write() = Arc::new(hierarchy::load_signers(&cas, &self.kek)?);
        tracing::info!(
            ca_name = %record.common_name,
            fingerprint = %record.id,
            role = role.as_str(),
            signed_by = %root.cert.fingerprint,
            "CA initialized"
        );
        // The new CA is in every bundle before the call returns.
        self.apply(TrustChange::Cas(cas));
        self.publish().await?;
        Ok(record)
    }

    /// The fingerprint of the CA that signs the server's own TLS certificate.
    pub fn server_certificate_issuer(&self) -> String {
        self.signers().transport.cert.fingerprint.clone()
    }

    /// The server's own TLS certificate from the Transport CA, with a fresh key.
    pub fn server_certificate(&self) -> Result<(String, PrivateKey, time::OffsetDateTime), IssuerError> {
        let signer = self.signers().transport.clone();
        let id = SpiffeId::server(&self.cfg.trust_domain)?;
        let mut names: Vec<String> = vec!["localhost".into(), "127.0.0.1".into(), "::1".into()];
        names.extend(self.cfg.server_names.iter().cloned());
        let lifetime = Duration::hours(24);
        let (cert, key) = ca::issue_server_certificate(
            &signer,
            &id,
            &names,
            lifetime,
            self.serials.next_serial()?,
            self.now(),
            &ring::rand::SystemRandom::new(),
        )?;
        let chain = format!("{}{}", cert.to_pem(), signer.cert.to_pem());
        Ok((chain, key, cert.not_after))
    }
}
