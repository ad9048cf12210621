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
//! signing keys) appends a [`ChangeRecord`] to the `changes` table in the same
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

use async_trait::async_trait;

pub mod postgres;
pub mod sqlite;

mod changes;
mod entries;
mod group_commit;
mod migrations;

pub use crate::domain::CaRole;

/// A CA certificate and its private key, sealed under the KEK.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CaRecord {
    /// SHA-256 fingerprint of the certificate DER, lowercase hex. Primary key.
    pub id: String,
    pub role: CaRole,
    pub common_name: String,
    pub cert_der: Vec<u8>,
    /// `None` when the key is kept offline (an imported root).
    pub sealed_key: Option<Vec<u8>>,
    pub not_before: i64,
    pub not_after: i64,
    /// The signer currently used for its role (one active per role).
    pub active: bool,
    pub created_at: i64,
}

/// A JWT signing key (token signing or JWT-SVID signing), sealed under the KEK.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SigningKeyRecord {
    pub kid: String,
    /// `token` or `jwt-svid`.
    pub purpose: String,
    /// SubjectPublicKeyInfo DER.
    pub public_key_der: Vec<u8>,
    pub sealed_key: Vec<u8>,
    pub created_at: i64,
    pub not_after: i64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CertStatus {
    Active,
    Revoked,
}

/// An issued end-entity certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertRecord {
    /// Lowercase hex serial. Primary key.
    pub serial: String,
    pub spiffe_id: String,
    /// `CaRecord::id` of the issuer.
    pub issuer_id: String,
    /// SHA-256 of the DER, lowercase hex.
    pub fingerprint: String,
    pub not_before: i64,
    pub not_after: i64,
    pub status: CertStatus,
    pub revoked_at: Option<i64>,
    /// RFC 5280 reason name (`keyCompromise`, …) when revoked.
    pub revocation_reason: Option<String>,
    pub cert_der: Vec<u8>,
}

/// A CRL signed elsewhere for a CA whose key is offline (an imported root).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImportedCrlRecord {
    /// `CaRecord::id` of the CA that signed it.
    pub issuer_id: String,
    pub crl_der: Vec<u8>,
    pub number: i64,
    pub this_update: i64,
    pub next_update: i64,
    pub imported_at: i64,
}

/// A revoked, still unexpired certificate: one CRL entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RevokedEntry {
    pub serial: String,
    pub revoked_at: i64,
    pub reason: Option<String>,
    pub not_after: i64,
    /// `CaRecord::id` of the issuer.
    pub issuer_id: String,
    pub spiffe_id: String,
    /// SHA-256 of the certificate DER, lowercase hex.
    pub fingerprint: String,
}

/// How long change records are kept (7 days): a replica that was away longer
/// reloads everything ([`ChangeBatch::truncated`]).
pub const CHANGE_RETENTION: i64 = 7 * 24 * 3600;

/// What a [`ChangeRecord`] says changed; its `subject` names the object.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ChangeKind {
    /// A certificate was revoked ([`Store::revoke`]); subject: the serial.
    /// `at`: the revocation time.
    Revoke,
    /// An identity was denied, or its deny reason changed ([`Store::deny`]),
    /// and its unexpired certificates were revoked; subject: the SPIFFE ID.
    /// `at`: the `now` of the call.
    Deny,
    /// A denial was lifted ([`Store::allow`]); subject: the SPIFFE ID. `at`:
    /// the audit record's.
    Allow,
    /// A registration entry was created or deleted; subject: the entry id.
    /// `at`: the audit record's.
    Entry,
    /// A CA was added (and others of its role possibly deactivated) by
    /// [`Store::insert_ca`] or [`Store::init_hierarchy`]; one record per CA,
    /// subject: the CA id. `at`: the CA's `created_at`.
    Ca,
    /// A signing key was added by [`Store::insert_signing_key`] or
    /// [`Store::init_hierarchy`]; subject: the kid. `at`: the key's `created_at`.
    SigningKey,
}

