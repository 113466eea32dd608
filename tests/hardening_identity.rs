//! Issue 14, item 4: a key for one service writing as another is refused
//! (`service_identity: refuse`), or visible wherever the data lands (`record`, the default): the
//! generic table's metadata, the typed tables' `authenticated_service` column and the
//! `authenticated_service` label of the Prometheus series. `overwrite` stores the key's service
//! everywhere; `keep` trusts the client, as the Python service did.

mod common;

use std::time::Duration;

use common::*;
use serde_json::json;
use sqlx::Row;

fn pipeline(enrich: &str) -> String {
    format!(
        "
receivers:
  http: {{host: 127.0.0.1, port: 0}}
processors:
  auth: {{database: '{{dir}}/metrics.db', refresh_interval: 200ms}}
  validate: {{}}
  enrich: {enrich}
exporters:
  sqlite: {{path: '{{dir}}/metrics.db', retention_days: 0}}
  prometheus: {{host: 127.0.0.1, port: 0}}
service:
  pipelines:
    metrics: {{receivers: [http], processors: [auth, validate, enrich], exporters: [sqlite, prometheus]}}
"
    )
}

/// One metric of each typed table, as `service`.
fn typed_request(service: &str) -> serde_json::Value {
    request_of(
        service,
        vec![
            json!({"type": "auth_request", "value": 1.0, "duration_ms": 5.0,
                   "dimensions": {"method": "jwt", "success": true},
                   "metadata": {"authenticated_service": "forged"}}),
            json!({"type": "tool_execution", "value": 1.0, "dimensions": {"tool_name": "t"}}),
            json!({"type": "tool_discovery", "value": 1.0, "dimensions": {"query": "q"}}),
        ],
    )
}

/// `(service, authenticated_service)` of every row of a typed table.
async fn typed_rows(svc: &TestService, table: &str) -> Vec<(String, Option<String>)> {
    let sql = format!("SELECT service, authenticated_service FROM {table} ORDER BY id");
    service_pairs(svc, sql).await
}

/// `(service, metadata.authenticated_service)` of every row of `metrics`.
async fn generic_rows(svc: &TestService) -> Vec<(String, Option<String>)> {
    let sql = "SELECT service, json_extract(metadata, '$.authenticated_service') FROM metrics \
               ORDER BY id";
    service_pairs(svc, sql.to_owned()).await
}

/// The two columns `sql` selects, row by row.
async fn service_pairs(svc: &TestService, sql: String) -> Vec<(String, Option<String>)> {
    let store = svc.store().await;
    sqlx::query(sqlx::AssertSqlSafe(sql))
        .fetch_all(store.pool())
        .await
        .unwrap()
        .iter()
        .map(|row| (row.get(0), row.get(1)))
        .collect()
}

/// The `mcp_auth_requests_total` series lines of the scrape endpoint, once `wanted` of them
/// are there (recording is asynchronous).
async fn auth_series(svc: &TestService, wanted: usize) -> Vec<String> {
    let addr = svc
        .service
        .as_ref()
        .unwrap()
        .exporter_addr("prometheus")
        .unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let text = svc.get_text(&format!("http://{addr}/metrics")).await;
        let lines: Vec<String> = text
            .lines()
            .filter(|l| l.starts_with("mcp_auth_requests_total{"))
            .map(str::to_owned)
            .collect();
        if lines.len() >= wanted || tokio::time::Instant::now() > deadline {
            return lines;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn refuse_answers_403_service_mismatch_and_stores_nothing() {
    let svc = TestService::with_config(&pipeline("{service_identity: refuse}")).await;
    let key = svc.key("svc").await;
    let reply = svc.post(Some(&key), &typed_request("other")).await;
    assert_eq!(reply.status, 403, "{}", reply.body);
    assert_eq!(reply.error(), "service_mismatch");
    assert!(reply.body["message"].as_str().unwrap().contains("\"svc\""));
    let reply = svc.post(Some(&key), &typed_request("svc")).await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert_eq!(svc.rows_eventually("metrics", 3).await, 3);
    assert!(generic_rows(&svc).await.iter().all(|(s, _)| s == "svc"));
    for table in ["auth_metrics", "tool_metrics", "discovery_metrics"] {
        assert_eq!(
            typed_rows(&svc, table).await,
            [("svc".into(), None)],
            "{table}"
        );
    }
    let series = auth_series(&svc, 1).await;
    assert_eq!(series.len(), 1, "{series:?}");
    assert!(has_label(&series[0], "service", "svc"), "{series:?}");
}

/// Whether a series line has the label `name="value"` (not merely one whose name ends in `name`).
fn has_label(line: &str, name: &str, value: &str) -> bool {
    let label = format!("{name}=\"{value}\"");
    line.contains(&format!("{{{label}")) || line.contains(&format!(",{label}"))
}

#[tokio::test]
async fn record_is_the_default_and_shows_the_key_s_service_in_every_store() {
    let svc = TestService::with_config(&pipeline("{}")).await;
    let key = svc.key("svc").await;
    for service in ["other", "svc"] {
        let reply = svc.post(Some(&key), &typed_request(service)).await;
        assert_eq!(reply.status, 200, "{}", reply.body);
    }
    assert_eq!(svc.rows_eventually("metrics", 6).await, 6);
    // The client's claim of `authenticated_service` is replaced by the key's.
    let generic = generic_rows(&svc).await;
    assert_eq!(generic.len(), 6);
    for (index, (service, authenticated)) in generic.iter().enumerate() {
        assert_eq!(service, if index < 3 { "other" } else { "svc" });
        assert_eq!(authenticated.as_deref(), Some("svc"));
    }
    for table in ["auth_metrics", "tool_metrics", "discovery_metrics"] {
        assert_eq!(
            typed_rows(&svc, table).await,
            [
                ("other".into(), Some("svc".into())),
                ("svc".into(), Some("svc".into()))
            ],
            "{table}"
        );
    }
    // Prometheus: the mismatched series carries the key's service; the honest one is as before.
    let series = auth_series(&svc, 2).await;
    assert_eq!(series.len(), 2, "{series:?}");
    let other = series
        .iter()
        .find(|l| has_label(l, "service", "other"))
        .unwrap();
    assert!(has_label(other, "authenticated_service", "svc"), "{other}");
    let honest = series
        .iter()
        .find(|l| has_label(l, "service", "svc"))
        .unwrap();
    assert!(!honest.contains("authenticated_service"), "{honest}");
}

#[tokio::test]
async fn overwrite_stores_the_key_s_service_and_keep_the_client_s() {
    for (mode, stored) in [("overwrite", "svc"), ("keep", "other")] {
        let svc =
            TestService::with_config(&pipeline(&format!("{{service_identity: {mode}}}"))).await;
        let key = svc.key("svc").await;
        let reply = svc.post(Some(&key), &typed_request("other")).await;
        assert_eq!(reply.status, 200, "{mode}: {}", reply.body);
        assert_eq!(svc.rows_eventually("metrics", 3).await, 3);
        assert!(
            generic_rows(&svc)
                .await
                .iter()
                .all(|r| *r == (stored.into(), None)),
            "{mode}"
        );
        assert_eq!(
            typed_rows(&svc, "auth_metrics").await,
            [(stored.into(), None)],
            "{mode}"
        );
        let series = auth_series(&svc, 1).await;
        assert!(
            series[0].contains(&format!("service=\"{stored}\"")),
            "{mode}: {series:?}"
        );
        assert!(
            !series[0].contains("authenticated_service"),
            "{mode}: {series:?}"
        );
    }
}
