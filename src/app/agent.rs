//! `trustmesh agent`: the node agent wired to its ports, in the order
//! config → data directory (modes, lock) → KEK → the agent's own state
//! (attesting with the join token if need be) → bind → serve. Every failure
//! before it serves is a start-up failure (exit 64, one line).

use std::sync::Arc;

use anyhow::Context as _;
use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use tokio::net::TcpListener;

use super::{ServeError, data_dir, raise_fd_limit, shutdown_signal};
use crate::agent::{Agent, AgentParts, KEK_FILE};
use crate::attest::LocalAttestor;
use crate::cache::IdentitySource;
use crate::config::AgentConfig;
use crate::domain::{Clock, SystemClock};
use crate::net::{Gate, Limits, Listener};
use crate::sds::SdsServer;
use crate::telemetry::Telemetry;
use crate::workload::WorkloadApi;

/// Header and idle timeouts of the agent's listeners (as `serve`'s defaults).
const FIRST_REQUEST: std::time::Duration = std::time::Duration::from_secs(10);
const IDLE: std::time::Duration = std::time::Duration::from_secs(300);

/// `trustmesh agent`.
pub async fn agent(cfg: AgentConfig) -> Result<(), ServeError> {
    let started = start(&cfg).await.map_err(ServeError::Startup)?;
    run(&cfg, started).await.map_err(ServeError::Runtime)
}

struct Started {
    agent: Agent,
    telemetry: Arc<Telemetry>,
    socket: tokio::net::UnixListener,
    http: TcpListener,
    limits: Limits,
    _lock: data_dir::DataDirLock,
}

async fn start(cfg: &AgentConfig) -> anyhow::Result<Started> {
    crate::agent::check_modes(&cfg.data_dir)?;
    let lock = data_dir::lock_data_dir(&cfg.data_dir)?;
    crate::agent::check_modes(&cfg.data_dir)?;
    crate::net::check_socket_path(&cfg.socket)?;
    let telemetry = Arc::new(Telemetry::init()?);
    let kek_path = cfg.data_dir.join(KEK_FILE);
    let kek = if kek_path.exists() { data_dir::load_kek(&kek_path)? } else { data_dir::create_kek(&kek_path)? };
    let trust_bundle = cfg
        .trust_bundle
        .as_ref()
        .map(|f| std::fs::read_to_string(f).with_context(|| format!("--trust-bundle {}", f.display())))
        .transpose()?;
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let agent = Agent::start(AgentParts {
        servers: cfg.servers.clone(),
        node: cfg.node.clone(),
        data_dir: cfg.data_dir.clone(),
        trust_bundle,
        join_token_file: cfg.join_token_file.clone(),
        kek,
        clock,
    })
    .await?;
    let limits = Limits::from_fd_limit(raise_fd_limit(), FIRST_REQUEST, IDLE);
    let socket = crate::net::bind_unix(&cfg.socket).context("--socket/TRUSTMESH_AGENT_SOCKET")?;
    let http = TcpListener::bind(cfg.http_listen)
        .await
        .with_context(|| format!("cannot listen on {} (--http-listen)", cfg.http_listen))?;
    Ok(Started { agent, telemetry, socket, http, limits, _lock: lock })
}

