//! Shared by the bench binaries (`#[path]`-included, not a crate module):
//! timing loops over ring, and small helpers for reading the machine.

#![allow(dead_code)]

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use ring::rand::SystemRandom;
use ring::signature::{self, EcdsaKeyPair, KeyPair as _, UnparsedPublicKey};

/// Runs `op` in a loop on `threads` OS threads for `warmup` then `measure`,
/// and returns the operations per second counted over `measure` only.
/// `make` builds each thread's own state (keys, buffers) before the clock starts.
pub fn rate<S, M, F>(threads: usize, warmup: Duration, measure: Duration, make: M, op: F) -> f64
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
                while !stop.load(Ordering::Relaxed) {
                    op(&mut state, i);
                    i += 1;
                    if counting.load(Ordering::Relaxed) {
                        counted += 1;
                    }
                }
                counted
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
    let total: u64 = handles.into_iter().map(|h| h.join().unwrap_or(0)).sum();
    total as f64 / elapsed
}

/// A P-256 ECDSA key pair (SHA-256, ASN.1 DER signatures), as the Services CA uses.
pub fn p256_key() -> EcdsaKeyPair {
    key(&signature::ECDSA_P256_SHA256_ASN1_SIGNING)
}

/// A P-384 ECDSA key pair (SHA-384), as the root uses.
pub fn p384_key() -> EcdsaKeyPair {
    key(&signature::ECDSA_P384_SHA384_ASN1_SIGNING)
}

fn key(alg: &'static signature::EcdsaSigningAlgorithm) -> EcdsaKeyPair {
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
