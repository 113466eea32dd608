//! The `otlp` exporter end to end: a real service on loopback pushing to a real OTLP receiver on
//! loopback (OTLP/HTTP with axum, OTLP/gRPC with tonic), whose requests are decoded with the
//! official protobuf definitions (`opentelemetry-proto`).

mod common;

use std::collections::BTreeMap;
use std::io::Read;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::http::{HeaderMap, StatusCode, header};
use axum::routing::post;
use common::*;
use opentelemetry_proto::tonic::collector::metrics::v1::metrics_service_server::{
    MetricsService, MetricsServiceServer,
};
use opentelemetry_proto::tonic::collector::metrics::v1::{
    ExportMetricsServiceRequest, ExportMetricsServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value};
use opentelemetry_proto::tonic::metrics::v1::{
    AggregationTemporality, Metric, metric::Data, number_data_point,
};
use prost::Message;
use serde_json::json;
use tokio::sync::mpsc;

/// One push as the receiver got it.
struct Push {
    path: String,
    headers: HeaderMap,
    request: ExportMetricsServiceRequest,
}

/// An OTLP receiver on loopback that hands every push it decodes to the test.
struct OtlpReceiver {
    addr: SocketAddr,
    pushes: mpsc::UnboundedReceiver<Push>,
}

impl OtlpReceiver {
    /// OTLP/HTTP with protobuf bodies, gzip or not, on `/v1/metrics`.
    async fn http() -> OtlpReceiver {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        OtlpReceiver::http_on(listener, None)
    }

    /// With `slow_refusal`, the first push is answered only after that long, with a 503 (which
    /// the exporter retries), and not taken.
    fn http_on(listener: tokio::net::TcpListener, slow_refusal: Option<Duration>) -> OtlpReceiver {
        let addr = listener.local_addr().unwrap();
        let (sender, pushes) = mpsc::unbounded_channel();
        let slow_refusal = Arc::new(Mutex::new(slow_refusal));
        let handler = move |uri: axum::http::Uri, headers: HeaderMap, body: Bytes| {
            let sender = sender.clone();
            let slow_refusal = slow_refusal.clone();
            async move {
                let refuse_after = slow_refusal.lock().unwrap().take();
                if let Some(delay) = refuse_after {
                    tokio::time::sleep(delay).await;
                    return (StatusCode::SERVICE_UNAVAILABLE, Vec::new());
                }
                let mut bytes = body.to_vec();
                if headers
                    .get(header::CONTENT_ENCODING)
                    .is_some_and(|v| v == "gzip")
                {
                    let mut plain = Vec::new();
                    flate2::read::GzDecoder::new(&bytes[..])
                        .read_to_end(&mut plain)
                        .unwrap();
                    bytes = plain;
                }
                let Ok(request) = ExportMetricsServiceRequest::decode(&bytes[..]) else {
                    return (StatusCode::BAD_REQUEST, Vec::new());
                };
                let path = uri.path().to_owned();
                let _ = sender.send(Push {
                    path,
                    headers,
                    request,
                });
                let reply = ExportMetricsServiceResponse::default().encode_to_vec();
                (StatusCode::OK, reply)
            }
        };
        let router = axum::Router::new().route("/v1/metrics", post(handler));
        tokio::spawn(async move { axum::serve(listener, router).await });
        OtlpReceiver { addr, pushes }
    }

