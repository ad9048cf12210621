//! PostgreSQL backend: for replicas sharing one database.
//!
//! A deadpool pool of `tokio-postgres` connections (no TLS: use a Unix socket
//! or a local network). Writes that must not race between replicas — the
//! migrations, the CA hierarchy and CA rotation — take a transaction-scoped
//! advisory lock; everything else is settled by unique keys and
//! `ON CONFLICT`. Every multi-row change is one transaction. The schema comes
//! from `schema`, the statements from `statements`, rows are decoded by `rows`.
//!
//! The change feed: every transaction that appends a change record takes
//! [`CHANGES_LOCK`] right before its insert and holds it until it commits, so
//! revisions commit in increasing order and a reader that saw revision `n`
//! never misses a smaller one committed later. The lock is taken after the
//! write's own statements, and nothing but the change insert and `pg_notify`
//! follows it, so it is held briefly and never waits on a row lock. The
//! `pg_notify` on [`CHANNEL`] is delivered at commit to a listener task
//! ([`listen`]) on its own connection, which turns notifications (and its
//! reconnects) into the [`Store::change_signal`] counter.

use std::future::poll_fn;
use std::time::Duration;

use async_trait::async_trait;
use deadpool_postgres::{GenericClient, Manager, ManagerConfig, Object, Pool, RecyclingMethod};
use deadpool_postgres::{Runtime, Transaction};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_postgres::error::SqlState;
use tokio_postgres::tls::NoTlsStream;
use tokio_postgres::types::ToSql;
use tokio_postgres::{AsyncMessage, Client, Connection, IsolationLevel, NoTls, Socket};

use super::agents as agent_sql;
use super::cas as ca_sql;
use super::changes as change_sql;
use super::entries as entry_sql;
use super::profiles as profile_sql;
use super::rows::{self, Row};
use super::schema;
use super::statements::{self as sql, Param, Stmt};
use super::{
    AgentRecord, AuditFilter, AuditRecord, CHANGE_RETENTION, CaRecord, CaState, CertFilter, CertRecord, ChangeBatch,
    ChangeKind, DenyRecord, EntryRecord, ImportedCrlRecord, ProfileKey, ProfileRecord, Revocation, RevokeOutcome,
    RevokedEntry, SigningKeyRecord, Store, StoreError, StoreResult, redact_url,
};

const POOL_SIZE: usize = 16;
const POOL_TIMEOUT: Duration = Duration::from_secs(10);
/// `pg_advisory_xact_lock` keys ("trustm" and a number).
const MIGRATION_LOCK: i64 = 0x7472_7573_746d_0001;
const CA_LOCK: i64 = 0x7472_7573_746d_0002;
/// The class of the per-identity `pg_advisory_xact_lock(class, hash)` ("tmid").
const IDENTITY_LOCK_CLASS: i32 = 0x746d_6964;
/// Held from a change record's insert to its commit: commit order = revision order.
const CHANGES_LOCK: i64 = 0x7472_7573_746d_0003;
/// The `NOTIFY` channel of the change feed.
const CHANNEL: &str = "trustmesh_changes";
/// The listening connection's `application_name` (visible in `pg_stat_activity`).
const LISTENER_NAME: &str = "trustmesh-changes";
/// Reconnect back-off of the listener: doubles from the first to the last.
const BACKOFF: (Duration, Duration) = (Duration::from_millis(100), Duration::from_secs(1));
/// TCP keepalive of the listening connection (unless the URL asks for less):
/// an idle listener must notice a dead peer, or it would wait forever.
const LISTENER_KEEPALIVE: Duration = Duration::from_secs(30);

pub struct PostgresStore {
    pool: Pool,
    signal: watch::Receiver<u64>,
    /// Ends the listener task with the store.
    _listener: AbortOnDrop,
}

