//! SQLite backend: the embedded default.
//!
//! One connection behind a `parking_lot::Mutex`; every call runs on tokio's
//! blocking pool. WAL with `synchronous=FULL`, so a call that returned `Ok`
//! has reached the disk. Write transactions start `IMMEDIATE`, so they never
//! fail half-way on a lock upgrade. The schema comes from `schema`, the
//! statements from `statements`, rows are decoded by `rows`.
//!
//! Change records are appended inside the write's transaction; with one
//! process per data directory there is nobody to notify, so
//! [`Store::change_signal`] is `None`.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use parking_lot::Mutex;
use rusqlite::types::ToSqlOutput;
use rusqlite::{Connection, ErrorCode, OpenFlags, Transaction, TransactionBehavior};

use super::agents as agent_sql;
use super::cas as ca_sql;
use super::changes as change_sql;
use super::checkpoint::Checkpointer;
use super::entries as entry_sql;
use super::group_commit::GroupCommit;
use super::profiles as profile_sql;
use super::rows::{self, Row};
use super::schema;
use super::statements::{self as sql, Param, Stmt};
use super::{
    AgentRecord, AuditFilter, AuditRecord, CHANGE_RETENTION, CaRecord, CaState, CertFilter, CertRecord, ChangeBatch,
    ChangeKind, DenyRecord, EntryRecord, ImportedCrlRecord, ProfileKey, ProfileRecord, Revocation, RevokeOutcome,
    RevokedEntry, SigningKeyRecord, Store, StoreError, StoreResult,
};

const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// Fields drop in this order: the checkpoint thread's connection closes
/// first and the writer thread ends, so that closing `conn`, the last
/// connection, folds the WAL into the database file.
pub struct SqliteStore {
    /// WAL checkpoints on a thread of their own (file databases only).
    _checkpoints: Option<Checkpointer>,
    /// Concurrent issuance records share one transaction and fsync.
    issuance: GroupCommit,
    /// The first sign of a damaged database seen while serving: from then on
    /// `ping` fails with it, so `/ready` and `pki status` say so.
    corrupt: Arc<Mutex<Option<String>>>,
    conn: Arc<Mutex<Connection>>,
}

impl SqliteStore {
    /// Opens (creating it with mode 0600 if new) and migrates the database
    /// file, after an integrity check (`PRAGMA quick_check`): a database with
    /// a damaged page is refused here rather than found out at the first
    /// issuance that touches it.
    pub async fn open(path: &Path) -> StoreResult<Self> {
        let path = path.to_path_buf();
        let conn = tokio::task::spawn_blocking(move || {
            create_private(&path)?;
            let flags = OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX;
            let conn = Connection::open_with_flags(&path, flags)
                .map_err(|e| StoreError::Unavailable(format!("cannot open {}: {e}", path.display())))?;
            let named = |e: StoreError| match e {
                StoreError::Damaged(m) => StoreError::Damaged(format!("{}: {m}", path.display())),
                StoreError::Backend(m) => StoreError::Backend(format!("{}: {m}", path.display())),
                other => other,
            };
            check_integrity(&conn).map_err(named)?;
            let conn = prepare(conn, "wal").map_err(named)?;
            let checkpoints = Checkpointer::start(&conn, &path).map_err(named)?;
            Ok::<_, StoreError>((conn, checkpoints))
        })
        .await
        .map_err(join_err)??;
        Self::with_connection(conn.0, Some(conn.1))
    }

    fn with_connection(conn: Connection, checkpoints: Option<Checkpointer>) -> StoreResult<Self> {
        let conn = Arc::new(Mutex::new(conn));
        let issuance = GroupCommit::start(Arc::clone(&conn))?;
        Ok(Self { _checkpoints: checkpoints, issuance, corrupt: Arc::default(), conn })
    }

