//! Load client: certificates per second from an already-running server, with
//! latency and the server's CPU time per certificate.
//!
//! trustmesh (gRPC `SignCsr`, or `GenerateCertificate` with `--mode generate`):
//!
//!     cargo bench --bench signcsr -- --addr https://127.0.0.1:4020 \
//!         --ca-file trustmesh-data/ca-bundle.pem --token-file trustmesh-data/admin.token \
//!         --server-pid $(pgrep -n trustmesh)
//!
//! OpenBao (`POST /v1/<mount>/sign/<role>` with a CSR, or `--mode issue`):
//!
//!     cargo bench --bench signcsr -- --target openbao --addr 127.0.0.1:8200 \
//!         --token root --mount pki --role spiffe --mode sign --server-pid <bao pid>
//!
//! trustmesh's OpenBao-compatible PKI API (the same requests as OpenBao's,
//! over TLS): `--target trustmesh-pki --addr 127.0.0.1:4020 --ca-file
//! trustmesh-data/ca-bundle.pem --token-file trustmesh-data/admin.token`.
//!
//! Every flag also reads `BENCH_<FLAG>` (e.g. `BENCH_DURATION=20`). The same
//! client drives all three: `--concurrency` tasks (64) on one tokio runtime,
//! each sending its next request as soon as the previous one answered.
//! trustmesh's gRPC API is reached over `--connections` HTTP/2 connections
//! (4); the PKI APIs (OpenBao's, trustmesh's) over one HTTP/1.1 keep-alive
//! connection per task (HTTP/1.1 has one request in flight per connection). CSRs are P-256 with the URI SAN
//! `spiffe://example.org/bench/<i>`, made before the clock starts.
//!
//! The server's CPU time is `utime + stime` of `/proc/<--server-pid>/stat`
//! (all its threads) over the measured window. With `--raw-secs` > 0 the
//! client first measures, with the server idle, what ring does per CSR signed
//! (one P-256 verify of the CSR + one P-256 sign), on 1 thread and on every
//! CPU, and prints our rate against it.
//!
//! The last line is `RESULT key=value ...` for `bench/run.sh`.

#[path = "common.rs"]
mod common;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use common::*;
use ring::rand::SystemRandom;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::transport::{Certificate, Channel, ClientTlsConfig};
use trustmesh::proto::admin::v1::admin_client::AdminClient;
use trustmesh::proto::admin::v1::{GenerateCertificateRequest, SignCsrRequest};
use x509_parser::certification_request::X509CertificationRequest;
use x509_parser::prelude::FromDer;

const WARMUP: u8 = 0;
const MEASURE: u8 = 1;
const STOP: u8 = 2;

