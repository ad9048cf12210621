//! SQLite backend: the embedded default.
//!
//! One connection behind a `parking_lot::Mutex`; every call runs on tokio's
//! blocking pool. WAL with `synchronous=FULL`, so a call that returned `Ok`
//! has reached the disk. Write transactions start `IMMEDIATE`, so they never
//! fail half-way on a lock upgrade.

use std::path::Path;
use std::sync::Arc;

use async_trait::async_trait;
use parking_lot::Mutex;
use rusqlite::{
    Connection, ErrorCode, OpenFlags, Transaction, TransactionBehavior, params, params_from_iter,
};

use super::migrations::{self as m, Param};
use super::{
    AuditFilter, AuditRecord, CaRecord, CertFilter, CertRecord, DenyRecord, RevokeOutcome,
    RevokedEntry, SigningKeyRecord, Store, StoreError, StoreResult,
};

const BUSY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

pub struct SqliteStore {
    conn: Arc<Mutex<Connection>>,
}

impl SqliteStore {
    /// Opens (creating it with mode 0600 if new) and migrates the database file.
    pub async fn open(path: &Path) -> StoreResult<Self> {
        let path = path.to_path_buf();
        let conn = tokio::task::spawn_blocking(move || {
            create_private(&path)?;
            let flags = OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX;
            let conn = Connection::open_with_flags(&path, flags).map_err(|e| {
                StoreError::Unavailable(format!("cannot open {}: {e}", path.display()))
            })?;
            prepare(conn, "wal")
        })
        .await
        .map_err(join_err)??;
        Ok(Self {
            conn: Arc::new(Mutex::new(conn)),
        })
    }

    /// A private in-memory database, for unit tests.
    pub fn open_in_memory() -> StoreResult<Self> {
        let conn = Connection::open_in_memory().map_err(sql_err)?;
        Ok(Self {
            conn: Arc::new(Mutex::new(prepare(conn, "memory")?)),
        })
    }

    /// Runs `f` on the connection on the blocking pool.
    async fn run<T, F>(&self, f: F) -> StoreResult<T>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection) -> StoreResult<T> + Send + 'static,
    {
        let conn = Arc::clone(&self.conn);
        tokio::task::spawn_blocking(move || f(&mut conn.lock()))
            .await
            .map_err(join_err)?
    }

    /// Runs `f` in one `IMMEDIATE` transaction, committed when it returns `Ok`.
    async fn write<T, F>(&self, f: F) -> StoreResult<T>
    where
        T: Send + 'static,
        F: FnOnce(&Transaction<'_>) -> StoreResult<T> + Send + 'static,
    {
        self.run(move |conn| {
            let tx = conn
                .transaction_with_behavior(TransactionBehavior::Immediate)
                .map_err(sql_err)?;
            let out = f(&tx)?;
            tx.commit().map_err(sql_err)?;
            Ok(out)
        })
        .await
    }
}

#[async_trait]
impl Store for SqliteStore {
    async fn ping(&self) -> StoreResult<()> {
        self.run(|c| c.query_row(m::PING, [], |_| Ok(())).map_err(sql_err))
            .await
    }

    async fn setting(&self, key: &str) -> StoreResult<Option<String>> {
        let key = key.to_string();
        self.run(move |c| one(c, m::SELECT_SETTING, params![key], |r| r.text(0)))
            .await
    }

    async fn init_setting(&self, key: &str, value: &str) -> StoreResult<String> {
        let (key, value) = (key.to_string(), value.to_string());
        self.write(move |tx| {
            exec(tx, m::INSERT_SETTING, params![key, value])?;
            one(tx, m::SELECT_SETTING, params![key], |r| r.text(0))?.ok_or_else(|| {
                StoreError::Backend(format!("setting {key:?} vanished after insert"))
            })
        })
        .await
    }

    async fn init_hierarchy(
        &self,
        cas: &[CaRecord],
        keys: &[SigningKeyRecord],
    ) -> StoreResult<bool> {
        let (cas, keys) = (cas.to_vec(), keys.to_vec());
        self.write(move |tx| {
            if count(tx, m::COUNT_ROOTS, params![])? > 0 {
                return Ok(false);
            }
            cas.iter().try_for_each(|ca| insert_ca(tx, ca))?;
            keys.iter().try_for_each(|key| insert_key(tx, key))?;
            Ok(true)
        })
        .await
    }

    async fn insert_ca(&self, ca: &CaRecord) -> StoreResult<()> {
        let ca = ca.clone();
        self.write(move |tx| {
            if ca.active {
                exec(tx, m::DEACTIVATE_ROLE, params![ca.role.as_str(), ca.id])?;
            }
            insert_ca(tx, &ca)
        })
        .await
    }

