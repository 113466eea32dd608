//! The `prometheus` exporter end to end: a real service on loopback, real requests, a real scrape
//! read by a strict parser of the text format (and by `prometheus-parse`).

mod common;
#[path = "common/exposition.rs"]
mod exposition;

use common::*;
use exposition::Exposition;
use serde_json::json;

/// The default pipeline plus a `prometheus` exporter; requests are answered once every exporter
/// has the metrics (acknowledgements), so a scrape right after a reply sees them.
fn config(exporter_id: &str, settings: &str) -> String {
    format!(
        "
receivers:
  http: {{host: 127.0.0.1, port: 0, acknowledgements: true}}
processors:
  auth: {{database: '{{dir}}/metrics.db', refresh_interval: 200ms}}
  validate: {{}}
exporters:
  sqlite: {{path: '{{dir}}/metrics.db', retention_days: 0}}
  {exporter_id}: {{host: 127.0.0.1, port: 0, {settings}}}
service:
  pipelines:
    metrics: {{receivers: [http], processors: [auth, validate], exporters: [sqlite, {exporter_id}]}}
"
    )
}

async fn scrape(svc: &TestService, exporter_id: &str) -> (String, Exposition) {
    let addr = svc
        .service
        .as_ref()
        .unwrap()
        .exporter_addr(exporter_id)
        .expect("the exporter serves");
    let response = svc
        .client
        .get(format!("http://{addr}/metrics"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let content_type = response.headers()["content-type"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(
        content_type.starts_with("text/plain; version=0.0.4"),
        "{content_type}"
    );
    let text = response.text().await.unwrap();
    let parsed = exposition::parse(&text);
    // An independent reader takes it too and finds as many series: one per counter or gauge
    // line, one per histogram series (its buckets), one per `_sum` and per `_count` line. Its line
    // pattern skips label values with escapes (valid, and checked above), so not those.
    if text.contains('\\') {
        return (text, parsed);
    }
    let other = prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_owned()))).unwrap();
    let histogram_series = parsed
        .families
        .iter()
        .filter(|(_, f)| f.kind == "histogram")
        .map(|(name, _)| parsed.series(&format!("{name}_count")).len())
        .sum::<usize>();
    let lines = parsed
        .samples
        .keys()
        .filter(|k| !k.contains("_bucket{"))
        .count();
    assert_eq!(other.samples.len(), lines + histogram_series, "{text}");
    (text, parsed)
}

/// One metric of each type, each with its own value, duration and dimensions.
fn one_of_each() -> Vec<serde_json::Value> {
    vec![
        json!({"type": "auth_request", "value": 1.0, "duration_ms": 45.2,
               "dimensions": {"method": "jwt", "success": true, "server": "mcpgw", "user_hash": "user_abc123"}}),
        json!({"type": "tool_discovery", "value": 2.0, "duration_ms": 120.0,
               "dimensions": {"query": "weather", "results_count": 5}}),
        json!({"type": "tool_execution", "value": 3.0, "duration_ms": 2500.0,
               "dimensions": {"tool_name": "get_weather", "success": false}}),
        json!({"type": "registry_operation", "value": 4.0, "duration_ms": 8.0,
               "dimensions": {"operation": "register"}}),
        json!({"type": "health_check", "value": 5.0, "duration_ms": 0.5,
               "dimensions": {"status": "healthy"}}),
        json!({"type": "protocol_latency", "value": 6.0, "duration_ms": 301000.0,
               "dimensions": {"phase": "initialize"}}),
        json!({"type": "custom", "value": 7.5, "dimensions": {"name": "cache_hits"}}),
    ]
}

