//! Wiring: the only place that names concrete types. `serve` runs in the order
//! config → policy → data directory and lock → store and KEK → CA → bind →
//! serve → drain; every failure before it serves is a start-up failure
//! ([`ServeError::Startup`], exit 64), and the first port is bound only once
//! everything else has been checked.

mod agent;
mod data_dir;
mod wiring;

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, bail};
use tokio::net::TcpListener;

pub use agent::{agent, socket_router as agent_socket_router};
pub use data_dir::{ADMIN_TOKEN_FILE, BUNDLE_FILE, DataDirLock, create_kek, load_kek, lock_data_dir};
use data_dir::{Found, Places, Plan};
pub use wiring::IssuerSide;

use crate::admin::{self, ServerTls};
use crate::attest::{Attestation, LocalAttestor};
use crate::ca::Kek;
use crate::cache::{CacheInputs, IdentityCache, IdentitySource};
use crate::config::ServeConfig;
use crate::domain::{RandomSerials, SystemClock, TokenKind};
use crate::files;
use crate::issuer::{BackgroundTask, Existing, InitParams, Issuer, IssuerConfig, IssuerParts, MintRequest};
use crate::net::{Gate, Limits, Listener};
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
    ic.ca_rotation_auto = cfg.ca_rotation_auto;
    ic.server_names = cfg.server_names.clone();
    ic.mounts = cfg.pki_mounts.clone();
    ic
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

/// How `serve` failed.
#[derive(Debug)]
pub enum ServeError {
    /// Before it was ready: bad state on disk, a port in use, … (exit 64).
    Startup(anyhow::Error),
    /// While serving.
    Runtime(anyhow::Error),
}

/// Everything `serve` holds once it is ready to serve.
struct Ready {
    issuer: Arc<Issuer>,
    /// The issuer's background work, spawned once serving starts.
    tasks: Vec<BackgroundTask>,
    telemetry: Arc<Telemetry>,
    tls: Arc<ServerTls>,
    api: TcpListener,
    http: TcpListener,
    socket: tokio::net::UnixListener,
    limits: Limits,
    bundle_path: PathBuf,
    _lock: DataDirLock,
}

/// `trustmesh serve`.
pub async fn serve(cfg: ServeConfig) -> Result<(), ServeError> {
    let ready = start(&cfg).await.map_err(ServeError::Startup)?;
    run(&cfg, ready).await.map_err(ServeError::Runtime)
}

/// Everything that can fail on bad configuration or state, in the order
/// config → policy → data directory and lock → socket path → store and KEK
/// → CA → files → bind (the socket first, then the TCP ports). Nothing after
/// this fails for a reason an operator must fix before starting again.
async fn start(cfg: &ServeConfig) -> anyhow::Result<Ready> {
    let policy = load_policy(cfg.policy_dir.as_deref())?;
    let lock = data_dir::lock_data_dir(&cfg.data_dir)?;
    crate::net::check_socket_path(&cfg.socket)?;
    let telemetry = Arc::new(Telemetry::init()?);
    let (store, kek) = open_pki(cfg).await?;
    tracing::info!(database = %crate::store::redact_url(&cfg.database_url), "store opened");
    let started = Issuer::start(IssuerParts {
        cfg: issuer_config(cfg),
        store,
        kek,
        clock: Arc::new(SystemClock),
        serials: Arc::new(RandomSerials::default()),
        policy,
        init: InitParams::default(),
        existing: Existing::Load,
    })
    .await?;
    let (issuer, report) = (started.issuer, started.report);
    let tasks = started.tasks;
    if !report.created {
        tracing::info!(root = %report.root_fingerprint, trust_domain = %cfg.trust_domain, "PKI loaded");
    }
    write_admin_token(&issuer, &cfg.data_dir).await?;
    let bundle_path = cfg.data_dir.join(BUNDLE_FILE);
    files::write_public(&bundle_path, issuer.snapshot().bundle_pem.as_bytes())?;
    let tls = Arc::new(ServerTls::new(&issuer)?);
    let limits = Limits::from_fd_limit(raise_fd_limit(), cfg.header_timeout, cfg.idle_timeout);
    let socket = crate::net::bind_unix(&cfg.socket).context("--socket/TRUSTMESH_SOCKET")?;
    let api =
        TcpListener::bind(cfg.listen).await.with_context(|| format!("cannot listen on {} (--listen)", cfg.listen))?;
    let http = TcpListener::bind(cfg.http_listen)
        .await
        .with_context(|| format!("cannot listen on {} (--http-listen)", cfg.http_listen))?;
    Ok(Ready { issuer, tasks, telemetry, tls, api, http, socket, limits, bundle_path, _lock: lock })
}

