//! SDS load client: holds N concurrent SDS streams against a running
//! `trustmesh serve` over its local socket and measures
//!
//! 1. the server's memory per open stream: (VmRSS with N streams open and
//!    ACKed − VmRSS before) / N, from `/proc/<--server-pid>/status`;
//! 2. the fan-out latency of one trust-bundle change: it runs `--trigger`
//!    (e.g. `trustmesh pki cert revoke <serial>`, which republishes the CRLs
//!    and so changes every `ROOTCA` validation context), notes when the
//!    command returned, and when each stream received a `ROOTCA` with new
//!    content; p50/p99/max over all N streams.
//!
//! ```text
//! cargo bench --bench sds_streams -- --socket /tmp/x/api.sock --server-pid PID \
//!     --streams 10000 --flavor delta -- trustmesh --data-dir D pki cert revoke SERIAL
//! ```
//!
//! Each stream behaves like an Envoy: one stream subscribed to `default` and
//! `ROOTCA` (SotW `StreamSecrets` or delta `DeltaSecrets`, or the ADS methods
//! with `--api ads`), an Envoy-sized node (`--node-bytes`, ≈ 61 KB like Envoy
//! 1.40's 516 extensions) on the first request only, every response ACKed with
//! its nonce (SotW: version + names + nonce; delta: nonce only). Streams are
//! spread over HTTP/2 connections (`--per-conn`, 100) and opened with at most
//! `--open-concurrency` (100) openings in flight. Messages are the xDS wire
//! format with the node pre-encoded once and resources left as bytes, so the
//! client spends little CPU on the shared 2-core machine.
//!
//! With `--in-process DIR` the bench starts trustmesh itself, in this process
//! (issuer on SQLite in DIR, identity cache and SDS server on `DIR/api.sock`,
//! wired as `trustmesh serve` wires them, on their own tokio runtime with one
//! worker per CPU), creates the entry and a certificate, and the change is a
//! real `Issuer::revoke` (`--call revoke`) or `Issuer::deny` (`--call deny`)
//! of it: the clock starts when that call returns, on the same clock as the
//! streams'. Each stream's time is taken when it has received the response
//! with the new `ROOTCA` (CRL) and again when its ACK is queued; the run also
//! waits until the server has counted every ACK (`trustmesh.sds.acks`).
//! Memory figures then include this client, so use the external mode for those.
//!
//! ```text
//! cargo bench --bench sds_streams -- --in-process /tmp/d --streams 10000 --flavor sotw --call revoke
//! ```
//!
//! The last line is `RESULT key=value ...` for `bench/sds.sh`.

#[path = "common.rs"]
mod common;
#[path = "inproc.rs"]
mod inproc;

use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::path::PathBuf;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use prost::Message;
use prost::bytes::Bytes;
use tokio::sync::{Semaphore, mpsc, oneshot};
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;

use common::{cpu_ms, envoy_node, loadavg, my_uid, percentile, rss_kib, threads_cpu_ticks, unix_channel};

const SECRET_TYPE: &str = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret";
const NAMES: [&str; 2] = ["default", "ROOTCA"];

