use std::collections::BTreeSet;
use std::time::Duration;

use mcp_metrics_plugin::bounds::{DAY, HOUR, MILLISECOND, SECOND, out_of_range};
use mcp_metrics_plugin::{
    BoxError, BuildContext, ComponentConfig, Exporter, ExporterConfig, ExporterRegistration,
    async_trait, inventory,
};
use serde::{Deserialize, Serialize};

use bytesize::ByteSize;

use crate::otel::{Buckets, LabelPolicy};

use super::PrometheusExporter;
use super::series;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PrometheusConfig {
    /// Serve the scrape endpoint; when false the exporter takes batches and does nothing.
    pub enabled: bool,
    /// The address to listen on.
    pub host: String,
    /// The port to listen on; 0 picks a free one.
    pub port: u16,
    /// The path of the scrape endpoint.
    pub path: String,
    /// Upper bounds of the duration histograms' buckets, in seconds: a list, or text of
    /// comma-separated numbers (`HISTOGRAM_BUCKET_BOUNDARIES`); null for the default 0.005 … 300.
    /// From 1 to 1000 bounds.
    pub histogram_buckets: Buckets,
    /// The dimension keys that become labels; null for every key.
    pub dimension_keys: Option<BTreeSet<String>>,
    /// Most series (label sets) per metric type; points that would make more are counted in one
    /// overflow series (`otel_metric_overflow="true"`) and in a self-metric. From 1 to 1000000.
    pub cardinality_limit: usize,
    /// Most bytes of one scrape: a new series is made only while the most its lines can take
    /// fits beside the others'; else its points go to the overflow series. From 256KiB to 1GiB.
    pub max_scrape_size: ByteSize,
    /// A series not updated for this long is dropped (the overflow series too), so its place is
    /// free again: the OpenTelemetry Collector's `metric_expiration`. From 1s to 30d.
    #[serde(with = "humantime_serde")]
    pub metric_expiration: Duration,
    /// Also show the service's own telemetry (receivers, queues, exporters) on this endpoint.
    pub self_telemetry: bool,
    /// The resource's `service.name`, shown as `target_info{service_name=...}`.
    pub service_name: String,
    /// How long a connection may take to send its first byte, and then a request's head, counted
    /// from that byte or its previous answer (so also the idle keep-alive timeout); 1ms to 1h.
    #[serde(with = "humantime_serde")]
    pub header_read_timeout: Duration,
    /// How long a request's body may take to arrive (a scrape has none); 1ms to 1h.
    #[serde(with = "humantime_serde")]
    pub body_read_timeout: Duration,
    /// Most connections open at once, from 1 to 100000; past it new ones wait in the listen
    /// backlog.
    pub max_connections: usize,
    /// Most scrapes served at once, from 1 to 1000; past it a scrape is answered 503 with
    /// `Retry-After`.
    pub max_concurrent_scrapes: usize,
}

impl Default for PrometheusConfig {
    fn default() -> Self {
        PrometheusConfig {
            enabled: true,
            host: "0.0.0.0".into(),
            port: 9465,
            path: "/metrics".into(),
            histogram_buckets: Buckets::default(),
            dimension_keys: None,
            cardinality_limit: 1000,
            max_scrape_size: ByteSize::mib(8),
            metric_expiration: Duration::from_secs(5 * 60),
            self_telemetry: true,
            service_name: "mcp-metrics-service".into(),
            header_read_timeout: Duration::from_secs(10),
            body_read_timeout: Duration::from_secs(10),
            max_connections: 64,
            max_concurrent_scrapes: 2,
        }
    }
}

impl PrometheusConfig {
    pub fn limits(&self) -> mcp_metrics_serve::Limits {
        mcp_metrics_serve::Limits {
            header_read_timeout: self.header_read_timeout,
            body_read_timeout: self.body_read_timeout,
            max_connections: self.max_connections,
        }
    }

    pub fn labels(&self) -> LabelPolicy {
        LabelPolicy {
            allow: self.dimension_keys.clone(),
        }
    }

    pub fn series_settings(&self) -> series::Settings {
        series::Settings {
            buckets: self.histogram_buckets.0.clone(),
            cardinality_limit: self.cardinality_limit,
            max_scrape_bytes: usize::try_from(self.max_scrape_size.as_u64()).unwrap_or(usize::MAX),
            expiration: self.metric_expiration,
        }
    }
}

/// The range of `max_scrape_size`: room for the service's own telemetry and some series, up to
/// what no scraper should be asked to take.
const MIN_SCRAPE_SIZE: ByteSize = ByteSize::kib(256);
const MAX_SCRAPE_SIZE: ByteSize = ByteSize::gib(1);

impl ComponentConfig for PrometheusConfig {
    fn validate(&self) -> Vec<String> {
        let mut problems = self.histogram_buckets.problems("histogram_buckets");
        if !self.path.starts_with('/') {
            problems.push("path: must start with /".into());
        }
        if !(MIN_SCRAPE_SIZE..=MAX_SCRAPE_SIZE).contains(&self.max_scrape_size) {
            problems.push("max_scrape_size: must be from 256KiB to 1GiB".into());
        }
        problems.extend(
            [
                out_of_range("cardinality_limit", self.cardinality_limit, 1..=1_000_000),
                out_of_range(
                    "header_read_timeout",
                    self.header_read_timeout,
                    MILLISECOND..=HOUR,
                ),
                out_of_range(
                    "body_read_timeout",
                    self.body_read_timeout,
                    MILLISECOND..=HOUR,
                ),
                out_of_range("max_connections", self.max_connections, 1..=100_000),
                out_of_range(
                    "metric_expiration",
                    self.metric_expiration,
                    SECOND..=30 * DAY,
                ),
                out_of_range(
                    "max_concurrent_scrapes",
                    self.max_concurrent_scrapes,
                    1..=1_000,
                ),
            ]
            .into_iter()
            .flatten(),
        );
        problems
    }
}

#[async_trait]
impl ExporterConfig for PrometheusConfig {
    async fn build(&self, cx: &BuildContext) -> Result<Box<dyn Exporter>, BoxError> {
        Ok(Box::new(PrometheusExporter::start(cx, self).await?))
    }
}

inventory::submit!(ExporterRegistration::of::<PrometheusConfig>(
    "prometheus",
    "serves a Prometheus scrape endpoint: per metric type a counter and a duration histogram, and the service's own telemetry"
));
