//! Soak: the memory of a running server under churn, sampled over minutes.
//!
//!     cargo bench --bench soak -- --socket /tmp/trustmesh/public/api.sock \
//!         --addr https://127.0.0.1:4020 --ca-file trustmesh-data/ca-bundle.pem \
//!         --token-file trustmesh-data/admin.token --server-pid $(pgrep -n trustmesh)
//!
//! At once, for `--minutes` (10):
//! * SDS streams opened and dropped: `--streams-per-minute` (1,000), each on a
//!   new connection to the local socket (as a fleet of restarting Envoys
//!   would), with Envoy's 61 KB node on every request, asking for `default`
//!   and `ROOTCA`, held `--hold-secs` (5) after the first response;
//! * `--issuances-per-sec` (100) `SignCsr` over the TLS port, over a pool
//!   of 1,000 P-256 CSRs made before the clock starts;
//! * one refused oversized request per second (a 900 KB CSR of garbage, a
//!   revoke of a 100 KB serial), as a prober would send;
//! * once a minute, `--flood` (2,000) half-sent HTTP requests on the
//!   plaintext port (`--http`), held 20 s: the server sheds what is over the
//!   port's budget and closes the rest after its header timeout.
//!
//! The server's VmRSS and RssAnon are read every `--sample-secs` (10) from
//! `/proc/<pid>/status`. The first minute is warm-up: the verdict compares
//! the last sample with the one at one minute. Every flag also reads
//! `BENCH_<FLAG>`. The last line is `RESULT key=value ...`.

#[path = "common.rs"]
mod common;

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use common::{envoy_node, fatal, loadavg, rss_kib, unix_channel};
use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::service::discovery::v3::DiscoveryRequest;
use envoy_types::pb::envoy::service::secret::v3::secret_discovery_service_client::SecretDiscoveryServiceClient;
use prost::Message;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::transport::{Certificate, Channel, ClientTlsConfig};
use trustmesh::proto::admin::v1::admin_client::AdminClient;
use trustmesh::proto::admin::v1::{RevokeCertificateRequest, SignCsrRequest};

const SECRET_TYPE: &str = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret";

struct Args {
    socket: PathBuf,
    addr: String,
    ca_file: PathBuf,
    token_file: PathBuf,
    server_pid: u32,
    minutes: f64,
    streams_per_minute: f64,
    hold_secs: f64,
    issuances_per_sec: f64,
    sample_secs: f64,
    http: String,
    flood: usize,
}

#[derive(Default)]
struct Counters {
    streams: AtomicU64,
    stream_errors: AtomicU64,
    issued: AtomicU64,
    issue_errors: AtomicU64,
    refused: AtomicU64,
    open_streams: AtomicU64,
}

fn flag(args: &[String], name: &str) -> Option<String> {
    let env = format!("BENCH_{}", name.trim_start_matches("--").replace('-', "_").to_uppercase());
    args.iter().position(|a| a == name).and_then(|i| args.get(i + 1).cloned()).or_else(|| std::env::var(env).ok())
}

fn parse() -> Args {
    let argv: Vec<String> = std::env::args().collect();
    let text = |name: &str| flag(&argv, name).unwrap_or_else(|| fatal(&format!("{name} is required")));
    let num = |name: &str, default: f64| {
        flag(&argv, name).map_or(default, |v| v.parse().unwrap_or_else(|_| fatal(&format!("{name} {v:?}"))))
    };
    Args {
        socket: text("--socket").into(),
        addr: text("--addr"),
        ca_file: text("--ca-file").into(),
        token_file: text("--token-file").into(),
        server_pid: text("--server-pid").parse().unwrap_or_else(|_| fatal("--server-pid")),
        minutes: num("--minutes", 10.0),
        streams_per_minute: num("--streams-per-minute", 1000.0),
        hold_secs: num("--hold-secs", 5.0),
        issuances_per_sec: num("--issuances-per-sec", 100.0),
        sample_secs: num("--sample-secs", 10.0),
        http: text("--http"),
        flood: num("--flood", 2000.0) as usize,
    }
}

/// A P-256 CSR for `spiffe://example.org/soak/<i>`.
fn csr(i: usize) -> Vec<u8> {
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap_or_else(|e| fatal(&e.to_string()));
    let uri = format!("spiffe://example.org/soak/{i}");
    params.subject_alt_names.push(rcgen::SanType::URI(uri.try_into().unwrap_or_else(|_| fatal("uri"))));
    let key = rcgen::KeyPair::generate().unwrap_or_else(|e| fatal(&e.to_string()));
    params.serialize_request(&key).unwrap_or_else(|e| fatal(&e.to_string())).der().to_vec()
}