    /// Remembers the first corruption a call ran into.
    fn noted<T>(corrupt: &Mutex<Option<String>>, result: StoreResult<T>) -> StoreResult<T> {
        if let Err(StoreError::Damaged(m)) = &result {
            let mut first = corrupt.lock();
            if first.is_none() {
                tracing::error!(error = %m, "the database is corrupt: restore it from a backup");
                *first = Some(m.clone());
            }
        }
        result
    }

    /// A private in-memory database, for unit tests.
    pub fn open_in_memory() -> StoreResult<Self> {
        let conn = Connection::open_in_memory().map_err(sqlite_err)?;
        Self::with_connection(prepare(conn, "memory")?, None)
    }

    /// Runs `f` on the connection, on the blocking pool.
    async fn run<T, F>(&self, f: F) -> StoreResult<T>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection) -> StoreResult<T> + Send + 'static,
    {
        let conn = Arc::clone(&self.conn);
        let result = tokio::task::spawn_blocking(move || f(&mut conn.lock())).await.map_err(join_err)?;
        Self::noted(&self.corrupt, result)
    }

    /// Runs `f` in one `IMMEDIATE` transaction, committed when it returns `Ok`.
    async fn write<T, F>(&self, f: F) -> StoreResult<T>
    where
        T: Send + 'static,
        F: FnOnce(&Transaction<'_>) -> StoreResult<T> + Send + 'static,
    {
        self.run(move |conn| {
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate);
            let tx = tx.map_err(sqlite_err)?;
            let out = f(&tx)?;
            tx.commit().map_err(sqlite_err)?;
            Ok(out)
        })
        .await
    }

    /// Executes every statement in one transaction.
    async fn write_all(&self, stmts: Vec<Stmt>) -> StoreResult<()> {
        self.write(move |tx| stmts.iter().try_for_each(|s| exec(tx, s).map(drop))).await
    }

    async fn all<T: Send + 'static>(&self, s: Stmt, decode: Decoder<T>) -> StoreResult<Vec<T>> {
        self.run(move |c| all(c, &s, decode)).await
    }

    async fn one<T: Send + 'static>(&self, s: Stmt, decode: Decoder<T>) -> StoreResult<Option<T>> {
        self.run(move |c| one(c, &s, decode)).await
    }
}

#[async_trait]
impl Store for SqliteStore {
    async fn ping(&self) -> StoreResult<()> {
        if let Some(m) = self.corrupt.lock().clone() {
            return Err(StoreError::Damaged(m));
        }
        self.one(sql::ping(), |_| Ok(())).await.map(drop)
    }

    async fn put_agent(&self, agent: &AgentRecord, attested: bool, audit: &AuditRecord) -> StoreResult<bool> {
        let put = if attested { agent_sql::put_agent(agent) } else { agent_sql::renew_agent(agent) };
        let log = sql::insert_audit(audit);
        self.write(move |tx| {
            let changed = exec(tx, &put)? > 0;
            exec(tx, &log)?;
            Ok(changed)
        })
        .await
    }

    async fn agent_seen(&self, node: &str, replica: Option<String>, at: i64, svids: i64) -> StoreResult<()> {
        let seen = agent_sql::agent_seen(node, &replica, at, svids);
        self.write(move |tx| exec(tx, &seen).map(drop)).await
    }

    async fn evict_agent(&self, node: &str, at: i64, audit: &AuditRecord) -> StoreResult<bool> {
        let (evict, log) = (agent_sql::evict_agent(node, at), sql::insert_audit(audit));
        self.write(move |tx| {
            let evicted = exec(tx, &evict)? > 0;
            if evicted {
                exec(tx, &log)?;
            }
            Ok(evicted)
        })
        .await
    }

    async fn agents(&self) -> StoreResult<Vec<AgentRecord>> {
        self.all(agent_sql::select_agents(), agent_sql::agent_from_row).await
    }

    async fn agent(&self, node: &str) -> StoreResult<Option<AgentRecord>> {
        self.one(agent_sql::select_agent(node), agent_sql::agent_from_row).await
    }