impl PostgresStore {
    /// Connects (`postgres://user[:password]@host[:port]/db`, or
    /// `postgres://user@/db?host=/socket/dir`) and migrates the schema.
    pub async fn connect(url: &str) -> StoreResult<Self> {
        let config: tokio_postgres::Config =
            url.parse().map_err(|e| StoreError::Url { url: safe_url(url), reason: causes(&e) })?;
        let manager_config = ManagerConfig { recycling_method: RecyclingMethod::Fast };
        let pool = Pool::builder(Manager::from_config(config.clone(), NoTls, manager_config))
            .max_size(POOL_SIZE)
            .runtime(Runtime::Tokio1)
            .wait_timeout(Some(POOL_TIMEOUT))
            .create_timeout(Some(POOL_TIMEOUT))
            .recycle_timeout(Some(POOL_TIMEOUT))
            .build()
            .map_err(|e| StoreError::Backend(format!("cannot build connection pool: {e}")))?;
        let mut client = pool
            .get()
            .await
            .map_err(|e| StoreError::Unavailable(format!("cannot connect to {}: {}", safe_url(url), causes(&e))))?;
        migrate(&mut client).await?;
        drop(client);
        let listener_config = listener_config(&config);
        let first = listen(&listener_config)
            .await
            .map_err(|e| StoreError::Unavailable(format!("cannot listen on {}: {e}", safe_url(url))))?;
        // 1: the first `LISTEN` succeeded.
        let (tx, signal) = watch::channel(1);
        let task = tokio::spawn(follow(listener_config, safe_url(url), first, tx));
        Ok(Self { pool, signal, _listener: AbortOnDrop(task) })
    }

    async fn client(&self) -> StoreResult<Object> {
        let client = self.pool.get().await;
        client.map_err(|e| StoreError::Unavailable(format!("no database connection: {}", causes(&e))))
    }

    /// Executes every statement in one transaction.
    async fn all<T>(&self, s: Stmt, decode: Decoder<T>) -> StoreResult<Vec<T>> {
        all(&self.client().await?, &s, decode).await
    }

    async fn one<T>(&self, s: Stmt, decode: Decoder<T>) -> StoreResult<Option<T>> {
        one(&self.client().await?, &s, decode).await
    }

    /// Executes every statement, then appends the changes, in one transaction.
    async fn write_with_changes(&self, stmts: &[Stmt], changes: &[Stmt]) -> StoreResult<()> {
        let mut client = self.client().await?;
        let tx = begin(&mut client).await?;
        for s in stmts {
            exec(&tx, s).await?;
        }
        append_changes(&tx, changes).await?;
        tx.commit().await.map_err(pg_err)
    }
}

#[async_trait]
impl Store for PostgresStore {
    async fn ping(&self) -> StoreResult<()> {
        self.one(sql::ping(), |_| Ok(())).await.map(drop)
    }

    async fn put_agent(&self, agent: &AgentRecord, attested: bool, audit: &AuditRecord) -> StoreResult<bool> {
        let put = if attested { agent_sql::put_agent(agent) } else { agent_sql::renew_agent(agent) };
        let mut client = self.client().await?;
        let tx = begin(&mut client).await?;
        let changed = exec(&tx, &put).await? > 0;
        exec(&tx, &sql::insert_audit(audit)).await?;
        tx.commit().await.map_err(pg_err)?;
        Ok(changed)
    }

    async fn agent_seen(&self, node: &str, replica: Option<String>, at: i64, svids: i64) -> StoreResult<()> {
        self.write_with_changes(&[agent_sql::agent_seen(node, &replica, at, svids)], &[]).await
    }

    async fn evict_agent(&self, node: &str, at: i64, audit: &AuditRecord) -> StoreResult<bool> {
        let mut client = self.client().await?;
        let tx = begin(&mut client).await?;
        let evicted = exec(&tx, &agent_sql::evict_agent(node, at)).await? > 0;
        if evicted {
            exec(&tx, &sql::insert_audit(audit)).await?;
        }
        tx.commit().await.map_err(pg_err)?;
        Ok(evicted)
    }

    async fn agents(&self) -> StoreResult<Vec<AgentRecord>> {
        self.all(agent_sql::select_agents(), agent_sql::agent_from_row).await
    }