const USAGE: &str = "\
signcsr: certificates/s, latency and server CPU per certificate of a running server.

  --target trustmesh|trustmesh-pki|openbao   (trustmesh)
  --mode   sign|generate (trustmesh), sign|issue (trustmesh-pki, openbao)   (sign)
  --addr   https://HOST:PORT (trustmesh) or HOST:PORT (trustmesh-pki, openbao)
  --ca-file FILE               trustmesh's ca-bundle.pem
  --token T | --token-file F   bearer token (trustmesh) or X-Vault-Token (trustmesh-pki, openbao)
  --server-pid PID             the server process, for its CPU time
  --duration S (10)  --warmup S (2)  --concurrency N (64)  --connections N (4, trustmesh)
  --csrs N (4096)  --raw-secs S (0: skip ring's verify+sign reference)
  --mount pki  --role spiffe  --ttl-seconds 3600  --trust-domain example.org

Every flag also reads BENCH_<FLAG> from the environment, e.g. BENCH_DURATION=20.";

/// Settings, from `--flag value` or `BENCH_FLAG`.
struct Args {
    target: String,
    mode: String,
    addr: String,
    ca_file: Option<String>,
    token: String,
    server_pid: Option<u32>,
    duration: f64,
    warmup: f64,
    concurrency: usize,
    connections: usize,
    csrs: usize,
    raw_secs: f64,
    mount: String,
    role: String,
    ttl_seconds: u64,
    trust_domain: String,
}

fn args() -> Args {
    let mut flags: HashMap<String, String> = HashMap::new();
    let mut it = std::env::args().skip(1).peekable();
    while let Some(a) = it.next() {
        if a == "--help" || a == "-h" {
            println!("{USAGE}");
            std::process::exit(0);
        }
        if a == "--bench" || a == "--list" {
            // cargo bench passes --bench; `cargo bench -- --list` probes the binary
            if a == "--list" {
                std::process::exit(0);
            }
            continue;
        }
        let Some(name) = a.strip_prefix("--") else { fatal(&format!("unexpected argument {a:?}")) };
        let (name, value) = match name.split_once('=') {
            Some((n, v)) => (n.to_string(), v.to_string()),
            None => (name.to_string(), it.next().unwrap_or_else(|| fatal(&format!("--{name} needs a value")))),
        };
        flags.insert(name, value);
    }
    let get = |name: &str| -> Option<String> {
        flags.get(name).cloned().or_else(|| {
            let env = format!("BENCH_{}", name.to_uppercase().replace('-', "_"));
            std::env::var(env).ok().filter(|v| !v.is_empty())
        })
    };
    fn num<T: std::str::FromStr>(name: &str, v: Option<String>, default: T) -> T {
        match v {
            None => default,
            Some(s) => s.parse().unwrap_or_else(|_| fatal(&format!("--{name}: not a number: {s:?}"))),
        }
    }
    let target = get("target").unwrap_or_else(|| "trustmesh".into());
    if !["trustmesh", "trustmesh-pki", "openbao"].contains(&target.as_str()) {
        fatal("--target is trustmesh, trustmesh-pki or openbao");
    }
    let mode = get("mode").unwrap_or_else(|| "sign".into());
    let modes: &[&str] = if target == "trustmesh" { &["sign", "generate"] } else { &["sign", "issue"] };
    if !modes.contains(&mode.as_str()) {
        fatal(&format!("--mode for {target} is one of {modes:?}"));
    }
    let token = match (get("token"), get("token-file")) {
        (Some(t), _) => t,
        (None, Some(f)) => {
            std::fs::read_to_string(&f).unwrap_or_else(|e| fatal(&format!("--token-file {f}: {e}"))).trim().to_string()
        }
        (None, None) => fatal("--token or --token-file is required"),
    };
    let addr = get("addr").unwrap_or_else(|| fatal("--addr is required"));
    let a = Args {
        ca_file: get("ca-file"),
        server_pid: get("server-pid").map(|p| num("server-pid", Some(p), 0u32)),
        duration: num("duration", get("duration"), 10.0),
        warmup: num("warmup", get("warmup"), 2.0),
        concurrency: num("concurrency", get("concurrency"), 64usize).max(1),
        connections: num("connections", get("connections"), 4usize).max(1),
        csrs: num("csrs", get("csrs"), 4096usize).max(1),
        raw_secs: num("raw-secs", get("raw-secs"), 0.0),
        mount: get("mount").unwrap_or_else(|| "pki".into()),
        role: get("role").unwrap_or_else(|| "spiffe".into()),
        ttl_seconds: num("ttl-seconds", get("ttl-seconds"), 3600u64),
        trust_domain: get("trust-domain").unwrap_or_else(|| "example.org".into()),
        target,
        mode,
        addr,
        token,
    };
    if a.target != "openbao" && a.ca_file.is_none() {
        fatal("--ca-file (the server's ca-bundle.pem) is required for trustmesh");
    }
    a
}

/// One pre-generated CSR.
struct Csr {
    spiffe_id: String,
    der: Vec<u8>,
    pem: String,
}

fn make_csrs(n: usize, trust_domain: &str) -> Vec<Csr> {
    let threads = cpus();
    let per = n.div_ceil(threads);
    let mut out: Vec<Csr> = Vec::with_capacity(n);
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                s.spawn(move || {
                    (t * per..((t + 1) * per).min(n)).map(|i| make_csr(i, trust_domain)).collect::<Vec<_>>()
                })
            })
            .collect();
        for h in handles {
            out.extend(h.join().unwrap_or_else(|_| fatal("CSR generation thread failed")));
        }
    });
    out
}

fn make_csr(i: usize, trust_domain: &str) -> Csr {
    let fail = |e: rcgen::Error| -> ! { fatal(&format!("CSR {i}: {e}")) };
    let spiffe_id = format!("spiffe://{trust_domain}/bench/{i}");
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap_or_else(|e| fail(e));
    let mut params = rcgen::CertificateParams::default();
    let mut dn = rcgen::DistinguishedName::new();
    dn.push(rcgen::DnType::OrganizationName, "trustmesh-bench");
    params.distinguished_name = dn;
    let uri = rcgen::string::Ia5String::try_from(spiffe_id.as_str()).unwrap_or_else(|e| fail(e));
    params.subject_alt_names = vec![rcgen::SanType::URI(uri)];
    let csr = params.serialize_request(&key).unwrap_or_else(|e| fail(e));
    let pem = csr.pem().unwrap_or_else(|e| fail(e));
    Csr { spiffe_id, der: csr.der().to_vec(), pem }
}

