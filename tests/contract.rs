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

#[tokio::test]
async fn typed_metrics_land_in_their_tables_with_the_contract_mapping() {
    let mut svc = TestService::start().await;
    let key = svc.key("registry").await;
    let body = json!({
        "service": "registry",
        "metrics": [
            {"type": "tool_discovery", "value": 1, "duration_ms": 80.0,
             "dimensions": {"query": "weather tools", "results_count": 5, "top_k_services": 3, "top_n_tools": "10"},
             "metadata": {"embedding_time_ms": 12.5, "faiss_search_time_ms": 3.25}},
            {"type": "tool_execution", "value": 1, "duration_ms": 250.0,
             "dimensions": {"tool_name": "get_weather", "server_path": "/weather", "server_name": "weather", "success": false},
             "metadata": {"error_code": 504, "input_size_bytes": 128, "output_size_bytes": 2048}},
            {"type": "registry_operation", "value": 2},
            {"type": "health_check", "value": 1},
            {"type": "protocol_latency", "value": 0.5},
            {"type": "custom", "value": 42}
        ]
    });
    let reply = svc.post(Some(&key), &body).await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert_eq!(reply.body["accepted"], 6);
    svc.shutdown().await;

    let store = svc.store().await;
    let counts = store.row_counts().await.unwrap();
    assert_eq!(counts["metrics"], 6);
    assert_eq!(counts["discovery_metrics"], 1);
    assert_eq!(counts["tool_metrics"], 1);
    assert_eq!(counts["auth_metrics"], 0);

    let d = sqlx::query("SELECT * FROM discovery_metrics")
        .fetch_one(store.pool())
        .await
        .unwrap();
    assert_eq!(d.get::<String, _>("query"), "weather tools");
    assert_eq!(d.get::<i64, _>("results_count"), 5);
    assert_eq!(d.get::<i64, _>("top_k_services"), 3);
    assert_eq!(d.get::<i64, _>("top_n_tools"), 10);
    assert_eq!(d.get::<f64, _>("embedding_time_ms"), 12.5);
    assert_eq!(d.get::<f64, _>("faiss_search_time_ms"), 3.25);
    assert_eq!(d.get::<String, _>("service"), "registry");

    let t = sqlx::query("SELECT * FROM tool_metrics")
        .fetch_one(store.pool())
        .await
        .unwrap();
    assert_eq!(t.get::<String, _>("tool_name"), "get_weather");
    assert_eq!(t.get::<String, _>("server_path"), "/weather");
    assert_eq!(t.get::<String, _>("server_name"), "weather");
    assert!(!t.get::<bool, _>("success"));
    assert_eq!(t.get::<String, _>("error_code"), "504");
    assert_eq!(t.get::<i64, _>("input_size_bytes"), 128);
    assert_eq!(t.get::<i64, _>("output_size_bytes"), 2048);
    assert_eq!(t.get::<f64, _>("duration_ms"), 250.0);

    let types: Vec<String> = sqlx::query_scalar("SELECT metric_type FROM metrics ORDER BY id")
        .fetch_all(store.pool())
        .await
        .unwrap();
    assert_eq!(
        types,
        [
            "tool_discovery",
            "tool_execution",
            "registry_operation",
            "health_check",
            "protocol_latency",
            "custom"
        ]
    );
}

