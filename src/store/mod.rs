//! Durable state: one [`Store`] trait, two implementations.
//!
//! * [`sqlite::SqliteStore`] — the embedded default (WAL, `synchronous=FULL`:
//!   every call that returns `Ok` has reached the disk).
//! * [`postgres::PostgresStore`] — for replicas sharing one database.
//!
//! Both run the same conformance suite (`tests/store_conformance.rs`).
//! Instants are Unix seconds (`i64`); identities and serials are stored in
//! their canonical text form (`SpiffeId::to_string`, `Serial::to_string`).
//!
//! Invariant: a write that returned `Ok` is durable, and every multi-row change
//! (issuance + audit, deny + revocations + audit) is one transaction.
//!
//! ## The change feed
//!
//! Every write another replica must apply (revoke, deny, allow, entries, CAs,
//! signing keys, profiles) appends a [`ChangeRecord`] to the `changes` table in the same
//! transaction, so replicas sharing one PostgreSQL follow each other with
//! [`Store::changes_since`] instead of reloading tables. Revisions only grow,
//! and a revision is visible only once every smaller one that will ever exist
//! is: on PostgreSQL each appending transaction takes one advisory lock before
//! its insert and holds it until commit, so commit order is revision order; on
//! SQLite writes are serialized anyway. [`Store::change_signal`] wakes a reader
//! when another process may have committed; the reader then catches up by
//! revision, so a lost notification delays a change but never loses it.
//! [`Store::purge_expired`] drops changes older than [`CHANGE_RETENTION`]; a
//! reader that fell behind them is told to reload ([`ChangeBatch::truncated`]).
//!
//! ## Layout
//!
//! This file holds the trait, its error and [`open`]; every public item of
//! the submodules is re-exported here, the only path callers name. The
//! record types are in `records.rs`, their row decoders in `rows.rs`, the
//! append-only migrations in `schema.rs`, and the statements both backends
//! run in `statements.rs` (those of the CAs and their rotation states in
//! `cas.rs`, those of the registration entries in `entries.rs`,
//! those of the issuance profiles in `profiles.rs`, those of the change feed
//! in `changes.rs`).

use async_trait::async_trait;

pub mod postgres;
pub mod sqlite;

mod agents;
mod cas;
mod changes;
mod checkpoint;
mod entries;
mod group_commit;
mod profiles;
mod records;
mod rows;
mod schema;
mod statements;

pub use crate::domain::{CaRole, CaState};
pub use records::{
    AgentRecord, AuditFilter, AuditRecord, CaRecord, CertFilter, CertRecord, CertStatus, ChangeBatch, ChangeKind,
    ChangeRecord, DenyRecord, EntryRecord, ImportedCrlRecord, ProfileKey, ProfileRecord, Revocation, RevokeOutcome,
    RevokedEntry, SigningKeyRecord,
};

/// How long change records are kept (7 days): a replica that was away longer
/// reloads everything ([`ChangeBatch::truncated`]).
pub const CHANGE_RETENTION: i64 = 7 * 24 * 3600;

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    #[error("database unavailable: {0}")]
    Unavailable(String),
    #[error("database error: {0}")]
    Backend(String),
    #[error("{what} already exists")]
    Conflict { what: String },
    /// The record a call names does not exist; nothing was written.
    #[error("{what} not found")]
    NotFound { what: String },
    /// The change asked for is not allowed from the record's current state
    /// (a CA rotation step the domain forbids); nothing was written.
    #[error("{what}: {reason}")]
    Refused { what: String, reason: String },
    #[error("stored data is corrupt: {0}")]
    Corrupt(String),
    /// The database engine found damaged storage (a malformed page, not a
    /// database file): nothing read from it can be trusted.
    #[error("the database is damaged: {0}")]
    Damaged(String),
    #[error("invalid database URL {url:?}: {reason}")]
    Url { url: String, reason: String },
    #[error("database schema version {found} is newer than this binary understands ({supported})")]
    SchemaTooNew { found: i64, supported: i64 },
}

