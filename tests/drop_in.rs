//! Issue 7: a drop-in replacement for the deployed Python service — its environment, its
//! clients, its operator endpoints, its database files.

mod common;

use std::path::PathBuf;
use std::process::Command;

use common::*;
use serde_json::{Value, json};

/// A Python that can `import httpx`: the machine's, or with httpx installed once under target/.
fn python_with_httpx() -> (String, Option<PathBuf>) {
    let python = std::env::var("PYTHON").unwrap_or_else(|_| "python3".into());
    let has_httpx = |path: Option<&PathBuf>| {
        let mut check = Command::new(&python);
        check.args(["-c", "import httpx"]);
        if let Some(path) = path {
            check.env("PYTHONPATH", path);
        }
        check.output().is_ok_and(|o| o.status.success())
    };
    if has_httpx(None) {
        return (python, None);
    }
    let deps = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("python-httpx");
    if !has_httpx(Some(&deps)) {
        let installed = Command::new(&python)
            .args(["-m", "pip", "install", "--quiet", "--target"])
            .arg(&deps)
            .arg("httpx")
            .status()
            .expect("python3 runs");
        assert!(
            installed.success(),
            "cannot install httpx for the Python client test"
        );
    }
    (python, Some(deps))
}

#[tokio::test]
async fn the_python_metrics_client_of_the_field_delivers_every_metric() {
    let mut svc = TestService::start().await;
    let key = svc.key("auth-server").await;
    let (python, deps) = python_with_httpx();
    let url = format!("http://{}", svc.addr);
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/clients/metrics_client.py"
    );
    let output = tokio::task::spawn_blocking(move || {
        let mut run = Command::new(python);
        run.args([script, &url, &key, "50"]);
        if let Some(deps) = deps {
            run.env("PYTHONPATH", deps);
        }
        run.output().unwrap()
    })
    .await
    .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    let delivered: i64 = String::from_utf8_lossy(&output.stdout)
        .trim()
        .parse()
        .unwrap();
    assert_eq!(delivered, 100, "every request answered 200: {stderr}");
    svc.shutdown().await;

    let store = svc.store().await;
    let counts = store.row_counts().await.unwrap();
    assert_eq!(
        (
            counts["metrics"],
            counts["auth_metrics"],
            counts["tool_metrics"]
        ),
        (100, 50, 50)
    );
    // Naive timestamps were read as UTC and stored as such.
    let stamps: Vec<String> = sqlx::query_scalar("SELECT timestamp FROM metrics")
        .fetch_all(store.pool())
        .await
        .unwrap();
    let now = chrono::Utc::now();
    for stamp in stamps {
        let at = mcp_metrics_plugin::parse_timestamp(&stamp).unwrap();
        assert!(
            stamp.ends_with('Z') && (now - at).num_seconds().abs() < 60,
            "{stamp}"
        );
    }
    let failures: i64 = sqlx::query_scalar(
        "SELECT COUNT(*) FROM auth_metrics WHERE success = 0 AND error_code = '401'",
    )
    .fetch_one(store.pool())
    .await
    .unwrap();
    assert_eq!(failures, 10);
}

#[tokio::test]
async fn the_nginx_flushers_1024_metrics_are_taken_whole_never_dropped_behind_a_200() {
    let mut svc = TestService::start().await;
    let key = svc.key("registry").await;
    let metrics: Vec<Value> = (0..1024)
        .map(|i| json!({"type": if i % 2 == 0 { "tool_discovery" } else { "registry_operation" }, "value": 1, "dimensions": {"n": i}}))
        .collect();
    let reply = svc
        .post(Some(&key), &request_of("registry", metrics.clone()))
        .await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert_eq!(reply.body["accepted"], 1024);
    svc.shutdown().await;
    let counts = svc.store().await.row_counts().await.unwrap();
    assert_eq!(
        (counts["metrics"], counts["discovery_metrics"]),
        (1024, 512)
    );

    // With a smaller limit the request is refused whole, and not with a 200.
    let svc = TestService::with_config(&default_pipeline_with(
        "http: {host: 127.0.0.1, port: 0, database: '{dir}/metrics.db'}",
        "http: {host: 127.0.0.1, port: 0, max_metrics_per_request: 1000}",
    ))
    .await;
    let key = svc.key("registry").await;
    let reply = svc.post(Some(&key), &request_of("registry", metrics)).await;
    assert_eq!(reply.status, 413);
    assert_eq!(reply.error(), "too_many_metrics");
    assert_eq!(svc.store().await.row_counts().await.unwrap()["metrics"], 0);
}

