//! Authentication (tokens), authorization (Cedar) and the audit trail of
//! refusals. Every admin and signing call passes through here.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use super::{AuditAction, Issuer, IssuerError};
use crate::domain::{NodeId, Principal, SpiffeId, TokenKind, text};
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
    /// The single-use token this call came with, spent once the call is
    /// allowed and its input valid ([`Issuer::spend`]).
    single_use: Option<Arc<SingleUse>>,
}

#[derive(Debug)]
struct SingleUse {
    jti: String,
    exp: i64,
    spent: AtomicBool,
}

impl Caller {
    /// A caller that is the server itself (start-up tasks, tests).
    pub fn system() -> Self {
        Self { principal: Principal::Admin { name: "system".into() }, single_use: None }
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
    pub async fn authenticate(&self, creds: &Credentials, action: AuditAction) -> Result<Caller, IssuerError> {
        match self.verify_credentials(creds).await {
            Ok(caller) => Ok(caller),
            Err(err) => Err(self.unauthenticated(action, err).await),
        }
    }

    /// A failed authentication: audited as `anonymous`, counted, logged.
    pub(super) async fn unauthenticated(&self, action: AuditAction, err: IssuerError) -> IssuerError {
        let reason = err.to_string();
        let record = record(ANONYMOUS.into(), action, "", "denied", &reason, self.now().unix_timestamp());
        self.write_audit(&record).await;
        self.metrics.failure(err.kind());
        tracing::warn!(action = %action, error = %text::quoted(&reason), "authentication failed");
        err
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
        let (claims, single_use) = self.verified_claims(bearer, thumbprint.as_deref()).await?;
        let principal = match claims.kind {
            TokenKind::Admin => Principal::Admin { name: claims.sub },
            TokenKind::Node => Principal::Node { id: claims.sub },
            TokenKind::Bootstrap => Principal::Bootstrap {
                subject: claims.sub,
                spiffe_ids: claims.spiffe_ids.iter().filter_map(|s| SpiffeId::parse(s).ok()).collect(),
            },
            TokenKind::Join => {
                return Err(IssuerError::Unauthenticated(
                    "a join token only attests a node: give it to `trustmesh agent --join-token-file`".into(),
                ));
            }
        };
        Ok(Caller { principal, single_use })
    }

    /// The caller of `Attest`: the node a join token was minted for, with
    /// the token to spend once the CSR is checked.
    pub(super) async fn join_caller(&self, token: &str, node: &NodeId) -> Result<Caller, IssuerError> {
        if token.len() > 8 * 1024 {
            return Err(IssuerError::Unauthenticated("join token longer than 8 KiB".into()));
        }
        let (claims, single_use) = self.verified_claims(token, None).await?;
        if claims.kind != TokenKind::Join {
            return Err(IssuerError::Unauthenticated(format!("a {} token is not a join token", claims.kind)));
        }
        if claims.sub != node.as_str() {
            return Err(IssuerError::Unauthenticated(format!(
                "the join token was minted for node {}, not {node}",
                text::quoted(&claims.sub)
            )));
        }
        let Some(single_use) = single_use else {
            return Err(IssuerError::Unauthenticated("a join token must be single-use".into()));
        };
        Ok(Caller { principal: Principal::Node { id: node.to_string() }, single_use: Some(single_use) })
    }

    /// A node agent, authenticated by its node SVID (checked against the
    /// bundle by the TLS handshake; its serial against the revoked ones here).
    pub(super) fn agent_caller(node: &NodeId) -> Caller {
        Caller { principal: Principal::Node { id: node.to_string() }, single_use: None }
    }

    /// A token's signature and claims, and its single use still to spend.
    async fn verified_claims(
        &self,
        bearer: &str,
        thumbprint: Option<&str>,
    ) -> Result<(token::TokenClaims, Option<Arc<SingleUse>>), IssuerError> {
        let now = self.now().unix_timestamp();
        let keys = self.token_keys();
        // The signature once per token (remembered), every claim on every call.
        let value = keys.accepted.verify(bearer, &keys.verifying)?;
        let claims = token::check_claims(&value, &self.cfg.token_rules(), now, thumbprint)?;
        // A token already spent is refused here; one not yet spent is spent
        // only once the call is allowed and its input checked.
        let single_use = match claims.single_use {
            true if self.store.token_id_used(&claims.jti).await? => {
                return Err(IssuerError::Unauthenticated(format!("single-use token {} was already used", claims.jti)));
            }
            true => {
                Some(Arc::new(SingleUse { jti: claims.jti.clone(), exp: claims.exp, spent: AtomicBool::new(false) }))
            }
            false => None,
        };
        Ok((claims, single_use))
    }

    /// Spends the caller's single-use token, if it came with one: the step
    /// after which a call is committed to its effect. Idempotent within the
    /// call; a token another call spent first is refused.
    pub(crate) async fn spend(&self, caller: &Caller) -> Result<(), IssuerError> {
        let Some(token) = &caller.single_use else { return Ok(()) };
        if token.spent.swap(true, Ordering::AcqRel) {
            return Ok(());
        }
        if !self.store.consume_token_id(&token.jti, token.exp).await? {
            let err = IssuerError::Unauthenticated(format!("single-use token {} was already used", token.jti));
            return self.refuse(caller, AuditAction::SpendToken, &token.jti, err).await;
        }
        Ok(())
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
            // An issuance spends its token after checking its input (`issue`).
            return match action {
                Action::SignCsr
                | Action::IssueCertificate
                | Action::ObtainSvid
                | Action::UseDnsName
                | Action::UseProfile => Ok(()),
                _ => self.spend(caller).await,
            };
        }
        tracing::warn!(
            principal = %caller.actor(),
            action = %action,
            target = %text::quoted(target),
            reasons = ?decision.policy_ids,
            "Permission denied for action"
        );
        let what = format!("{action} on {}: {decision}", text::quoted(&resource.to_string()));
        self.refuse(caller, action.into(), target, IssuerError::PermissionDenied(what)).await
    }

