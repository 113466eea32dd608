//! `prometheus`: a scrape endpoint (default `0.0.0.0:9465/metrics`) in the Prometheus text
//! format. The series of the metrics it gets are kept in a [`SeriesTable`] of this instance alone
//! (bounded in bytes, expiring when not updated); the service's own telemetry is recorded in
//! OpenTelemetry instruments on a `SdkMeterProvider` of this instance, read through
//! `opentelemetry-prometheus` into a `prometheus` registry of its own. So two `prometheus/...`
//! exporters never mix.

mod config;
pub mod series;

pub use config::PrometheusConfig;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Instant;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use mcp_metrics_plugin::telemetry::TelemetryGuard;
use mcp_metrics_plugin::{
    Batch, BoxError, BuildContext, ExportError, Exporter, MetricType, async_trait,
};
use opentelemetry::metrics::MeterProvider;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::metrics::SdkMeterProvider;
use prometheus::{Encoder, TextEncoder};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

use crate::otel::{self, LabelPolicy};
use series::{Point, SeriesTable};

pub struct PrometheusExporter {
    /// `None` when the exporter is disabled.
    running: Option<Running>,
}

struct Running {
    addr: SocketAddr,
    /// Dropping it shuts the instruments down.
    _provider: SdkMeterProvider,
    exporter: String,
    telemetry: mcp_metrics_plugin::Telemetry,
    labels: LabelPolicy,
    series: Arc<SeriesTable>,
    /// Keeps the service's telemetry recorded here while the exporter lives.
    _telemetry: Option<TelemetryGuard>,
}

impl PrometheusExporter {
    /// Binds now, so a taken port fails start-up rather than the first scrape; serves until the
    /// service's components stop, so scrapes still work while the queues drain.
    async fn start(cx: &BuildContext, config: &PrometheusConfig) -> Result<Self, BoxError> {
        if !config.enabled {
            tracing::info!(exporter = %cx.id, "disabled; no scrape endpoint");
            return Ok(PrometheusExporter { running: None });
        }
        let address = format!("{}:{}", config.host, config.port);
        let listener = cx
            .listeners
            .bind(&cx.id, &address)
            .and_then(TcpListener::from_std)
            .map_err(|e| format!("cannot listen on {address}: {e}"))?;
        let addr = listener.local_addr()?;

        let registry = prometheus::Registry::new();
        let reader = opentelemetry_prometheus::exporter()
            .with_registry(registry.clone())
            .scope_info_enabled(false)
            .build()?;
        let provider = SdkMeterProvider::builder()
            .with_reader(reader)
            .with_resource(
                Resource::builder()
                    .with_service_name(config.service_name.clone())
                    .build(),
            )
            .build();
        let meter = provider.meter("mcp-metrics");
        let guard = config.self_telemetry.then(|| cx.telemetry.attach(&meter));
        let series = Arc::new(SeriesTable::new(config.series_settings(), Instant::now()));

        let scrapes = Arc::new(Scrapes {
            exporter: cx.id.clone(),
            registry,
            series: series.clone(),
            running: Arc::new(Semaphore::new(config.max_concurrent_scrapes)),
            max_bytes: usize::try_from(config.max_scrape_size.as_u64()).unwrap_or(usize::MAX),
            warned: AtomicBool::new(false),
            last_bytes: AtomicUsize::new(0),
        });
        let router = Router::new()
            .route(&config.path, get(scrape))
            .with_state(scrapes);
        tokio::spawn(mcp_metrics_serve::serve(
            listener,
            router,
            config.limits(),
            cx.shutdown.clone(),
        ));
        tracing::info!(exporter = %cx.id, address = %addr, path = %config.path, "serving the Prometheus scrape endpoint");
        Ok(PrometheusExporter {
            running: Some(Running {
                addr,
                _provider: provider,
                exporter: cx.id.clone(),
                telemetry: cx.telemetry.clone(),
                labels: config.labels(),
                series,
                _telemetry: guard,
            }),
        })
    }
}