/// Opens the store and the KEK as [`data_dir::plan`] decides: load the PKI,
/// create one, or stop before anything is written.
async fn open_pki(cfg: &ServeConfig) -> anyhow::Result<(Arc<dyn crate::store::Store>, Kek)> {
    let database = crate::store::redact_url(&cfg.database_url);
    let places = Places { data_dir: &cfg.data_dir, database: &database, kek: &cfg.kek_file };
    let mut found = Found {
        database_has_pki: false,
        kek_exists: std::fs::symlink_metadata(&cfg.kek_file).is_ok(),
        kek_provisioned: cfg.kek_provisioned,
        earlier_files: data_dir::earlier_files(&cfg.data_dir),
    };
    // An absent or empty SQLite file holds no PKI: decide before opening
    // (which would create it).
    if data_dir::sqlite_file_is_empty(&cfg.database_url) == Some(true)
        && let Plan::Refuse(why) = data_dir::plan(&found, &places)
    {
        bail!(why);
    }
    let store = crate::store::open(&cfg.database_url).await.with_context(|| format!("database {database}"))?;
    // The database first, then the KEK: a replica creates the KEK before the
    // PKI, so a PKI seen here means its KEK is there to be seen.
    found.database_has_pki = Issuer::holds_pki(store.as_ref()).await?;
    found.kek_exists = std::fs::symlink_metadata(&cfg.kek_file).is_ok();
    let kek = match data_dir::plan(&found, &places) {
        Plan::Load | Plan::Create { new_kek: false } => data_dir::load_kek(&cfg.kek_file)?,
        Plan::Create { new_kek: true } => data_dir::create_kek(&cfg.kek_file)?,
        Plan::Refuse(why) => bail!(why),
    };
    Ok((store, kek))
}

/// Raises the soft limit of open files to the hard limit; returns the limit
/// in force, from which every listener's connection budget is derived.
fn raise_fd_limit() -> u64 {
    use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
    let current = getrlimit(Resource::Nofile);
    if let (Some(soft), Some(hard)) = (current.current, current.maximum)
        && soft < hard
        && setrlimit(Resource::Nofile, Rlimit { current: Some(hard), maximum: Some(hard) }).is_ok()
    {
        return hard;
    }
    current.current.unwrap_or(1 << 20)
}

/// Serves until SIGTERM or Ctrl-C, then drains.
async fn run(cfg: &ServeConfig, ready: Ready) -> anyhow::Result<()> {
    let Ready { issuer, tasks, telemetry, tls, api, http, socket, limits, bundle_path, _lock } = ready;
    for task in tasks {
        tokio::spawn(task);
    }
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let renderer: admin::MetricsRenderer = {
        let telemetry = telemetry.clone();
        Arc::new(move || telemetry.render())
    };
    let side = IssuerSide(issuer.clone());
    let cache = IdentityCache::new(CacheInputs {
        minter: Arc::new(side.clone()),
        entries: wiring::unbound_entries(&issuer),
        trust: issuer.subscribe(),
        clock: Arc::new(SystemClock),
    });
    let _cache_task = cache.spawn();
    let identities: Arc<dyn IdentitySource> = cache;
    let attestation = Arc::new(Attestation::new(Arc::new(side.clone())));
    let sds = SdsServer::new(identities.clone(), attestation.clone(), issuer.acknowledgements());
    let workload = WorkloadApi::new(identities, Arc::new(LocalAttestor), Arc::new(side));
    let tls_router = admin::tls_router(issuer.clone(), renderer.clone(), sds.add_to(tonic::service::Routes::default()));
    let http_router = admin::http_router(issuer.clone(), renderer);
    let api_addr = api.local_addr()?;
    let http_addr = http.local_addr()?;
    let local_router = workload.add_to(sds.add_to(tonic::service::Routes::default())).prepare().into_axum_router();
    let gates = [
        Gate::new(Listener::Tls, limits.tls),
        Gate::new(Listener::Http, limits.http),
        Gate::new(Listener::Socket, limits.socket),
    ];
    let [tls_gate, http_gate, socket_gate] = gates;
    let servers = [
        tokio::spawn(crate::net::serve_tls(api, tls.acceptor(), tls_router, tls_gate, stop_rx.clone())),
        tokio::spawn(crate::net::serve_tcp(http, http_router, http_gate, stop_rx.clone())),
        tokio::spawn(crate::net::serve_unix(socket, local_router, socket_gate, stop_rx.clone())),
    ];
    tokio::spawn(keep_files_current(issuer.clone(), tls, bundle_path));
    tracing::info!(
        listen = %api_addr,
        http_listen = %http_addr,
        socket = %cfg.socket.display(),
        trust_domain = %cfg.trust_domain,
        max_connections_tls = limits.tls.max_connections,
        max_connections_http = limits.http.max_connections,
        max_connections_socket = limits.socket.max_connections,
        max_connections_socket_per_uid = limits.socket.per_peer,
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
    let path = data_dir.join(ADMIN_TOKEN_FILE);
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
    files::write_private(&path, format!("{}\n", minted.token).as_bytes())?;
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
                // A rotated Transport CA: the certificate follows at once.
                if let Err(e) = tls.renew_if_due(&issuer) {
                    tracing::error!(error = %e, "server TLS certificate renewal failed; will retry");
                }
                if bundle != written {
                    if let Err(e) = files::write_public(&bundle_path, bundle.as_bytes()) {
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