/// ring doing what a CSR signing has to do at least: verify the CSR's
/// signature (its real bytes) and sign a TBSCertificate-sized message with a
/// P-256 CA key.
fn raw_verify_sign(csrs: &Arc<Vec<Csr>>, threads: usize, secs: f64) -> Rate {
    let parsed: Vec<(Vec<u8>, Vec<u8>, Vec<u8>)> = csrs
        .iter()
        .map(|c| {
            let (_, req) =
                X509CertificationRequest::from_der(&c.der).unwrap_or_else(|e| fatal(&format!("parse CSR: {e}")));
            let info = &req.certification_request_info;
            (info.subject_pki.subject_public_key.data.to_vec(), info.raw.to_vec(), req.signature_value.data.to_vec())
        })
        .collect();
    let parsed = Arc::new(parsed);
    rate(
        threads,
        Duration::from_millis(300),
        Duration::from_secs_f64(secs),
        move |t| (parsed.clone(), p256_key(), SystemRandom::new(), tbs_like(t as u64), t),
        move |(csrs, ca, rng, tbs, t), i| {
            let (point, msg, sig) = &csrs[((i as usize) * threads + *t) % csrs.len()];
            verify_p256(point, msg, sig);
            let _ = sign(ca, rng, tbs);
        },
    )
}

/// utime + stime of a process, in clock ticks.
fn cpu_ticks(pid: &str) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = stat.get(stat.rfind(')')? + 2..)?;
    let f: Vec<&str> = rest.split_whitespace().collect();
    // fields 14 and 15 of stat(5); `rest` starts at field 3
    Some(f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?)
}

/// (busy, total) jiffies of the whole machine, from /proc/stat.
fn machine_ticks() -> Option<(u64, u64)> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let line = stat.lines().next()?;
    let v: Vec<u64> = line.split_whitespace().skip(1).filter_map(|x| x.parse().ok()).collect();
    let total: u64 = v.iter().take(8).sum();
    let idle = v.get(3)? + v.get(4)?;
    Some((total - idle, total))
}

struct Snapshot {
    at: Instant,
    server: Option<u64>,
    client: Option<u64>,
    machine: Option<(u64, u64)>,
    ok: u64,
    err: u64,
}

fn snapshot(pid: Option<u32>, ok: &AtomicU64, err: &AtomicU64) -> Snapshot {
    Snapshot {
        at: Instant::now(),
        server: pid.and_then(|p| cpu_ticks(&p.to_string())),
        client: cpu_ticks("self"),
        machine: machine_ticks(),
        ok: ok.load(Ordering::SeqCst),
        err: err.load(Ordering::SeqCst),
    }
}

/// What every load task shares.
struct Shared {
    phase: AtomicU8,
    ok: AtomicU64,
    err: AtomicU64,
    first_error: parking_lot::Mutex<Option<String>>,
}

impl Shared {
    fn done(&self, started: Instant, result: Result<(), String>, lat: &mut Vec<u32>) {
        if self.phase.load(Ordering::Relaxed) != MEASURE {
            if let Err(e) = result {
                self.note_error(e);
            }
            return;
        }
        match result {
            Ok(()) => {
                self.ok.fetch_add(1, Ordering::Relaxed);
                lat.push(started.elapsed().as_micros().min(u32::MAX as u128) as u32);
            }
            Err(e) => {
                self.err.fetch_add(1, Ordering::Relaxed);
                self.note_error(e);
            }
        }
    }

    fn note_error(&self, e: String) {
        let mut first = self.first_error.lock();
        if first.is_none() {
            *first = Some(e);
        }
    }

    fn running(&self) -> bool {
        self.phase.load(Ordering::Relaxed) != STOP
    }
}

// ---------- trustmesh: gRPC over HTTP/2 + TLS ----------

