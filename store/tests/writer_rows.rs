//! The writer puts many rows in one `INSERT`: every metric of a batch still lands once, in its
//! order, with its own values, however the batch divides into statements, and with the
//! `created_at` the schema's default would have given it.

mod common;

use mcp_metrics_plugin::{Batch, Metric, MetricType};
use mcp_metrics_store::Store;
use serde_json::json;

/// `count` metrics, every third a custom one and the rest auth requests, each valued by its
/// index and with a user of its own; even ones name an empty method, odd ones none.
fn mixed(count: usize) -> Batch {
    common::batch(count, |index, now| {
        let mut dimensions =
            json!({"user_hash": format!("user_{index}"), "success": index % 4 != 1});
        if index.is_multiple_of(2) {
            dimensions["method"] = json!("");
        }
        Metric {
            index,
            metric_type: if index.is_multiple_of(3) {
                MetricType::Custom
            } else {
                MetricType::AuthRequest
            },
            timestamp: now,
            value: index as f64,
            duration_ms: Some(index as f64 / 2.0),
            dimensions: dimensions.as_object().unwrap().clone(),
            metadata: Default::default(),
        }
    })
}

#[tokio::test]
async fn every_row_of_a_batch_lands_once_with_its_own_values() {
    // 1 is a single statement; 16 fills one exactly; 37 and 100 leave a shorter one at the end.
    for count in [1, 16, 37, 100] {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path().join("metrics.db")).await.unwrap();
        store.write_batch(&mixed(count)).await.unwrap();

        let values: Vec<f64> = sqlx::query_scalar("SELECT value FROM metrics ORDER BY id")
            .fetch_all(store.pool())
            .await
            .unwrap();
        let expected: Vec<f64> = (0..count).map(|i| i as f64).collect();
        assert_eq!(values, expected, "{count} metrics");

        // Text made for each row (its JSON) is still each row's own once the statement ran.
        let dimensions: Vec<String> =
            sqlx::query_scalar("SELECT dimensions FROM metrics ORDER BY id")
                .fetch_all(store.pool())
                .await
                .unwrap();
        for (index, text) in dimensions.iter().enumerate() {
            let dimensions: serde_json::Value = serde_json::from_str(text).unwrap();
            assert_eq!(
                dimensions["user_hash"],
                format!("user_{index}"),
                "{count} metrics"
            );
        }

        type AuthRow = (String, f64, bool, Option<String>);
        let users: Vec<AuthRow> = sqlx::query_as(
            "SELECT user_hash, duration_ms, success, method FROM auth_metrics ORDER BY id",
        )
        .fetch_all(store.pool())
        .await
        .unwrap();
        let expected: Vec<AuthRow> = (0..count)
            .filter(|i| !i.is_multiple_of(3))
            .map(|i| {
                let method = i.is_multiple_of(2).then(String::new);
                (format!("user_{i}"), i as f64 / 2.0, i % 4 != 1, method)
            })
            .collect();
        assert_eq!(users, expected, "{count} metrics");

        // `created_at` as the schema's default writes it: `datetime('now')`, to the second.
        for table in ["metrics", "auth_metrics"] {
            let off: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
                "SELECT COUNT(*) FROM {table} WHERE created_at IS NOT datetime(created_at) \
                 OR abs(unixepoch(created_at) - unixepoch('now')) > 60"
            )))
            .fetch_one(store.pool())
            .await
            .unwrap();
            assert_eq!(
                off, 0,
                "{table}: rows whose created_at is not now, as SQLite writes it"
            );
        }
        store.close().await;
    }
}