    async fn init_setting(&self, key: &str, value: &str) -> StoreResult<String> {
        let (insert, select) = (sql::insert_setting(key, value), sql::select_setting(key));
        let missing = StoreError::Backend(format!("setting {key:?} vanished after insert"));
        self.write(move |tx| {
            exec(tx, &insert)?;
            one(tx, &select, |r| r.text("value"))?.ok_or(missing)
        })
        .await
    }

    async fn init_hierarchy(&self, cas: &[CaRecord], keys: &[SigningKeyRecord]) -> StoreResult<bool> {
        let inserts: Vec<_> = cas.iter().map(ca_sql::insert_ca).chain(keys.iter().map(sql::insert_key)).collect();
        let changes = change_sql::hierarchy(cas, keys);
        self.write(move |tx| {
            if count(tx, &ca_sql::count_roots())? > 0 {
                return Ok(false);
            }
            inserts.iter().try_for_each(|s| exec(tx, s).map(drop))?;
            append_changes(tx, &changes)?;
            Ok(true)
        })
        .await
    }

    async fn insert_ca(&self, ca: &CaRecord) -> StoreResult<()> {
        let (demote, insert) = (ca_sql::demote_for(ca), ca_sql::insert_ca(ca));
        let (id, at) = (ca.id.clone(), ca.created_at);
        self.write(move |tx| {
            let mut changed = match &demote {
                Some(demote) => all(tx, demote, |r| r.text("id"))?,
                None => Vec::new(),
            };
            exec(tx, &insert)?;
            changed.push(id);
            append_changes(tx, &ca_sql::changed(&changed, at))
        })
        .await
    }

    async fn cas(&self) -> StoreResult<Vec<CaRecord>> {
        self.all(ca_sql::select_cas(), rows::ca_from_row).await
    }

    async fn set_ca_state(&self, id: &str, to: CaState, at: i64, audit: &AuditRecord) -> StoreResult<CaRecord> {
        let (select, log) = (ca_sql::select_ca(id), sql::insert_audit(audit));
        let id = id.to_string();
        self.write(move |tx| {
            let ca = one(tx, &select, rows::ca_from_row)?.ok_or_else(|| ca_sql::not_found(&id))?;
            let Some(change) = ca_sql::plan(&ca, to, at)? else {
                exec(tx, &log)?;
                return Ok(ca);
            };
            let mut changed = match &change.demote {
                Some(demote) => all(tx, demote, |r| r.text("id"))?,
                None => Vec::new(),
            };
            let updated = one(tx, &change.update, rows::ca_from_row)?.ok_or_else(|| ca_sql::not_found(&id))?;
            exec(tx, &log)?;
            changed.push(id);
            append_changes(tx, &ca_sql::changed(&changed, at))?;
            Ok(updated)
        })
        .await
    }

    async fn live_certificates_by_issuer(&self, now: i64) -> StoreResult<Vec<(String, u64)>> {
        self.all(ca_sql::live_by_issuer(now), ca_sql::live_from_row).await
    }

    async fn report_acknowledgements(&self, replica: &str, pending: &str, at: i64) -> StoreResult<()> {
        let upsert = ca_sql::upsert_report(replica, pending, at);
        self.write(move |tx| exec(tx, &upsert).map(drop)).await
    }

    async fn acknowledgement_reports(&self, since: i64) -> StoreResult<Vec<(String, String, i64)>> {
        self.all(ca_sql::reports_since(since), ca_sql::report_from_row).await
    }

    async fn insert_signing_key(&self, key: &SigningKeyRecord) -> StoreResult<()> {
        let insert = sql::insert_key(key);
        let change = change_sql::insert(ChangeKind::SigningKey, &key.kid, key.created_at);
        self.write(move |tx| {
            exec(tx, &insert)?;
            append_changes(tx, &[change])
        })
        .await
    }

