//! Decoding rows into records, shared by both backends.
//!
//! [`Row`] is column access by name; each backend implements it for its own
//! row type with [`impl_row`], and every decoder here reads a record through
//! it, so a record is decoded by one function whatever the database. A value
//! of the wrong type or an unknown enum text is `StoreError::Corrupt`, never
//! a panic. The decoders of the registration entries and of the change feed
//! live with their statements, in `entries.rs` and `changes.rs`.

use super::{AuditRecord, CaRecord, CaRole, CaState, CertRecord, CertStatus, DenyRecord, ImportedCrlRecord};
use super::{ProfileKey, RevokedEntry, SigningKeyRecord, StoreError, StoreResult};

/// Column access by name. Each backend implements it for its row type; a
/// value of the wrong type is `StoreError::Corrupt`.
pub(super) trait Row {
    fn int(&self, col: &str) -> StoreResult<i64>;
    fn opt_int(&self, col: &str) -> StoreResult<Option<i64>>;
    fn text(&self, col: &str) -> StoreResult<String>;
    fn opt_text(&self, col: &str) -> StoreResult<Option<String>>;
    fn bytes(&self, col: &str) -> StoreResult<Vec<u8>>;
    fn opt_bytes(&self, col: &str) -> StoreResult<Option<Vec<u8>>>;
}

/// Implements [`Row`] for a backend's row type with its `get` method and
/// error mapping (invoked where `StoreResult` is in scope).
macro_rules! impl_row {
    ($row:ty, $get:ident, $err:expr) => {
        impl $crate::store::rows::Row for $row {
            fn int(&self, col: &str) -> StoreResult<i64> {
                self.$get(col).map_err($err)
            }
            fn opt_int(&self, col: &str) -> StoreResult<Option<i64>> {
                self.$get(col).map_err($err)
            }
            fn text(&self, col: &str) -> StoreResult<String> {
                self.$get(col).map_err($err)
            }
            fn opt_text(&self, col: &str) -> StoreResult<Option<String>> {
                self.$get(col).map_err($err)
            }
            fn bytes(&self, col: &str) -> StoreResult<Vec<u8>> {
                self.$get(col).map_err($err)
            }
            fn opt_bytes(&self, col: &str) -> StoreResult<Option<Vec<u8>>> {
                self.$get(col).map_err($err)
            }
        }
    };
}
pub(super) use impl_row;

pub(super) fn ca_from_row(r: &dyn Row) -> StoreResult<CaRecord> {
    let (id, role, state) = (r.text("id")?, r.text("role")?, r.text("state")?);
    let unknown = |what: &str, value: &str| StoreError::Corrupt(format!("CA {id}: unknown {what} {value:?}"));
    Ok(CaRecord {
        role: CaRole::parse(&role).ok_or_else(|| unknown("role", &role))?,
        state: CaState::parse(&state).ok_or_else(|| unknown("state", &state))?,
        state_changed_at: r.opt_int("state_changed_at")?,
        common_name: r.text("common_name")?,
        cert_der: r.bytes("cert_der")?,
        sealed_key: r.opt_bytes("sealed_key")?,
        not_before: r.int("not_before")?,
        not_after: r.int("not_after")?,
        created_at: r.int("created_at")?,
        id,
    })
}

pub(super) fn key_from_row(r: &dyn Row) -> StoreResult<SigningKeyRecord> {
    Ok(SigningKeyRecord {
        kid: r.text("kid")?,
        purpose: r.text("purpose")?,
        public_key_der: r.bytes("public_key_der")?,
        sealed_key: r.bytes("sealed_key")?,
        created_at: r.int("created_at")?,
        not_after: r.int("not_after")?,
    })
}

pub(super) fn cert_from_row(r: &dyn Row) -> StoreResult<CertRecord> {
    let status = match r.text("status")?.as_str() {
        "active" => CertStatus::Active,
        "revoked" => CertStatus::Revoked,
        other => return Err(StoreError::Corrupt(format!("unknown status {other:?}"))),
    };
    Ok(CertRecord {
        serial: r.text("serial")?,
        spiffe_id: r.text("spiffe_id")?,
        issuer_id: r.text("issuer_id")?,
        fingerprint: r.text("fingerprint")?,
        not_before: r.int("not_before")?,
        not_after: r.int("not_after")?,
        status,
        revoked_at: r.opt_int("revoked_at")?,
        revocation_reason: r.opt_text("revocation_reason")?,
        cert_der: r.bytes("cert_der")?,
        profile: match (r.opt_text("mount")?, r.opt_text("profile")?) {
            (Some(mount), Some(name)) => Some(ProfileKey { mount, name }),
            _ => None,
        },
        common_name: r.opt_text("common_name")?,
        node: r.opt_text("node")?,
    })
}

pub(super) fn imported_crl_from_row(r: &dyn Row) -> StoreResult<ImportedCrlRecord> {
    Ok(ImportedCrlRecord {
        issuer_id: r.text("issuer_id")?,
        crl_der: r.bytes("crl_der")?,
        number: r.int("number")?,
        this_update: r.int("this_update")?,
        next_update: r.int("next_update")?,
        imported_at: r.int("imported_at")?,
    })
}

pub(super) fn revoked_from_row(r: &dyn Row) -> StoreResult<RevokedEntry> {
    Ok(RevokedEntry {
        serial: r.text("serial")?,
        revoked_at: r.opt_int("revoked_at")?.unwrap_or_default(),
        reason: r.opt_text("revocation_reason")?,
        not_after: r.int("not_after")?,
        issuer_id: r.text("issuer_id")?,
        spiffe_id: r.text("spiffe_id")?,
        fingerprint: r.text("fingerprint")?,
    })
}

pub(super) fn deny_from_row(r: &dyn Row) -> StoreResult<DenyRecord> {
    Ok(DenyRecord {
        spiffe_id: r.text("spiffe_id")?,
        reason: r.text("reason")?,
        denied_at: r.int("denied_at")?,
        denied_by: r.text("denied_by")?,
    })
}

pub(super) fn audit_from_row(r: &dyn Row) -> StoreResult<AuditRecord> {
    Ok(AuditRecord {
        id: r.int("id")?,
        at: r.int("at")?,
        actor: r.text("actor")?,
        action: r.text("action")?,
        target: r.text("target")?,
        outcome: r.text("outcome")?,
        reason: r.text("reason")?,
    })
}

/// A `COUNT(*) AS n` result.
pub(super) fn count_from_row(r: &dyn Row) -> StoreResult<u64> {
    let n = r.int("n")?;
    u64::try_from(n).map_err(|_| StoreError::Corrupt(format!("negative count {n}")))
}