pub type StoreResult<T> = Result<T, StoreError>;

#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// Cheap liveness probe for `/ready`.
    async fn ping(&self) -> StoreResult<()>;

    /// A node attested (`attested`: with a join token, which also lifts an
    /// eviction) or renewed its node SVID, with the audit record. A renewal
    /// of an evicted node changes nothing and returns `false`.
    async fn put_agent(&self, agent: &AgentRecord, attested: bool, audit: &AuditRecord) -> StoreResult<bool>;
    /// Where a node's stream is (`None`: it left) and how many SVIDs it serves.
    async fn agent_seen(&self, node: &str, replica: Option<String>, at: i64, svids: i64) -> StoreResult<()>;
    /// Marks the node evicted, with the audit record; `false` when it was
    /// not attested or is evicted already (nothing written).
    async fn evict_agent(&self, node: &str, at: i64, audit: &AuditRecord) -> StoreResult<bool>;
    /// Every attested node, by name.
    async fn agents(&self) -> StoreResult<Vec<AgentRecord>>;
    async fn agent(&self, node: &str) -> StoreResult<Option<AgentRecord>>;

    /// Sets a key only if it is absent; returns the value now stored (the
    /// existing one when another replica won the race).
    async fn init_setting(&self, key: &str, value: &str) -> StoreResult<String>;

    /// Inserts the CA hierarchy created at start-up in one transaction, unless
    /// a root already exists; returns `false` (and writes nothing) if one does.
    async fn init_hierarchy(&self, cas: &[CaRecord], keys: &[SigningKeyRecord]) -> StoreResult<bool>;
    /// Adds one CA, as given, with a `ca` change. When its state is `Active`,
    /// the active CA of its role (if any) becomes `Old`, with
    /// `state_changed_at` = the new CA's `created_at` and a `ca` change of its
    /// own, in the same transaction; a CA in any other state touches no other
    /// CA. A duplicate id is a `Conflict`.
    async fn insert_ca(&self, ca: &CaRecord) -> StoreResult<()>;
    /// Every CA, oldest first.
    async fn cas(&self) -> StoreResult<Vec<CaRecord>>;
    /// Moves a CA to state `to` at `at`, in one transaction (on PostgreSQL
    /// under the CA lock, so rotations of every replica are serialized), and
    /// returns it as it is after the call.
    ///
    /// * An unknown id is `NotFound`; a move [`CaState::move_to`] forbids
    ///   (revoked → active, prepared → tainted, anything → old, …) is
    ///   `Refused`. Neither writes anything, not even the audit record.
    /// * Moving to `Active` makes the active CA of its role `Old` at `at`.
    /// * Every CA whose state changed gets `state_changed_at = at` and a `ca`
    ///   change (so replicas reload the CAs); the audit record is written.
    /// * A CA already in `to` is returned unchanged: only the audit record is
    ///   written, no change.
    ///
    /// [`CaState::move_to`]: crate::domain::CaState::move_to
    async fn set_ca_state(&self, id: &str, to: CaState, at: i64, audit: &AuditRecord) -> StoreResult<CaRecord>;
    /// How many unrevoked certificates with `not_after > now` each CA issued,
    /// by CA id; a CA with none is absent.
    async fn live_certificates_by_issuer(&self, now: i64) -> StoreResult<Vec<(String, u64)>>;
    /// Replaces what `replica` last said of its streams (`pending`: the
    /// prepared CAs some of them have not acknowledged, as JSON), at `at`.
    async fn report_acknowledgements(&self, replica: &str, pending: &str, at: i64) -> StoreResult<()>;
    /// Every replica's last report made at or after `since`: (replica, pending, at).
    async fn acknowledgement_reports(&self, since: i64) -> StoreResult<Vec<(String, String, i64)>>;

    async fn insert_signing_key(&self, key: &SigningKeyRecord) -> StoreResult<()>;

    /// Stores a CRL signed elsewhere, with its audit record and a `ca`
    /// change, in one transaction — unless the stored CRL of that CA has a
    /// CRL number as high or higher: then nothing but the audit record is
    /// written and the result is `false`.
    async fn import_crl(&self, crl: &ImportedCrlRecord, audit: &AuditRecord) -> StoreResult<bool>;
    /// The newest imported CRL of each CA.
    async fn imported_crls(&self) -> StoreResult<Vec<ImportedCrlRecord>>;
    async fn signing_keys(&self) -> StoreResult<Vec<SigningKeyRecord>>;

    /// Stores an issued certificate and its audit record in one transaction;
    /// `false` (nothing stored) when its identity is on the deny list. The
    /// check and the insert are one step with respect to [`Store::deny`]:
    /// a certificate is either refused or stored where `deny` revokes it.
    /// A duplicate serial is a `Conflict`.
    async fn record_issuance(&self, cert: &CertRecord, audit: &AuditRecord) -> StoreResult<bool>;
    async fn certificate(&self, serial: &str) -> StoreResult<Option<CertRecord>>;
    /// Newest `not_before` first.
    async fn certificates(&self, filter: &CertFilter) -> StoreResult<Vec<CertRecord>>;
    async fn active_certificate_count(&self, now: i64) -> StoreResult<u64>;

    /// Marks one certificate revoked, with its audit record, in one transaction.
    async fn revoke(&self, serial: &str, reason: &str, at: i64, audit: &AuditRecord) -> StoreResult<Revocation>;
    /// Revoked certificates of every issuer with `not_after > now` (for
    /// loading the revocation state at start), by issuer, then by revocation
    /// time.
    async fn revoked_unexpired_all(&self, now: i64) -> StoreResult<Vec<RevokedEntry>>;

    /// Adds (or updates the reason of) a deny-list entry and revokes every
    /// unexpired active certificate of that identity (reason
    /// `cessationOfOperation` unless given), with the audit record, in one
    /// transaction. Returns the certificates it revoked, by serial.
    async fn deny(&self, entry: &DenyRecord, now: i64, audit: &AuditRecord) -> StoreResult<Vec<RevokedEntry>>;
    /// Removes a deny-list entry; `false` if there was none. Writes the audit record.
    async fn allow(&self, spiffe_id: &str, audit: &AuditRecord) -> StoreResult<bool>;
    async fn denied(&self, spiffe_id: &str) -> StoreResult<Option<DenyRecord>>;
    /// Oldest first.
    async fn deny_list(&self) -> StoreResult<Vec<DenyRecord>>;

    /// Remembers a single-use token id until `expires_at`. Returns `false` when
    /// the id was already used (a replay); the check and insert are atomic.
    async fn consume_token_id(&self, jti: &str, expires_at: i64) -> StoreResult<bool>;
    /// Whether a single-use token id was already used.
    async fn token_id_used(&self, jti: &str) -> StoreResult<bool>;

    /// Deletes certificate records with `not_after <= now - grace`, used
    /// token ids with `expires_at <= now` and change records with
    /// `at <= now - CHANGE_RETENTION` (remembering the highest revision
    /// purged, for [`ChangeBatch::truncated`]). Returns the number of
    /// certificates deleted.
    async fn purge_expired(&self, now: i64, grace: i64) -> StoreResult<u64>;

    /// Stores a new entry with its audit record in one transaction. The
    /// selectors are stored sorted and without duplicates. The same SPIFFE ID
    /// with the same selector set twice (in any order) is a `Conflict`, and
    /// then no audit record is written.
    async fn insert_entry(&self, entry: &EntryRecord, audit: &AuditRecord) -> StoreResult<()>;
    /// Every entry, oldest first (by `created_at`, then `id`).
    async fn entries(&self) -> StoreResult<Vec<EntryRecord>>;
    /// Deletes an entry and writes its audit record in one transaction;
    /// `false` (and no audit record) when there was none.
    async fn delete_entry(&self, id: &str, audit: &AuditRecord) -> StoreResult<bool>;

    /// Creates or replaces an issuance profile (keeping its `created_at`),
    /// with its audit record and a `profile` change, in one transaction.
    async fn put_profile(&self, profile: &ProfileRecord, audit: &AuditRecord) -> StoreResult<()>;
    /// Deletes a profile with its audit record and a `profile` change in one
    /// transaction; `false` (and only the audit record) when there was none.
    async fn delete_profile(&self, key: &ProfileKey, audit: &AuditRecord) -> StoreResult<bool>;
    async fn profile(&self, key: &ProfileKey) -> StoreResult<Option<ProfileRecord>>;
    /// Every profile, by mount, then name.
    async fn profiles(&self) -> StoreResult<Vec<ProfileRecord>>;

    async fn append_audit(&self, record: &AuditRecord) -> StoreResult<()>;
    /// Oldest first, at most `limit` (default 1000), the newest ones.
    async fn audit(&self, filter: &AuditFilter) -> StoreResult<Vec<AuditRecord>>;

    /// The newest committed revision (0 when none). It never decreases, also
    /// when the records themselves were purged.
    async fn change_revision(&self) -> StoreResult<i64>;
    /// Changes with revision > after, oldest first, at most `limit`. Every
    /// change committed later has a greater revision than those returned.
    async fn changes_since(&self, after: i64, limit: u32) -> StoreResult<ChangeBatch>;
    /// Wake-ups when another process may have committed changes: the value is
    /// a counter that increases on every notification and after every
    /// (re)connect of the listening connection (so a reader catches up by
    /// revision after missing notifications). `None` when no other process
    /// can write (SQLite: one process per data directory).
    fn change_signal(&self) -> Option<tokio::sync::watch::Receiver<u64>>;
}

