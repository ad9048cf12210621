//! Authentication (tokens), authorization (Cedar) and the audit trail of
//! refusals. Every admin and signing call passes through here.

use std::future::Future;

use super::{Issuer, IssuerError};
use crate::domain::{Principal, SpiffeId, TokenKind, text};
use crate::policy::{Action, Resource};
use crate::store::AuditRecord;
use crate::token;

/// Credentials as a transport received them.
#[derive(Debug, Clone, Default)]
pub struct Credentials {
    /// The bearer token (without the `Bearer ` prefix). Never logged.
    pub bearer: Option<String>,
    /// DER of the client certificate of the connection, if any.
    pub peer_cert_der: Option<Vec<u8>>,
}

/// An authenticated caller.
#[derive(Debug, Clone)]
pub struct Caller {
    pub principal: Principal,
}

impl Caller {
    /// A caller that is the server itself (start-up tasks, tests).
    pub fn system() -> Self {
        Self { principal: Principal::Admin { name: "system".into() } }
    }

    /// The subject the caller authenticated as (token `sub`).
    pub fn subject(&self) -> String {
        match &self.principal {
            Principal::Admin { name } => name.clone(),
            Principal::Node { id } => id.clone(),
            Principal::Bootstrap { subject, .. } => subject.clone(),
            Principal::Workload { selectors } => selectors.join(","),
        }
    }

    /// The log- and audit-safe name of the caller.
    pub fn actor(&self) -> String {
        self.principal.describe()
    }
}

const ANONYMOUS: &str = "anonymous";

impl Issuer {
    /// Verifies the bearer token (signature, issuer, audience, lifetime,
    /// certificate binding, single use) and returns the caller it names.
    /// Every refusal is audited under `action`.
    pub async fn authenticate(&self, creds: &Credentials, action: &str) -> Result<Caller, IssuerError> {
        match self.verify_credentials(creds).await {
            Ok(caller) => Ok(caller),
            Err(err) => {
                let now = self.now().unix_timestamp();
                let record = AuditRecord {
                    id: 0,
                    at: now,
                    actor: ANONYMOUS.into(),
                    action: action.into(),
                    target: String::new(),
                    outcome: "denied".into(),
                    reason: err.to_string(),
                };
                self.write_audit(&record).await;
                self.metrics.failure(err.kind());
                tracing::warn!(action, error = %err, "authentication failed");
                Err(err)
            }
        }
    }

    async fn verify_credentials(&self, creds: &Credentials) -> Result<Caller, IssuerError> {
        let bearer = creds
            .bearer
            .as_deref()
            .ok_or_else(|| IssuerError::Unauthenticated("no bearer token in the authorization metadata".into()))?;
        if bearer.len() > 8 * 1024 {
            return Err(IssuerError::Unauthenticated("token longer than 8 KiB".into()));
        }
        let thumbprint = creds.peer_cert_der.as_deref().map(crate::ca::sha256_b64url);
        let now = self.now().unix_timestamp();
        let keys = self.token_keys();
        // The signature once per token (remembered), every claim on every call.
        let value = keys.accepted.verify(bearer, &keys.verifying)?;
        let claims = token::check_claims(&value, &self.cfg.token_rules(), now, thumbprint.as_deref())?;
        if claims.single_use && !self.store.consume_token_id(&claims.jti, claims.exp).await? {
            return Err(IssuerError::Unauthenticated(format!("single-use token {} was already used", claims.jti)));
        }
        let principal = match claims.kind {
            TokenKind::Admin => Principal::Admin { name: claims.sub },
            TokenKind::Node => Principal::Node { id: claims.sub },
            TokenKind::Bootstrap => Principal::Bootstrap {
                subject: claims.sub,
                spiffe_ids: claims.spiffe_ids.iter().filter_map(|s| SpiffeId::parse(s).ok()).collect(),
            },
        };
        Ok(Caller { principal })
    }

    /// Asks the policy; a refusal is audited and logged with the deciding policies.
    pub(crate) async fn authorize(
        &self,
        caller: &Caller,
        action: Action,
        resource: &Resource,
        target: &str,
    ) -> Result<(), IssuerError> {
        let decision = self.policy.decide(&caller.principal, action, resource, &self.cfg.trust_domain);
        if decision.allowed {
            return Ok(());
        }
        tracing::warn!(
            principal = %caller.actor(),
            action = %action,
            target,
            reasons = ?decision.policy_ids,
            "Permission denied for action"
        );
        let what = format!("{action} on {}: {decision}", text::quoted(&resource.to_string()));
        self.refuse(caller, &action.to_string(), target, IssuerError::PermissionDenied(what)).await
    }

    /// Runs a step; when it fails, the failure is audited and counted.
    pub(crate) async fn audited<T>(
        &self,
        caller: &Caller,
        action: &str,
        target: &str,
        step: impl Future<Output = Result<T, IssuerError>>,
    ) -> Result<T, IssuerError> {
        match step.await {
            Ok(v) => Ok(v),
            Err(e) => self.refuse(caller, action, target, e).await,
        }
    }

    /// Audits, counts and returns a refusal.
    pub(crate) async fn refuse<T>(
        &self,
        caller: &Caller,
        action: &str,
        target: &str,
        err: IssuerError,
    ) -> Result<T, IssuerError> {
        let outcome = match err {
            IssuerError::Unauthenticated(_) | IssuerError::PermissionDenied(_) | IssuerError::Denied { .. } => "denied",
            _ => "error",
        };
        let record = audit(caller, action, target, outcome, &err.to_string(), self.now().unix_timestamp());
        self.write_audit(&record).await;
        self.metrics.failure(err.kind());
        if !matches!(err, IssuerError::PermissionDenied(_)) {
            tracing::warn!(action, target, actor = %caller.actor(), error = %err, "request refused");
        }
        Err(err)
    }

    /// Audit writes of refusals must not turn one failure into another.
    async fn write_audit(&self, record: &AuditRecord) {
        if let Err(e) = self.store.append_audit(record).await {
            tracing::error!(error = %e, action = %record.action, "could not write the audit record");
        }
    }
}

pub(crate) fn audit(caller: &Caller, action: &str, target: &str, outcome: &str, reason: &str, at: i64) -> AuditRecord {
    AuditRecord {
        id: 0,
        at,
        actor: caller.actor(),
        action: action.to_string(),
        target: target.to_string(),
        outcome: outcome.to_string(),
        reason: reason.to_string(),
    }
}
