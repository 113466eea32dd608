//! Issue 14, item 2: one admin request must not stop retention. Retention periods have a range
//! (422 past it), no date arithmetic can panic, and a retention pass that fails shows in
//! `/health` and is tried again.

mod common;

use std::time::Duration;

use common::*;
use serde_json::json;

/// The default test pipeline with an active retention of `days` days, looked at every 100 ms.
fn retention_pipeline(days: u32) -> String {
    default_pipeline_with(
        "sqlite: {path: '{dir}/metrics.db', retention_days: 0}",
        &format!(
            "sqlite: {{path: '{{dir}}/metrics.db', retention_days: {days}, retention_interval: 100ms}}"
        ),
    )
}

/// A metric from 1900, older than any period up to 100 years.
fn ancient(metric_type: &str) -> serde_json::Value {
    json!({"type": metric_type, "timestamp": "1900-01-01T00:00:00Z", "value": 1.0,
           "dimensions": {"success": true}})
}

#[tokio::test]
async fn retention_days_past_100_years_are_refused_and_the_largest_period_works() {
    let svc = TestService::with_config(DEFAULT_PIPELINE).await;
    let admin = svc.admin_key().await;
    let put = "/admin/retention/policies/metrics";

    for days in ["4294967295", "36501", "99999999999", "-1"] {
        let path = format!("{put}?retention_days={days}");
        let reply = svc.call("PUT", &path, &admin, None).await;
        assert_eq!(reply.status, 422, "{days}: {}", reply.body);
        assert_eq!(reply.error(), "invalid_request");
    }
    // In a body: past the range, or not a whole number of days in it.
    for days in [
        json!(36501u32),
        json!(4294967296u64),
        json!(-1),
        json!(1.5),
        json!("90"),
    ] {
        let body = json!({"retention_days": days});
        let reply = svc.call("PUT", put, &admin, Some(body)).await;
        assert_eq!(reply.status, 422, "{days}: {}", reply.body);
        assert_eq!(reply.error(), "invalid_request");
    }
    // Nothing refused was stored: the policy is still the config's (inactive).
    let reply = svc
        .call("GET", "/admin/retention/policies", &admin, None)
        .await;
    let policies = reply.body["policies"].as_array().unwrap();
    assert!(
        policies.iter().all(|p| p["set_by"] == "config"),
        "{policies:?}"
    );

    // The largest accepted period: preview and cleanup work and judge by a cutoff in 1925 or so.
    let key = svc.key("auth-server").await;
    let reply = svc
        .post(
            Some(&key),
            &request_of("auth-server", vec![ancient("custom"), metric("custom")]),
        )
        .await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert_eq!(svc.rows_eventually("metrics", 2).await, 2);
    let reply = svc
        .call("PUT", &format!("{put}?retention_days=36500"), &admin, None)
        .await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    let reply = svc
        .call(
            "GET",
            "/admin/retention/preview?table_name=metrics",
            &admin,
            None,
        )
        .await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert_eq!(
        reply.body["tables"][0]["rows_to_delete"], 1,
        "{}",
        reply.body
    );
    let cutoff = reply.body["tables"][0]["cutoff"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(
        cutoff.as_str() > "1920" && cutoff.as_str() < "1930",
        "{cutoff}"
    );
    let reply = svc
        .call(
            "POST",
            "/admin/retention/cleanup?dry_run=false",
            &admin,
            None,
        )
        .await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert_eq!(reply.body["total_rows"], 1, "{}", reply.body);
    assert_eq!(svc.store().await.row_counts().await.unwrap()["metrics"], 1);
}

#[tokio::test]
async fn the_background_pass_works_with_the_largest_period_and_with_a_legacy_overflowing_one() {
    let svc = TestService::with_config(&retention_pipeline(36_500)).await;
    let key = svc.key("auth-server").await;
    let old = request_of(
        "auth-server",
        vec![ancient("auth_request"), metric("custom")],
    );
    let reply = svc.post(Some(&key), &old).await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    // The background pass deletes the 1900 rows (metrics and auth_metrics), keeps today's.
    let store = svc.store().await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let counts = store.row_counts().await.unwrap();
        if counts["metrics"] == 1 && counts["auth_metrics"] == 0 {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "{counts:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // A period an older version accepted (u32::MAX days, past what dates can hold), written
    // straight into the table: passes go on, nothing is deleted, and the service stays healthy.
    sqlx::query("UPDATE retention_policies SET retention_days = 4294967295")
        .execute(store.pool())
        .await
        .unwrap();
    let reply = svc.post(Some(&key), &old).await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert_eq!(svc.rows_eventually("metrics", 3).await, 3);
    let admin = svc.admin_key().await;
    let reply = svc
        .call("GET", "/admin/retention/preview", &admin, None)
        .await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert_eq!(reply.body["total_rows"], 0, "{}", reply.body);
    // Several passes later (100 ms apart) the 1900 row is still there and health is fine.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(store.row_counts().await.unwrap()["metrics"], 3);
    let health = svc.health_until(Duration::ZERO, |_| true).await;
    assert_eq!(health.status, 200, "{}", health.body);
}

#[tokio::test]
async fn a_failing_retention_pass_is_reported_in_health_until_a_pass_succeeds() {
    let svc = TestService::with_config(&retention_pipeline(30)).await;
    let health = svc.health_until(Duration::ZERO, |_| true).await;
    assert_eq!(health.status, 200, "{}", health.body);

    // A table the retention pass cannot read: its DELETE fails at every pass.
    let store = svc.store().await;
    // Both renames on one connection: SQLite checks the old name against the connection's own
    // copy of the schema, which on another pooled connection may predate the first rename.
    let mut connection = store.pool().acquire().await.unwrap();
    sqlx::query("ALTER TABLE tool_metrics RENAME COLUMN timestamp TO ts")
        .execute(&mut *connection)
        .await
        .unwrap();
    let health = svc
        .health_until(Duration::from_secs(5), |r| r.status == 503)
        .await;
    assert_eq!(health.status, 503, "{}", health.body);
    assert_eq!(health.body["status"], "unhealthy");
    let problem = &health.body["problems"][0];
    assert_eq!(problem["component"], "exporters.sqlite", "{}", health.body);
    assert!(
        problem["problem"].as_str().unwrap().contains("retention"),
        "{}",
        health.body
    );

    // Repaired, the next pass succeeds and the problem is gone.
    sqlx::query("ALTER TABLE tool_metrics RENAME COLUMN ts TO timestamp")
        .execute(&mut *connection)
        .await
        .unwrap();
    let health = svc
        .health_until(Duration::from_secs(5), |r| r.status == 200)
        .await;
    assert_eq!(health.status, 200, "{}", health.body);
}

#[test]
fn the_config_refuses_retention_days_past_100_years() {
    let config = retention_pipeline(36_501).replace("{dir}", "/tmp");
    let errors = mcp_metrics::parse(&config, "test config", &|_| None)
        .err()
        .expect("refused");
    assert!(errors.to_string().contains("retention_days"), "{errors}");
    let config = retention_pipeline(36_500).replace("{dir}", "/tmp");
    assert!(mcp_metrics::parse(&config, "test config", &|_| None).is_ok());
}