    async fn agent(&self, node: &str) -> StoreResult<Option<AgentRecord>> {
        self.one(agent_sql::select_agent(node), agent_sql::agent_from_row).await
    }

    async fn init_setting(&self, key: &str, value: &str) -> StoreResult<String> {
        // Read committed: a concurrent insert makes ours wait, then do nothing,
        // and the SELECT (a new snapshot) sees the winner's value.
        let client = self.client().await?;
        exec(&client, &sql::insert_setting(key, value)).await?;
        let stored = one(&client, &sql::select_setting(key), |r| r.text("value")).await?;
        stored.ok_or_else(|| StoreError::Backend(format!("setting {key:?} vanished after insert")))
    }

    async fn init_hierarchy(&self, cas: &[CaRecord], keys: &[SigningKeyRecord]) -> StoreResult<bool> {
        let mut client = self.client().await?;
        let tx = begin(&mut client).await?;
        lock(&tx, CA_LOCK).await?;
        if count(&tx, &ca_sql::count_roots()).await? > 0 {
            return Ok(false);
        }
        for s in cas.iter().map(ca_sql::insert_ca).chain(keys.iter().map(sql::insert_key)) {
            exec(&tx, &s).await?;
        }
        append_changes(&tx, &change_sql::hierarchy(cas, keys)).await?;
        tx.commit().await.map_err(pg_err)?;
        Ok(true)
    }

    async fn insert_ca(&self, ca: &CaRecord) -> StoreResult<()> {
        let mut client = self.client().await?;
        let tx = begin(&mut client).await?;
        lock(&tx, CA_LOCK).await?;
        let mut changed = match ca_sql::demote_for(ca) {
            Some(demote) => all(&tx, &demote, |r| r.text("id")).await?,
            None => Vec::new(),
        };
        exec(&tx, &ca_sql::insert_ca(ca)).await?;
        changed.push(ca.id.clone());
        append_changes(&tx, &ca_sql::changed(&changed, ca.created_at)).await?;
        tx.commit().await.map_err(pg_err)
    }

    async fn cas(&self) -> StoreResult<Vec<CaRecord>> {
        self.all(ca_sql::select_cas(), rows::ca_from_row).await
    }

    async fn set_ca_state(&self, id: &str, to: CaState, at: i64, audit: &AuditRecord) -> StoreResult<CaRecord> {
        let mut client = self.client().await?;
        let tx = begin(&mut client).await?;
        // Serialized with every other CA write: the state read here is the
        // one the update replaces, and two activations of one role queue.
        lock(&tx, CA_LOCK).await?;
        let ca = one(&tx, &ca_sql::select_ca(id), rows::ca_from_row).await?.ok_or_else(|| ca_sql::not_found(id))?;
        let Some(change) = ca_sql::plan(&ca, to, at)? else {
            exec(&tx, &sql::insert_audit(audit)).await?;
            tx.commit().await.map_err(pg_err)?;
            return Ok(ca);
        };
        let mut changed = match &change.demote {
            Some(demote) => all(&tx, demote, |r| r.text("id")).await?,
            None => Vec::new(),
        };
        let updated = one(&tx, &change.update, rows::ca_from_row).await?.ok_or_else(|| ca_sql::not_found(id))?;
        exec(&tx, &sql::insert_audit(audit)).await?;
        changed.push(updated.id.clone());
        append_changes(&tx, &ca_sql::changed(&changed, at)).await?;
        tx.commit().await.map_err(pg_err)?;
        Ok(updated)
    }

    async fn live_certificates_by_issuer(&self, now: i64) -> StoreResult<Vec<(String, u64)>> {
        self.all(ca_sql::live_by_issuer(now), ca_sql::live_from_row).await
    }

    async fn report_acknowledgements(&self, replica: &str, pending: &str, at: i64) -> StoreResult<()> {
        self.write_with_changes(&[ca_sql::upsert_report(replica, pending, at)], &[]).await
    }

