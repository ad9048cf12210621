//! Every statement both backends run, with its bound values ([`Stmt`]).
//!
//! Boundary: this file holds the only copy of each statement — those of the
//! CAs live next door in `cas.rs`, those of the registration entries in
//! `entries.rs`, those of the change feed in `changes.rs`, all built with the same [`Stmt`] and [`stmt!`]; a
//! backend only executes them. The tables they run against are created in
//! `schema.rs`. Statements use PostgreSQL placeholders (`$1`); the SQLite
//! backend rewrites them to `?1`. Both dialects accept `TRUE`/`FALSE`,
//! `ON CONFLICT` and `RETURNING`, so one text serves both.

use std::borrow::Cow;

use crate::domain::RevocationReason;

use super::{AuditFilter, AuditRecord, CertFilter, CertRecord, CertStatus, DenyRecord};
use super::{ImportedCrlRecord, SigningKeyRecord, StoreError};

/// One statement and the values bound to `$1`, `$2`, ….
pub(super) struct Stmt {
    pub sql: Cow<'static, str>,
    pub params: Vec<Param>,
    /// What a unique-key violation collided with, for `StoreError::Conflict`.
    pub conflict: Option<String>,
}

/// A bound value; the `Opt*` variants carry SQL `NULL`s with their type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Param {
    Int(i64),
    OptInt(Option<i64>),
    Text(String),
    OptText(Option<String>),
    Bytes(Vec<u8>),
    OptBytes(Option<Vec<u8>>),
}

impl Stmt {
    /// The error to return for a backend error: a `Conflict` is named after
    /// the colliding record.
    pub(super) fn error(&self, e: StoreError) -> StoreError {
        match (e, &self.conflict) {
            (StoreError::Conflict { .. }, Some(what)) => StoreError::Conflict { what: what.clone() },
            (e, _) => e,
        }
    }

    pub(super) fn on_conflict(mut self, what: String) -> Self {
        self.conflict = Some(what);
        self
    }
}

macro_rules! stmt {
    ($sql:expr $(, $value:expr)* $(,)?) => {
        Stmt { sql: std::borrow::Cow::Borrowed($sql), params: vec![$(Param::from($value)),*], conflict: None }
    };
}
pub(super) use stmt;

/// The schema version recorded by the last migration (0 on a new database).
pub(super) fn select_version() -> Stmt {
    stmt!("SELECT COALESCE(MAX(version), 0) AS version FROM schema_version")
}

/// Records `version` as the schema version, in the migrations' transaction.
pub(super) fn set_version(version: i64) -> [Stmt; 2] {
    [stmt!("DELETE FROM schema_version"), stmt!("INSERT INTO schema_version (version) VALUES ($1)", version)]
}

pub(super) fn ping() -> Stmt {
    stmt!("SELECT 1")
}

pub(super) fn select_setting(key: &str) -> Stmt {
    stmt!("SELECT value FROM settings WHERE key = $1", key)
}

pub(super) fn insert_setting(key: &str, value: &str) -> Stmt {
    stmt!("INSERT INTO settings (key, value) VALUES ($1, $2) ON CONFLICT (key) DO NOTHING", key, value)
}

pub(super) fn insert_key(k: &SigningKeyRecord) -> Stmt {
    let sql = "INSERT INTO signing_keys (kid, purpose, public_key_der, sealed_key, created_at, not_after) \
               VALUES ($1, $2, $3, $4, $5, $6)";
    stmt!(sql, &k.kid, &k.purpose, &k.public_key_der, &k.sealed_key, k.created_at, k.not_after)
        .on_conflict(format!("signing key {}", k.kid))
}

/// Stores an imported CRL unless the stored one for that CA has a CRL number
/// as high or higher (a replayed or older CRL changes nothing).
pub(super) fn upsert_imported_crl(c: &ImportedCrlRecord) -> Stmt {
    let sql = "INSERT INTO imported_crls (issuer_id, crl_der, number, this_update, next_update, imported_at) \
               VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (issuer_id) DO UPDATE SET crl_der = excluded.crl_der, \
               number = excluded.number, this_update = excluded.this_update, next_update = excluded.next_update, \
               imported_at = excluded.imported_at WHERE imported_crls.number < excluded.number";
    stmt!(sql, &c.issuer_id, &c.crl_der, c.number, c.this_update, c.next_update, c.imported_at)
}

