//! `otlp`: pushes the metrics to an OTLP endpoint (an OpenTelemetry Collector, Grafana, Jaeger
//! ...) over HTTP/protobuf or gRPC with `opentelemetry-otlp`. Each instance has its own
//! `SdkMeterProvider` whose periodic reader pushes every `export_interval` from a thread of its
//! own; `export` only adds to in-memory instruments, so an endpoint that is slow or down never
//! holds up ingestion or the other exporters. A failed push is retried with backoff within
//! `timeout`; what is still not sent goes with the next push (cumulative temporality). Failures
//! are logged once, then at most every few minutes, then once more on recovery. On shutdown a last
//! push sends what was recorded since the previous one, with the whole `timeout` to do it.

mod config;

pub use config::{Compression, OtlpConfig, Protocol, Temporality};

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::http::{HeaderMap, HeaderName, HeaderValue};
use mcp_metrics_plugin::Telemetry;
use mcp_metrics_plugin::telemetry::TelemetryGuard;
use mcp_metrics_plugin::{
    Batch, BoxError, BuildContext, ExportError, Exporter, async_trait, redact_url_credentials,
};
use opentelemetry::KeyValue;
use opentelemetry::metrics::MeterProvider;
use opentelemetry_otlp::tonic_types::metadata::MetadataMap;
use opentelemetry_otlp::{
    MetricExporter, RetryPolicy, WithExportConfig, WithHttpConfig, WithTonicConfig,
};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::metrics::data::ResourceMetrics;
use opentelemetry_sdk::metrics::exporter::PushMetricExporter;
use opentelemetry_sdk::metrics::{PeriodicReader, SdkMeterProvider};

use crate::otel::{self, Recorder};

/// While pushes keep failing, how often to say so again.
const REPEAT_FAILURE_LOG: Duration = Duration::from_secs(300);

pub struct OtlpExporter {
    id: String,
    /// `None` when the exporter is off (no endpoint).
    running: Option<Running>,
}

struct Running {
    provider: SdkMeterProvider,
    recorder: Recorder,
    /// Set once shutdown has made the last push; shared with [`Reporting`].
    last_push_made: Arc<AtomicBool>,
    /// Keeps the service's telemetry recorded here while the exporter lives.
    _telemetry: Option<TelemetryGuard>,
}

impl OtlpExporter {
    /// Must run inside the Tokio runtime: the gRPC client binds to it.
    fn start(cx: &BuildContext, config: &OtlpConfig) -> Result<Self, BoxError> {
        let Some(url) = config.push_url() else {
            tracing::info!(exporter = %cx.id, "no endpoint; OTLP push is off");
            return Ok(OtlpExporter {
                id: cx.id.clone(),
                running: None,
            });
        };
        let interval = config.interval(|name| std::env::var(name).ok());
        let last_push_made = Arc::new(AtomicBool::new(false));
        let exporter = Reporting {
            id: cx.id.clone(),
            telemetry: cx.telemetry.clone(),
            url: redact_url_credentials(&url).into_owned(),
            inner: metric_exporter(config, &url)?,
            failures: Mutex::new(Failures::default()),
            last_push_made: last_push_made.clone(),
        };
        let reader = PeriodicReader::builder(exporter)
            .with_interval(interval)
            .build();
        let resource = Resource::builder()
            .with_service_name(config.service_name.clone())
            .with_attributes(
                config
                    .resource_attributes
                    .iter()
                    .map(|(key, value)| KeyValue::new(key.clone(), value.clone())),
            )
            .build();
        let provider = SdkMeterProvider::builder()
            .with_reader(reader)
            .with_resource(resource)
            .with_view(otel::cardinality_view(config.cardinality_limit))
            .build();
        let meter = provider.meter("mcp-metrics");
        let recorder = Recorder::new(&meter, cx, &config.recorder_settings());
        let guard = config.self_telemetry.then(|| cx.telemetry.attach(&meter));
        let shown = redact_url_credentials(&url);
        tracing::info!(exporter = %cx.id, url = %shown, protocol = ?config.protocol, ?interval, "pushing over OTLP");
        Ok(OtlpExporter {
            id: cx.id.clone(),
            running: Some(Running {
                provider,
                recorder,
                last_push_made,
                _telemetry: guard,
            }),
        })
    }
}