    async fn acknowledgement_reports(&self, since: i64) -> StoreResult<Vec<(String, String, i64)>> {
        self.all(ca_sql::reports_since(since), ca_sql::report_from_row).await
    }

    async fn insert_signing_key(&self, key: &SigningKeyRecord) -> StoreResult<()> {
        let change = change_sql::insert(ChangeKind::SigningKey, &key.kid, key.created_at);
        self.write_with_changes(&[sql::insert_key(key)], &[change]).await
    }

    async fn import_crl(&self, crl: &ImportedCrlRecord, audit: &AuditRecord) -> StoreResult<bool> {
        let mut client = self.client().await?;
        let tx = begin(&mut client).await?;
        let stored = exec(&tx, &sql::upsert_imported_crl(crl)).await? > 0;
        exec(&tx, &sql::insert_audit(audit)).await?;
        if stored {
            append_changes(&tx, &[change_sql::insert(ChangeKind::Ca, &crl.issuer_id, audit.at)]).await?;
        }
        tx.commit().await.map_err(pg_err)?;
        Ok(stored)
    }

    async fn imported_crls(&self) -> StoreResult<Vec<ImportedCrlRecord>> {
        self.all(sql::select_imported_crls(), rows::imported_crl_from_row).await
    }

    async fn signing_keys(&self) -> StoreResult<Vec<SigningKeyRecord>> {
        self.all(sql::select_keys(), rows::key_from_row).await
    }

    async fn record_issuance(&self, cert: &CertRecord, audit: &AuditRecord) -> StoreResult<bool> {
        let mut client = self.client().await?;
        let tx = begin(&mut client).await?;
        // A certificate without a SPIFFE ID (a profile's) has no identity a denial could race.
        if !cert.spiffe_id.is_empty() {
            lock_identity(&tx, &cert.spiffe_id).await?;
        }
        if exec(&tx, &sql::insert_cert(cert)).await? == 0 {
            return Ok(false);
        }
        exec(&tx, &sql::insert_audit(audit)).await?;
        tx.commit().await.map_err(pg_err)?;
        Ok(true)
    }

    async fn certificate(&self, serial: &str) -> StoreResult<Option<CertRecord>> {
        self.one(sql::select_cert(serial), rows::cert_from_row).await
    }

    async fn certificates(&self, filter: &CertFilter) -> StoreResult<Vec<CertRecord>> {
        self.all(sql::certificates(filter), rows::cert_from_row).await
    }

    async fn active_certificate_count(&self, now: i64) -> StoreResult<u64> {
        count(&self.client().await?, &sql::count_active(now)).await
    }

    async fn revoke(&self, serial: &str, reason: &str, at: i64, audit: &AuditRecord) -> StoreResult<Revocation> {
        let mut client = self.client().await?;
        let tx = begin(&mut client).await?;
        let revocation = match one(&tx, &sql::revoke_one(serial, reason, at), rows::cert_from_row).await? {
            Some(certificate) => {
                exec(&tx, &sql::insert_audit(audit)).await?;
                append_changes(&tx, &[change_sql::insert(ChangeKind::Revoke, serial, at)]).await?;
                Revocation { outcome: RevokeOutcome::Revoked, certificate: Some(certificate) }
            }
            None => {
                let certificate = one(&tx, &sql::select_cert(serial), rows::cert_from_row).await?;
                let outcome =
                    if certificate.is_some() { RevokeOutcome::AlreadyRevoked } else { RevokeOutcome::NotFound };
                Revocation { outcome, certificate }
            }
        };
        tx.commit().await.map_err(pg_err)?;
        Ok(revocation)
    }

    async fn revoked_unexpired_all(&self, now: i64) -> StoreResult<Vec<RevokedEntry>> {
        self.all(sql::select_revoked_all(now), rows::revoked_from_row).await
    }

