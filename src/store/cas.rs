//! The statements of the `cas` table — the hierarchy, inserting a CA, the
//! rotation states of schema version 6 — and of the live certificates per
//! CA, shared by both backends like those of `statements`, with what
//! [`Store::set_ca_state`] decides before it writes.
//!
//! Invariant: a role has at most one `Active` CA. The partial unique index
//! `cas_one_active_per_role` enforces it; the writes keep it by making the
//! active CA `Old` ([`demote_active`]) before another becomes active, in the
//! same transaction (on PostgreSQL under the CA lock, so two activations
//! queue instead of colliding on the index).

#[cfg(doc)]
use super::Store;
use super::rows::Row;
use super::statements::{Param, Stmt, stmt};
use super::{CaRecord, CaRole, CaState, ChangeKind, StoreError, StoreResult, changes};

/// What [`Store::set_ca_state`] writes besides the audit record.
pub(super) struct StateChange {
    /// Makes the active CA of the role `Old` (when moving to `Active`),
    /// returning its id.
    pub demote: Option<Stmt>,
    /// Moves the CA, returning its row after the change.
    pub update: Stmt,
}

/// What moving `ca` to `to` at `at` writes: `None` when it is in `to`
/// already, or the refusal of a move the domain forbids.
pub(super) fn plan(ca: &CaRecord, to: CaState, at: i64) -> StoreResult<Option<StateChange>> {
    if ca.state == to {
        return Ok(None);
    }
    ca.state.move_to(to).map_err(|reason| StoreError::Refused {
        what: format!("CA {} ({}) cannot become {to}", ca.id, ca.state),
        reason: reason.to_string(),
    })?;
    let demote = (to == CaState::Active).then(|| demote_active(ca.role, &ca.id, at));
    Ok(Some(StateChange { demote, update: set_state(&ca.id, to, at) }))
}

/// The error of a CA id no row has.
pub(super) fn not_found(id: &str) -> StoreError {
    StoreError::NotFound { what: format!("CA {id}") }
}

/// Makes the active CA of `ca`'s role `Old` when `ca` is inserted `Active`.
pub(super) fn demote_for(ca: &CaRecord) -> Option<Stmt> {
    (ca.state == CaState::Active).then(|| demote_active(ca.role, &ca.id, ca.created_at))
}

/// One `ca` change per CA id, at `at`.
pub(super) fn changed(ids: &[String], at: i64) -> Vec<Stmt> {
    ids.iter().map(|id| changes::insert(ChangeKind::Ca, id, at)).collect()
}

pub(super) fn count_roots() -> Stmt {
    stmt!("SELECT COUNT(*) AS n FROM cas WHERE role = 'root'")
}

pub(super) fn insert_ca(ca: &CaRecord) -> Stmt {
    let sql = "INSERT INTO cas (id, role, common_name, cert_der, sealed_key, not_before, not_after, \
               state, state_changed_at, created_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)";
    let (id, role) = (&ca.id, ca.role.as_str());
    stmt!(
        sql,
        id,
        role,
        &ca.common_name,
        &ca.cert_der,
        &ca.sealed_key,
        ca.not_before,
        ca.not_after,
        ca.state.as_str(),
        ca.state_changed_at,
        ca.created_at
    )
    .on_conflict(format!("CA {id} (or a second active or prepared {role} CA)"))
}

pub(super) fn select_cas() -> Stmt {
    stmt!("SELECT * FROM cas ORDER BY created_at, id")
}

pub(super) fn select_ca(id: &str) -> Stmt {
    stmt!("SELECT * FROM cas WHERE id = $1", id)
}

/// Makes the active CA of `role` (unless it is `except`) `Old` at `at`,
/// returning its id.
fn demote_active(role: CaRole, except: &str, at: i64) -> Stmt {
    let sql = "UPDATE cas SET state = 'old', state_changed_at = $3 \
               WHERE role = $1 AND state = 'active' AND id <> $2 RETURNING id";
    stmt!(sql, role.as_str(), except, at)
}

/// Puts a CA in state `to` at `at`, returning its row after the change.
fn set_state(id: &str, to: CaState, at: i64) -> Stmt {
    let sql = "UPDATE cas SET state = $2, state_changed_at = $3 WHERE id = $1 RETURNING *";
    stmt!(sql, id, to.as_str(), at).on_conflict(format!("a second active CA beside {id}"))
}

/// Unrevoked, unexpired certificates per issuer (index
/// `certificates_issuer_status`), by issuer id.
pub(super) fn live_by_issuer(now: i64) -> Stmt {
    let sql = "SELECT issuer_id, COUNT(*) AS n FROM certificates WHERE status = 'active' AND not_after > $1 \
               GROUP BY issuer_id ORDER BY issuer_id";
    stmt!(sql, now)
}

pub(super) fn upsert_report(replica: &str, pending: &str, at: i64) -> Stmt {
    let sql = "INSERT INTO stream_acks (replica, pending, updated_at) VALUES ($1, $2, $3) \
               ON CONFLICT (replica) DO UPDATE SET pending = excluded.pending, updated_at = excluded.updated_at";
    stmt!(sql, replica, pending, at)
}

pub(super) fn reports_since(since: i64) -> Stmt {
    stmt!("SELECT replica, pending, updated_at FROM stream_acks WHERE updated_at >= $1 ORDER BY replica", since)
}

pub(super) fn report_from_row(r: &dyn Row) -> StoreResult<(String, String, i64)> {
    Ok((r.text("replica")?, r.text("pending")?, r.int("updated_at")?))
}

pub(super) fn live_from_row(r: &dyn Row) -> StoreResult<(String, u64)> {
    Ok((r.text("issuer_id")?, super::rows::count_from_row(r)?))
}