/// The library also reads `OTEL_EXPORTER_OTLP_HEADERS` (added to ours) and, when we give no
/// compression, `OTEL_EXPORTER_OTLP_COMPRESSION`: its builder can neither say "none" nor ignore
/// the environment. docs/opentelemetry.md says so.
fn metric_exporter(config: &OtlpConfig, url: &str) -> Result<MetricExporter, BoxError> {
    let retry = RetryPolicy::recommended().with_max_retries(config.max_retries);
    let temporality = match config.temporality {
        Temporality::Cumulative => opentelemetry_sdk::metrics::Temporality::Cumulative,
        Temporality::Delta => opentelemetry_sdk::metrics::Temporality::Delta,
    };
    let exporter = match config.protocol {
        Protocol::HttpProtobuf => {
            let headers: HashMap<String, String> = config.headers.clone().into_iter().collect();
            let builder = MetricExporter::builder()
                .with_http()
                .with_protocol(opentelemetry_otlp::Protocol::HttpBinary)
                .with_endpoint(url)
                .with_timeout(config.timeout)
                .with_headers(headers)
                .with_retry_policy(retry)
                .with_temporality(temporality);
            match config.compression {
                Compression::None => builder.build()?,
                Compression::Gzip => builder
                    .with_compression(opentelemetry_otlp::Compression::Gzip)
                    .build()?,
            }
        }
        Protocol::Grpc => {
            let builder = MetricExporter::builder()
                .with_tonic()
                .with_endpoint(url)
                .with_timeout(config.timeout)
                .with_metadata(MetadataMap::from_headers(header_map(&config.headers)?))
                .with_retry_policy(retry)
                .with_temporality(temporality);
            match config.compression {
                Compression::None => builder.build()?,
                Compression::Gzip => builder
                    .with_compression(opentelemetry_otlp::Compression::Gzip)
                    .build()?,
            }
        }
    };
    Ok(exporter)
}

/// The configured headers as HTTP headers; an invalid name or value is an error.
pub(crate) fn header_map(
    headers: &std::collections::BTreeMap<String, String>,
) -> Result<HeaderMap, String> {
    let mut map = HeaderMap::new();
    for (name, value) in headers {
        let name = HeaderName::from_bytes(name.trim().to_ascii_lowercase().as_bytes())
            .map_err(|_| format!("headers: {name:?} is not a valid header name"))?;
        let value = HeaderValue::from_str(value)
            .map_err(|_| format!("headers.{name}: the value is not a valid header value"))?;
        map.insert(name, value);
    }
    Ok(map)
}

#[async_trait]
impl Exporter for OtlpExporter {
    fn is_enabled(&self) -> bool {
        self.running.is_some()
    }

    async fn export(&self, batch: &Batch) -> Result<(), ExportError> {
        if let Some(running) = &self.running {
            running.recorder.record(batch);
        }
        Ok(())
    }

    /// Pushes what was recorded since the last push, then stops the reader's thread.
    async fn shutdown(&self) -> Result<(), BoxError> {
        let Some(running) = &self.running else {
            return Ok(());
        };
        let provider = running.provider.clone();
        let last_push_made = running.last_push_made.clone();
        // The reader pushes from its own thread; with gRPC it needs this runtime free meanwhile.
        let (pushed, stopped) = tokio::task::spawn_blocking(move || {
            // `force_flush` waits until the push is over, which `timeout` bounds. The SDK's
            // `shutdown` (0.33) waits a fixed 5 s, then lets the process exit under a push still
            // under way, so it comes second, only to stop the thread.
            let pushed = provider.force_flush();
            last_push_made.store(true, Ordering::Release);
            (pushed, provider.shutdown())
        })
        .await?;
        pushed.map_err(|e| format!("{}: last push failed: {e}", self.id))?;
        stopped.map_err(|e| format!("{}: stopping the reader failed: {e}", self.id))?;
        Ok(())
    }
}