    async fn deny(&self, entry: &DenyRecord, now: i64, audit: &AuditRecord) -> StoreResult<Vec<RevokedEntry>> {
        let mut client = self.client().await?;
        let tx = begin(&mut client).await?;
        lock_identity(&tx, &entry.spiffe_id).await?;
        exec(&tx, &sql::upsert_deny(entry)).await?;
        let mut revoked = all(&tx, &sql::revoke_identity(entry, now), rows::revoked_from_row).await?;
        exec(&tx, &sql::insert_audit(audit)).await?;
        append_changes(&tx, &[change_sql::insert(ChangeKind::Deny, &entry.spiffe_id, now)]).await?;
        tx.commit().await.map_err(pg_err)?;
        revoked.sort_by(|a, b| a.serial.cmp(&b.serial));
        Ok(revoked)
    }

    async fn allow(&self, spiffe_id: &str, audit: &AuditRecord) -> StoreResult<bool> {
        let mut client = self.client().await?;
        let tx = begin(&mut client).await?;
        let removed = exec(&tx, &sql::delete_deny(spiffe_id)).await? > 0;
        exec(&tx, &sql::insert_audit(audit)).await?;
        if removed {
            append_changes(&tx, &[change_sql::insert(ChangeKind::Allow, spiffe_id, audit.at)]).await?;
        }
        tx.commit().await.map_err(pg_err)?;
        Ok(removed)
    }

    async fn denied(&self, spiffe_id: &str) -> StoreResult<Option<DenyRecord>> {
        self.one(sql::select_deny(spiffe_id), rows::deny_from_row).await
    }

    async fn deny_list(&self) -> StoreResult<Vec<DenyRecord>> {
        self.all(sql::select_deny_list(), rows::deny_from_row).await
    }

    async fn consume_token_id(&self, jti: &str, expires_at: i64) -> StoreResult<bool> {
        let inserted = exec(&self.client().await?, &sql::insert_token(jti, expires_at)).await?;
        Ok(inserted == 1)
    }

    async fn token_id_used(&self, jti: &str) -> StoreResult<bool> {
        Ok(self.one(sql::select_token(jti), rows::count_from_row).await?.unwrap_or(0) > 0)
    }

    async fn purge_expired(&self, now: i64, grace: i64) -> StoreResult<u64> {
        let mut client = self.client().await?;
        let tx = begin(&mut client).await?;
        let purged = exec(&tx, &sql::purge_certs(now.saturating_sub(grace))).await?;
        exec(&tx, &sql::purge_tokens(now)).await?;
        let purge = change_sql::purge(now.saturating_sub(CHANGE_RETENTION));
        let revisions = all(&tx, &purge, |r| r.int("revision")).await?;
        if let Some(highest) = revisions.into_iter().max() {
            exec(&tx, &change_sql::set_purged_through(highest)).await?;
        }
        tx.commit().await.map_err(pg_err)?;
        Ok(purged)
    }

    async fn insert_entry(&self, entry: &EntryRecord, audit: &AuditRecord) -> StoreResult<()> {
        let change = change_sql::insert(ChangeKind::Entry, &entry.id, audit.at);
        self.write_with_changes(&[entry_sql::insert_entry(entry)?, sql::insert_audit(audit)], &[change]).await
    }

    async fn entries(&self) -> StoreResult<Vec<EntryRecord>> {
        self.all(entry_sql::select_entries(), entry_sql::entry_from_row).await
    }

    async fn delete_entry(&self, id: &str, audit: &AuditRecord) -> StoreResult<bool> {
        let mut client = self.client().await?;
        let tx = begin(&mut client).await?;
        let deleted = exec(&tx, &entry_sql::delete_entry(id)).await? > 0;
        if deleted {
            exec(&tx, &sql::insert_audit(audit)).await?;
            append_changes(&tx, &[change_sql::insert(ChangeKind::Entry, id, audit.at)]).await?;
        }
        tx.commit().await.map_err(pg_err)?;
        Ok(deleted)
    }

    async fn put_profile(&self, profile: &ProfileRecord, audit: &AuditRecord) -> StoreResult<()> {
        let change = change_sql::insert(ChangeKind::Profile, &profile_sql::subject(&profile.key), audit.at);
        self.write_with_changes(&[profile_sql::upsert_profile(profile), sql::insert_audit(audit)], &[change]).await
    }

