//! Wiring: the only place that names concrete types. `serve` runs in the order
//! config → data directory and lock → store → CA → bind → serve → drain.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, bail};
use tokio::net::TcpListener;

use crate::admin::{self, ServerTls};
use crate::attest::{Attestation, LocalAttestor};
use crate::ca::Kek;
use crate::cache::{IdentityCache, IdentitySource};
use crate::config::ServeConfig;
use crate::domain::{RandomSerials, SystemClock, TokenKind};
use crate::issuer::{InitParams, Issuer, IssuerConfig, MintRequest};
use crate::policy::PolicyEngine;
use crate::sds::SdsServer;
use crate::telemetry::Telemetry;
use crate::workload::WorkloadApi;

/// Lifetime of the admin token written at first start.
const ADMIN_TOKEN_SECONDS: u64 = 365 * 86_400;

pub fn issuer_config(cfg: &ServeConfig) -> IssuerConfig {
    let mut ic = IssuerConfig::new(cfg.trust_domain.clone());
    ic.svid_ttl = cfg.svid_ttl;
    ic.max_cert_ttl = cfg.max_cert_ttl;
    ic.jwt_svid_ttl = cfg.jwt_svid_ttl;
    ic.bootstrap_ttl = cfg.bootstrap_ttl;
    ic.crl_validity = cfg.crl_validity;
    ic.server_names = cfg.server_names.clone();
    ic
}

/// Holds the data directory for this process; released when dropped.
pub struct DataDirLock {
    _file: File,
}

/// Creates the data directory (0700) if needed and takes its lock.
pub fn lock_data_dir(dir: &Path) -> anyhow::Result<DataDirLock> {
    if !dir.exists() {
        fs::create_dir_all(dir).with_context(|| format!("cannot create data directory {}", dir.display()))?;
        tracing::info!(path = %dir.display(), "data directory created");
    }
    fs::set_permissions(dir, fs::Permissions::from_mode(0o700))
        .with_context(|| format!("cannot set mode 0700 on {}", dir.display()))?;
    let path = dir.join("lock");
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .mode(0o600)
        .open(&path)
        .with_context(|| format!("cannot open {}", path.display()))?;
    if file.try_lock().is_err() {
        bail!(
            "another trustmesh process is using data directory {} (lock held on {}); stop it first",
            dir.display(),
            path.display()
        );
    }
    Ok(DataDirLock { _file: file })
}

/// Reads the KEK, or creates it (0600) when `create` and it is absent.
pub fn load_kek(path: &Path, create: bool) -> anyhow::Result<Kek> {
    match fs::read_to_string(path) {
        Ok(text) => {
            let mode = fs::metadata(path)?.permissions().mode() & 0o777;
            if mode & 0o077 != 0 {
                bail!("key-encryption key {} has mode {mode:o}; it must be 0600", path.display());
            }
            Kek::from_file_contents(&text).with_context(|| format!("key-encryption key {}", path.display()))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && create => {
            let (kek, text) = Kek::generate()?;
            // Replicas starting together may share one KEK file: only the
            // first one's key is ever written; the others read it.
            let tmp = temp_path(path);
            write_new(&tmp, text.as_bytes(), 0o600)?;
            let linked = fs::hard_link(&tmp, path);
            let _ = fs::remove_file(&tmp);
            match linked {
                Ok(()) => {
                    tracing::info!(path = %path.display(), "key-encryption key created");
                    Ok(kek)
                }
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => load_kek(path, false),
                Err(e) => Err(e).with_context(|| format!("cannot write {}", path.display())),
            }
        }
        Err(e) => Err(e).with_context(|| format!("cannot read key-encryption key {}", path.display())),
    }
}

/// Writes a file readable only by its owner, atomically (temp file + rename).
pub fn write_secret(path: &Path, contents: &[u8]) -> anyhow::Result<()> {
    write_file(path, contents, 0o600)
}

fn write_file(path: &Path, contents: &[u8], mode: u32) -> anyhow::Result<()> {
    let tmp = temp_path(path);
    write_new(&tmp, contents, mode)?;
    fs::rename(&tmp, path).with_context(|| format!("cannot write {}", path.display()))?;
    Ok(())
}

/// A temporary name next to `path`, unique to this process and call, so two
/// processes writing the same file never share a temporary file.
fn temp_path(path: &Path) -> PathBuf {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos());
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(format!(".{}.{nanos}.tmp", std::process::id()));
    path.with_file_name(name)
}

/// Creates a new file (never an existing one) with `mode` and synced contents.
fn write_new(path: &Path, contents: &[u8], mode: u32) -> anyhow::Result<()> {
    let mut f = OpenOptions::new()
        .create_new(true)
        .write(true)
        .mode(mode)
        .open(path)
        .with_context(|| format!("cannot write {}", path.display()))?;
    f.write_all(contents)?;
    f.sync_all()?;
    Ok(())
}