    async fn cas(&self) -> StoreResult<Vec<CaRecord>> {
        self.run(|c| all(c, m::SELECT_CAS, params![], m::ca_from_row))
            .await
    }

    async fn insert_signing_key(&self, key: &SigningKeyRecord) -> StoreResult<()> {
        let key = key.clone();
        self.write(move |tx| insert_key(tx, &key)).await
    }

    async fn signing_keys(&self) -> StoreResult<Vec<SigningKeyRecord>> {
        self.run(|c| all(c, m::SELECT_KEYS, params![], m::key_from_row))
            .await
    }

    async fn record_issuance(&self, cert: &CertRecord, audit: &AuditRecord) -> StoreResult<()> {
        let (c, audit) = (cert.clone(), audit.clone());
        self.write(move |tx| {
            let status = m::status_str(c.status);
            exec(
                tx,
                m::INSERT_CERT,
                params![
                    c.serial,
                    c.spiffe_id,
                    c.issuer_id,
                    c.fingerprint,
                    c.not_before,
                    c.not_after,
                    status,
                    c.revoked_at,
                    c.revocation_reason,
                    c.cert_der
                ],
            )
            .map_err(m::conflict_on(|| {
                format!("certificate serial {}", c.serial)
            }))?;
            insert_audit(tx, &audit)
        })
        .await
    }

    async fn certificate(&self, serial: &str) -> StoreResult<Option<CertRecord>> {
        let serial = serial.to_string();
        self.run(move |c| one(c, m::SELECT_CERT, params![serial], m::cert_from_row))
            .await
    }

    async fn certificates(&self, filter: &CertFilter) -> StoreResult<Vec<CertRecord>> {
        let (sql, values) = m::certificates_query(filter);
        self.run(move |c| {
            all(
                c,
                &sql,
                params_from_iter(values.iter().map(sql_value)),
                m::cert_from_row,
            )
        })
        .await
    }

    async fn active_certificate_count(&self, now: i64) -> StoreResult<u64> {
        self.run(move |c| count(c, m::COUNT_ACTIVE, params![now]))
            .await
    }

    async fn revoke(
        &self,
        serial: &str,
        reason: &str,
        at: i64,
        audit: &AuditRecord,
    ) -> StoreResult<RevokeOutcome> {
        let (serial, reason, audit) = (serial.to_string(), reason.to_string(), audit.clone());
        self.write(move |tx| {
            if exec(tx, m::REVOKE_ONE, params![serial, at, reason])? == 1 {
                insert_audit(tx, &audit)?;
                Ok(RevokeOutcome::Revoked)
            } else if count(tx, m::CERT_EXISTS, params![serial])? > 0 {
                Ok(RevokeOutcome::AlreadyRevoked)
            } else {
                Ok(RevokeOutcome::NotFound)
            }
        })
        .await
    }

    async fn revoked_unexpired(&self, issuer_id: &str, now: i64) -> StoreResult<Vec<RevokedEntry>> {
        let issuer_id = issuer_id.to_string();
        self.run(move |c| {
            all(
                c,
                m::SELECT_REVOKED,
                params![issuer_id, now],
                m::revoked_from_row,
            )
        })
        .await
    }

    async fn deny(
        &self,
        entry: &DenyRecord,
        now: i64,
        audit: &AuditRecord,
    ) -> StoreResult<Vec<String>> {
        let (e, audit) = (entry.clone(), audit.clone());
        self.write(move |tx| {
            exec(
                tx,
                m::UPSERT_DENY,
                params![e.spiffe_id, e.reason, e.denied_at, e.denied_by],
            )?;
            let reason = m::deny_revocation_reason(&e.reason);
            let mut serials = all(
                tx,
                m::REVOKE_IDENTITY,
                params![e.spiffe_id, now, reason],
                |r| r.text(0),
            )?;
            serials.sort();
            insert_audit(tx, &audit)?;
            Ok(serials)
        })
        .await
    }

    async fn allow(&self, spiffe_id: &str, audit: &AuditRecord) -> StoreResult<bool> {
        let (spiffe_id, audit) = (spiffe_id.to_string(), audit.clone());
        self.write(move |tx| {
            let removed = exec(tx, m::DELETE_DENY, params![spiffe_id])? > 0;
            insert_audit(tx, &audit)?;
            Ok(removed)
        })
        .await
    }

