//! The schema and the SQL both backends run against it.
//!
//! Boundary: this file holds the only table list and the only copy of every
//! statement. Statements are written once with PostgreSQL placeholders (`$1`);
//! the SQLite backend rewrites them to `?1` (see `sqlite::positional`). Both
//! dialects accept `TRUE`/`FALSE`, `ON CONFLICT … DO NOTHING`, `RETURNING` and
//! partial indexes, so only column types differ (`BLOB`/`BYTEA`, the audit id).
//!
//! Invariant: migrations are append-only. A released migration is never
//! edited; a schema change is a new entry at the end of [`MIGRATIONS`].

use super::{AuditFilter, CaRecord, CaRole, CertFilter, CertRecord, CertStatus, DenyRecord};
use super::{AuditRecord, RevokedEntry, SigningKeyRecord, StoreError, StoreResult};

/// One schema step, in both dialects.
pub(super) struct Migration {
    pub version: i64,
    pub sqlite: &'static str,
    pub postgres: &'static str,
}

/// Every migration, oldest first; the last version is what this binary writes.
pub(super) const MIGRATIONS: &[Migration] = &[Migration {
    version: 1,
    sqlite: schema_v1!(blob = "BLOB", audit_id = "INTEGER PRIMARY KEY AUTOINCREMENT"),
    postgres: schema_v1!(blob = "BYTEA", audit_id = "BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY"),
}];

/// The schema version this binary understands.
pub(super) fn latest_version() -> i64 {
    MIGRATIONS.last().map_or(0, |m| m.version)
}

/// The migrations a database at version `found` still needs, or
/// `SchemaTooNew` when it was written by a newer binary.
pub(super) fn pending(found: i64) -> StoreResult<impl Iterator<Item = &'static Migration>> {
    let supported = latest_version();
    if found > supported {
        return Err(StoreError::SchemaTooNew { found, supported });
    }
    Ok(MIGRATIONS.iter().filter(move |m| m.version > found))
}

/// Created before anything else, so the version can be read on any database.
pub(super) const CREATE_VERSION_TABLE: &str = "CREATE TABLE IF NOT EXISTS schema_version (version BIGINT NOT NULL)";
pub(super) const SELECT_VERSION: &str = "SELECT COALESCE(MAX(version), 0) FROM schema_version";
pub(super) const CLEAR_VERSION: &str = "DELETE FROM schema_version";
pub(super) const INSERT_VERSION: &str = "INSERT INTO schema_version (version) VALUES ($1)";

/// Version 1: one table per record type of `store::mod`.
macro_rules! schema_v1 {
    (blob = $blob:literal, audit_id = $audit_id:literal) => {
        concat!(
            "CREATE TABLE settings (key TEXT PRIMARY KEY, value TEXT NOT NULL);",
            "CREATE TABLE cas (id TEXT PRIMARY KEY,",
            " role TEXT NOT NULL CHECK (role IN ('root', 'services', 'transport')),",
            " common_name TEXT NOT NULL, cert_der ", $blob, " NOT NULL, sealed_key ", $blob, ",",
            " not_before BIGINT NOT NULL, not_after BIGINT NOT NULL, active BOOLEAN NOT NULL,",
            " created_at BIGINT NOT NULL);",
            "CREATE UNIQUE INDEX cas_one_active_per_role ON cas (role) WHERE active;",
            "CREATE TABLE signing_keys (kid TEXT PRIMARY KEY, purpose TEXT NOT NULL,",
            " public_key_der ", $blob, " NOT NULL, sealed_key ", $blob, " NOT NULL,",
            " created_at BIGINT NOT NULL, not_after BIGINT NOT NULL);",
            "CREATE TABLE certificates (serial TEXT PRIMARY KEY, spiffe_id TEXT NOT NULL,",
            " issuer_id TEXT NOT NULL REFERENCES cas (id), fingerprint TEXT NOT NULL,",
            " not_before BIGINT NOT NULL, not_after BIGINT NOT NULL,",
            " status TEXT NOT NULL CHECK (status IN ('active', 'revoked')),",
            " revoked_at BIGINT, revocation_reason TEXT, cert_der ", $blob, " NOT NULL);",
            "CREATE INDEX certificates_spiffe_id ON certificates (spiffe_id);",
            "CREATE INDEX certificates_not_after ON certificates (not_after);",
            "CREATE INDEX certificates_issuer_status ON certificates (issuer_id, status);",
            "CREATE TABLE deny_list (spiffe_id TEXT PRIMARY KEY, reason TEXT NOT NULL,",
            " denied_at BIGINT NOT NULL, denied_by TEXT NOT NULL);",
            "CREATE TABLE used_tokens (jti TEXT PRIMARY KEY, expires_at BIGINT NOT NULL);",
            "CREATE INDEX used_tokens_expires_at ON used_tokens (expires_at);",
            "CREATE TABLE audit (id ", $audit_id, ", at BIGINT NOT NULL, actor TEXT NOT NULL,",
            " action TEXT NOT NULL, target TEXT NOT NULL, outcome TEXT NOT NULL, reason TEXT NOT NULL);",
            "CREATE INDEX audit_at ON audit (at);",
            "CREATE INDEX audit_target ON audit (target);",
        )
    };
}
use schema_v1;