    /// OTLP/gRPC.
    async fn grpc() -> OtlpReceiver {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (sender, pushes) = mpsc::unbounded_channel();
        let service = MetricsServiceServer::new(GrpcReceiver(sender));
        tokio::spawn(async move {
            tonic::transport::Server::builder()
                .add_service(service)
                .serve_with_incoming(tonic::transport::server::TcpIncoming::from(listener))
                .await
        });
        OtlpReceiver { addr, pushes }
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Every push received so far.
    fn received(&mut self) -> Vec<Push> {
        let mut pushes = Vec::new();
        while let Ok(push) = self.pushes.try_recv() {
            pushes.push(push);
        }
        pushes
    }

    /// Waits (up to 20 s, then fails) for a push that satisfies `wanted`.
    async fn push_where(&mut self, wanted: impl Fn(&Push) -> bool) -> Push {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        loop {
            match tokio::time::timeout_at(deadline, self.pushes.recv()).await {
                Ok(Some(push)) if wanted(&push) => return push,
                Ok(Some(_)) => continue,
                _ => panic!("no such push arrived"),
            }
        }
    }
}

struct GrpcReceiver(mpsc::UnboundedSender<Push>);

#[tonic::async_trait]
impl MetricsService for GrpcReceiver {
    async fn export(
        &self,
        request: tonic::Request<ExportMetricsServiceRequest>,
    ) -> Result<tonic::Response<ExportMetricsServiceResponse>, tonic::Status> {
        let headers = request.metadata().clone().into_headers();
        let _ = self.0.send(Push {
            path: "grpc".into(),
            headers,
            request: request.into_inner(),
        });
        Ok(tonic::Response::new(ExportMetricsServiceResponse::default()))
    }
}

/// The `mcp-metrics` binary run on `config(otlp)` (with `RUST_LOG=info`, as `mcp_metrics` sets
/// it), with a key for `auth-server`.
struct Binary {
    process: ServiceProcess,
    address: String,
    key: String,
    log: std::sync::mpsc::Receiver<String>,
    _dir: tempfile::TempDir,
}

impl Binary {
    async fn start(otlp: &str) -> Binary {
        let dir = tempfile::tempdir().unwrap();
        let store = mcp_metrics_store::Store::open(dir.path().join("metrics.db"))
            .await
            .unwrap();
        let (_, key) = store.create_key("auth-server", None, false).await.unwrap();
        let path = dir.path().join("pipelines.yaml");
        let yaml = config(otlp).replace("{dir}", dir.path().to_str().unwrap());
        std::fs::write(&path, yaml).unwrap();
        let mut command = mcp_metrics(dir.path());
        command.args(["run", "--config"]).arg(&path);
        let (process, address, log) = spawn_service(&mut command);
        Binary {
            process,
            address,
            key,
            log,
            _dir: dir,
        }
    }

    async fn post(&self, body: &serde_json::Value) -> reqwest::StatusCode {
        reqwest::Client::new()
            .post(format!("http://{}/metrics", self.address))
            .header("X-API-Key", &self.key)
            .json(body)
            .send()
            .await
            .unwrap()
            .status()
    }

    /// Log lines up to and including the first that contains `text`; fails after 20 s.
    fn log_until(&self, text: &str) -> Vec<String> {
        let mut lines = Vec::new();
        loop {
            let line = (self.log.recv_timeout(Duration::from_secs(20)))
                .unwrap_or_else(|_| panic!("{text:?} was not logged: {lines:#?}"));
            let found = line.contains(text);
            lines.push(line);
            if found {
                return lines;
            }
        }
    }

    /// SIGTERM; the exit code and the rest of the log.
    async fn stop(mut self) -> (i32, Vec<String>) {
        tokio::task::spawn_blocking(move || {
            let code = terminate(&mut self.process);
            (code, self.log.iter().collect())
        })
        .await
        .unwrap()
    }
}

/// The default pipeline with an `otlp` exporter beside `sqlite`; replies wait for every exporter.
fn config(otlp: &str) -> String {
    format!(
        "
receivers:
  http: {{host: 127.0.0.1, port: 0, acknowledgements: true}}
processors:
  auth: {{database: '{{dir}}/metrics.db', refresh_interval: 200ms}}
  validate: {{}}
exporters:
  # No retention: the contract's example metric is from 2024.
  sqlite: {{path: '{{dir}}/metrics.db', retention_days: 0}}
  otlp: {{{otlp}}}
service:
  pipelines:
    metrics: {{receivers: [http], processors: [auth, validate], exporters: [sqlite, otlp]}}
"
    )
}

fn text(value: &Option<AnyValue>) -> String {
    match value.as_ref().and_then(|v| v.value.as_ref()) {
        Some(any_value::Value::StringValue(s)) => s.clone(),
        Some(any_value::Value::BoolValue(b)) => b.to_string(),
        Some(any_value::Value::IntValue(i)) => i.to_string(),
        Some(any_value::Value::DoubleValue(d)) => d.to_string(),
        other => format!("{other:?}"),
    }
}

fn attributes(attributes: &[KeyValue]) -> BTreeMap<String, String> {
    attributes
        .iter()
        .map(|kv| (kv.key.clone(), text(&kv.value)))
        .collect()
}

fn resource(push: &Push) -> BTreeMap<String, String> {
    let resource = push.request.resource_metrics[0].resource.as_ref().unwrap();
    attributes(&resource.attributes)
}

fn metric<'a>(push: &'a Push, name: &str) -> Option<&'a Metric> {
    push.request
        .resource_metrics
        .iter()
        .flat_map(|r| &r.scope_metrics)
        .flat_map(|s| &s.metrics)
        .find(|m| m.name == name)
}