/// One SDS stream on its own connection: first response, held, dropped.
async fn one_stream(socket: PathBuf, node: Node, hold: Duration, c: Arc<Counters>) {
    c.open_streams.fetch_add(1, Ordering::Relaxed);
    let result = async {
        let channel = unix_channel(socket).await?;
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        let request = DiscoveryRequest {
            type_url: SECRET_TYPE.into(),
            resource_names: vec!["default".into(), "ROOTCA".into()],
            node: Some(node),
            ..Default::default()
        };
        tx.send(request).await.map_err(|e| e.to_string())?;
        let mut client = SecretDiscoveryServiceClient::new(channel);
        let mut replies = client
            .stream_secrets(tokio_stream::wrappers::ReceiverStream::new(rx))
            .await
            .map_err(|e| e.to_string())?
            .into_inner();
        replies.message().await.map_err(|e| e.to_string())?.ok_or("the stream ended")?;
        tokio::time::sleep(hold).await;
        Ok::<_, String>(())
    }
    .await;
    c.open_streams.fetch_sub(1, Ordering::Relaxed);
    match result {
        Ok(()) => c.streams.fetch_add(1, Ordering::Relaxed),
        Err(e) => {
            if c.stream_errors.fetch_add(1, Ordering::Relaxed) < 3 {
                eprintln!("soak: stream: {e}");
            }
            0
        }
    };
}

async fn admin(a: &Args) -> AdminClient<Channel> {
    let ca = std::fs::read(&a.ca_file).unwrap_or_else(|e| fatal(&format!("{}: {e}", a.ca_file.display())));
    let tls = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(ca)).domain_name("localhost");
    let channel = Channel::from_shared(a.addr.clone())
        .unwrap_or_else(|e| fatal(&e.to_string()))
        .tls_config(tls)
        .unwrap_or_else(|e| fatal(&e.to_string()))
        .connect()
        .await
        .unwrap_or_else(|e| fatal(&format!("connect {}: {e}", a.addr)));
    AdminClient::new(channel).max_decoding_message_size(16 << 20).max_encoding_message_size(16 << 20)
}

fn authorized<T>(token: &MetadataValue<Ascii>, msg: T) -> tonic::Request<T> {
    let mut r = tonic::Request::new(msg);
    r.metadata_mut().insert("authorization", token.clone());
    r
}

fn main() {
    let a = parse();
    let token = std::fs::read_to_string(&a.token_file).unwrap_or_else(|e| fatal(&e.to_string()));
    let token: MetadataValue<Ascii> =
        format!("Bearer {}", token.trim()).parse().unwrap_or_else(|_| fatal("the token is not a header value"));
    let node = Node::decode(envoy_node(61_000)).unwrap_or_else(|e| fatal(&e.to_string()));
    let csrs: Arc<Vec<Vec<u8>>> = Arc::new((0..1_000).map(csr).collect());
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap_or_else(|e| {
        fatal(&e.to_string());
    });
    rt.block_on(run(a, token, node, csrs));
}

