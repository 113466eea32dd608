//! `prometheus`: a scrape endpoint (default `0.0.0.0:9465/metrics`) in the Prometheus text
//! format. Metrics are recorded in OpenTelemetry instruments on a `SdkMeterProvider` of this
//! instance alone, read through `opentelemetry-prometheus` into a `prometheus` registry of its own,
//! so two `prometheus/...` exporters never mix. The service's own telemetry shows here too.

mod config;

pub use config::PrometheusConfig;

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use mcp_metrics_plugin::telemetry::TelemetryGuard;
use mcp_metrics_plugin::{Batch, BoxError, BuildContext, ExportError, Exporter, async_trait};
use opentelemetry::metrics::MeterProvider;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::metrics::SdkMeterProvider;
use prometheus::{Encoder, TextEncoder};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

use crate::otel::{self, Recorder};

pub struct PrometheusExporter {
    /// `None` when the exporter is disabled.
    running: Option<Running>,
}

struct Running {
    addr: SocketAddr,
    /// Dropping it shuts the instruments down.
    _provider: SdkMeterProvider,
    recorder: Recorder,
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
            .with_view(otel::cardinality_view(config.cardinality_limit))
            .build();
        let meter = provider.meter("mcp-metrics");
        let recorder = Recorder::new(&meter, cx, &config.recorder_settings());
        let guard = config.self_telemetry.then(|| cx.telemetry.attach(&meter));

        let scrapes = Arc::new(Scrapes {
            registry,
            running: Arc::new(Semaphore::new(config.max_concurrent_scrapes)),
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
                recorder,
                _telemetry: guard,
            }),
        })
    }
}

/// What a scrape reads, and how many scrapes may run at once.
struct Scrapes {
    registry: prometheus::Registry,
    running: Arc<Semaphore>,
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
    let registry = scrapes.registry.clone();
    let encoded = tokio::task::spawn_blocking(move || {
        let _permit = permit;
        let encoder = TextEncoder::new();
        let mut body = Vec::new();
        encoder
            .encode(&registry.gather(), &mut body)
            .map(|()| (encoder.format_type().to_owned(), body))
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

#[async_trait]
impl Exporter for PrometheusExporter {
    fn is_enabled(&self) -> bool {
        self.running.is_some()
    }

    async fn export(&self, batch: &Batch) -> Result<(), ExportError> {
        if let Some(running) = &self.running {
            running.recorder.record(batch);
        }
        Ok(())
    }

    fn local_addr(&self) -> Option<SocketAddr> {
        self.running.as_ref().map(|r| r.addr)
    }
}
