//! Issue 3: rate limits, batching, enrichment, backpressure, retries, shutdown and retention,
//! over a real server and real SQLite files.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use common::*;
use serde_json::json;
use sqlx::Row;

fn with_processors(processors: &str, list: &str) -> String {
    format!(
        "
receivers:
  http: {{host: 127.0.0.1, port: 0}}
processors:
  auth: {{database: '{{dir}}/metrics.db', refresh_interval: 200ms}}
{processors}
exporters:
  sqlite: {{path: '{{dir}}/metrics.db', retention_days: 0}}
service:
  pipelines:
    metrics: {{receivers: [http], processors: [auth, {list}], exporters: [sqlite]}}
"
    )
}

fn header(reply: &Reply, name: &str) -> i64 {
    reply.headers[name].to_str().unwrap().parse().unwrap()
}

#[tokio::test]
async fn each_key_has_its_own_smooth_limit_with_headers_on_every_answer() {
    let svc = TestService::with_config(&with_processors(
        "  rate_limit: {default_limit: 3}",
        "rate_limit",
    ))
    .await;
    let store = svc.store().await;
    let (limited, key) = store
        .create_key("auth-server", Some(5), false)
        .await
        .unwrap();
    for remaining in (0..5).rev() {
        let reply = svc.post(Some(&key), &example_request()).await;
        assert_eq!(reply.status, 200);
        assert_eq!(header(&reply, "x-ratelimit-limit"), 5);
        assert_eq!(header(&reply, "x-ratelimit-remaining"), remaining);
        assert!(header(&reply, "x-ratelimit-reset") > 0);
    }
    let over = svc.post(Some(&key), &example_request()).await;
    assert_eq!(over.status, 429);
    assert_eq!(over.error(), "rate_limit_exceeded");
    let retry_after = header(&over, "retry-after");
    assert!(
        (1..=12).contains(&retry_after),
        "one request refills in 12 s: {retry_after}"
    );
    assert_eq!(header(&over, "x-ratelimit-remaining"), 0);

    // Another key is not affected; a key without its own limit gets the default.
    let other = svc.key("registry").await;
    for _ in 0..3 {
        assert_eq!(svc.post(Some(&other), &example_request()).await.status, 200);
    }
    let reply = svc.post(Some(&other), &example_request()).await;
    assert_eq!(reply.status, 429);
    assert_eq!(header(&reply, "x-ratelimit-limit"), 3);

    // A new limit in the table applies within seconds.
    sqlx::query("UPDATE api_keys SET rate_limit = 50 WHERE id = ?")
        .bind(limited.id)
        .execute(store.pool())
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(600)).await;
    let reply = svc.post(Some(&key), &example_request()).await;
    assert_eq!(reply.status, 200);
    assert_eq!(header(&reply, "x-ratelimit-limit"), 50);
}

#[tokio::test]
async fn a_batch_is_handed_on_when_full() {
    let svc = TestService::with_config(&with_processors(
        "  batch: {send_batch_size: 10, timeout: 1h}",
        "batch",
    ))
    .await;
    let key = svc.key("svc").await;
    let reply = svc
        .post(Some(&key), &request_of("svc", vec![metric("custom"); 9]))
        .await;
    assert_eq!(reply.status, 200);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        svc.store().await.row_counts().await.unwrap()["metrics"],
        0,
        "9 < send_batch_size"
    );
    svc.post(Some(&key), &request_of("svc", vec![metric("custom")]))
        .await;
    assert_eq!(svc.rows_eventually("metrics", 10).await, 10);
}

