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
    Migration { version: 5, sqlite: SQLITE_V5, postgres: POSTGRES_V5 },
    Migration { version: 6, sqlite: SQLITE_V6, postgres: POSTGRES_V6 },
    Migration { version: 7, sqlite: SCHEMA_V7, postgres: SCHEMA_V7 },
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

/// Version 5: issuance profiles (Vault roles, statements in `profiles.rs`),
/// the `profiles` CA role, and on each certificate the mount and profile it
/// was issued under and its CN.
///
/// SQLite cannot change a CHECK constraint in place, and its foreign keys
/// stay on inside the migrations' transaction, so `cas` is rebuilt with the
/// tables that reference it: each is renamed aside (a renamed parent takes
/// its children's references along), recreated, refilled, and the old ones
/// dropped children first, so no reference ever dangles.
const SQLITE_V5: &str = concat!(
    "ALTER TABLE certificates RENAME TO certificates_v4;",
    "ALTER TABLE imported_crls RENAME TO imported_crls_v4;",
    "ALTER TABLE cas RENAME TO cas_v4;",
    "CREATE TABLE cas (id TEXT PRIMARY KEY,",
    " role TEXT NOT NULL CHECK (role IN ('root', 'services', 'transport', 'profiles')),",
    " common_name TEXT NOT NULL, cert_der BLOB NOT NULL, sealed_key BLOB,",
    " not_before BIGINT NOT NULL, not_after BIGINT NOT NULL, active BOOLEAN NOT NULL,",
    " created_at BIGINT NOT NULL);",
    "INSERT INTO cas SELECT id, role, common_name, cert_der, sealed_key, not_before, not_after, active, created_at",
    " FROM cas_v4;",
    "CREATE TABLE certificates (serial TEXT PRIMARY KEY, spiffe_id TEXT NOT NULL,",
    " issuer_id TEXT NOT NULL REFERENCES cas (id), fingerprint TEXT NOT NULL,",
    " not_before BIGINT NOT NULL, not_after BIGINT NOT NULL,",
    " status TEXT NOT NULL CHECK (status IN ('active', 'revoked')),",
    " revoked_at BIGINT, revocation_reason TEXT, cert_der BLOB NOT NULL,",
    " mount TEXT, profile TEXT, common_name TEXT);",
    "INSERT INTO certificates (serial, spiffe_id, issuer_id, fingerprint, not_before, not_after, status,",
    " revoked_at, revocation_reason, cert_der) SELECT serial, spiffe_id, issuer_id, fingerprint, not_before,",
    " not_after, status, revoked_at, revocation_reason, cert_der FROM certificates_v4;",
    "CREATE TABLE imported_crls (issuer_id TEXT PRIMARY KEY REFERENCES cas (id), crl_der BLOB NOT NULL,",
    " number BIGINT NOT NULL, this_update BIGINT NOT NULL, next_update BIGINT NOT NULL,",
    " imported_at BIGINT NOT NULL);",
    "INSERT INTO imported_crls SELECT issuer_id, crl_der, number, this_update, next_update, imported_at",
    " FROM imported_crls_v4;",
    "DROP TABLE imported_crls_v4;",
    "DROP TABLE certificates_v4;",
    "DROP TABLE cas_v4;",
    "CREATE UNIQUE INDEX cas_one_active_per_role ON cas (role) WHERE active;",
    "CREATE INDEX certificates_spiffe_id ON certificates (spiffe_id);",
    "CREATE INDEX certificates_not_after ON certificates (not_after);",
    "CREATE INDEX certificates_issuer_status ON certificates (issuer_id, status);",
    "CREATE INDEX certificates_mount ON certificates (mount, not_before) WHERE mount IS NOT NULL;",
    "CREATE TABLE profiles (mount TEXT NOT NULL, name TEXT NOT NULL, spec TEXT NOT NULL,",
    " created_at BIGINT NOT NULL, updated_at BIGINT NOT NULL, PRIMARY KEY (mount, name));",
);

/// Version 5 on PostgreSQL, which changes the constraint and adds the columns in place.
const POSTGRES_V5: &str = concat!(
    "ALTER TABLE cas DROP CONSTRAINT cas_role_check;",
    "ALTER TABLE cas ADD CONSTRAINT cas_role_check CHECK (role IN ('root', 'services', 'transport', 'profiles'));",
    "ALTER TABLE certificates ADD COLUMN mount TEXT, ADD COLUMN profile TEXT, ADD COLUMN common_name TEXT;",
    "CREATE INDEX certificates_mount ON certificates (mount, not_before) WHERE mount IS NOT NULL;",
    "CREATE TABLE profiles (mount TEXT NOT NULL, name TEXT NOT NULL, spec TEXT NOT NULL,",
    " created_at BIGINT NOT NULL, updated_at BIGINT NOT NULL, PRIMARY KEY (mount, name));",
);

/// What each replica last said of its streams: the prepared CAs some of
/// them have not acknowledged (JSON), for `pki ca activate` on any replica.
/// Rows of replicas gone stay until overwritten and are read by age.
macro_rules! stream_acks {
    () => {
        "CREATE TABLE stream_acks (replica TEXT PRIMARY KEY, pending TEXT NOT NULL, updated_at BIGINT NOT NULL);"
    };
}

