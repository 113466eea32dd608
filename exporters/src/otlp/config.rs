use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use mcp_metrics_plugin::bounds::{DAY, HOUR, MILLISECOND, out_of_range};
use mcp_metrics_plugin::{
    BoxError, BuildContext, ComponentConfig, Exporter, ExporterConfig, ExporterRegistration,
    async_trait, inventory,
};
use serde::{Deserialize, Deserializer, Serialize};

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

impl Protocol {
    /// Where a Collector on this machine listens for this protocol.
    pub fn default_endpoint(self) -> &'static str {
        match self {
            Protocol::HttpProtobuf => "http://localhost:4318/v1/metrics",
            Protocol::Grpc => "http://localhost:4317",
        }
    }
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
    /// with `protocol: grpc`, the gRPC address such as `http://collector:4317`.
    /// Not given (`None`): the protocol's [`Protocol::default_endpoint`]. Null or empty
    /// (`Some(None)`, `Some(Some(""))`): the exporter is off, which is how the default config
    /// pushes only when `OTEL_OTLP_ENDPOINT` is set.
    #[serde(deserialize_with = "given", skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<Option<String>>,
    /// `http/protobuf` or `grpc`.
    pub protocol: Protocol,
    /// Headers sent with every push (for auth tokens); with gRPC, as request metadata.
    pub headers: BTreeMap<String, String>,
    /// Time between pushes, from 1ms to 1d: milliseconds, or text such as `30s`. Null (or 0)
    /// takes `OTEL_METRIC_EXPORT_INTERVAL` (milliseconds, held to the same range) from the
    /// environment, else 30 s.
    #[serde(with = "millis_or_text")]
    pub export_interval: Option<Duration>,
    /// How long one push may take, retries included; 1ms to 1h.
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
    /// Retries of a failed push (0 to 100), with exponential backoff, within `timeout`. What a
    /// push still fails to send goes with the next push (cumulative temporality).
    pub max_retries: usize,
    /// `none` or `gzip`.
    pub compression: Compression,
    /// `cumulative` or `delta`.
    pub temporality: Temporality,
    /// The resource's `service.name`.
    pub service_name: String,
    /// More resource attributes, e.g. `deployment.environment: prod`.
    pub resource_attributes: BTreeMap<String, String>,
    /// Upper bounds of the duration histograms' buckets, in seconds (see `prometheus`); 1 to
    /// 1000 bounds.
    pub histogram_buckets: Buckets,
    /// The dimension keys that become attributes; null for every key.
    pub dimension_keys: Option<BTreeSet<String>>,
    /// Most series (attribute sets) per metric type, from 1 to 1000000; points past it go to one
    /// overflow series.
    pub cardinality_limit: usize,
    /// Also push the service's own telemetry (receivers, queues, exporters).
    pub self_telemetry: bool,
}

