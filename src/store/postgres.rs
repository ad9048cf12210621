//! PostgreSQL backend: for replicas sharing one database.
//!
//! A deadpool pool of `tokio-postgres` connections (no TLS: use a Unix socket
//! or a local network). Writes that must not race between replicas — the
//! migrations, the CA hierarchy and CA rotation — take a transaction-scoped
//! advisory lock; everything else is settled by unique keys and
//! `ON CONFLICT`. Every multi-row change is one transaction.

use std::time::Duration;

use async_trait::async_trait;
use deadpool_postgres::{
    GenericClient, Manager, ManagerConfig, Object, Pool, RecyclingMethod, Runtime,
};
use tokio_postgres::NoTls;
use tokio_postgres::error::SqlState;
use tokio_postgres::types::ToSql;

use super::migrations::{self as m, Param};
use super::{
    AuditFilter, AuditRecord, CaRecord, CertFilter, CertRecord, DenyRecord, RevokeOutcome,
    RevokedEntry, SigningKeyRecord, Store, StoreError, StoreResult, redact_url,
};

const POOL_SIZE: usize = 16;
const POOL_TIMEOUT: Duration = Duration::from_secs(10);
/// `pg_advisory_xact_lock` keys ("trustm" + a number).
const MIGRATION_LOCK: i64 = 0x7472_7573_746d_0001;
const CA_LOCK: i64 = 0x7472_7573_746d_0002;

pub struct PostgresStore {
    pool: Pool,
}