    async fn delete_profile(&self, key: &ProfileKey, audit: &AuditRecord) -> StoreResult<bool> {
        let mut client = self.client().await?;
        let tx = begin(&mut client).await?;
        let deleted = exec(&tx, &profile_sql::delete_profile(key)).await? > 0;
        exec(&tx, &sql::insert_audit(audit)).await?;
        if deleted {
            let change = change_sql::insert(ChangeKind::Profile, &profile_sql::subject(key), audit.at);
            append_changes(&tx, &[change]).await?;
        }
        tx.commit().await.map_err(pg_err)?;
        Ok(deleted)
    }

    async fn profile(&self, key: &ProfileKey) -> StoreResult<Option<ProfileRecord>> {
        self.one(profile_sql::select_profile(key), profile_sql::profile_from_row).await
    }

    async fn profiles(&self) -> StoreResult<Vec<ProfileRecord>> {
        self.all(profile_sql::select_profiles(), profile_sql::profile_from_row).await
    }

    async fn append_audit(&self, record: &AuditRecord) -> StoreResult<()> {
        exec(&self.client().await?, &sql::insert_audit(record)).await.map(drop)
    }

    async fn audit(&self, filter: &AuditFilter) -> StoreResult<Vec<AuditRecord>> {
        let mut records = self.all(sql::audit(filter), rows::audit_from_row).await?;
        records.reverse();
        Ok(records)
    }

    async fn change_revision(&self) -> StoreResult<i64> {
        let marks = self.one(change_sql::select_marks(), change_sql::marks_from_row).await?;
        let (newest, purged) = marks.unwrap_or_default();
        Ok(newest.max(purged))
    }

    async fn changes_since(&self, after: i64, limit: u32) -> StoreResult<ChangeBatch> {
        // One snapshot for the rows and the purge mark, so a purge committing
        // in between cannot hide rows without setting `truncated`.
        let mut client = self.client().await?;
        let tx = client.build_transaction().isolation_level(IsolationLevel::RepeatableRead).read_only(true);
        let tx = tx.start().await.map_err(pg_err)?;
        let changes = all(&tx, &change_sql::select_since(after, limit), change_sql::change_from_row).await?;
        let marks = one(&tx, &change_sql::select_marks(), change_sql::marks_from_row).await?;
        tx.commit().await.map_err(pg_err)?;
        let (_, purged) = marks.unwrap_or_default();
        Ok(ChangeBatch { changes, truncated: after < purged })
    }

    fn change_signal(&self) -> Option<watch::Receiver<u64>> {
        Some(self.signal.clone())
    }
}

/// Appends change records in the caller's transaction, in revision order
/// with every other writer (see the module documentation), and notifies the
/// listeners at commit.
async fn append_changes(tx: &Transaction<'_>, changes: &[Stmt]) -> StoreResult<()> {
    if changes.is_empty() {
        return Ok(());
    }
    lock(tx, CHANGES_LOCK).await?;
    let mut newest = 0;
    for s in changes {
        let revision = one(tx, s, |r| r.int("revision")).await?;
        newest = revision.ok_or_else(|| StoreError::Backend("a change insert returned no revision".into()))?;
    }
    exec(tx, &change_sql::notify(CHANNEL, newest)).await.map(drop)
}

// ---- the change listener ---------------------------------------------------

