//! CRL build time at 0, 10,000 and 100,000 revoked unexpired serials: the
//! signing-and-checking step every revocation ends in.
//!
//!     cargo bench --bench crl
//!     CRL_SIZES=0,1000 BENCH_REPEAT=5 cargo bench --bench crl
//!
//! Each size is built `BENCH_REPEAT` (5) times with the Services CA (P-256);
//! the figures are the median and the worst build, and the CRL size. The last
//! lines are `RESULT crl_build <n> <median ms> <max ms> <bytes>` for scripts.

use std::time::Instant;

use time::{Duration, OffsetDateTime};
use trustmesh::ca::{CrlEntry, IntermediateParams, KeyAlgorithm, RevocationReason, RootParams, build_crl};
use trustmesh::domain::{RandomSerials, SerialSource, TrustDomain};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    if std::env::args().any(|a| a == "--list") {
        return Ok(());
    }
    let sizes: Vec<usize> = std::env::var("CRL_SIZES")
        .unwrap_or_else(|_| "0,10000,100000".into())
        .split(',')
        .filter_map(|s| s.trim().parse().ok())
        .collect();
    let repeat = std::env::var("BENCH_REPEAT").ok().and_then(|v| v.parse().ok()).unwrap_or(5usize).max(1);
    let now = OffsetDateTime::now_utc();
    let td = TrustDomain::parse("bench.example")?;
    let serials = RandomSerials::default();
    let root = trustmesh::ca::create_root(
        &RootParams {
            common_name: "bench root".into(),
            algorithm: KeyAlgorithm::EcP384,
            lifetime: Duration::days(365),
            trust_domain: td.clone(),
        },
        serials.next_serial()?,
        now,
        &ring::rand::SystemRandom::new(),
    )?;
    let services = trustmesh::ca::create_intermediate(
        &root,
        &IntermediateParams { common_name: "bench services".into(), lifetime: Duration::days(30), trust_domain: td },
        serials.next_serial()?,
        now,
        &ring::rand::SystemRandom::new(),
    )?;
    let mut results = Vec::new();
    for &n in &sizes {
        let entries: Vec<CrlEntry> = (0..n)
            .map(|i| {
                Ok(CrlEntry {
                    serial: serials.next_serial()?,
                    revoked_at: now - Duration::seconds(i as i64 % 3600),
                    reason: (i % 2 == 0).then_some(RevocationReason::KeyCompromise),
                })
            })
            .collect::<Result<_, trustmesh::domain::DomainError>>()?;
        let mut times = Vec::new();
        let mut bytes = 0;
        for r in 0..repeat {
            let started = Instant::now();
            let crl = build_crl(&services, &entries, r as u64 + 1, now, Duration::days(7))?;
            times.push(started.elapsed().as_secs_f64() * 1000.0);
            bytes = crl.der.len();
        }
        times.sort_by(f64::total_cmp);
        let median = times[times.len() / 2];
        let max = times[times.len() - 1];
        eprintln!("  {n} revoked: median {median:.1} ms, max {max:.1} ms, {bytes} bytes DER");
        results.push((n, median, max, bytes));
    }
    for (n, median, max, bytes) in results {
        println!("RESULT crl_build {n} {median:.2} {max:.2} {bytes}");
    }
    Ok(())
}