#[tokio::test]
async fn operator_endpoints_answer_behind_the_key_check() {
    let svc = TestService::with_config(&edited(
        &edited(
            DEFAULT_PIPELINE,
            "  validate: {}",
            "  rate_limit: {default_limit: 10}\n  validate: {}\n  batch: {send_batch_size: 1000, timeout: 1h}",
        ),
        "processors: [auth, validate]",
        "processors: [auth, rate_limit, validate, batch]",
    ))
    .await;
    let key = svc.key("auth-server").await;
    let (_, admin) = svc
        .store()
        .await
        .create_key("ops", None, true)
        .await
        .unwrap();

    // /rate-limit tells the caller's standing without using up a request.
    for _ in 0..3 {
        assert_eq!(svc.post(Some(&key), &example_request()).await.status, 200);
    }
    for _ in 0..2 {
        let reply = svc.call("GET", "/rate-limit", &key, None).await;
        assert_eq!(reply.status, 200, "{}", reply.body);
        assert_eq!(reply.body["status"], "success");
        assert_eq!(reply.body["service"], "auth-server");
        assert_eq!(reply.body["limit"], 10);
        assert_eq!(reply.body["remaining"], 7);
        assert!(reply.body["reset_seconds"].as_u64().unwrap() >= 1);
        // The same under the Python service's names.
        assert_eq!(reply.body["rate_limit"], 10);
        assert_eq!(reply.body["available_tokens"], 7);
        assert_eq!(
            reply.body["reset_time_seconds"],
            reply.body["reset_seconds"]
        );
    }

    // /flush writes what the batch holds (an hour's timeout) now.
    assert_eq!(svc.store().await.row_counts().await.unwrap()["metrics"], 0);
    let reply = svc.call("POST", "/flush", &key, None).await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert_eq!(svc.store().await.row_counts().await.unwrap()["metrics"], 3);

    // Keys are checked; admin endpoints need an admin key.
    let reply = Reply::from(svc.client.post(svc.url("/flush")).send().await.unwrap()).await;
    assert_eq!(reply.status, 401);
    assert_eq!(reply.error(), "missing_api_key");
    for path in [
        "/admin/retention/policies",
        "/admin/database/stats",
        "/admin/database/size",
        "/admin/retention/preview",
    ] {
        let reply = svc.call("GET", path, &key, None).await;
        assert_eq!(reply.status, 403, "{path}");
        assert_eq!(reply.error(), "forbidden");
    }
    for (method, path) in [
        ("PUT", "/admin/retention/policies/metrics?retention_days=1"),
        ("POST", "/admin/retention/cleanup?dry_run=false"),
    ] {
        let reply = svc.call(method, path, &key, None).await;
        assert_eq!(reply.status, 403, "{path}");
        assert_eq!(reply.error(), "forbidden");
    }

    let reply = svc.call("GET", "/admin/database/stats", &admin, None).await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    let tables = reply.body["tables"].as_array().unwrap();
    let metrics = tables
        .iter()
        .find(|t| t["table_name"] == "metrics")
        .unwrap();
    assert_eq!(metrics["rows"], 3);
    assert_eq!(metrics["oldest"], "2024-01-15T10:30:00.000000Z");
    let auth = tables
        .iter()
        .find(|t| t["table_name"] == "auth_metrics")
        .unwrap();
    assert_eq!(auth["rows"], 3);

    let reply = svc.call("GET", "/admin/database/size", &admin, None).await;
    assert_eq!(reply.status, 200);
    assert!(reply.body["file_bytes"].as_u64().unwrap() > 0);
    assert!(reply.body["page_size"].as_u64().unwrap() > 0);

    // Retention: the test config keeps everything; set a policy, preview, dry run, clean up.
    let reply = svc
        .call("GET", "/admin/retention/policies", &admin, None)
        .await;
    assert_eq!(reply.body["policies"].as_array().unwrap().len(), 4);
    assert!(
        reply.body["policies"]
            .as_array()
            .unwrap()
            .iter()
            .all(|p| p["is_active"] == false)
    );
    let reply = svc
        .call(
            "PUT",
            "/admin/retention/policies/metrics",
            &admin,
            Some(json!({"retention_days": 30, "is_active": true})),
        )
        .await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    let reply = svc
        .call(
            "PUT",
            "/admin/retention/policies/nope",
            &admin,
            Some(json!({"retention_days": 30})),
        )
        .await;
    assert_eq!(reply.status, 404);
    assert_eq!(reply.error(), "unknown_table");
    let reply = svc
        .call(
            "PUT",
            "/admin/retention/policies/metrics",
            &admin,
            Some(json!({"days": 30})),
        )
        .await;
    assert_eq!(reply.status, 422);

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
        reply.body["tables"][0]["rows_to_delete"], 3,
        "the 2024 rows are past 30 days"
    );
    let reply = svc
        .call(
            "POST",
            "/admin/retention/cleanup?table_name=metrics&dry_run=true",
            &admin,
            None,
        )
        .await;
    assert_eq!(reply.body["total_rows"], 3);
    assert_eq!(
        svc.store().await.row_counts().await.unwrap()["metrics"],
        3,
        "a dry run deletes nothing"
    );
    // Without `dry_run`, a dry run too, as in the Python service.
    let reply = svc
        .call("POST", "/admin/retention/cleanup", &admin, None)
        .await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert_eq!(reply.body["dry_run"], true);
    assert_eq!(reply.body["tables"][0]["rows_to_delete"], 3);
    assert_eq!(svc.store().await.row_counts().await.unwrap()["metrics"], 3);
    // An empty table_name is every table.
    let reply = svc
        .call(
            "POST",
            "/admin/retention/cleanup?table_name=&dry_run=False",
            &admin,
            None,
        )
        .await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert_eq!(reply.body["dry_run"], false);
    assert_eq!(reply.body["tables"][0]["rows_deleted"], 3);
    let counts = svc.store().await.row_counts().await.unwrap();
    assert_eq!(
        (counts["metrics"], counts["auth_metrics"]),
        (0, 3),
        "only the table with a policy"
    );
}