#[allow(clippy::too_many_arguments)]
async fn trustmesh_task(
    mut client: AdminClient<Channel>,
    token: MetadataValue<Ascii>,
    csrs: Arc<Vec<Csr>>,
    generate: bool,
    ttl_seconds: u64,
    start: usize,
    stride: usize,
    shared: Arc<Shared>,
) -> Vec<u32> {
    let mut lat = Vec::with_capacity(1 << 16);
    let mut i = start;
    while shared.running() {
        let csr = &csrs[i % csrs.len()];
        i += stride;
        let started = Instant::now();
        let result = if generate {
            let mut req = tonic::Request::new(GenerateCertificateRequest {
                common_name: String::new(),
                spiffe_id: csr.spiffe_id.clone(),
                dns_names: vec![],
                ttl_seconds,
                profile: String::new(),
            });
            req.metadata_mut().insert("authorization", token.clone());
            client.generate_certificate(req).await.map(|r| r.into_inner().certificate_pem)
        } else {
            let mut req = tonic::Request::new(SignCsrRequest {
                csr: csr.der.clone(),
                spiffe_id: csr.spiffe_id.clone(),
                ttl_seconds,
                profile: String::new(),
            });
            req.metadata_mut().insert("authorization", token.clone());
            client.sign_csr(req).await.map(|r| r.into_inner().certificate_pem)
        };
        let result = match result {
            Ok(pem) if pem.contains("BEGIN CERTIFICATE") => Ok(()),
            Ok(_) => Err("response without a certificate".to_string()),
            Err(s) => Err(format!("{:?}: {}", s.code(), s.message())),
        };
        let failed = result.is_err();
        shared.done(started, result, &mut lat);
        if failed {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    lat
}

async fn trustmesh_clients(a: &Args) -> Vec<AdminClient<Channel>> {
    let ca_file = a.ca_file.clone().unwrap_or_default();
    let ca = std::fs::read(&ca_file).unwrap_or_else(|e| fatal(&format!("--ca-file {ca_file}: {e}")));
    let mut out = Vec::new();
    for _ in 0..a.connections {
        let tls = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(&ca));
        let endpoint = Channel::from_shared(a.addr.clone())
            .unwrap_or_else(|e| fatal(&format!("--addr {}: {e}", a.addr)))
            .tls_config(tls)
            .unwrap_or_else(|e| fatal(&format!("TLS: {e}")))
            .tcp_nodelay(true)
            .connect_timeout(Duration::from_secs(5))
            .timeout(Duration::from_secs(60));
        let channel = endpoint.connect().await.unwrap_or_else(|e| fatal(&format!("connect {}: {e:?}", a.addr)));
        out.push(AdminClient::new(channel));
    }
    out
}

// ---------- OpenBao: JSON over HTTP/1.1 keep-alive ----------

/// A byte stream the HTTP/1.1 client speaks over: plain TCP (OpenBao's dev
/// server) or TLS (trustmesh's API port).
trait Stream: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send> Stream for T {}

/// A minimal HTTP/1.1 client on one keep-alive connection: enough for
/// Vault's JSON API (Content-Length or chunked responses), OpenBao's and
/// trustmesh's alike; over TLS when `tls` is set.
struct Http1 {
    addr: String,
    tls: Option<tokio_rustls::TlsConnector>,
    conn: Option<BufReader<Box<dyn Stream>>>,
}

impl Http1 {
    async fn post(&mut self, path: &str, token: &str, body: &[u8]) -> Result<(u16, Vec<u8>), String> {
        if self.conn.is_none() {
            let s = TcpStream::connect(&self.addr).await.map_err(|e| format!("connect {}: {e}", self.addr))?;
            s.set_nodelay(true).map_err(|e| e.to_string())?;
            let stream: Box<dyn Stream> = match &self.tls {
                None => Box::new(s),
                Some(connector) => {
                    let host = self.addr.rsplit_once(':').map_or(self.addr.as_str(), |(h, _)| h).to_string();
                    let name = rustls_pki_types::ServerName::try_from(host).map_err(|e| e.to_string())?;
                    Box::new(connector.connect(name, s).await.map_err(|e| format!("TLS to {}: {e}", self.addr))?)
                }
            };
            self.conn = Some(BufReader::new(stream));
        }
        let result = self.exchange(path, token, body).await;
        match &result {
            Ok((_, _, keep)) if *keep => {}
            _ => self.conn = None,
        }
        result.map(|(status, body, _)| (status, body))
    }

    async fn exchange(&mut self, path: &str, token: &str, body: &[u8]) -> Result<(u16, Vec<u8>, bool), String> {
        let conn = self.conn.as_mut().ok_or("not connected")?;
        let io = |e: std::io::Error| e.to_string();
        let mut req = format!(
            "POST {path} HTTP/1.1\r\nHost: {}\r\nX-Vault-Token: {token}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
            self.addr,
            body.len()
        )
        .into_bytes();
        req.extend_from_slice(body);
        conn.get_mut().write_all(&req).await.map_err(io)?;

        let mut line = String::new();
        conn.read_line(&mut line).await.map_err(io)?;
        let status: u16 = line
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| format!("bad status line {line:?}"))?;
        let (mut length, mut chunked, mut keep) = (None, false, true);
        loop {
            line.clear();
            if conn.read_line(&mut line).await.map_err(io)? == 0 {
                return Err("connection closed in the headers".into());
            }
            let l = line.trim_end();
            if l.is_empty() {
                break;
            }
            if let Some((k, v)) = l.split_once(':') {
                let (k, v) = (k.trim().to_ascii_lowercase(), v.trim().to_ascii_lowercase());
                match k.as_str() {
                    "content-length" => length = v.parse::<usize>().ok(),
                    "transfer-encoding" => chunked = v.contains("chunked"),
                    "connection" => keep = !v.contains("close"),
                    _ => {}
                }
            }
        }
        let mut out = Vec::new();
        if chunked {
            loop {
                line.clear();
                conn.read_line(&mut line).await.map_err(io)?;
                let size_hex = line.trim().split(';').next().unwrap_or("");
                let size = usize::from_str_radix(size_hex, 16).map_err(|_| format!("bad chunk size {line:?}"))?;
                if size == 0 {
                    // trailers, then the empty line
                    loop {
                        line.clear();
                        if conn.read_line(&mut line).await.map_err(io)? == 0 || line.trim().is_empty() {
                            break;
                        }
                    }
                    break;
                }
                let at = out.len();
                out.resize(at + size, 0);
                conn.read_exact(&mut out[at..]).await.map_err(io)?;
                let mut crlf = [0u8; 2];
                conn.read_exact(&mut crlf).await.map_err(io)?;
            }
        } else if let Some(n) = length {
            out.resize(n, 0);
            conn.read_exact(&mut out).await.map_err(io)?;
        } else {
            conn.read_to_end(&mut out).await.map_err(io)?;
            keep = false;
        }
        Ok((status, out, keep))
    }
}

