//! PostgreSQL's two writers, `COPY` (the service's) and `UNNEST` (the benchmark's comparison),
//! store the same rows from the same batch: the one column mapping serves both.

mod common;

use std::sync::Arc;

use common::postgres::PostgresServer;
use mcp_metrics_plugin::{Batch, Metric, MetricType, Request, RequestContext};
use mcp_metrics_store::{Database, PgWrite};
use serde_json::json;

fn batch() -> Batch {
    let at = chrono::Utc::now();
    let context = RequestContext {
        request_id: "req_writers".into(),
        service: "svc".into(),
        version: Some("1.0".into()),
        instance_id: None,
        received_at: at,
        key: None,
        idempotency_key: None,
    };
    let kinds = [
        (
            MetricType::AuthRequest,
            json!({"success": "yes", "method": "jwt\twith tab", "user_hash": "u\\1"}),
        ),
        (
            MetricType::ToolDiscovery,
            json!({"query": "line\nbreak", "results_count": "5", "top_k_services": 2.0}),
        ),
        (
            MetricType::ToolExecution,
            json!({"tool_name": "t", "success": 0, "server_path": null}),
        ),
        (MetricType::HealthCheck, json!({"status": "ok"})),
        (MetricType::Custom, json!({})),
    ];
    let metrics = kinds
        .into_iter()
        .enumerate()
        .map(|(index, (metric_type, dimensions))| Metric {
            index,
            metric_type,
            timestamp: at + chrono::Duration::microseconds(index as i64),
            value: index as f64 + 0.5,
            duration_ms: (index % 2 == 0).then_some(12.25),
            dimensions: dimensions.as_object().cloned().unwrap(),
            metadata: json!({"error_code": 500, "input_size_bytes": "64", "embedding_time_ms": 1.5,
                             "authenticated_service": "gw"})
            .as_object()
            .cloned()
            .unwrap(),
        })
        .collect();
    Batch::new(
        Request {
            context: Arc::new(context),
            metrics,
        },
        None,
    )
}

/// Every row of every metrics table, as JSON text, in a stable order.
async fn rows(url: &str) -> Vec<String> {
    let Database::Postgres(store) = Database::open(url).await.unwrap() else {
        unreachable!()
    };
    let mut all = Vec::new();
    for table in mcp_metrics_store::METRIC_TABLES {
        let sql =
            format!("SELECT to_jsonb(t) - 'id' - 'created_at' FROM {table} t ORDER BY timestamp");
        let found: Vec<serde_json::Value> = sqlx::query_scalar(sqlx::AssertSqlSafe(sql))
            .fetch_all(store.pool())
            .await
            .unwrap();
        all.extend(found.iter().map(|row| format!("{table}: {row}")));
    }
    all
}

#[tokio::test(flavor = "multi_thread")]
async fn copy_and_unnest_store_the_same_rows() {
    let server = PostgresServer::start();
    let batch = batch();
    let mut stored = Vec::new();
    for (name, method) in [
        ("writers_copy", PgWrite::Copy),
        ("writers_unnest", PgWrite::Unnest),
    ] {
        let url = server.create_database(name);
        let Database::Postgres(store) = Database::open(&url).await.unwrap() else {
            unreachable!()
        };
        store.write_batch_with(&batch, method).await.unwrap();
        stored.push(rows(&url).await);
    }
    assert_eq!(
        stored[0].len(),
        5 + 3,
        "every metric, and the three typed ones again"
    );
    assert_eq!(stored[0], stored[1]);
    let auth = stored[0]
        .iter()
        .find(|r| r.starts_with("auth_metrics"))
        .unwrap();
    assert!(auth.contains(r#""method":"jwt\twith tab""#), "{auth}");
    assert!(auth.contains(r#""success":true"#), "{auth}");
    assert!(auth.contains(r#""user_hash":"u\\1""#), "{auth}");
}
