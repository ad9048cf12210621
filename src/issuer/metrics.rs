//! Issuance metrics (OpenTelemetry API; the telemetry module exports them as
//! Prometheus text and over OTLP). Names follow seed 002 §4.3 under the
//! `trustmesh.` prefix.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use opentelemetry::KeyValue;
use opentelemetry::metrics::{Counter, Histogram};
use parking_lot::Mutex;

use super::{Issuer, TrustSnapshot};
use crate::domain::{CaRole, CaState};

#[derive(Clone)]
pub struct Metrics {
    issued: Counter<u64>,
    failures: Counter<u64>,
    revoked: Counter<u64>,
    denials: Counter<u64>,
    purged: Counter<u64>,
    sign_duration: Histogram<f64>,
    crl_build: Histogram<f64>,
    gauges: Arc<Gauges>,
}

#[derive(Default)]
struct Gauges {
    active: AtomicU64,
    denied: AtomicU64,
    /// Every CA in the published state.
    cas: Mutex<Vec<CaGauge>>,
    /// Whether each role has a prepared successor (CA rotation).
    successors: Mutex<Vec<(String, bool)>>,
    /// The last count of live certificates per issuing CA (fingerprint).
    live: Mutex<std::collections::HashMap<String, u64>>,
    /// Earliest CRL nextUpdate, unix seconds (0 = none).
    crl_next_update: AtomicU64,
    /// Bytes of all published CRLs (PEM).
    crl_bytes: AtomicU64,
}

/// What the gauges say of one CA.
#[derive(Debug, Clone, Default)]
struct CaGauge {
    name: String,
    role: String,
    state: String,
    not_after: i64,
    /// Unexpired, unrevoked certificates it signed (from the last count).
    live: u64,
}

impl CaGauge {
    fn labels(&self) -> [KeyValue; 3] {
        [
            KeyValue::new("ca_name", self.name.clone()),
            KeyValue::new("role", self.role.clone()),
            KeyValue::new("state", self.state.clone()),
        ]
    }
}

impl Metrics {
    pub fn new() -> Self {
        let meter = opentelemetry::global::meter("trustmesh");
        let gauges = Arc::new(Gauges::default());
        let g = gauges.clone();
        meter
            .u64_observable_gauge("trustmesh.pki.active_cert_count")
            .with_description("Number of unexpired, unrevoked certificates in the store")
            .with_callback(move |o| o.observe(g.active.load(Ordering::Relaxed), &[]))
            .build();
        let g = gauges.clone();
        meter
            .u64_observable_gauge("trustmesh.pki.deny_list_size")
            .with_description("Number of identities on the deny list")
            .with_callback(move |o| o.observe(g.denied.load(Ordering::Relaxed), &[]))
            .build();
        let g = gauges.clone();
        meter
            .i64_observable_gauge("trustmesh.pki.ca_expiry")
            .with_unit("s")
            .with_description("Seconds until each CA certificate expires")
            .with_callback(move |o| {
                let now = time::OffsetDateTime::now_utc().unix_timestamp();
                for ca in g.cas.lock().iter() {
                    o.observe(ca.not_after - now, &ca.labels());
                }
            })
            .build();
        let g = gauges.clone();
        meter
            .u64_observable_gauge("trustmesh.pki.ca_live_certificates")
            .with_description("Unexpired, unrevoked certificates each CA signed (counted by maintenance)")
            .with_callback(move |o| {
                for ca in g.cas.lock().iter() {
                    o.observe(ca.live, &ca.labels());
                }
            })
            .build();
        let g = gauges.clone();
        meter
            .u64_observable_gauge("trustmesh.pki.ca_successor_prepared")
            .with_description("1 when a prepared CA waits to succeed the active CA of the role")
            .with_callback(move |o| {
                for (role, prepared) in g.successors.lock().iter() {
                    o.observe(u64::from(*prepared), &[KeyValue::new("role", role.clone())]);
                }
            })
            .build();
        let g = gauges.clone();
        meter
            .u64_observable_gauge("trustmesh.pki.crl_size")
            .with_unit("By")
            .with_description("Bytes of all published CRLs (PEM)")
            .with_callback(move |o| o.observe(g.crl_bytes.load(Ordering::Relaxed), &[]))
            .build();
        let g = gauges.clone();
        meter
            .i64_observable_gauge("trustmesh.pki.crl_next_update")
            .with_unit("s")
            .with_description("Seconds until the earliest nextUpdate of the published CRLs")
            .with_callback(move |o| {
                let next = g.crl_next_update.load(Ordering::Relaxed);
                if next > 0 {
                    let now = time::OffsetDateTime::now_utc().unix_timestamp();
                    o.observe(i64::try_from(next).unwrap_or(i64::MAX) - now, &[]);
                }
            })
            .build();
        Self {
            issued: meter
                .u64_counter("trustmesh.pki.cert_issued")
                .with_description("Certificates issued, by issuer, algorithm and type")
                .build(),
            failures: meter
                .u64_counter("trustmesh.pki.request_failure")
                .with_description("Refused or failed requests, by error type")
                .build(),
            revoked: meter
                .u64_counter("trustmesh.pki.cert_revoked")
                .with_description("Certificates revoked (one by one or by a denial)")
                .build(),
            denials: meter
                .u64_counter("trustmesh.pki.identity_denied")
                .with_description("Identities put on the deny list")
                .build(),
            crl_build: meter
                .f64_histogram("trustmesh.pki.crl_build_duration")
                .with_unit("s")
                .with_description("Time to build, sign, check and publish the CRL set")
                .with_boundaries(vec![0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0])
                .build(),
            purged: meter
                .u64_counter("trustmesh.pki.purged_cert_count")
                .with_description("Expired certificate records purged")
                .build(),
            sign_duration: meter
                .f64_histogram("trustmesh.pki.csr_sign_duration")
                .with_unit("s")
                .with_description("Time to process a CSR signing request")
                .with_boundaries(vec![0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0, 5.0])
                .build(),
            gauges,
        }
    }