async fn run(a: Args, token: MetadataValue<Ascii>, node: Node, csrs: Arc<Vec<Vec<u8>>>) {
    let c = Arc::new(Counters::default());
    let client = admin(&a).await;
    let end = Instant::now() + Duration::from_secs_f64(a.minutes * 60.0);
    let mut tasks = Vec::new();

    // Streams opened and dropped.
    {
        let (c, socket, node) = (c.clone(), a.socket.clone(), node.clone());
        let every = Duration::from_secs_f64(60.0 / a.streams_per_minute);
        let hold = Duration::from_secs_f64(a.hold_secs);
        tasks.push(tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            while Instant::now() < end {
                tick.tick().await;
                tokio::spawn(one_stream(socket.clone(), node.clone(), hold, c.clone()));
            }
        }));
    }
    // Issuances, paced.
    {
        let (c, client, token, csrs) = (c.clone(), client.clone(), token.clone(), csrs.clone());
        let every = Duration::from_secs_f64(1.0 / a.issuances_per_sec);
        tasks.push(tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            let in_flight = Arc::new(tokio::sync::Semaphore::new(64));
            let mut i = 0usize;
            while Instant::now() < end {
                tick.tick().await;
                let Ok(permit) = in_flight.clone().acquire_owned().await else { return };
                let (c, mut client, token) = (c.clone(), client.clone(), token.clone());
                let request = SignCsrRequest {
                    csr: csrs[i % csrs.len()].clone(),
                    spiffe_id: format!("spiffe://example.org/soak/{}", i % csrs.len()),
                    ttl_seconds: 3600,
                    profile: String::new(),
                };
                i += 1;
                tokio::spawn(async move {
                    match client.sign_csr(authorized(&token, request)).await {
                        Ok(_) => c.issued.fetch_add(1, Ordering::Relaxed),
                        Err(e) => {
                            if c.issue_errors.fetch_add(1, Ordering::Relaxed) < 3 {
                                eprintln!("soak: sign_csr: {e}");
                            }
                            0
                        }
                    };
                    drop(permit);
                });
            }
        }));
    }
    // Oversized requests a prober sends, refused.
    {
        let (c, mut client, token) = (c.clone(), client.clone(), token.clone());
        tasks.push(tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            while Instant::now() < end {
                tick.tick().await;
                let garbage = SignCsrRequest {
                    csr: vec![b'x'; 900_000],
                    spiffe_id: "spiffe://example.org/soak/garbage".into(),
                    ttl_seconds: 0,
                    profile: String::new(),
                };
                let _ = client.sign_csr(authorized(&token, garbage)).await;
                let long = RevokeCertificateRequest { serial: "f".repeat(100_000), reason: String::new() };
                let _ = client.revoke_certificate(authorized(&token, long)).await;
                c.refused.fetch_add(2, Ordering::Relaxed);
            }
        }));
    }

    // Floods of half-sent requests.
    {
        let (http, flood) = (a.http.clone(), a.flood);
        tasks.push(tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(60));
            while Instant::now() < end {
                tick.tick().await;
                let mut held = Vec::with_capacity(flood);
                for _ in 0..flood {
                    let Ok(mut tcp) = tokio::net::TcpStream::connect(&http).await else { continue };
                    let _ = tokio::io::AsyncWriteExt::write_all(&mut tcp, b"GET /ready HTTP/1.1\r\nHost: x\r\n").await;
                    held.push(tcp);
                }
                tokio::time::sleep(Duration::from_secs(20)).await;
                drop(held);
            }
        }));
    }

    // Samples.
    let started = Instant::now();
    let mut samples: Vec<(f64, u64, u64)> = Vec::new();
    println!(
        "{:>7} {:>10} {:>10} {:>8} {:>8} {:>8} {:>7}",
        "t_s", "rss_kib", "anon_kib", "streams", "open", "issued", "errors"
    );
    loop {
        let t = started.elapsed().as_secs_f64();
        let (rss, anon) = rss_kib(a.server_pid);
        if rss == 0 {
            fatal("the server is gone");
        }
        samples.push((t, rss, anon));
        println!(
            "{t:>7.0} {rss:>10} {anon:>10} {:>8} {:>8} {:>8} {:>7}",
            c.streams.load(Ordering::Relaxed),
            c.open_streams.load(Ordering::Relaxed),
            c.issued.load(Ordering::Relaxed),
            c.stream_errors.load(Ordering::Relaxed) + c.issue_errors.load(Ordering::Relaxed)
        );
        if Instant::now() >= end {
            break;
        }
        tokio::time::sleep(Duration::from_secs_f64(a.sample_secs).min(end - Instant::now())).await;
    }
    for t in tasks {
        let _ = t.await;
    }
    let first = samples.first().copied().unwrap_or_default();
    let warm = samples.iter().find(|s| s.0 >= 60.0).copied().unwrap_or(first);
    let last = samples.last().copied().unwrap_or_default();
    let max = samples.iter().map(|s| s.1).max().unwrap_or(0);
    let minutes_after_warmup = ((last.0 - warm.0) / 60.0).max(1e-9);
    let slope = (last.1 as f64 - warm.1 as f64) / minutes_after_warmup;
    println!(
        "RESULT minutes={:.1} rss_start_kib={} rss_at_1min_kib={} rss_end_kib={} rss_max_kib={} anon_end_kib={} \
         growth_after_1min_kib={} slope_kib_per_min={slope:.0} streams={} stream_errors={} issued={} issue_errors={} \
         refused={} load=\"{}\"",
        last.0 / 60.0,
        first.1,
        warm.1,
        last.1,
        max,
        last.2,
        last.1 as i64 - warm.1 as i64,
        c.streams.load(Ordering::Relaxed),
        c.stream_errors.load(Ordering::Relaxed),
        c.issued.load(Ordering::Relaxed),
        c.issue_errors.load(Ordering::Relaxed),
        c.refused.load(Ordering::Relaxed),
        loadavg()
    );
}
