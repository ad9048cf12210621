//! SDS metrics (OpenTelemetry API; the telemetry module exports them). Names
//! follow seed 002 §4.3 under the `trustmesh.` prefix.
//!
//! The counters that move on every stream at every change (responses, ACKs,
//! NACKs) are plain atomics, read by observable counters when the metrics
//! are collected: an OpenTelemetry `Counter::add` with an attribute costs a
//! hash-map lookup under a lock, and ten thousand streams pushing at once
//! paid it ten thousand times per change. The atomics are process-wide, as
//! the instruments of the global meter are, so two servers in one process
//! add up as their counters did.

use std::sync::atomic::{AtomicU64, Ordering};

use opentelemetry::KeyValue;
use opentelemetry::metrics::{Counter, Histogram, UpDownCounter};

#[derive(Clone)]
pub(crate) struct SdsMetrics {
    streams: UpDownCounter<i64>,
    refused: Counter<u64>,
    push_latency: Histogram<f64>,
}

/// Responses sent, by cause (see [`CAUSES`]).
static RESPONSES: [AtomicU64; 3] = [AtomicU64::new(0), AtomicU64::new(0), AtomicU64::new(0)];
static ACKS: AtomicU64 = AtomicU64::new(0);
static NACKS: AtomicU64 = AtomicU64::new(0);

/// The `cause` attribute values of `trustmesh.sds.responses`, by index.
const CAUSES: [&str; 3] = ["request", "push", "fetch"];

impl SdsMetrics {
    pub(crate) fn new() -> Self {
        let meter = opentelemetry::global::meter("trustmesh");
        meter
            .u64_observable_counter("trustmesh.sds.responses")
            .with_description("xDS responses sent, by cause (request or push)")
            .with_callback(|o| {
                for (cause, sent) in CAUSES.iter().zip(&RESPONSES) {
                    let sent = sent.load(Ordering::Relaxed);
                    if sent > 0 {
                        o.observe(sent, &[KeyValue::new("cause", *cause)]);
                    }
                }
            })
            .build();
        meter
            .u64_observable_counter("trustmesh.sds.nacks")
            .with_description("xDS responses a client rejected")
            .with_callback(|o| o.observe(NACKS.load(Ordering::Relaxed), &[]))
            .build();
        meter
            .u64_observable_counter("trustmesh.sds.acks")
            .with_description("xDS responses a client accepted")
            .with_callback(|o| o.observe(ACKS.load(Ordering::Relaxed), &[]))
            .build();
        Self {
            streams: meter
                .i64_up_down_counter("trustmesh.sds.streams")
                .with_description("xDS streams connected, by protocol variant")
                .build(),
            push_latency: meter
                .f64_histogram("trustmesh.sds.push_latency")
                .with_unit("s")
                .with_description("From publishing new trust state (CRLs, deny list) to a stream sending it")
                .with_boundaries(vec![0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5])
                .build(),
            refused: meter
                .u64_counter("trustmesh.sds.refused_streams")
                .with_description("xDS streams refused or ended with an error status")
                .build(),
        }
    }

    pub(crate) fn stream_opened(&self, flavor: &'static str) {
        self.streams.add(1, &[KeyValue::new("protocol", flavor)]);
    }

    pub(crate) fn stream_closed(&self, flavor: &'static str) {
        self.streams.add(-1, &[KeyValue::new("protocol", flavor)]);
    }

    pub(crate) fn responses(&self, cause: &'static str, count: usize) {
        if count > 0
            && let Some(i) = CAUSES.iter().position(|c| *c == cause)
        {
            RESPONSES[i].fetch_add(count as u64, Ordering::Relaxed);
        }
    }

    pub(crate) fn nack(&self) {
        NACKS.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn ack(&self) {
        ACKS.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn pushed(&self, since_published: std::time::Duration) {
        self.push_latency.record(since_published.as_secs_f64(), &[]);
    }

    pub(crate) fn refused(&self, code: tonic::Code) {
        self.refused.add(1, &[KeyValue::new("code", format!("{code:?}"))]);
    }
}