#[tokio::test]
async fn a_batch_is_handed_on_after_its_timeout_and_at_shutdown() {
    let mut svc = TestService::with_config(&with_processors(
        "  batch: {send_batch_size: 1000, timeout: 300ms}\n  batch/slow: {send_batch_size: 1000, timeout: 1h}",
        "batch",
    ))
    .await;
    let key = svc.key("svc").await;
    svc.post(Some(&key), &request_of("svc", vec![metric("custom"); 3]))
        .await;
    assert_eq!(svc.rows_eventually("metrics", 3).await, 3);
    svc.shutdown().await;

    // Held for an hour, but shutdown hands it on.
    let mut svc = TestService::with_config(&with_processors(
        "  batch: {send_batch_size: 1000, timeout: 1h}",
        "batch",
    ))
    .await;
    let key = svc.key("svc").await;
    svc.post(
        Some(&key),
        &request_of("svc", vec![metric("tool_execution"); 7]),
    )
    .await;
    svc.shutdown().await;
    let counts = svc.store().await.row_counts().await.unwrap();
    assert_eq!((counts["metrics"], counts["tool_metrics"]), (7, 7));
}

#[tokio::test]
async fn durable_acknowledgements_cover_metrics_waiting_in_a_batch() {
    let svc = TestService::with_config(&edited(
        &with_processors("  batch: {send_batch_size: 1000, timeout: 200ms}", "batch"),
        "http: {host: 127.0.0.1, port: 0}",
        "http: {host: 127.0.0.1, port: 0, acknowledgements: true}",
    ))
    .await;
    let key = svc.key("svc").await;
    let reply = svc
        .post(
            Some(&key),
            &request_of("svc", vec![metric("auth_request"); 4]),
        )
        .await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    // The 200 came after the commit: no waiting needed.
    let counts = svc.store().await.row_counts().await.unwrap();
    assert_eq!((counts["metrics"], counts["auth_metrics"]), (4, 4));
}

#[tokio::test]
async fn enrich_adds_attributes_and_the_authenticated_service() {
    let mut svc = TestService::with_config(&with_processors(
        "  enrich: {dimensions: {region: eu-west-1, canary: true}, metadata: {collector: test}}",
        "enrich",
    ))
    .await;
    let key = svc.key("auth-server").await;
    let reply = svc
        .post(Some(&key), &request_of("registry", vec![metric("custom")]))
        .await;
    assert_eq!(reply.status, 200);
    svc.shutdown().await;
    let row = sqlx::query("SELECT service, dimensions, metadata FROM metrics")
        .fetch_one(svc.store().await.pool())
        .await
        .unwrap();
    assert_eq!(
        row.get::<String, _>("service"),
        "registry",
        "record mode keeps the client's claim"
    );
    let dimensions: serde_json::Value =
        serde_json::from_str(&row.get::<String, _>("dimensions")).unwrap();
    assert_eq!(
        dimensions,
        json!({"k": "v", "region": "eu-west-1", "canary": true})
    );
    let metadata: serde_json::Value =
        serde_json::from_str(&row.get::<String, _>("metadata")).unwrap();
    assert_eq!(metadata["authenticated_service"], "auth-server");
    assert_eq!(metadata["collector"], "test");
    assert!(metadata["received_at"].as_str().is_some());

    let mut svc = TestService::with_config(&with_processors(
        "  enrich: {service_identity: overwrite, received_at_key: null}",
        "enrich",
    ))
    .await;
    let key = svc.key("auth-server").await;
    svc.post(Some(&key), &request_of("registry", vec![metric("custom")]))
        .await;
    svc.shutdown().await;
    let row = sqlx::query("SELECT service, metadata FROM metrics")
        .fetch_one(svc.store().await.pool())
        .await
        .unwrap();
    assert_eq!(
        row.get::<String, _>("service"),
        "auth-server",
        "overwrite stores the key's service"
    );
    assert_eq!(row.get::<String, _>("metadata"), "{}");
}