async fn run(cfg: &AgentConfig, started: Started) -> anyhow::Result<()> {
    let Started { agent, telemetry, socket, http, limits, _lock } = started;
    let Agent { cache, jwt, acks, status, link, trust, tasks } = agent;
    for task in tasks {
        tokio::spawn(task);
    }
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let local_router = socket_router(cache.clone(), acks, jwt);
    let metrics = AgentMetrics::register(cache.clone(), status.clone(), link.clone());
    let ready = {
        let (trust, link) = (trust.clone(), link.clone());
        Arc::new(move || -> Result<(), String> {
            if trust.borrow().bundle_pem.is_empty() {
                return Err("no state from a server yet".into());
            }
            link.svid().map(drop).ok_or_else(|| "the node is not attested".to_string())
        })
    };
    let http_router = http_routes(HttpState { telemetry: telemetry.clone(), ready, _metrics: Arc::new(metrics) });
    let http_addr = http.local_addr()?;
    let [socket_gate, http_gate] = [Gate::new(Listener::Socket, limits.socket), Gate::new(Listener::Http, limits.http)];
    let servers = [
        tokio::spawn(crate::net::serve_unix(socket, local_router, socket_gate, stop_rx.clone())),
        tokio::spawn(crate::net::serve_tcp(http, http_router, http_gate, stop_rx.clone())),
    ];
    tracing::info!(
        node = %cfg.node,
        servers = ?cfg.servers,
        socket = %cfg.socket.display(),
        http_listen = %http_addr,
        "agent ready"
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

/// The agent's local socket: SDS/ADS and the Workload API over its cache,
/// callers attested by their peer credentials (as on `serve`'s socket).
pub fn socket_router(
    cache: Arc<crate::cache::IdentityCache>,
    acks: Arc<crate::trust::Acknowledgements>,
    jwt: Arc<crate::agent::AgentJwt>,
) -> Router {
    let identities: Arc<dyn IdentitySource> = cache;
    let sds = SdsServer::new(identities.clone(), Arc::new(LocalAttestor), acks);
    let workload = WorkloadApi::new(identities, Arc::new(LocalAttestor), jwt);
    workload.add_to(sds.add_to(tonic::service::Routes::default())).prepare().into_axum_router()
}

type Ready = Arc<dyn Fn() -> Result<(), String> + Send + Sync>;

#[derive(Clone)]
struct HttpState {
    telemetry: Arc<Telemetry>,
    ready: Ready,
    /// Kept alive: its gauges are read at each scrape.
    _metrics: Arc<AgentMetrics>,
}

fn http_routes(state: HttpState) -> Router {
    Router::new()
        .route("/health", get(|| async { "ok\n" }))
        .route("/ready", get(ready))
        .route("/metrics", get(metrics))
        .layer(axum::extract::DefaultBodyLimit::max(64 * 1024))
        .with_state(state)
}

/// Ready once it serves from a valid state; reaching the server is not needed.
async fn ready(State(s): State<HttpState>) -> Response {
    match (s.ready)() {
        Ok(()) => (StatusCode::OK, "ready\n").into_response(),
        Err(why) => (StatusCode::SERVICE_UNAVAILABLE, format!("{why}\n")).into_response(),
    }
}

async fn metrics(State(s): State<HttpState>) -> Response {
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], s.telemetry.render()).into_response()
}

/// The agent's gauges, computed when scraped.
struct AgentMetrics {
    _gauges: Vec<opentelemetry::metrics::ObservableGauge<f64>>,
}

impl AgentMetrics {
    fn register(
        cache: Arc<crate::cache::IdentityCache>,
        status: Arc<crate::agent::SyncStatus>,
        link: Arc<crate::agent::Link>,
    ) -> Self {
        let meter = opentelemetry::global::meter("trustmesh");
        let age = meter
            .f64_observable_gauge("trustmesh.agent.last_sync_age_seconds")
            .with_description("Seconds since the agent last received a state from a server (absent before the first)")
            .with_callback(move |o| {
                if let Some(age) = status.age() {
                    o.observe(age, &[]);
                }
            })
            .build();
        let remaining = meter
            .f64_observable_gauge("trustmesh.agent.svid_min_remaining_seconds")
            .with_description("Seconds until the first of the agent's SVIDs (its node SVID included) expires")
            .with_callback(move |o| {
                let now = time::OffsetDateTime::now_utc();
                let node = link.svid().map(|s| s.not_after);
                let earliest = [cache.svids().1, node].into_iter().flatten().min();
                if let Some(at) = earliest {
                    o.observe((at - now).as_seconds_f64(), &[]);
                }
            })
            .build();
        Self { _gauges: vec![age, remaining] }
    }
}
