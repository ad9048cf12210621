//! An in-process trustmesh for the benches (`#[path]`-included, not a crate
//! module): the issuer on SQLite in a directory, as `trustmesh serve` starts
//! it (system clock, random serials, embedded policy), and optionally the SDS
//! server on a Unix socket, wired as `app::serve` wires it.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use time::OffsetDateTime;

use tokio::sync::watch;
use trustmesh::app::IssuerSide;
use trustmesh::attest::Attestation;
use trustmesh::ca::Kek;
use trustmesh::cache::{CacheInputs, IdentityCache, IdentitySource};
use trustmesh::domain::{RandomSerials, SerialSource, SystemClock, TrustDomain};
use trustmesh::issuer::{InitParams, Issuer, IssuerConfig};
use trustmesh::policy::PolicyEngine;
use trustmesh::sds::SdsServer;
use trustmesh::store::Store;
use trustmesh::trust::Acknowledgements;

pub const TRUST_DOMAIN: &str = "example.org";

/// The SQLite database file of a bench data directory.
pub fn db_path(dir: &Path) -> PathBuf {
    dir.join("trustmesh.db")
}

/// Opens the store of `dir` and starts an issuer on it (creating the PKI on
/// first use; the KEK is kept in `dir/kek` so a restart loads the same CAs).
pub async fn start_issuer(dir: &Path) -> Result<(Arc<Issuer>, Arc<dyn Store>), String> {
    let kek_path = dir.join("kek");
    let kek_text = match std::fs::read_to_string(&kek_path) {
        Ok(t) => t,
        Err(_) => {
            let (_, text) = Kek::generate(&ring::rand::SystemRandom::new()).map_err(|e| format!("kek: {e}"))?;
            std::fs::write(&kek_path, text.as_bytes()).map_err(|e| format!("{}: {e}", kek_path.display()))?;
            text.to_string()
        }
    };
    let kek = Kek::from_file_contents(&kek_text).map_err(|e| format!("kek: {e}"))?;
    let store = trustmesh::store::open(&format!("sqlite://{}", db_path(dir).display()))
        .await
        .map_err(|e| format!("store: {e}"))?;
    let cfg = IssuerConfig::new(TrustDomain::parse(TRUST_DOMAIN).map_err(|e| e.to_string())?);
    let started = Issuer::start(trustmesh::issuer::IssuerParts {
        cfg,
        store: store.clone(),
        kek,
        clock: Arc::new(SystemClock),
        serials: Arc::new(RandomSerials::default()),
        policy: PolicyEngine::embedded().map_err(|e| format!("policy: {e}"))?,
        init: InitParams::default(),
        existing: trustmesh::issuer::Existing::Load,
    })
    .await
    .map_err(|e| format!("issuer: {e}"))?;
    let (issuer, _) = started.spawn();
    Ok((issuer, store))
}

/// The SDS server of an in-process trustmesh; stops when dropped.
pub struct Sds {
    _cache: Arc<IdentityCache>,
    stop: watch::Sender<bool>,
}

impl Drop for Sds {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
    }
}

/// Serves SDS (both APIs) on `socket`, attesting callers as `serve` does.
/// Must run inside the tokio runtime that should serve it.
pub fn start_sds(issuer: &Arc<Issuer>, socket: &Path) -> Result<Sds, String> {
    let side = IssuerSide(issuer.clone());
    let cache = IdentityCache::new(CacheInputs {
        minter: Arc::new(side.clone()),
        entries: issuer.entries_watch(),
        trust: issuer.subscribe(),
        clock: Arc::new(SystemClock),
    });
    let _task = cache.spawn();
    let identities: Arc<dyn IdentitySource> = cache.clone();
    let sds = SdsServer::new(identities, Arc::new(Attestation::new(Arc::new(side))), Acknowledgements::new());
    let router = sds.add_to(tonic::service::Routes::default()).prepare().into_axum_router();
    let listener = trustmesh::net::bind_unix(socket).map_err(|e| format!("socket: {e}"))?;
    let (stop, stop_rx) = watch::channel(false);
    tokio::spawn(trustmesh::net::serve_unix(
        listener,
        router,
        trustmesh::net::Gate::new(trustmesh::net::Listener::Socket, trustmesh::net::ListenerLimits::unbounded()),
        stop_rx,
    ));
    Ok(Sds { _cache: cache, stop })
}

/// Writes `n` revoked, unexpired certificate rows of `issuer_id` (the CA's
/// fingerprint) straight into the `certificates` table of `dir`'s database,
/// in one transaction: random serials in the store's format, distinct
/// fingerprints, `der` as every row's `cert_der` (nothing on the load or
/// revoke path parses it). Run it while no issuer is using the directory,
/// then start one: it loads them.
pub fn prefill_revoked(dir: &Path, n: usize, issuer_id: &str, der: &[u8]) -> Result<Duration, String> {
    let started = Instant::now();
    let mut conn = rusqlite::Connection::open(db_path(dir)).map_err(|e| e.to_string())?;
    conn.busy_timeout(Duration::from_secs(10)).map_err(|e| e.to_string())?;
    let serials = RandomSerials::default();
    let now = OffsetDateTime::now_utc().unix_timestamp();
    let tx = conn.transaction().map_err(|e| e.to_string())?;
    {
        let mut insert = tx
            .prepare(
                "INSERT INTO certificates (serial, spiffe_id, issuer_id, fingerprint, not_before, not_after, \
                 status, revoked_at, revocation_reason, cert_der) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, 'revoked', ?7, ?8, ?9)",
            )
            .map_err(|e| e.to_string())?;
        for i in 0..n {
            let serial = serials.next_serial().map_err(|e| e.to_string())?.to_string();
            let id = format!("spiffe://{}/bench/prefill/{}", TRUST_DOMAIN, i % 5000);
            // Distinct fingerprints, as real ones are (the deny list is built from them).
            let fingerprint = trustmesh::ca::fingerprint(serial.as_bytes());
            let reason = if i % 2 == 0 { "keyCompromise" } else { "superseded" };
            insert
                .execute(rusqlite::params![
                    serial,
                    id,
                    issuer_id,
                    fingerprint,
                    now - 600,
                    now + 86_400,
                    now - (i as i64 % 600),
                    reason,
                    der
                ])
                .map_err(|e| e.to_string())?;
        }
    }
    tx.commit().map_err(|e| e.to_string())?;
    // Fold the bulk write's WAL into the database file, so the measured run
    // does not pay for checkpointing it.
    conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(())).map_err(|e| e.to_string())?;
    Ok(started.elapsed())
}