    async fn import_crl(&self, crl: &ImportedCrlRecord, audit: &AuditRecord) -> StoreResult<bool> {
        let (upsert, log) = (sql::upsert_imported_crl(crl), sql::insert_audit(audit));
        let change = change_sql::insert(ChangeKind::Ca, &crl.issuer_id, audit.at);
        self.write(move |tx| {
            let stored = exec(tx, &upsert)? > 0;
            exec(tx, &log)?;
            if stored {
                append_changes(tx, &[change])?;
            }
            Ok(stored)
        })
        .await
    }

    async fn imported_crls(&self) -> StoreResult<Vec<ImportedCrlRecord>> {
        self.all(sql::select_imported_crls(), rows::imported_crl_from_row).await
    }

    async fn signing_keys(&self) -> StoreResult<Vec<SigningKeyRecord>> {
        self.all(sql::select_keys(), rows::key_from_row).await
    }

    async fn record_issuance(&self, cert: &CertRecord, audit: &AuditRecord) -> StoreResult<bool> {
        let result = self.issuance.submit(vec![sql::insert_cert(cert), sql::insert_audit(audit)]).await;
        Self::noted(&self.corrupt, result)
    }

    async fn certificate(&self, serial: &str) -> StoreResult<Option<CertRecord>> {
        self.one(sql::select_cert(serial), rows::cert_from_row).await
    }

    async fn certificates(&self, filter: &CertFilter) -> StoreResult<Vec<CertRecord>> {
        self.all(sql::certificates(filter), rows::cert_from_row).await
    }

    async fn active_certificate_count(&self, now: i64) -> StoreResult<u64> {
        let count_active = sql::count_active(now);
        self.run(move |c| count(c, &count_active)).await
    }

    async fn revoke(&self, serial: &str, reason: &str, at: i64, audit: &AuditRecord) -> StoreResult<Revocation> {
        let (revoke, log) = (sql::revoke_one(serial, reason, at), sql::insert_audit(audit));
        let select = sql::select_cert(serial);
        let change = change_sql::insert(ChangeKind::Revoke, serial, at);
        self.write(move |tx| {
            if let Some(certificate) = one(tx, &revoke, rows::cert_from_row)? {
                exec(tx, &log)?;
                append_changes(tx, &[change])?;
                return Ok(Revocation { outcome: RevokeOutcome::Revoked, certificate: Some(certificate) });
            }
            let certificate = one(tx, &select, rows::cert_from_row)?;
            let outcome = if certificate.is_some() { RevokeOutcome::AlreadyRevoked } else { RevokeOutcome::NotFound };
            Ok(Revocation { outcome, certificate })
        })
        .await
    }

    async fn revoked_unexpired_all(&self, now: i64) -> StoreResult<Vec<RevokedEntry>> {
        self.all(sql::select_revoked_all(now), rows::revoked_from_row).await
    }

    async fn deny(&self, entry: &DenyRecord, now: i64, audit: &AuditRecord) -> StoreResult<Vec<RevokedEntry>> {
        let (upsert, revoke) = (sql::upsert_deny(entry), sql::revoke_identity(entry, now));
        let log = sql::insert_audit(audit);
        let change = change_sql::insert(ChangeKind::Deny, &entry.spiffe_id, now);
        self.write(move |tx| {
            exec(tx, &upsert)?;
            let mut revoked = all(tx, &revoke, rows::revoked_from_row)?;
            exec(tx, &log)?;
            append_changes(tx, &[change])?;
            revoked.sort_by(|a, b| a.serial.cmp(&b.serial));
            Ok(revoked)
        })
        .await
    }

    async fn allow(&self, spiffe_id: &str, audit: &AuditRecord) -> StoreResult<bool> {
        let (delete, log) = (sql::delete_deny(spiffe_id), sql::insert_audit(audit));
        let change = change_sql::insert(ChangeKind::Allow, spiffe_id, audit.at);
        self.write(move |tx| {
            let removed = exec(tx, &delete)? > 0;
            exec(tx, &log)?;
            if removed {
                append_changes(tx, &[change])?;
            }
            Ok(removed)
        })
        .await
    }

