//! The SPIFFE Workload API under load, in process: the issuer on SQLite in a
//! temp directory, `IdentityCache` over its entries and `WorkloadApi` on a
//! Unix socket with the real `LocalAttestor` (this process's uid, gid, path
//! and executable hash, read from `/proc`), wired as `trustmesh serve` wires
//! them, on their own tokio runtime (threads `tm-server`, one worker per CPU).
//! One registration entry, `spiffe://example.org/bench/web` for
//! `unix:uid:<this uid>`. Clients are raw tonic clients (generated stubs, the
//! security header set) on a second runtime (threads `bench-client`).
//!
//!     cargo bench --bench workload
//!     BENCH_CALLERS=500 BENCH_JWT_SECS=20 cargo bench --bench workload
//!
//! 1. **First `FetchX509SVID` response of a new caller.** Each caller is a
//!    fresh Unix connection + a new stream; the time is from the start of
//!    `connect` to the first `X509SVIDResponse` received.
//!    * *cold*: before each caller, the bench waits until the cache holds no
//!      selector set and no warm entry (`selector_sets() == 0`,
//!      `warm_entries() == 0`: the previous caller's stream is gone), so the
//!      caller's set is created and its X.509-SVID minted on demand (P-256 key
//!      generation, signing by the Services CA, the record made durable in
//!      SQLite) before the first message.
//!    * *warm*: one long-lived stream holds the set open, so each new caller
//!      joins the warm set (attestation + the cached SVID); the bench checks
//!      that it received the holder's certificate.
//! 2. **`FetchJWTSVID` rate**: `BENCH_JWT_CONCURRENCY` (64) tasks, each on its
//!    own connection, each sending its next call (audience `bench`) when the
//!    previous one is answered, for `BENCH_JWT_WARMUP` (2 s) then
//!    `BENCH_JWT_SECS` (10 s) measured; the warm holder stream stays open.
//!    Server CPU per JWT is utime + stime of the `tm-server` threads over the
//!    window / JWTs; the client's CPU is given too (same 2 cores).
//! 3. **ring ES256** (ECDSA P-256 / SHA-256, fixed-size signatures, a
//!    200-byte JWT signing input), 1 thread and one per CPU, best of 3 x 2 s,
//!    in the same process before the server is loaded.
//!
//! The last lines are `RESULT <name> key=value ...`.

#[path = "common.rs"]
mod common;
#[path = "inproc.rs"]
mod inproc;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::*;
use ring::rand::SystemRandom;
use ring::signature::{self, EcdsaKeyPair};
use tonic::transport::Channel;
use trustmesh::app::IssuerSide;
use trustmesh::cache::{CacheInputs, IdentityCache, IdentitySource};
use trustmesh::domain::SystemClock;
use trustmesh::issuer::{Caller, EntryRequest};
use trustmesh::proto::spiffe::spiffe_workload_api_client::SpiffeWorkloadApiClient;
use trustmesh::proto::spiffe::{JwtsvidRequest, X509svidRequest};
use trustmesh::workload::{JwtSvidSource, LocalAttestor, WorkloadApi};

const SERVER_THREADS: &str = "tm-server";
const CLIENT_THREADS: &str = "bench-client";
const WEB: &str = "spiffe://example.org/bench/web";

