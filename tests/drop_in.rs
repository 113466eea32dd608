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

/// GET/POST/PUT with a key, returning the parsed reply.
async fn call(
    svc: &TestService,
    method: &str,
    path: &str,
    key: &str,
    body: Option<Value>,
) -> Reply {
    let method = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
    let mut request = svc
        .client
        .request(method, svc.url(path))
        .header("X-API-Key", key);
    if let Some(body) = body {
        request = request.json(&body);
    }
    Reply::from(request.send().await.unwrap()).await
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
        let reply = call(&svc, "GET", "/rate-limit", &key, None).await;
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
    let reply = call(&svc, "POST", "/flush", &key, None).await;
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
        let reply = call(&svc, "GET", path, &key, None).await;
        assert_eq!(reply.status, 403, "{path}");
        assert_eq!(reply.error(), "forbidden");
    }
    for (method, path) in [
        ("PUT", "/admin/retention/policies/metrics?retention_days=1"),
        ("POST", "/admin/retention/cleanup?dry_run=false"),
    ] {
        let reply = call(&svc, method, path, &key, None).await;
        assert_eq!(reply.status, 403, "{path}");
        assert_eq!(reply.error(), "forbidden");
    }

    let reply = call(&svc, "GET", "/admin/database/stats", &admin, None).await;
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

    let reply = call(&svc, "GET", "/admin/database/size", &admin, None).await;
    assert_eq!(reply.status, 200);
    assert!(reply.body["file_bytes"].as_u64().unwrap() > 0);
    assert!(reply.body["page_size"].as_u64().unwrap() > 0);

    // Retention: the test config keeps everything; set a policy, preview, dry run, clean up.
    let reply = call(&svc, "GET", "/admin/retention/policies", &admin, None).await;
    assert_eq!(reply.body["policies"].as_array().unwrap().len(), 4);
    assert!(
        reply.body["policies"]
            .as_array()
            .unwrap()
            .iter()
            .all(|p| p["is_active"] == false)
    );
    let reply = call(
        &svc,
        "PUT",
        "/admin/retention/policies/metrics",
        &admin,
        Some(json!({"retention_days": 30, "is_active": true})),
    )
    .await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    let reply = call(
        &svc,
        "PUT",
        "/admin/retention/policies/nope",
        &admin,
        Some(json!({"retention_days": 30})),
    )
    .await;
    assert_eq!(reply.status, 404);
    assert_eq!(reply.error(), "unknown_table");
    let reply = call(
        &svc,
        "PUT",
        "/admin/retention/policies/metrics",
        &admin,
        Some(json!({"days": 30})),
    )
    .await;
    assert_eq!(reply.status, 422);

    let reply = call(
        &svc,
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
    let reply = call(
        &svc,
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
    let reply = call(&svc, "POST", "/admin/retention/cleanup", &admin, None).await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert_eq!(reply.body["dry_run"], true);
    assert_eq!(reply.body["tables"][0]["rows_to_delete"], 3);
    assert_eq!(svc.store().await.row_counts().await.unwrap()["metrics"], 3);
    // An empty table_name is every table.
    let reply = call(
        &svc,
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
            let reply = call(svc, "GET", "/admin/retention/policies", &admin, None).await;
            let policies = reply.body["policies"].as_array().unwrap().clone();
            let found = policies.into_iter().find(|p| p["table_name"] == table);
            let found = found.unwrap();
            (found["retention_days"].clone(), found["is_active"].clone())
        }
    };

    // PUT takes retention_days and is_active as query parameters, as the Python service does.
    let reply = call(
        &svc,
        "PUT",
        "/admin/retention/policies/auth_metrics?retention_days=45&is_active=False",
        &admin,
        None,
    )
    .await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert_eq!(policy("auth_metrics").await, (json!(45), json!(false)));
    // is_active defaults to true; a query parameter wins over the body.
    let reply = call(
        &svc,
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
        let reply = call(&svc, "PUT", &path, &admin, None).await;
        assert_eq!(reply.status, 200, "{text}: {}", reply.body);
        assert_eq!(
            policy("tool_metrics").await,
            (json!(7), json!(active)),
            "{text}"
        );
    }
    for text in ["1", "yes", "True"] {
        let path = format!("/admin/retention/cleanup?dry_run={text}");
        let reply = call(&svc, "POST", &path, &admin, None).await;
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
        let reply = call(&svc, method, path, &admin, body).await;
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
            client
                .post(format!("http://{address}/metrics"))
                .header("X-API-Key", key)
                .json(&example_request())
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
            let response = client
                .post(format!("http://{address}/metrics"))
                .header("X-API-Key", key)
                .json(&example_request())
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
    assert_eq!(at("receivers.http.database"), "/var/lib/metrics/metrics.db");
    assert_eq!(
        at("processors.auth.database"),
        "/var/lib/metrics/metrics.db"
    );
    assert_eq!(at("exporters.sqlite.path"), "/var/lib/metrics/metrics.db");
    assert_eq!(at("processors.rate_limit.default_limit"), 250);
    assert_eq!(at("processors.batch.send_batch_size"), 42);
    assert_eq!(at("processors.batch.timeout"), "7s");
    assert_eq!(at("exporters.sqlite.retention_days"), 14);
    assert_eq!(
        at("exporters.sqlite.sending_queue.queue_size"),
        5000,
        "defaults are filled in"
    );
    assert_eq!(at("processors.enrich/secret.metadata.token"), "********");
    assert!(!String::from_utf8_lossy(&output.stdout).contains("hunter2"));
}
