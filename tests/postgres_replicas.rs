//! Replicas of the real binary sharing one real PostgreSQL database (issue 11): a load spread
//! over three while one is stopped, keys revoked from the CLI, PostgreSQL itself stopped under
//! load, a request resent to another replica, and a SQLite file migrated in.

mod common;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::postgres::PostgresServer;
use common::{ServiceProcess, mcp_metrics, spawn_service, terminate};
use mcp_metrics_store::Database;
use serde_json::{Value, json};
use sqlx::Row;

/// The embedded default config: what `cargo run --release` runs, here with DATABASE_URL set.
const DEFAULT_CONFIG: &str = include_str!("../pipelines.yaml");

/// One replica: the real binary on the default config, pointed at `database`.
struct Replica {
    process: ServiceProcess,
    address: String,
    _dir: tempfile::TempDir,
}

impl Replica {
    fn start(database: &str, env: &[(&str, &str)]) -> Replica {
        Replica::start_with(database, env, None)
    }

    /// With `config` written as the replica's `pipelines.yaml`, else on the embedded default.
    fn start_with(database: &str, env: &[(&str, &str)], config: Option<&str>) -> Replica {
        let dir = tempfile::tempdir().unwrap();
        if let Some(config) = config {
            std::fs::write(dir.path().join("pipelines.yaml"), config).unwrap();
        }
        let mut command = mcp_metrics(dir.path());
        command
            .arg("run")
            .env("DATABASE_URL", database)
            .env("METRICS_SERVICE_HOST", "127.0.0.1")
            .env("METRICS_SERVICE_PORT", "0")
            .env("FLUSH_INTERVAL_SECONDS", "1")
            .envs(env.iter().copied());
        let (process, address, _log) = spawn_service(&mut command);
        Replica {
            process,
            address,
            _dir: dir,
        }
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.address)
    }
}

/// A key for service `svc` that no rate limit gets in the way of.
async fn key_in(database: &str) -> (i64, String) {
    let database = Database::open(database).await.unwrap();
    let (record, key) = database
        .create_key("svc", Some(1_000_000), false)
        .await
        .unwrap();
    (record.id, key)
}

/// Request `n` of a load: ten metrics, each named by its sequence number.
fn load_request(n: u64) -> Value {
    let metrics: Vec<Value> = (0..10)
        .map(|i| {
            json!({"type": "tool_execution", "value": 1.0, "duration_ms": 2.0,
                   "dimensions": {"seq": n * 10 + i, "tool_name": "t", "success": true}})
        })
        .collect();
    json!({"service": "svc", "instance_id": format!("client-{n}"), "metrics": metrics})
}

/// Sends request `n` until a replica answers 200, trying the next replica after a failed
/// connection or a 503, always with the same Idempotency-Key; false if none took it in time.
async fn send_until_taken(
    client: &reqwest::Client,
    replicas: &[String],
    key: &str,
    n: u64,
) -> bool {
    let body = load_request(n);
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut attempt = n as usize;
    while Instant::now() < deadline {
        let address = &replicas[attempt % replicas.len()];
        attempt += 1;
        let sent = client
            .post(format!("http://{address}/metrics"))
            .header("X-API-Key", key)
            .header("Idempotency-Key", format!("load-{n}"))
            .timeout(Duration::from_secs(10))
            .json(&body)
            .send()
            .await;
        match sent.map(|reply| reply.status().as_u16()) {
            Ok(200) => return true,
            Ok(503 | 429) | Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
            Ok(status) => panic!("request {n}: unexpected {status}"),
        }
    }
    false
}

/// Clients sending requests 0, 1, 2, ... over `replicas` until `stop`; the requests answered 200.
async fn run_load(
    replicas: Vec<String>,
    key: String,
    clients: u64,
    stop: Arc<AtomicBool>,
) -> Vec<u64> {
    let client = reqwest::Client::new();
    let replicas = Arc::new(replicas);
    let mut tasks = Vec::new();
    for first in 0..clients {
        let (client, replicas, key, stop) =
            (client.clone(), replicas.clone(), key.clone(), stop.clone());
        tasks.push(tokio::spawn(async move {
            let mut taken = Vec::new();
            let mut n = first;
            while !stop.load(Ordering::Relaxed) {
                if send_until_taken(&client, &replicas, &key, n).await {
                    taken.push(n);
                }
                n += clients;
            }
            taken
        }));
    }
    let mut taken = Vec::new();
    for task in tasks {
        taken.extend(task.await.unwrap());
    }
    taken
}