    /// Refuses (audited, with `target` shortened) any `(field, value, max)`
    /// longer than its bound: the first check of every call, so nothing
    /// oversized is parsed, logged or recorded.
    pub(crate) async fn bounded(
        &self,
        caller: &Caller,
        action: AuditAction,
        target: &str,
        fields: &[(&str, &str, usize)],
    ) -> Result<(), IssuerError> {
        for (field, value, max) in fields {
            if let Err(e) = text::bounded(field, value, *max) {
                return self.refuse(caller, action, &text::quoted(target), IssuerError::InvalidArgument(e)).await;
            }
        }
        Ok(())
    }

    /// Runs a step; when it fails, the failure is audited and counted.
    pub(crate) async fn audited<T>(
        &self,
        caller: &Caller,
        action: AuditAction,
        target: &str,
        step: impl Future<Output = Result<T, IssuerError>>,
    ) -> Result<T, IssuerError> {
        match step.await {
            Ok(v) => Ok(v),
            Err(e) => self.refuse(caller, action, target, e).await,
        }
    }

    /// Refuses a call for what it sent (a server's own check of its wire
    /// form), audited and counted like every refusal here.
    pub async fn reject(&self, caller: &Caller, action: AuditAction, target: &str, reason: String) -> IssuerError {
        match self.refuse::<()>(caller, action, &text::quoted(target), IssuerError::InvalidArgument(reason)).await {
            Err(e) => e,
            Ok(()) => IssuerError::Internal("a refusal that was not one".into()),
        }
    }

    /// Audits, counts and returns a refusal.
    pub(crate) async fn refuse<T>(
        &self,
        caller: &Caller,
        action: AuditAction,
        target: &str,
        err: IssuerError,
    ) -> Result<T, IssuerError> {
        let outcome = match err {
            IssuerError::Unauthenticated(_) | IssuerError::PermissionDenied(_) | IssuerError::Denied { .. } => "denied",
            _ => "error",
        };
        let reason = err.to_string();
        let record = audit(caller, action, target, outcome, &reason, self.now().unix_timestamp());
        self.write_audit(&record).await;
        self.metrics.failure(err.kind());
        if !matches!(err, IssuerError::PermissionDenied(_)) {
            tracing::warn!(
                action = %action,
                target = %text::quoted(target),
                actor = %caller.actor(),
                error = %text::shorten(&reason, text::MAX_RECORDED),
                "request refused"
            );
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

/// An audit record of `caller`'s call.
pub(crate) fn audit(
    caller: &Caller,
    action: AuditAction,
    target: &str,
    outcome: &str,
    reason: &str,
    at: i64,
) -> AuditRecord {
    record(caller.actor(), action, target, outcome, reason, at)
}

/// The one constructor of audit records: what a caller sent is recorded at
/// most [`text::MAX_RECORDED`] bytes per field, whatever its size.
fn record(actor: String, action: AuditAction, target: &str, outcome: &str, reason: &str, at: i64) -> AuditRecord {
    let bound = |s: &str| text::shorten(s, text::MAX_RECORDED);
    AuditRecord {
        id: 0,
        at,
        actor: bound(&actor),
        action: action.as_str().to_string(),
        target: bound(target),
        outcome: outcome.to_string(),
        reason: bound(reason),
    }
}
