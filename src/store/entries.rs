//! The statements of the `entries` table (schema version 2), shared by both
//! backends like those of `statements`, and the row decoder.
//!
//! Lists (selectors, DNS names, federated trust domains) are stored as JSON
//! arrays of strings. The selector list is stored sorted and without
//! duplicates, so one selector set has one spelling; `match_key`, the SHA-256
//! of the SPIFFE ID and that list, is unique: the same identity with the same
//! selectors twice is a `StoreError::Conflict`.

use super::rows::Row;
use super::statements::{Param, Stmt, stmt};
use super::{EntryRecord, StoreError, StoreResult};

/// Inserts one entry (selectors canonicalized).
pub(super) fn insert_entry(e: &EntryRecord) -> StoreResult<Stmt> {
    let selectors = canonical_selectors(&e.selectors);
    let sql = "INSERT INTO entries (id, spiffe_id, match_key, selectors, dns_names, ttl_seconds, jwt_ttl_seconds, \
               hint, federates_with, created_at, node) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)";
    let what = format!("an entry for {} with selectors {}", e.spiffe_id, short_list(&selectors));
    Ok(stmt!(
        sql,
        &e.id,
        &e.spiffe_id,
        match_key(&e.spiffe_id, &selectors)?.as_str(),
        json(&selectors)?.as_str(),
        json(&e.dns_names)?.as_str(),
        e.ttl_seconds,
        e.jwt_ttl_seconds,
        &e.hint,
        json(&e.federates_with)?.as_str(),
        e.created_at,
        &e.node
    )
    .on_conflict(what))
}

/// Every entry, oldest first.
pub(super) fn select_entries() -> Stmt {
    stmt!("SELECT * FROM entries ORDER BY created_at, id")
}

/// Changes one row when the entry existed, none otherwise.
pub(super) fn delete_entry(id: &str) -> Stmt {
    stmt!("DELETE FROM entries WHERE id = $1", id)
}

pub(super) fn entry_from_row(r: &dyn Row) -> StoreResult<EntryRecord> {
    let id = r.text("id")?;
    let list = |col: &str| -> StoreResult<Vec<String>> {
        let text = r.text(col)?;
        serde_json::from_str(&text)
            .map_err(|e| StoreError::Corrupt(format!("entry {id}: column {col} is not a JSON list of strings: {e}")))
    };
    Ok(EntryRecord {
        spiffe_id: r.text("spiffe_id")?,
        selectors: list("selectors")?,
        dns_names: list("dns_names")?,
        ttl_seconds: r.opt_int("ttl_seconds")?,
        jwt_ttl_seconds: r.opt_int("jwt_ttl_seconds")?,
        hint: r.opt_text("hint")?,
        federates_with: list("federates_with")?,
        created_at: r.int("created_at")?,
        node: r.opt_text("node")?,
        id,
    })
}

/// Sorted, without duplicates.
fn canonical_selectors(selectors: &[String]) -> Vec<String> {
    let mut sorted = selectors.to_vec();
    sorted.sort();
    sorted.dedup();
    sorted
}

fn json(list: &[String]) -> StoreResult<String> {
    serde_json::to_string(list).map_err(|e| StoreError::Backend(format!("cannot encode a list as JSON: {e}")))
}

/// SHA-256 (hex) of `[spiffe_id, [selectors…]]` in JSON: unambiguous whatever
/// the texts contain.
fn match_key(spiffe_id: &str, canonical: &[String]) -> StoreResult<String> {
    let text = serde_json::to_string(&(spiffe_id, canonical))
        .map_err(|e| StoreError::Backend(format!("cannot encode an entry key: {e}")))?;
    Ok(hex::encode(ring::digest::digest(&ring::digest::SHA256, text.as_bytes())))
}

/// `[a, b, c]`, cut at 256 bytes: conflicts name the selectors without
/// echoing a huge request.
fn short_list(selectors: &[String]) -> String {
    crate::domain::text::shorten(&format!("[{}]", selectors.join(", ")), 256)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn selector_order_and_duplicates_do_not_change_the_key() {
        let a = canonical_selectors(&["unix:uid:1".into(), "unix:gid:2".into(), "unix:uid:1".into()]);
        let b = canonical_selectors(&["unix:gid:2".into(), "unix:uid:1".into()]);
        assert_eq!(a, b);
        assert_eq!(match_key("spiffe://td/x", &a).ok(), match_key("spiffe://td/x", &b).ok());
        assert_ne!(match_key("spiffe://td/x", &a).ok(), match_key("spiffe://td/y", &a).ok());
        // no separator games: ["a,b"] is not ["a", "b"]
        let joined = match_key("spiffe://td/x", &["a,b".into()]).ok();
        assert_ne!(joined, match_key("spiffe://td/x", &["a".into(), "b".into()]).ok());
    }

    #[test]
    fn conflict_names_are_bounded() {
        let long: Vec<String> = (0..32).map(|i| format!("unix:path:/{}", "x".repeat(400 + i))).collect();
        assert!(short_list(&long).len() <= 256 + "…".len());
        assert_eq!(short_list(&["unix:uid:1".into()]), "[unix:uid:1]");
    }

    #[test]
    fn params_are_bound_in_column_order() {
        let e = EntryRecord {
            id: "e1".into(),
            spiffe_id: "spiffe://td/x".into(),
            selectors: vec!["b".into(), "a".into()],
            dns_names: vec![],
            ttl_seconds: Some(60),
            jwt_ttl_seconds: None,
            hint: None,
            federates_with: vec!["other.org".into()],
            created_at: 7,
            node: None,
        };
        let s = insert_entry(&e).ok().map(|s| s.params).unwrap_or_default();
        assert_eq!(s.len(), 11);
        assert_eq!(s[3], Param::Text("[\"a\",\"b\"]".into()));
        assert_eq!(s[8], Param::Text("[\"other.org\"]".into()));
        assert_eq!(s[9], Param::Int(7));
    }
}