/// How many times each metric (by its `seq`) is in `metrics`, and in `tool_metrics`.
async fn stored_by_seq(database: &str) -> (HashMap<i64, i64>, i64) {
    let database = Database::open(database).await.unwrap();
    let Database::Postgres(store) = &database else {
        unreachable!()
    };
    let rows = sqlx::query(
        "SELECT (dimensions->>'seq')::bigint AS seq, count(*) AS n FROM metrics GROUP BY 1",
    )
    .fetch_all(store.pool())
    .await
    .unwrap();
    let seqs = rows
        .iter()
        .map(|row| (row.get::<i64, _>("seq"), row.get::<i64, _>("n")))
        .collect();
    let typed = database.row_counts().await.unwrap()["tool_metrics"];
    (seqs, typed)
}

/// Every metric of every request answered 200 is stored once, and no metric is stored twice.
fn assert_exactly_once(taken: &[u64], stored: &HashMap<i64, i64>) {
    assert!(!taken.is_empty(), "the load was taken");
    let twice: Vec<_> = stored.iter().filter(|(_, n)| **n > 1).collect();
    assert!(twice.is_empty(), "stored more than once: {twice:?}");
    let missing: Vec<i64> = taken
        .iter()
        .flat_map(|n| (0..10).map(move |i| (*n * 10 + i) as i64))
        .filter(|seq| !stored.contains_key(seq))
        .collect();
    assert!(
        missing.is_empty(),
        "{} acknowledged metrics missing, e.g. {:?}",
        missing.len(),
        &missing[..missing.len().min(10)]
    );
}