/// Loads the embedded policies, or every `*.cedar` file of `dir`.
pub fn load_policy(dir: Option<&Path>) -> anyhow::Result<PolicyEngine> {
    let Some(dir) = dir else {
        return Ok(PolicyEngine::embedded()?);
    };
    let mut policies = Vec::new();
    let mut schema = None;
    let mut entries: Vec<PathBuf> = fs::read_dir(dir)
        .with_context(|| format!("cannot read policy directory {}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .collect();
    entries.sort();
    for path in entries {
        let name = path.file_name().map(|n| n.to_string_lossy().to_string()).unwrap_or_default();
        if name.ends_with(".cedar") {
            policies.push((name, fs::read_to_string(&path)?));
        } else if name.ends_with(".cedarschema") {
            schema = Some(fs::read_to_string(&path)?);
        }
    }
    if policies.is_empty() {
        bail!("policy directory {} holds no *.cedar file", dir.display());
    }
    Ok(PolicyEngine::from_sources(schema.as_deref(), &policies)?)
}

/// `trustmesh serve`.
pub async fn serve(cfg: ServeConfig) -> anyhow::Result<()> {
    let policy = load_policy(cfg.policy_dir.as_deref())?;
    let _lock = lock_data_dir(&cfg.data_dir)?;
    let kek = load_kek(&cfg.kek_file, true)?;
    let telemetry = Arc::new(Telemetry::init()?);
    let store = crate::store::open(&cfg.database_url).await?;
    tracing::info!(database = %crate::store::redact_url(&cfg.database_url), "store opened");
    let (issuer, report) = Issuer::start(
        issuer_config(&cfg),
        store,
        kek,
        Arc::new(SystemClock),
        Arc::new(RandomSerials::default()),
        policy,
        &InitParams::default(),
    )
    .await?;
    if !report.created {
        tracing::info!(root = %report.root_fingerprint, trust_domain = %cfg.trust_domain, "PKI loaded");
    }
    write_admin_token(&issuer, &cfg.data_dir).await?;
    let bundle_path = cfg.data_dir.join("ca-bundle.pem");
    write_file(&bundle_path, issuer.snapshot().bundle_pem.as_bytes(), 0o644)?;

    let tls = Arc::new(ServerTls::new(&issuer)?);
    let api =
        TcpListener::bind(cfg.listen).await.with_context(|| format!("cannot listen on {} (--listen)", cfg.listen))?;
    let http = TcpListener::bind(cfg.http_listen)
        .await
        .with_context(|| format!("cannot listen on {} (--http-listen)", cfg.http_listen))?;
    let socket = crate::net::bind_unix(&cfg.socket)?;
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let renderer: admin::MetricsRenderer = {
        let telemetry = telemetry.clone();
        Arc::new(move || telemetry.render())
    };
    let clock: Arc<dyn crate::domain::Clock> = Arc::new(SystemClock);
    let cache = IdentityCache::new(issuer.clone(), issuer.entries_watch(), clock);
    let _cache_task = cache.spawn();
    let identities: Arc<dyn IdentitySource> = cache;
    let attestation = Arc::new(Attestation::new(issuer.clone()));
    let sds = SdsServer::new(identities.clone(), attestation.clone());
    let workload = WorkloadApi::new(identities, Arc::new(LocalAttestor), issuer.clone());
    let tls_router = admin::tls_router(issuer.clone(), renderer.clone(), sds.add_to(tonic::service::Routes::default()));
    let http_router = admin::http_router(issuer.clone(), renderer);
    let api_addr = api.local_addr()?;
    let http_addr = http.local_addr()?;
    let local_router = workload.add_to(sds.add_to(tonic::service::Routes::default())).prepare().into_axum_router();
    let servers = [
        tokio::spawn(crate::net::serve_tls(api, tls.acceptor(), tls_router, stop_rx.clone())),
        tokio::spawn(crate::net::serve_tcp(http, http_router, stop_rx.clone())),
        tokio::spawn(crate::net::serve_unix(socket, local_router, stop_rx.clone())),
    ];
    tokio::spawn(issuer.clone().run_maintenance());
    tokio::spawn(keep_files_current(issuer.clone(), tls, bundle_path));
    tracing::info!(
        listen = %api_addr,
        http_listen = %http_addr,
        socket = %cfg.socket.display(),
        trust_domain = %cfg.trust_domain,
        "ready"
    );

    shutdown_signal().await;
    tracing::info!("shutting down");
    let _ = stop_tx.send(true);
    for s in servers {
        let _ = s.await;
    }
    telemetry.shutdown();
    let _ = std::fs::remove_file(&cfg.socket);
    Ok(())
}

/// Writes `admin.token` (0600) unless a file is already there.
async fn write_admin_token(issuer: &Issuer, data_dir: &Path) -> anyhow::Result<()> {
    let path = data_dir.join("admin.token");
    if path.exists() {
        return Ok(());
    }
    let minted = issuer
        .mint_initial_admin_token(&MintRequest {
            kind: TokenKind::Admin,
            subject: "admin".into(),
            expires_in_seconds: ADMIN_TOKEN_SECONDS,
            single_use: false,
            spiffe_ids: Vec::new(),
            cert_fingerprint: None,
        })
        .await?;
    write_secret(&path, format!("{}\n", minted.token).as_bytes())?;
    tracing::info!(path = %path.display(), jti = %minted.jti, expires_at = minted.expires_at, "admin token written");
    Ok(())
}

/// Renews the TLS certificate and rewrites the bundle file when it changes.
async fn keep_files_current(issuer: Arc<Issuer>, tls: Arc<ServerTls>, bundle_path: PathBuf) {
    let mut updates = issuer.subscribe();
    let mut tick = tokio::time::interval(std::time::Duration::from_secs(60));
    let mut written = issuer.snapshot().bundle_pem.clone();
    loop {
        tokio::select! {
            _ = tick.tick() => {
                if let Err(e) = tls.renew_if_due(&issuer) {
                    tracing::error!(error = %e, "server TLS certificate renewal failed; will retry");
                }
            }
            changed = updates.changed() => {
                if changed.is_err() { return; }
                let bundle = updates.borrow_and_update().bundle_pem.clone();
                if bundle != written {
                    if let Err(e) = write_file(&bundle_path, bundle.as_bytes(), 0o644) {
                        tracing::error!(error = %e, "cannot rewrite the CA bundle file");
                    }
                    written = bundle;
                }
            }
        }
    }
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = ctrl_c => {}
                _ = term.recv() => {}
            }
        }
        Err(_) => {
            let _ = ctrl_c.await;
        }
    }
}
