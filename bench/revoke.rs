//! Revocation latency with 0, 10,000 and 100,000 revoked unexpired serials
//! already in the store (docs/benchmarks.md, "Revocation"):
//!
//! (a) `Issuer::revoke` wall time (durable in SQLite, in memory) for freshly
//!     issued certificates, paced (each revocation after the previous one is
//!     published) and in a burst (back to back, the publisher building CRLs
//!     at the same time);
//! (b) from `revoke` returning to the snapshot holding it being published
//!     (`Issuer::published`: the CRL build of every online CA and the deny list);
//! (c) the issuer's start-up with N revoked in the store (loading them into
//!     memory, then building and signing the first CRLs).
//!
//!     cargo bench --bench revoke
//!     REVOKE_SIZES=0,1000 BENCH_REVOKES=300 BENCH_GAP_MS=0 cargo bench --bench revoke
//!
//! `BENCH_REVOKES` (200) revocations per phase; `BENCH_GAP_MS` (100): idle
//! time between two paced revocations.
//!
//! The N revoked rows are written straight into the `certificates` table with
//! rusqlite in one transaction (random 16-byte serials in the store's format,
//! the active Services CA as issuer, unexpired, a real leaf's DER as
//! `cert_der`: nothing on the load or revoke path parses it), between a
//! first start (which creates the PKI and issues the certificates to revoke)
//! and the measured restart. The issuer runs on a multi-thread tokio runtime
//! with one worker per CPU, like `trustmesh serve`.
//!
//! The last lines are `RESULT revoke n=<N> key=value ...` for scripts.

#[path = "common.rs"]
mod common;
#[path = "inproc.rs"]
mod inproc;

use std::sync::Arc;
use std::time::{Duration, Instant};

use time::OffsetDateTime;
use trustmesh::issuer::{Caller, GenerateRequest, Issuer};

use common::{fatal, loadavg, percentile};

/// p50, p99 and max of a set of durations, in milliseconds.
fn summary(mut ms: Vec<f64>) -> (f64, f64, f64) {
    ms.sort_by(f64::total_cmp);
    let at = |p| percentile(&ms, p).unwrap_or(f64::NAN);
    (at(50.0), at(99.0), at(100.0))
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let sizes: Vec<usize> = std::env::var("REVOKE_SIZES")
        .unwrap_or_else(|_| "0,10000,100000".into())
        .split(',')
        .filter_map(|s| s.trim().parse().ok())
        .collect();
    let revokes = std::env::var("BENCH_REVOKES").ok().and_then(|v| v.parse().ok()).unwrap_or(200usize).max(1);
    let gap = Duration::from_millis(std::env::var("BENCH_GAP_MS").ok().and_then(|v| v.parse().ok()).unwrap_or(100));
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap_or_else(|e| fatal(&format!("tokio runtime: {e}")));
    let mut results = Vec::new();
    for n in sizes {
        match rt.block_on(one_size(n, revokes, gap)) {
            Ok(line) => results.push(line),
            Err(e) => fatal(&format!("{n} revoked: {e}")),
        }
    }
    for line in results {
        println!("{line}");
    }
}

/// Issues `count` certificates, 64 at a time; returns their serials.
async fn issue(issuer: &Arc<Issuer>, count: usize, tag: &str) -> Result<(Vec<String>, Vec<u8>), String> {
    let mut serials = Vec::with_capacity(count);
    let mut der = Vec::new();
    let mut next = 0;
    while next < count {
        let batch: Vec<_> = (next..(next + 64).min(count))
            .map(|i| {
                let issuer = issuer.clone();
                let id = format!("spiffe://{}/bench/{tag}/{i}", inproc::TRUST_DOMAIN);
                tokio::spawn(async move {
                    issuer
                        .generate(
                            &Caller::system(),
                            &GenerateRequest {
                                common_name: String::new(),
                                spiffe_id: id,
                                dns_names: vec![],
                                ttl_seconds: 3600,
                            },
                        )
                        .await
                })
            })
            .collect();
        for h in batch {
            let issued = h.await.map_err(|e| e.to_string())?.map_err(|e| format!("generate: {e}"))?;
            if der.is_empty() {
                der = issued.record.cert_der.clone();
            }
            serials.push(issued.record.serial);
        }
        next += 64;
    }
    Ok((serials, der))
}

