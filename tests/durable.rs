//! Durable mode (`acknowledgements: true`): a 200 means committed. A batch does not hold such
//! metrics for its timer (group commit), and a process killed outright loses nothing it
//! acknowledged.

mod common;

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use serde_json::json;

/// The shipped pipeline's shape in durable mode: a batch with the default 30 s timer.
const DURABLE: &str = "
receivers:
  http: {host: 127.0.0.1, port: 0, acknowledgements: true}
processors:
  auth: {database: ./metrics.db}
  validate: {}
  batch: {send_batch_size: 100, timeout: 30s}
exporters:
  sqlite: {path: ./metrics.db, retention_days: 0}
service:
  pipelines:
    metrics: {receivers: [http], processors: [auth, validate, batch], exporters: [sqlite]}
";

/// With the default 30 s batch timer, a lone durable request is committed and answered at once.
#[tokio::test]
async fn a_lone_durable_request_does_not_wait_for_the_batch_timer() {
    let (dir, mut child, address, key) = spawn_with_config(DURABLE).await;
    let client = reqwest::Client::new();
    let started = Instant::now();
    let reply = metrics_request(
        &client,
        &address,
        &key,
        &request_of("svc", vec![metric("custom")]),
    )
    .send()
    .await
    .unwrap();
    let waited = started.elapsed();
    assert_eq!(reply.status(), 200);
    assert!(waited < Duration::from_secs(1), "answered after {waited:?}");
    let store = mcp_metrics_store::Store::open(dir.path().join("metrics.db"))
        .await
        .unwrap();
    assert_eq!(store.row_counts().await.unwrap()["metrics"], 1, "committed");
    assert_eq!(terminate(&mut child), 0);
}

/// Clients send under load; the process is killed with SIGKILL mid-stream. Every metric it
/// answered 200 is in SQLite afterwards.
#[tokio::test]
async fn sigkill_under_load_loses_nothing_acknowledged() {
    let (dir, child, address, key) = spawn_with_config(DURABLE).await;
    let acknowledged = Arc::new(Mutex::new(HashSet::new()));
    let mut clients = Vec::new();
    for client_id in 0..8 {
        let (address, key, acknowledged) = (address.clone(), key.clone(), acknowledged.clone());
        clients.push(tokio::spawn(async move {
            let client = reqwest::Client::new();
            for request in 0.. {
                let ids: Vec<String> = (0..10)
                    .map(|i| format!("{client_id}-{request}-{i}"))
                    .collect();
                let metrics = ids
                    .iter()
                    .map(|id| json!({"type": "custom", "value": 1.0, "dimensions": {"id": id}}))
                    .collect();
                let sent = metrics_request(&client, &address, &key, &request_of("svc", metrics))
                    .send()
                    .await;
                match sent {
                    Ok(reply) if reply.status() == 200 => {
                        acknowledged.lock().unwrap().extend(ids);
                    }
                    Ok(reply) => assert_eq!(reply.status(), 503, "only busy may refuse"),
                    // The process is gone.
                    Err(_) => return,
                }
            }
        }));
    }
    // Kill once a good share of the load has been acknowledged.
    let deadline = Instant::now() + Duration::from_secs(20);
    while acknowledged.lock().unwrap().len() < 2_000 {
        assert!(Instant::now() < deadline, "the load never got going");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let killed = std::process::Command::new("kill")
        .args(["-KILL", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    for client in clients {
        client.await.unwrap();
    }
    drop(child);

    let store = mcp_metrics_store::Store::open(dir.path().join("metrics.db"))
        .await
        .unwrap();
    let stored: Vec<(String,)> =
        sqlx::query_as("SELECT json_extract(dimensions, '$.id') FROM metrics")
            .fetch_all(store.pool())
            .await
            .unwrap();
    let stored: HashSet<String> = stored.into_iter().map(|(id,)| id).collect();
    let acknowledged = acknowledged.lock().unwrap();
    let missing: Vec<_> = acknowledged.difference(&stored).take(5).collect();
    assert!(
        missing.is_empty(),
        "{} of {} acknowledged metrics missing after SIGKILL, e.g. {missing:?}",
        acknowledged.difference(&stored).count(),
        acknowledged.len()
    );
}