/// Opens the store named by a database URL (`sqlite://PATH` or `postgres://…`).
pub async fn open(url: &str) -> StoreResult<std::sync::Arc<dyn Store>> {
    if let Some(path) = url.strip_prefix("sqlite://") {
        if path.is_empty() {
            return Err(StoreError::Url { url: url.to_string(), reason: "missing file path".into() });
        }
        Ok(std::sync::Arc::new(sqlite::SqliteStore::open(std::path::Path::new(path)).await?))
    } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        Ok(std::sync::Arc::new(postgres::PostgresStore::connect(url).await?))
    } else {
        Err(StoreError::Url { url: redact_url(url), reason: "expected sqlite://PATH or postgres://…".into() })
    }
}

/// A database URL with any password replaced, safe for logs and errors.
pub fn redact_url(url: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((b, q)) => (b, Some(q)),
        None => (url, None),
    };
    let mut out = match (base.find("://"), base.rfind('@')) {
        (Some(scheme_end), Some(at)) if at > scheme_end => {
            let userinfo = &base[scheme_end + 3..at];
            match userinfo.split_once(':') {
                Some((user, _)) => format!("{}://{}:***{}", &base[..scheme_end], user, &base[at..]),
                None => base.to_string(),
            }
        }
        _ => base.to_string(),
    };
    if let Some(q) = query {
        let params: Vec<String> = q
            .split('&')
            .map(|kv| match kv.split_once('=') {
                Some((k, _)) if k.eq_ignore_ascii_case("password") => format!("{k}=***"),
                _ => kv.to_string(),
            })
            .collect();
        out.push('?');
        out.push_str(&params.join("&"));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::redact_url;

    #[test]
    fn passwords_never_survive_redaction() {
        assert_eq!(redact_url("postgres://u:secret@h/db"), "postgres://u:***@h/db");
        assert_eq!(
            redact_url("postgres://u@h/db?password=secret&sslmode=disable"),
            "postgres://u@h/db?password=***&sslmode=disable"
        );
        assert_eq!(redact_url("sqlite:///tmp/x.db"), "sqlite:///tmp/x.db");
        assert!(!redact_url("postgres://u:p%40ss@h/db?PASSWORD=x").contains("p%40ss"));
    }
}