impl Default for OtlpConfig {
    fn default() -> Self {
        OtlpConfig {
            endpoint: None,
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
        match &self.endpoint {
            None => Some(self.protocol.default_endpoint()),
            Some(given) => given.as_deref().map(str::trim).filter(|e| !e.is_empty()),
        }
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
            .or_else(|| env_interval(env))
            .unwrap_or(DEFAULT_EXPORT_INTERVAL)
    }

    /// What is wrong with the interval the environment gives, when the config gives none: a
    /// number of milliseconds out of range is an error, as in the config (text that is not a
    /// number is ignored, as the OpenTelemetry SDK ignores it).
    pub fn env_problems(&self, env: impl Fn(&str) -> Option<String>) -> Vec<String> {
        if self.export_interval.is_some_and(|i| !i.is_zero()) || self.active_endpoint().is_none() {
            return Vec::new();
        }
        match env_interval(env) {
            Some(interval) if !EXPORT_INTERVALS.contains(&interval) => vec![format!(
                "export_interval: not given, so OTEL_METRIC_EXPORT_INTERVAL ({} ms) is taken, \
                 and it must be from 1 to 86400000 ms (1d)",
                interval.as_millis()
            )],
            _ => Vec::new(),
        }
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

/// The range of `export_interval`, given or from the environment: a pushing thread sleeps that
/// long between pushes.
const EXPORT_INTERVALS: std::ops::RangeInclusive<Duration> = MILLISECOND..=DAY;

/// `OTEL_METRIC_EXPORT_INTERVAL`, milliseconds; none if unset, zero or not a number.
fn env_interval(env: impl Fn(&str) -> Option<String>) -> Option<Duration> {
    env("OTEL_METRIC_EXPORT_INTERVAL")
        .and_then(|ms| ms.trim().parse::<u64>().ok())
        .filter(|ms| *ms > 0)
        .map(Duration::from_millis)
}

/// An `endpoint` key that is there, even as null, is `Some`: null turns the exporter off, while a
/// missing key keeps the default `None`, the protocol's own endpoint.
fn given<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<Option<String>>, D::Error> {
    Option::<String>::deserialize(deserializer).map(Some)
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
        // Zero takes the environment's interval, checked below.
        if let Some(interval) = self.export_interval.filter(|i| !i.is_zero()) {
            problems.extend(out_of_range("export_interval", interval, EXPORT_INTERVALS));
        }
        problems.extend(
            [
                // A push's deadline is the time it starts plus `timeout`; past what the clock
                // holds, the HTTP client drops the deadline and a stalled collector keeps the
                // pushing thread for ever.
                out_of_range("timeout", self.timeout, MILLISECOND..=HOUR),
                out_of_range("max_retries", self.max_retries, 0..=100),
                out_of_range("cardinality_limit", self.cardinality_limit, 1..=1_000_000),
            ]
            .into_iter()
            .flatten(),
        );
        if self.service_name.trim().is_empty() {
            problems.push("service_name: must not be empty".into());
        }
        problems.extend(self.env_problems(|name| std::env::var(name).ok()));
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
    "pushes per metric type a counter and a duration histogram to an OTLP endpoint (HTTP/protobuf or gRPC; with no `endpoint` key, the protocol's port on localhost)"
));

#[cfg(test)]
mod tests {
    use super::*;

    fn config(endpoint: Option<&str>, protocol: Protocol) -> OtlpConfig {
        OtlpConfig {
            endpoint: Some(endpoint.map(str::to_owned)),
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

    /// Decoded as the config file gives it, where a missing key and null differ.
    fn decoded(settings: serde_json::Value) -> OtlpConfig {
        serde_json::from_value(settings).unwrap()
    }

    #[test]
    fn no_endpoint_key_means_the_protocol_s_local_default() {
        let http = decoded(serde_json::json!({}));
        assert_eq!(
            http.push_url().as_deref(),
            Some("http://localhost:4318/v1/metrics")
        );
        let grpc = decoded(serde_json::json!({"protocol": "grpc"}));
        assert_eq!(grpc.push_url().as_deref(), Some("http://localhost:4317"));
        let given = decoded(serde_json::json!({"protocol": "grpc", "endpoint": "http://c:4317"}));
        assert_eq!(given.push_url().as_deref(), Some("http://c:4317"));
    }

    #[test]
    fn a_null_or_empty_endpoint_means_off() {
        assert_eq!(config(None, Protocol::HttpProtobuf).push_url(), None);
        assert_eq!(config(Some(" "), Protocol::HttpProtobuf).push_url(), None);
        for protocol in ["http/protobuf", "grpc"] {
            let null = decoded(serde_json::json!({"protocol": protocol, "endpoint": null}));
            assert_eq!(null.push_url(), None, "{protocol}");
        }
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
    fn an_interval_from_the_environment_is_held_to_the_config_s_range() {
        let env = |ms: &'static str| {
            move |name: &str| (name == "OTEL_METRIC_EXPORT_INTERVAL").then(|| ms.to_owned())
        };
        let on = config(Some("http://c:4318"), Protocol::HttpProtobuf);
        assert_eq!(
            on.env_problems(env("86400001")),
            [
                "export_interval: not given, so OTEL_METRIC_EXPORT_INTERVAL (86400001 ms) is taken, \
              and it must be from 1 to 86400000 ms (1d)"
            ]
        );
        assert_eq!(on.env_problems(env("18446744073709551615")).len(), 1);
        // The top of the range, and what is ignored as before: zero, text, nothing.
        for ms in ["86400000", "1", "0", "30s", ""] {
            assert!(on.env_problems(env(ms)).is_empty(), "{ms}");
        }
        // A configured interval, or no endpoint, leaves the environment unread.
        let given = OtlpConfig {
            export_interval: Some(Duration::from_secs(5)),
            ..on.clone()
        };
        assert!(given.env_problems(env("86400001")).is_empty());
        let off = config(None, Protocol::HttpProtobuf);
        assert!(off.env_problems(env("86400001")).is_empty());
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