// Column lists, in the order the `*_from_row` decoders read them.
macro_rules! ca_cols { () => { "id, role, common_name, cert_der, sealed_key, not_before, not_after, active, created_at" }; }
macro_rules! key_cols { () => { "kid, purpose, public_key_der, sealed_key, created_at, not_after" }; }
macro_rules! cert_cols { () => { "serial, spiffe_id, issuer_id, fingerprint, not_before, not_after, status, revoked_at, revocation_reason, cert_der" }; }
macro_rules! deny_cols { () => { "spiffe_id, reason, denied_at, denied_by" }; }
macro_rules! audit_cols { () => { "id, at, actor, action, target, outcome, reason" }; }

pub(super) const PING: &str = "SELECT 1";
pub(super) const SELECT_SETTING: &str = "SELECT value FROM settings WHERE key = $1";
pub(super) const INSERT_SETTING: &str = "INSERT INTO settings (key, value) VALUES ($1, $2) ON CONFLICT (key) DO NOTHING";

pub(super) const COUNT_ROOTS: &str = "SELECT COUNT(*) FROM cas WHERE role = 'root'";
pub(super) const DEACTIVATE_ROLE: &str = "UPDATE cas SET active = FALSE WHERE role = $1 AND active AND id <> $2";
pub(super) const INSERT_CA: &str = concat!("INSERT INTO cas (", ca_cols!(), ") VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)");
pub(super) const SELECT_CAS: &str = concat!("SELECT ", ca_cols!(), " FROM cas ORDER BY created_at, id");

pub(super) const INSERT_KEY: &str = concat!("INSERT INTO signing_keys (", key_cols!(), ") VALUES ($1, $2, $3, $4, $5, $6)");
pub(super) const SELECT_KEYS: &str = concat!("SELECT ", key_cols!(), " FROM signing_keys ORDER BY created_at, kid");

pub(super) const INSERT_CERT: &str =
    concat!("INSERT INTO certificates (", cert_cols!(), ") VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)");
pub(super) const SELECT_CERT: &str = concat!("SELECT ", cert_cols!(), " FROM certificates WHERE serial = $1");
pub(super) const COUNT_ACTIVE: &str = "SELECT COUNT(*) FROM certificates WHERE status = 'active' AND not_after > $1";
pub(super) const REVOKE_ONE: &str = "UPDATE certificates SET status = 'revoked', revoked_at = $2, revocation_reason = $3 \
     WHERE serial = $1 AND status = 'active'";
pub(super) const CERT_EXISTS: &str = "SELECT COUNT(*) FROM certificates WHERE serial = $1";
pub(super) const SELECT_REVOKED: &str = "SELECT serial, revoked_at, revocation_reason, not_after FROM certificates \
     WHERE issuer_id = $1 AND status = 'revoked' AND not_after > $2 ORDER BY revoked_at, serial";
pub(super) const REVOKE_IDENTITY: &str = "UPDATE certificates SET status = 'revoked', revoked_at = $2, revocation_reason = $3 \
     WHERE spiffe_id = $1 AND status = 'active' AND not_after > $2 RETURNING serial";
