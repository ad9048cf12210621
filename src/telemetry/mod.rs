//! Logs and metrics: `tracing` to stderr (pretty on a terminal, JSON
//! otherwise), OpenTelemetry metrics rendered as Prometheus text for
//! `/metrics` and pushed over OTLP when `OTEL_EXPORTER_OTLP_ENDPOINT` is set.

use std::io::IsTerminal;

use opentelemetry_sdk::metrics::SdkMeterProvider;
use tracing_subscriber::EnvFilter;
use tracing_subscriber::prelude::*;

use crate::config::ConfigError;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Pretty,
    Json,
}

impl LogFormat {
    /// `pretty`, `json`, or `auto` (pretty on a terminal, JSON otherwise).
    pub fn parse(value: Option<&str>) -> Result<Self, ConfigError> {
        match value.unwrap_or("auto") {
            "auto" if std::io::stderr().is_terminal() => Ok(Self::Pretty),
            "auto" => Ok(Self::Json),
            "pretty" => Ok(Self::Pretty),
            "json" => Ok(Self::Json),
            other => Err(ConfigError::new(
                "--log-format/TRUSTMESH_LOG_FORMAT",
                format!("{other:?} is not one of auto, pretty, json"),
            )),
        }
    }
}

/// Installs the global subscriber. The level comes from `RUST_LOG` (default `info`).
pub fn init_logging(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let registry = tracing_subscriber::registry().with(filter);
    let result = match format {
        LogFormat::Pretty => {
            registry.with(tracing_subscriber::fmt::layer().with_writer(std::io::stderr).with_target(false)).try_init()
        }
        LogFormat::Json => registry
            .with(
                tracing_subscriber::fmt::layer()
                    .json()
                    .flatten_event(true)
                    .with_current_span(false)
                    .with_writer(std::io::stderr),
            )
            .try_init(),
    };
    // A second initialisation (tests running several servers) keeps the first.
    let _ = result;
}

/// The process's metrics pipeline.
pub struct Telemetry {
    registry: prometheus::Registry,
    provider: SdkMeterProvider,
}

impl Telemetry {
    /// Builds the meter provider and makes it global. Must run before any
    /// instrument is created.
    pub fn init() -> anyhow::Result<Self> {
        let registry = prometheus::Registry::new();
        let exporter =
            opentelemetry_prometheus::exporter().with_registry(registry.clone()).without_target_info().build()?;
        let mut builder = SdkMeterProvider::builder().with_reader(exporter);
        if std::env::var_os("OTEL_EXPORTER_OTLP_ENDPOINT").is_some() {
            let otlp = opentelemetry_otlp::MetricExporter::builder().with_tonic().build()?;
            builder = builder.with_periodic_exporter(otlp);
        }
        let provider = builder.build();
        opentelemetry::global::set_meter_provider(provider.clone());
        Ok(Self { registry, provider })
    }

    /// Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let encoder = prometheus::TextEncoder::new();
        encoder
            .encode_to_string(&self.registry.gather())
            .unwrap_or_else(|e| format!("# metrics encoding failed: {e}\n"))
    }

    pub fn shutdown(&self) {
        let _ = self.provider.shutdown();
    }
}
