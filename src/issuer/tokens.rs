//! Minting trustmesh tokens.

use time::Duration;

use super::AuditAction;
use super::auth::{Caller, audit};
use super::{Issuer, IssuerError};
use crate::domain::{NodeId, SpiffeId, TokenKind, text};
use crate::policy::{Action, Resource};
use crate::token::{self, TokenClaims};

/// Longest lifetime of any minted token.
const MAX_TOKEN_LIFETIME: Duration = Duration::days(366);
/// A join token's lifetime unless `--expires-in` says otherwise (SPEC §12).
const JOIN_TOKEN_LIFETIME: Duration = Duration::minutes(10);

#[derive(Debug, Clone)]
pub struct MintRequest {
    pub kind: TokenKind,
    pub subject: String,
    /// 0 = the default for the kind (bootstrap: the configured bootstrap TTL;
    /// join: 10 minutes; others 24 h).
    pub expires_in_seconds: u64,
    pub single_use: bool,
    pub spiffe_ids: Vec<String>,
    /// base64url SHA-256 of the certificate the token is bound to.
    pub cert_fingerprint: Option<String>,
}

#[derive(Debug, Clone)]
pub struct Minted {
    pub token: String,
    pub jti: String,
    pub expires_at: i64,
}

impl Issuer {
    pub async fn mint_token(&self, caller: &Caller, req: &MintRequest) -> Result<Minted, IssuerError> {
        const ACTION: AuditAction = AuditAction::Policy(Action::MintToken);
        let target = format!("{}:{}", req.kind, text::quoted(&req.subject));
        self.authorize(caller, Action::MintToken, &Resource::Token(req.kind), &target).await?;
        let claims = self.audited(caller, ACTION, &target, async { self.token_claims(req) }).await?;
        let token = self.mint_unchecked(&claims)?;
        let reason = format!("jti {} expires {}", claims.jti, claims.exp);
        let log = audit(caller, ACTION, &target, "ok", &reason, claims.iat);
        self.store.append_audit(&log).await?;
        tracing::info!(kind = %req.kind, subject = %req.subject, jti = %claims.jti, expires_at = claims.exp, single_use = req.single_use, actor = %caller.actor(), "Token minted");
        Ok(Minted { token, jti: claims.jti, expires_at: claims.exp })
    }

    /// Mints without a caller: the admin token written at first start.
    pub(crate) fn mint_unchecked(&self, claims: &TokenClaims) -> Result<String, IssuerError> {
        token::mint(&self.token_keys().signer, claims).map_err(|e| IssuerError::Internal(e.to_string()))
    }

    /// Claims for a new token, validated.
    pub(crate) fn token_claims(&self, req: &MintRequest) -> Result<TokenClaims, IssuerError> {
        let subject = req.subject.trim();
        if subject.is_empty() || subject.len() > 256 || subject.chars().any(char::is_control) {
            return Err(IssuerError::InvalidArgument("token subject must be 1-256 printable characters".into()));
        }
        text::bounded_list("SPIFFE IDs", &req.spiffe_ids, text::MAX_LISTED_IDS, crate::domain::MAX_ID_LEN)
            .map_err(IssuerError::InvalidArgument)?;
        let spiffe_ids = req
            .spiffe_ids
            .iter()
            .map(|s| {
                let id = SpiffeId::parse(s)?;
                if !id.is_member_of(&self.cfg.trust_domain) {
                    return Err(IssuerError::InvalidArgument(format!(
                        "{id} is not in trust domain {}",
                        self.cfg.trust_domain
                    )));
                }
                Ok(id.to_string())
            })
            .collect::<Result<Vec<_>, IssuerError>>()?;
        if req.kind == TokenKind::Bootstrap && spiffe_ids.is_empty() {
            return Err(IssuerError::InvalidArgument(
                "a bootstrap token needs at least one --spiffe-id it may sign".into(),
            ));
        }
        if let Some(fp) = &req.cert_fingerprint {
            let ok = fp.len() == 43 && fp.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
            if !ok {
                return Err(IssuerError::InvalidArgument(
                    "--cert-fingerprint must be the base64url SHA-256 of a certificate (43 characters)".into(),
                ));
            }
        }
        if req.kind == TokenKind::Join {
            NodeId::parse(subject)?;
        }
        let lifetime = match (req.expires_in_seconds, req.kind) {
            (0, TokenKind::Bootstrap) => self.cfg.bootstrap_ttl,
            (0, TokenKind::Join) => JOIN_TOKEN_LIFETIME,
            (0, _) => Duration::hours(24),
            (s, _) => Duration::seconds(i64::try_from(s).unwrap_or(i64::MAX)),
        };
        if lifetime > MAX_TOKEN_LIFETIME {
            return Err(IssuerError::InvalidArgument("token lifetime longer than 366 days".into()));
        }
        let rules = self.cfg.token_rules();
        let now = self.now().unix_timestamp();
        Ok(TokenClaims {
            iss: rules.issuer,
            sub: subject.to_string(),
            aud: rules.audience,
            exp: now + lifetime.whole_seconds(),
            iat: now,
            nbf: Some(now),
            jti: token::new_jti(&ring::rand::SystemRandom::new()).map_err(|e| IssuerError::Internal(e.to_string()))?,
            kind: req.kind,
            // A join token attests one node once.
            single_use: req.single_use || req.kind == TokenKind::Join,
            spiffe_ids,
            cnf_x5t_s256: req.cert_fingerprint.clone(),
        })
    }
}

impl Issuer {
    /// The admin token written at first start: minted by the server itself,
    /// audited, never logged.
    pub async fn mint_initial_admin_token(&self, req: &MintRequest) -> Result<Minted, IssuerError> {
        let claims = self.token_claims(req)?;
        let token = self.mint_unchecked(&claims)?;
        let log = audit(
            &Caller::system(),
            AuditAction::Policy(Action::MintToken),
            &format!("admin:{}", claims.sub),
            "ok",
            &format!("jti {} (admin.token)", claims.jti),
            claims.iat,
        );
        self.store.append_audit(&log).await?;
        Ok(Minted { token, jti: claims.jti, expires_at: claims.exp })
    }
}