    async fn denied(&self, spiffe_id: &str) -> StoreResult<Option<DenyRecord>> {
        self.one(sql::select_deny(spiffe_id), rows::deny_from_row).await
    }

    async fn deny_list(&self) -> StoreResult<Vec<DenyRecord>> {
        self.all(sql::select_deny_list(), rows::deny_from_row).await
    }

    async fn consume_token_id(&self, jti: &str, expires_at: i64) -> StoreResult<bool> {
        let insert = sql::insert_token(jti, expires_at);
        self.run(move |c| Ok(exec(c, &insert)? == 1)).await
    }

    async fn token_id_used(&self, jti: &str) -> StoreResult<bool> {
        Ok(self.one(sql::select_token(jti), rows::count_from_row).await?.unwrap_or(0) > 0)
    }

    async fn purge_expired(&self, now: i64, grace: i64) -> StoreResult<u64> {
        let certs = sql::purge_certs(now.saturating_sub(grace));
        let tokens = sql::purge_tokens(now);
        let changes = change_sql::purge(now.saturating_sub(CHANGE_RETENTION));
        self.write(move |tx| {
            let purged = exec(tx, &certs)?;
            exec(tx, &tokens)?;
            let revisions = all(tx, &changes, |r| r.int("revision"))?;
            if let Some(highest) = revisions.into_iter().max() {
                exec(tx, &change_sql::set_purged_through(highest))?;
            }
            Ok(purged)
        })
        .await
    }

    async fn insert_entry(&self, entry: &EntryRecord, audit: &AuditRecord) -> StoreResult<()> {
        let (insert, log) = (entry_sql::insert_entry(entry)?, sql::insert_audit(audit));
        let change = change_sql::insert(ChangeKind::Entry, &entry.id, audit.at);
        self.write(move |tx| {
            exec(tx, &insert)?;
            exec(tx, &log)?;
            append_changes(tx, &[change])
        })
        .await
    }

    async fn entries(&self) -> StoreResult<Vec<EntryRecord>> {
        self.all(entry_sql::select_entries(), entry_sql::entry_from_row).await
    }

    async fn delete_entry(&self, id: &str, audit: &AuditRecord) -> StoreResult<bool> {
        let (delete, log) = (entry_sql::delete_entry(id), sql::insert_audit(audit));
        let change = change_sql::insert(ChangeKind::Entry, id, audit.at);
        self.write(move |tx| {
            let deleted = exec(tx, &delete)? > 0;
            if deleted {
                exec(tx, &log)?;
                append_changes(tx, &[change])?;
            }
            Ok(deleted)
        })
        .await
    }

    async fn put_profile(&self, profile: &ProfileRecord, audit: &AuditRecord) -> StoreResult<()> {
        let (upsert, log) = (profile_sql::upsert_profile(profile), sql::insert_audit(audit));
        let change = change_sql::insert(ChangeKind::Profile, &profile_sql::subject(&profile.key), audit.at);
        self.write(move |tx| {
            exec(tx, &upsert)?;
            exec(tx, &log)?;
            append_changes(tx, &[change])
        })
        .await
    }

    async fn delete_profile(&self, key: &ProfileKey, audit: &AuditRecord) -> StoreResult<bool> {
        let (delete, log) = (profile_sql::delete_profile(key), sql::insert_audit(audit));
        let change = change_sql::insert(ChangeKind::Profile, &profile_sql::subject(key), audit.at);
        self.write(move |tx| {
            let deleted = exec(tx, &delete)? > 0;
            exec(tx, &log)?;
            if deleted {
                append_changes(tx, &[change])?;
            }
            Ok(deleted)
        })
        .await
    }

    async fn profile(&self, key: &ProfileKey) -> StoreResult<Option<ProfileRecord>> {
        self.one(profile_sql::select_profile(key), profile_sql::profile_from_row).await
    }

    async fn profiles(&self) -> StoreResult<Vec<ProfileRecord>> {
        self.all(profile_sql::select_profiles(), profile_sql::profile_from_row).await
    }