type Client = SpiffeWorkloadApiClient<Channel>;

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return; // `cargo bench -- --list` probes harness=false benches
    }
    let callers = env_usize("BENCH_CALLERS", 300).max(1);
    let concurrency = env_usize("BENCH_JWT_CONCURRENCY", 64).max(1);
    let jwt_warmup = env_secs("BENCH_JWT_WARMUP", 2.0);
    let jwt_secs = env_secs("BENCH_JWT_SECS", 10.0).max(Duration::from_millis(500));
    let ncpu = cpus();
    eprintln!("workload: {ncpu} CPUs, load {}", loadavg());

    // ---- ring ES256, before the server exists
    let mut ring_rates = Vec::new();
    for threads in [1, ncpu].into_iter().collect::<std::collections::BTreeSet<_>>() {
        let runs: Vec<Rate> = (0..3)
            .map(|_| {
                rate(
                    threads,
                    Duration::from_millis(500),
                    Duration::from_secs(2),
                    |_| (es256_key(), SystemRandom::new()),
                    |(k, rng), i| {
                        let msg: Vec<u8> =
                            (0..200u64).map(|j| (j.wrapping_mul(31).wrapping_add(i) & 0x7f) as u8).collect();
                        let _ = k.sign(rng, &msg).unwrap_or_else(|e| fatal(&format!("sign: {e}")));
                    },
                )
            })
            .collect();
        let best = Rate::best(&runs);
        let load = loadavg();
        eprintln!(
            "  ring ES256 sign, {threads} thread(s): {}/s, {:.1} µs CPU/op (load {load})",
            fmt_rate(best.per_sec),
            best.cpu_us_per_op
        );
        ring_rates.push((threads, best, load));
    }

    // ---- the server
    let dir = tempfile::tempdir().unwrap_or_else(|e| fatal(&format!("tempdir: {e}")));
    let socket = dir.path().join("api.sock");
    let server_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(ncpu)
        .thread_name(SERVER_THREADS)
        .enable_all()
        .build()
        .unwrap_or_else(|e| fatal(&format!("server runtime: {e}")));
    let (cache, _stop) =
        server_rt.block_on(start_server(dir.path(), &socket)).unwrap_or_else(|e| fatal(&format!("server: {e}")));
    let client_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(ncpu)
        .thread_name(CLIENT_THREADS)
        .enable_all()
        .build()
        .unwrap_or_else(|e| fatal(&format!("client runtime: {e}")));

    client_rt.block_on(async {
        // Warm-up: the executable hash, SQLite, the code paths.
        for _ in 0..5 {
            wait_cold(&cache).await;
            first_x509(&socket).await;
        }

        // ---- 1a. cold callers
        let load_before = loadavg();
        let mut cold = Vec::with_capacity(callers);
        let mut connect = Vec::with_capacity(callers);
        let mut minted = std::collections::HashSet::new();
        for _ in 0..callers {
            wait_cold(&cache).await;
            let (total, conn, cert) = first_x509(&socket).await;
            cold.push(total);
            connect.push(conn);
            minted.insert(cert);
        }
        // Every cold caller got a certificate minted for it.
        if minted.len() != callers {
            fatal(&format!("{callers} cold callers got only {} distinct certificates", minted.len()));
        }
        eprintln!("  {callers} cold callers, {} distinct X.509-SVIDs minted on demand", minted.len());
        let cold_load = format!("{load_before} -> {}", loadavg());
        report("x509_first_cold", &cold, &cold_load);
        report("x509_connect_only", &connect, &cold_load);

        // ---- 1b. warm callers: a holder keeps the set (and its SVID) alive
        wait_cold(&cache).await;
        let mut holder_client = connect_client(&socket).await;
        let mut holder = holder_client
            .fetch_x509svid(with_header(X509svidRequest {}))
            .await
            .unwrap_or_else(|e| fatal(&format!("holder: {e}")))
            .into_inner();
        let held = holder
            .message()
            .await
            .ok()
            .flatten()
            .and_then(|m| m.svids.first().map(|s| s.x509_svid.clone()))
            .unwrap_or_else(|| fatal("holder: no SVID"));
        for _ in 0..5 {
            first_x509(&socket).await;
        }
        let load_before = loadavg();
        let mut warm = Vec::with_capacity(callers);
        for _ in 0..callers {
            let (total, _, cert) = first_x509(&socket).await;
            if cert != held {
                fatal("a warm caller got another certificate than the holder: a new SVID was minted");
            }
            warm.push(total);
        }
        report("x509_first_warm", &warm, &format!("{load_before} -> {}", loadavg()));

        // ---- 2. FetchJWTSVID under `concurrency` callers
        jwt_load(&socket, concurrency, jwt_warmup, jwt_secs, &ring_rates).await;
        drop(holder);
    });
    for (threads, r, load) in &ring_rates {
        println!(
            "RESULT ring_es256_sign threads={threads} per_sec={:.0} cpu_us_per_op={:.1} load=\"{load}\"",
            r.per_sec, r.cpu_us_per_op
        );
    }
    drop(client_rt);
    drop(server_rt);
}

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// An ES256 (JWS: fixed-size `r || s` signatures) key pair.
fn es256_key() -> EcdsaKeyPair {
    key(&signature::ECDSA_P256_SHA256_FIXED_SIGNING)
}