    pub(crate) fn issued(&self, issuer: &str, algorithm: &str) {
        self.issued.add(
            1,
            &[
                KeyValue::new("issuer", issuer.to_string()),
                KeyValue::new("algorithm", algorithm.to_string()),
                KeyValue::new("type", "end-entity"),
            ],
        );
        self.gauges.active.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn failure(&self, error_type: &'static str) {
        self.failures.add(1, &[KeyValue::new("error_type", error_type)]);
    }

    pub(crate) fn revoked(&self, n: u64) {
        self.revoked.add(n, &[]);
        let _ = self.gauges.active.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |a| Some(a.saturating_sub(n)));
    }

    pub(crate) fn denied(&self) {
        self.denials.add(1, &[]);
    }

    pub(crate) fn crl_built(&self, seconds: f64, bytes: usize) {
        self.crl_build.record(seconds, &[]);
        self.gauges.crl_bytes.store(bytes as u64, Ordering::Relaxed);
    }

    pub(crate) fn purged(&self, n: u64) {
        self.purged.add(n, &[]);
    }

    pub(crate) fn sign_duration(&self, seconds: f64) {
        self.sign_duration.record(seconds, &[]);
    }

    /// Re-reads the counts from the store (a table count: maintenance only)
    /// and the rest from the snapshot.
    pub(crate) async fn refresh_counts(&self, issuer: &Issuer) {
        let now = issuer.now().unix_timestamp();
        if let Ok(n) = issuer.store.active_certificate_count(now).await {
            self.gauges.active.store(n, Ordering::Relaxed);
        }
        if let Ok(live) = issuer.store.live_certificates_by_issuer(now).await {
            *self.gauges.live.lock() = live.into_iter().collect();
        }
        self.observe(&issuer.snapshot());
    }

    /// The gauges a published snapshot sets (no store access: runs after
    /// every publication).
    pub(crate) fn observe(&self, snapshot: &TrustSnapshot) {
        self.gauges.denied.store(snapshot.deny.identities.len() as u64, Ordering::Relaxed);
        let live = self.gauges.live.lock();
        *self.gauges.cas.lock() = snapshot
            .cas
            .iter()
            .map(|c| CaGauge {
                name: c.common_name.clone(),
                role: c.role.as_str().to_string(),
                state: c.state.as_str().to_string(),
                not_after: c.not_after,
                live: live.get(&c.fingerprint).copied().unwrap_or(0),
            })
            .collect();
        *self.gauges.successors.lock() = CaRole::ALL
            .iter()
            .filter(|role| snapshot.cas.iter().any(|c| c.role == **role && c.state == CaState::Active))
            .map(|role| {
                let prepared = snapshot.cas.iter().any(|c| c.role == *role && c.state == CaState::Prepared);
                (role.as_str().to_string(), prepared)
            })
            .collect();
        let next = snapshot.earliest_next_update().map_or(0, |t| t.unix_timestamp());
        self.gauges.crl_next_update.store(u64::try_from(next).unwrap_or(0), Ordering::Relaxed);
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}
