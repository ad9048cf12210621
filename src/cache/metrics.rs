//! Identity cache metrics (OpenTelemetry API, exported by `telemetry`).

use opentelemetry::metrics::{Counter, Gauge};

#[derive(Clone)]
pub(super) struct CacheMetrics {
    rotations: Counter<u64>,
    renewal_failures: Counter<u64>,
    throttled: Counter<u64>,
    warm_entries: Gauge<u64>,
    selector_sets: Gauge<u64>,
}

impl CacheMetrics {
    pub(super) fn new() -> Self {
        let meter = opentelemetry::global::meter("trustmesh");
        Self {
            rotations: meter
                .u64_counter("trustmesh.svid.rotations")
                .with_description("X.509-SVIDs replaced by a fresh one before expiry")
                .build(),
            renewal_failures: meter
                .u64_counter("trustmesh.cert.renewal_failure")
                .with_description("X.509-SVID issuances and renewals that failed (retried with backoff)")
                .build(),
            throttled: meter
                .u64_counter("trustmesh.svid.mints_throttled")
                .with_description("SVID mints delayed because the entry spent its mint budget")
                .build(),
            warm_entries: meter
                .u64_gauge("trustmesh.svid.warm_entries")
                .with_description("Registration entries whose SVID is kept current for a connected caller")
                .build(),
            selector_sets: meter
                .u64_gauge("trustmesh.cache.selector_sets")
                .with_description("Distinct caller selector sets being followed")
                .build(),
        }
    }

    pub(super) fn rotated(&self) {
        self.rotations.add(1, &[]);
    }

    pub(super) fn renewal_failed(&self) {
        self.renewal_failures.add(1, &[]);
    }

    pub(super) fn throttled(&self) {
        self.throttled.add(1, &[]);
    }

    pub(super) fn sizes(&self, selector_sets: usize, warm_entries: usize) {
        self.selector_sets.record(selector_sets as u64, &[]);
        self.warm_entries.record(warm_entries as u64, &[]);
    }
}