pub(super) const PURGE_CERTS: &str = "DELETE FROM certificates WHERE not_after <= $1";

pub(super) const UPSERT_DENY: &str = concat!(
    "INSERT INTO deny_list (",
    deny_cols!(),
    ") VALUES ($1, $2, $3, $4) ON CONFLICT (spiffe_id) DO UPDATE SET reason = excluded.reason"
);
pub(super) const DELETE_DENY: &str = "DELETE FROM deny_list WHERE spiffe_id = $1";
pub(super) const SELECT_DENY: &str = concat!("SELECT ", deny_cols!(), " FROM deny_list WHERE spiffe_id = $1");
pub(super) const SELECT_DENY_LIST: &str = concat!("SELECT ", deny_cols!(), " FROM deny_list ORDER BY denied_at, spiffe_id");

pub(super) const INSERT_TOKEN: &str = "INSERT INTO used_tokens (jti, expires_at) VALUES ($1, $2) ON CONFLICT (jti) DO NOTHING";
pub(super) const PURGE_TOKENS: &str = "DELETE FROM used_tokens WHERE expires_at <= $1";

pub(super) const INSERT_AUDIT: &str =
    "INSERT INTO audit (at, actor, action, target, outcome, reason) VALUES ($1, $2, $3, $4, $5, $6)";

/// A bound value of a query built at run time (the list filters).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Param {
    Int(i64),
    Text(String),
}

/// `certificates(filter)`: newest `not_before` first.
pub(super) fn certificates_query(f: &CertFilter) -> (String, Vec<Param>) {
    let mut q = Query::new(concat!("SELECT ", cert_cols!(), " FROM certificates"));
    if let Some(id) = &f.spiffe_id {
        q.and("spiffe_id =", Param::Text(id.clone()));
    }
    if let Some(before) = f.expiring_before {
        q.and("not_after <=", Param::Int(before));
    }
    if let Some(now) = f.unexpired_at {
        q.and("not_after >", Param::Int(now));
    }
    q.finish("not_before DESC, serial DESC", f.limit)
}

/// `audit(filter)`: the newest `limit` records, newest first (callers reverse).
pub(super) fn audit_query(f: &AuditFilter) -> (String, Vec<Param>) {
    let mut q = Query::new(concat!("SELECT ", audit_cols!(), " FROM audit"));
    if let Some(since) = f.since {
        q.and("at >=", Param::Int(since));
    }
    if let Some(target) = &f.target {
        q.and("target =", Param::Text(target.clone()));
    }
    q.finish("at DESC, id DESC", Some(f.limit.unwrap_or(DEFAULT_AUDIT_LIMIT)))
}

const DEFAULT_AUDIT_LIMIT: u32 = 1000;

/// The revocation reason `deny` writes: the deny reason when it is an RFC 5280
/// reason name, `cessationOfOperation` otherwise.
pub(super) fn deny_revocation_reason(reason: &str) -> &str {
    const RFC5280: [&str; 10] = [
        "unspecified",
        "keyCompromise",
        "cACompromise",
        "affiliationChanged",
        "superseded",
        "cessationOfOperation",
        "certificateHold",
        "removeFromCRL",
        "privilegeWithdrawn",
        "aACompromise",
    ];
    if RFC5280.contains(&reason) { reason } else { "cessationOfOperation" }
}

/// Names a `Conflict` after the record that collided (the backends only know
/// the constraint).
pub(super) fn conflict_on(what: impl FnOnce() -> String) -> impl FnOnce(StoreError) -> StoreError {
    move |e| match e {
        StoreError::Conflict { .. } => StoreError::Conflict { what: what() },
        other => other,
    }
}

/// Column access both drivers provide; decode failures are `Corrupt`.
pub(super) trait Row {
    fn int(&self, i: usize) -> StoreResult<i64>;
    fn opt_int(&self, i: usize) -> StoreResult<Option<i64>>;
    fn text(&self, i: usize) -> StoreResult<String>;
    fn opt_text(&self, i: usize) -> StoreResult<Option<String>>;
    fn bytes(&self, i: usize) -> StoreResult<Vec<u8>>;
    fn opt_bytes(&self, i: usize) -> StoreResult<Option<Vec<u8>>>;
    fn boolean(&self, i: usize) -> StoreResult<bool>;
}