#[tokio::test]
async fn each_metric_is_judged_alone() {
    let mut svc = TestService::start().await;
    let key = svc.key("svc").await;
    let too_many_keys: serde_json::Map<String, serde_json::Value> =
        (0..65).map(|i| (format!("k{i}"), json!(i))).collect();
    let body = request_of(
        "svc",
        vec![
            metric("auth_request"),
            json!({"type": "no_such_type", "value": 1}),
            json!({"type": "custom"}),
            json!({"type": "custom", "value": "12"}),
            json!({"type": "custom", "value": 1, "timestamp": "last tuesday"}),
            json!({"type": "custom", "value": 1, "duration_ms": -5}),
            json!({"type": "custom", "value": 1, "dimensions": too_many_keys}),
            json!({"type": "custom", "value": 1, "metadata": {"a": {"b": {"c": {"d": {"e": 1}}}}}}),
            json!({"type": "custom", "value": 1, "timestamp": "2999-01-01T00:00:00Z"}),
            json!("not an object"),
            // 16,411 bytes as JSON, over the 16 KiB limit; then 10,011 (each quote escaped),
            // under it, though six bytes a character (as if every one were escaped) are over.
            json!({"type": "custom", "value": 1, "dimensions": {"blob": "x".repeat(16_400)}}),
            json!({"type": "custom", "value": 1, "dimensions": {"blob": "\"".repeat(5_000)}}),
            metric("tool_execution"),
        ],
    );
    let reply = svc.post(Some(&key), &body).await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert_eq!(reply.body["accepted"], 3);
    assert_eq!(reply.body["rejected"], 10);
    let errors: Vec<&str> = reply.body["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e.as_str().unwrap())
        .collect();
    let expected_starts = [
        "metrics[1]: type: unknown metric type \"no_such_type\"",
        "metrics[2]: missing field `value`",
        "metrics[3]: invalid type: string \"12\"",
        "metrics[4]: timestamp:",
        "metrics[5]: duration_ms:",
        "metrics[6]: dimensions: 65 keys, at most 64",
        "metrics[7]: metadata: nested 4 levels deep, at most 3",
        "metrics[8]: timestamp: 2999-01-01",
        "metrics[9]: invalid type: string",
        "metrics[10]: dimensions: 16411 bytes as JSON, at most 16384 allowed",
    ];
    assert_eq!(errors.len(), expected_starts.len(), "{errors:#?}");
    for (error, start) in errors.iter().zip(expected_starts) {
        assert!(
            error.starts_with(start),
            "{error:?} should start with {start:?}"
        );
    }
    assert_eq!(svc.rows_eventually("metrics", 3).await, 3);
    svc.shutdown().await;
    let types: Vec<String> = sqlx::query_scalar("SELECT metric_type FROM metrics ORDER BY id")
        .fetch_all(svc.store().await.pool())
        .await
        .unwrap();
    assert_eq!(types, ["auth_request", "custom", "tool_execution"]);
}

#[tokio::test]
async fn a_request_whose_metrics_are_all_bad_is_not_a_200() {
    let svc = TestService::start().await;
    let key = svc.key("svc").await;
    let reply = svc
        .post(
            Some(&key),
            &request_of("svc", vec![json!({"type": "custom", "value": null})]),
        )
        .await;
    assert_eq!(reply.status, 422);
    assert_eq!(reply.error(), "no_valid_metrics");
    assert_eq!(reply.body["rejected"], 1);
    assert!(
        reply.body["errors"][0]
            .as_str()
            .unwrap()
            .starts_with("metrics[0]: ")
    );
}

#[tokio::test]
async fn an_empty_metrics_array_is_accepted_as_nothing() {
    let svc = TestService::start().await;
    let key = svc.key("svc").await;
    let reply = svc.post(Some(&key), &request_of("svc", vec![])).await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert_eq!(reply.body["accepted"], 0);
}

#[tokio::test]
async fn timestamps_naive_zoned_and_missing_are_stored_as_utc() {
    let mut svc = TestService::start().await;
    let key = svc.key("svc").await;
    let before = chrono::Utc::now();
    let body = request_of(
        "svc",
        vec![
            json!({"type": "custom", "value": 1, "timestamp": "2024-01-15T10:30:00.123456"}),
            json!({"type": "custom", "value": 2, "timestamp": "2024-01-15T12:30:00+02:00"}),
            json!({"type": "custom", "value": 3}),
        ],
    );
    assert_eq!(svc.post(Some(&key), &body).await.status, 200);
    let after = chrono::Utc::now();
    svc.shutdown().await;
    let stamps: Vec<String> = sqlx::query_scalar("SELECT timestamp FROM metrics ORDER BY value")
        .fetch_all(svc.store().await.pool())
        .await
        .unwrap();
    assert_eq!(stamps[0], "2024-01-15T10:30:00.123456Z");
    assert_eq!(stamps[1], "2024-01-15T10:30:00.000000Z");
    let received = mcp_metrics_plugin::parse_timestamp(&stamps[2]).unwrap();
    assert!(
        before - chrono::Duration::milliseconds(1) <= received && received <= after,
        "{received}"
    );
}

#[tokio::test]
async fn request_level_limits_refuse_the_request_with_the_contract_error() {
    let svc = TestService::with_config(&default_pipeline_with(
        "http: {host: 127.0.0.1, port: 0, database: '{dir}/metrics.db'}",
        "http: {host: 127.0.0.1, port: 0, max_request_size: 4KiB, max_metrics_per_request: 100}",
    ))
    .await;
    let key = svc.key("svc").await;

    // 101 metrics: refused whole, never a 200 with the metrics dropped.
    let reply = svc
        .post(
            Some(&key),
            &request_of("svc", vec![json!({"type": "custom", "value": 1}); 101]),
        )
        .await;
    assert_eq!(reply.status, 413);
    assert_eq!(reply.error(), "too_many_metrics");

    let big = json!({"type": "custom", "value": 1, "dimensions": {"blob": "x".repeat(5000)}});
    let reply = svc.post(Some(&key), &request_of("svc", vec![big])).await;
    assert_eq!(reply.status, 413);
    assert_eq!(reply.error(), "request_too_large");

    let raw = |body: &'static str, content_type: &'static str| {
        svc.client
            .post(svc.url("/metrics"))
            .header("X-API-Key", key.clone())
            .header("Content-Type", content_type)
            .body(body)
            .send()
    };
    let reply = Reply::from(
        raw("{\"service\": \"svc\", \"metrics\": [", "application/json")
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(reply.status, 400);
    assert_eq!(reply.error(), "malformed_json");

    let reply = Reply::from(raw("{\"metrics\": []}", "application/json").await.unwrap()).await;
    assert_eq!(reply.status, 422);
    assert_eq!(reply.error(), "invalid_request");
    assert!(reply.body["message"].as_str().unwrap().contains("service"));

    let reply = Reply::from(
        raw(
            "{\"service\": \"svc\", \"metrics\": {}}",
            "application/json",
        )
        .await
        .unwrap(),
    )
    .await;
    assert_eq!(reply.status, 422);

    let reply = Reply::from(
        raw("service=svc", "application/x-www-form-urlencoded")
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(reply.status, 415);
    assert_eq!(reply.error(), "unsupported_media_type");

    let long = json!({"service": "s".repeat(51), "version": "v".repeat(21), "metrics": [{"type": "custom", "value": 1}]});
    let reply = svc.post(Some(&key), &long).await;
    assert_eq!(reply.status, 422);
    assert_eq!(reply.error(), "invalid_request");
    let message = reply.body["message"].as_str().unwrap();
    assert!(
        message.contains("service: 51 characters") && message.contains("version: 21 characters"),
        "{message}"
    );
}

#[tokio::test]
async fn other_routes_answer_with_the_contract_error_body() {
    let svc = TestService::start().await;
    let reply = Reply::from(svc.client.get(svc.url("/health")).send().await.unwrap()).await;
    assert_eq!(reply.status, 200);
    assert_eq!(
        reply.body,
        json!({"status": "healthy", "service": "metrics-collection"})
    );

    let reply = Reply::from(svc.client.get(svc.url("/nope")).send().await.unwrap()).await;
    assert_eq!(reply.status, 404);
    assert_eq!(reply.error(), "not_found");

    let reply = Reply::from(svc.client.get(svc.url("/metrics")).send().await.unwrap()).await;
    assert_eq!(reply.status, 405);
    assert_eq!(reply.error(), "method_not_allowed");
}

#[tokio::test]
async fn typed_columns_take_booleans_and_numbers_as_clients_spell_them() {
    let mut svc = TestService::start().await;
    let key = svc.key("registry").await;
    let body = json!({
        "service": "registry",
        "metrics": [
            {"type": "auth_request", "value": 1, "dimensions": {"success": "false"}},
            {"type": "tool_execution", "value": 1, "dimensions": {"success": "True"},
             "metadata": {"input_size_bytes": 128.0}},
            {"type": "tool_discovery", "value": 1,
             "dimensions": {"results_count": 5.0, "top_k_services": "3"}}
        ]
    });
    let reply = svc.post(Some(&key), &body).await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert_eq!(reply.body["accepted"], 3);
    svc.shutdown().await;

    // Stored as SQLite integers, not as the text or real the client sent.
    let store = svc.store().await;
    let cell = |sql: &'static str| {
        let pool = store.pool().clone();
        async move {
            sqlx::query_as::<_, (i64, String)>(sql)
                .fetch_one(&pool)
                .await
                .unwrap()
        }
    };
    let integer = |n: i64| (n, "integer".to_owned());
    assert_eq!(
        cell("SELECT success, typeof(success) FROM auth_metrics").await,
        integer(0)
    );
    assert_eq!(
        cell("SELECT success, typeof(success) FROM tool_metrics").await,
        integer(1)
    );
    assert_eq!(
        cell("SELECT input_size_bytes, typeof(input_size_bytes) FROM tool_metrics").await,
        integer(128)
    );
    assert_eq!(
        cell("SELECT results_count, typeof(results_count) FROM discovery_metrics").await,
        integer(5)
    );
    assert_eq!(
        cell("SELECT top_k_services, typeof(top_k_services) FROM discovery_metrics").await,
        integer(3)
    );
}

/// The contract's tables with their columns and declared types (shared/design.md).
const CONTRACT_TABLES: &[(&str, &[(&str, &str)])] = &[
    (
        "api_keys",
        &[
            ("id", "INTEGER"),
            ("key_hash", "TEXT"),
            ("service_name", "TEXT"),
            ("created_at", "TEXT"),
            ("last_used_at", "TEXT"),
            ("is_active", "BOOLEAN"),
            ("rate_limit", "INTEGER"),
        ],
    ),
    (
        "metrics",
        &[
            ("id", "INTEGER"),
            ("request_id", "TEXT"),
            ("service", "TEXT"),
            ("service_version", "TEXT"),
            ("instance_id", "TEXT"),
            ("metric_type", "TEXT"),
            ("timestamp", "TEXT"),
            ("value", "REAL"),
            ("duration_ms", "REAL"),
            ("dimensions", "TEXT"),
            ("metadata", "TEXT"),
            ("created_at", "TEXT"),
        ],
    ),
    (
        "auth_metrics",
        &[
            ("id", "INTEGER"),
            ("request_id", "TEXT"),
            ("timestamp", "TEXT"),
            ("service", "TEXT"),
            ("duration_ms", "REAL"),
            ("success", "BOOLEAN"),
            ("method", "TEXT"),
            ("server", "TEXT"),
            ("user_hash", "TEXT"),
            ("error_code", "TEXT"),
            ("created_at", "TEXT"),
        ],
    ),
    (
        "discovery_metrics",
        &[
            ("id", "INTEGER"),
            ("request_id", "TEXT"),
            ("timestamp", "TEXT"),
            ("service", "TEXT"),
            ("duration_ms", "REAL"),
            ("query", "TEXT"),
            ("results_count", "INTEGER"),
            ("top_k_services", "INTEGER"),
            ("top_n_tools", "INTEGER"),
            ("embedding_time_ms", "REAL"),
            ("faiss_search_time_ms", "REAL"),
            ("created_at", "TEXT"),
        ],
    ),
    (
        "tool_metrics",
        &[
            ("id", "INTEGER"),
            ("request_id", "TEXT"),
            ("timestamp", "TEXT"),
            ("service", "TEXT"),
            ("duration_ms", "REAL"),
            ("tool_name", "TEXT"),
            ("server_path", "TEXT"),
            ("server_name", "TEXT"),
            ("success", "BOOLEAN"),
            ("error_code", "TEXT"),
            ("input_size_bytes", "INTEGER"),
            ("output_size_bytes", "INTEGER"),
            ("created_at", "TEXT"),
        ],
    ),
];

/// The contract's 13 indexes, by table and columns.
const CONTRACT_INDEXES: [(&str, &[&str]); 13] = [
    ("metrics", &["timestamp"]),
    ("metrics", &["service", "metric_type"]),
    ("metrics", &["metric_type", "timestamp"]),
    ("auth_metrics", &["timestamp"]),
    ("auth_metrics", &["success", "timestamp"]),
    ("auth_metrics", &["user_hash", "timestamp"]),
    ("discovery_metrics", &["timestamp"]),
    ("discovery_metrics", &["results_count", "timestamp"]),
    ("tool_metrics", &["timestamp"]),
    ("tool_metrics", &["tool_name", "timestamp"]),
    ("tool_metrics", &["success", "timestamp"]),
    ("api_keys", &["key_hash"]),
    ("api_keys", &["service_name"]),
];

#[tokio::test]
async fn a_fresh_database_has_the_contract_schema_in_wal_mode() {
    let svc = TestService::start().await;
    // A connection of its own that sets no journal mode, so it reads the file's.
    let url = format!("sqlite://{}", svc.db_path().display());
    let pool = sqlx::SqlitePool::connect(&url).await.unwrap();

    for (table, expected) in CONTRACT_TABLES {
        let columns: Vec<(String, String)> =
            sqlx::query_as("SELECT name, type FROM pragma_table_info(?) ORDER BY cid")
                .bind(table)
                .fetch_all(&pool)
                .await
                .unwrap();
        for (name, declared) in *expected {
            assert!(
                columns.contains(&(name.to_string(), declared.to_string())),
                "{table}.{name} {declared}: {columns:?}"
            );
        }
    }

    // Indexes made by CREATE INDEX (not the one UNIQUE makes), by their columns in order.
    let mut indexes: Vec<(String, Vec<String>)> = Vec::new();
    for (table, _) in CONTRACT_TABLES {
        let names: Vec<String> =
            sqlx::query_scalar("SELECT name FROM pragma_index_list(?) WHERE origin = 'c'")
                .bind(table)
                .fetch_all(&pool)
                .await
                .unwrap();
        for name in names {
            let columns =
                sqlx::query_scalar("SELECT name FROM pragma_index_info(?) ORDER BY seqno")
                    .bind(&name)
                    .fetch_all(&pool)
                    .await
                    .unwrap();
            indexes.push((table.to_string(), columns));
        }
    }
    for (table, columns) in CONTRACT_INDEXES {
        let wanted = (
            table.to_owned(),
            columns.iter().map(|c| c.to_string()).collect(),
        );
        assert!(
            indexes.contains(&wanted),
            "no index {table}{columns:?}: {indexes:?}"
        );
    }

    let mode: String = sqlx::query_scalar("PRAGMA journal_mode")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(mode, "wal");
}