const USAGE: &str = "\
sds_streams: memory per SDS stream and fan-out latency of a trust-bundle change.

  --socket PATH[,PATH…]    trustmesh's local socket (required unless --in-process); several (node
                           agents' sockets): connection j goes to socket j mod their number
  --server-pid PID         the trustmesh serve process (required unless --in-process)
  --in-process DIR         start trustmesh in this process on data dir DIR (must not exist or be empty)
  --call revoke|deny       with --in-process: the change is Issuer::revoke or Issuer::deny (revoke)
  --prefill-revoked R      with --in-process: R revoked unexpired serials in the store first (0), so
                           every CRL pushed carries them
  --streams N              concurrent streams (1000)
  --flavor delta|sotw      (delta)
  --api sds|ads            SecretDiscoveryService or AggregatedDiscoveryService methods (sds)
  --per-conn K             streams per HTTP/2 connection (100)
  --open-concurrency C     stream openings in flight at once (100)
  --node-bytes B           encoded size of the node on the first request (61000; 0: id and cluster only)
  --node-every 0|1         1: the node on every request, ACKs included (Envoy's default); 0: on the
                           first request only (set_node_on_first_message_only) (0)
  --ack-rounds R           after the streams are open, R rounds in which every stream sends its last
                           ACK once more, each round once the server counted the last; server CPU
                           per ACK (needs the server's ACK count: in process, or --metrics-url)
                           (10; 0: skip)
  --metrics-url URL        the server's Prometheus endpoint (http://HOST:PORT/metrics)
  --settle S               seconds to wait after the last ACK before reading RSS (3)
  --timeout S              seconds to wait for every stream to see the change (60)
  --client-threads T       tokio worker threads of this client (1)
  --hold S                 seconds to keep the streams open after the measurement (0; for profiling)
  --cert-names PREFIX:K    stream i subscribes to the certificate PREFIX<i mod K> (a SPIFFE ID the
                           caller is entitled to) instead of `default`, and the change measured is
                           a new certificate on every stream instead of a new ROOTCA (a CA taint)
  -- CMD ARGS...           the trigger command (without it: memory only)

Every flag also reads BENCH_<FLAG> (e.g. BENCH_STREAMS=10000).";

struct Args {
    sockets: Vec<PathBuf>,
    server_pid: u32,
    in_process: Option<PathBuf>,
    call: Call,
    prefill: usize,
    streams: usize,
    delta: bool,
    ads: bool,
    per_conn: usize,
    open_concurrency: usize,
    node_bytes: usize,
    node_every: bool,
    ack_rounds: u32,
    metrics_url: Option<String>,
    settle: f64,
    timeout: f64,
    client_threads: usize,
    hold: f64,
    /// `--cert-names`: (prefix, how many).
    cert_names: Option<(String, usize)>,
    trigger: Vec<String>,
}

fn parse_args() -> Result<Args, String> {
    let mut argv: Vec<String> = std::env::args().skip(1).collect();
    // `cargo bench` appends `--bench`; drop it.
    argv.retain(|a| a != "--bench");
    let mut trigger = Vec::new();
    if let Some(i) = argv.iter().position(|a| a == "--") {
        trigger = argv.split_off(i + 1);
        argv.pop();
    }
    let mut get = |flag: &str| -> Option<String> {
        if let Some(i) = argv.iter().position(|a| a == &format!("--{flag}")) {
            let v = argv.get(i + 1).cloned();
            argv.drain(i..(i + 2).min(argv.len()));
            return v;
        }
        std::env::var(format!("BENCH_{}", flag.to_uppercase().replace('-', "_"))).ok()
    };
    if std::env::args().any(|a| a == "--help" || a == "-h") {
        return Err(USAGE.to_string());
    }
    fn num<T: std::str::FromStr>(v: Option<String>, default: T, flag: &str) -> Result<T, String> {
        match v {
            None => Ok(default),
            Some(s) => s.parse().map_err(|_| format!("--{flag}: not a number: {s}")),
        }
    }
    let in_process: Option<PathBuf> = get("in-process").map(Into::into);
    let call = match get("call").as_deref() {
        None | Some("revoke") => Call::Revoke,
        Some("deny") => Call::Deny,
        Some(other) => return Err(format!("--call: revoke or deny, not {other}")),
    };
    let (sockets, server_pid) = match &in_process {
        Some(dir) => (vec![dir.join("api.sock")], std::process::id()),
        None => {
            let sockets = get("socket").ok_or("--socket is required")?.split(',').map(PathBuf::from).collect();
            let server_pid = num(get("server-pid"), 0u32, "server-pid")?;
            if server_pid == 0 {
                return Err("--server-pid is required".into());
            }
            (sockets, server_pid)
        }
    };
    let flavor = get("flavor").unwrap_or_else(|| "delta".into());
    let api = get("api").unwrap_or_else(|| "sds".into());
    let args = Args {
        sockets,
        server_pid,
        in_process,
        call,
        prefill: num(get("prefill-revoked"), 0, "prefill-revoked")?,
        streams: num(get("streams"), 1000, "streams")?,
        delta: match flavor.as_str() {
            "delta" => true,
            "sotw" => false,
            other => return Err(format!("--flavor: delta or sotw, not {other}")),
        },
        ads: match api.as_str() {
            "sds" => false,
            "ads" => true,
            other => return Err(format!("--api: sds or ads, not {other}")),
        },
        per_conn: num(get("per-conn"), 100, "per-conn")?.max(1),
        open_concurrency: num(get("open-concurrency"), 100, "open-concurrency")?.max(1),
        node_bytes: num(get("node-bytes"), 61_000, "node-bytes")?,
        node_every: num(get("node-every"), 0u8, "node-every")? != 0,
        ack_rounds: num(get("ack-rounds"), 10, "ack-rounds")?,
        metrics_url: get("metrics-url"),
        settle: num(get("settle"), 3.0, "settle")?,
        timeout: num(get("timeout"), 60.0, "timeout")?,
        client_threads: num(get("client-threads"), 1, "client-threads")?.max(1),
        hold: num(get("hold"), 0.0, "hold")?,
        cert_names: match get("cert-names") {
            None => None,
            Some(v) => {
                let (prefix, k) = v.rsplit_once(':').ok_or("--cert-names: PREFIX:K")?;
                let k: usize = k.parse().map_err(|_| "--cert-names: K is a number")?;
                if k == 0 {
                    return Err("--cert-names: K is at least 1".into());
                }
                Some((prefix.to_string(), k))
            }
        },
        trigger,
    };
    if let Some(extra) = argv.first() {
        return Err(format!("unknown argument {extra}\n\n{USAGE}"));
    }
    Ok(args)
}

// ---------------------------------------------------------------- wire types
// `envoy.service.discovery.v3` messages with the node as pre-encoded bytes and
// resources as undecoded bytes (same field numbers as the generated types).

#[derive(Clone, PartialEq, prost::Message)]
struct SotwRequest {
    #[prost(string, tag = "1")]
    version_info: String,
    #[prost(bytes = "bytes", tag = "2")]
    node: Bytes,
    #[prost(string, repeated, tag = "3")]
    resource_names: Vec<String>,
    #[prost(string, tag = "4")]
    type_url: String,
    #[prost(string, tag = "5")]
    response_nonce: String,
}

#[derive(Clone, PartialEq, prost::Message)]
struct SotwResponse {
    #[prost(string, tag = "1")]
    version_info: String,
    #[prost(bytes = "bytes", repeated, tag = "2")]
    resources: Vec<Bytes>,
    #[prost(string, tag = "4")]
    type_url: String,
    #[prost(string, tag = "5")]
    nonce: String,
}

#[derive(Clone, PartialEq, prost::Message)]
struct DeltaRequest {
    #[prost(bytes = "bytes", tag = "1")]
    node: Bytes,
    #[prost(string, tag = "2")]
    type_url: String,
    #[prost(string, repeated, tag = "3")]
    resource_names_subscribe: Vec<String>,
    #[prost(string, tag = "6")]
    response_nonce: String,
}

#[derive(Clone, PartialEq, prost::Message)]
struct DeltaResponse {
    #[prost(string, tag = "1")]
    system_version_info: String,
    #[prost(message, repeated, tag = "2")]
    resources: Vec<DeltaResource>,
    #[prost(string, tag = "4")]
    type_url: String,
    #[prost(string, tag = "5")]
    nonce: String,
}

#[derive(Clone, PartialEq, prost::Message)]
struct DeltaResource {
    #[prost(string, tag = "1")]
    version: String,
    #[prost(bytes = "bytes", tag = "2")]
    resource: Bytes,
    #[prost(string, tag = "3")]
    name: String,
}

/// `google.protobuf.Any`, value undecoded.
#[derive(Clone, PartialEq, prost::Message)]
struct AnyBytes {
    #[prost(string, tag = "1")]
    type_url: String,
    #[prost(bytes = "bytes", tag = "2")]
    value: Bytes,
}

/// The name of a `Secret`; the rest is skipped.
#[derive(Clone, PartialEq, prost::Message)]
struct SecretName {
    #[prost(string, tag = "1")]
    name: String,
}

// ---------------------------------------------------------------- streams

/// What every stream task shares.
struct Shared {
    base: Instant,
    /// Set just before the trigger runs: ROOTCA changes from then on count.
    armed: AtomicBool,
    /// Per stream: nanoseconds since `base` when the new ROOTCA arrived (0: not yet).
    changed_at: Vec<AtomicU64>,
    changed: AtomicUsize,
    /// Per stream: when the ACK of that response was queued on the stream.
    acked_at: Vec<AtomicU64>,
    acked: AtomicUsize,
    /// Streams that ended (error or end of stream) after they were open.
    ended: AtomicUsize,
    first_end: parking_lot::Mutex<Option<String>>,
    responses: AtomicU64,
    /// Encoded bytes of every response received.
    response_bytes: AtomicU64,
    /// The node on every request, not only the first.
    node_every: bool,
    /// Rounds of repeated ACKs asked of every stream (`--ack-rounds`).
    reack: tokio::sync::watch::Sender<u32>,
    /// `--cert-names`: what each stream subscribes to, and a new certificate is the change measured.
    cert_names: Option<(String, usize)>,
}

impl Shared {
    /// The certificate and the validation context stream `i` subscribes to.
    fn names(&self, i: usize) -> Vec<String> {
        match &self.cert_names {
            Some((prefix, k)) => vec![format!("{prefix}{}", i % k), "ROOTCA".into()],
            None => NAMES.iter().map(|s| s.to_string()).collect(),
        }
    }

    /// Notes a response's (ROOTCA, certificate) fingerprints against what
    /// stream `i` held; true when it is the change measured.
    fn observe(&self, i: usize, held: &mut (Option<u64>, Option<u64>), got: (Option<u64>, Option<u64>)) -> bool {
        let watched = |pair: (Option<u64>, Option<u64>)| if self.cert_names.is_some() { pair.1 } else { pair.0 };
        let before = watched(*held);
        held.0 = got.0.or(held.0);
        held.1 = got.1.or(held.1);
        let after = watched(*held);
        before.is_some() && after != before && self.rootca_changed(i)
    }

    fn ended(&self, why: String) {
        self.ended.fetch_add(1, Ordering::Relaxed);
        let mut first = self.first_end.lock();
        if first.is_none() {
            *first = Some(why);
        }
    }

    /// Records the arrival of a new ROOTCA; true when it is the one measured.
    fn rootca_changed(&self, i: usize) -> bool {
        let t = self.base.elapsed().as_nanos() as u64;
        // Index n is the warm-up stream: recorded, not counted.
        if self.armed.load(Ordering::Acquire)
            && i < self.changed_at.len() - 1
            && self.changed_at[i].compare_exchange(0, t.max(1), Ordering::AcqRel, Ordering::Relaxed).is_ok()
        {
            self.changed.fetch_add(1, Ordering::AcqRel);
            return true;
        }
        false
    }

    /// The ACK of the measured response is queued on stream `i`.
    fn rootca_acked(&self, i: usize) {
        let t = self.base.elapsed().as_nanos() as u64;
        if self.acked_at[i].compare_exchange(0, t.max(1), Ordering::AcqRel, Ordering::Relaxed).is_ok() {
            self.acked.fetch_add(1, Ordering::AcqRel);
        }
    }
}

fn hash_of(bytes: &[u8]) -> u64 {
    let mut h = DefaultHasher::new();
    bytes.hash(&mut h);
    h.finish()
}

/// (ROOTCA, certificate) content fingerprints of a SotW response.
fn sotw_contents(r: &SotwResponse) -> (Option<u64>, Option<u64>) {
    let (mut rootca, mut cert) = (None, None);
    for any in &r.resources {
        let Ok(a) = AnyBytes::decode(any.clone()) else { continue };
        let Ok(s) = SecretName::decode(a.value.clone()) else { continue };
        match s.name.as_str() {
            "ROOTCA" => rootca = Some(hash_of(any)),
            _ => cert = Some(hash_of(any)),
        }
    }
    (rootca, cert)
}

fn delta_contents(r: &DeltaResponse) -> (Option<u64>, Option<u64>) {
    let (mut rootca, mut cert) = (None, None);
    for res in &r.resources {
        match res.name.as_str() {
            "ROOTCA" => rootca = Some(hash_of(res.version.as_bytes())),
            _ => cert = Some(hash_of(res.version.as_bytes())),
        }
    }
    (rootca, cert)
}

fn path(delta: bool, ads: bool) -> http::uri::PathAndQuery {
    http::uri::PathAndQuery::from_static(match (delta, ads) {
        (false, false) => "/envoy.service.secret.v3.SecretDiscoveryService/StreamSecrets",
        (true, false) => "/envoy.service.secret.v3.SecretDiscoveryService/DeltaSecrets",
        (false, true) => "/envoy.service.discovery.v3.AggregatedDiscoveryService/StreamAggregatedResources",
        (true, true) => "/envoy.service.discovery.v3.AggregatedDiscoveryService/DeltaAggregatedResources",
    })
}

/// One SotW stream: open, wait for both secrets, ACK everything; `opened`
/// reports the first ACK sent (or why the stream could not open).
async fn sotw_stream(
    i: usize,
    channel: Channel,
    node: Bytes,
    ads: bool,
    shared: Arc<Shared>,
    opened: oneshot::Sender<Result<(), String>>,
) {
    let names = shared.names(i);
    let (tx, rx) = mpsc::channel::<SotwRequest>(4);
    let first = SotwRequest {
        node: node.clone(),
        resource_names: names.clone(),
        type_url: SECRET_TYPE.into(),
        ..Default::default()
    };
    let _ = tx.send(first).await;
    // Large CRLs make large validation contexts: no 4 MB cap on this side.
    let mut grpc = tonic::client::Grpc::new(channel).max_decoding_message_size(usize::MAX);
    if let Err(e) = grpc.ready().await {
        let _ = opened.send(Err(format!("connection not ready: {e}")));
        return;
    }
    let codec = tonic_prost::ProstCodec::<SotwRequest, SotwResponse>::default();
    let mut responses =
        match grpc.streaming(tonic::Request::new(ReceiverStream::new(rx)), path(false, ads), codec).await {
            Ok(r) => r.into_inner(),
            Err(s) => {
                let _ = opened.send(Err(format!("stream refused: {:?} {}", s.code(), s.message())));
                return;
            }
        };
    let mut opened = Some(opened);
    let mut held = (None, None);
    let mut reack = shared.reack.subscribe();
    reack.mark_unchanged();
    let mut last_ack = None;
    loop {
        let next = tokio::select! {
            m = responses.message() => m,
            Ok(()) = reack.changed() => {
                let rounds = *reack.borrow_and_update();
                for ack in std::iter::repeat_n(last_ack.clone(), rounds as usize).flatten() {
                    if tx.send(ack).await.is_err() {
                        return shared.ended("request stream closed".into());
                    }
                }
                continue;
            }
        };
        let r = match next {
            Ok(Some(r)) => r,
            Ok(None) | Err(_) if opened.is_some() => {
                if let Some(o) = opened.take() {
                    let _ = o.send(Err("stream ended before both secrets arrived".into()));
                }
                return;
            }
            Ok(None) => return shared.ended("end of stream".into()),
            Err(s) => return shared.ended(format!("{:?}: {}", s.code(), s.message())),
        };
        shared.responses.fetch_add(1, Ordering::Relaxed);
        shared.response_bytes.fetch_add(r.encoded_len() as u64, Ordering::Relaxed);
        let measured = shared.observe(i, &mut held, sotw_contents(&r));
        let ack = SotwRequest {
            version_info: r.version_info,
            node: if shared.node_every { node.clone() } else { Bytes::new() },
            resource_names: names.clone(),
            type_url: r.type_url,
            response_nonce: r.nonce,
        };
        last_ack = Some(ack.clone());
        if tx.send(ack).await.is_err() {
            return shared.ended("request stream closed".into());
        }
        if measured {
            shared.rootca_acked(i);
        }
        if held.0.is_some()
            && held.1.is_some()
            && let Some(o) = opened.take()
        {
            let _ = o.send(Ok(()));
        }
    }
}

/// One delta stream, as [`sotw_stream`].
async fn delta_stream(
    i: usize,
    channel: Channel,
    node: Bytes,
    ads: bool,
    shared: Arc<Shared>,
    opened: oneshot::Sender<Result<(), String>>,
) {
    let (tx, rx) = mpsc::channel::<DeltaRequest>(4);
    let first = DeltaRequest {
        node: node.clone(),
        type_url: SECRET_TYPE.into(),
        resource_names_subscribe: shared.names(i),
        response_nonce: String::new(),
    };
    let _ = tx.send(first).await;
    // Large CRLs make large validation contexts: no 4 MB cap on this side.
    let mut grpc = tonic::client::Grpc::new(channel).max_decoding_message_size(usize::MAX);
    if let Err(e) = grpc.ready().await {
        let _ = opened.send(Err(format!("connection not ready: {e}")));
        return;
    }
    let codec = tonic_prost::ProstCodec::<DeltaRequest, DeltaResponse>::default();
    let mut responses = match grpc.streaming(tonic::Request::new(ReceiverStream::new(rx)), path(true, ads), codec).await
    {
        Ok(r) => r.into_inner(),
        Err(s) => {
            let _ = opened.send(Err(format!("stream refused: {:?} {}", s.code(), s.message())));
            return;
        }
    };
    let mut opened = Some(opened);
    let mut held = (None, None);
    let mut reack = shared.reack.subscribe();
    reack.mark_unchanged();
    let mut last_ack = None;
    loop {
        let next = tokio::select! {
            m = responses.message() => m,
            Ok(()) = reack.changed() => {
                let rounds = *reack.borrow_and_update();
                for ack in std::iter::repeat_n(last_ack.clone(), rounds as usize).flatten() {
                    if tx.send(ack).await.is_err() {
                        return shared.ended("request stream closed".into());
                    }
                }
                continue;
            }
        };
        let r = match next {
            Ok(Some(r)) => r,
            Ok(None) | Err(_) if opened.is_some() => {
                if let Some(o) = opened.take() {
                    let _ = o.send(Err("stream ended before both secrets arrived".into()));
                }
                return;
            }
            Ok(None) => return shared.ended("end of stream".into()),
            Err(s) => return shared.ended(format!("{:?}: {}", s.code(), s.message())),
        };
        shared.responses.fetch_add(1, Ordering::Relaxed);
        shared.response_bytes.fetch_add(r.encoded_len() as u64, Ordering::Relaxed);
        let measured = shared.observe(i, &mut held, delta_contents(&r));
        let ack = DeltaRequest {
            node: if shared.node_every { node.clone() } else { Bytes::new() },
            type_url: r.type_url,
            response_nonce: r.nonce,
            ..Default::default()
        };
        last_ack = Some(ack.clone());
        if tx.send(ack).await.is_err() {
            return shared.ended("request stream closed".into());
        }
        if measured {
            shared.rootca_acked(i);
        }
        if held.0.is_some()
            && held.1.is_some()
            && let Some(o) = opened.take()
        {
            let _ = o.send(Ok(()));
        }
    }
}

// ---------------------------------------------------------------- /proc

/// utime + stime of this process's threads whose name starts with `prefix`, in ms.
fn threads_cpu_ms(prefix: &str) -> u64 {
    threads_cpu_ticks(prefix) * 10
}

// ---------------------------------------------------------------- in process

/// The change `--in-process` makes.
#[derive(Debug, Clone, Copy)]
enum Call {
    Revoke,
    Deny,
}

/// Whose certificate `--in-process` revokes (or which identity it denies).
const VICTIM: &str = "spiffe://example.org/bench/revoked";
/// Server threads (runtime workers and blocking pool) are named this.
const SERVER_THREADS: &str = "tm-server";
const CLIENT_THREADS: &str = "bench-client";

/// trustmesh running in this process.
struct InProcess {
    runtime: tokio::runtime::Runtime,
    issuer: Arc<trustmesh::issuer::Issuer>,
    telemetry: Arc<trustmesh::telemetry::Telemetry>,
    _sds: inproc::Sds,
    call: Call,
    /// The serial to revoke, or the identity to deny.
    target: String,
}

fn start_in_process(dir: &std::path::Path, call: Call, prefill: usize) -> Result<InProcess, String> {
    use trustmesh::issuer::{Caller, EntryRequest, GenerateRequest};
    std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .thread_name(SERVER_THREADS)
        .enable_all()
        .build()
        .map_err(|e| format!("server runtime: {e}"))?;
    let (issuer, telemetry, sds, target) = runtime.block_on(async {
        // First, so the issuer's and the SDS server's instruments report to it.
        let telemetry = Arc::new(trustmesh::telemetry::Telemetry::init().map_err(|e| format!("telemetry: {e}"))?);
        let system = Caller::system();
        if prefill > 0 {
            // A first start creates the PKI; the revoked rows go in while it is stopped.
            let (issuer, store) = inproc::start_issuer(dir).await?;
            let services = issuer.snapshot().services().map(|c| c.fingerprint.clone()).ok_or("no Services CA")?;
            let request = GenerateRequest {
                common_name: String::new(),
                spiffe_id: format!("{VICTIM}-sample"),
                dns_names: vec![],
                ttl_seconds: 3600,
            };
            let der = issuer.generate(&system, &request).await.map_err(|e| format!("generate: {e}"))?.record.cert_der;
            drop((issuer, store));
            tokio::time::sleep(Duration::from_millis(200)).await;
            let took = inproc::prefill_revoked(dir, prefill, &services, &der)?;
            eprintln!("sds_streams: {prefill} revoked serials written to the store in {:.1} s", took.as_secs_f64());
        }
        let (issuer, _store) = inproc::start_issuer(dir).await?;
        let entry = EntryRequest {
            spiffe_id: "spiffe://example.org/bench/envoy".into(),
            selectors: vec![format!("unix:uid:{}", my_uid())],
            ..Default::default()
        };
        issuer.create_entry(&system, entry).await.map_err(|e| format!("entry: {e}"))?;
        let request = GenerateRequest {
            common_name: String::new(),
            spiffe_id: VICTIM.into(),
            dns_names: vec![],
            ttl_seconds: 3600,
        };
        let issued = issuer.generate(&system, &request).await.map_err(|e| format!("generate: {e}"))?;
        let target = match call {
            Call::Revoke => issued.record.serial,
            Call::Deny => VICTIM.to_string(),
        };
        let sds = inproc::start_sds(&issuer, &dir.join("api.sock"))?;
        Ok::<_, String>((issuer, telemetry, sds, target))
    })?;
    Ok(InProcess { runtime, issuer, telemetry, _sds: sds, call, target })
}

/// ACKs the in-process server has counted (`trustmesh.sds.acks`).
/// The server's `trustmesh_sds_acks` counter, read from its Prometheus
/// endpoint (`http://HOST:PORT/PATH`, plain HTTP/1.0).
async fn scrape_acks(url: &str) -> Option<f64> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let rest = url.strip_prefix("http://")?;
    let (host, path) = rest.split_once('/').unwrap_or((rest, ""));
    let mut conn = tokio::net::TcpStream::connect(host).await.ok()?;
    conn.write_all(format!("GET /{path} HTTP/1.0\r\nHost: {host}\r\n\r\n").as_bytes()).await.ok()?;
    let mut body = String::new();
    conn.read_to_string(&mut body).await.ok()?;
    Some(acks_in(&body))
}

fn server_acks(telemetry: &trustmesh::telemetry::Telemetry) -> f64 {
    acks_in(&telemetry.render())
}

/// The sum of the `trustmesh_sds_acks` samples in a Prometheus text page.
fn acks_in(page: &str) -> f64 {
    page.lines()
        .filter(|l| l.starts_with("trustmesh_sds_acks"))
        .filter_map(|l| l.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok()))
        .sum()
}

