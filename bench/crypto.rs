//! Raw rates of the crypto library trustmesh signs and verifies with (ring 0.17)
//! on this machine: the ceiling any issuance path can reach.
//!
//!     cargo bench --bench crypto                 # 2 s per figure
//!     BENCH_SECS=5 cargo bench --bench crypto
//!
//! Every figure is ops/s over `BENCH_SECS` (default 2) after a 0.5 s warm-up,
//! once on 1 thread and once on as many threads as there are CPUs (2 here),
//! best of `BENCH_REPEAT` (3) runs: other work on a shared machine only ever
//! lowers a figure. Each row also gives the CPU time per operation (the
//! bench threads' own utime + stime) and the ceiling it implies for the whole
//! machine, `CPUs / CPU time per op`, which does not depend on what else runs.
//! The last lines are `RESULT <name> <threads> <ops/s> <cpu µs/op>` and
//! `RESULT <name> ceiling <ops/s>` for scripts.

#[path = "common.rs"]
mod common;

use std::time::Duration;

use common::*;
use ring::rand::SystemRandom;
use ring::signature::{self, EcdsaKeyPair};

struct Row {
    name: &'static str,
    what: &'static str,
    rates: Vec<(usize, Rate)>,
}

fn main() {
    let measure = env_secs("BENCH_SECS", 2.0).max(Duration::from_millis(100));
    let warmup = env_secs("BENCH_WARMUP_SECS", 0.5);
    let repeat = std::env::var("BENCH_REPEAT").ok().and_then(|v| v.parse::<usize>().ok()).unwrap_or(3).max(1);
    let ncpu = cpus();
    let mut threads = vec![1];
    if ncpu > 1 {
        threads.push(ncpu);
    }
    if std::env::args().any(|a| a == "--list") {
        return; // `cargo bench -- --list` probes harness=false benches
    }
    eprintln!(
        "ring 0.17 ECDSA, best of {repeat} x {measure:?} per figure after {warmup:?} warm-up, threads {threads:?}, load {}",
        loadavg()
    );

    let mut rows = Vec::new();
    let mut run = |name: &'static str, what: &'static str, f: &dyn Fn(usize) -> Rate| {
        let rates: Vec<(usize, Rate)> =
            threads.iter().map(|&t| (t, Rate::best(&(0..repeat).map(|_| f(t)).collect::<Vec<_>>()))).collect();
        eprintln!(
            "  {name}: {} (load {})",
            rates
                .iter()
                .map(|(t, r)| format!("{t}t {}/s {:.1} µs CPU", fmt_rate(r.per_sec), r.cpu_us_per_op))
                .collect::<Vec<_>>()
                .join(", "),
            loadavg()
        );
        rows.push(Row { name, what, rates });
    };

    run("p256_sign", "ECDSA P-256/SHA-256 sign, 450-byte message", &|t| {
        rate(
            t,
            warmup,
            measure,
            |_| (p256_key(), SystemRandom::new()),
            |(k, rng), i| {
                let _ = sign(k, rng, &tbs_like(i));
            },
        )
    });
    run("p256_verify", "ECDSA P-256/SHA-256 verify, 450-byte message", &|t| {
        rate(t, warmup, measure, |_| signed(p256_key()), |(point, msg, sig), _| verify_p256(point, msg, sig))
    });
    run("p256_keygen", "P-256 key generation (EcdsaKeyPair::generate_pkcs8)", &|t| {
        rate(
            t,
            warmup,
            measure,
            |_| SystemRandom::new(),
            |rng, _| {
                let _ = EcdsaKeyPair::generate_pkcs8(&signature::ECDSA_P256_SHA256_ASN1_SIGNING, rng)
                    .unwrap_or_else(|e| fatal(&format!("keygen: {e}")));
            },
        )
    });
    run("p384_sign", "ECDSA P-384/SHA-384 sign (the root's algorithm)", &|t| {
        rate(
            t,
            warmup,
            measure,
            |_| (p384_key(), SystemRandom::new()),
            |(k, rng), i| {
                let _ = sign(k, rng, &tbs_like(i));
            },
        )
    });
    run("p384_verify", "ECDSA P-384/SHA-384 verify (checking a cert the root signed)", &|t| {
        rate(t, warmup, measure, |_| signed(p384_key()), |(point, msg, sig), _| verify_p384(point, msg, sig))
    });
    run("p256_verify_sign", "one P-256 verify + one P-256 sign (a CSR signed)", &|t| {
        rate(
            t,
            warmup,
            measure,
            |_| (signed(p256_key()), p256_key(), SystemRandom::new()),
            |((point, msg, sig), ca, rng), i| {
                verify_p256(point, msg, sig);
                let _ = sign(ca, rng, &tbs_like(i));
            },
        )
    });
    // The signature work of one SignCsr in trustmesh (src/issuer, src/ca):
    // verify the bearer token (ES256), verify the CSR, sign the leaf, and
    // verify the new leaf against the Services CA (post-sign validation).
    run("signcsr_path", "3 P-256 verify + 1 P-256 sign (one trustmesh SignCsr: token, CSR, sign, self-check)", &|t| {
        rate(
            t,
            warmup,
            measure,
            |_| (signed(p256_key()), p256_key(), SystemRandom::new()),
            |((point, msg, sig), ca, rng), i| {
                verify_p256(point, msg, sig);
                verify_p256(point, msg, sig);
                let _ = sign(ca, rng, &tbs_like(i));
                verify_p256(point, msg, sig);
            },
        )
    });

    println!();
    print!("| operation | ");
    for t in &threads {
        print!("{t} thread{} (ops/s) | ", if *t == 1 { "" } else { "s" });
    }
    println!("CPU µs/op | {ncpu}-CPU ceiling (ops/s) |");
    print!("|---|");
    for _ in &threads {
        print!("---:|");
    }
    println!("---:|---:|");
    for row in &rows {
        print!("| {} | ", row.what);
        for (_, r) in &row.rates {
            print!("{} | ", fmt_rate(r.per_sec));
        }
        let best = Rate::best(&row.rates.iter().map(|(_, r)| *r).collect::<Vec<_>>());
        println!("{:.1} | {} |", best.cpu_us_per_op, fmt_rate(best.ceiling(ncpu)));
    }
    println!();
    for row in &rows {
        for (t, r) in &row.rates {
            println!("RESULT {} {} {:.0} {:.1}", row.name, t, r.per_sec, r.cpu_us_per_op);
        }
        let best = Rate::best(&row.rates.iter().map(|(_, r)| *r).collect::<Vec<_>>());
        println!("RESULT {} ceiling {:.0}", row.name, best.ceiling(ncpu));
    }
}

/// A public key, a message and its signature, ready to verify.
fn signed(key: EcdsaKeyPair) -> (Vec<u8>, Vec<u8>, Vec<u8>) {
    let msg = tbs_like(7);
    let sig = sign(&key, &SystemRandom::new(), &msg);
    (public(&key), msg, sig)
}