    async fn denied(&self, spiffe_id: &str) -> StoreResult<Option<DenyRecord>> {
        let spiffe_id = spiffe_id.to_string();
        self.run(move |c| one(c, m::SELECT_DENY, params![spiffe_id], m::deny_from_row))
            .await
    }

    async fn deny_list(&self) -> StoreResult<Vec<DenyRecord>> {
        self.run(|c| all(c, m::SELECT_DENY_LIST, params![], m::deny_from_row))
            .await
    }

    async fn consume_token_id(&self, jti: &str, expires_at: i64) -> StoreResult<bool> {
        let jti = jti.to_string();
        self.run(move |c| Ok(exec(c, m::INSERT_TOKEN, params![jti, expires_at])? == 1))
            .await
    }

    async fn purge_expired(&self, now: i64, grace: i64) -> StoreResult<u64> {
        self.write(move |tx| {
            let certs = exec(tx, m::PURGE_CERTS, params![now.saturating_sub(grace)])?;
            exec(tx, m::PURGE_TOKENS, params![now])?;
            Ok(certs)
        })
        .await
    }

    async fn append_audit(&self, record: &AuditRecord) -> StoreResult<()> {
        let record = record.clone();
        self.run(move |c| insert_audit(c, &record)).await
    }

    async fn audit(&self, filter: &AuditFilter) -> StoreResult<Vec<AuditRecord>> {
        let (sql, values) = m::audit_query(filter);
        let mut records = self
            .run(move |c| {
                all(
                    c,
                    &sql,
                    params_from_iter(values.iter().map(sql_value)),
                    m::audit_from_row,
                )
            })
            .await?;
        records.reverse();
        Ok(records)
    }
}

/// Creates the database file with mode 0600 if it does not exist yet; SQLite
/// gives its `-wal` and `-shm` files the same mode.
fn create_private(path: &Path) -> StoreResult<()> {
    use std::os::unix::fs::OpenOptionsExt;
    match std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
    {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(StoreError::Unavailable(format!(
            "cannot create {}: {e}",
            path.display()
        ))),
    }
}

/// Sets the pragmas and migrates; `journal` is the journal mode expected back.
fn prepare(mut conn: Connection, journal: &str) -> StoreResult<Connection> {
    conn.busy_timeout(BUSY_TIMEOUT).map_err(sql_err)?;
    let mode: String = conn
        .pragma_update_and_check(None, "journal_mode", "WAL", |r| r.get(0))
        .map_err(sql_err)?;
    if !mode.eq_ignore_ascii_case(journal) {
        return Err(StoreError::Backend(format!(
            "journal_mode is {mode:?}, expected {journal:?}"
        )));
    }
    conn.pragma_update(None, "synchronous", "FULL")
        .map_err(sql_err)?;
    conn.pragma_update(None, "foreign_keys", "ON")
        .map_err(sql_err)?;
    migrate(&mut conn)?;
    Ok(conn)
}

fn migrate(conn: &mut Connection) -> StoreResult<()> {
    let tx = conn
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(sql_err)?;
    tx.execute_batch(m::CREATE_VERSION_TABLE).map_err(sql_err)?;
    let found: i64 = tx
        .query_row(m::SELECT_VERSION, [], |r| r.get(0))
        .map_err(sql_err)?;
    let mut version = found;
    for migration in m::pending(found)? {
        tx.execute_batch(migration.sqlite).map_err(sql_err)?;
        version = migration.version;
    }
    if version != found {
        exec(&tx, m::CLEAR_VERSION, params![])?;
        exec(&tx, m::INSERT_VERSION, params![version])?;
    }
    tx.commit().map_err(sql_err)
}

fn insert_ca(tx: &Connection, ca: &CaRecord) -> StoreResult<()> {
    exec(
        tx,
        m::INSERT_CA,
        params![
            ca.id,
            ca.role.as_str(),
            ca.common_name,
            ca.cert_der,
            ca.sealed_key,
            ca.not_before,
            ca.not_after,
            ca.active,
            ca.created_at
        ],
    )
    .map(drop)
    .map_err(m::conflict_on(|| {
        format!("CA {} (or a second active {} CA)", ca.id, ca.role.as_str())
    }))
}

fn insert_key(tx: &Connection, k: &SigningKeyRecord) -> StoreResult<()> {
    exec(
        tx,
        m::INSERT_KEY,
        params![
            k.kid,
            k.purpose,
            k.public_key_der,
            k.sealed_key,
            k.created_at,
            k.not_after
        ],
    )
    .map(drop)
    .map_err(m::conflict_on(|| format!("signing key {}", k.kid)))
}

