//! The statements of the change feed (`changes`, schema version 3), shared by
//! both backends like those of `statements`, and the row decoder.
//!
//! Each backend appends with [`insert`] inside the transaction of the write it
//! records. PostgreSQL first takes the change lock (`postgres.rs`), so
//! revisions commit in order; SQLite has one writer.
//!
//! The highest purged revision is kept in `settings` under
//! [`PURGED_THROUGH`]: `changes_since(after)` with `after` below it is
//! `truncated`, and `change_revision` never falls below it.

use super::rows::Row;
use super::statements::{Param, Stmt, stmt};
use super::{CaRecord, ChangeKind, ChangeRecord, SigningKeyRecord, StoreError, StoreResult};

/// The `settings` key of the highest purged revision.
const PURGED_THROUGH: &str = "changes_purged_through";

/// Appends one change; returns its `revision`.
pub(super) fn insert(kind: ChangeKind, subject: &str, at: i64) -> Stmt {
    let sql = "INSERT INTO changes (kind, subject, at) VALUES ($1, $2, $3) RETURNING revision";
    stmt!(sql, kind.as_str(), subject, at)
}

/// One `ca` change per CA and one `signing_key` change per key.
pub(super) fn hierarchy(cas: &[CaRecord], keys: &[SigningKeyRecord]) -> Vec<Stmt> {
    let cas = cas.iter().map(|c| insert(ChangeKind::Ca, &c.id, c.created_at));
    cas.chain(keys.iter().map(|k| insert(ChangeKind::SigningKey, &k.kid, k.created_at))).collect()
}

/// At most `limit` changes after `after`, oldest first.
pub(super) fn select_since(after: i64, limit: u32) -> Stmt {
    let sql = "SELECT revision, kind, subject, at FROM changes WHERE revision > $1 ORDER BY revision LIMIT $2";
    stmt!(sql, after, i64::from(limit))
}

/// `newest` (the highest stored revision, `NULL` when none) and `purged` (the
/// highest purged one as text, `NULL` when none).
pub(super) fn select_marks() -> Stmt {
    let sql = "SELECT (SELECT MAX(revision) FROM changes) AS newest, \
               (SELECT value FROM settings WHERE key = $1) AS purged";
    stmt!(sql, PURGED_THROUGH)
}

/// Deletes the changes with `at <= before`, returning their revisions.
pub(super) fn purge(before: i64) -> Stmt {
    stmt!("DELETE FROM changes WHERE at <= $1 RETURNING revision", before)
}

/// Raises the purged mark to `revision` (never lowers it: purges may race).
pub(super) fn set_purged_through(revision: i64) -> Stmt {
    let sql = "INSERT INTO settings (key, value) VALUES ($1, $2) ON CONFLICT (key) DO UPDATE \
               SET value = excluded.value WHERE CAST(settings.value AS BIGINT) < CAST(excluded.value AS BIGINT)";
    stmt!(sql, PURGED_THROUGH, revision.to_string().as_str())
}

/// PostgreSQL only: wakes every listener once the transaction commits.
pub(super) fn notify(channel: &str, revision: i64) -> Stmt {
    stmt!("SELECT pg_notify($1, $2)", channel, revision.to_string().as_str())
}

pub(super) fn change_from_row(r: &dyn Row) -> StoreResult<ChangeRecord> {
    let kind = r.text("kind")?;
    let revision = r.int("revision")?;
    let unknown = || StoreError::Corrupt(format!("change {revision}: unknown kind {kind:?}"));
    Ok(ChangeRecord {
        revision,
        kind: ChangeKind::parse(&kind).ok_or_else(unknown)?,
        subject: r.text("subject")?,
        at: r.int("at")?,
    })
}

/// The `newest` and `purged` columns of [`select_marks`].
pub(super) fn marks_from_row(r: &dyn Row) -> StoreResult<(i64, i64)> {
    let newest = r.opt_int("newest")?.unwrap_or_default();
    let purged = match r.opt_text("purged")? {
        None => 0,
        Some(text) => text
            .parse()
            .map_err(|_| StoreError::Corrupt(format!("setting {PURGED_THROUGH} is not a revision: {text:?}")))?,
    };
    Ok((newest, purged))
}