/// Three replicas take a load spread over them; one is stopped (`signal`) in the middle; the
/// clients resend what a failed connection left unanswered to another replica.
async fn stop_one_replica_under_load(signal: &str, durable: bool) {
    let server = PostgresServer::start();
    let database = server.create_database("replicas");
    let (_, key) = key_in(&database).await;
    let acknowledgements = if durable { "true" } else { "false" };
    let env = [("METRICS_ACKNOWLEDGEMENTS", acknowledgements)];
    let mut replicas: Vec<Replica> = (0..3).map(|_| Replica::start(&database, &env)).collect();
    let addresses = replicas.iter().map(|r| r.address.clone()).collect();

    let stop = Arc::new(AtomicBool::new(false));
    let load = tokio::spawn(run_load(addresses, key, 12, stop.clone()));
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let stopped = &mut replicas[1];
    match signal {
        "TERM" => assert_eq!(terminate(&mut stopped.process), 0, "a clean drain"),
        _ => {
            let killed = std::process::Command::new("kill")
                .args(["-KILL", &stopped.process.id().to_string()])
                .status()
                .unwrap();
            assert!(killed.success());
        }
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    stop.store(true, Ordering::Relaxed);
    let taken = load.await.unwrap();
    for replica in [0, 2] {
        assert_eq!(terminate(&mut replicas[replica].process), 0);
    }

    let (stored, typed) = stored_by_seq(&database).await;
    eprintln!(
        "{} requests taken, {} metrics stored",
        taken.len(),
        stored.len()
    );
    assert_exactly_once(&taken, &stored);
    assert_eq!(typed, stored.len() as i64, "each one in tool_metrics too");
}

#[tokio::test(flavor = "multi_thread")]
async fn three_replicas_store_every_acknowledged_metric_once_while_one_is_stopped_with_sigterm() {
    stop_one_replica_under_load("TERM", false).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn in_durable_mode_a_replica_killed_with_sigkill_loses_nothing_it_acknowledged() {
    stop_one_replica_under_load("KILL", true).await;
}

/// Polls `POST /metrics` with `key` on every replica until each answers `status`; how long
/// that took.
async fn until_every_replica_answers(replicas: &[Replica], key: &str, status: u16) -> Duration {
    let client = reqwest::Client::new();
    let started = Instant::now();
    for replica in replicas {
        loop {
            let reply = client
                .post(replica.url("/metrics"))
                .header("X-API-Key", key)
                .json(&load_request(0))
                .send()
                .await
                .unwrap();
            if reply.status().as_u16() == status {
                break;
            }
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "{} still answers {} rather than {status}",
                replica.address,
                reply.status()
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    started.elapsed()
}

/// `mcp-metrics args...` in a fresh folder; its output, which must be a success.
fn cli(args: &[&str]) -> String {
    let dir = tempfile::tempdir().unwrap();
    let output = mcp_metrics(dir.path()).args(args).output().unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_key_made_or_revoked_with_the_cli_holds_on_every_replica_within_a_second() {
    let server = PostgresServer::start();
    let database = server.create_database("keys");
    // Three replicas starting at once on an empty database: they migrate it and register the
    // same key from the environment together, and all come up.
    let env = [(
        "METRICS_API_KEY_GATEWAY",
        "mcp_metrics_from-the-environment",
    )];
    let replicas: Vec<Replica> = std::thread::scope(|scope| {
        let starting: Vec<_> = (0..3)
            .map(|_| scope.spawn(|| Replica::start(&database, &env)))
            .collect();
        starting.into_iter().map(|r| r.join().unwrap()).collect()
    });
    let from_env = "mcp_metrics_from-the-environment";
    until_every_replica_answers(&replicas, from_env, 200).await;
    let listed = cli(&["keys", "list", "--database", &database]);
    assert_eq!(
        listed.matches("gateway").count(),
        1,
        "one key registered: {listed}"
    );

    let made = cli(&[
        "keys",
        "create",
        "--service",
        "svc",
        "--database",
        &database,
    ]);
    let key = made.lines().last().unwrap().trim().to_owned();
    let id = made
        .split_whitespace()
        .skip_while(|word| *word != "key")
        .nth(1)
        .unwrap()
        .to_owned();
    let took = until_every_replica_answers(&replicas, &key, 200).await;
    assert!(took < Duration::from_secs(1), "a new key took {took:?}");

    let revoked_at = Instant::now();
    cli(&["keys", "revoke", &id, "--database", &database]);
    // The revoke command's own run (a process start and a connection) counts against the second.
    let took = until_every_replica_answers(&replicas, &key, 401).await + revoked_at.elapsed();
    eprintln!("revoked on every replica {took:?} after the command started");
    assert!(took < Duration::from_secs(1), "the revoke took {took:?}");
    // The key cache's periodic refresh (2 s in the default config) did not do it.
    assert!(took < Duration::from_millis(1_900), "{took:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_request_resent_to_another_replica_with_the_same_idempotency_key_is_stored_once() {
    let server = PostgresServer::start();
    let database = server.create_database("resend");
    let (_, key) = key_in(&database).await;
    let mut replicas: Vec<Replica> = (0..2).map(|_| Replica::start(&database, &[])).collect();
    let client = reqwest::Client::new();
    let send = |replica: &Replica, idempotency_key: &str| {
        client
            .post(replica.url("/metrics"))
            .header("X-API-Key", &key)
            .header("Idempotency-Key", idempotency_key)
            .json(&load_request(7))
            .send()
    };
    let first = send(&replicas[0], "batch-7").await.unwrap();
    assert_eq!(first.status(), 200);
    let first: Value = first.json().await.unwrap();
    let again: Value = send(&replicas[1], "batch-7")
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(again, first, "answered like the first, request id included");
    // Another key is another request.
    let other: Value = send(&replicas[1], "batch-8")
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_ne!(other["request_id"], first["request_id"]);
    for replica in &mut replicas {
        assert_eq!(terminate(&mut replica.process), 0);
    }

    let (stored, _) = stored_by_seq(&database).await;
    assert_eq!(stored.len(), 10, "request 7's ten metrics");
    // The typed table's columns, as the contract maps them.
    let Database::Postgres(store) = Database::open(&database).await.unwrap() else {
        unreachable!()
    };
    let typed: Vec<(String, Option<bool>, f64)> = sqlx::query_as(
        "SELECT t.tool_name, t.success, t.duration_ms FROM tool_metrics t \
         JOIN metrics m ON m.request_id = t.request_id AND m.timestamp = t.timestamp \
         WHERE m.dimensions->>'seq' = '70'",
    )
    .fetch_all(store.pool())
    .await
    .unwrap();
    assert!(!typed.is_empty());
    assert!(
        typed
            .iter()
            .all(|row| *row == ("t".to_owned(), Some(true), 2.0)),
        "{typed:?}"
    );
    assert!(
        stored.values().all(|n| *n == 2),
        "once per idempotency key: {stored:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn postgres_stopped_for_five_seconds_under_load_loses_nothing_acknowledged() {
    let server = PostgresServer::start();
    let database = server.create_database("outage");
    let (_, key) = key_in(&database).await;
    // The default config, with /health saying so after 1 s of failed exports rather than 30.
    let config = DEFAULT_CONFIG.replace(
        "  shutdown_timeout: 30s\n",
        "  shutdown_timeout: 30s\n  export_failure_threshold: 1s\n",
    );
    assert_ne!(config, DEFAULT_CONFIG);
    let mut replica = Replica::start_with(&database, &[], Some(&config));
    let client = reqwest::Client::new();

    let stop = Arc::new(AtomicBool::new(false));
    let load = tokio::spawn(run_load(
        vec![replica.address.clone()],
        key,
        4,
        stop.clone(),
    ));
    tokio::time::sleep(Duration::from_millis(500)).await;
    server.stop();
    let down_at = Instant::now();
    // While PostgreSQL is down, /health names the database exporter (an export fails once the
    // pool has tried to connect for 2 s; /health says so 1 s after the first failure).
    loop {
        let reply = client.get(replica.url("/health")).send().await.unwrap();
        let (status, text) = (reply.status(), reply.text().await.unwrap());
        if status == 503 {
            assert!(text.contains("exporters.database"), "{text}");
            break;
        }
        assert!(down_at.elapsed() < Duration::from_secs(15), "still {text}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_secs(5).saturating_sub(down_at.elapsed())).await;
    server.start_again();
    // Back: /health recovers by itself, under load.
    loop {
        let reply = client.get(replica.url("/health")).send().await.unwrap();
        if reply.status() == 200 {
            break;
        }
        assert!(
            down_at.elapsed() < Duration::from_secs(40),
            "not healthy again"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, Ordering::Relaxed);
    let taken = load.await.unwrap();
    assert_eq!(terminate(&mut replica.process), 0);

    let (stored, _) = stored_by_seq(&database).await;
    assert_exactly_once(&taken, &stored);
}

#[tokio::test(flavor = "multi_thread")]
async fn migrating_a_sqlite_file_into_postgres_keeps_every_row() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("metrics.db");
    let sqlite = Database::open(file.to_str().unwrap()).await.unwrap();
    let (kept_key, _) = sqlite
        .create_key("registry", Some(600), true)
        .await
        .unwrap();
    sqlite
        .set_retention_policy("tool_metrics", 30, true)
        .await
        .unwrap();
    let Database::Sqlite(store) = &sqlite else {
        unreachable!()
    };
    // Rows as the service writes them, and as the Python service did (naive timestamps,
    // `datetime('now')` for created_at, booleans as 0/1).
    let mut service = common::TestService::in_dir(
        tempfile::tempdir_in(dir.path()).unwrap(),
        &common::DEFAULT_PIPELINE.replace("{dir}/metrics.db", file.to_str().unwrap()),
    )
    .await;
    let key = sqlite
        .create_key("auth-server", None, false)
        .await
        .unwrap()
        .1;
    let mut request = common::example_request();
    request["metrics"]
        .as_array_mut()
        .unwrap()
        .extend([common::metric("tool_discovery"), common::metric("custom")]);
    assert_eq!(service.post(Some(&key), &request).await.status, 200);
    service.shutdown().await;
    sqlx::query(
        "INSERT INTO tool_metrics (request_id, timestamp, service, duration_ms, tool_name, \
         success, input_size_bytes) VALUES ('req_py', '2024-01-15T10:30:00.123456', 'mcp', 3.5, \
         'search', 1, 1024)",
    )
    .execute(store.pool())
    .await
    .unwrap();
    let before = sqlite.row_counts().await.unwrap();

    let server = PostgresServer::start();
    let postgres = server.create_database("migrated");
    let from = format!("sqlite://{}", file.display());
    let printed = cli(&["migrate", "--from", &from, "--to", &postgres]);
    assert!(printed.contains("metrics: 3 rows"), "{printed}");

    let target = Database::open(&postgres).await.unwrap();
    assert_eq!(target.row_counts().await.unwrap(), before);
    let keys = |keys: Vec<mcp_metrics_store::KeyRecord>| -> Vec<_> {
        keys.into_iter()
            .map(|k| {
                (
                    k.service_name,
                    k.is_active,
                    k.rate_limit,
                    k.is_admin,
                    k.created_at,
                )
            })
            .collect()
    };
    assert_eq!(
        keys(target.list_keys().await.unwrap()),
        keys(sqlite.list_keys().await.unwrap())
    );
    let policies = target.retention_policies().await.unwrap();
    let tool = policies.iter().find(|p| p.table_name == "tool_metrics");
    assert_eq!(
        tool.map(|p| (p.retention_days, p.set_by.as_str())),
        Some((30, "admin"))
    );
    assert!(kept_key.is_admin);

    let Database::Postgres(pg) = &target else {
        unreachable!()
    };
    let auth =
        sqlx::query("SELECT request_id, timestamp, success, method, user_hash FROM auth_metrics")
            .fetch_one(pg.pool())
            .await
            .unwrap();
    assert_eq!(auth.get::<Option<bool>, _>("success"), Some(true));
    assert_eq!(
        auth.get::<Option<String>, _>("method").as_deref(),
        Some("jwt")
    );
    assert_eq!(
        auth.get::<chrono::DateTime<chrono::Utc>, _>("timestamp")
            .to_rfc3339(),
        "2024-01-15T10:30:00+00:00"
    );
    let python = sqlx::query(
        "SELECT timestamp, success, input_size_bytes FROM tool_metrics WHERE request_id = 'req_py'",
    )
    .fetch_one(pg.pool())
    .await
    .unwrap();
    assert_eq!(
        python
            .get::<chrono::DateTime<chrono::Utc>, _>("timestamp")
            .timestamp_subsec_micros(),
        123456,
        "a naive timestamp is read as UTC"
    );
    assert_eq!(python.get::<Option<bool>, _>("success"), Some(true));
    assert_eq!(python.get::<Option<i64>, _>("input_size_bytes"), Some(1024));
    let dimensions: String = sqlx::query_scalar(
        "SELECT dimensions::text FROM metrics WHERE metric_type = 'auth_request'",
    )
    .fetch_one(pg.pool())
    .await
    .unwrap();
    assert_eq!(
        serde_json::from_str::<Value>(&dimensions).unwrap(),
        common::example_request()["metrics"][0]["dimensions"],
        "dimensions as jsonb"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn retention_and_the_admin_endpoints_work_on_postgres() {
    let server = PostgresServer::start();
    let database = server.create_database("admin");
    let (_, key) = key_in(&database).await;
    let admin = Database::open(&database)
        .await
        .unwrap()
        .create_key("ops", None, true)
        .await
        .unwrap()
        .1;
    let mut replica = Replica::start(&database, &[]);
    let client = reqwest::Client::new();
    // An admin call: its status and JSON body.
    let call = |method: reqwest::Method, path: &str| {
        let request = client
            .request(method, replica.url(path))
            .header("X-API-Key", &admin);
        async move {
            let reply = request.send().await.unwrap();
            (reply.status(), reply.json::<Value>().await.unwrap())
        }
    };
    // Two metrics of 2024 and one of now.
    let mut old = load_request(1);
    let metrics = old["metrics"].as_array_mut().unwrap();
    metrics.truncate(3);
    metrics[0]["timestamp"] = "2024-01-15T10:30:00Z".into();
    metrics[1]["timestamp"] = "2024-01-15T10:30:01Z".into();
    let reply = client
        .post(replica.url("/metrics"))
        .header("X-API-Key", &key)
        .json(&old)
        .send()
        .await
        .unwrap();
    assert_eq!(reply.status(), 200);
    let (flushed, _) = call(reqwest::Method::POST, "/flush").await;
    assert_eq!(flushed, 200);

    let (_, stats) = call(reqwest::Method::GET, "/admin/database/stats").await;
    let tool = stats["tables"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["table_name"] == "tool_metrics")
        .unwrap()
        .clone();
    assert_eq!(tool["rows"], 3, "{stats}");
    assert_eq!(tool["oldest"], "2024-01-15T10:30:00.000000Z", "{stats}");

    let (set, _) = call(
        reqwest::Method::PUT,
        "/admin/retention/policies/tool_metrics?retention_days=30",
    )
    .await;
    assert_eq!(set, 200);
    let (_, preview) = call(
        reqwest::Method::GET,
        "/admin/retention/preview?table_name=tool_metrics",
    )
    .await;
    assert_eq!(preview["total_rows"], 2, "{preview}");
    let (_, cleanup) = call(
        reqwest::Method::POST,
        "/admin/retention/cleanup?table_name=tool_metrics&dry_run=false",
    )
    .await;
    assert_eq!(cleanup["total_rows"], 2, "{cleanup}");
    let counts = Database::open(&database)
        .await
        .unwrap()
        .row_counts()
        .await
        .unwrap();
    assert_eq!((counts["tool_metrics"], counts["metrics"]), (1, 3));

    let (_, size) = call(reqwest::Method::GET, "/admin/database/size").await;
    assert!(
        size["path"].as_str().unwrap().starts_with("postgres://"),
        "{size}"
    );
    assert!(size["file_bytes"].as_u64().unwrap() > 0, "{size}");
    assert_eq!(terminate(&mut replica.process), 0);
}
