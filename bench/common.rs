//! Shared by the bench binaries (`#[path]`-included, not a crate module):
//! timing loops over ring, and small helpers for reading the machine.

#![allow(dead_code)]

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use ring::rand::SystemRandom;
use ring::signature::{self, EcdsaKeyPair, KeyPair as _, UnparsedPublicKey};

/// One measurement: operations per wall-clock second over all threads, and
/// CPU time per operation (the threads' own utime + stime, so time the
/// kernel gave to other processes on a busy machine is not counted).
#[derive(Debug, Clone, Copy)]
pub struct Rate {
    pub per_sec: f64,
    pub cpu_us_per_op: f64,
}

impl Rate {
    /// Best of several measurements: interference from other work on the
    /// machine only ever makes a figure worse.
    pub fn best(rates: &[Rate]) -> Rate {
        Rate {
            per_sec: rates.iter().map(|r| r.per_sec).fold(0.0, f64::max),
            cpu_us_per_op: rates.iter().map(|r| r.cpu_us_per_op).fold(f64::INFINITY, f64::min),
        }
    }

    /// What every CPU of the machine could do if nothing else ran.
    pub fn ceiling(&self, cpus: usize) -> f64 {
        cpus as f64 * 1e6 / self.cpu_us_per_op
    }
}

/// utime + stime of the calling thread, in clock ticks (Linux).
pub fn thread_cpu_ticks() -> Option<u64> {
    let stat = std::fs::read_to_string("/proc/thread-self/stat").ok()?;
    let rest = stat.get(stat.rfind(')')? + 2..)?;
    let f: Vec<&str> = rest.split_whitespace().collect();
    Some(f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?)
}

/// Clock ticks per second (`getconf CLK_TCK`; 100 if unavailable).
pub fn clk_tck() -> f64 {
    std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse::<f64>().ok())
        .filter(|v| *v > 0.0)
        .unwrap_or(100.0)
}

/// Runs `op` in a loop on `threads` OS threads for `warmup` then `measure`,
/// and counts over `measure` only. `make` builds each thread's own state
/// (keys, buffers) before the clock starts.
pub fn rate<S, M, F>(threads: usize, warmup: Duration, measure: Duration, make: M, op: F) -> Rate
where
    M: Fn(usize) -> S + Send + Sync + 'static,
    F: Fn(&mut S, u64) + Send + Sync + 'static,
    S: 'static,
{
    let make = Arc::new(make);
    let op = Arc::new(op);
    let counting = Arc::new(AtomicBool::new(false));
    let stop = Arc::new(AtomicBool::new(false));
    let barrier = Arc::new(std::sync::Barrier::new(threads + 1));
    let handles: Vec<_> = (0..threads)
        .map(|t| {
            let (make, op, counting, stop, barrier) =
                (make.clone(), op.clone(), counting.clone(), stop.clone(), barrier.clone());
            std::thread::spawn(move || {
                let mut state = make(t);
                barrier.wait();
                let mut i = 0u64;
                let mut counted = 0u64;
                let mut cpu0 = None;
                while !stop.load(Ordering::Relaxed) {
                    op(&mut state, i);
                    i += 1;
                    if counting.load(Ordering::Relaxed) {
                        if cpu0.is_none() {
                            cpu0 = thread_cpu_ticks();
                        } else {
                            counted += 1;
                        }
                    }
                }
                let cpu = match (cpu0, thread_cpu_ticks()) {
                    (Some(a), Some(b)) => b.saturating_sub(a),
                    _ => 0,
                };
                (counted, cpu)
            })
        })
        .collect();
    barrier.wait();
    std::thread::sleep(warmup);
    counting.store(true, Ordering::SeqCst);
    let t0 = Instant::now();
    std::thread::sleep(measure);
    stop.store(true, Ordering::SeqCst);
    let elapsed = t0.elapsed().as_secs_f64();
    // Operations that were running when `stop` was set finish after `elapsed`;
    // at thousands of ops/s that is well under 0.1 %.
    let (mut total, mut ticks) = (0u64, 0u64);
    for h in handles {
        let (n, cpu) = h.join().unwrap_or((0, 0));
        total += n;
        ticks += cpu;
    }
    let cpu_us = ticks as f64 / clk_tck() * 1e6;
    Rate {
        per_sec: total as f64 / elapsed,
        cpu_us_per_op: if total > 0 && ticks > 0 { cpu_us / total as f64 } else { f64::NAN },
    }
}