#[tokio::test]
async fn operator_endpoints_read_parameters_as_the_python_service_and_refuse_in_json() {
    let svc = TestService::with_config(&default_pipeline_with(
        "http: {host: 127.0.0.1, port: 0, database: '{dir}/metrics.db'}",
        "http: {host: 127.0.0.1, port: 0, database: '{dir}/metrics.db', max_request_size: 1KiB}",
    ))
    .await;
    let (_, admin) = svc
        .store()
        .await
        .create_key("ops", None, true)
        .await
        .unwrap();
    let policy = |table: &'static str| {
        let svc = &svc;
        let admin = admin.clone();
        async move {
            let reply = svc
                .call("GET", "/admin/retention/policies", &admin, None)
                .await;
            let policies = reply.body["policies"].as_array().unwrap().clone();
            let found = policies.into_iter().find(|p| p["table_name"] == table);
            let found = found.unwrap();
            (found["retention_days"].clone(), found["is_active"].clone())
        }
    };

    // PUT takes retention_days and is_active as query parameters, as the Python service does.
    let reply = svc
        .call(
            "PUT",
            "/admin/retention/policies/auth_metrics?retention_days=45&is_active=False",
            &admin,
            None,
        )
        .await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert_eq!(policy("auth_metrics").await, (json!(45), json!(false)));
    // is_active defaults to true; a query parameter wins over the body.
    let reply = svc
        .call(
            "PUT",
            "/admin/retention/policies/auth_metrics?retention_days=20",
            &admin,
            Some(json!({"retention_days": 10})),
        )
        .await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert_eq!(policy("auth_metrics").await, (json!(20), json!(true)));

    // Booleans as FastAPI reads them.
    for (text, active) in [
        ("1", true),
        ("0", false),
        ("yes", true),
        ("no", false),
        ("True", true),
        ("false", false),
    ] {
        let path =
            format!("/admin/retention/policies/tool_metrics?retention_days=7&is_active={text}");
        let reply = svc.call("PUT", &path, &admin, None).await;
        assert_eq!(reply.status, 200, "{text}: {}", reply.body);
        assert_eq!(
            policy("tool_metrics").await,
            (json!(7), json!(active)),
            "{text}"
        );
    }
    for text in ["1", "yes", "True"] {
        let path = format!("/admin/retention/cleanup?dry_run={text}");
        let reply = svc.call("POST", &path, &admin, None).await;
        assert_eq!(reply.status, 200, "{}", reply.body);
        assert_eq!(reply.body["dry_run"], true, "{text}");
    }

    // Every refusal is the contract's JSON error body (Reply::from fails on anything else).
    let too_large = json!({"retention_days": 1, "padding": "x".repeat(2000)});
    for (method, path, body, status, error) in [
        (
            "POST",
            "/admin/retention/cleanup?dry_run=maybe",
            None,
            422,
            "invalid_request",
        ),
        (
            "GET",
            "/admin/retention/preview?table_name=nope",
            None,
            404,
            "unknown_table",
        ),
        (
            "PUT",
            "/admin/retention/policies/metrics?retention_days=abc",
            None,
            422,
            "invalid_request",
        ),
        (
            "PUT",
            "/admin/retention/policies/metrics?retention_days=-1",
            None,
            422,
            "invalid_request",
        ),
        (
            "PUT",
            "/admin/retention/policies/metrics?is_active=true",
            None,
            422,
            "invalid_request",
        ),
        (
            "PUT",
            "/admin/retention/policies/metrics",
            Some(json!({"days": 30})),
            422,
            "invalid_request",
        ),
        (
            "PUT",
            "/admin/retention/policies/%FF",
            None,
            400,
            "invalid_request",
        ),
        (
            "PUT",
            "/admin/retention/policies/metrics",
            Some(too_large),
            413,
            "request_too_large",
        ),
    ] {
        let reply = svc.call(method, path, &admin, body).await;
        assert_eq!(
            (reply.status, reply.error()),
            (status, error),
            "{method} {path}: {}",
            reply.body
        );
    }
    assert_eq!(
        policy("metrics").await,
        (json!(0), json!(false)),
        "no refused request changed a policy"
    );
}