#[tokio::test]
async fn every_metric_type_is_scraped_with_exact_series_and_values() {
    let yaml = config("prometheus", "histogram_buckets: [0.01, 0.1, 1, 300]");
    let mut svc = TestService::with_config(&yaml).await;
    let key = svc.key("auth-server").await;
    let reply = svc
        .post(Some(&key), &request_of("auth-server", one_of_each()))
        .await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert_eq!(reply.body["accepted"], 7);

    let (text, scraped) = scrape(&svc, "prometheus").await;
    let svc_labels = |metric_type: &'static str, dims: &[(&'static str, &'static str)]| {
        let mut labels = vec![("service", "auth-server"), ("metric_type", metric_type)];
        labels.extend_from_slice(dims);
        labels
    };
    let auth = svc_labels(
        "auth_request",
        &[
            ("method", "jwt"),
            ("success", "True"),
            ("server", "mcpgw"),
            ("user_hash", "user_abc123"),
        ],
    );
    let discovery = svc_labels(
        "tool_discovery",
        &[("query", "weather"), ("results_count", "5")],
    );
    let execution = svc_labels(
        "tool_execution",
        &[("tool_name", "get_weather"), ("success", "False")],
    );
    let registry = svc_labels("registry_operation", &[("operation", "register")]);
    let health = svc_labels("health_check", &[("status", "healthy")]);
    let latency = svc_labels("protocol_latency", &[("phase", "initialize")]);
    let custom = svc_labels("custom", &[("name", "cache_hits")]);

    // The counters, by the names the dashboards query.
    let counters = [
        ("mcp_auth_requests_total", &auth, 1.0),
        ("mcp_tool_discovery_total", &discovery, 2.0),
        ("mcp_tool_executions_total", &execution, 3.0),
        ("mcp_registry_operations_total", &registry, 4.0),
        ("mcp_health_checks_total", &health, 5.0),
        ("mcp_protocol_latency_measurements_total", &latency, 6.0),
        ("mcp_custom_metrics_total", &custom, 7.5),
    ];
    for (name, labels, value) in counters {
        assert_eq!(scraped.families[name].kind, "counter", "{name}");
        assert_eq!(scraped.series(name).len(), 1, "{name}: {text}");
        assert_eq!(scraped.value(name, labels), Some(value), "{name}: {text}");
    }

    // The duration histograms, in seconds, with the configured buckets.
    let histograms = [
        (
            "mcp_auth_request_duration_seconds",
            &auth,
            0.0452,
            [0.0, 1.0, 1.0, 1.0, 1.0],
        ),
        (
            "mcp_tool_discovery_duration_seconds",
            &discovery,
            0.12,
            [0.0, 0.0, 1.0, 1.0, 1.0],
        ),
        (
            "mcp_tool_execution_duration_seconds",
            &execution,
            2.5,
            [0.0, 0.0, 0.0, 1.0, 1.0],
        ),
        (
            "mcp_registry_operation_duration_seconds",
            &registry,
            0.008,
            [1.0, 1.0, 1.0, 1.0, 1.0],
        ),
        (
            "mcp_health_check_duration_seconds",
            &health,
            0.0005,
            [1.0, 1.0, 1.0, 1.0, 1.0],
        ),
        (
            "mcp_protocol_latency_seconds",
            &latency,
            301.0,
            [0.0, 0.0, 0.0, 0.0, 1.0],
        ),
    ];
    for (name, labels, seconds, cumulative) in histograms {
        assert_eq!(scraped.families[name].kind, "histogram", "{name}");
        let sum = scraped.value(&format!("{name}_sum"), labels).unwrap();
        assert!(
            (sum - seconds).abs() < 1e-9,
            "{name}: sum {sum} != {seconds}"
        );
        assert_eq!(scraped.value(&format!("{name}_count"), labels), Some(1.0));
        let buckets = scraped.buckets(name, labels);
        let les: Vec<&str> = buckets.iter().map(|(le, _)| le.as_str()).collect();
        assert_eq!(les, ["0.01", "0.1", "1", "300", "+Inf"], "{name}");
        let counts: Vec<f64> = buckets.iter().map(|(_, n)| *n).collect();
        assert_eq!(counts, cumulative, "{name}");
    }
    // A metric without duration_ms adds nothing to its histogram.
    assert!(
        scraped
            .series("mcp_custom_metric_duration_seconds_count")
            .is_empty()
    );

    // Nothing else of ours: exactly these business families.
    let ours: Vec<&str> = scraped
        .families
        .keys()
        .map(String::as_str)
        .filter(|n| n.starts_with("mcp_") && !n.starts_with("mcp_metrics_"))
        .collect();
    assert_eq!(ours.len(), 7 + 6, "{ours:?}");

    // The same metrics landed in SQLite.
    svc.shutdown().await;
    assert_eq!(svc.rows_eventually("metrics", 7).await, 7);
}