// ---------------------------------------------------------------- main

fn main() {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("{e}");
            std::process::exit(if e == USAGE { 0 } else { 2 });
        }
    };
    let server = match &args.in_process {
        None => None,
        Some(dir) => match start_in_process(dir, args.call, args.prefill) {
            Ok(s) => Some(s),
            Err(e) => {
                eprintln!("sds_streams: in-process trustmesh: {e}");
                std::process::exit(1);
            }
        },
    };
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(args.client_threads)
        .thread_name(CLIENT_THREADS)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("sds_streams: tokio runtime: {e}");
            std::process::exit(1);
        }
    };
    let code = rt.block_on(run(args, server.as_ref()));
    // Exit without dropping the streams one by one: the server sees every
    // connection close at once.
    std::process::exit(code);
}

async fn run(args: Args, server: Option<&InProcess>) -> i32 {
    let flavor = if args.delta { "delta" } else { "sotw" };
    let node = envoy_node(args.node_bytes);
    let n = args.streams;
    let pid = args.server_pid;
    let in_process = server.is_some();
    // In process, the server's CPU is its own threads', and the client's its own.
    let server_cpu_ms = || if in_process { threads_cpu_ms(SERVER_THREADS) } else { cpu_ms(pid) };
    let client_cpu_ms = || if in_process { threads_cpu_ms(CLIENT_THREADS) } else { cpu_ms(std::process::id()) };
    eprintln!(
        "sds_streams: {n} {flavor} streams ({} API), {} per connection, {} openings in flight, node {} bytes on {}",
        if args.ads { "ADS" } else { "SDS" },
        args.per_conn,
        args.open_concurrency,
        node.len(),
        if args.node_every { "every request" } else { "the first request" }
    );

    let shared = Arc::new(Shared {
        base: Instant::now(),
        armed: AtomicBool::new(false),
        changed_at: (0..n + 1).map(|_| AtomicU64::new(0)).collect(),
        changed: AtomicUsize::new(0),
        acked_at: (0..n + 1).map(|_| AtomicU64::new(0)).collect(),
        acked: AtomicUsize::new(0),
        ended: AtomicUsize::new(0),
        first_end: parking_lot::Mutex::new(None),
        responses: AtomicU64::new(0),
        response_bytes: AtomicU64::new(0),
        node_every: args.node_every,
        reack: tokio::sync::watch::Sender::new(0),
        cert_names: args.cert_names.clone(),
    });

    // One warm-up stream on its own connection, kept open: the server mints
    // the entry's SVID, hashes this executable for attestation and encodes
    // both secrets once. The baseline RSS is read after it.
    let warm_channel = match unix_channel(args.sockets[0].clone()).await {
        Ok(c) => c,
        Err(e) => {
            eprintln!("sds_streams: {e}");
            return 1;
        }
    };
    let (wtx, wrx) = oneshot::channel();
    if args.delta {
        tokio::spawn(delta_stream(n, warm_channel, node.clone(), args.ads, shared.clone(), wtx));
    } else {
        tokio::spawn(sotw_stream(n, warm_channel, node.clone(), args.ads, shared.clone(), wtx));
    }
    match wrx.await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => {
            eprintln!("sds_streams: the warm-up stream failed: {e}");
            return 1;
        }
        Err(_) => return 1,
    }
    tokio::time::sleep(Duration::from_secs(1)).await;

    let (rss_before, anon_before) = rss_kib(pid);
    if rss_before == 0 {
        eprintln!("sds_streams: cannot read /proc/{pid}/status");
        return 1;
    }
    let cpu_before_open = server_cpu_ms();
    eprintln!(
        "server pid {pid}: VmRSS {rss_before} KiB (RssAnon {anon_before} KiB) with the warm-up stream open; load {}",
        loadavg()
    );

    // Connections first (cheap), then streams at a bounded rate.
    let conns = n.div_ceil(args.per_conn);
    let mut channels = Vec::with_capacity(conns);
    for j in 0..conns {
        match unix_channel(args.sockets[j % args.sockets.len()].clone()).await {
            Ok(c) => channels.push(c),
            Err(e) => {
                eprintln!("sds_streams: {e}");
                return 1;
            }
        }
    }
    let open_start = Instant::now();
    let gate = Arc::new(Semaphore::new(args.open_concurrency));
    let mut waits = Vec::with_capacity(n);
    for i in 0..n {
        let permit = match gate.clone().acquire_owned().await {
            Ok(p) => p,
            Err(_) => return 1,
        };
        let (tx, rx) = oneshot::channel();
        let channel = channels[i / args.per_conn].clone();
        let (node, shared) = (node.clone(), shared.clone());
        if args.delta {
            tokio::spawn(delta_stream(i, channel, node, args.ads, shared, tx));
        } else {
            tokio::spawn(sotw_stream(i, channel, node, args.ads, shared, tx));
        }
        waits.push(tokio::spawn(async move {
            let r = rx.await.unwrap_or_else(|_| Err("stream task ended".into()));
            drop(permit);
            r
        }));
        if (i + 1) % 2000 == 0 {
            eprintln!("  {} streams started ({:.1} s)", i + 1, open_start.elapsed().as_secs_f64());
        }
    }
    let mut failed = 0usize;
    let mut first_failure = None;
    for w in waits {
        match w.await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                failed += 1;
                first_failure.get_or_insert(e);
            }
            Err(e) => {
                failed += 1;
                first_failure.get_or_insert(e.to_string());
            }
        }
    }
    let open_secs = open_start.elapsed().as_secs_f64();
    let open = n - failed;
    eprintln!(
        "{open} of {n} streams open and ACKed in {open_secs:.2} s ({:.0} streams/s) over {conns} connections; server CPU {} ms for the opening",
        n as f64 / open_secs,
        server_cpu_ms().saturating_sub(cpu_before_open)
    );
    if failed > 0 {
        eprintln!("sds_streams: {failed} streams failed to open; first: {}", first_failure.unwrap_or_default());
        return 1;
    }

    // Let the last ACKs be processed, then read the RSS a few times.
    tokio::time::sleep(Duration::from_secs_f64(args.settle)).await;
    let mut samples = Vec::new();
    for _ in 0..3 {
        samples.push(rss_kib(pid));
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let (rss_open, anon_open) = samples.iter().copied().max().unwrap_or_default();
    let per_stream = (rss_open as f64 - rss_before as f64) * 1024.0 / n as f64;
    let per_stream_anon = (anon_open as f64 - anon_before as f64) * 1024.0 / n as f64;
    let load_mem = loadavg();
    eprintln!(
        "VmRSS {rss_open} KiB with {n} streams (+{} KiB): {:.1} KiB per stream (RssAnon: {:.1} KiB per stream); load {load_mem}",
        rss_open as i64 - rss_before as i64,
        per_stream / 1024.0,
        per_stream_anon / 1024.0
    );
    if shared.ended.load(Ordering::Relaxed) > 0 {
        eprintln!(
            "sds_streams: {} streams ended while open; first: {}",
            shared.ended.load(Ordering::Relaxed),
            shared.first_end.lock().clone().unwrap_or_default()
        );
    }

    let mut result = format!(
        "RESULT flavor={flavor} api={} streams={n} conns={conns} per_conn={} node_bytes={} node_every={} \
         open_s={open_secs:.2} rss_before_kib={rss_before} rss_open_kib={rss_open} per_stream_bytes={per_stream:.0} \
         anon_per_stream_bytes={per_stream_anon:.0} load_mem=\"{load_mem}\"",
        if args.ads { "ads" } else { "sds" },
        args.per_conn,
        node.len(),
        u8::from(args.node_every)
    );

    // Server CPU per ACK: every stream (the warm-up one too) repeats its last
    // ACK `ack_rounds` times; the window ends when the server has counted them.
    if args.ack_rounds > 0 {
        let acks_now = || async {
            match (server, &args.metrics_url) {
                (Some(s), _) => Some(server_acks(&s.telemetry)),
                (None, Some(url)) => scrape_acks(url).await,
                (None, None) => None,
            }
        };
        match acks_now().await {
            None => eprintln!("sds_streams: no ACK count from the server (--metrics-url): per-ACK CPU not measured"),
            Some(before) => {
                let want = before + f64::from(args.ack_rounds) * (n + 1) as f64;
                let cpu_before = server_cpu_ms();
                let started = Instant::now();
                let deadline = started + Duration::from_secs_f64(args.timeout);
                let mut counted = before;
                // One ACK per stream per round, as after a push; the next
                // round once the server has counted this one's.
                for round in 1..=args.ack_rounds {
                    shared.reack.send_replace(1);
                    let round_want = before + f64::from(round) * (n + 1) as f64;
                    while counted < round_want && Instant::now() < deadline {
                        tokio::time::sleep(Duration::from_millis(5)).await;
                        counted = acks_now().await.unwrap_or(counted);
                    }
                }
                let cpu = server_cpu_ms().saturating_sub(cpu_before);
                let acks = counted - before;
                let per_ack_us = cpu as f64 * 1e3 / acks.max(1.0);
                let (rss_acks, _) = rss_kib(pid);
                eprintln!(
                    "{acks:.0} repeated ACKs counted by the server in {:.2} s: server CPU {cpu} ms, {per_ack_us:.1} µs per ACK; VmRSS {rss_acks} KiB after",
                    started.elapsed().as_secs_f64()
                );
                if counted < want {
                    eprintln!("sds_streams: the server counted {acks:.0} of {} repeated ACKs", want - before);
                    return 1;
                }
                result.push_str(&format!(
                    " ack_rounds={} acks_counted={acks:.0} ack_cpu_ms={cpu} ack_cpu_us={per_ack_us:.1} rss_after_acks_kib={rss_acks}",
                    args.ack_rounds
                ));
            }
        }
    }

    let mut code = 0;
    if !args.trigger.is_empty() || server.is_some() {
        let responses_before = shared.responses.load(Ordering::Relaxed);
        let bytes_before = shared.response_bytes.load(Ordering::Relaxed);
        let cpu_before = server_cpu_ms();
        let client_cpu_before = client_cpu_ms();
        let acks_before = server.map(|s| server_acks(&s.telemetry));
        let load_fan = loadavg();
        shared.armed.store(true, Ordering::Release);
        let base = shared.base;
        // (when it started, when it returned, what it was, or why it failed)
        let ran: Result<(Duration, Duration, String), String> = match server {
            Some(s) if args.trigger.is_empty() => {
                let (issuer, call, target) = (s.issuer.clone(), s.call, s.target.clone());
                let what =
                    format!("Issuer::{}({target})", if matches!(call, Call::Revoke) { "revoke" } else { "deny" });
                // On the server's runtime, timed there: the clock stops when the call returns.
                let task = s.runtime.spawn(async move {
                    let system = trustmesh::issuer::Caller::system();
                    let start = base.elapsed();
                    let r = match call {
                        Call::Revoke => issuer.revoke(&system, &target, "keyCompromise").await.map(drop),
                        Call::Deny => issuer.deny(&system, &target, "bench: compromised").await.map(drop),
                    };
                    (start, base.elapsed(), r.map_err(|e| e.to_string()))
                });
                match task.await {
                    Ok((start, end, Ok(()))) => Ok((start, end, what)),
                    Ok((_, _, Err(e))) => Err(format!("{what} failed: {e}")),
                    Err(e) => Err(format!("{what}: {e}")),
                }
            }
            _ => {
                let trigger = args.trigger.clone();
                let what = format!("{:?}", args.trigger.iter().skip_while(|a| *a != "pki").collect::<Vec<_>>());
                let ran = tokio::task::spawn_blocking(move || {
                    let start = base.elapsed();
                    let out = Command::new(&trigger[0]).args(&trigger[1..]).output();
                    (start, base.elapsed(), out)
                })
                .await;
                match ran {
                    Err(e) => Err(format!("trigger task: {e}")),
                    Ok((start, end, Ok(o))) if o.status.success() => Ok((start, end, what)),
                    Ok((_, _, Ok(o))) => {
                        Err(format!("trigger failed ({}): {}", o.status, String::from_utf8_lossy(&o.stderr).trim()))
                    }
                    Ok((_, _, Err(e))) => Err(format!("cannot run the trigger {:?}: {e}", args.trigger)),
                }
            }
        };
        let (t_start, t_return, what) = match ran {
            Ok(x) => x,
            Err(e) => {
                eprintln!("sds_streams: {e}");
                return 1;
            }
        };
        let cmd_ms = (t_return - t_start).as_secs_f64() * 1e3;
        let deadline = Instant::now() + Duration::from_secs_f64(args.timeout);
        // Every stream has received the change and queued its ACK (or ended).
        while shared.acked.load(Ordering::Acquire) + shared.ended.load(Ordering::Relaxed) < n
            && Instant::now() < deadline
        {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        // In process: until the server has counted those ACKs (the warm-up
        // stream's included), i.e. they were sent and read.
        let mut server_acked = None;
        if let (Some(s), Some(before)) = (server, acks_before) {
            let want = before + n as f64 + 1.0;
            while server_acks(&s.telemetry) < want && Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            if server_acks(&s.telemetry) >= want {
                server_acked = Some((base.elapsed() - t_return).as_secs_f64() * 1e3);
            }
        }
        // CPU of the server from just before the trigger until the last stream
        // had its update and ACKed it (the revocation itself included).
        let server_cpu = server_cpu_ms().saturating_sub(cpu_before);
        let client_cpu = client_cpu_ms().saturating_sub(client_cpu_before);
        let pushes = shared.responses.load(Ordering::Relaxed) - responses_before;
        let push_bytes = shared.response_bytes.load(Ordering::Relaxed) - bytes_before;
        let got: Vec<u64> =
            shared.changed_at[..n].iter().map(|a| a.load(Ordering::Acquire)).filter(|&t| t > 0).collect();
        let acked: Vec<u64> =
            shared.acked_at[..n].iter().map(|a| a.load(Ordering::Acquire)).filter(|&t| t > 0).collect();
        let ms = |times: &[u64], t0: Duration| -> Vec<f64> {
            let mut v: Vec<f64> = times.iter().map(|&t| (t as f64 - t0.as_nanos() as f64) / 1e6).collect();
            v.sort_by(f64::total_cmp);
            v
        };
        let from_return = ms(&got, t_return);
        let from_start = ms(&got, t_start);
        let acked_from_return = ms(&acked, t_return);
        let (p50, p99, max) = (
            percentile(&from_return, 50.0).unwrap_or(f64::NAN),
            percentile(&from_return, 99.0).unwrap_or(f64::NAN),
            percentile(&from_return, 100.0).unwrap_or(f64::NAN),
        );
        let first = from_return.first().copied().unwrap_or(f64::NAN);
        let (s50, s99, smax) = (
            percentile(&from_start, 50.0).unwrap_or(f64::NAN),
            percentile(&from_start, 99.0).unwrap_or(f64::NAN),
            percentile(&from_start, 100.0).unwrap_or(f64::NAN),
        );
        let (a50, a99, amax) = (
            percentile(&acked_from_return, 50.0).unwrap_or(f64::NAN),
            percentile(&acked_from_return, 99.0).unwrap_or(f64::NAN),
            percentile(&acked_from_return, 100.0).unwrap_or(f64::NAN),
        );
        eprintln!(
            "trigger {what} took {cmd_ms:.1} ms; {} of {n} streams received the new ROOTCA and {} ACKed it ({pushes} responses, {} bytes each on average); load {load_fan}",
            got.len(),
            acked.len(),
            push_bytes / pushes.max(1)
        );
        eprintln!(
            "  received, after the call returned: first {first:.1} ms, p50 {p50:.1} ms, p99 {p99:.1} ms, max {max:.1} ms"
        );
        eprintln!("  ACK queued, after the call returned: p50 {a50:.1} ms, p99 {a99:.1} ms, max {amax:.1} ms");
        if let Some(t) = server_acked {
            eprintln!("  every ACK counted by the server {t:.1} ms after the call returned");
        }
        eprintln!("  received, after the call started: p50 {s50:.1} ms, p99 {s99:.1} ms, max {smax:.1} ms");
        // The fan-out itself, independent of how long the call took: from the
        // first stream that had the new ROOTCA.
        let (f99, fmax) = (p99 - first, max - first);
        eprintln!("  received, after the first stream had it: p99 {f99:.1} ms, max {fmax:.1} ms");
        eprintln!(
            "  server CPU {server_cpu} ms from the trigger to the last ACK ({:.1} µs per stream); this client's CPU {client_cpu} ms",
            server_cpu as f64 * 1e3 / n as f64
        );
        result.push_str(&format!(
            " in_process={} cmd_ms={cmd_ms:.2} received={} acked={} first_ms={first:.1} p50_ms={p50:.1} p99_ms={p99:.1} \
             max_ms={max:.1} ack_p50_ms={a50:.1} ack_p99_ms={a99:.1} ack_max_ms={amax:.1} server_acked_ms={} \
             p50_from_start_ms={s50:.1} p99_from_start_ms={s99:.1} max_from_start_ms={smax:.1} \
             p99_from_first_ms={f99:.1} max_from_first_ms={fmax:.1} \
             fanout_server_cpu_ms={server_cpu} fanout_client_cpu_ms={client_cpu} push_bytes={} load_fanout=\"{load_fan}\"",
            u8::from(in_process),
            got.len(),
            acked.len(),
            server_acked.map_or("-".to_string(), |t| format!("{t:.1}")),
            push_bytes / pushes.max(1)
        ));
        if server.is_some() && server_acked.is_none() {
            eprintln!("sds_streams: the server did not count every ACK within {} s", args.timeout);
            code = 1;
        }
        if got.len() < n {
            eprintln!("sds_streams: only {} of {n} streams saw the change within {} s", got.len(), args.timeout);
            code = 1;
        }
    }
    tokio::time::sleep(Duration::from_secs_f64(args.hold)).await;
    let (rss_end, _) = rss_kib(pid);
    result.push_str(&format!(" rss_end_kib={rss_end} ended={}", shared.ended.load(Ordering::Relaxed)));
    println!("{result}");
    code
}