#[tokio::test]
async fn keys_from_the_environment_are_registered_idempotently() {
    let dir = tempfile::tempdir().unwrap();
    let cli_key = {
        let output = mcp_metrics(dir.path())
            .args(["keys", "create", "--service", "auth-server"])
            .output()
            .unwrap();
        String::from_utf8(output.stdout)
            .unwrap()
            .lines()
            .last()
            .unwrap()
            .to_owned()
    };
    let start = |auth_key: &str, registry_key: &str| {
        spawn_service(
            mcp_metrics(dir.path())
                .env("METRICS_SERVICE_HOST", "127.0.0.1")
                .env("METRICS_SERVICE_PORT", "0")
                .env("METRICS_API_KEY_AUTH_SERVER", auth_key)
                .env(
                    "METRICS_API_KEY_MCPGW_SERVER",
                    "mcp_metrics_mcpgw-key-from-env",
                )
                .env("METRICS_API_KEY_REGISTRY", registry_key),
        )
    };
    let client = reqwest::Client::new();
    let status = |address: String, key: String| {
        let client = client.clone();
        async move {
            metrics_request(&client, &address, &key, &example_request())
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        }
    };

    for _ in 0..2 {
        let (mut child, address, _log) =
            start("mcp_metrics_first-auth-key", "mcp_metrics_registry-key");
        assert_eq!(
            status(address.clone(), "mcp_metrics_first-auth-key".into()).await,
            200
        );
        assert_eq!(
            status(address.clone(), "mcp_metrics_mcpgw-key-from-env".into()).await,
            200
        );
        assert_eq!(status(address, cli_key.clone()).await, 200);
        assert_eq!(terminate(&mut child), 0);
    }
    let store = mcp_metrics_store::Store::open(dir.path().join("data/metrics.db"))
        .await
        .unwrap();
    let keys = store.list_keys().await.unwrap();
    assert_eq!(keys.len(), 4, "a restart registers nothing twice: {keys:?}");
    assert!(
        keys.iter()
            .any(|k| k.service_name == "mcpgw-server" && k.source.as_deref() == Some("env"))
    );

    // A changed value replaces the service's key from the environment; the CLI key stays.
    let (mut child, address, _log) =
        start("mcp_metrics_second-auth-key", "mcp_metrics_registry-key");
    assert_eq!(
        status(address.clone(), "mcp_metrics_second-auth-key".into()).await,
        200
    );
    assert_eq!(
        status(address.clone(), "mcp_metrics_first-auth-key".into()).await,
        401
    );
    assert_eq!(status(address, cli_key.clone()).await, 200);
    assert_eq!(terminate(&mut child), 0);

    // An operator revokes the registry's key: a restart with the same variable does not revive
    // it. The auth server's CLI key given to the registry too stays the auth server's.
    let registry = |keys: &[mcp_metrics_store::KeyRecord]| {
        let mut of_registry = keys.iter().filter(|k| k.service_name == "registry");
        let key = of_registry.next().unwrap().clone();
        assert!(of_registry.next().is_none(), "{keys:?}");
        key
    };
    let revoked = registry(&store.list_keys().await.unwrap());
    assert!(store.revoke_key(revoked.id).await.unwrap());
    let before = store.list_keys().await.unwrap();
    for registry_key in ["mcp_metrics_registry-key", cli_key.as_str()] {
        let (mut child, address, _log) = start("mcp_metrics_second-auth-key", registry_key);
        assert_eq!(
            status(address.clone(), "mcp_metrics_registry-key".into()).await,
            401
        );
        assert_eq!(status(address, cli_key.clone()).await, 200);
        assert_eq!(terminate(&mut child), 0);
    }
    let after = store.list_keys().await.unwrap();
    let without_use = |keys: Vec<mcp_metrics_store::KeyRecord>| {
        keys.into_iter()
            .map(|k| mcp_metrics_store::KeyRecord {
                last_used_at: None,
                ..k
            })
            .collect::<Vec<_>>()
    };
    assert_eq!(
        without_use(after),
        without_use(before),
        "no key revived, moved or added"
    );
}

#[tokio::test]
async fn metrics_rate_limit_applies_to_keys_from_the_environment() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("metrics.db");
    {
        // The registry's key as the Python service registered it: with its default of 1000.
        let store = mcp_metrics_store::Store::open(&db).await.unwrap();
        sqlx::query(
            "INSERT INTO api_keys (key_hash, service_name, created_at, is_active, rate_limit) \
             VALUES (?, 'registry', '2025-01-01 00:00:00', 1, 1000)",
        )
        .bind(mcp_metrics_store::hash_key("mcp_metrics_registry-key"))
        .execute(store.pool())
        .await
        .unwrap();
        store.close().await;
    }
    let (mut child, address, _log) = spawn_service(
        mcp_metrics(dir.path())
            .env("SQLITE_DB_PATH", &db)
            .env("METRICS_SERVICE_HOST", "127.0.0.1")
            .env("METRICS_SERVICE_PORT", "0")
            .env("METRICS_RATE_LIMIT", "2")
            .env("METRICS_API_KEY_AUTH_SERVER", "mcp_metrics_auth-key")
            .env("METRICS_API_KEY_REGISTRY", "mcp_metrics_registry-key"),
    );
    let client = reqwest::Client::new();
    for key in ["mcp_metrics_auth-key", "mcp_metrics_registry-key"] {
        let mut statuses = Vec::new();
        for _ in 0..3 {
            let response = metrics_request(&client, &address, key, &example_request())
                .send()
                .await
                .unwrap();
            statuses.push(response.status().as_u16());
        }
        assert_eq!(statuses, [200, 200, 429], "{key}");
    }
    assert_eq!(terminate(&mut child), 0);
}

