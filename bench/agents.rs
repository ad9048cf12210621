//! Node agents under load (SPEC §12), against a release `trustmesh serve`:
//!
//! * `fleet`: hosts N agents in this process (each `trustmesh::agent::Agent`
//!   with its own data directory, join token, node and Unix socket, served as
//!   `trustmesh agent` serves it), one entry bound to each node; prints
//!   `READY sockets=…` and keeps them until its stdin closes. `bench/agents.sh`
//!   then runs `bench/sds_streams.rs` over all their sockets.
//! * `server-cost`: starts the server itself (so it can restart it on the same
//!   port), reads its RSS, connects N agents (in this process), reads it again
//!   — per connected agent — and its CPU over `--idle` seconds with nothing
//!   changing; then restarts it (SIGTERM, start on the same data directory and
//!   port) and measures until every agent has a state from the new process,
//!   sampling the server's RSS every 50 ms for its peak.
//! * `first-response`: with a real `trustmesh agent` serving one entry's
//!   SVID, the server killed, `--samples` new Workload API connections in turn,
//!   each timed from `connect` to its first `X509SVIDResponse`.
//!
//! ```text
//! cargo bench --bench agents -- server-cost --bin target/release/trustmesh --dir /tmp/d --agents 1000 --idle 60
//! ```
//!
//! The last lines are `RESULT <name> key=value …` for `bench/agents.sh`.

#[path = "common.rs"]
mod common;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tonic::transport::Channel;
use trustmesh::agent::{Agent, AgentParts, SyncStatus};
use trustmesh::domain::{NodeId, SystemClock};
use trustmesh::net::client::{ServerTrust, channel};
use trustmesh::proto::admin::v1 as pb;
use trustmesh::proto::admin::v1::admin_client::AdminClient;

use common::{cpu_ms, fatal, loadavg, my_uid, percentile, rss_kib, unix_channel};

const USAGE: &str = "\
agents: node agents under load.

  agents fleet --server URL --data SERVER_DATA_DIR --dir DIR --agents N
  agents server-cost --bin TRUSTMESH --dir DIR --agents N [--idle SECS]
  agents first-response --bin TRUSTMESH --dir DIR [--samples N]";

fn arg(args: &[String], name: &str) -> Option<String> {
    args.iter().position(|a| a == &format!("--{name}")).and_then(|i| args.get(i + 1)).cloned()
}

fn need(args: &[String], name: &str) -> String {
    arg(args, name).unwrap_or_else(|| fatal(&format!("--{name} is required\n{USAGE}")))
}

fn num(args: &[String], name: &str, default: usize) -> usize {
    arg(args, name).map_or(default, |v| v.parse().unwrap_or_else(|_| fatal(&format!("--{name} {v}"))))
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).filter(|a| a != "--bench").collect();
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap_or_else(|e| fatal(&e.to_string()));
    match args.first().map(String::as_str) {
        Some("fleet") => rt.block_on(fleet(&args)),
        Some("server-cost") => rt.block_on(server_cost(&args)),
        Some("first-response") => rt.block_on(first_response(&args)),
        _ => fatal(USAGE),
    }
    std::process::exit(0);
}

// ------------------------------------------------------------- the server

/// A `trustmesh serve` this bench started.
struct Serve {
    child: Child,
    bin: PathBuf,
    data: PathBuf,
    url: String,
    api: String,
}