/// Aborts a task when dropped.
struct AbortOnDrop(JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// A connection that has run `LISTEN`. The client must outlive the connection.
struct Listening {
    _client: Client,
    connection: Connection<Socket, NoTlsStream>,
}

/// The pool's settings, named for `pg_stat_activity`, with keepalives tight
/// enough to notice a vanished server on an idle connection.
fn listener_config(pool: &tokio_postgres::Config) -> tokio_postgres::Config {
    let mut config = pool.clone();
    config.application_name(LISTENER_NAME);
    if config.get_connect_timeout().is_none() {
        config.connect_timeout(POOL_TIMEOUT);
    }
    if config.get_keepalives_idle() > LISTENER_KEEPALIVE {
        config.keepalives(true).keepalives_idle(LISTENER_KEEPALIVE);
    }
    config
}

/// Connects and runs `LISTEN`, driving the connection meanwhile. Errors are
/// their text, with causes.
async fn listen(config: &tokio_postgres::Config) -> Result<Listening, String> {
    let (client, mut connection) = config.connect(NoTls).await.map_err(|e| causes(&e))?;
    let command = format!("LISTEN {CHANNEL}");
    {
        let mut listen = std::pin::pin!(client.batch_execute(&command));
        loop {
            tokio::select! {
                done = &mut listen => {
                    done.map_err(|e| causes(&e))?;
                    break;
                }
                message = poll_fn(|cx| connection.poll_message(cx)) => match message {
                    // A notification now is covered by the bump after `LISTEN`.
                    Some(Ok(_)) => {}
                    Some(Err(e)) => return Err(causes(&e)),
                    None => return Err(CLOSED.into()),
                },
            }
        }
    }
    Ok(Listening { _client: client, connection })
}

/// The listener task: bumps `signal` on every notification (this process's
/// own commits included) and after every reconnect, reconnecting with
/// back-off when the connection fails. The store aborts it when dropped.
async fn follow(config: tokio_postgres::Config, url: String, first: Listening, signal: watch::Sender<u64>) {
    let bump = |signal: &watch::Sender<u64>| signal.send_modify(|n| *n += 1);
    let mut listening = first;
    loop {
        let error = loop {
            match poll_fn(|cx| listening.connection.poll_message(cx)).await {
                Some(Ok(AsyncMessage::Notification(_))) => bump(&signal),
                Some(Ok(_)) => {}
                Some(Err(e)) => break causes(&e),
                None => break CLOSED.to_string(),
            }
        };
        if signal.is_closed() {
            return;
        }
        tracing::warn!(url = %url, %error, "change listener lost its connection; reconnecting");
        let mut delay = BACKOFF.0;
        listening = loop {
            tokio::time::sleep(delay).await;
            match listen(&config).await {
                Ok(l) => break l,
                Err(e) => {
                    delay = (delay * 2).min(BACKOFF.1);
                    tracing::warn!(url = %url, error = %e, retry_in = ?delay, "change listener cannot reconnect");
                }
            }
        };
        tracing::info!(url = %url, "change listener reconnected");
        bump(&signal);
    }
}

/// The error of a connection the server closed without a message.
const CLOSED: &str = "connection closed";

type Decoder<T> = fn(&dyn Row) -> StoreResult<T>;

/// [`redact_url`], with a `password=` query parameter masked as well.
fn safe_url(url: &str) -> String {
    let redacted = redact_url(url);
    let Some((base, query)) = redacted.split_once('?') else {
        return redacted;
    };
    let mask = |pair: &str| match pair.split_once('=') {
        Some((key, _)) if key.eq_ignore_ascii_case("password") => format!("{key}=***"),
        _ => pair.to_string(),
    };
    let query: Vec<String> = query.split('&').map(mask).collect();
    format!("{base}?{}", query.join("&"))
}

/// Applies pending migrations under an advisory lock, so replicas starting
/// together migrate once.
async fn migrate(client: &mut Object) -> StoreResult<()> {
    let tx = begin(client).await?;
    lock(&tx, MIGRATION_LOCK).await?;
    tx.batch_execute(schema::CREATE_VERSION_TABLE).await.map_err(pg_err)?;
    let found = one(&tx, &sql::select_version(), |r| r.int("version")).await?;
    let found = found.unwrap_or_default();
    let mut version = found;
    for migration in schema::pending(found)? {
        tx.batch_execute(migration.postgres).await.map_err(pg_err)?;
        version = migration.version;
    }
    if version != found {
        for s in sql::set_version(version) {
            exec(&tx, &s).await?;
        }
    }
    tx.commit().await.map_err(pg_err)
}

async fn begin(client: &mut Object) -> StoreResult<Transaction<'_>> {
    client.transaction().await.map_err(pg_err)
}