#[test]
fn print_config_shows_the_environment_applied_and_hides_secrets() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("pipelines.yaml");
    std::fs::write(
        &config,
        edited(
            mcp_metrics::config::EMBEDDED_DEFAULT,
            "  validate: {}",
            "  validate: {}\n  enrich/secret: {metadata: {token: '${env:SECRET_TOKEN}'}}",
        ),
    )
    .unwrap();
    let output = mcp_metrics(dir.path())
        .args(["run", "--print-config", "--config"])
        .arg(&config)
        .env("METRICS_SERVICE_HOST", "127.0.0.1")
        .env("METRICS_SERVICE_PORT", "9001")
        .env("MAX_REQUEST_SIZE", "1MiB")
        .env("SQLITE_DB_PATH", "/var/lib/metrics/metrics.db")
        .env("METRICS_RATE_LIMIT", "250")
        .env("BATCH_SIZE", "42")
        .env("FLUSH_INTERVAL_SECONDS", "7")
        .env("METRICS_RETENTION_DAYS", "14")
        .env("SECRET_TOKEN", "hunter2")
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let printed: Value = serde_yaml::from_slice(&output.stdout).unwrap();
    let at = |path: &str| path.split('.').fold(&printed, |v, k| &v[k]).clone();
    assert_eq!(at("receivers.http.host"), "127.0.0.1");
    assert_eq!(at("receivers.http.port"), 9001);
    assert_eq!(at("receivers.http.max_request_size"), "1.0 MiB");
    // The database is named once, as an extension, and referred to by its id.
    assert_eq!(at("extensions.database.url"), "/var/lib/metrics/metrics.db");
    for component in [
        "receivers.http",
        "processors.auth",
        "processors.rate_limit",
        "exporters.database",
    ] {
        assert_eq!(
            at(&format!("{component}.database")),
            "database",
            "{component}"
        );
    }
    assert_eq!(at("processors.rate_limit.default_limit"), 250);
    assert_eq!(at("processors.batch.send_batch_size"), 42);
    assert_eq!(at("processors.batch.timeout"), "7s");
    assert_eq!(at("exporters.database.retention_days"), 14);
    assert_eq!(
        at("exporters.database.sending_queue.queue_size"),
        10000,
        "defaults are filled in"
    );
    assert_eq!(at("processors.enrich/secret.metadata.token"), "********");
    assert!(!String::from_utf8_lossy(&output.stdout).contains("hunter2"));
}