type Params<'a> = &'a [&'a (dyn ToSql + Sync)];

impl PostgresStore {
    /// Connects (`postgres://user[:password]@host[:port]/db` or
    /// `postgres://user@/db?host=/socket/dir`) and migrates the schema.
    pub async fn connect(url: &str) -> StoreResult<Self> {
        let config: tokio_postgres::Config = url.parse().map_err(|e| StoreError::Url {
            url: redact_url(url),
            reason: format!("{e}"),
        })?;
        let manager = Manager::from_config(
            config,
            NoTls,
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = Pool::builder(manager)
            .max_size(POOL_SIZE)
            .runtime(Runtime::Tokio1)
            .wait_timeout(Some(POOL_TIMEOUT))
            .create_timeout(Some(POOL_TIMEOUT))
            .recycle_timeout(Some(POOL_TIMEOUT))
            .build()
            .map_err(|e| StoreError::Backend(format!("cannot build connection pool: {e}")))?;
        let mut client = pool.get().await.map_err(|e| {
            StoreError::Unavailable(format!("cannot connect to {}: {e}", redact_url(url)))
        })?;
        migrate(&mut client).await?;
        Ok(Self { pool })
    }

    async fn client(&self) -> StoreResult<Object> {
        self.pool
            .get()
            .await
            .map_err(|e| StoreError::Unavailable(format!("no database connection: {e}")))
    }
}

#[async_trait]
impl Store for PostgresStore {
    async fn ping(&self) -> StoreResult<()> {
        self.client()
            .await?
            .simple_query(m::PING)
            .await
            .map(drop)
            .map_err(pg_err)
    }

    async fn setting(&self, key: &str) -> StoreResult<Option<String>> {
        one(&self.client().await?, m::SELECT_SETTING, &[&key], |r| {
            r.text(0)
        })
        .await
    }

    async fn init_setting(&self, key: &str, value: &str) -> StoreResult<String> {
        // Read committed: a concurrent insert makes ours wait, then do nothing,
        // and the following SELECT (a new snapshot) sees the winner's value.
        let c = self.client().await?;
        exec(&c, m::INSERT_SETTING, &[&key, &value]).await?;
        one(&c, m::SELECT_SETTING, &[&key], |r| r.text(0))
            .await?
            .ok_or_else(|| StoreError::Backend(format!("setting {key:?} vanished after insert")))
    }

    async fn init_hierarchy(
        &self,
        cas: &[CaRecord],
        keys: &[SigningKeyRecord],
    ) -> StoreResult<bool> {
        let mut c = self.client().await?;
        let tx = c.transaction().await.map_err(pg_err)?;
        exec(&tx, "SELECT pg_advisory_xact_lock($1)", &[&CA_LOCK]).await?;
        if count(&tx, m::COUNT_ROOTS, &[]).await? > 0 {
            return Ok(false);
        }
        for ca in cas {
            insert_ca(&tx, ca).await?;
        }
        for key in keys {
            insert_key(&tx, key).await?;
        }
        tx.commit().await.map_err(pg_err)?;
        Ok(true)
    }

    async fn insert_ca(&self, ca: &CaRecord) -> StoreResult<()> {
        let mut c = self.client().await?;
        let tx = c.transaction().await.map_err(pg_err)?;
        exec(&tx, "SELECT pg_advisory_xact_lock($1)", &[&CA_LOCK]).await?;
        if ca.active {
            exec(&tx, m::DEACTIVATE_ROLE, &[&ca.role.as_str(), &ca.id]).await?;
        }
        insert_ca(&tx, ca).await?;
        tx.commit().await.map_err(pg_err)
    }

    async fn cas(&self) -> StoreResult<Vec<CaRecord>> {
        all(&self.client().await?, m::SELECT_CAS, &[], m::ca_from_row).await
    }

    async fn insert_signing_key(&self, key: &SigningKeyRecord) -> StoreResult<()> {
        insert_key(&self.client().await?, key).await
    }

    async fn signing_keys(&self) -> StoreResult<Vec<SigningKeyRecord>> {
        all(&self.client().await?, m::SELECT_KEYS, &[], m::key_from_row).await
    }

    async fn record_issuance(&self, c: &CertRecord, audit: &AuditRecord) -> StoreResult<()> {
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(pg_err)?;
        let status = m::status_str(c.status);
        let values: Params<'_> = &[
            &c.serial,
            &c.spiffe_id,
            &c.issuer_id,
            &c.fingerprint,
            &c.not_before,
            &c.not_after,
            &status,
            &c.revoked_at,
            &c.revocation_reason,
            &c.cert_der,
        ];
        exec(&tx, m::INSERT_CERT, values)
            .await
            .map_err(m::conflict_on(|| {
                format!("certificate serial {}", c.serial)
            }))?;
        insert_audit(&tx, audit).await?;
        tx.commit().await.map_err(pg_err)
    }

    async fn certificate(&self, serial: &str) -> StoreResult<Option<CertRecord>> {
        one(
            &self.client().await?,
            m::SELECT_CERT,
            &[&serial],
            m::cert_from_row,
        )
        .await
    }

    async fn certificates(&self, filter: &CertFilter) -> StoreResult<Vec<CertRecord>> {
        let (sql, values) = m::certificates_query(filter);
        all(
            &self.client().await?,
            &sql,
            &bind(&values),
            m::cert_from_row,
        )
        .await
    }

    async fn active_certificate_count(&self, now: i64) -> StoreResult<u64> {
        count(&self.client().await?, m::COUNT_ACTIVE, &[&now]).await
    }

    async fn revoke(
        &self,
        serial: &str,
        reason: &str,
        at: i64,
        audit: &AuditRecord,
    ) -> StoreResult<RevokeOutcome> {
        let mut c = self.client().await?;
        let tx = c.transaction().await.map_err(pg_err)?;
        let outcome = if exec(&tx, m::REVOKE_ONE, &[&serial, &at, &reason]).await? == 1 {
            insert_audit(&tx, audit).await?;
            RevokeOutcome::Revoked
        } else if count(&tx, m::CERT_EXISTS, &[&serial]).await? > 0 {
            RevokeOutcome::AlreadyRevoked
        } else {
            RevokeOutcome::NotFound
        };
        tx.commit().await.map_err(pg_err)?;
        Ok(outcome)
    }

    async fn revoked_unexpired(&self, issuer_id: &str, now: i64) -> StoreResult<Vec<RevokedEntry>> {
        all(
            &self.client().await?,
            m::SELECT_REVOKED,
            &[&issuer_id, &now],
            m::revoked_from_row,
        )
        .await
    }

    async fn deny(
        &self,
        e: &DenyRecord,
        now: i64,
        audit: &AuditRecord,
    ) -> StoreResult<Vec<String>> {
        let mut c = self.client().await?;
        let tx = c.transaction().await.map_err(pg_err)?;
        exec(
            &tx,
            m::UPSERT_DENY,
            &[&e.spiffe_id, &e.reason, &e.denied_at, &e.denied_by],
        )
        .await?;
        let reason = m::deny_revocation_reason(&e.reason);
        let mut serials = all(
            &tx,
            m::REVOKE_IDENTITY,
            &[&e.spiffe_id, &now, &reason],
            |r| r.text(0),
        )
        .await?;
        serials.sort();
        insert_audit(&tx, audit).await?;
        tx.commit().await.map_err(pg_err)?;
        Ok(serials)
    }

    async fn allow(&self, spiffe_id: &str, audit: &AuditRecord) -> StoreResult<bool> {
        let mut c = self.client().await?;
        let tx = c.transaction().await.map_err(pg_err)?;
        let removed = exec(&tx, m::DELETE_DENY, &[&spiffe_id]).await? > 0;
        insert_audit(&tx, audit).await?;
        tx.commit().await.map_err(pg_err)?;
        Ok(removed)
    }

    async fn denied(&self, spiffe_id: &str) -> StoreResult<Option<DenyRecord>> {
        one(
            &self.client().await?,
            m::SELECT_DENY,
            &[&spiffe_id],
            m::deny_from_row,
        )
        .await
    }

    async fn deny_list(&self) -> StoreResult<Vec<DenyRecord>> {
        all(
            &self.client().await?,
            m::SELECT_DENY_LIST,
            &[],
            m::deny_from_row,
        )
        .await
    }

    async fn consume_token_id(&self, jti: &str, expires_at: i64) -> StoreResult<bool> {
        Ok(exec(&self.client().await?, m::INSERT_TOKEN, &[&jti, &expires_at]).await? == 1)
    }

    async fn purge_expired(&self, now: i64, grace: i64) -> StoreResult<u64> {
        let mut c = self.client().await?;
        let tx = c.transaction().await.map_err(pg_err)?;
        let certs = exec(&tx, m::PURGE_CERTS, &[&now.saturating_sub(grace)]).await?;
        exec(&tx, m::PURGE_TOKENS, &[&now]).await?;
        tx.commit().await.map_err(pg_err)?;
        Ok(certs)
    }

    async fn append_audit(&self, record: &AuditRecord) -> StoreResult<()> {
        insert_audit(&self.client().await?, record).await
    }

    async fn audit(&self, filter: &AuditFilter) -> StoreResult<Vec<AuditRecord>> {
        let (sql, values) = m::audit_query(filter);
        let mut records = all(
            &self.client().await?,
            &sql,
            &bind(&values),
            m::audit_from_row,
        )
        .await?;
        records.reverse();
        Ok(records)
    }
}

/// Applies pending migrations under an advisory lock, so replicas starting
/// together migrate once.
async fn migrate(client: &mut Object) -> StoreResult<()> {
    let tx = client.transaction().await.map_err(pg_err)?;
    exec(&tx, "SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK]).await?;
    tx.batch_execute(m::CREATE_VERSION_TABLE)
        .await
        .map_err(pg_err)?;
    let found = one(&tx, m::SELECT_VERSION, &[], |r| r.int(0))
        .await?
        .unwrap_or_default();
    let mut version = found;
    for migration in m::pending(found)? {
        tx.batch_execute(migration.postgres).await.map_err(pg_err)?;
        version = migration.version;
    }
    if version != found {
        exec(&tx, m::CLEAR_VERSION, &[]).await?;
        exec(&tx, m::INSERT_VERSION, &[&version]).await?;
    }
    tx.commit().await.map_err(pg_err)
}

async fn insert_ca(c: &impl GenericClient, ca: &CaRecord) -> StoreResult<()> {
    let role = ca.role.as_str();
    let values: Params<'_> = &[
        &ca.id,
        &role,
        &ca.common_name,
        &ca.cert_der,
        &ca.sealed_key,
        &ca.not_before,
        &ca.not_after,
        &ca.active,
        &ca.created_at,
    ];
    exec(c, m::INSERT_CA, values)
        .await
        .map(drop)
        .map_err(m::conflict_on(|| {
            format!("CA {} (or a second active {role} CA)", ca.id)
        }))
}

async fn insert_key(c: &impl GenericClient, k: &SigningKeyRecord) -> StoreResult<()> {
    let values: Params<'_> = &[
        &k.kid,
        &k.purpose,
        &k.public_key_der,
        &k.sealed_key,
        &k.created_at,
        &k.not_after,
    ];
    exec(c, m::INSERT_KEY, values)
        .await
        .map(drop)
        .map_err(m::conflict_on(|| format!("signing key {}", k.kid)))
}