pub(super) fn select_imported_crls() -> Stmt {
    stmt!("SELECT * FROM imported_crls ORDER BY issuer_id")
}

pub(super) fn select_keys() -> Stmt {
    stmt!("SELECT * FROM signing_keys ORDER BY created_at, kid")
}

/// Inserts a certificate unless its identity is on the deny list (no row
/// changed then).
pub(super) fn insert_cert(c: &CertRecord) -> Stmt {
    let sql = "INSERT INTO certificates (serial, spiffe_id, issuer_id, fingerprint, not_before, not_after, \
               status, revoked_at, revocation_reason, cert_der, mount, profile, common_name, node) \
               SELECT $1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14 \
               WHERE NOT EXISTS (SELECT 1 FROM deny_list WHERE spiffe_id = $2)";
    let status = status_str(c.status);
    let mount = c.profile.as_ref().map(|p| p.mount.clone());
    let profile = c.profile.as_ref().map(|p| p.name.clone());
    stmt!(
        sql,
        &c.serial,
        &c.spiffe_id,
        &c.issuer_id,
        &c.fingerprint,
        c.not_before,
        c.not_after,
        status,
        c.revoked_at,
        &c.revocation_reason,
        &c.cert_der,
        &mount,
        &profile,
        &c.common_name,
        &c.node
    )
    .on_conflict(format!("certificate serial {}", c.serial))
}

pub(super) fn select_cert(serial: &str) -> Stmt {
    stmt!("SELECT * FROM certificates WHERE serial = $1", serial)
}

pub(super) fn count_active(now: i64) -> Stmt {
    stmt!("SELECT COUNT(*) AS n FROM certificates WHERE status = 'active' AND not_after > $1", now)
}

/// Revokes one active certificate, returning its row after the change.
pub(super) fn revoke_one(serial: &str, reason: &str, at: i64) -> Stmt {
    let sql = "UPDATE certificates SET status = 'revoked', revoked_at = $2, revocation_reason = $3 \
               WHERE serial = $1 AND status = 'active' RETURNING *";
    stmt!(sql, serial, at, reason)
}

/// Every issuer's revoked unexpired certificates, by issuer.
pub(super) fn select_revoked_all(now: i64) -> Stmt {
    let sql = "SELECT serial, revoked_at, revocation_reason, not_after, issuer_id, spiffe_id, fingerprint \
               FROM certificates WHERE status = 'revoked' AND not_after > $1 \
               ORDER BY issuer_id, revoked_at, serial";
    stmt!(sql, now)
}

/// Revokes every unexpired active certificate of `e`'s identity, returning
/// them as CRL entries. The reason is the deny reason when that is an RFC
/// 5280 reason name, `cessationOfOperation` otherwise.
pub(super) fn revoke_identity(e: &DenyRecord, now: i64) -> Stmt {
    let sql = "UPDATE certificates SET status = 'revoked', revoked_at = $2, revocation_reason = $3 \
               WHERE spiffe_id = $1 AND status = 'active' AND not_after > $2 \
               RETURNING serial, revoked_at, revocation_reason, not_after, issuer_id, spiffe_id, fingerprint";
    let reason = e.reason.parse::<RevocationReason>().map_or(RevocationReason::CessationOfOperation, |r| r).as_str();
    stmt!(sql, &e.spiffe_id, now, reason)
}

pub(super) fn purge_certs(not_after_before: i64) -> Stmt {
    stmt!("DELETE FROM certificates WHERE not_after <= $1", not_after_before)
}

/// Adds a deny-list entry, or updates only the reason of an existing one.
pub(super) fn upsert_deny(e: &DenyRecord) -> Stmt {
    let sql = "INSERT INTO deny_list (spiffe_id, reason, denied_at, denied_by) VALUES ($1, $2, $3, $4) \
               ON CONFLICT (spiffe_id) DO UPDATE SET reason = excluded.reason";
    stmt!(sql, &e.spiffe_id, &e.reason, e.denied_at, &e.denied_by)
}

pub(super) fn delete_deny(spiffe_id: &str) -> Stmt {
    stmt!("DELETE FROM deny_list WHERE spiffe_id = $1", spiffe_id)
}