/// The Python service's database as its start-up (`init_database`) and its five migrations
/// leave it, in their order: the contract's tables with the columns it added to `tool_metrics`,
/// its aggregate and usage tables, `schema_migrations`, and `retention_policies` in its shape.
const PYTHON_SERVICE_SCHEMA: &[&str] = &[
    "CREATE TABLE api_keys (id INTEGER PRIMARY KEY AUTOINCREMENT, key_hash TEXT UNIQUE NOT NULL, \
     service_name TEXT NOT NULL, created_at TEXT NOT NULL, last_used_at TEXT, \
     is_active BOOLEAN DEFAULT 1, rate_limit INTEGER DEFAULT 1000)",
    "CREATE TABLE metrics (id INTEGER PRIMARY KEY AUTOINCREMENT, request_id TEXT NOT NULL, \
     service TEXT NOT NULL, service_version TEXT, instance_id TEXT, metric_type TEXT NOT NULL, \
     timestamp TEXT NOT NULL, value REAL NOT NULL, duration_ms REAL, dimensions TEXT, \
     metadata TEXT, created_at TEXT DEFAULT (datetime('now')))",
    "CREATE TABLE auth_metrics (id INTEGER PRIMARY KEY AUTOINCREMENT, request_id TEXT NOT NULL, \
     timestamp TEXT NOT NULL, service TEXT NOT NULL, duration_ms REAL, success BOOLEAN, \
     method TEXT, server TEXT, user_hash TEXT, error_code TEXT, \
     created_at TEXT DEFAULT (datetime('now')))",
    "CREATE TABLE discovery_metrics (id INTEGER PRIMARY KEY AUTOINCREMENT, \
     request_id TEXT NOT NULL, timestamp TEXT NOT NULL, service TEXT NOT NULL, duration_ms REAL, \
     query TEXT, results_count INTEGER, top_k_services INTEGER, top_n_tools INTEGER, \
     embedding_time_ms REAL, faiss_search_time_ms REAL, created_at TEXT DEFAULT (datetime('now')))",
    "CREATE TABLE tool_metrics (id INTEGER PRIMARY KEY AUTOINCREMENT, request_id TEXT NOT NULL, \
     timestamp TEXT NOT NULL, service TEXT NOT NULL, duration_ms REAL, tool_name TEXT, \
     server_path TEXT, server_name TEXT, success BOOLEAN, error_code TEXT, \
     input_size_bytes INTEGER, output_size_bytes INTEGER, client_name TEXT, client_version TEXT, \
     method TEXT, user_hash TEXT, created_at TEXT DEFAULT (datetime('now')))",
    "CREATE INDEX idx_metrics_timestamp ON metrics(timestamp)",
    "CREATE INDEX idx_metrics_service_type ON metrics(service, metric_type)",
    "CREATE INDEX idx_metrics_type_timestamp ON metrics(metric_type, timestamp)",
    "CREATE INDEX idx_auth_timestamp ON auth_metrics(timestamp)",
    "CREATE INDEX idx_auth_success ON auth_metrics(success, timestamp)",
    "CREATE INDEX idx_auth_user ON auth_metrics(user_hash, timestamp)",
    "CREATE INDEX idx_discovery_timestamp ON discovery_metrics(timestamp)",
    "CREATE INDEX idx_discovery_results ON discovery_metrics(results_count, timestamp)",
    "CREATE INDEX idx_tool_timestamp ON tool_metrics(timestamp)",
    "CREATE INDEX idx_tool_name ON tool_metrics(tool_name, timestamp)",
    "CREATE INDEX idx_tool_success ON tool_metrics(success, timestamp)",
    "CREATE INDEX idx_tool_client ON tool_metrics(client_name, timestamp)",
    "CREATE INDEX idx_tool_method ON tool_metrics(method, timestamp)",
    "CREATE INDEX idx_api_keys_hash ON api_keys(key_hash)",
    "CREATE INDEX idx_api_keys_service ON api_keys(service_name)",
    // Migration 1.
    "CREATE TABLE schema_migrations (version INTEGER PRIMARY KEY, name TEXT NOT NULL, \
     applied_at TEXT NOT NULL)",
    // Migration 2.
    "CREATE TABLE metrics_hourly (id INTEGER PRIMARY KEY AUTOINCREMENT, service TEXT NOT NULL, \
     metric_type TEXT NOT NULL, hour_timestamp TEXT NOT NULL, count INTEGER DEFAULT 0, \
     sum_value REAL DEFAULT 0.0, avg_value REAL DEFAULT 0.0, min_value REAL, max_value REAL, \
     sum_duration_ms REAL DEFAULT 0.0, avg_duration_ms REAL DEFAULT 0.0, \
     created_at TEXT DEFAULT (datetime('now')), updated_at TEXT DEFAULT (datetime('now')), \
     UNIQUE(service, metric_type, hour_timestamp))",
    "CREATE TABLE metrics_daily (id INTEGER PRIMARY KEY AUTOINCREMENT, service TEXT NOT NULL, \
     metric_type TEXT NOT NULL, date TEXT NOT NULL, count INTEGER DEFAULT 0, \
     sum_value REAL DEFAULT 0.0, avg_value REAL DEFAULT 0.0, min_value REAL, max_value REAL, \
     sum_duration_ms REAL DEFAULT 0.0, avg_duration_ms REAL DEFAULT 0.0, \
     created_at TEXT DEFAULT (datetime('now')), updated_at TEXT DEFAULT (datetime('now')), \
     UNIQUE(service, metric_type, date))",
    "CREATE INDEX idx_hourly_service_type_hour ON metrics_hourly(service, metric_type, hour_timestamp)",
    "CREATE INDEX idx_hourly_hour ON metrics_hourly(hour_timestamp)",
    "CREATE INDEX idx_daily_service_type_date ON metrics_daily(service, metric_type, date)",
    "CREATE INDEX idx_daily_date ON metrics_daily(date)",
    // Migration 3.
    "CREATE TABLE retention_policies (id INTEGER PRIMARY KEY AUTOINCREMENT, \
     table_name TEXT NOT NULL, retention_days INTEGER NOT NULL, is_active BOOLEAN DEFAULT 1, \
     created_at TEXT DEFAULT (datetime('now')), updated_at TEXT DEFAULT (datetime('now')), \
     UNIQUE(table_name))",
    "INSERT INTO retention_policies (table_name, retention_days) VALUES ('metrics', 90), \
     ('auth_metrics', 90), ('discovery_metrics', 90), ('tool_metrics', 90), \
     ('metrics_hourly', 365), ('metrics_daily', 1095)",
    // Migration 4.
    "ALTER TABLE api_keys ADD COLUMN usage_count INTEGER DEFAULT 0",
    "ALTER TABLE api_keys ADD COLUMN daily_usage_limit INTEGER DEFAULT NULL",
    "ALTER TABLE api_keys ADD COLUMN monthly_usage_limit INTEGER DEFAULT NULL",
    "ALTER TABLE api_keys ADD COLUMN description TEXT DEFAULT NULL",
    "CREATE TABLE api_key_usage_log (id INTEGER PRIMARY KEY AUTOINCREMENT, \
     key_hash TEXT NOT NULL, service_name TEXT NOT NULL, timestamp TEXT NOT NULL, \
     endpoint TEXT NOT NULL, request_count INTEGER DEFAULT 1, bytes_processed INTEGER DEFAULT 0, \
     duration_ms REAL DEFAULT 0, status_code INTEGER DEFAULT 200, \
     FOREIGN KEY (key_hash) REFERENCES api_keys(key_hash))",
    "CREATE INDEX idx_usage_key_timestamp ON api_key_usage_log(key_hash, timestamp)",
    "CREATE INDEX idx_usage_timestamp ON api_key_usage_log(timestamp)",
    "CREATE INDEX idx_usage_endpoint ON api_key_usage_log(endpoint, timestamp)",
    // Migration 5: its tables exist already; it adds indexes.
    "CREATE INDEX idx_metrics_hourly_timestamp ON metrics_hourly(hour_timestamp)",
    "CREATE INDEX idx_metrics_hourly_service ON metrics_hourly(service, metric_type)",
    "CREATE INDEX idx_metrics_daily_date ON metrics_daily(date)",
    "CREATE INDEX idx_metrics_daily_service ON metrics_daily(service, metric_type)",
    "CREATE INDEX idx_retention_policies_table ON retention_policies(table_name)",
    "INSERT INTO schema_migrations VALUES (1, 'initial_schema', '2025-06-01T08:00:00.000001'), \
     (2, 'add_aggregation_tables', '2025-06-01T08:00:00.000002'), \
     (3, 'add_retention_policies', '2025-06-01T08:00:00.000003'), \
     (4, 'add_api_key_usage_tracking', '2025-06-01T08:00:00.000004'), \
     (5, 'fix_missing_tables_and_columns', '2025-06-01T08:00:00.000005')",
];

/// Rows of `table` (the given columns, as JSON arrays) in row order.
async fn rows_of(pool: &sqlx::SqlitePool, table: &str, columns: &[String]) -> Vec<String> {
    let sql = format!(
        "SELECT json_array({}) FROM {table} ORDER BY rowid",
        columns.join(", ")
    );
    sqlx::query_scalar(sqlx::AssertSqlSafe(sql))
        .fetch_all(pool)
        .await
        .unwrap()
}