/// A P-256 ECDSA key pair (SHA-256, ASN.1 DER signatures), as the Services CA uses.
pub fn p256_key() -> EcdsaKeyPair {
    key(&signature::ECDSA_P256_SHA256_ASN1_SIGNING)
}

/// A P-384 ECDSA key pair (SHA-384), as the root uses.
pub fn p384_key() -> EcdsaKeyPair {
    key(&signature::ECDSA_P384_SHA384_ASN1_SIGNING)
}

/// A fresh key pair for `alg`; a failure stops the bench.
pub fn key(alg: &'static signature::EcdsaSigningAlgorithm) -> EcdsaKeyPair {
    let rng = SystemRandom::new();
    let pkcs8 = EcdsaKeyPair::generate_pkcs8(alg, &rng).unwrap_or_else(|e| fatal(&format!("keygen: {e}")));
    EcdsaKeyPair::from_pkcs8(alg, pkcs8.as_ref(), &rng).unwrap_or_else(|e| fatal(&format!("key: {e}")))
}

/// A message the size of an X.509-SVID's TBSCertificate (~450 bytes).
pub fn tbs_like(seed: u64) -> Vec<u8> {
    (0..450u64).map(|i| (i.wrapping_mul(31).wrapping_add(seed) & 0xff) as u8).collect()
}

/// Signs `msg` with `key`; a failure stops the bench.
pub fn sign(key: &EcdsaKeyPair, rng: &SystemRandom, msg: &[u8]) -> Vec<u8> {
    key.sign(rng, msg).unwrap_or_else(|e| fatal(&format!("sign: {e}"))).as_ref().to_vec()
}

/// The uncompressed public point of `key`.
pub fn public(key: &EcdsaKeyPair) -> Vec<u8> {
    key.public_key().as_ref().to_vec()
}

/// Verifies a P-256 / SHA-256 signature; a failure stops the bench.
pub fn verify_p256(point: &[u8], msg: &[u8], sig: &[u8]) {
    UnparsedPublicKey::new(&signature::ECDSA_P256_SHA256_ASN1, point)
        .verify(msg, sig)
        .unwrap_or_else(|_| fatal("P-256 verify failed"));
}

/// Verifies a P-384 / SHA-384 signature; a failure stops the bench.
pub fn verify_p384(point: &[u8], msg: &[u8], sig: &[u8]) {
    UnparsedPublicKey::new(&signature::ECDSA_P384_SHA384_ASN1, point)
        .verify(msg, sig)
        .unwrap_or_else(|_| fatal("P-384 verify failed"));
}

pub fn fatal(msg: &str) -> ! {
    eprintln!("bench: {msg}");
    std::process::exit(1)
}

/// Seconds from the environment (`name`), or `default`.
pub fn env_secs(name: &str, default: f64) -> Duration {
    let secs = std::env::var(name).ok().and_then(|v| v.parse::<f64>().ok()).unwrap_or(default);
    Duration::from_secs_f64(secs.max(0.0))
}

/// Number of CPUs this process may run on.
pub fn cpus() -> usize {
    std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1)
}

/// The 1-minute load average, as `uptime` shows it.
pub fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|| "?".into())
}

/// Nearest-rank percentile (`p` in %) of sorted samples; `None` when empty.
pub fn percentile<T: Copy>(sorted: &[T], p: f64) -> Option<T> {
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted.get(rank.clamp(1, sorted.len().max(1)) - 1).copied()
}

/// utime + stime of this process's threads whose name starts with `prefix`
/// (tokio names its workers after the runtime), in clock ticks.
pub fn threads_cpu_ticks(prefix: &str) -> u64 {
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else { return 0 };
    let mut total = 0;
    for task in tasks.flatten() {
        let comm = std::fs::read_to_string(task.path().join("comm")).unwrap_or_default();
        if !comm.starts_with(prefix) {
            continue;
        }
        let stat = std::fs::read_to_string(task.path().join("stat")).unwrap_or_default();
        let after = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
        let f: Vec<u64> = after.split_whitespace().map(|x| x.parse().unwrap_or(0)).collect();
        total += f.get(11).copied().unwrap_or(0) + f.get(12).copied().unwrap_or(0);
    }
    total
}