    async fn append_audit(&self, record: &AuditRecord) -> StoreResult<()> {
        self.write_all(vec![sql::insert_audit(record)]).await
    }

    async fn audit(&self, filter: &AuditFilter) -> StoreResult<Vec<AuditRecord>> {
        let mut records = self.all(sql::audit(filter), rows::audit_from_row).await?;
        records.reverse();
        Ok(records)
    }

    async fn change_revision(&self) -> StoreResult<i64> {
        let (newest, purged) =
            self.one(change_sql::select_marks(), change_sql::marks_from_row).await?.unwrap_or_default();
        Ok(newest.max(purged))
    }

    async fn changes_since(&self, after: i64, limit: u32) -> StoreResult<ChangeBatch> {
        let (select, marks) = (change_sql::select_since(after, limit), change_sql::select_marks());
        // One closure holds the connection: the rows and the purge mark agree.
        self.run(move |c| {
            let changes = all(c, &select, change_sql::change_from_row)?;
            let (_, purged) = one(c, &marks, change_sql::marks_from_row)?.unwrap_or_default();
            Ok(ChangeBatch { changes, truncated: after < purged })
        })
        .await
    }

    fn change_signal(&self) -> Option<tokio::sync::watch::Receiver<u64>> {
        None
    }
}

/// Appends change records in the caller's transaction.
fn append_changes(tx: &Connection, changes: &[Stmt]) -> StoreResult<()> {
    changes.iter().try_for_each(|s| all(tx, s, |r| r.int("revision")).map(drop))
}

type Decoder<T> = fn(&dyn Row) -> StoreResult<T>;

/// Creates the database file with mode 0600 if it does not exist yet; SQLite
/// gives its `-wal` and `-shm` files the same mode.
fn create_private(path: &Path) -> StoreResult<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let created = std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(path);
    match created {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(StoreError::Unavailable(format!("cannot create {}: {e}", path.display()))),
    }
}

/// `PRAGMA quick_check`: every page readable, every b-tree well formed.
fn check_integrity(conn: &Connection) -> StoreResult<()> {
    let mut stmt = conn.prepare("PRAGMA quick_check(5)").map_err(sqlite_err)?;
    let found: Vec<String> = stmt
        .query_map([], |r| r.get::<_, String>(0))
        .and_then(|rows| rows.collect::<Result<_, _>>())
        .map_err(sqlite_err)?;
    match found.as_slice() {
        [ok] if ok == "ok" => Ok(()),
        problems => Err(StoreError::Damaged(format!(
            "the integrity check failed ({}); restore the database from a backup",
            crate::domain::text::shorten(&problems.join("; "), 512)
        ))),
    }
}

/// Sets the pragmas and migrates; `journal` is the journal mode expected back.
fn prepare(mut conn: Connection, journal: &str) -> StoreResult<Connection> {
    conn.busy_timeout(BUSY_TIMEOUT).map_err(sqlite_err)?;
    let mode: String = conn.pragma_update_and_check(None, "journal_mode", "WAL", |r| r.get(0)).map_err(sqlite_err)?;
    if !mode.eq_ignore_ascii_case(journal) {
        return Err(StoreError::Backend(format!("journal_mode is {mode:?}, not {journal:?}")));
    }
    for (pragma, value) in [("synchronous", "FULL"), ("foreign_keys", "ON")] {
        conn.pragma_update(None, pragma, value).map_err(sqlite_err)?;
    }
    migrate(&mut conn)?;
    Ok(conn)
}

fn migrate(conn: &mut Connection) -> StoreResult<()> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate);
    let tx = tx.map_err(sqlite_err)?;
    tx.execute_batch(schema::CREATE_VERSION_TABLE).map_err(sqlite_err)?;
    let found = one(&tx, &sql::select_version(), |r| r.int("version"))?.unwrap_or_default();
    let mut version = found;
    for migration in schema::pending(found)? {
        tx.execute_batch(migration.sqlite).map_err(sqlite_err)?;
        version = migration.version;
    }
    if version != found {
        sql::set_version(version).iter().try_for_each(|s| exec(&tx, s).map(drop))?;
    }
    tx.commit().map_err(sqlite_err)
}

