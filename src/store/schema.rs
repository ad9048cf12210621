//! The schema: every table and index, created by the append-only migrations
//! in both dialects, and the schema version this binary understands.
//!
//! Boundary: this file holds the only table list. A backend applies
//! [`pending`] in one transaction (PostgreSQL under an advisory lock, so
//! replicas starting together migrate once) and records the version with the
//! statements of `statements.rs`. Both dialects accept `TRUE`/`FALSE`,
//! `ON CONFLICT`, `RETURNING` and partial indexes, so only the DDL's column
//! types differ (`BLOB`/`BYTEA`, the audit id, the change revision).
//!
//! Invariant: migrations are append-only. A released migration is never
//! edited; a schema change is a new entry at the end of [`MIGRATIONS`].

use super::{StoreError, StoreResult};

/// One schema step, in both dialects.
pub(super) struct Migration {
    pub version: i64,
    pub sqlite: &'static str,
    pub postgres: &'static str,
}

/// Every migration, oldest first; the last version is what this binary writes.
pub(super) const MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        sqlite: schema_v1!(blob = "BLOB", audit_id = "INTEGER PRIMARY KEY AUTOINCREMENT"),
        postgres: schema_v1!(blob = "BYTEA", audit_id = "BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY"),
    },
    Migration { version: 2, sqlite: SCHEMA_V2, postgres: SCHEMA_V2 },
    Migration {
        version: 3,
        sqlite: schema_v3!(revision = "INTEGER PRIMARY KEY AUTOINCREMENT"),
        postgres: schema_v3!(revision = "BIGSERIAL PRIMARY KEY"),
    },
    Migration { version: 4, sqlite: schema_v4!(blob = "BLOB"), postgres: schema_v4!(blob = "BYTEA") },
];

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

/// Version 1: one table per record type of `records.rs`.
macro_rules! schema_v1 {
    (blob = $blob:literal, audit_id = $audit_id:literal) => {
        concat!(
            "CREATE TABLE settings (key TEXT PRIMARY KEY, value TEXT NOT NULL);",
            "CREATE TABLE cas (id TEXT PRIMARY KEY,",
            " role TEXT NOT NULL CHECK (role IN ('root', 'services', 'transport')),",
            " common_name TEXT NOT NULL, cert_der ",
            $blob,
            " NOT NULL, sealed_key ",
            $blob,
            ",",
            " not_before BIGINT NOT NULL, not_after BIGINT NOT NULL, active BOOLEAN NOT NULL,",
            " created_at BIGINT NOT NULL);",
            "CREATE UNIQUE INDEX cas_one_active_per_role ON cas (role) WHERE active;",
            "CREATE TABLE signing_keys (kid TEXT PRIMARY KEY, purpose TEXT NOT NULL,",
            " public_key_der ",
            $blob,
            " NOT NULL, sealed_key ",
            $blob,
            " NOT NULL,",
            " created_at BIGINT NOT NULL, not_after BIGINT NOT NULL);",
            "CREATE TABLE certificates (serial TEXT PRIMARY KEY, spiffe_id TEXT NOT NULL,",
            " issuer_id TEXT NOT NULL REFERENCES cas (id), fingerprint TEXT NOT NULL,",
            " not_before BIGINT NOT NULL, not_after BIGINT NOT NULL,",
            " status TEXT NOT NULL CHECK (status IN ('active', 'revoked')),",
            " revoked_at BIGINT, revocation_reason TEXT, cert_der ",
            $blob,
            " NOT NULL);",
            "CREATE INDEX certificates_spiffe_id ON certificates (spiffe_id);",
            "CREATE INDEX certificates_not_after ON certificates (not_after);",
            "CREATE INDEX certificates_issuer_status ON certificates (issuer_id, status);",
            "CREATE TABLE deny_list (spiffe_id TEXT PRIMARY KEY, reason TEXT NOT NULL,",
            " denied_at BIGINT NOT NULL, denied_by TEXT NOT NULL);",
            "CREATE TABLE used_tokens (jti TEXT PRIMARY KEY, expires_at BIGINT NOT NULL);",
            "CREATE INDEX used_tokens_expires_at ON used_tokens (expires_at);",
            "CREATE TABLE audit (id ",
            $audit_id,
            ", at BIGINT NOT NULL, actor TEXT NOT NULL,",
            " action TEXT NOT NULL, target TEXT NOT NULL, outcome TEXT NOT NULL, reason TEXT NOT NULL);",
            "CREATE INDEX audit_at ON audit (at);",
            "CREATE INDEX audit_target ON audit (target);",
        )
    };
}
use schema_v1;

/// Version 2: registration entries. Lists are JSON arrays of strings;
/// `match_key` (SHA-256 of the SPIFFE ID and the sorted selector set) makes
/// the same identity with the same selectors unique without indexing long text.
const SCHEMA_V2: &str = "CREATE TABLE entries (id TEXT PRIMARY KEY, spiffe_id TEXT NOT NULL, \
     match_key TEXT NOT NULL UNIQUE, selectors TEXT NOT NULL, dns_names TEXT NOT NULL, ttl_seconds BIGINT, \
     jwt_ttl_seconds BIGINT, hint TEXT, federates_with TEXT NOT NULL, created_at BIGINT NOT NULL);\
     CREATE INDEX entries_created_at ON entries (created_at, id);";

/// Version 3: the change feed (statements in `changes.rs`). SQLite's
/// `AUTOINCREMENT` never reuses a revision, even after the newest rows are
/// purged; `at` is indexed for the purge.
macro_rules! schema_v3 {
    (revision = $revision:literal) => {
        concat!(
            "CREATE TABLE changes (revision ",
            $revision,
            ", kind TEXT NOT NULL, subject TEXT NOT NULL, at BIGINT NOT NULL);",
            "CREATE INDEX changes_at ON changes (at);",
        )
    };
}
use schema_v3;

/// Version 4: CRLs signed elsewhere for CAs whose key is offline (one per CA,
/// the newest by CRL number).
macro_rules! schema_v4 {
    (blob = $blob:literal) => {
        concat!(
            "CREATE TABLE imported_crls (issuer_id TEXT PRIMARY KEY REFERENCES cas (id), crl_der ",
            $blob,
            " NOT NULL, number BIGINT NOT NULL, this_update BIGINT NOT NULL, next_update BIGINT NOT NULL,",
            " imported_at BIGINT NOT NULL);",
        )
    };
}
use schema_v4;