async fn insert_audit(c: &impl GenericClient, a: &AuditRecord) -> StoreResult<()> {
    exec(
        c,
        m::INSERT_AUDIT,
        &[&a.at, &a.actor, &a.action, &a.target, &a.outcome, &a.reason],
    )
    .await
    .map(drop)
}

fn bind(values: &[Param]) -> Vec<&(dyn ToSql + Sync)> {
    values
        .iter()
        .map(|p| match p {
            Param::Int(i) => i as &(dyn ToSql + Sync),
            Param::Text(s) => s as &(dyn ToSql + Sync),
        })
        .collect()
}

async fn exec(c: &impl GenericClient, sql: &str, values: Params<'_>) -> StoreResult<u64> {
    let stmt = c.prepare_cached(sql).await.map_err(pg_err)?;
    c.execute(&stmt, values).await.map_err(pg_err)
}

async fn count(c: &impl GenericClient, sql: &str, values: Params<'_>) -> StoreResult<u64> {
    let n = one(c, sql, values, |r| r.int(0)).await?.unwrap_or_default();
    u64::try_from(n).map_err(|_| StoreError::Corrupt(format!("negative count {n}")))
}

async fn one<T>(
    c: &impl GenericClient,
    sql: &str,
    values: Params<'_>,
    decode: impl Fn(&dyn m::Row) -> StoreResult<T> + Send,
) -> StoreResult<Option<T>> {
    Ok(all(c, sql, values, decode).await?.into_iter().next())
}