/// Runs a statement; returns the number of rows it changed.
pub(super) fn exec(c: &Connection, s: &Stmt) -> StoreResult<u64> {
    let mut stmt = c.prepare_cached(&positional(&s.sql)).map_err(sqlite_err)?;
    let changed = stmt.execute(rusqlite::params_from_iter(&s.params));
    changed.map(|n| n as u64).map_err(|e| s.error(sqlite_err(e)))
}

fn count(c: &Connection, s: &Stmt) -> StoreResult<u64> {
    Ok(one(c, s, rows::count_from_row)?.unwrap_or_default())
}

fn one<T>(c: &Connection, s: &Stmt, decode: Decoder<T>) -> StoreResult<Option<T>> {
    Ok(all(c, s, decode)?.into_iter().next())
}

fn all<T>(c: &Connection, s: &Stmt, decode: Decoder<T>) -> StoreResult<Vec<T>> {
    let mut stmt = c.prepare_cached(&positional(&s.sql)).map_err(sqlite_err)?;
    let mut rows = stmt.query(rusqlite::params_from_iter(&s.params)).map_err(|e| s.error(sqlite_err(e)))?;
    let mut out = Vec::new();
    while let Some(row) = rows.next().map_err(|e| s.error(sqlite_err(e)))? {
        out.push(decode(row)?);
    }
    Ok(out)
}

/// The shared SQL's `$N` placeholders in SQLite's `?N` spelling (the
/// statements contain no other `$`).
fn positional(sql: &str) -> String {
    sql.replace('$', "?")
}

impl rusqlite::ToSql for Param {
    fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
        Ok(match self {
            Param::Int(v) => ToSqlOutput::from(*v),
            Param::OptInt(v) => v.to_sql()?,
            Param::Text(v) => ToSqlOutput::from(v.as_str()),
            Param::OptText(v) => v.to_sql()?,
            Param::Bytes(v) => ToSqlOutput::from(v.as_slice()),
            Param::OptBytes(v) => v.to_sql()?,
        })
    }
}

rows::impl_row!(rusqlite::Row<'_>, get, sqlite_err);

/// The one mapping from rusqlite errors to `StoreError`.
pub(super) fn sqlite_err(e: rusqlite::Error) -> StoreError {
    use rusqlite::Error as E;
    use rusqlite::ffi::{SQLITE_CONSTRAINT_PRIMARYKEY, SQLITE_CONSTRAINT_UNIQUE};
    let message = e.to_string();
    match e {
        E::SqliteFailure(f, _) => match f.code {
            ErrorCode::ConstraintViolation
                if matches!(f.extended_code, SQLITE_CONSTRAINT_PRIMARYKEY | SQLITE_CONSTRAINT_UNIQUE) =>
            {
                StoreError::Conflict { what: message }
            }
            ErrorCode::DatabaseBusy
            | ErrorCode::DatabaseLocked
            | ErrorCode::CannotOpen
            | ErrorCode::DiskFull
            | ErrorCode::SystemIoFailure
            | ErrorCode::ReadOnly => StoreError::Unavailable(message),
            ErrorCode::DatabaseCorrupt | ErrorCode::NotADatabase => StoreError::Damaged(message),
            _ => StoreError::Backend(message),
        },
        E::FromSqlConversionFailure(..)
        | E::InvalidColumnType(..)
        | E::IntegralValueOutOfRange(..)
        | E::InvalidColumnName(..) => StoreError::Corrupt(message),
        _ => StoreError::Backend(message),
    }
}

pub(super) fn join_err(e: tokio::task::JoinError) -> StoreError {
    StoreError::Backend(format!("database task failed: {e}"))
}