#[allow(clippy::too_many_arguments)]
async fn vault_api_task(
    addr: String,
    tls: Option<tokio_rustls::TlsConnector>,
    path: String,
    token: String,
    bodies: Arc<Vec<Vec<u8>>>,
    start: usize,
    stride: usize,
    shared: Arc<Shared>,
) -> Vec<u32> {
    let mut http = Http1 { addr, tls, conn: None };
    let mut lat = Vec::with_capacity(1 << 16);
    let mut i = start;
    while shared.running() {
        let body = &bodies[i % bodies.len()];
        i += stride;
        let started = Instant::now();
        let result = match http.post(&path, &token, body).await {
            Ok((200, resp)) if memfind(&resp, b"\"certificate\"") => Ok(()),
            Ok((status, resp)) => {
                Err(format!("HTTP {status}: {}", String::from_utf8_lossy(&resp[..resp.len().min(300)])))
            }
            Err(e) => Err(e),
        };
        let failed = result.is_err();
        shared.done(started, result, &mut lat);
        if failed {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    lat
}

/// TLS to trustmesh's API port, trusting its `ca-bundle.pem`; HTTP/1.1.
fn tls_connector(a: &Args) -> tokio_rustls::TlsConnector {
    let ca_file = a.ca_file.clone().unwrap_or_default();
    let pem = std::fs::read_to_string(&ca_file).unwrap_or_else(|e| fatal(&format!("--ca-file {ca_file}: {e}")));
    let mut roots = rustls::RootCertStore::empty();
    for der in trustmesh::ca::certs_from_pem(&pem).unwrap_or_else(|e| fatal(&format!("--ca-file {ca_file}: {e}"))) {
        roots.add(rustls_pki_types::CertificateDer::from(der)).unwrap_or_else(|e| fatal(&format!("CA: {e}")));
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap_or_else(|e| fatal(&format!("TLS: {e}")))
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    tokio_rustls::TlsConnector::from(Arc::new(config))
}

fn memfind(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

// ---------- main ----------

fn percentile(sorted: &[u32], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[idx.min(sorted.len() - 1)] as f64 / 1000.0
}

fn main() {
    let a = args();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap_or_else(|e| fatal(&format!("tokio: {e}")));
    runtime.block_on(run(a));
}

async fn run(a: Args) {
    let tck = clk_tck();
    let ncpu = cpus();
    eprintln!(
        "target {} mode {} at {}; {} tasks, {} s warm-up + {} s measured; load {}",
        a.target,
        a.mode,
        a.addr,
        a.concurrency,
        a.warmup,
        a.duration,
        loadavg()
    );
    let t = Instant::now();
    let csrs = Arc::new(make_csrs(a.csrs, &a.trust_domain));
    eprintln!("{} P-256 CSRs made in {:.1} s", csrs.len(), t.elapsed().as_secs_f64());

    // Best of 3: other work on the machine only ever lowers the figure.
    let (mut raw_cpu_us, mut raw_n, mut raw_ceiling) = (f64::NAN, 0.0, 0.0);
    if a.raw_secs > 0.0 {
        let c = csrs.clone();
        let secs = a.raw_secs;
        let (one, all) = tokio::task::spawn_blocking(move || {
            let one: Vec<Rate> = (0..3).map(|_| raw_verify_sign(&c, 1, secs)).collect();
            let all: Vec<Rate> = (0..3).map(|_| raw_verify_sign(&c, ncpu, secs)).collect();
            (Rate::best(&one), Rate::best(&all))
        })
        .await
        .unwrap_or_else(|_| fatal("raw measurement failed"));
        raw_cpu_us = Rate::best(&[one, all]).cpu_us_per_op;
        raw_n = all.per_sec;
        raw_ceiling = ncpu as f64 * 1e6 / raw_cpu_us;
        eprintln!(
            "ring verify+sign per CSR: {} /s on 1 thread, {} /s on {ncpu} threads, {raw_cpu_us:.1} µs CPU each \
             (ceiling {} /s on {ncpu} CPUs); load {}",
            fmt_rate(one.per_sec),
            fmt_rate(raw_n),
            fmt_rate(raw_ceiling),
            loadavg()
        );
    }

    let shared = Arc::new(Shared {
        phase: AtomicU8::new(WARMUP),
        ok: AtomicU64::new(0),
        err: AtomicU64::new(0),
        first_error: parking_lot::Mutex::new(None),
    });
    let mut tasks = Vec::new();
    if a.target == "trustmesh" {
        let clients = trustmesh_clients(&a).await;
        let token: MetadataValue<Ascii> = format!("Bearer {}", a.token)
            .parse()
            .unwrap_or_else(|_| fatal("the token has characters not allowed in a header"));
        for i in 0..a.concurrency {
            tasks.push(tokio::spawn(trustmesh_task(
                clients[i % clients.len()].clone(),
                token.clone(),
                csrs.clone(),
                a.mode == "generate",
                a.ttl_seconds,
                i,
                a.concurrency,
                shared.clone(),
            )));
        }
    } else {
        let ttl = format!("{}s", a.ttl_seconds);
        let bodies: Vec<Vec<u8>> = csrs
            .iter()
            .map(|c| {
                let v = if a.mode == "sign" {
                    serde_json::json!({ "csr": c.pem, "ttl": ttl })
                } else {
                    serde_json::json!({ "uri_sans": c.spiffe_id, "ttl": ttl })
                };
                serde_json::to_vec(&v).unwrap_or_default()
            })
            .collect();
        let bodies = Arc::new(bodies);
        let path = format!("/v1/{}/{}/{}", a.mount, a.mode, a.role);
        let tls = (a.target == "trustmesh-pki").then(|| tls_connector(&a));
        for i in 0..a.concurrency {
            tasks.push(tokio::spawn(vault_api_task(
                a.addr.clone(),
                tls.clone(),
                path.clone(),
                a.token.clone(),
                bodies.clone(),
                i,
                a.concurrency,
                shared.clone(),
            )));
        }
    }

    tokio::time::sleep(Duration::from_secs_f64(a.warmup)).await;
    let s0 = snapshot(a.server_pid, &shared.ok, &shared.err);
    shared.phase.store(MEASURE, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_secs_f64(a.duration)).await;
    shared.phase.store(STOP, Ordering::SeqCst);
    let s1 = snapshot(a.server_pid, &shared.ok, &shared.err);
    let load = loadavg();

    let mut lat: Vec<u32> = Vec::new();
    for t in tasks {
        if let Ok(l) = t.await {
            lat.extend(l);
        }
    }
    lat.sort_unstable();
    let secs = (s1.at - s0.at).as_secs_f64();
    let ok = s1.ok - s0.ok;
    let err = s1.err - s0.err;
    let rate = ok as f64 / secs;
    let per_cert = |ticks: Option<u64>, before: Option<u64>| match (ticks, before) {
        (Some(b), Some(a0)) if ok > 0 => (b - a0) as f64 / tck * 1e6 / ok as f64,
        _ => f64::NAN,
    };
    let server_us = per_cert(s1.server, s0.server);
    let client_us = per_cert(s1.client, s0.client);
    let server_cores = match (s1.server, s0.server) {
        (Some(b), Some(a0)) => (b - a0) as f64 / tck / secs,
        _ => f64::NAN,
    };
    let machine_busy = match (s1.machine, s0.machine) {
        (Some((b1, t1)), Some((b0, t0))) if t1 > t0 => 100.0 * (b1 - b0) as f64 / (t1 - t0) as f64,
        _ => f64::NAN,
    };
    let client_cores = match (s1.client, s0.client) {
        (Some(b), Some(a0)) => (b - a0) as f64 / tck / secs,
        _ => f64::NAN,
    };
    // CPU used by neither the server nor this client: other work on the machine.
    let other_cores = (machine_busy / 100.0 * ncpu as f64 - server_cores - client_cores).max(0.0);
    let (p50, p90, p99, max) =
        (percentile(&lat, 0.50), percentile(&lat, 0.90), percentile(&lat, 0.99), percentile(&lat, 1.0));

    println!();
    println!("{} {} ({} tasks, {:.1} s measured)", a.target, a.mode, a.concurrency, secs);
    println!("  certificates/s        {:>10.0}   ({ok} ok, {err} failed)", rate);
    println!("  latency p50/p90/p99   {p50:.2} / {p90:.2} / {p99:.2} ms (max {max:.1} ms)");
    println!("  server CPU per cert   {server_us:>10.0} µs   ({server_cores:.2} cores busy)");
    println!("  client CPU per cert   {client_us:>10.0} µs   ({client_cores:.2} cores busy)");
    println!(
        "  machine CPU busy      {machine_busy:>10.0} %    ({other_cores:.2} cores used by other processes; load {load})"
    );
    let (mut pct, mut pct_ceiling, mut cpu_pct) = (f64::NAN, f64::NAN, f64::NAN);
    if raw_n > 0.0 {
        pct = 100.0 * rate / raw_n;
        pct_ceiling = 100.0 * rate / raw_ceiling;
        cpu_pct = 100.0 * raw_cpu_us / server_us;
        println!("  raw ring verify+sign  {raw_n:>10.0} /s on {ncpu} threads -> this run is {pct:.1} % of it");
        println!(
            "                        {raw_ceiling:>10.0} /s CPU ceiling   -> this run is {pct_ceiling:.1} % of it"
        );
        println!(
            "                        {raw_cpu_us:>10.1} µs CPU each    -> {cpu_pct:.1} % of the server's CPU per cert"
        );
    }
    if let Some(e) = shared.first_error.lock().as_ref() {
        println!("  first error: {e}");
    }
    println!(
        "RESULT target={} mode={} concurrency={} secs={secs:.1} ok={ok} err={err} certs_per_s={rate:.0} p50_ms={p50:.2} \
         p90_ms={p90:.2} p99_ms={p99:.2} server_cpu_us={server_us:.0} server_cores={server_cores:.2} \
         client_cpu_us={client_us:.0} client_cores={client_cores:.2} machine_busy_pct={machine_busy:.0} \
         other_cores={other_cores:.2} raw_cpu_us={raw_cpu_us:.1} rawN={raw_n:.0} \
         raw_ceiling={raw_ceiling:.0} pct_of_raw={pct:.1} pct_of_ceiling={pct_ceiling:.1} crypto_share_pct={cpu_pct:.1} load=\"{load}\"",
        a.target, a.mode, a.concurrency
    );
    if ok == 0 || err * 100 > ok + err {
        fatal(&format!("{err} of {} requests failed", ok + err));
    }
}