/// Every table of the file with its columns.
async fn tables_of(pool: &sqlx::SqlitePool) -> Vec<(String, Vec<String>)> {
    let names: Vec<String> = sqlx::query_scalar(
        "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%' \
         ORDER BY name",
    )
    .fetch_all(pool)
    .await
    .unwrap();
    let mut tables = Vec::new();
    for name in names {
        let columns = sqlx::query_scalar("SELECT name FROM pragma_table_info(?) ORDER BY cid")
            .bind(&name)
            .fetch_all(pool)
            .await
            .unwrap();
        tables.push((name, columns));
    }
    tables
}

#[tokio::test]
async fn a_database_the_python_service_wrote_is_taken_over_with_every_row_kept() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("metrics.db");
    let python_key = "mcp_metrics_python-era-auth-key";
    // Recent rows, as the Python service writes them (naive isoformat), so retention keeps them.
    let yesterday = (chrono::Utc::now() - chrono::Duration::days(1))
        .format("%Y-%m-%dT%H:%M:%S%.6f")
        .to_string();
    let url = format!("sqlite://{}?mode=rwc", db.display());
    let pool = sqlx::SqlitePool::connect(&url).await.unwrap();
    sqlx::query("PRAGMA journal_mode = WAL")
        .execute(&pool)
        .await
        .unwrap();
    for statement in PYTHON_SERVICE_SCHEMA {
        sqlx::query(sqlx::AssertSqlSafe(*statement))
            .execute(&pool)
            .await
            .unwrap();
    }
    let data = [
        // Its key from METRICS_API_KEY_AUTH_SERVER, as it registers one.
        "INSERT INTO api_keys (key_hash, service_name, created_at, is_active, rate_limit, usage_count) \
         VALUES ('{hash}', 'auth-server', '2025-06-01 08:00:00', 1, 1000, 42)",
        "INSERT INTO metrics (request_id, service, service_version, instance_id, metric_type, \
         timestamp, value, duration_ms, dimensions, metadata) VALUES \
         ('req_py1', 'auth-server', '1.0.0', 'auth-01', 'auth_request', '{at}', 1.0, 45.2, \
          '{\"success\": true}', '{}'), \
         ('req_py1', 'registry', NULL, NULL, 'tool_discovery', '{at}', 1.0, 80.0, '{}', '{}'), \
         ('req_py1', 'mcpgw', NULL, NULL, 'tool_execution', '{at}', 1.0, 250.0, '{}', '{}')",
        "INSERT INTO auth_metrics (request_id, timestamp, service, duration_ms, success, method, \
         server, user_hash) VALUES ('req_py1', '{at}', 'auth-server', 45.2, 1, 'jwt', 'mcpgw', 'u1')",
        "INSERT INTO discovery_metrics (request_id, timestamp, service, duration_ms, query, \
         results_count) VALUES ('req_py1', '{at}', 'registry', 80.0, 'weather', 5)",
        "INSERT INTO tool_metrics (request_id, timestamp, service, duration_ms, tool_name, \
         success, client_name, method) VALUES ('req_py1', '{at}', 'mcpgw', 250.0, 'get_weather', \
         0, 'claude', 'tools/call')",
        "INSERT INTO metrics_hourly (service, metric_type, hour_timestamp, count) \
         VALUES ('auth-server', 'auth_request', '2025-06-01T08:00:00', 7)",
        "INSERT INTO metrics_daily (service, metric_type, date, count) \
         VALUES ('auth-server', 'auth_request', '2025-06-01', 7)",
        "INSERT INTO api_key_usage_log (key_hash, service_name, timestamp, endpoint) \
         VALUES ('{hash}', 'auth-server', '{at}', '/metrics')",
        // An operator's choice through its admin API.
        "UPDATE retention_policies SET retention_days = 30 WHERE table_name = 'auth_metrics'",
    ];
    for statement in data {
        let statement = statement
            .replace("{hash}", &mcp_metrics_store::hash_key(python_key))
            .replace("{at}", &yesterday);
        sqlx::query(sqlx::AssertSqlSafe(statement))
            .execute(&pool)
            .await
            .unwrap();
    }
    // Compared after the run: every column, but for the key's use and limit, which change.
    let mut before_tables = tables_of(&pool).await;
    for (table, columns) in &mut before_tables {
        if table == "api_keys" {
            columns.retain(|c| c != "last_used_at" && c != "rate_limit");
        }
    }
    let mut before = Vec::new();
    for (table, columns) in &before_tables {
        before.push(rows_of(&pool, table, columns).await);
    }
    let schema_sql = "SELECT type, name, sql FROM sqlite_master \
                      WHERE tbl_name NOT IN ('api_keys', 'retention_policies') ORDER BY name";
    let before_schema: Vec<(String, String, Option<String>)> =
        sqlx::query_as(schema_sql).fetch_all(&pool).await.unwrap();
    pool.close().await;

    // The shipped configuration, the deployment's environment.
    let (mut child, address, _log) = spawn_service(
        mcp_metrics(dir.path())
            .env("SQLITE_DB_PATH", &db)
            .env("METRICS_SERVICE_HOST", "127.0.0.1")
            .env("METRICS_SERVICE_PORT", "0")
            .env("METRICS_API_KEY_AUTH_SERVER", python_key),
    );
    let client = reqwest::Client::new();
    let send = |method: reqwest::Method, path: &str, key: &str| {
        client
            .request(method, format!("http://{address}{path}"))
            .header("X-API-Key", key)
    };
    let health = Reply::from(
        client
            .get(format!("http://{address}/health"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(health.status, 200, "{}", health.body);
    let metrics = vec![
        json!({"type": "auth_request", "value": 1, "dimensions": {"success": true, "method": "jwt"}}),
        json!({"type": "tool_discovery", "value": 1, "dimensions": {"results_count": 3}}),
        json!({"type": "tool_execution", "value": 1, "dimensions": {"tool_name": "t", "success": true}}),
    ];
    let reply = Reply::from(
        send(reqwest::Method::POST, "/metrics", python_key)
            .json(&request_of("auth-server", metrics))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert_eq!(reply.body["accepted"], 3);
    let reply = Reply::from(
        send(reqwest::Method::POST, "/flush", python_key)
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(reply.status, 200, "{}", reply.body);

    // An admin key made beside the running service, and the admin endpoints on this file.
    let output = mcp_metrics(dir.path())
        .env("SQLITE_DB_PATH", &db)
        .args(["keys", "create", "--service", "ops", "--admin"])
        .output()
        .unwrap();
    assert!(output.status.success());
    let admin = String::from_utf8(output.stdout).unwrap();
    let admin = admin.lines().last().unwrap();
    let admin_call = |method: reqwest::Method, path: &str| {
        let request = send(method, path, admin);
        async move { Reply::from(request.send().await.unwrap()).await }
    };
    let reply = admin_call(
        reqwest::Method::PUT,
        "/admin/retention/policies/discovery_metrics?retention_days=60",
    )
    .await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    let reply = admin_call(reqwest::Method::GET, "/admin/retention/policies").await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    let policies: Vec<(String, u64, bool, String)> = reply.body["policies"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            (
                p["table_name"].as_str().unwrap().to_owned(),
                p["retention_days"].as_u64().unwrap(),
                p["is_active"].as_bool().unwrap(),
                p["set_by"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    let expected = [
        ("auth_metrics", 30, true, "admin"),
        ("discovery_metrics", 60, true, "admin"),
        ("metrics", 90, true, "config"),
        ("metrics_daily", 1095, true, "admin"),
        ("metrics_hourly", 365, true, "admin"),
        ("tool_metrics", 90, true, "config"),
    ]
    .map(|(t, d, a, s)| (t.to_owned(), d, a, s.to_owned()));
    assert_eq!(policies, expected);
    for (method, path) in [
        (reqwest::Method::GET, "/admin/retention/preview"),
        (reqwest::Method::POST, "/admin/retention/cleanup"),
        (reqwest::Method::GET, "/admin/database/size"),
    ] {
        let reply = admin_call(method, path).await;
        assert_eq!(reply.status, 200, "{path}: {}", reply.body);
    }
    let reply = admin_call(reqwest::Method::GET, "/admin/database/stats").await;
    let rows: Vec<(String, i64)> = reply.body["tables"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| {
            (
                t["table_name"].as_str().unwrap().to_owned(),
                t["rows"].as_i64().unwrap(),
            )
        })
        .collect();
    let expected = [
        ("metrics", 6),
        ("auth_metrics", 2),
        ("discovery_metrics", 2),
        ("tool_metrics", 2),
    ]
    .map(|(t, n)| (t.to_owned(), n));
    assert_eq!(rows, expected, "old rows and new, nothing cleaned up");
    assert_eq!(terminate(&mut child), 0);

    // Every old row is where it was, in every table, as it was; other tables untouched.
    let pool = sqlx::SqlitePool::connect(&url).await.unwrap();
    for ((table, columns), old_rows) in before_tables.iter().zip(&before) {
        if table == "retention_policies" {
            continue; // rebuilt; its rows were checked through the admin API
        }
        let now = rows_of(&pool, table, columns).await;
        assert!(now.len() >= old_rows.len(), "{table}");
        assert_eq!(now[..old_rows.len()], old_rows[..], "{table}");
        let ours = [
            "metrics",
            "auth_metrics",
            "discovery_metrics",
            "tool_metrics",
            "api_keys",
        ];
        if !ours.contains(&table.as_str()) {
            assert_eq!(now.len(), old_rows.len(), "{table} is not ours to write");
        }
    }
    // The key was used, and is now the service's key from the environment.
    let (source, rate_limit, used): (Option<String>, Option<i64>, Option<String>) =
        sqlx::query_as("SELECT source, rate_limit, last_used_at FROM api_keys WHERE id = 1")
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!((source.as_deref(), rate_limit), (Some("env"), None));
    assert!(used.is_some());
    let mut after_schema: Vec<(String, String, Option<String>)> =
        sqlx::query_as(schema_sql).fetch_all(&pool).await.unwrap();
    // The one change to the Python service's tables: the typed ones gain the
    // `authenticated_service` column (migration 0004, issue 14), added at their end.
    for (_, name, sql) in &mut after_schema {
        if ["auth_metrics", "discovery_metrics", "tool_metrics"].contains(&name.as_str()) {
            let added = ", authenticated_service TEXT)";
            let text = sql.as_mut().unwrap();
            assert!(text.ends_with(added), "{text}");
            text.truncate(text.len() - added.len());
            text.push(')');
        }
    }
    for object in &before_schema {
        assert!(
            after_schema.contains(object),
            "{object:?} was changed or dropped"
        );
    }
    let applied: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM _sqlx_migrations WHERE success")
        .fetch_one(&pool)
        .await
        .unwrap();
    let migrations = std::fs::read_dir(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/store/migrations/sqlite"
    ))
    .unwrap()
    .count();
    assert_eq!(applied as usize, migrations, "every migration applied");
}