/// Version 6: CA rotation. Each CA has a `state` (`domain::CaState`) in place
/// of the `active` flag — an active CA stays `active`, an inactive one becomes
/// `old` — and the time it last changed (`NULL` until it does); unique
/// indexes keep one active and at most one prepared CA per role (the next
/// one: two replicas preparing at once cannot both succeed).
///
/// SQLite drops a column in place once no index names it (no table is
/// rebuilt, so the foreign keys to `cas` are untouched), but adds a `NOT NULL`
/// column only with a default: `old` fills the existing rows before the
/// active ones are set, and stays in the schema, unused, since every insert
/// names the state. The CHECK is tested against the existing rows as the
/// column is added.
const SQLITE_V6: &str = concat!(
    "DROP INDEX cas_one_active_per_role;",
    "ALTER TABLE cas ADD COLUMN state TEXT NOT NULL DEFAULT 'old'",
    " CHECK (state IN ('prepared', 'active', 'old', 'tainted', 'revoked'));",
    "ALTER TABLE cas ADD COLUMN state_changed_at BIGINT;",
    "UPDATE cas SET state = 'active' WHERE active;",
    "ALTER TABLE cas DROP COLUMN active;",
    "CREATE UNIQUE INDEX cas_one_active_per_role ON cas (role) WHERE state = 'active';",
    "CREATE UNIQUE INDEX cas_one_prepared_per_role ON cas (role) WHERE state = 'prepared';",
    stream_acks!(),
);

/// Version 6 on PostgreSQL, in place and without a default: the column is
/// filled, then made `NOT NULL` and checked.
const POSTGRES_V6: &str = concat!(
    "ALTER TABLE cas ADD COLUMN state TEXT, ADD COLUMN state_changed_at BIGINT;",
    "UPDATE cas SET state = CASE WHEN active THEN 'active' ELSE 'old' END;",
    "ALTER TABLE cas ALTER COLUMN state SET NOT NULL, ADD CONSTRAINT cas_state_check",
    " CHECK (state IN ('prepared', 'active', 'old', 'tainted', 'revoked'));",
    "DROP INDEX cas_one_active_per_role;",
    "ALTER TABLE cas DROP COLUMN active;",
    "CREATE UNIQUE INDEX cas_one_active_per_role ON cas (role) WHERE state = 'active';",
    "CREATE UNIQUE INDEX cas_one_prepared_per_role ON cas (role) WHERE state = 'prepared';",
    stream_acks!(),
);

/// Version 7: node agents (SPEC §12). An entry may be bound to a node; a
/// certificate remembers the node whose agent obtained it (what `agent
/// evict` revokes); `agents` holds each attested node: its node SVID, the
/// replica its stream is on and when it was last heard from, and whether it
/// was evicted. Same text in both dialects.
const SCHEMA_V7: &str = concat!(
    "ALTER TABLE entries ADD COLUMN node TEXT;",
    "ALTER TABLE certificates ADD COLUMN node TEXT;",
    "CREATE INDEX certificates_node ON certificates (node) WHERE node IS NOT NULL;",
    "CREATE TABLE agents (node TEXT PRIMARY KEY, spiffe_id TEXT NOT NULL, serial TEXT NOT NULL,",
    " not_after BIGINT NOT NULL, attested_at BIGINT NOT NULL, replica TEXT, last_seen BIGINT,",
    " svids BIGINT NOT NULL DEFAULT 0, evicted_at BIGINT);",
);

#[cfg(test)]
mod tests {
    use super::MIGRATIONS;

    /// The SQLite steps of versions 1 to 5, as released, then version 6, in
    /// one transaction with foreign keys on, as `sqlite.rs` runs them.
    #[test]
    fn sqlite_version_6_turns_the_active_flag_into_states_in_place() {
        let mut conn = rusqlite::Connection::open_in_memory().unwrap();
        conn.pragma_update(None, "foreign_keys", "ON").unwrap();
        let tx = conn.transaction().unwrap();
        for m in MIGRATIONS.iter().filter(|m| m.version <= 5) {
            tx.execute_batch(m.sqlite).unwrap();
        }
        tx.execute_batch(
            "INSERT INTO cas VALUES ('r', 'root', 'root', x'00', NULL, 0, 9, TRUE, 1); \
             INSERT INTO cas VALUES ('s1', 'services', 's1', x'00', x'01', 0, 9, FALSE, 2); \
             INSERT INTO cas VALUES ('s2', 'services', 's2', x'00', x'01', 0, 9, TRUE, 3); \
             INSERT INTO certificates (serial, spiffe_id, issuer_id, fingerprint, not_before, not_after, status, \
             cert_der) VALUES ('01', 'spiffe://td/a', 's1', 'f', 0, 9, 'active', x'00'); \
             INSERT INTO imported_crls VALUES ('r', x'00', 1, 0, 9, 0);",
        )
        .unwrap();
        let v6 = MIGRATIONS.iter().find(|m| m.version == 6).unwrap();
        tx.execute_batch(v6.sqlite).unwrap();
        tx.commit().unwrap();

        let mut select = conn.prepare("SELECT id, state, state_changed_at FROM cas ORDER BY id").unwrap();
        let rows: Vec<(String, String, Option<i64>)> =
            select.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?))).unwrap().map(Result::unwrap).collect();
        let expected = [("r", "active"), ("s1", "old"), ("s2", "active")];
        assert_eq!(rows, expected.map(|(id, state)| (id.to_string(), state.to_string(), None)));
        let columns: Vec<String> = conn
            .prepare("SELECT name FROM pragma_table_info('cas')")
            .unwrap()
            .query_map([], |r| r.get(0))
            .unwrap()
            .map(Result::unwrap)
            .collect();
        assert!(!columns.contains(&"active".to_string()), "{columns:?}");
        let dangling: i64 = conn.query_row("SELECT COUNT(*) FROM pragma_foreign_key_check", [], |r| r.get(0)).unwrap();
        assert_eq!(dangling, 0);
        assert!(conn.execute("UPDATE cas SET state = 'active' WHERE id = 's1'", []).is_err(), "one active per role");
        assert!(conn.execute("UPDATE cas SET state = 'retired' WHERE id = 's1'", []).is_err(), "known states only");
    }
}