/// What a scrape reads, and how many scrapes may run at once.
struct Scrapes {
    exporter: String,
    /// The service's own telemetry and `target_info`.
    registry: prometheus::Registry,
    series: Arc<SeriesTable>,
    running: Arc<Semaphore>,
    max_bytes: usize,
    /// Whether a scrape over `max_bytes` was logged already.
    warned: AtomicBool,
    /// Bytes of the last scrape: the next one's buffer starts about as large, so it is not grown
    /// by doubling (copying megabytes and holding both copies a moment).
    last_bytes: AtomicUsize,
}

async fn scrape(State(scrapes): State<Arc<Scrapes>>) -> Response {
    let Ok(permit) = scrapes.running.clone().try_acquire_owned() else {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            [(header::RETRY_AFTER, "1")],
            "too many scrapes at once; retry shortly\n",
        )
            .into_response();
    };
    let encoded = tokio::task::spawn_blocking(move || {
        let _permit = permit;
        let mut families = scrapes.registry.gather();
        families.extend(scrapes.series.families(Instant::now()));
        families.sort_by(|a, b| a.name().cmp(b.name()));
        let encoder = TextEncoder::new();
        let last = scrapes.last_bytes.load(Ordering::Relaxed);
        let mut body = Vec::with_capacity(last + last / 8);
        encoder.encode(&families, &mut body)?;
        scrapes.last_bytes.store(body.len(), Ordering::Relaxed);
        // Only the service's own telemetry can pass the reserve it is given; the series clients
        // make are held to the budget when made.
        if body.len() > scrapes.max_bytes && !scrapes.warned.swap(true, Ordering::Relaxed) {
            tracing::warn!(
                exporter = %scrapes.exporter,
                bytes = body.len(),
                max_scrape_size = scrapes.max_bytes,
                "a scrape was larger than max_scrape_size; raise it"
            );
        }
        Ok::<_, prometheus::Error>((encoder.format_type().to_owned(), body))
    })
    .await;
    match encoded {
        Ok(Ok((content_type, body))) => {
            ([(header::CONTENT_TYPE, content_type)], body).into_response()
        }
        Ok(Err(error)) => (StatusCode::INTERNAL_SERVER_ERROR, error.to_string()).into_response(),
        Err(error) => (StatusCode::INTERNAL_SERVER_ERROR, error.to_string()).into_response(),
    }
}

impl Running {
    /// Adds every metric of the batch to its series: its value to its type's counter (when it is
    /// a number a counter takes: finite, not negative), its duration to its type's histogram
    /// (when it is a time: finite, not negative).
    fn record(&self, batch: &Batch) {
        let mut dimensions_dropped = [0usize; MetricType::ALL.len()];
        let points: Vec<Point> = batch
            .metrics()
            .map(|(context, metric)| {
                let type_index = otel::type_index(metric.metric_type);
                let series = self.labels.of(context, metric);
                if series.dimensions_dropped {
                    dimensions_dropped[type_index] += 1;
                }
                let mut labels = series.labels;
                labels.sort_unstable();
                Point {
                    type_index,
                    labels,
                    value: Some(metric.value).filter(|v| v.is_finite() && *v >= 0.0),
                    seconds: metric
                        .duration_ms
                        .filter(|ms| ms.is_finite() && *ms >= 0.0)
                        .map(|ms| ms / 1000.0),
                }
            })
            .collect();
        let overflowed = self.series.record(Instant::now(), points);
        for (index, metric_type) in MetricType::ALL.into_iter().enumerate() {
            let metric_type = metric_type.as_str();
            if overflowed[index] > 0 {
                self.telemetry
                    .cardinality_overflow(&self.exporter, metric_type, overflowed[index]);
            }
            if dimensions_dropped[index] > 0 {
                self.telemetry.dimensions_dropped(
                    &self.exporter,
                    metric_type,
                    dimensions_dropped[index],
                );
            }
        }
    }
}

#[async_trait]
impl Exporter for PrometheusExporter {
    fn is_enabled(&self) -> bool {
        self.running.is_some()
    }

    async fn export(&self, batch: &Batch) -> Result<(), ExportError> {
        if let Some(running) = &self.running {
            running.record(batch);
        }
        Ok(())
    }

    fn local_addr(&self) -> Option<SocketAddr> {
        self.running.as_ref().map(|r| r.addr)
    }
}