impl ChangeKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Revoke => "revoke",
            Self::Deny => "deny",
            Self::Allow => "allow",
            Self::Entry => "entry",
            Self::Ca => "ca",
            Self::SigningKey => "signing_key",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "revoke" => Some(Self::Revoke),
            "deny" => Some(Self::Deny),
            "allow" => Some(Self::Allow),
            "entry" => Some(Self::Entry),
            "ca" => Some(Self::Ca),
            "signing_key" => Some(Self::SigningKey),
            _ => None,
        }
    }
}

/// One row of the change feed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChangeRecord {
    /// Assigned by the store: increasing, committed in this order (with gaps).
    pub revision: i64,
    pub kind: ChangeKind,
    pub subject: String,
    pub at: i64,
}

/// An answer of [`Store::changes_since`].
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ChangeBatch {
    pub changes: Vec<ChangeRecord>,
    /// Rows after `after` were purged: the reader must reload everything.
    pub truncated: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DenyRecord {
    pub spiffe_id: String,
    pub reason: String,
    pub denied_at: i64,
    pub denied_by: String,
}

/// One audit log line: who did what to what, and how it ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditRecord {
    /// Assigned by the store; ignored on append.
    pub id: i64,
    pub at: i64,
    pub actor: String,
    pub action: String,
    /// SPIFFE ID, serial or other object acted on ("" when none).
    pub target: String,
    /// `ok`, `denied` or `error`.
    pub outcome: String,
    pub reason: String,
}

/// A registration entry as stored (the domain `Entry` in text form).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EntryRecord {
    pub id: String,
    pub spiffe_id: String,
    /// Sorted selector texts (`unix:uid:1000`, …).
    pub selectors: Vec<String>,
    pub dns_names: Vec<String>,
    pub ttl_seconds: Option<i64>,
    pub jwt_ttl_seconds: Option<i64>,
    pub hint: Option<String>,
    pub federates_with: Vec<String>,
    pub created_at: i64,
}

#[derive(Debug, Clone, Default)]
pub struct CertFilter {
    pub spiffe_id: Option<String>,
    /// Only certificates with `not_after` in `(now, before]`.
    pub expiring_before: Option<i64>,
    /// Exclude certificates with `not_after <= now`.
    pub unexpired_at: Option<i64>,
    pub limit: Option<u32>,
}

#[derive(Debug, Clone, Default)]
pub struct AuditFilter {
    pub since: Option<i64>,
    /// Matches `target`.
    pub target: Option<String>,
    /// Only records older than this id (paging from the newest).
    pub before_id: Option<i64>,
    /// The newest `limit` matching records (oldest first in the result).
    pub limit: Option<u32>,
}

/// What a revocation changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RevokeOutcome {
    Revoked,
    AlreadyRevoked,
    NotFound,
}

/// A revocation's outcome and the certificate as it is after it (none when
/// no certificate has the serial): everything the caller needs, from the
/// one transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Revocation {
    pub outcome: RevokeOutcome,
    pub certificate: Option<CertRecord>,
}

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    #[error("database unavailable: {0}")]
    Unavailable(String),
    #[error("database error: {0}")]
    Backend(String),
    #[error("{what} already exists")]
    Conflict { what: String },
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

    /// Returns the stored value, if any, of a settings key (e.g. `trust_domain`).
    async fn setting(&self, key: &str) -> StoreResult<Option<String>>;
    /// Sets a key only if it is absent; returns the value now stored (the
    /// existing one when another replica won the race).
    async fn init_setting(&self, key: &str, value: &str) -> StoreResult<String>;

    /// Inserts the CA hierarchy created at start-up in one transaction, unless
    /// a root already exists; returns `false` (and writes nothing) if one does.
    async fn init_hierarchy(&self, cas: &[CaRecord], keys: &[SigningKeyRecord]) -> StoreResult<bool>;
    /// Adds one CA (a new intermediate); when `active`, every other CA of the
    /// same role becomes inactive in the same transaction.
    async fn insert_ca(&self, ca: &CaRecord) -> StoreResult<()>;
    /// Every CA, oldest first.
    async fn cas(&self) -> StoreResult<Vec<CaRecord>>;

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
    /// Revoked certificates of one issuer with `not_after > now`.
    async fn revoked_unexpired(&self, issuer_id: &str, now: i64) -> StoreResult<Vec<RevokedEntry>>;
    /// Revoked certificates of every issuer with `not_after > now` (for
    /// loading the revocation state at start), by issuer, then as
    /// [`Store::revoked_unexpired`].
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