/// A stalled database: the queue fills, the service answers 503 instead of holding more, the
/// export fails (SQLITE_BUSY after the 5 s busy timeout) and is retried, and once the database is
/// free every acknowledged metric lands.
#[tokio::test]
async fn a_stalled_exporter_pushes_back_and_loses_nothing_when_it_recovers() {
    let svc = TestService::with_config(&default_pipeline_with(
        "  sqlite: {path: '{dir}/metrics.db', retention_days: 0}",
        "  sqlite:
    path: '{dir}/metrics.db'
    retention_days: 0
    sending_queue: {queue_size: 40, batch_max_size: 10}
    retry_on_failure: {initial_interval: 200ms, max_interval: 1s}",
    ))
    .await;
    let key = svc.key("svc").await;

    // Another writer holds the database.
    let blocker = DatabaseLock::take(&svc.db_path()).await;

    let mut acknowledged = 0;
    let mut refused = None;
    for _ in 0..20 {
        let reply = svc
            .post(
                Some(&key),
                &request_of("svc", vec![metric("tool_execution"); 5]),
            )
            .await;
        match reply.status {
            200 => acknowledged += reply.body["accepted"].as_i64().unwrap(),
            503 => {
                refused = Some(reply);
                break;
            }
            other => panic!("unexpected {other}: {}", reply.body),
        }
    }
    let refused = refused.expect("a full queue refuses");
    assert_eq!(refused.error(), "service_unavailable");
    assert!(header(&refused, "retry-after") >= 1);
    assert!(
        (40..=50).contains(&acknowledged),
        "the queue holds 40 metrics: {acknowledged}"
    );

    // Past the busy timeout the export fails and is retried; then the database is free again.
    tokio::time::sleep(Duration::from_secs(6)).await;
    blocker.release().await;
    assert_eq!(
        svc.rows_eventually("metrics", acknowledged).await,
        acknowledged
    );
    assert_eq!(
        svc.rows_eventually("tool_metrics", acknowledged).await,
        acknowledged
    );
    // And it takes metrics again.
    let reply = svc
        .post(Some(&key), &request_of("svc", vec![metric("custom")]))
        .await;
    assert_eq!(reply.status, 200);
}

