//! The statements of the `profiles` table (schema version 5), shared by both
//! backends like those of `statements`, and the row decoder. A profile is
//! keyed by (mount, name); its fields are one JSON text (`domain::Profile`),
//! which the store keeps as given.

use super::rows::Row;
use super::statements::{Param, Stmt, stmt};
use super::{ProfileKey, ProfileRecord, StoreResult};

/// Creates a profile, or replaces the fields of an existing one (its
/// `created_at` stays).
pub(super) fn upsert_profile(p: &ProfileRecord) -> Stmt {
    let sql = "INSERT INTO profiles (mount, name, spec, created_at, updated_at) VALUES ($1, $2, $3, $4, $5) \
               ON CONFLICT (mount, name) DO UPDATE SET spec = excluded.spec, updated_at = excluded.updated_at";
    stmt!(sql, &p.key.mount, &p.key.name, &p.spec, p.created_at, p.updated_at)
}

/// Changes one row when the profile existed, none otherwise.
pub(super) fn delete_profile(key: &ProfileKey) -> Stmt {
    stmt!("DELETE FROM profiles WHERE mount = $1 AND name = $2", &key.mount, &key.name)
}

pub(super) fn select_profile(key: &ProfileKey) -> Stmt {
    stmt!("SELECT * FROM profiles WHERE mount = $1 AND name = $2", &key.mount, &key.name)
}

pub(super) fn select_profiles() -> Stmt {
    stmt!("SELECT * FROM profiles ORDER BY mount, name")
}

/// The change feed's subject of a profile: `mount/name`.
pub(super) fn subject(key: &ProfileKey) -> String {
    format!("{}/{}", key.mount, key.name)
}

pub(super) fn profile_from_row(r: &dyn Row) -> StoreResult<ProfileRecord> {
    Ok(ProfileRecord {
        key: ProfileKey { mount: r.text("mount")?, name: r.text("name")? },
        spec: r.text("spec")?,
        created_at: r.int("created_at")?,
        updated_at: r.int("updated_at")?,
    })
}