/// Times a 4 KiB write + `fdatasync` in `dir` every 50 ms on its own thread
/// until stopped: what the disk's flush latency was while a phase ran (other
/// processes' writeback makes it spike, and every revoke waits for one).
struct DiskProbe {
    stop: Arc<std::sync::atomic::AtomicBool>,
    thread: std::thread::JoinHandle<Vec<f64>>,
}

impl DiskProbe {
    fn start(dir: &std::path::Path) -> Self {
        use std::io::Write;
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let path = dir.join("fsync-probe");
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut out = Vec::new();
            let Ok(mut f) = std::fs::OpenOptions::new().create(true).write(true).truncate(true).open(&path) else {
                return out;
            };
            let block = [0x5au8; 4096];
            while !flag.load(std::sync::atomic::Ordering::Relaxed) {
                let t = Instant::now();
                if f.write_all(&block).and_then(|_| f.sync_data()).is_err() {
                    break;
                }
                out.push(ms(t.elapsed()));
                std::thread::sleep(Duration::from_millis(50));
            }
            out
        });
        Self { stop, thread }
    }

    /// p50, p99, max of the flushes.
    fn finish(self) -> (f64, f64, f64) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        summary(self.thread.join().unwrap_or_default())
    }
}

async fn one_size(n: usize, revokes: usize, gap: Duration) -> Result<String, String> {
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    eprintln!("== {n} revoked unexpired serials in the store (load {})", loadavg());

    // First start: the PKI, and the certificates the measured run revokes.
    let (issuer, store) = inproc::start_issuer(dir.path()).await?;
    let services = issuer.snapshot().services().map(|c| c.fingerprint.clone()).ok_or("no active Services CA")?;
    let (paced, der) = issue(&issuer, revokes, "paced").await?;
    let (burst, _) = issue(&issuer, revokes, "burst").await?;
    drop(issuer);
    drop(store);
    tokio::time::sleep(Duration::from_millis(200)).await;

    let fill = inproc::prefill_revoked(dir.path(), n, &services, &der)?;
    eprintln!("  wrote {n} revoked rows in {:.0} ms (one transaction)", ms(fill));

    // (c) The measured restart.
    let load_start = loadavg();
    let started = Instant::now();
    let (issuer, store) = inproc::start_issuer(dir.path()).await?;
    let startup = started.elapsed();
    let snap = issuer.snapshot();
    let crl_bytes = snap.crl_of(&services).map(|c| c.der.len()).unwrap_or(0);
    let deny_certs = snap.deny.certificates.len();
    if deny_certs < n {
        return Err(format!("the issuer loaded {deny_certs} revoked certificates, not {n}"));
    }
    // Parts of the start-up, measured again on the running issuer (warm).
    let q = Instant::now();
    let since = (OffsetDateTime::now_utc() - trustmesh::trust::CONNECTION_GRACE).unix_timestamp();
    let loaded = store.revoked_unexpired_all(since).await.map_err(|e| e.to_string())?.len();
    let query = q.elapsed();
    let mut rebuilds = Vec::new();
    for _ in 0..3 {
        let r = Instant::now();
        issuer.publish().await.map_err(|e| e.to_string())?;
        rebuilds.push(ms(r.elapsed()));
    }
    let (rebuild_med, _, _) = summary(rebuilds);
    eprintln!(
        "  (c) start-up {:.0} ms; store query of the {loaded} revoked {:.0} ms; a CRL re-sign (every CA, as published) \
         {rebuild_med:.1} ms; Services CRL {crl_bytes} bytes DER",
        ms(startup),
        ms(query)
    );

    // (a) + (b), paced: each revocation `gap` after the previous one was
    // published (the publisher's own follow-up work done, as between two
    // operator actions).
    let system = Caller::system();
    let mut revoke_ms = Vec::with_capacity(revokes);
    let mut publish_ms = Vec::with_capacity(revokes);
    let load_paced = loadavg();
    let probe = DiskProbe::start(dir.path());
    for serial in &paced {
        let t0 = Instant::now();
        let (_, already) = issuer.revoke(&system, serial, "keyCompromise").await.map_err(|e| e.to_string())?;
        let t1 = Instant::now();
        if already {
            return Err(format!("{serial} was already revoked"));
        }
        issuer.published().await;
        let t2 = Instant::now();
        revoke_ms.push(ms(t1 - t0));
        publish_ms.push(ms(t2 - t1));
        tokio::time::sleep(gap).await;
    }
    let (f50, f99, fmax) = probe.finish();
    let (r50, r99, rmax) = summary(revoke_ms);
    let (p50, p99, pmax) = summary(publish_ms);
    eprintln!(
        "  (a) revoke, paced ({revokes}): p50 {r50:.2} ms, p99 {r99:.2} ms, max {rmax:.2} ms; \
         (b) to published: p50 {p50:.1} ms, p99 {p99:.1} ms, max {pmax:.1} ms ({} ms apart; load {load_paced})",
        gap.as_millis()
    );
    eprintln!("      meanwhile a 4 KiB write + fdatasync took p50 {f50:.2} ms, p99 {f99:.2} ms, max {fmax:.2} ms");

    // (a) in a burst: back to back while the publisher rebuilds.
    let load_burst = loadavg();
    let mut burst_ms = Vec::with_capacity(revokes);
    let burst_start = Instant::now();
    let mut last = burst_start;
    for serial in &burst {
        let t0 = Instant::now();
        issuer.revoke(&system, serial, "keyCompromise").await.map_err(|e| e.to_string())?;
        last = Instant::now();
        burst_ms.push(ms(last - t0));
    }
    issuer.published().await;
    let tail = last.elapsed();
    let burst_total = burst_start.elapsed();
    let (b50, b99, bmax) = summary(burst_ms);
    eprintln!(
        "  (a) revoke, burst ({revokes} back to back, {:.0} /s): p50 {b50:.2} ms, p99 {b99:.2} ms, max {bmax:.2} ms; \
         last one published {:.1} ms after it returned (load {load_burst})",
        revokes as f64 / (burst_total - tail).as_secs_f64(),
        ms(tail)
    );

    // Everything is in the published CRL.
    let snap = issuer.snapshot();
    let want = n + 2 * revokes;
    let crl = snap.crl_of(&services).ok_or("no Services CRL")?;
    let listed = {
        use x509_parser::prelude::FromDer;
        let (_, parsed) = x509_parser::revocation_list::CertificateRevocationList::from_der(&crl.der)
            .map_err(|e| format!("CRL: {e}"))?;
        parsed.iter_revoked_certificates().count()
    };
    if listed != want {
        return Err(format!("the published CRL lists {listed} serials, expected {want}"));
    }
    let final_bytes = crl.der.len();
    let load_end = loadavg();
    eprintln!("  published CRL lists {listed} serials, {final_bytes} bytes DER; load {load_end}");
    drop(issuer);
    drop(store);
    Ok(format!(
        "RESULT revoke n={n} revokes={revokes} gap_ms={} startup_ms={:.1} query_ms={:.1} rebuild_ms={rebuild_med:.1} \
         crl_bytes={crl_bytes} revoke_p50_ms={r50:.2} revoke_p99_ms={r99:.2} revoke_max_ms={rmax:.2} \
         publish_p50_ms={p50:.1} publish_p99_ms={p99:.1} publish_max_ms={pmax:.1} \
         burst_p50_ms={b50:.2} burst_p99_ms={b99:.2} burst_max_ms={bmax:.2} burst_tail_ms={:.1} prefill_ms={:.0} \
         fsync_p50_ms={f50:.2} fsync_p99_ms={f99:.2} fsync_max_ms={fmax:.2} \
         load_start=\"{load_start}\" load_paced=\"{load_paced}\" load_burst=\"{load_burst}\" load_end=\"{load_end}\"",
        gap.as_millis(),
        ms(startup),
        ms(query),
        ms(tail),
        ms(fill)
    ))
}