/// The (attributes, value) points of a sum.
fn sum_points(push: &Push, name: &str) -> Vec<(BTreeMap<String, String>, f64)> {
    let Some(Data::Sum(sum)) = metric(push, name).and_then(|m| m.data.as_ref()) else {
        return Vec::new();
    };
    assert!(sum.is_monotonic, "{name} is a counter");
    assert_eq!(
        sum.aggregation_temporality,
        AggregationTemporality::Cumulative as i32
    );
    sum.data_points
        .iter()
        .map(|p| {
            let value = match p.value {
                Some(number_data_point::Value::AsDouble(v)) => v,
                Some(number_data_point::Value::AsInt(v)) => v as f64,
                None => f64::NAN,
            };
            (attributes(&p.attributes), value)
        })
        .collect()
}

fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_metric_type_arrives_over_http_protobuf_with_the_final_push() {
    let mut otlp = OtlpReceiver::http().await;
    // An hour between pushes: the only push is the last one, on shutdown.
    let settings = format!(
        "endpoint: '{}', export_interval: 1h, service_name: otlp-under-test,
         headers: {{authorization: Bearer s3cret}},
         resource_attributes: {{deployment.environment: test}},
         histogram_buckets: [0.01, 0.1, 1]",
        otlp.url()
    );
    let mut svc = TestService::with_config(&config(&settings)).await;
    let key = svc.key("auth-server").await;
    let metrics = vec![
        json!({"type": "auth_request", "value": 1.0, "duration_ms": 45.2,
               "dimensions": {"method": "jwt", "success": true, "server": "mcpgw", "user_hash": "user_abc123"}}),
        json!({"type": "tool_discovery", "value": 2.0, "duration_ms": 120.0, "dimensions": {"results_count": 5}}),
        json!({"type": "tool_execution", "value": 3.0, "duration_ms": 2500.0, "dimensions": {"tool_name": "t"}}),
        json!({"type": "registry_operation", "value": 4.0, "duration_ms": 8.0}),
        json!({"type": "health_check", "value": 5.0, "duration_ms": 0.5}),
        json!({"type": "protocol_latency", "value": 6.0, "duration_ms": 301000.0}),
        json!({"type": "custom", "value": 7.5, "dimensions": {"name": "x"}}),
    ];
    let reply = svc
        .post(Some(&key), &request_of("auth-server", metrics))
        .await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert!(
        otlp.received().is_empty(),
        "nothing is pushed before the interval"
    );
    svc.shutdown().await;

    let pushes = otlp.received();
    assert_eq!(pushes.len(), 1, "one push, on shutdown");
    let push = &pushes[0];
    assert_eq!(push.path, "/v1/metrics");
    assert_eq!(push.headers["content-type"], "application/x-protobuf");
    assert_eq!(push.headers["authorization"], "Bearer s3cret");
    let resource = resource(push);
    assert_eq!(resource["service.name"], "otlp-under-test");
    assert_eq!(resource["deployment.environment"], "test");

    let auth = labels(&[
        ("service", "auth-server"),
        ("metric_type", "auth_request"),
        ("method", "jwt"),
        ("success", "True"),
        ("server", "mcpgw"),
        ("user_hash", "user_abc123"),
    ]);
    assert_eq!(sum_points(push, "mcp_auth_requests"), [(auth.clone(), 1.0)]);
    let expected_sums = [
        ("mcp_tool_discovery", 2.0),
        ("mcp_tool_executions", 3.0),
        ("mcp_registry_operations", 4.0),
        ("mcp_health_checks", 5.0),
        ("mcp_protocol_latency_measurements", 6.0),
        ("mcp_custom_metrics", 7.5),
    ];
    for (name, value) in expected_sums {
        let points = sum_points(push, name);
        assert_eq!(points.len(), 1, "{name}");
        assert_eq!(points[0].1, value, "{name}");
    }
    let discovery = &sum_points(push, "mcp_tool_discovery")[0].0;
    assert_eq!(discovery["results_count"], "5");

    let histogram = metric(push, "mcp_auth_request_duration").unwrap();
    assert_eq!(histogram.unit, "s");
    let Some(Data::Histogram(histogram)) = &histogram.data else {
        panic!("mcp_auth_request_duration is a histogram");
    };
    let point = &histogram.data_points[0];
    assert_eq!(attributes(&point.attributes), auth);
    assert_eq!(point.count, 1);
    assert!((point.sum.unwrap() - 0.0452).abs() < 1e-9);
    assert_eq!(point.explicit_bounds, [0.01, 0.1, 1.0]);
    assert_eq!(point.bucket_counts, [0, 1, 0, 0]);
    let latency = metric(push, "mcp_protocol_latency").unwrap();
    let Some(Data::Histogram(latency)) = &latency.data else {
        panic!("mcp_protocol_latency is a histogram");
    };
    assert_eq!(latency.data_points[0].bucket_counts, [0, 0, 0, 1]);
    // No duration, no histogram point.
    assert!(metric(push, "mcp_custom_metric_duration").is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn periodic_pushes_carry_cumulative_totals_gzip_compressed() {
    let mut otlp = OtlpReceiver::http().await;
    let settings = format!(
        "endpoint: '{}/v1/metrics', export_interval: 100, compression: gzip",
        otlp.url()
    );
    let mut svc = TestService::with_config(&config(&settings)).await;
    let key = svc.key("probe").await;
    let check = json!({"type": "health_check", "value": 1.0, "dimensions": {"status": "ok"}});
    let total = |push: &Push| {
        sum_points(push, "mcp_health_checks")
            .first()
            .map(|(_, v)| *v)
    };
    let reply = svc
        .post(Some(&key), &request_of("probe", vec![check.clone()]))
        .await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    let first = otlp.push_where(|p| total(p) == Some(1.0)).await;
    assert_eq!(first.headers["content-encoding"], "gzip");
    assert_eq!(
        first.path, "/v1/metrics",
        "a full /v1/metrics URL is not doubled"
    );
    let reply = svc
        .post(Some(&key), &request_of("probe", vec![check.clone(), check]))
        .await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    otlp.push_where(|p| total(p) == Some(3.0)).await;
    svc.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pushes_over_grpc_with_metadata() {
    let mut otlp = OtlpReceiver::grpc().await;
    let settings = format!(
        "endpoint: '{}', protocol: grpc, export_interval: 1h, service_name: grpc-under-test,
         headers: {{x-token: abc}}",
        otlp.url()
    );
    let mut svc = TestService::with_config(&config(&settings)).await;
    let key = svc.key("auth-server").await;
    let reply = svc.post(Some(&key), &example_request()).await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    svc.shutdown().await;
    let pushes = otlp.received();
    assert_eq!(pushes.len(), 1);
    assert_eq!(pushes[0].headers["x-token"], "abc");
    assert_eq!(resource(&pushes[0])["service.name"], "grpc-under-test");
    let points = sum_points(&pushes[0], "mcp_auth_requests");
    assert_eq!(points.len(), 1);
    assert_eq!(points[0].0["user_hash"], "user_abc123");
    assert_eq!(points[0].1, 1.0);
}

/// The shipped `pipelines.yaml` with the environment a deployment sets.
async fn default_config_with(env: Vec<(&'static str, String)>) -> TestService {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("metrics.db").to_str().unwrap().to_owned();
    let mut vars = vec![
        ("METRICS_SERVICE_HOST", "127.0.0.1".to_owned()),
        ("METRICS_SERVICE_PORT", "0".to_owned()),
        ("SQLITE_DB_PATH", db),
        ("OTEL_PROMETHEUS_ENABLED", "false".to_owned()),
    ];
    vars.extend(env);
    let lookup = move |name: &str| {
        vars.iter()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v.clone())
    };
    let config = mcp_metrics::parse(mcp_metrics::config::EMBEDDED_DEFAULT, "default", &lookup)
        .unwrap_or_else(|errors| panic!("{errors}"));
    let service = mcp_metrics::Service::start(config).await.unwrap();
    let addr = service.receiver_addr("http").unwrap();
    TestService {
        service: Some(service),
        dir,
        addr,
        client: reqwest::Client::new(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn otel_otlp_endpoint_turns_push_on_in_the_default_config() {
    let mut otlp = OtlpReceiver::http().await;
    let mut svc = default_config_with(vec![
        ("OTEL_OTLP_ENDPOINT", otlp.url()),
        ("OTEL_OTLP_EXPORT_INTERVAL_MS", "50".to_owned()),
        ("OTEL_SERVICE_NAME", "from-the-environment".to_owned()),
        // The default batch holds metrics up to 30 s; hand each on at once here.
        ("BATCH_SIZE", "1".to_owned()),
    ])
    .await;
    let key = svc.key("auth-server").await;
    let reply = svc.post(Some(&key), &example_request()).await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    // Pushed on the 50 ms interval, well before shutdown.
    let push = otlp
        .push_where(|p| !sum_points(p, "mcp_auth_requests").is_empty())
        .await;
    assert_eq!(push.path, "/v1/metrics");
    assert_eq!(resource(&push)["service.name"], "from-the-environment");
    svc.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ingestion_goes_on_and_nothing_is_lost_while_the_endpoint_is_down() {
    // A port with nothing listening: every push is refused until a receiver comes up on it.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let settings = format!(
        "endpoint: 'http://127.0.0.1:{port}', export_interval: 50ms, timeout: 1s, max_retries: 1"
    );
    let mut svc = TestService::with_config(&config(&settings)).await;
    let key = svc.key("auth-server").await;
    let metric = json!({"type": "tool_execution", "value": 1.0, "duration_ms": 5.0,
                        "dimensions": {"tool_name": "t"}});
    for _ in 0..20 {
        let reply = svc
            .post(
                Some(&key),
                &request_of("auth-server", vec![metric.clone(); 5]),
            )
            .await;
        assert_eq!(reply.status, 200, "{}", reply.body);
        assert_eq!(reply.body["accepted"], 5);
    }
    // Every reply came once SQLite had committed and the OTLP exporter had recorded.
    let store = svc.store().await;
    assert_eq!(store.row_counts().await.unwrap()["metrics"], 100);
    assert_eq!(store.row_counts().await.unwrap()["tool_metrics"], 100);

    // The endpoint comes back: pushes carry the totals since start (cumulative), so what could
    // not be pushed meanwhile arrives too. (A push collected while it was down, still retrying,
    // may land first with an older total.)
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
        .await
        .unwrap();
    let mut otlp = OtlpReceiver::http_on(listener, None);
    let total = |p: &Push| {
        sum_points(p, "mcp_tool_executions")
            .first()
            .map(|(_, v)| *v)
    };
    otlp.push_where(|p| total(p) == Some(100.0)).await;
    svc.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_is_clean_with_the_endpoint_down() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let settings = format!("endpoint: 'http://127.0.0.1:{port}', timeout: 1s, max_retries: 0");
    let mut svc = TestService::with_config(&config(&settings)).await;
    let key = svc.key("auth-server").await;
    let reply = svc.post(Some(&key), &example_request()).await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    // The last push fails; that is logged, and the service still stops cleanly.
    svc.shutdown().await;
    assert_eq!(svc.rows_eventually("metrics", 1).await, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_otlp_exporters_push_to_their_own_endpoints() {
    let mut grafana = OtlpReceiver::http().await;
    let mut local = OtlpReceiver::http().await;
    let yaml = format!(
        "
receivers:
  http: {{host: 127.0.0.1, port: 0, acknowledgements: true}}
processors:
  auth: {{database: '{{dir}}/metrics.db', refresh_interval: 200ms}}
  validate: {{}}
exporters:
  sqlite: {{path: '{{dir}}/metrics.db', retention_days: 0}}
  otlp/grafana: {{endpoint: '{}', export_interval: 1h, service_name: to-grafana}}
  otlp/local: {{endpoint: '{}', export_interval: 1h, service_name: to-local, dimension_keys: []}}
service:
  pipelines:
    metrics: {{receivers: [http], processors: [auth, validate], exporters: [sqlite, otlp/grafana]}}
    metrics/local: {{receivers: [http], processors: [auth, validate], exporters: [otlp/local]}}
",
        grafana.url(),
        local.url()
    );
    let mut svc = TestService::with_config(&yaml).await;
    let key = svc.key("auth-server").await;
    let reply = svc.post(Some(&key), &example_request()).await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    svc.shutdown().await;

    let to_grafana = grafana.received();
    assert_eq!(to_grafana.len(), 1);
    assert_eq!(resource(&to_grafana[0])["service.name"], "to-grafana");
    let points = sum_points(&to_grafana[0], "mcp_auth_requests");
    assert_eq!(points.len(), 1);
    assert_eq!(points[0].1, 1.0, "not counted twice");
    assert_eq!(points[0].0["method"], "jwt");

    let to_local = local.received();
    assert_eq!(to_local.len(), 1);
    assert_eq!(resource(&to_local[0])["service.name"], "to-local");
    let points = sum_points(&to_local[0], "mcp_auth_requests");
    let only_fixed = labels(&[("service", "auth-server"), ("metric_type", "auth_request")]);
    assert_eq!(points, [(only_fixed, 1.0)]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_rust_log_set_failed_pushes_are_logged_by_the_exporter_alone() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let settings =
        format!("endpoint: 'http://127.0.0.1:{port}', export_interval: 100ms, max_retries: 0");
    let service = Binary::start(&settings).await;
    // Something to push.
    assert_eq!(service.post(&example_request()).await, 200);
    let mut log = service.log_until("OTLP push failed");
    let (code, rest) = service.stop().await;
    assert_eq!(code, 0);
    log.extend(rest);
    let theirs: Vec<&String> = log.iter().filter(|l| l.contains("opentelemetry")).collect();
    assert!(theirs.is_empty(), "RUST_LOG=info: {theirs:#?}");
}

/// On SIGTERM the last push gets its whole `timeout` (10 s by default), not only the 5 s the SDK's
/// own shutdown waits: the receiver answers the first attempt after 6 s, with a 503, and takes the
/// retry. Had the service exited after 5 s, the retry would never come.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_last_push_on_sigterm_gets_its_whole_timeout() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let mut otlp = OtlpReceiver::http_on(listener, Some(Duration::from_secs(6)));
    let settings = format!("endpoint: '{}', export_interval: 1h", otlp.url());
    let service = Binary::start(&settings).await;
    assert_eq!(service.post(&example_request()).await, 200);
    let (code, log) = service.stop().await;
    assert_eq!(code, 0, "{log:#?}");
    let pushes = otlp.received();
    assert_eq!(pushes.len(), 1, "the retried last push: {log:#?}");
    let points = sum_points(&pushes[0], "mcp_auth_requests");
    assert_eq!(points.len(), 1);
    assert_eq!(points[0].1, 1.0);
    let failed = log.iter().find(|l| l.contains("shutdown failed"));
    assert!(failed.is_none(), "{failed:?}");
}