#[tokio::test]
async fn values_add_up_across_requests_and_services() {
    let mut svc =
        TestService::with_config(&config("prometheus/sum", "self_telemetry: false")).await;
    let auth = svc.key("auth-server").await;
    let registry = svc.key("registry").await;
    let metric = json!({"type": "auth_request", "value": 1.0, "duration_ms": 10.0,
                        "dimensions": {"method": "jwt", "success": true}});
    for _ in 0..3 {
        let reply = svc
            .post(
                Some(&auth),
                &request_of("auth-server", vec![metric.clone(), metric.clone()]),
            )
            .await;
        assert_eq!(reply.status, 200, "{}", reply.body);
    }
    let reply = svc
        .post(
            Some(&registry),
            &request_of("registry", vec![metric.clone()]),
        )
        .await;
    assert_eq!(reply.status, 200, "{}", reply.body);

    let (_, scraped) = scrape(&svc, "prometheus/sum").await;
    let labels = |service| {
        [
            ("service", service),
            ("metric_type", "auth_request"),
            ("method", "jwt"),
            ("success", "True"),
        ]
    };
    let name = "mcp_auth_requests_total";
    assert_eq!(scraped.value(name, &labels("auth-server")), Some(6.0));
    assert_eq!(scraped.value(name, &labels("registry")), Some(1.0));
    let count = "mcp_auth_request_duration_seconds_count";
    assert_eq!(scraped.value(count, &labels("auth-server")), Some(6.0));
    // Without self-telemetry, none of the service's own metrics are shown.
    assert!(
        !scraped
            .families
            .keys()
            .any(|n| n.starts_with("mcp_metrics_"))
    );
    svc.shutdown().await;
}

