//! SDS metrics (OpenTelemetry API; the telemetry module exports them). Names
//! follow seed 002 §4.3 under the `trustmesh.` prefix.

use opentelemetry::KeyValue;
use opentelemetry::metrics::{Counter, Histogram, UpDownCounter};

#[derive(Clone)]
pub(crate) struct SdsMetrics {
    streams: UpDownCounter<i64>,
    responses: Counter<u64>,
    nacks: Counter<u64>,
    acks: Counter<u64>,
    refused: Counter<u64>,
    push_latency: Histogram<f64>,
}

impl SdsMetrics {
    pub(crate) fn new() -> Self {
        let meter = opentelemetry::global::meter("trustmesh");
        Self {
            streams: meter
                .i64_up_down_counter("trustmesh.sds.streams")
                .with_description("xDS streams connected, by protocol variant")
                .build(),
            responses: meter
                .u64_counter("trustmesh.sds.responses")
                .with_description("xDS responses sent, by cause (request or push)")
                .build(),
            nacks: meter.u64_counter("trustmesh.sds.nacks").with_description("xDS responses a client rejected").build(),
            acks: meter.u64_counter("trustmesh.sds.acks").with_description("xDS responses a client accepted").build(),
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
        if count > 0 {
            self.responses.add(count as u64, &[KeyValue::new("cause", cause)]);
        }
    }

    pub(crate) fn nack(&self) {
        self.nacks.add(1, &[]);
    }

    pub(crate) fn ack(&self) {
        self.acks.add(1, &[]);
    }

    pub(crate) fn pushed(&self, since_published: std::time::Duration) {
        self.push_latency.record(since_published.as_secs_f64(), &[]);
    }

    pub(crate) fn refused(&self, code: tonic::Code) {
        self.refused.add(1, &[KeyValue::new("code", format!("{code:?}"))]);
    }
}