/// The OTLP exporter with its failures logged without flooding the log, and counted.
struct Reporting {
    id: String,
    telemetry: Telemetry,
    url: String,
    inner: MetricExporter,
    failures: Mutex<Failures>,
    last_push_made: Arc<AtomicBool>,
}

#[derive(Default)]
struct Failures {
    /// Failed pushes in a row.
    count: u64,
    since: Option<Instant>,
    last_logged: Option<Instant>,
}

impl Failures {
    /// Notes a failed push at `now`; whether it is time to say so.
    fn failed(&mut self, now: Instant) -> bool {
        self.count += 1;
        self.since.get_or_insert(now);
        let due = self
            .last_logged
            .is_none_or(|at| now.duration_since(at) >= REPEAT_FAILURE_LOG);
        if due {
            self.last_logged = Some(now);
        }
        due
    }

    /// Notes a push that worked; how many failed before it, if any did.
    fn succeeded(&mut self) -> Option<u64> {
        let failed = std::mem::take(self).count;
        (failed > 0).then_some(failed)
    }
}

impl Reporting {
    fn note(&self, result: &OTelSdkResult) {
        self.telemetry.exporter_push(&self.id, result.is_ok());
        let mut failures = self.failures.lock().unwrap_or_else(|e| e.into_inner());
        match result {
            Ok(()) => {
                if let Some(failed_pushes) = failures.succeeded() {
                    tracing::info!(
                        exporter = %self.id,
                        url = %self.url,
                        failed_pushes,
                        "OTLP push works again"
                    );
                }
            }
            Err(error) => {
                let now = Instant::now();
                if failures.failed(now) {
                    let failing_for = now.duration_since(failures.since.unwrap_or(now));
                    tracing::warn!(
                        exporter = %self.id,
                        url = %self.url,
                        error = %redact_url_credentials(&error.to_string()),
                        failed_pushes = failures.count,
                        ?failing_for,
                        "OTLP push failed; metrics stay recorded and go with a later push (said again at most every {}s)",
                        REPEAT_FAILURE_LOG.as_secs()
                    );
                }
            }
        }
    }
}

impl std::fmt::Debug for Reporting {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reporting")
            .field("id", &self.id)
            .field("url", &self.url)
            .finish()
    }
}

impl PushMetricExporter for Reporting {
    async fn export(&self, metrics: &ResourceMetrics) -> OTelSdkResult {
        // The reader's shutdown collects and pushes once more; after the last push nothing new
        // was recorded, so that push would only repeat it.
        if self.last_push_made.load(Ordering::Acquire) {
            return Ok(());
        }
        let result = self.inner.export(metrics).await;
        self.note(&result);
        result
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.inner.force_flush()
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }

    fn temporality(&self) -> opentelemetry_sdk::metrics::Temporality {
        self.inner.temporality()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failures_are_said_once_then_sparingly_then_on_recovery() {
        let start = Instant::now();
        let mut failures = Failures::default();
        assert!(failures.failed(start), "the first failure is said");
        let every_second =
            (1..REPEAT_FAILURE_LOG.as_secs()).map(|s| start + Duration::from_secs(s));
        let said = every_second.filter(|at| failures.failed(*at)).count();
        assert_eq!(said, 0, "not again within the repeat interval");
        assert!(failures.failed(start + REPEAT_FAILURE_LOG));
        assert_eq!(failures.succeeded(), Some(REPEAT_FAILURE_LOG.as_secs() + 1));
        assert_eq!(
            failures.succeeded(),
            None,
            "nothing to say when it kept working"
        );
        assert!(
            failures.failed(start + REPEAT_FAILURE_LOG * 2),
            "a new outage is said"
        );
    }

    #[test]
    fn headers_must_be_valid() {
        let good = [("Authorization".to_owned(), "Bearer x".to_owned())].into();
        assert_eq!(header_map(&good).unwrap()["authorization"], "Bearer x");
        let bad = [("bad header".to_owned(), "x".to_owned())].into();
        assert!(header_map(&bad).is_err());
    }
}
