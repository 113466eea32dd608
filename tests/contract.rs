//! The wire contract end to end: a real server on loopback, a real SQLite file.

mod common;

use common::*;
use serde_json::json;
use sqlx::Row;

#[tokio::test]
async fn the_contract_example_is_accepted_and_stored() {
    let mut svc = TestService::start().await;
    let key = svc.key("auth-server").await;
    let reply = svc.post(Some(&key), &example_request()).await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert_eq!(reply.body["status"], "success");
    assert_eq!(reply.body["accepted"], 1);
    assert_eq!(reply.body["rejected"], 0);
    assert_eq!(reply.body["errors"], json!([]));
    let request_id = reply.body["request_id"].as_str().unwrap().to_owned();
    assert!(request_id.starts_with("req_"));
    svc.shutdown().await;

    let store = svc.store().await;
    let row = sqlx::query("SELECT * FROM metrics")
        .fetch_one(store.pool())
        .await
        .unwrap();
    assert_eq!(row.get::<String, _>("request_id"), request_id);
    assert_eq!(row.get::<String, _>("service"), "auth-server");
    assert_eq!(row.get::<String, _>("service_version"), "1.0.0");
    assert_eq!(row.get::<String, _>("instance_id"), "auth-01");
    assert_eq!(row.get::<String, _>("metric_type"), "auth_request");
    assert_eq!(
        row.get::<String, _>("timestamp"),
        "2024-01-15T10:30:00.000000Z"
    );
    assert_eq!(row.get::<f64, _>("value"), 1.0);
    assert_eq!(row.get::<f64, _>("duration_ms"), 45.2);
    let dimensions: serde_json::Value =
        serde_json::from_str(&row.get::<String, _>("dimensions")).unwrap();
    assert_eq!(dimensions["user_hash"], "user_abc123");
    let metadata: serde_json::Value =
        serde_json::from_str(&row.get::<String, _>("metadata")).unwrap();
    assert_eq!(metadata["request_size"], 1024);

    let auth = sqlx::query("SELECT * FROM auth_metrics")
        .fetch_one(store.pool())
        .await
        .unwrap();
    assert_eq!(auth.get::<String, _>("request_id"), request_id);
    assert!(auth.get::<bool, _>("success"));
    assert_eq!(auth.get::<String, _>("method"), "jwt");
    assert_eq!(auth.get::<String, _>("server"), "mcpgw");
    assert_eq!(auth.get::<String, _>("user_hash"), "user_abc123");
    assert_eq!(auth.get::<Option<String>, _>("error_code"), None);
    assert_eq!(auth.get::<f64, _>("duration_ms"), 45.2);
}
