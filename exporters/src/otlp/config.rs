use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use mcp_metrics_plugin::{
    BoxError, BuildContext, ComponentConfig, Exporter, ExporterConfig, ExporterRegistration,
    async_trait, inventory,
};
use serde::{Deserialize, Serialize};

use crate::otel::settings::millis_or_text;
use crate::otel::{Buckets, LabelPolicy, RecorderSettings};

use super::OtlpExporter;

/// The export interval when neither the config nor `OTEL_METRIC_EXPORT_INTERVAL` gives one.
pub const DEFAULT_EXPORT_INTERVAL: Duration = Duration::from_secs(30);

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Protocol {
    /// OTLP/HTTP with protobuf bodies, posted to `{endpoint}/v1/metrics`.
    #[serde(rename = "http/protobuf")]
    HttpProtobuf,
    /// OTLP/gRPC, to `endpoint` as it is.
    #[serde(rename = "grpc")]
    Grpc,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Compression {
    None,
    Gzip,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Temporality {
    /// Every push carries the totals since start: a failed push loses nothing.
    Cumulative,
    /// Every push carries what changed since the previous one.
    Delta,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OtlpConfig {
    /// Where to push: a base URL such as `http://collector:4318` (OTLP/HTTP posts to
    /// `{endpoint}/v1/metrics`; a URL that already ends in `/v1/metrics` is taken as it is) or,
    /// with `protocol: grpc`, the gRPC address such as `http://collector:4317`. Null or empty turns
    /// the exporter off, which is how the default config pushes only when `OTEL_OTLP_ENDPOINT` is set.
    pub endpoint: Option<String>,
    /// `http/protobuf` or `grpc`.
    pub protocol: Protocol,
    /// Headers sent with every push (for auth tokens); with gRPC, as request metadata.
    pub headers: BTreeMap<String, String>,
    /// Time between pushes: milliseconds, or text such as `30s`. Null takes
    /// `OTEL_METRIC_EXPORT_INTERVAL` (milliseconds) from the environment, else 30 s.
    #[serde(with = "millis_or_text")]
    pub export_interval: Option<Duration>,
    /// How long one push may take, retries included.
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
    /// Retries of a failed push, with exponential backoff, within `timeout`. What a push still
    /// fails to send goes with the next push (cumulative temporality).
    pub max_retries: usize,
    /// `none` or `gzip`.
    pub compression: Compression,
    /// `cumulative` or `delta`.
    pub temporality: Temporality,
    /// The resource's `service.name`.
    pub service_name: String,
    /// More resource attributes, e.g. `deployment.environment: prod`.
    pub resource_attributes: BTreeMap<String, String>,
    /// Upper bounds of the duration histograms' buckets, in seconds (see `prometheus`).
    pub histogram_buckets: Buckets,
    /// The dimension keys that become attributes; null for every key.
    pub dimension_keys: Option<BTreeSet<String>>,
    /// Most series (attribute sets) per metric type; points past it go to one overflow series.
    pub cardinality_limit: usize,
    /// Also push the service's own telemetry (receivers, queues, exporters).
    pub self_telemetry: bool,
}

impl Default for OtlpConfig {
    fn default() -> Self {
        OtlpConfig {
            endpoint: Some("http://localhost:4318".into()),
            protocol: Protocol::HttpProtobuf,
            headers: BTreeMap::new(),
            export_interval: None,
            timeout: Duration::from_secs(10),
            max_retries: 3,
            compression: Compression::None,
            temporality: Temporality::Cumulative,
            service_name: "mcp-metrics-service".into(),
            resource_attributes: BTreeMap::new(),
            histogram_buckets: Buckets::default(),
            dimension_keys: None,
            cardinality_limit: 1000,
            self_telemetry: false,
        }
    }
}

impl OtlpConfig {
    /// The endpoint, if the exporter is on.
    pub fn active_endpoint(&self) -> Option<&str> {
        self.endpoint
            .as_deref()
            .map(str::trim)
            .filter(|e| !e.is_empty())
    }

    /// Where pushes go: for OTLP/HTTP, the base URL with `/v1/metrics`.
    pub fn push_url(&self) -> Option<String> {
        // `http://c:4318/` and `.../v1/metrics/` mean the same as without the slash.
        let endpoint = self.active_endpoint()?.trim_end_matches('/');
        Some(match self.protocol {
            Protocol::HttpProtobuf if !endpoint.ends_with("/v1/metrics") => {
                format!("{endpoint}/v1/metrics")
            }
            _ => endpoint.to_owned(),
        })
    }

    /// The configured interval, else `OTEL_METRIC_EXPORT_INTERVAL`, else 30 s.
    pub fn interval(&self, env: impl Fn(&str) -> Option<String>) -> Duration {
        self.export_interval
            .filter(|i| !i.is_zero())
            .or_else(|| {
                env("OTEL_METRIC_EXPORT_INTERVAL")
                    .and_then(|ms| ms.trim().parse::<u64>().ok())
                    .filter(|ms| *ms > 0)
                    .map(Duration::from_millis)
            })
            .unwrap_or(DEFAULT_EXPORT_INTERVAL)
    }

    pub fn recorder_settings(&self) -> RecorderSettings {
        RecorderSettings {
            buckets: self.histogram_buckets.clone(),
            labels: LabelPolicy {
                allow: self.dimension_keys.clone(),
            },
            cardinality_limit: self.cardinality_limit,
        }
    }
}

impl ComponentConfig for OtlpConfig {
    fn validate(&self) -> Vec<String> {
        let mut problems = self.histogram_buckets.problems("histogram_buckets");
        if let Some(endpoint) = self.active_endpoint()
            && !(endpoint.starts_with("http://") || endpoint.starts_with("https://"))
        {
            problems.push(format!(
                "endpoint: {endpoint:?} must be a URL starting with http:// or https://"
            ));
        }
        if let Err(problem) = super::header_map(&self.headers) {
            problems.push(problem);
        }
        if self.timeout.is_zero() {
            problems.push("timeout: must be more than zero".into());
        }
        if self.cardinality_limit == 0 || self.cardinality_limit > 1_000_000 {
            problems.push("cardinality_limit: must be from 1 to 1000000".into());
        }
        if self.service_name.trim().is_empty() {
            problems.push("service_name: must not be empty".into());
        }
        problems
    }
}

#[async_trait]
impl ExporterConfig for OtlpConfig {
    async fn build(&self, cx: &BuildContext) -> Result<Box<dyn Exporter>, BoxError> {
        Ok(Box::new(OtlpExporter::start(cx, self)?))
    }
}

inventory::submit!(ExporterRegistration::of::<OtlpConfig>(
    "otlp",
    "pushes per metric type a counter and a duration histogram to an OTLP endpoint (HTTP/protobuf or gRPC)"
));

#[cfg(test)]
mod tests {
    use super::*;

    fn config(endpoint: Option<&str>, protocol: Protocol) -> OtlpConfig {
        OtlpConfig {
            endpoint: endpoint.map(str::to_owned),
            protocol,
            ..OtlpConfig::default()
        }
    }

    #[test]
    fn http_posts_to_the_metrics_path_below_the_base() {
        let http = Protocol::HttpProtobuf;
        let url = |e| config(Some(e), http).push_url().unwrap();
        assert_eq!(url("http://c:4318"), "http://c:4318/v1/metrics");
        assert_eq!(url("http://c:4318/"), "http://c:4318/v1/metrics");
        assert_eq!(url("http://c:4318/v1/metrics"), "http://c:4318/v1/metrics");
        assert_eq!(url("http://c:4318/v1/metrics/"), "http://c:4318/v1/metrics");
        assert_eq!(url("https://g.net/otlp/"), "https://g.net/otlp/v1/metrics");
        let grpc = |e| config(Some(e), Protocol::Grpc).push_url().unwrap();
        assert_eq!(grpc("http://c:4317"), "http://c:4317");
        assert_eq!(grpc("http://c:4317/"), "http://c:4317");
    }

    #[test]
    fn no_endpoint_means_off() {
        assert_eq!(config(None, Protocol::HttpProtobuf).push_url(), None);
        assert_eq!(config(Some(" "), Protocol::HttpProtobuf).push_url(), None);
    }

    #[test]
    fn interval_from_config_then_environment() {
        let env = |name: &str| (name == "OTEL_METRIC_EXPORT_INTERVAL").then(|| "1500".to_owned());
        let none = |_: &str| None;
        let mut c = OtlpConfig::default();
        assert_eq!(c.interval(none), DEFAULT_EXPORT_INTERVAL);
        assert_eq!(c.interval(env), Duration::from_millis(1500));
        c.export_interval = Some(Duration::from_secs(5));
        assert_eq!(c.interval(env), Duration::from_secs(5));
    }

    #[test]
    fn a_bad_endpoint_is_reported() {
        let c = config(Some("collector:4318"), Protocol::HttpProtobuf);
        assert!(
            c.validate()[0].starts_with("endpoint:"),
            "{:?}",
            c.validate()
        );
    }
}