pub(super) fn ca_from_row(r: &dyn Row) -> StoreResult<CaRecord> {
    let role = r.text(1)?;
    Ok(CaRecord {
        id: r.text(0)?,
        role: CaRole::parse(&role).ok_or_else(|| StoreError::Corrupt(format!("unknown CA role {role:?}")))?,
        common_name: r.text(2)?,
        cert_der: r.bytes(3)?,
        sealed_key: r.opt_bytes(4)?,
        not_before: r.int(5)?,
        not_after: r.int(6)?,
        active: r.boolean(7)?,
        created_at: r.int(8)?,
    })
}

pub(super) fn key_from_row(r: &dyn Row) -> StoreResult<SigningKeyRecord> {
    Ok(SigningKeyRecord {
        kid: r.text(0)?,
        purpose: r.text(1)?,
        public_key_der: r.bytes(2)?,
        sealed_key: r.bytes(3)?,
        created_at: r.int(4)?,
        not_after: r.int(5)?,
    })
}

pub(super) fn cert_from_row(r: &dyn Row) -> StoreResult<CertRecord> {
    Ok(CertRecord {
        serial: r.text(0)?,
        spiffe_id: r.text(1)?,
        issuer_id: r.text(2)?,
        fingerprint: r.text(3)?,
        not_before: r.int(4)?,
        not_after: r.int(5)?,
        status: status_from_str(&r.text(6)?)?,
        revoked_at: r.opt_int(7)?,
        revocation_reason: r.opt_text(8)?,
        cert_der: r.bytes(9)?,
    })
}

pub(super) fn revoked_from_row(r: &dyn Row) -> StoreResult<RevokedEntry> {
    Ok(RevokedEntry {
        serial: r.text(0)?,
        revoked_at: r.opt_int(1)?.unwrap_or_default(),
        reason: r.opt_text(2)?,
        not_after: r.int(3)?,
    })
}

pub(super) fn deny_from_row(r: &dyn Row) -> StoreResult<DenyRecord> {
    Ok(DenyRecord { spiffe_id: r.text(0)?, reason: r.text(1)?, denied_at: r.int(2)?, denied_by: r.text(3)? })
}

pub(super) fn audit_from_row(r: &dyn Row) -> StoreResult<AuditRecord> {
    Ok(AuditRecord {
        id: r.int(0)?,
        at: r.int(1)?,
        actor: r.text(2)?,
        action: r.text(3)?,
        target: r.text(4)?,
        outcome: r.text(5)?,
        reason: r.text(6)?,
    })
}

pub(super) fn status_str(status: CertStatus) -> &'static str {
    match status {
        CertStatus::Active => "active",
        CertStatus::Revoked => "revoked",
    }
}

fn status_from_str(s: &str) -> StoreResult<CertStatus> {
    match s {
        "active" => Ok(CertStatus::Active),
        "revoked" => Ok(CertStatus::Revoked),
        other => Err(StoreError::Corrupt(format!("unknown certificate status {other:?}"))),
    }
}

/// A `SELECT … WHERE … ORDER BY … LIMIT` with numbered placeholders.
struct Query {
    sql: String,
    params: Vec<Param>,
}

impl Query {
    fn new(select: &str) -> Self {
        Self { sql: select.to_string(), params: Vec::new() }
    }

    fn and(&mut self, condition: &str, value: Param) {
        self.params.push(value);
        let keyword = if self.params.len() == 1 { "WHERE" } else { "AND" };
        self.sql.push_str(&format!(" {keyword} {condition} ${}", self.params.len()));
    }

    fn finish(mut self, order: &str, limit: Option<u32>) -> (String, Vec<Param>) {
        self.sql.push_str(" ORDER BY ");
        self.sql.push_str(order);
        if let Some(limit) = limit {
            self.params.push(Param::Int(i64::from(limit)));
            self.sql.push_str(&format!(" LIMIT ${}", self.params.len()));
        }
        (self.sql, self.params)
    }
}