/// Serializes an issuance and a denial of the same identity: under READ
/// COMMITTED, an insert that checked the deny list before a concurrent
/// denial committed, and committed after that denial revoked the identity's
/// certificates, would leave a live certificate of a denied identity.
/// Two-key advisory locks (class, hash) do not overlap the one-key locks above.
async fn lock_identity(tx: &Transaction<'_>, spiffe_id: &str) -> StoreResult<()> {
    let sql = "SELECT pg_advisory_xact_lock($1, hashtext($2))";
    tx.execute(sql, &[&IDENTITY_LOCK_CLASS, &spiffe_id]).await.map(drop).map_err(pg_err)
}

/// Serializes this transaction with every other one taking the same key.
async fn lock(tx: &Transaction<'_>, key: i64) -> StoreResult<()> {
    let sql = "SELECT pg_advisory_xact_lock($1)";
    tx.execute(sql, &[&key]).await.map(drop).map_err(pg_err)
}

/// Runs a statement; returns the number of rows it changed.
async fn exec(c: &impl GenericClient, s: &Stmt) -> StoreResult<u64> {
    let stmt = c.prepare_cached(&s.sql).await.map_err(pg_err)?;
    c.execute(&stmt, &bind(&s.params)).await.map_err(|e| s.error(pg_err(e)))
}

async fn count(c: &impl GenericClient, s: &Stmt) -> StoreResult<u64> {
    Ok(one(c, s, rows::count_from_row).await?.unwrap_or_default())
}

async fn one<T>(c: &impl GenericClient, s: &Stmt, decode: Decoder<T>) -> StoreResult<Option<T>> {
    Ok(all(c, s, decode).await?.into_iter().next())
}

async fn all<T>(c: &impl GenericClient, s: &Stmt, decode: Decoder<T>) -> StoreResult<Vec<T>> {
    let stmt = c.prepare_cached(&s.sql).await.map_err(pg_err)?;
    let rows = c.query(&stmt, &bind(&s.params)).await.map_err(|e| s.error(pg_err(e)))?;
    rows.iter().map(|r| decode(r)).collect()
}

fn bind(params: &[Param]) -> Vec<&(dyn ToSql + Sync)> {
    params.iter().map(value).collect()
}

fn value(p: &Param) -> &(dyn ToSql + Sync) {
    match p {
        Param::Int(v) => v,
        Param::OptInt(v) => v,
        Param::Text(v) => v,
        Param::OptText(v) => v,
        Param::Bytes(v) => v,
        Param::OptBytes(v) => v,
    }
}

rows::impl_row!(tokio_postgres::Row, try_get, decode_err);

fn decode_err(e: tokio_postgres::Error) -> StoreError {
    StoreError::Corrupt(e.to_string())
}

/// An error and its sources, `a: b: c`, skipping a source its parent already
/// printed.
fn causes(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        let text = cause.to_string();
        if !out.ends_with(&text) {
            out = format!("{out}: {text}");
        }
        source = cause.source();
    }
    out
}

/// The one mapping from `tokio-postgres` errors to `StoreError`.
fn pg_err(e: tokio_postgres::Error) -> StoreError {
    if let Some(db) = e.as_db_error() {
        if *db.code() == SqlState::UNIQUE_VIOLATION {
            let what = db.constraint().unwrap_or("row").to_string();
            return StoreError::Conflict { what };
        }
        // Connection exceptions, insufficient resources, operator intervention.
        return match db.code().code().get(..2) {
            Some("08" | "53" | "57") => StoreError::Unavailable(db.to_string()),
            _ => StoreError::Backend(db.to_string()),
        };
    }
    let io = std::error::Error::source(&e).is_some_and(|s| s.is::<std::io::Error>());
    if e.is_closed() || io { StoreError::Unavailable(causes(&e)) } else { StoreError::Backend(causes(&e)) }
}