async fn all<T>(
    c: &impl GenericClient,
    sql: &str,
    values: Params<'_>,
    decode: impl Fn(&dyn m::Row) -> StoreResult<T> + Send,
) -> StoreResult<Vec<T>> {
    let stmt = c.prepare_cached(sql).await.map_err(pg_err)?;
    c.query(&stmt, values)
        .await
        .map_err(pg_err)?
        .iter()
        .map(|r| decode(r))
        .collect()
}

impl m::Row for tokio_postgres::Row {
    fn int(&self, i: usize) -> StoreResult<i64> {
        self.try_get(i).map_err(decode_err)
    }
    fn opt_int(&self, i: usize) -> StoreResult<Option<i64>> {
        self.try_get(i).map_err(decode_err)
    }
    fn text(&self, i: usize) -> StoreResult<String> {
        self.try_get(i).map_err(decode_err)
    }
    fn opt_text(&self, i: usize) -> StoreResult<Option<String>> {
        self.try_get(i).map_err(decode_err)
    }
    fn bytes(&self, i: usize) -> StoreResult<Vec<u8>> {
        self.try_get(i).map_err(decode_err)
    }
    fn opt_bytes(&self, i: usize) -> StoreResult<Option<Vec<u8>>> {
        self.try_get(i).map_err(decode_err)
    }
    fn boolean(&self, i: usize) -> StoreResult<bool> {
        self.try_get(i).map_err(decode_err)
    }
}

fn decode_err(e: tokio_postgres::Error) -> StoreError {
    StoreError::Corrupt(e.to_string())
}

/// The one mapping from `tokio-postgres` errors to `StoreError`.
fn pg_err(e: tokio_postgres::Error) -> StoreError {
    if let Some(db) = e.as_db_error() {
        if *db.code() == SqlState::UNIQUE_VIOLATION {
            return StoreError::Conflict {
                what: db.constraint().unwrap_or("row").to_string(),
            };
        }
        // Connection exceptions, insufficient resources, operator intervention.
        return match db.code().code().get(..2) {
            Some("08" | "53" | "57") => StoreError::Unavailable(db.to_string()),
            _ => StoreError::Backend(db.to_string()),
        };
    }
    let io = std::error::Error::source(&e).is_some_and(|s| s.is::<std::io::Error>());
    if e.is_closed() || io {
        StoreError::Unavailable(e.to_string())
    } else {
        StoreError::Backend(e.to_string())
    }
}