/// The issuer, one entry for this uid, the cache and the Workload API on `socket`.
async fn start_server(
    dir: &Path,
    socket: &Path,
) -> Result<(Arc<IdentityCache>, tokio::sync::watch::Sender<bool>), String> {
    let (issuer, _store) = inproc::start_issuer(dir).await?;
    let entry =
        EntryRequest { spiffe_id: WEB.into(), selectors: vec![format!("unix:uid:{}", my_uid())], ..Default::default() };
    issuer.create_entry(&Caller::system(), entry).await.map_err(|e| format!("entry: {e}"))?;
    let side = IssuerSide(issuer.clone());
    let cache = IdentityCache::new(CacheInputs {
        minter: Arc::new(side.clone()),
        entries: issuer.entries_watch(),
        trust: issuer.subscribe(),
        clock: Arc::new(SystemClock),
    });
    let _task = cache.spawn();
    // The cache follows the entry list: wait until it sees the entry.
    let mut entries = issuer.entries_watch();
    let _ = entries.wait_for(|list| list.iter().any(|e| e.spiffe_id.to_string() == WEB)).await;
    let identities: Arc<dyn IdentitySource> = cache.clone();
    let jwt: Arc<dyn JwtSvidSource> = Arc::new(side);
    let router = WorkloadApi::new(identities, Arc::new(LocalAttestor), jwt).routes();
    let listener = trustmesh::net::bind_unix(socket).map_err(|e| format!("socket: {e}"))?;
    let (stop, stop_rx) = tokio::sync::watch::channel(false);
    tokio::spawn(trustmesh::net::serve_unix(
        listener,
        router,
        trustmesh::net::Gate::new(trustmesh::net::Listener::Socket, trustmesh::net::ListenerLimits::unbounded()),
        stop_rx,
    ));
    Ok((cache, stop))
}

/// Waits until no caller's set and no warm entry is left in the cache.
async fn wait_cold(cache: &IdentityCache) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while cache.selector_sets() > 0 || cache.warm_entries() > 0 {
        if Instant::now() > deadline {
            fatal("the cache still holds a set 10 s after its last caller left");
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

async fn connect_client(socket: &Path) -> Client {
    let path: PathBuf = socket.to_path_buf();
    let channel = tonic::transport::Endpoint::from_static("http://localhost")
        .connect_with_connector(tower::service_fn(move |_| {
            let path = path.clone();
            async move {
                Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(tokio::net::UnixStream::connect(path).await?))
            }
        }))
        .await
        .unwrap_or_else(|e| fatal(&format!("connect: {e}")));
    SpiffeWorkloadApiClient::new(channel)
}

fn with_header<T>(message: T) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request.metadata_mut().insert("workload.spiffe.io", tonic::metadata::MetadataValue::from_static("true"));
    request
}

/// One new caller: connect, open `FetchX509SVID`, read the first message.
/// Returns (connect → first message, connect alone, the leaf + chain DER).
async fn first_x509(socket: &Path) -> (Duration, Duration, Vec<u8>) {
    let t0 = Instant::now();
    let mut client = connect_client(socket).await;
    let connected = t0.elapsed();
    let mut stream = client
        .fetch_x509svid(with_header(X509svidRequest {}))
        .await
        .unwrap_or_else(|e| fatal(&format!("FetchX509SVID: {e}")))
        .into_inner();
    let first = stream
        .message()
        .await
        .unwrap_or_else(|e| fatal(&format!("FetchX509SVID message: {e}")))
        .unwrap_or_else(|| fatal("FetchX509SVID ended without a message"));
    let total = t0.elapsed();
    let svid = first.svids.first().unwrap_or_else(|| fatal("no SVID in the first message"));
    if svid.spiffe_id != WEB {
        fatal(&format!("unexpected SPIFFE ID {}", svid.spiffe_id));
    }
    (total, connected, svid.x509_svid.clone())
}

