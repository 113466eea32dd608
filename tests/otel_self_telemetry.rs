//! The service's own telemetry on the scrape endpoint. The counters are per process, so this file
//! holds a single test: nothing else in its process records.

mod common;
#[path = "common/exposition.rs"]
mod exposition;

use common::*;
use serde_json::json;

#[tokio::test]
async fn receivers_queues_and_exporters_are_counted() {
    let yaml = "
receivers:
  http: {host: 127.0.0.1, port: 0, acknowledgements: true}
processors:
  auth: {database: '{dir}/metrics.db', refresh_interval: 200ms}
  rate_limit: {}
  validate: {}
exporters:
  sqlite:
    path: '{dir}/metrics.db'
    sending_queue: {queue_size: 500}
  prometheus: {host: 127.0.0.1, port: 0}
service:
  pipelines:
    metrics: {receivers: [http], processors: [auth, rate_limit, validate], exporters: [sqlite, prometheus]}
";
    let mut svc = TestService::with_config(yaml).await;
    let key = svc.key("auth-server").await;
    // Two good metrics and one of an unknown type: 2 accepted, 1 refused.
    let metrics = vec![
        metric("auth_request"),
        metric("tool_execution"),
        metric("nonsense"),
    ];
    let reply = svc
        .post(Some(&key), &request_of("auth-server", metrics))
        .await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    // A request refused from its head: its body is never read, so its metrics are not counted;
    // the request is, by status.
    let metrics = vec![metric("auth_request"), metric("custom")];
    let reply = svc
        .post(Some("wrong"), &request_of("auth-server", metrics))
        .await;
    assert_eq!(reply.status, 401, "{}", reply.body);
    // Unreadable: counted as a request, no points known.
    let reply = svc
        .client
        .post(svc.url("/metrics"))
        .header("X-API-Key", &key)
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(reply.status(), 400);

    let addr = svc
        .service
        .as_ref()
        .unwrap()
        .exporter_addr("prometheus")
        .unwrap();
    let url = format!("http://{addr}/metrics");
    let text = svc.get_text(&url).await;
    let scraped = exposition::parse(&text);
    let value = |name: &str, labels: &[(&str, &str)]| scraped.value(name, labels);
    let http = [("receiver", "http")];
    let accepted = "mcp_metrics_receiver_accepted_metric_points_total";
    let refused = "mcp_metrics_receiver_refused_metric_points_total";
    assert_eq!(value(accepted, &http), Some(2.0), "{text}");
    assert_eq!(value(refused, &http), Some(1.0), "{text}");
    let requests = "mcp_metrics_receiver_request_duration_seconds_count";
    for status in ["200", "401", "400"] {
        let labels = [("receiver", "http"), ("status_code", status)];
        assert_eq!(value(requests, &labels), Some(1.0), "{status}: {text}");
    }
    let sent = "mcp_metrics_exporter_sent_metric_points_total";
    assert_eq!(value(sent, &[("exporter", "sqlite")]), Some(2.0));
    assert_eq!(value(sent, &[("exporter", "prometheus")]), Some(2.0));
    let failed = "mcp_metrics_exporter_send_failed_metric_points_total";
    assert!(scraped.series(failed).is_empty(), "nothing failed: {text}");
    let capacity = "mcp_metrics_exporter_queue_capacity";
    assert_eq!(value(capacity, &[("exporter", "sqlite")]), Some(500.0));
    assert_eq!(
        value(capacity, &[("exporter", "prometheus")]),
        Some(10_000.0)
    );
    let size = "mcp_metrics_exporter_queue_size";
    assert_eq!(value(size, &[("exporter", "sqlite")]), Some(0.0));
    assert_eq!(scraped.families[size].kind, "gauge");

    // A request larger than the exporter's whole queue is refused; its points count as refused.
    let many: Vec<_> = (0..501)
        .map(|_| json!({"type": "custom", "value": 1.0}))
        .collect();
    let reply = svc.post(Some(&key), &request_of("auth-server", many)).await;
    assert_eq!(
        reply.status, 413,
        "more than the whole queue: {}",
        reply.body
    );
    let text = svc.get_text(&url).await;
    let scraped = exposition::parse(&text);
    assert_eq!(scraped.value(refused, &http), Some(1.0 + 501.0), "{text}");

    // Requests over a key's limit are counted by the key's service.
    let store = svc.store().await;
    let (_, limited) = store
        .create_key("limited-service", Some(1), false)
        .await
        .unwrap();
    let body = request_of("claims-another-name", vec![metric("custom")]);
    assert_eq!(svc.post(Some(&limited), &body).await.status, 200);
    assert_eq!(svc.post(Some(&limited), &body).await.status, 429);
    assert_eq!(svc.post(Some(&limited), &body).await.status, 429);
    let text = svc.get_text(&url).await;
    let scraped = exposition::parse(&text);
    let rate_limited = "mcp_metrics_rate_limited_requests_total";
    assert_eq!(
        scraped.value(rate_limited, &[("service", "limited-service")]),
        Some(2.0),
        "{text}"
    );
    svc.shutdown().await;
}