impl Serve {
    fn start(bin: &Path, data: &Path, listen: &str) -> Serve {
        let mut child = Command::new(bin)
            .args(["serve", "--log-format", "json", "--listen", listen, "--http-listen", "127.0.0.1:0"])
            .arg("--data-dir")
            .arg(data)
            .arg("--socket")
            .arg(data.with_extension("sock"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| fatal(&format!("{}: {e}", bin.display())));
        let stderr = child.stderr.take().unwrap_or_else(|| fatal("no stderr"));
        let mut lines = BufReader::new(stderr).lines();
        let api = loop {
            let Some(Ok(line)) = lines.next() else { fatal("trustmesh serve exited before it was ready") };
            let Ok(v) = serde_json::from_str::<serde_json::Value>(&line) else { continue };
            let f = v.get("fields").unwrap_or(&v);
            if f["message"] == "ready" {
                break f["listen"].as_str().unwrap_or_default().to_string();
            }
        };
        // Keep draining its log.
        std::thread::spawn(move || for _ in lines {});
        Serve { child, bin: bin.to_path_buf(), data: data.to_path_buf(), url: format!("https://{api}"), api }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGTERM, wait; then the same data directory on the same port.
    fn restart(&mut self) -> Instant {
        self.stop();
        let stopped = Instant::now();
        *self = Serve::start(&self.bin.clone(), &self.data.clone(), &self.api.clone());
        stopped
    }

    fn stop(&mut self) {
        let _ = Command::new("kill").arg("-TERM").arg(self.pid().to_string()).status();
        let _ = self.child.wait();
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The admin API of the server whose data directory is `data`, with its token.
async fn admin(url: &str, data: &Path) -> (AdminClient<Channel>, String) {
    let bundle = std::fs::read_to_string(data.join("ca-bundle.pem")).unwrap_or_else(|e| fatal(&e.to_string()));
    let trust = ServerTrust::from_bundle_pem(&bundle).unwrap_or_else(|e| fatal(&e));
    let channel = channel(url, trust, None).await.unwrap_or_else(|e| fatal(&e));
    let token = std::fs::read_to_string(data.join("admin.token")).unwrap_or_else(|e| fatal(&e.to_string()));
    (AdminClient::new(channel), format!("Bearer {}", token.trim()))
}

fn authorized<T>(token: &str, message: T) -> tonic::Request<T> {
    let mut r = tonic::Request::new(message);
    r.metadata_mut().insert("authorization", token.parse().unwrap_or_else(|_| fatal("token header")));
    r
}

/// An entry for this process's uid bound to `node`, and a join token for it.
async fn enrol(client: &mut AdminClient<Channel>, token: &str, node: &str, entries: usize) -> String {
    for k in 0..entries {
        let entry = pb::CreateEntryRequest {
            spiffe_id: format!("spiffe://example.org/bench/{node}/w-{k}"),
            selectors: vec![format!("unix:uid:{}", my_uid())],
            node: node.into(),
            ..Default::default()
        };
        client.create_entry(authorized(token, entry)).await.unwrap_or_else(|e| fatal(&format!("entry: {e}")));
    }
    let mint = pb::MintTokenRequest { kind: "join".into(), subject: node.into(), ..Default::default() };
    client
        .mint_token(authorized(token, mint))
        .await
        .unwrap_or_else(|e| fatal(&format!("join token: {e}")))
        .into_inner()
        .token
}

// ------------------------------------------------------------- agents in this process

/// One agent of the fleet and where it serves.
struct Hosted {
    socket: PathBuf,
    status: Arc<SyncStatus>,
    _stop: tokio::sync::watch::Sender<bool>,
}

/// N agents of `url` (nodes bench-0…), each with `entries` entries, serving
/// their sockets under `dir`.
async fn host(url: &str, data: &Path, dir: &Path, n: usize, entries: usize) -> Vec<Hosted> {
    let (mut client, token) = admin(url, data).await;
    let bundle = std::fs::read_to_string(data.join("ca-bundle.pem")).unwrap_or_else(|e| fatal(&e.to_string()));
    let limits = trustmesh::net::Limits::from_fd_limit(1 << 20, Duration::from_secs(10), Duration::from_secs(300));
    let mut hosted = Vec::with_capacity(n);
    let started = Instant::now();
    for i in 0..n {
        let node = format!("bench-{i}");
        let join = enrol(&mut client, &token, &node, entries).await;
        let home = dir.join(&node);
        std::fs::create_dir_all(&home).unwrap_or_else(|e| fatal(&e.to_string()));
        let token_file = home.join("join");
        std::fs::write(&token_file, join).unwrap_or_else(|e| fatal(&e.to_string()));
        let (kek, _) =
            trustmesh::ca::Kek::generate(&ring::rand::SystemRandom::new()).unwrap_or_else(|e| fatal(&e.to_string()));
        let agent = Agent::start(AgentParts {
            servers: vec![url.to_string()],
            node: NodeId::parse(&node).unwrap_or_else(|e| fatal(&e.to_string())),
            data_dir: home.join("data"),
            trust_bundle: Some(bundle.clone()),
            join_token_file: Some(token_file),
            kek,
            clock: Arc::new(SystemClock),
        })
        .await
        .unwrap_or_else(|e| fatal(&format!("agent {node}: {e}")));
        let socket = home.join("api.sock");
        let listener = trustmesh::net::bind_unix(&socket).unwrap_or_else(|e| fatal(&e.to_string()));
        let router = trustmesh::app::agent_socket_router(agent.cache.clone(), agent.acks.clone(), agent.jwt.clone());
        let (stop, stopped) = tokio::sync::watch::channel(false);
        let gate = trustmesh::net::Gate::new(trustmesh::net::Listener::Socket, limits.socket);
        tokio::spawn(trustmesh::net::serve_unix(listener, router, gate, stopped));
        for task in agent.tasks {
            tokio::spawn(task);
        }
        hosted.push(Hosted { socket, status: agent.status.clone(), _stop: stop });
        if (i + 1) % 100 == 0 {
            eprintln!("  {} agents attested ({:.1} s)", i + 1, started.elapsed().as_secs_f64());
        }
    }
    hosted
}

/// Waits until every agent has a state received after `since` (`None`: any).
async fn synced(hosted: &[Hosted], since: Option<Instant>, timeout: Duration) -> Option<Duration> {
    let start = Instant::now();
    loop {
        let fresh = |h: &Hosted| match (h.status.age(), since) {
            (Some(age), Some(t)) => Instant::now().checked_sub(Duration::from_secs_f64(age)).is_some_and(|at| at >= t),
            (Some(_), None) => true,
            (None, _) => false,
        };
        if hosted.iter().all(fresh) {
            return Some(start.elapsed());
        }
        if start.elapsed() > timeout {
            let behind = hosted.iter().filter(|h| !fresh(h)).count();
            eprintln!("agents: {behind} of {} agents without a fresh state after {timeout:?}", hosted.len());
            return None;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn fleet(args: &[String]) {
    let (url, data, dir) = (need(args, "server"), PathBuf::from(need(args, "data")), PathBuf::from(need(args, "dir")));
    let n = num(args, "agents", 100);
    let hosted = host(&url, &data, &dir, n, 1).await;
    if synced(&hosted, None, Duration::from_secs(120)).await.is_none() {
        fatal("the fleet did not sync");
    }
    let sockets: Vec<String> = hosted.iter().map(|h| h.socket.display().to_string()).collect();
    println!("READY sockets={}", sockets.join(","));
    // Until the script closes stdin.
    tokio::task::spawn_blocking(|| {
        let mut sink = String::new();
        while std::io::stdin().read_line(&mut sink).map(|n| n > 0).unwrap_or(false) {}
    })
    .await
    .ok();
}

async fn server_cost(args: &[String]) {
    let (bin, dir) = (PathBuf::from(need(args, "bin")), PathBuf::from(need(args, "dir")));
    let n = num(args, "agents", 1000);
    let idle = num(args, "idle", 60);
    let mut server = Serve::start(&bin, &dir.join("server"), "127.0.0.1:0");
    let pid = server.pid();
    // Settled, no agent: the baseline.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (rss_before, _) = rss_kib(pid);
    eprintln!("server pid {pid}: VmRSS {rss_before} KiB with no agent; load {}", loadavg());
    let hosted = host(&server.url, &server.data, &dir.join("agents"), n, 0).await;
    let Some(took) = synced(&hosted, None, Duration::from_secs(120)).await else { fatal("not every agent synced") };
    eprintln!("{n} agents attested and synced ({took:?} for the last)");
    tokio::time::sleep(Duration::from_secs(5)).await;
    let (rss_steady, _) = rss_kib(pid);
    let per_agent = (rss_steady as f64 - rss_before as f64) * 1024.0 / n as f64;
    eprintln!("VmRSS {rss_steady} KiB with {n} agents: {:.1} KiB per agent", per_agent / 1024.0);
    let cpu_before = cpu_ms(pid);
    let load_idle = loadavg();
    tokio::time::sleep(Duration::from_secs(idle as u64)).await;
    let idle_cpu = cpu_ms(pid).saturating_sub(cpu_before);
    eprintln!("server CPU over {idle} s idle with {n} agents connected: {idle_cpu} ms");
    println!(
        "RESULT server_cost agents={n} rss_before_kib={rss_before} rss_agents_kib={rss_steady} \
         per_agent_bytes={per_agent:.0} idle_s={idle} idle_cpu_ms={idle_cpu} load=\"{load_idle}\""
    );

    // The reconnect storm.
    let stopped = server.restart();
    let pid = server.pid();
    let sampling = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let peak = {
        let sampling = sampling.clone();
        std::thread::spawn(move || {
            let mut peak = 0;
            while sampling.load(std::sync::atomic::Ordering::Relaxed) {
                peak = peak.max(rss_kib(pid).0);
                std::thread::sleep(Duration::from_millis(50));
            }
            peak
        })
    };
    let restarted = Instant::now();
    let all = synced(&hosted, Some(restarted), Duration::from_secs(60)).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    sampling.store(false, std::sync::atomic::Ordering::Relaxed);
    let peak_kib = peak.join().unwrap_or(0);
    let (after_kib, _) = rss_kib(pid);
    let Some(all) = all else { fatal("not every agent synced again") };
    eprintln!(
        "restart: the server was back {:?} after it stopped; every agent synced {all:?} after that; \
         server VmRSS peak {peak_kib} KiB (steady before {rss_steady} KiB, {after_kib} KiB after)",
        restarted - stopped
    );
    println!(
        "RESULT storm agents={n} synced_s={:.2} rss_peak_kib={peak_kib} rss_steady_kib={rss_steady} \
         rss_after_kib={after_kib} peak_over_steady={:.2}",
        all.as_secs_f64(),
        peak_kib as f64 / rss_steady.max(1) as f64
    );
}

async fn first_response(args: &[String]) {
    use trustmesh::proto::spiffe::X509svidRequest;
    use trustmesh::proto::spiffe::spiffe_workload_api_client::SpiffeWorkloadApiClient;

    let (bin, dir) = (PathBuf::from(need(args, "bin")), PathBuf::from(need(args, "dir")));
    let samples = num(args, "samples", 1000);
    let mut server = Serve::start(&bin, &dir.join("server"), "127.0.0.1:0");
    let (mut client, token) = admin(&server.url, &server.data).await;
    let join = enrol(&mut client, &token, "outage", 1).await;
    let home = dir.join("agent");
    std::fs::create_dir_all(&home).unwrap_or_else(|e| fatal(&e.to_string()));
    std::fs::write(home.join("join"), join).unwrap_or_else(|e| fatal(&e.to_string()));
    let socket = home.join("api.sock");
    let mut agent = Command::new(&bin)
        .args(["agent", "--log-format", "json", "--node-id", "outage", "--http-listen", "127.0.0.1:0"])
        .args(["--server", &server.url])
        .arg("--trust-bundle")
        .arg(server.data.join("ca-bundle.pem"))
        .arg("--join-token-file")
        .arg(home.join("join"))
        .arg("--data-dir")
        .arg(home.join("data"))
        .arg("--socket")
        .arg(&socket)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| fatal(&e.to_string()));
    let fetch = |socket: PathBuf| async move {
        let start = Instant::now();
        let channel = unix_channel(socket).await?;
        let mut client = SpiffeWorkloadApiClient::new(channel);
        let mut request = tonic::Request::new(X509svidRequest {});
        request.metadata_mut().insert("workload.spiffe.io", "true".parse().map_err(|_| "header")?);
        let mut stream = client.fetch_x509svid(request).await.map_err(|e| e.to_string())?.into_inner();
        let first = stream.message().await.map_err(|e| e.to_string())?.ok_or("no message")?;
        if first.svids.is_empty() {
            return Err("no SVID".to_string());
        }
        Ok::<_, String>(start.elapsed())
    };
    // Served once with the server up (the SVID minted and kept), then the server goes.
    let deadline = Instant::now() + Duration::from_secs(30);
    while fetch(socket.clone()).await.is_err() {
        if Instant::now() > deadline {
            fatal("the agent never served its SVID");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    server.kill();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let mut times = Vec::with_capacity(samples);
    for _ in 0..samples {
        times.push(fetch(socket.clone()).await.unwrap_or_else(|e| fatal(&format!("served nothing: {e}"))));
    }
    let cpu = cpu_ms(agent.id());
    let _ = agent.kill();
    let _ = agent.wait();
    times.sort();
    let ms = |d: Option<Duration>| d.map_or(f64::NAN, |d| d.as_secs_f64() * 1e3);
    let (p50, p99, max) = (ms(percentile(&times, 50.0)), ms(percentile(&times, 99.0)), ms(times.last().copied()));
    eprintln!(
        "server down: {samples} new Workload API callers, first X509SVIDResponse p50 {p50:.2} ms, p99 {p99:.2} ms, max {max:.2} ms"
    );
    println!(
        "RESULT first_response samples={samples} p50_ms={p50:.3} p99_ms={p99:.3} max_ms={max:.3} agent_cpu_ms={cpu}"
    );
}