fn report(name: &str, samples: &[Duration], load: &str) {
    let mut sorted = samples.to_vec();
    sorted.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    eprintln!(
        "  {name}: n={} p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms (load {load})",
        sorted.len(),
        ms(percentile(&sorted, 50.0).unwrap_or_default()),
        ms(percentile(&sorted, 99.0).unwrap_or_default()),
        ms(percentile(&sorted, 100.0).unwrap_or_default())
    );
    println!(
        "RESULT {name} n={} p50_ms={:.2} p99_ms={:.2} max_ms={:.2} load=\"{load}\"",
        sorted.len(),
        ms(percentile(&sorted, 50.0).unwrap_or_default()),
        ms(percentile(&sorted, 99.0).unwrap_or_default()),
        ms(percentile(&sorted, 100.0).unwrap_or_default())
    );
}

async fn jwt_load(
    socket: &Path,
    concurrency: usize,
    warmup: Duration,
    measure: Duration,
    ring_rates: &[(usize, Rate, String)],
) {
    let counting = Arc::new(AtomicBool::new(false));
    let stop = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::with_capacity(concurrency);
    for _ in 0..concurrency {
        let mut client = connect_client(socket).await;
        let (counting, stop) = (counting.clone(), stop.clone());
        tasks.push(tokio::spawn(async move {
            let (mut ok, mut failed, mut latencies) = (0u64, 0u64, Vec::new());
            while !stop.load(Ordering::Relaxed) {
                let t0 = Instant::now();
                let request = JwtsvidRequest { audience: vec!["bench".into()], spiffe_id: String::new() };
                let good = match client.fetch_jwtsvid(with_header(request)).await {
                    Ok(r) => r.into_inner().svids.first().is_some_and(|s| s.spiffe_id == WEB && !s.svid.is_empty()),
                    Err(_) => false,
                };
                if counting.load(Ordering::Relaxed) && !stop.load(Ordering::Relaxed) {
                    if good {
                        ok += 1;
                        latencies.push(t0.elapsed());
                    } else {
                        failed += 1;
                    }
                }
            }
            (ok, failed, latencies)
        }));
    }
    tokio::time::sleep(warmup).await;
    let load_before = loadavg();
    let (server0, client0) = (threads_cpu_ticks(SERVER_THREADS), threads_cpu_ticks(CLIENT_THREADS));
    counting.store(true, Ordering::SeqCst);
    let t0 = Instant::now();
    tokio::time::sleep(measure).await;
    stop.store(true, Ordering::SeqCst);
    let elapsed = t0.elapsed().as_secs_f64();
    let (server1, client1) = (threads_cpu_ticks(SERVER_THREADS), threads_cpu_ticks(CLIENT_THREADS));
    let load = format!("{load_before} -> {}", loadavg());
    let (mut ok, mut failed, mut latencies) = (0u64, 0u64, Vec::new());
    for task in tasks {
        let (o, f, l) = task.await.unwrap_or_else(|e| fatal(&format!("caller task: {e}")));
        ok += o;
        failed += f;
        latencies.extend(l);
    }
    if ok == 0 || failed * 100 > ok + failed {
        fatal(&format!("FetchJWTSVID: {ok} ok, {failed} failed"));
    }
    latencies.sort();
    let tick_us = 1e6 / clk_tck();
    let per_sec = ok as f64 / elapsed;
    let server_us = server1.saturating_sub(server0) as f64 * tick_us / ok as f64;
    let client_us = client1.saturating_sub(client0) as f64 * tick_us / ok as f64;
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    let (p50, p99) =
        (ms(percentile(&latencies, 50.0).unwrap_or_default()), ms(percentile(&latencies, 99.0).unwrap_or_default()));
    eprintln!(
        "  FetchJWTSVID, {concurrency} callers: {}/s ({failed} failed), p50 {p50:.2} ms, p99 {p99:.2} ms, \
         server CPU {server_us:.1} µs/JWT, client CPU {client_us:.1} µs/JWT (load {load})",
        fmt_rate(per_sec)
    );
    for (threads, r, _) in ring_rates {
        eprintln!("    vs ring ES256 sign alone, {threads} thread(s): {}/s", fmt_rate(r.per_sec));
    }
    println!(
        "RESULT jwt_fetch concurrency={concurrency} per_sec={per_sec:.0} failed={failed} p50_ms={p50:.2} \
         p99_ms={p99:.2} server_cpu_us_per_jwt={server_us:.1} client_cpu_us_per_jwt={client_us:.1} load=\"{load}\""
    );
}