#[tokio::test]
async fn label_names_are_sanitised_and_values_are_text() {
    let mut svc =
        TestService::with_config(&config("prometheus/labels", "self_telemetry: false")).await;
    let key = svc.key("svc").await;
    let metric = json!({"type": "custom", "value": 1.0, "dimensions": {
        "server.name": "a", "http-status": 200, "2fa": true, "service": "spoofed",
        "__name__": "x", "ratio": 0.25, "nested": {"k": [1, 2]}, "nothing": null,
        "quote": "say \"hi\"\\n"
    }});
    let reply = svc.post(Some(&key), &request_of("svc", vec![metric])).await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    let (text, scraped) = scrape(&svc, "prometheus/labels").await;
    let labels = [
        ("service", "svc"),
        ("metric_type", "custom"),
        ("server_name", "a"),
        ("http_status", "200"),
        ("_2fa", "True"),
        ("exported_service", "spoofed"),
        ("_name__", "x"),
        ("ratio", "0.25"),
        ("nested", r#"{"k":[1,2]}"#),
        ("quote", "say \"hi\"\\n"),
    ];
    assert_eq!(
        scraped.value("mcp_custom_metrics_total", &labels),
        Some(1.0),
        "{text}"
    );
    svc.shutdown().await;
}

#[tokio::test]
async fn label_names_and_label_bytes_are_bounded_and_cuts_counted() {
    let mut svc = TestService::with_config(&config("prometheus/wide", "")).await;
    let key = svc.key("svc").await;
    let long_name = json!({"type": "custom", "value": 1.0, "dimensions": {"n".repeat(150): "a"}});
    // Ten dimensions of 258 bytes each (name and value): with `service="svc"` and
    // `metric_type="health_check"` (33 bytes), seven fit in 2 KiB.
    let wide: serde_json::Map<String, serde_json::Value> = (0..10)
        .map(|i| (format!("k{i}"), json!("v".repeat(256))))
        .collect();
    let wide = json!({"type": "health_check", "value": 1.0, "dimensions": wide});
    let reply = svc
        .post(Some(&key), &request_of("svc", vec![long_name, wide]))
        .await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    let (text, scraped) = scrape(&svc, "prometheus/wide").await;

    let name = "n".repeat(100);
    let labels = [
        ("service", "svc"),
        ("metric_type", "custom"),
        (name.as_str(), "a"),
    ];
    assert_eq!(
        scraped.value("mcp_custom_metrics_total", &labels),
        Some(1.0),
        "the name is cut to 100 characters: {text}"
    );

    let value = "v".repeat(256);
    let kept: Vec<(String, String)> = (0..7).map(|i| (format!("k{i}"), value.clone())).collect();
    let mut labels = vec![("service", "svc"), ("metric_type", "health_check")];
    labels.extend(kept.iter().map(|(k, v)| (k.as_str(), v.as_str())));
    assert_eq!(
        scraped.value("mcp_health_checks_total", &labels),
        Some(1.0),
        "k7 to k9 are left out: {text}"
    );
    let dropped = "mcp_metrics_exporter_dimensions_dropped_metric_points_total";
    let by = |metric_type| {
        [
            ("exporter", "prometheus/wide"),
            ("metric_type", metric_type),
        ]
    };
    assert_eq!(
        scraped.value(dropped, &by("health_check")),
        Some(1.0),
        "{text}"
    );
    assert_eq!(scraped.value(dropped, &by("custom")), None, "{text}");
    svc.shutdown().await;
}

#[tokio::test]
async fn an_allow_list_keeps_only_the_named_dimensions() {
    let yaml = config(
        "prometheus/allow",
        "self_telemetry: false, dimension_keys: [method, success]",
    );
    let mut svc = TestService::with_config(&yaml).await;
    let key = svc.key("auth-server").await;
    let metrics = (0..5)
        .map(|i| json!({"type": "auth_request", "value": 1.0,
                        "dimensions": {"method": "jwt", "success": true, "user_hash": format!("user_{i}")}}))
        .collect();
    let reply = svc
        .post(Some(&key), &request_of("auth-server", metrics))
        .await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    let (_, scraped) = scrape(&svc, "prometheus/allow").await;
    let series = scraped.series("mcp_auth_requests_total");
    assert_eq!(series.len(), 1, "{series:?}");
    let labels = [
        ("service", "auth-server"),
        ("metric_type", "auth_request"),
        ("method", "jwt"),
        ("success", "True"),
    ];
    assert_eq!(scraped.value("mcp_auth_requests_total", &labels), Some(5.0));
    svc.shutdown().await;
}

#[tokio::test]
async fn series_past_the_cardinality_limit_are_folded_and_counted() {
    let yaml = config("prometheus/capped", "cardinality_limit: 3");
    let mut svc = TestService::with_config(&yaml).await;
    let key = svc.key("svc").await;
    let metrics: Vec<_> = (0..10)
        .map(|i| json!({"type": "custom", "value": 1.0, "duration_ms": 1.0, "dimensions": {"id": i}}))
        .collect();
    // Twice: known series stay known, new ones keep overflowing; nothing is lost from the totals.
    for _ in 0..2 {
        let reply = svc
            .post(Some(&key), &request_of("svc", metrics.clone()))
            .await;
        assert_eq!(reply.status, 200, "{}", reply.body);
    }
    let (text, scraped) = scrape(&svc, "prometheus/capped").await;
    let series = scraped.series("mcp_custom_metrics_total");
    assert_eq!(series.len(), 4, "3 series and the overflow one: {text}");
    for id in ["0", "1", "2"] {
        let labels = [("service", "svc"), ("metric_type", "custom"), ("id", id)];
        assert_eq!(
            scraped.value("mcp_custom_metrics_total", &labels),
            Some(2.0)
        );
    }
    let overflow = [("metric_type", "custom"), ("otel_metric_overflow", "true")];
    assert_eq!(
        scraped.value("mcp_custom_metrics_total", &overflow),
        Some(14.0)
    );
    assert_eq!(
        scraped.value("mcp_custom_metric_duration_seconds_count", &overflow),
        Some(14.0)
    );
    let cut = "mcp_metrics_exporter_cardinality_overflow_metric_points_total";
    let labels = [("exporter", "prometheus/capped"), ("metric_type", "custom")];
    assert_eq!(scraped.value(cut, &labels), Some(14.0), "{text}");
    svc.shutdown().await;
}

#[tokio::test]
async fn two_prometheus_exporters_keep_their_own_series() {
    let yaml = "
receivers:
  http: {host: 127.0.0.1, port: 0, acknowledgements: true}
processors:
  auth: {database: '{dir}/metrics.db', refresh_interval: 200ms}
  validate: {}
exporters:
  sqlite: {path: '{dir}/metrics.db', retention_days: 0}
  prometheus/all: {host: 127.0.0.1, port: 0, self_telemetry: false}
  prometheus/methods: {host: 127.0.0.1, port: 0, self_telemetry: false, dimension_keys: [method]}
service:
  pipelines:
    metrics: {receivers: [http], processors: [auth, validate], exporters: [sqlite, prometheus/all]}
    metrics/methods: {receivers: [http], processors: [auth, validate], exporters: [prometheus/methods]}
";
    let mut svc = TestService::with_config(yaml).await;
    let key = svc.key("svc").await;
    let metric = json!({"type": "tool_execution", "value": 1.0, "dimensions": {"method": "m", "tool_name": "t"}});
    let reply = svc.post(Some(&key), &request_of("svc", vec![metric])).await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    let base = [
        ("service", "svc"),
        ("metric_type", "tool_execution"),
        ("method", "m"),
    ];
    let (_, all) = scrape(&svc, "prometheus/all").await;
    let mut with_tool = base.to_vec();
    with_tool.push(("tool_name", "t"));
    assert_eq!(
        all.value("mcp_tool_executions_total", &with_tool),
        Some(1.0)
    );
    assert_eq!(all.series("mcp_tool_executions_total").len(), 1);
    let (_, methods) = scrape(&svc, "prometheus/methods").await;
    assert_eq!(methods.value("mcp_tool_executions_total", &base), Some(1.0));
    assert_eq!(methods.series("mcp_tool_executions_total").len(), 1);
    svc.shutdown().await;
}

/// The shipped `pipelines.yaml` with the environment a deployment sets.
async fn default_config_with(env: &[(&str, &str)]) -> TestService {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("metrics.db").to_str().unwrap().to_owned();
    let mut vars: Vec<(String, String)> = vec![
        ("METRICS_SERVICE_HOST".into(), "127.0.0.1".into()),
        ("METRICS_SERVICE_PORT".into(), "0".into()),
        ("SQLITE_DB_PATH".into(), db),
    ];
    vars.extend(env.iter().map(|(k, v)| (k.to_string(), v.to_string())));
    // The example metric is from 2024: with the default 90 days, a retention pass that runs
    // after it is written deletes it again. The first lookup wins, so a test can set its own.
    vars.push(("METRICS_RETENTION_DAYS".into(), "0".into()));
    let lookup = move |name: &str| vars.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone());
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

#[tokio::test]
async fn the_default_config_serves_the_endpoint_on_the_configured_port() {
    let mut svc = default_config_with(&[
        ("OTEL_PROMETHEUS_PORT", "0"),
        ("HISTOGRAM_BUCKET_BOUNDARIES", "0.05,0.5,5"),
        ("OTEL_SERVICE_NAME", "metrics-under-test"),
        // The default batch holds metrics up to 30 s; hand each on at once here.
        ("BATCH_SIZE", "1"),
    ])
    .await;
    let addr = svc
        .service
        .as_ref()
        .unwrap()
        .exporter_addr("prometheus")
        .unwrap();
    // Issue 14: on the service's host (METRICS_SERVICE_HOST=127.0.0.1 here), not 0.0.0.0.
    assert!(
        addr.ip().is_loopback(),
        "listens on METRICS_SERVICE_HOST: {addr}"
    );
    let key = svc.key("auth-server").await;
    let reply = svc.post(Some(&key), &example_request()).await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    // Without acknowledgements the reply comes once queued: poll until the exporter has it.
    let url = format!("http://127.0.0.1:{}/metrics", addr.port());
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
    let text = loop {
        let text = svc.get_text(&url).await;
        if text.contains("mcp_auth_requests_total") || tokio::time::Instant::now() > deadline {
            break text;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    };
    let scraped = exposition::parse(&text);
    let labels = [
        ("service", "auth-server"),
        ("metric_type", "auth_request"),
        ("method", "jwt"),
        ("success", "True"),
        ("server", "mcpgw"),
        ("user_hash", "user_abc123"),
    ];
    assert_eq!(
        scraped.value("mcp_auth_requests_total", &labels),
        Some(1.0),
        "{text}"
    );
    let les: Vec<String> = scraped
        .buckets("mcp_auth_request_duration_seconds", &labels)
        .into_iter()
        .map(|(le, _)| le)
        .collect();
    assert_eq!(les, ["0.05", "0.5", "5", "+Inf"]);
    let target = scraped.series("target_info");
    assert_eq!(target[0].0["service_name"], "metrics-under-test");
    svc.shutdown().await;
}

#[tokio::test]
async fn otel_prometheus_enabled_false_turns_the_endpoint_off() {
    let mut svc = default_config_with(&[("OTEL_PROMETHEUS_ENABLED", "false")]).await;
    assert_eq!(
        svc.service.as_ref().unwrap().exporter_addr("prometheus"),
        None
    );
    // Ingestion is unaffected.
    let key = svc.key("auth-server").await;
    let reply = svc.post(Some(&key), &example_request()).await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    svc.shutdown().await;
    assert_eq!(svc.rows_eventually("metrics", 1).await, 1);
}

#[tokio::test]
async fn a_taken_port_fails_start_up_with_its_address() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let yaml = config("prometheus", "").replace("port: 0, }", &format!("port: {port}}}"));
    let dir = tempfile::tempdir().unwrap();
    let text = yaml.replace("{dir}", dir.path().to_str().unwrap());
    let config = mcp_metrics::parse(&text, "test", &|_| None).unwrap();
    let error = match mcp_metrics::Service::start(config).await {
        Ok(_) => panic!("started on a taken port"),
        Err(error) => error.to_string(),
    };
    assert!(error.contains(&format!("127.0.0.1:{port}")), "{error}");
    assert!(error.starts_with("exporters.prometheus"), "{error}");
}