fn insert_audit(c: &Connection, a: &AuditRecord) -> StoreResult<()> {
    exec(
        c,
        m::INSERT_AUDIT,
        params![a.at, a.actor, a.action, a.target, a.outcome, a.reason],
    )
    .map(drop)
}

/// The shared SQL with `$N` placeholders rewritten to SQLite's `?N`.
fn positional(sql: &str) -> String {
    sql.replace('$', "?")
}

fn exec(c: &Connection, sql: &str, p: impl rusqlite::Params) -> StoreResult<u64> {
    let n = c
        .prepare_cached(&positional(sql))
        .and_then(|mut s| s.execute(p))
        .map_err(sql_err)?;
    Ok(n as u64)
}

fn count(c: &Connection, sql: &str, p: impl rusqlite::Params) -> StoreResult<u64> {
    let n = one(c, sql, p, |r| r.int(0))?.unwrap_or_default();
    u64::try_from(n).map_err(|_| StoreError::Corrupt(format!("negative count {n}")))
}

fn one<T>(
    c: &Connection,
    sql: &str,
    p: impl rusqlite::Params,
    decode: impl Fn(&dyn m::Row) -> StoreResult<T>,
) -> StoreResult<Option<T>> {
    Ok(all(c, sql, p, decode)?.into_iter().next())
}

fn all<T>(
    c: &Connection,
    sql: &str,
    p: impl rusqlite::Params,
    decode: impl Fn(&dyn m::Row) -> StoreResult<T>,
) -> StoreResult<Vec<T>> {
    let mut stmt = c.prepare_cached(&positional(sql)).map_err(sql_err)?;
    let mut rows = stmt.query(p).map_err(sql_err)?;
    let mut out = Vec::new();
    while let Some(row) = rows.next().map_err(sql_err)? {
        out.push(decode(row)?);
    }
    Ok(out)
}

fn sql_value(p: &Param) -> rusqlite::types::Value {
    match p {
        Param::Int(i) => rusqlite::types::Value::Integer(*i),
        Param::Text(s) => rusqlite::types::Value::Text(s.clone()),
    }
}

impl m::Row for rusqlite::Row<'_> {
    fn int(&self, i: usize) -> StoreResult<i64> {
        self.get(i).map_err(sql_err)
    }
    fn opt_int(&self, i: usize) -> StoreResult<Option<i64>> {
        self.get(i).map_err(sql_err)
    }
    fn text(&self, i: usize) -> StoreResult<String> {
        self.get(i).map_err(sql_err)
    }
    fn opt_text(&self, i: usize) -> StoreResult<Option<String>> {
        self.get(i).map_err(sql_err)
    }
    fn bytes(&self, i: usize) -> StoreResult<Vec<u8>> {
        self.get(i).map_err(sql_err)
    }
    fn opt_bytes(&self, i: usize) -> StoreResult<Option<Vec<u8>>> {
        self.get(i).map_err(sql_err)
    }
    fn boolean(&self, i: usize) -> StoreResult<bool> {
        self.get(i).map_err(sql_err)
    }
}

/// The one mapping from rusqlite errors to `StoreError`.
fn sql_err(e: rusqlite::Error) -> StoreError {
    use rusqlite::Error as E;
    match &e {
        E::SqliteFailure(f, _) => match f.code {
            ErrorCode::ConstraintViolation
                if matches!(
                    f.extended_code,
                    rusqlite::ffi::SQLITE_CONSTRAINT_PRIMARYKEY
                        | rusqlite::ffi::SQLITE_CONSTRAINT_UNIQUE
                ) =>
            {
                StoreError::Conflict {
                    what: e.to_string(),
                }
            }
            ErrorCode::DatabaseBusy
            | ErrorCode::DatabaseLocked
            | ErrorCode::CannotOpen
            | ErrorCode::DiskFull
            | ErrorCode::SystemIoFailure
            | ErrorCode::ReadOnly => StoreError::Unavailable(e.to_string()),
            ErrorCode::DatabaseCorrupt | ErrorCode::NotADatabase => {
                StoreError::Corrupt(e.to_string())
            }
            _ => StoreError::Backend(e.to_string()),
        },
        E::FromSqlConversionFailure(..)
        | E::InvalidColumnType(..)
        | E::IntegralValueOutOfRange(..) => StoreError::Corrupt(e.to_string()),
        _ => StoreError::Backend(e.to_string()),
    }
}

fn join_err(e: tokio::task::JoinError) -> StoreError {
    StoreError::Backend(format!("database task failed: {e}"))
}