pub(super) fn select_deny(spiffe_id: &str) -> Stmt {
    stmt!("SELECT * FROM deny_list WHERE spiffe_id = $1", spiffe_id)
}

pub(super) fn select_deny_list() -> Stmt {
    stmt!("SELECT * FROM deny_list ORDER BY denied_at, spiffe_id")
}

/// Changes one row when `jti` is new, none when it was used (a replay).
pub(super) fn insert_token(jti: &str, expires_at: i64) -> Stmt {
    let sql = "INSERT INTO used_tokens (jti, expires_at) VALUES ($1, $2) ON CONFLICT (jti) DO NOTHING";
    stmt!(sql, jti, expires_at)
}

pub(super) fn select_token(jti: &str) -> Stmt {
    stmt!("SELECT COUNT(*) AS n FROM used_tokens WHERE jti = $1", jti)
}

pub(super) fn purge_tokens(now: i64) -> Stmt {
    stmt!("DELETE FROM used_tokens WHERE expires_at <= $1", now)
}

/// The store assigns the id.
pub(super) fn insert_audit(a: &AuditRecord) -> Stmt {
    let sql = "INSERT INTO audit (at, actor, action, target, outcome, reason) VALUES ($1, $2, $3, $4, $5, $6)";
    stmt!(sql, a.at, &a.actor, &a.action, &a.target, &a.outcome, &a.reason)
}

/// Newest `not_before` first.
pub(super) fn certificates(f: &CertFilter) -> Stmt {
    let mut q = Filtered::new("SELECT * FROM certificates");
    q.and("spiffe_id =", f.spiffe_id.as_ref());
    q.and("not_after <=", f.expiring_before);
    q.and("not_after >", f.unexpired_at);
    q.and("mount =", f.mount.as_ref());
    q.and("node =", f.node.as_ref());
    q.finish("not_before DESC, serial DESC", f.limit)
}

/// The newest `limit` (default 1000) records, newest first: callers reverse.
pub(super) fn audit(f: &AuditFilter) -> Stmt {
    let mut q = Filtered::new("SELECT * FROM audit");
    q.and("at >=", f.since);
    q.and("target =", f.target.as_ref());
    q.and("id <", f.before_id);
    q.finish("id DESC", Some(f.limit.unwrap_or(1000)))
}

pub(super) fn status_str(status: CertStatus) -> &'static str {
    match status {
        CertStatus::Active => "active",
        CertStatus::Revoked => "revoked",
    }
}

/// A `SELECT … WHERE … ORDER BY … LIMIT` built from optional conditions.
struct Filtered(Stmt);

impl Filtered {
    fn new(select: &str) -> Self {
        Self(Stmt { sql: Cow::Owned(select.to_string()), params: Vec::new(), conflict: None })
    }

    /// Adds `AND <condition> $n` when `value` is given.
    fn and<T: Into<Param>>(&mut self, condition: &str, value: Option<T>) {
        let Some(value) = value else { return };
        self.0.params.push(value.into());
        let keyword = if self.0.params.len() == 1 { "WHERE" } else { "AND" };
        let n = self.0.params.len();
        self.0.sql.to_mut().push_str(&format!(" {keyword} {condition} ${n}"));
    }

    fn finish(mut self, order: &str, limit: Option<u32>) -> Stmt {
        self.0.sql.to_mut().push_str(&format!(" ORDER BY {order}"));
        if let Some(limit) = limit {
            self.0.params.push(Param::Int(i64::from(limit)));
            let n = self.0.params.len();
            self.0.sql.to_mut().push_str(&format!(" LIMIT ${n}"));
        }
        self.0
    }
}

macro_rules! param_from {
    ($($t:ty => |$v:ident| $e:expr),* $(,)?) => {
        $(impl From<$t> for Param { fn from($v: $t) -> Self { $e } })*
    };
}

param_from! {
    i64 => |v| Param::Int(v),
    Option<i64> => |v| Param::OptInt(v),
    &str => |v| Param::Text(v.to_string()),
    &String => |v| Param::Text(v.clone()),
    &Option<String> => |v| Param::OptText(v.clone()),
    &Vec<u8> => |v| Param::Bytes(v.clone()),
    &Option<Vec<u8>> => |v| Param::OptBytes(v.clone()),
}