/// The real uid of this process (what `unix:uid:` selectors match).
pub fn my_uid() -> u32 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// Formats a rate with thousands separators.
pub fn fmt_rate(r: f64) -> String {
    let n = r.round() as u64;
    let s = n.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// An Envoy-like node (id, cluster, locality, build version, metadata and
/// extensions) whose encoding is at least `target` bytes, like the ~61 KB
/// node Envoy 1.40 sends with its 516 extensions.
pub fn envoy_node(target: usize) -> prost::bytes::Bytes {
    let version = envoy_types::pb::envoy::r#type::v3::SemanticVersion { major_number: 1, minor_number: 40, patch: 0 };
    let mut node = envoy_types::pb::envoy::config::core::v3::Node {
        id: "sidecar~10.0.0.1~bench-envoy.default~default.svc.cluster.local".into(),
        cluster: "bench-envoy".into(),
        locality: Some(envoy_types::pb::envoy::config::core::v3::Locality {
            region: "local".into(),
            zone: "a".into(),
            sub_zone: String::new(),
        }),
        user_agent_name: "envoy".into(),
        ..Default::default()
    };
    if target == 0 {
        return prost::bytes::Bytes::from(prost::Message::encode_to_vec(&node));
    }
    node.metadata = Some(envoy_types::pb::google::protobuf::Struct {
        fields: [(
            "bench".to_string(),
            envoy_types::pb::google::protobuf::Value {
                kind: Some(envoy_types::pb::google::protobuf::value::Kind::StringValue("sds_streams".into())),
            },
        )]
        .into(),
    });
    node.user_agent_version_type =
        Some(envoy_types::pb::envoy::config::core::v3::node::UserAgentVersionType::UserAgentBuildVersion(
            envoy_types::pb::envoy::config::core::v3::BuildVersion {
                version: Some(version),
                metadata: Some(envoy_types::pb::google::protobuf::Struct {
                    fields: [
                        (
                            "revision.sha".to_string(),
                            envoy_types::pb::google::protobuf::Value {
                                kind: Some(envoy_types::pb::google::protobuf::value::Kind::StringValue("0".repeat(40))),
                            },
                        ),
                        (
                            "revision.status".to_string(),
                            envoy_types::pb::google::protobuf::Value {
                                kind: Some(envoy_types::pb::google::protobuf::value::Kind::StringValue("Clean".into())),
                            },
                        ),
                        (
                            "build.type".to_string(),
                            envoy_types::pb::google::protobuf::Value {
                                kind: Some(envoy_types::pb::google::protobuf::value::Kind::StringValue(
                                    "RELEASE".into(),
                                )),
                            },
                        ),
                        (
                            "ssl.version".to_string(),
                            envoy_types::pb::google::protobuf::Value {
                                kind: Some(envoy_types::pb::google::protobuf::value::Kind::StringValue(
                                    "BoringSSL".into(),
                                )),
                            },
                        ),
                    ]
                    .into(),
                }),
            },
        ));
    let categories = [
        "envoy.filters.http",
        "envoy.filters.network",
        "envoy.transport_sockets.upstream",
        "envoy.matching.input_matchers",
    ];
    let mut i = 0;
    while prost::Message::encoded_len(&node) < target {
        let category = categories[i % categories.len()];
        node.extensions.push(envoy_types::pb::envoy::config::core::v3::Extension {
            name: format!("{category}.bench_extension_{i}"),
            category: category.to_string(),
            type_urls: vec![format!("envoy.extensions.filters.bench.v3.BenchExtensionConfiguration{i}")],
            ..Default::default()
        });
        i += 1;
    }
    prost::bytes::Bytes::from(prost::Message::encode_to_vec(&node))
}

/// A gRPC channel over the Unix socket at `socket` (one connection).
pub async fn unix_channel(socket: std::path::PathBuf) -> Result<tonic::transport::Channel, String> {
    tonic::transport::Endpoint::try_from("http://sds.local")
        .map_err(|e| e.to_string())?
        .connect_with_connector(tower::service_fn(move |_| {
            let path = socket.clone();
            async move {
                Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(tokio::net::UnixStream::connect(path).await?))
            }
        }))
        .await
        .map_err(|e| format!("connect: {e}"))
}

/// (VmRSS, RssAnon) in KiB.
pub fn rss_kib(pid: u32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or(0)
    };
    (field("VmRSS:"), field("RssAnon:"))
}

/// utime + stime of the process, in milliseconds (USER_HZ = 100).
pub fn cpu_ms(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let after = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<u64> = after.split_whitespace().map(|x| x.parse().unwrap_or(0)).collect();
    // after ")": state(0) ppid(1) … utime is field 14 of the line = index 11 here.
    (f.get(11).copied().unwrap_or(0) + f.get(12).copied().unwrap_or(0)) * 10
}