/// Durable mode with the database stalled: requests the exporter's queue has no room for are
/// refused with 503 after the queue's hand-off wait, not held until their acknowledgement times
/// out and then stored anyway (twice, once the client sends them again). Those it queued are
/// committed and acknowledged once the database is free; nothing refused is stored.
#[tokio::test]
async fn durable_requests_a_stalled_queue_cannot_take_are_refused_and_never_stored() {
    let config = edited(
        &edited(
            &with_processors("  batch: {send_batch_size: 100, timeout: 30s}", "batch"),
            "http: {host: 127.0.0.1, port: 0}",
            "http: {host: 127.0.0.1, port: 0, acknowledgements: true, acknowledgement_timeout: 60s}",
        ),
        "  sqlite: {path: '{dir}/metrics.db', retention_days: 0}",
        "  sqlite:
    path: '{dir}/metrics.db'
    retention_days: 0
    sending_queue: {queue_size: 40, batch_max_size: 10}",
    );
    let mut svc = TestService::with_config(&config).await;
    let key = svc.key("svc").await;
    let blocker = DatabaseLock::take(&svc.db_path()).await;

    // The queue's room (40 metrics, the stalled export's included) takes 8 requests of 5.
    let refused = AtomicI64::new(0);
    let sent = std::time::Instant::now();
    let requests = (0..20).map(|_| async {
        let reply = svc
            .post(
                Some(&key),
                &request_of("svc", vec![metric("tool_execution"); 5]),
            )
            .await;
        if reply.status == 503 {
            assert_eq!(reply.error(), "service_unavailable", "{}", reply.body);
            assert!(header(&reply, "retry-after") >= 1);
            let waited = sent.elapsed();
            assert!(waited < Duration::from_secs(10), "refused after {waited:?}");
            refused.fetch_add(1, Ordering::SeqCst);
        }
        reply.status
    });
    let release = async {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while refused.load(Ordering::SeqCst) < 12 {
            assert!(
                std::time::Instant::now() < deadline,
                "{} of 20 refused while the database is stalled",
                refused.load(Ordering::SeqCst)
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        blocker.release().await;
    };
    let (statuses, ()) = tokio::join!(futures::future::join_all(requests), release);
    let acknowledged = statuses.iter().filter(|&&s| s == 200).count() as i64;
    assert_eq!(
        (acknowledged, refused.load(Ordering::SeqCst)),
        (8, 12),
        "{statuses:?}"
    );

    // Stopped, it has handed on everything it held: exactly what was acknowledged is stored.
    svc.shutdown().await;
    let counts = svc.store().await.row_counts().await.unwrap();
    assert_eq!(
        (counts["metrics"], counts["tool_metrics"]),
        (5 * acknowledged, 5 * acknowledged)
    );
}

#[tokio::test]
async fn retention_removes_old_rows_only_from_every_table() {
    let svc = TestService::with_config(&default_pipeline_with(
        "  sqlite: {path: '{dir}/metrics.db', retention_days: 0}",
        "  sqlite: {path: '{dir}/metrics.db', retention_days: 7, retention_interval: 200ms}",
    ))
    .await;
    let key = svc.key("svc").await;
    let old = (chrono::Utc::now() - chrono::Duration::days(8)).to_rfc3339();
    let recent = (chrono::Utc::now() - chrono::Duration::days(6)).to_rfc3339();
    let mut metrics = Vec::new();
    for kind in ["auth_request", "tool_discovery", "tool_execution", "custom"] {
        metrics.push(json!({"type": kind, "value": 1, "timestamp": old}));
        metrics.push(json!({"type": kind, "value": 2, "timestamp": recent}));
    }
    assert_eq!(
        svc.post(Some(&key), &request_of("svc", metrics))
            .await
            .status,
        200
    );
    let store = svc.store().await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let counts = store.row_counts().await.unwrap();
        let expected = [
            ("metrics", 4),
            ("auth_metrics", 1),
            ("discovery_metrics", 1),
            ("tool_metrics", 1),
        ];
        if expected.iter().all(|(table, n)| counts[table] == *n) {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "old rows not removed: {counts:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let values: Vec<f64> = sqlx::query_scalar("SELECT value FROM metrics")
        .fetch_all(store.pool())
        .await
        .unwrap();
    assert!(
        values.iter().all(|v| *v == 2.0),
        "only recent rows remain: {values:?}"
    );
}

/// SIGTERM while many clients send: the service stops taking requests, drains the batch and the
/// queue, exits 0, and every acknowledged metric is in every table it belongs in.
#[tokio::test]
async fn sigterm_under_load_keeps_every_acknowledged_metric() {
    let (dir, mut child, address, key) = spawn_with_config(
        "
receivers:
  http: {host: 127.0.0.1, port: 0}
processors:
  auth: {database: ./metrics.db}
  validate: {}
  batch: {send_batch_size: 500, timeout: 1h}
exporters:
  sqlite: {path: ./metrics.db, retention_days: 0}
service:
  shutdown_timeout: 20s
  pipelines:
    metrics: {receivers: [http], processors: [auth, validate, batch], exporters: [sqlite]}
",
    )
    .await;

    // Metrics acknowledged, per table: metrics, auth_metrics, tool_metrics, discovery_metrics.
    let acknowledged = Arc::new([(); 4].map(|_| AtomicI64::new(0)));
    let mut clients = Vec::new();
    for _ in 0..16 {
        let (address, key, acknowledged) = (address.clone(), key.clone(), acknowledged.clone());
        clients.push(tokio::spawn(async move {
            let client = reqwest::Client::new();
            let body = request_of(
                "svc",
                vec![
                    metric("auth_request"),
                    metric("tool_execution"),
                    metric("tool_execution"),
                    metric("tool_discovery"),
                    metric("custom"),
                ],
            );
            for _ in 0..5_000 {
                let sent = metrics_request(&client, &address, &key, &body).send().await;
                let Ok(response) = sent else { break };
                if response.status() == 200 {
                    let reply: serde_json::Value = response.json().await.unwrap();
                    assert_eq!(reply["accepted"], 5);
                    for (table, n) in [5, 1, 2, 1].into_iter().enumerate() {
                        acknowledged[table].fetch_add(n, Ordering::Relaxed);
                    }
                }
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let in_flight = acknowledged[0].load(Ordering::Relaxed);
    assert!(in_flight > 0, "clients were sending");
    let code = tokio::task::spawn_blocking(move || terminate(&mut child))
        .await
        .unwrap();
    for client in clients {
        client.await.unwrap();
    }
    assert_eq!(code, 0);
    assert!(
        acknowledged[0].load(Ordering::Relaxed) > in_flight,
        "load went on up to the signal"
    );

    let store = mcp_metrics_store::Store::open(dir.path().join("metrics.db"))
        .await
        .unwrap();
    let counts = store.row_counts().await.unwrap();
    let tables = [
        "metrics",
        "auth_metrics",
        "tool_metrics",
        "discovery_metrics",
    ];
    for (table, acknowledged) in tables.into_iter().zip(acknowledged.iter()) {
        assert_eq!(
            counts[table],
            acknowledged.load(Ordering::Relaxed),
            "{table}"
        );
    }
}

/// The signals this process catches, from `/proc/<pid>/status` (bit n-1 for signal n).
fn caught_signals(pid: u32) -> u64 {
    let status = proc_status(pid);
    let mask = status
        .lines()
        .find_map(|line| line.strip_prefix("SigCgt:"))
        .unwrap();
    u64::from_str_radix(mask.trim(), 16).unwrap()
}

/// A SIGTERM (or SIGINT, SIGHUP) that comes as soon as the service answers finds its handler, not
/// the default action, which would kill it with acknowledged metrics still held in a batch.
#[tokio::test]
async fn signals_are_caught_before_the_first_answer_and_a_sigterm_then_loses_nothing() {
    // A batch that holds what it takes until the shutdown, in the service's own folder.
    let config = with_processors("  batch: {send_batch_size: 500, timeout: 1h}", "batch");
    let (dir, mut child, address, key) = spawn_with_config(&config.replace("{dir}", ".")).await;
    // Read as soon as the receiver has logged its address, before any request.
    let caught = caught_signals(child.id());
    let (sighup, sigint, sigterm) = (1 << 0, 1 << 1, 1 << 14);
    for (name, bit) in [("SIGHUP", sighup), ("SIGINT", sigint), ("SIGTERM", sigterm)] {
        assert_ne!(caught & bit, 0, "{name} not caught: SigCgt {caught:#x}");
    }

    let client = reqwest::Client::new();
    let body = request_of("svc", vec![metric("custom")]);
    let sent = metrics_request(&client, &address, &key, &body).send();
    assert_eq!(sent.await.unwrap().status(), 200);
    assert_eq!(terminate(&mut child), 0);
    let store = mcp_metrics_store::Store::open(dir.path().join("metrics.db"))
        .await
        .unwrap();
    assert_eq!(store.row_counts().await.unwrap()["metrics"], 1);
}

#[tokio::test]
async fn a_stalled_exporter_does_not_hold_up_the_others() {
    let svc = TestService::with_config(
        "
receivers:
  http: {host: 127.0.0.1, port: 0}
processors:
  auth: {database: '{dir}/metrics.db'}
exporters:
  sqlite: {path: '{dir}/metrics.db', retention_days: 0}
  sqlite/slow: {path: '{dir}/slow.db', retention_days: 0}
service:
  pipelines:
    metrics: {receivers: [http], processors: [auth], exporters: [sqlite, sqlite/slow]}
",
    )
    .await;
    let key = svc.key("svc").await;
    let slow = svc.dir.path().join("slow.db");
    let blocker = DatabaseLock::take(&slow).await;
    for _ in 0..5 {
        let reply = svc
            .post(Some(&key), &request_of("svc", vec![metric("custom"); 2]))
            .await;
        assert_eq!(reply.status, 200, "{}", reply.body);
    }
    // The healthy exporter has everything while the other is still stuck.
    assert_eq!(svc.rows_eventually("metrics", 10).await, 10);
    blocker.release().await;
    let slow = mcp_metrics_store::Store::open(&slow).await.unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while slow.row_counts().await.unwrap()["metrics"] < 10 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the slow exporter catches up"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A failing export waits ever longer between tries, but a shutdown does not wait those out: the
/// queue's last export is retried at once, so what was acknowledged lands within the deadline.
#[tokio::test]
async fn shutdown_retries_a_failing_export_at_once_instead_of_waiting_out_its_backoff() {
    let mut svc = TestService::with_config(&edited(
        &default_pipeline_with(
            "  sqlite: {path: '{dir}/metrics.db', retention_days: 0}",
            "  sqlite: {path: '{dir}/metrics.db', retention_days: 0, retry_on_failure: {initial_interval: 40s, max_interval: 60s}}",
        ),
        "service:\n",
        "service:\n  shutdown_timeout: 10s\n",
    ))
    .await;
    let key = svc.key("svc").await;
    let blocker = DatabaseLock::take(&svc.db_path()).await;
    let reply = svc
        .post(
            Some(&key),
            &request_of("svc", vec![metric("auth_request"); 5]),
        )
        .await;
    assert_eq!(reply.status, 200);
    // The first export fails after SQLite's 5 s busy timeout; its retry is 40 s or more away.
    tokio::time::sleep(Duration::from_millis(5500)).await;
    blocker.release().await;
    let started = std::time::Instant::now();
    svc.shutdown().await;
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    let counts = svc.store().await.row_counts().await.unwrap();
    assert_eq!((counts["metrics"], counts["auth_metrics"]), (5, 5));
}

/// A batch larger than an exporter's whole queue can never be taken as it is: it goes on in
/// parts rather than being offered again forever.
#[tokio::test]
async fn a_batch_larger_than_the_exporter_queue_goes_on_in_parts() {
    let svc = TestService::with_config(&edited(
        &with_processors("  batch: {send_batch_size: 100, timeout: 100ms}", "batch"),
        "  sqlite: {path: '{dir}/metrics.db', retention_days: 0}",
        "  sqlite: {path: '{dir}/metrics.db', retention_days: 0, sending_queue: {queue_size: 40, batch_max_size: 10}}",
    ))
    .await;
    let key = svc.key("svc").await;
    let reply = svc
        .post(
            Some(&key),
            &request_of("svc", vec![metric("tool_execution"); 100]),
        )
        .await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert_eq!(svc.rows_eventually("metrics", 100).await, 100);
    assert_eq!(svc.rows_eventually("tool_metrics", 100).await, 100);
}

/// In durable mode a request waits for its metrics to be stored, never for the batch's timer (an
/// hour here): it is answered 200 once committed, and a shutdown right after it stops in time.
#[tokio::test]
async fn durable_requests_are_answered_without_the_batch_timer_and_shutdown_is_prompt() {
    let mut svc = TestService::with_config(&edited(
        &edited(
            &with_processors("  batch: {send_batch_size: 1000, timeout: 1h}", "batch"),
            "http: {host: 127.0.0.1, port: 0}",
            "http: {host: 127.0.0.1, port: 0, acknowledgements: true, acknowledgement_timeout: 1h}",
        ),
        "service:\n",
        "service:\n  shutdown_timeout: 10s\n",
    ))
    .await;
    let key = svc.key("svc").await;
    let waiting = {
        let request = svc
            .client
            .post(svc.url("/metrics"))
            .header("X-API-Key", &key)
            .json(&request_of("svc", vec![metric("tool_discovery"); 3]));
        tokio::spawn(async move { Reply::from(request.send().await.unwrap()).await })
    };
    let answered = tokio::time::timeout(Duration::from_secs(1), async {
        while !waiting.is_finished() {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    });
    assert!(
        answered.await.is_ok(),
        "the reply waited for the batch's timer"
    );
    let started = std::time::Instant::now();
    svc.shutdown().await;
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    let reply = waiting.await.unwrap();
    assert_eq!(reply.status, 200, "{}", reply.body);
    let counts = svc.store().await.row_counts().await.unwrap();
    assert_eq!((counts["metrics"], counts["discovery_metrics"]), (3, 3));
}

/// Overload with a stalled database: once the queues are full every request is refused with 503,
/// and memory stops growing however long the load goes on. When the database is free again,
/// every acknowledged metric lands.
#[tokio::test]
async fn memory_stays_bounded_under_overload_with_a_stalled_exporter() {
    let (dir, mut child, address, key) = spawn_with_config(
        "
receivers:
  http: {host: 127.0.0.1, port: 0, max_concurrent_requests: 16, max_request_size: 1MiB}
processors:
  auth: {database: ./metrics.db}
  validate: {}
  batch: {send_batch_size: 100, timeout: 50ms, queue_size: 2000}
exporters:
  sqlite: {path: ./metrics.db, retention_days: 0, sending_queue: {queue_size: 2000}}
service:
  pipelines:
    metrics: {receivers: [http], processors: [auth, validate, batch], exporters: [sqlite]}
",
    )
    .await;
    let database = dir.path().join("metrics.db");
    let blocker = DatabaseLock::take(&database).await;

    // 100 metrics of about 1 KiB each per request.
    let dimensions: serde_json::Map<String, serde_json::Value> = (0..20)
        .map(|i| (format!("dimension_{i:02}"), json!(format!("{i:0>40}"))))
        .collect();
    let one = json!({"type": "tool_execution", "value": 1.0, "dimensions": dimensions});
    let body = request_of("svc", vec![one; 100]);
    let load = |seconds: u64| {
        let mut clients = Vec::new();
        for _ in 0..8 {
            let (address, key, body) = (address.clone(), key.clone(), body.clone());
            clients.push(tokio::spawn(async move {
                let client = reqwest::Client::new();
                let (mut accepted, mut refused) = (0, 0);
                let until = tokio::time::Instant::now() + Duration::from_secs(seconds);
                while tokio::time::Instant::now() < until {
                    let reply = metrics_request(&client, &address, &key, &body)
                        .send()
                        .await
                        .unwrap();
                    match reply.status().as_u16() {
                        200 => accepted += 100,
                        503 => refused += 1,
                        other => panic!("unexpected {other}"),
                    }
                }
                (accepted, refused)
            }));
        }
        async move {
            let mut totals = (0, 0);
            for client in clients {
                let (accepted, refused) = client.await.unwrap();
                totals = (totals.0 + accepted, totals.1 + refused);
            }
            totals
        }
    };
    let pid = child.id();
    let peak_during = |phase: tokio::task::JoinHandle<(i64, i64)>| async move {
        let mut peak: f64 = 0.0;
        while !phase.is_finished() {
            peak = peak.max(rss_mib(pid));
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        (peak, phase.await.unwrap())
    };

    let (first_peak, (first_accepted, first_refused)) = peak_during(tokio::spawn(load(3))).await;
    let (second_peak, (second_accepted, second_refused)) = peak_during(tokio::spawn(load(3))).await;
    assert!(
        first_refused > 0 && second_refused > 0,
        "the load outran the queues"
    );
    assert!(
        first_accepted + second_accepted <= 4_000 + 100,
        "held at most the batch's and the queue's 2000 metrics each: {}",
        first_accepted + second_accepted
    );
    assert!(
        second_peak <= first_peak * 1.15 + 5.0,
        "memory kept growing: {first_peak:.1} MiB, then {second_peak:.1} MiB"
    );
    assert!(second_peak < 200.0, "{second_peak:.1} MiB");

    blocker.release().await;
    let code = tokio::task::spawn_blocking(move || terminate(&mut child))
        .await
        .unwrap();
    assert_eq!(code, 0);
    let store = mcp_metrics_store::Store::open(&database).await.unwrap();
    let counts = store.row_counts().await.unwrap();
    assert_eq!(counts["metrics"], first_accepted + second_accepted);
    assert_eq!(counts["tool_metrics"], first_accepted + second_accepted);
}