// ---- helpers shared by the backends ----------------------------------------

/// Column access by name. Each backend implements it for its row type; a
/// value of the wrong type is `StoreError::Corrupt`.
trait Row {
    fn int(&self, col: &str) -> StoreResult<i64>;
    fn opt_int(&self, col: &str) -> StoreResult<Option<i64>>;
    fn text(&self, col: &str) -> StoreResult<String>;
    fn opt_text(&self, col: &str) -> StoreResult<Option<String>>;
    fn bytes(&self, col: &str) -> StoreResult<Vec<u8>>;
    fn opt_bytes(&self, col: &str) -> StoreResult<Option<Vec<u8>>>;
    fn boolean(&self, col: &str) -> StoreResult<bool>;
}

/// Implements [`Row`] for a backend's row type with its `get` method and
/// error mapping.
macro_rules! impl_row {
    ($row:ty, $get:ident, $err:expr) => {
        impl super::Row for $row {
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
            fn boolean(&self, col: &str) -> StoreResult<bool> {
                self.$get(col).map_err($err)
            }
        }
    };
}
use impl_row;

fn ca_from_row(r: &dyn Row) -> StoreResult<CaRecord> {
    let role = r.text("role")?;
    let unknown = || StoreError::Corrupt(format!("unknown CA role {role:?}"));
    Ok(CaRecord {
        id: r.text("id")?,
        role: CaRole::parse(&role).ok_or_else(unknown)?,
        common_name: r.text("common_name")?,
        cert_der: r.bytes("cert_der")?,
        sealed_key: r.opt_bytes("sealed_key")?,
        not_before: r.int("not_before")?,
        not_after: r.int("not_after")?,
        active: r.boolean("active")?,
        created_at: r.int("created_at")?,
    })
}

fn key_from_row(r: &dyn Row) -> StoreResult<SigningKeyRecord> {
    Ok(SigningKeyRecord {
        kid: r.text("kid")?,
        purpose: r.text("purpose")?,
        public_key_der: r.bytes("public_key_der")?,
        sealed_key: r.bytes("sealed_key")?,
        created_at: r.int("created_at")?,
        not_after: r.int("not_after")?,
    })
}

fn cert_from_row(r: &dyn Row) -> StoreResult<CertRecord> {
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
    })
}

fn imported_crl_from_row(r: &dyn Row) -> StoreResult<ImportedCrlRecord> {
    Ok(ImportedCrlRecord {
        issuer_id: r.text("issuer_id")?,
        crl_der: r.bytes("crl_der")?,
        number: r.int("number")?,
        this_update: r.int("this_update")?,
        next_update: r.int("next_update")?,
        imported_at: r.int("imported_at")?,
    })
}

fn revoked_from_row(r: &dyn Row) -> StoreResult<RevokedEntry> {
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

fn deny_from_row(r: &dyn Row) -> StoreResult<DenyRecord> {
    Ok(DenyRecord {
        spiffe_id: r.text("spiffe_id")?,
        reason: r.text("reason")?,
        denied_at: r.int("denied_at")?,
        denied_by: r.text("denied_by")?,
    })
}

fn audit_from_row(r: &dyn Row) -> StoreResult<AuditRecord> {
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
fn count_from_row(r: &dyn Row) -> StoreResult<u64> {
    let n = r.int("n")?;
    u64::try_from(n).map_err(|_| StoreError::Corrupt(format!("negative count {n}")))
}

#[cfg(test)]
mod tests {
    use super::{ChangeKind, redact_url};

    #[test]
    fn change_kinds_roundtrip() {
        use ChangeKind::*;
        for kind in [Revoke, Deny, Allow, Entry, Ca, SigningKey] {
            assert_eq!(ChangeKind::parse(kind.as_str()), Some(kind));
        }
        assert_eq!(ChangeKind::parse("signing-key"), None);
    }

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
