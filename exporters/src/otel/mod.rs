//! What the `prometheus` and `otlp` exporters share: the instruments of the contract (per metric
//! type a counter of values and a histogram of durations in seconds) and how a metric's
//! dimensions become labels. The `otlp` exporter records with a [`Recorder`] on a meter of its
//! own `SdkMeterProvider`, capped in series per metric; the `prometheus` exporter keeps its series
//! itself, so they can expire (`prometheus::series`). Two instances never share state.

pub mod labels;
pub mod settings;

use std::collections::HashSet;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::Mutex;

use mcp_metrics_plugin::{Batch, BuildContext, MetricType, Telemetry};
use opentelemetry::KeyValue;
use opentelemetry::metrics::{Counter, Histogram, Meter};
use opentelemetry_sdk::metrics::{Instrument, Stream};

pub use labels::LabelPolicy;
pub use settings::Buckets;

/// The instrument names per metric type: a counter and a duration histogram. The Prometheus
/// exporter adds `_total` to counters and `_seconds` (from the unit `s`) to the histograms, which
/// gives the names the field's dashboards query, e.g. `mcp_auth_requests_total` and
/// `mcp_auth_request_duration_seconds`. OTLP carries them as they are, with the unit.
pub fn instrument_names(metric_type: MetricType) -> (&'static str, &'static str) {
    match metric_type {
        MetricType::AuthRequest => ("mcp_auth_requests", "mcp_auth_request_duration"),
        MetricType::ToolDiscovery => ("mcp_tool_discovery", "mcp_tool_discovery_duration"),
        MetricType::ToolExecution => ("mcp_tool_executions", "mcp_tool_execution_duration"),
        MetricType::RegistryOperation => {
            ("mcp_registry_operations", "mcp_registry_operation_duration")
        }
        MetricType::HealthCheck => ("mcp_health_checks", "mcp_health_check_duration"),
        MetricType::ProtocolLatency => {
            ("mcp_protocol_latency_measurements", "mcp_protocol_latency")
        }
        MetricType::Custom => ("mcp_custom_metrics", "mcp_custom_metric_duration"),
    }
}

/// The position of `metric_type` in [`MetricType::ALL`], for arrays kept per metric type.
pub fn type_index(metric_type: MetricType) -> usize {
    metric_type.index()
}

/// How an exporter turns metrics into series.
#[derive(Debug, Clone)]
pub struct RecorderSettings {
    pub buckets: Buckets,
    pub labels: LabelPolicy,
    /// Most series (label sets) per metric type; points that would make more go to one overflow
    /// series per metric type.
    pub cardinality_limit: usize,
}

/// A view that lets the SDK keep every series the recorder lets through (the limit, plus the
/// overflow series), so the SDK's own, silent limit never cuts first.
pub fn cardinality_view(limit: usize) -> impl Fn(&Instrument) -> Option<Stream> + Send + Sync {
    move |instrument: &Instrument| {
        let ours = MetricType::ALL.into_iter().any(|t| {
            let (counter, histogram) = instrument_names(t);
            instrument.name() == counter || instrument.name() == histogram
        });
        if !ours {
            return None;
        }
        Stream::builder()
            .with_cardinality_limit(limit.saturating_add(2))
            .build()
            .ok()
    }
}

/// The instruments of one `otlp` exporter instance and the series each metric type has so far.
pub struct Recorder {
    exporter: String,
    telemetry: Telemetry,
    labels: LabelPolicy,
    limit: usize,
    streams: Vec<MetricStream>,
}

struct MetricStream {
    metric_type: MetricType,
    counter: Counter<f64>,
    histogram: Histogram<f64>,
    /// Hashes of the label sets seen; it never holds more than the limit.
    series: Mutex<HashSet<u64>>,
}

impl Recorder {
    /// Instruments on `meter` for the exporter built with `cx`.
    pub fn new(meter: &Meter, cx: &BuildContext, settings: &RecorderSettings) -> Recorder {
        let streams = MetricType::ALL
            .into_iter()
            .map(|metric_type| {
                let (counter, histogram) = instrument_names(metric_type);
                MetricStream {
                    metric_type,
                    counter: meter
                        .f64_counter(counter)
                        .with_description(format!("Sum of the values of {metric_type} metrics"))
                        .build(),
                    histogram: meter
                        .f64_histogram(histogram)
                        .with_description(format!("duration_ms of {metric_type} metrics"))
                        .with_unit("s")
                        .with_boundaries(settings.buckets.0.clone())
                        .build(),
                    series: Mutex::new(HashSet::new()),
                }
            })
            .collect();
        Recorder {
            exporter: cx.id.clone(),
            telemetry: cx.telemetry.clone(),
            labels: settings.labels.clone(),
            limit: settings.cardinality_limit,
            streams,
        }
    }

    /// Adds every metric of the batch: its value to its type's counter, its duration (when it has
    /// one) to its type's histogram. Values a counter cannot take (negative, not finite) and
    /// durations that are not a time (negative, not finite) are left out.
    pub fn record(&self, batch: &Batch) {
        let mut overflowed = [0usize; MetricType::ALL.len()];
        let mut dimensions_dropped = [0usize; MetricType::ALL.len()];
        for (context, metric) in batch.metrics() {
            let index = type_index(metric.metric_type);
            let stream = &self.streams[index];
            let series = self.labels.of(context, metric);
            if series.dimensions_dropped {
                dimensions_dropped[index] += 1;
            }
            let mut labels: Vec<KeyValue> = series
                .labels
                .into_iter()
                .map(|(name, value)| KeyValue::new(name.into_owned(), value.into_owned()))
                .collect();
            if !self.admit(stream, &labels) {
                overflowed[index] += 1;
                labels = vec![
                    KeyValue::new("metric_type", metric.metric_type.as_str()),
                    KeyValue::new(labels::OVERFLOW_LABEL, "true"),
                ];
            }
            if metric.value.is_finite() && metric.value >= 0.0 {
                stream.counter.add(metric.value, &labels);
            }
            if let Some(ms) = metric.duration_ms.filter(|ms| ms.is_finite() && *ms >= 0.0) {
                stream.histogram.record(ms / 1000.0, &labels);
            }
        }
        for (index, stream) in self.streams.iter().enumerate() {
            let metric_type = stream.metric_type.as_str();
            if overflowed[index] > 0 {
                let points = overflowed[index];
                self.telemetry
                    .cardinality_overflow(&self.exporter, metric_type, points);
            }
            if dimensions_dropped[index] > 0 {
                let points = dimensions_dropped[index];
                self.telemetry
                    .dimensions_dropped(&self.exporter, metric_type, points);
            }
        }
    }

    /// Whether this label set is a series the metric may have: one it has, or a new one within
    /// the limit.
    fn admit(&self, stream: &MetricStream, labels: &[KeyValue]) -> bool {
        let mut hasher = DefaultHasher::new();
        for label in labels {
            label.key.as_str().hash(&mut hasher);
            label.value.as_str().hash(&mut hasher);
        }
        let key = hasher.finish();
        let mut series = stream.series.lock().unwrap_or_else(|e| e.into_inner());
        if series.contains(&key) {
            return true;
        }
        if series.len() < self.limit {
            series.insert(key);
            return true;
        }
        false
    }
}
