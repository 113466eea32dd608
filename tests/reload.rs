//! Issue 6: reloading `pipelines.yaml` (SIGHUP, file watch, admin endpoint) as a diff, with no
//! acknowledged metric lost and no connection refused; health and readiness.

mod common;

use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::mpsc;
use std::time::Duration;

use common::*;
use mcp_metrics_store::Store;

const CONFIG: &str = "
receivers:
  http: {host: 127.0.0.1, port: 0, database: ./metrics.db}
processors:
  auth: {database: ./metrics.db}
  batch: {send_batch_size: 200, timeout: 1h}
exporters:
  sqlite: {path: ./metrics.db, retention_days: 0}
service:
  watch_config: WATCH
  watch_interval: 100ms
  pipelines:
    metrics: {receivers: [http], processors: [auth, batch], exporters: [sqlite]}
";

/// The config plus a second pipeline into `second.db`, a changed http receiver on the same
/// address (so the socket must be handed over), and a changed batch processor (so the one
/// replaced must hand on what it holds).
fn with_second_pipeline(config: &str) -> String {
    let config = edited(
        config,
        "port: 0, database",
        "port: 0, max_metrics_per_request: 5000, database",
    );
    let config = edited(&config, "send_batch_size: 200", "send_batch_size: 150");
    let config = edited(
        &config,
        "  sqlite: {path: ./metrics.db, retention_days: 0}",
        "  sqlite: {path: ./metrics.db, retention_days: 0}\n  sqlite/second: {path: ./second.db, retention_days: 0}",
    );
    edited(
        &config,
        "    metrics: {receivers: [http], processors: [auth, batch], exporters: [sqlite]}",
        "    metrics: {receivers: [http], processors: [auth, batch], exporters: [sqlite]}\n    second: {receivers: [http], processors: [auth], exporters: [sqlite/second]}",
    )
}

async fn setup(watch: bool) -> (tempfile::TempDir, String) {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("pipelines.yaml"),
        CONFIG.replace("WATCH", &watch.to_string()),
    )
    .unwrap();
    let key = Store::open(dir.path().join("metrics.db"))
        .await
        .unwrap()
        .create_key("svc", Some(1_000_000), true)
        .await
        .unwrap()
        .1;
    (dir, key)
}

fn wait_for_log(log: &mpsc::Receiver<String>, needle: &str) -> String {
    let mut seen = Vec::new();
    while let Ok(line) = log.recv_timeout(Duration::from_secs(15)) {
        if line.contains(needle) {
            return line;
        }
        seen.push(line);
    }
    panic!("no log line with {needle:?} in:\n{}", seen.join("\n"));
}

fn hangup(pid: u32) {
    assert!(
        Command::new("kill")
            .args(["-HUP", &pid.to_string()])
            .status()
            .unwrap()
            .success()
    );
}

async fn rows(path: &Path) -> i64 {
    Store::open(path).await.unwrap().row_counts().await.unwrap()["metrics"]
}

#[tokio::test]
async fn a_broken_config_on_sighup_is_refused_and_the_pipelines_go_on() {
    let (dir, key) = setup(false).await;
    let (mut child, address, log) = spawn_service(&mut mcp_metrics(dir.path()));
    let client = reqwest::Client::new();
    let post = || {
        metrics_request(
            &client,
            &address,
            &key,
            &request_of("svc", vec![metric("custom")]),
        )
        .send()
    };
    assert_eq!(post().await.unwrap().status(), 200);

    std::fs::write(
        dir.path().join("pipelines.yaml"),
        "receivers:\n  http: {port: nope}\nexporters: {sqlit: {}}\n",
    )
    .unwrap();
    hangup(child.id());
    let refused = wait_for_log(&log, "configuration refused");
    assert!(refused.contains("SIGHUP"), "{refused}");
    let detail = wait_for_log(&log, "sqlit");
    assert!(detail.contains("unknown exporter type"), "{detail}");

    assert_eq!(
        post().await.unwrap().status(),
        200,
        "the old pipelines still run"
    );
    assert_eq!(terminate(&mut child), 0);
    assert_eq!(rows(&dir.path().join("metrics.db")).await, 2);
}

#[tokio::test]
async fn a_reload_under_load_starts_the_new_exporter_and_loses_nothing() {
    let (dir, key) = setup(false).await;
    let (mut child, address, log) = spawn_service(&mut mcp_metrics(dir.path()));

    let acknowledged = Arc::new(AtomicI64::new(0));
    let refused = Arc::new(AtomicI64::new(0));
    let dropped = Arc::new(AtomicI64::new(0));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut clients = Vec::new();
    for _ in 0..8 {
        let (address, key, acknowledged, refused, dropped, stop) = (
            address.clone(),
            key.clone(),
            acknowledged.clone(),
            refused.clone(),
            dropped.clone(),
            stop.clone(),
        );
        clients.push(tokio::spawn(async move {
            let client = reqwest::Client::new();
            let body = request_of("svc", vec![metric("tool_execution"), metric("custom")]);
            while !stop.load(Ordering::Relaxed) {
                match metrics_request(&client, &address, &key, &body).send().await {
                    Ok(reply) if reply.status() == 200 => {
                        acknowledged.fetch_add(2, Ordering::Relaxed);
                    }
                    Ok(reply) => panic!("refused during reload: {}", reply.status()),
                    // A new connection refused means the socket was closed.
                    Err(error) if error.is_connect() => {
                        refused.fetch_add(1, Ordering::Relaxed);
                    }
                    // The old receiver closes its idle keep-alive connections; a request racing
                    // that close fails (never with a 200) and the client sends it again.
                    Err(_) => {
                        dropped.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = acknowledged.load(Ordering::Relaxed);
    std::fs::write(
        dir.path().join("pipelines.yaml"),
        with_second_pipeline(&CONFIG.replace("WATCH", "false")),
    )
    .unwrap();
    hangup(child.id());
    let reloaded = wait_for_log(&log, "SIGHUP: reloaded");
    assert!(reloaded.contains("replaced or removed"), "{reloaded}");
    let at_reload = acknowledged.load(Ordering::Relaxed);
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, Ordering::Relaxed);
    for client in clients {
        client.await.unwrap();
    }
    let total = acknowledged.load(Ordering::Relaxed);
    assert!(
        before > 0 && total > at_reload,
        "load ran across the reload: {before} {at_reload} {total}"
    );
    assert_eq!(
        refused.load(Ordering::Relaxed),
        0,
        "the listening socket stayed open"
    );
    assert!(
        dropped.load(Ordering::Relaxed) <= 8,
        "at most one dropped keep-alive request a client"
    );
    assert_eq!(terminate(&mut child), 0);

    // The kept exporter has everything acknowledged, before and after; the new one what came
    // after the reload.
    assert_eq!(rows(&dir.path().join("metrics.db")).await, total);
    let second = rows(&dir.path().join("second.db")).await;
    assert!(second > 0 && second <= total - before, "{second}");
}

#[tokio::test]
async fn a_watched_file_and_the_admin_endpoint_reload_too() {
    let (dir, key) = setup(true).await;
    let (mut child, address, log) = spawn_service(&mut mcp_metrics(dir.path()));
    std::fs::write(
        dir.path().join("pipelines.yaml"),
        with_second_pipeline(&CONFIG.replace("WATCH", "true")),
    )
    .unwrap();
    wait_for_log(&log, "config file changed: reloaded");

    // New connections: one taken by the replaced receiver just before it stopped would be
    // closed by it once idle (a request racing that close fails and is sent again).
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .build()
        .unwrap();
    let reply = metrics_request(
        &client,
        &address,
        &key,
        &request_of("svc", vec![metric("custom")]),
    )
    .send()
    .await
    .unwrap();
    assert_eq!(reply.status(), 200);

    // A broken file through the admin endpoint: refused with its errors, 422.
    std::fs::write(dir.path().join("pipelines.yaml"), "receivers: {http: {}}\n").unwrap();
    let reply = admin_reload(&client, &address, &key).await;
    assert_eq!(reply.status, 422);
    assert_eq!(reply.error(), "invalid_config");
    assert!(
        reply.body["message"]
            .as_str()
            .unwrap()
            .contains("service.pipelines"),
        "{}",
        reply.body
    );
    assert_eq!(terminate(&mut child), 0);
    assert_eq!(rows(&dir.path().join("second.db")).await, 1);
}

#[tokio::test]
async fn health_and_readiness_name_the_component_in_trouble() {
    let svc = TestService::with_config(&edited(
        &default_pipeline_with(
            "  sqlite: {path: '{dir}/metrics.db', retention_days: 0}",
            "  sqlite: {path: '{dir}/metrics.db', retention_days: 0, sending_queue: {queue_size: 10}, retry_on_failure: {initial_interval: 100ms, max_interval: 200ms}}",
        ),
        "service:\n",
        "service:\n  export_failure_threshold: 500ms\n",
    ))
    .await;
    let key = svc.key("svc").await;
    let get = |path: &'static str| {
        let (client, url) = (svc.client.clone(), svc.url(path));
        async move { Reply::from(client.get(url).send().await.unwrap()).await }
    };
    assert_eq!(get("/health").await.status, 200);
    assert_eq!(get("/ready").await.body["status"], "ready");

    let blocker = DatabaseLock::take(&svc.db_path()).await;
    assert_eq!(
        svc.post(Some(&key), &request_of("svc", vec![metric("custom"); 10]))
            .await
            .status,
        200
    );

    let ready = get("/ready").await;
    assert_eq!(ready.status, 503);
    assert_eq!(ready.body["problems"][0]["component"], "exporters.sqlite");
    assert!(
        ready.body["problems"][0]["problem"]
            .as_str()
            .unwrap()
            .starts_with("queue full")
    );
    // A full queue alone is a busy service: not ready, but alive.
    assert_eq!(get("/health").await.status, 200);

    // The export fails after SQLite's 5 s busy timeout, and keeps failing past the threshold.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    let unhealthy = loop {
        let health = get("/health").await;
        if health.body["problems"].as_array().is_some_and(|p| {
            p.iter().any(|p| {
                p["problem"]
                    .as_str()
                    .unwrap()
                    .starts_with("exports failing")
            })
        }) {
            break health;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "never unhealthy: {}",
            health.body
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(unhealthy.status, 503);
    assert_eq!(unhealthy.body["status"], "unhealthy");

    blocker.release().await;
    assert_eq!(svc.rows_eventually("metrics", 10).await, 10);
    // Healthy again once exports succeed. A retention pass that ran into the test's lock is
    // reported as well, until its next pass: that is not what this test is about.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let health = get("/health").await;
        let problems = health.body["problems"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        let others = problems
            .iter()
            .filter(|p| !p["problem"].as_str().unwrap().starts_with("retention"))
            .count();
        if others == 0 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "healthy again once exports succeed: {}",
            health.body
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn admin_reload(client: &reqwest::Client, address: &str, key: &str) -> Reply {
    let request = client
        .post(format!("http://{address}/admin/reload"))
        .header("X-API-Key", key)
        .timeout(Duration::from_secs(10));
    Reply::from(request.send().await.expect("the reload is answered")).await
}

/// The admin request that asks for a reload is served by the receiver the reload replaces: it
/// is answered, and the replaced receiver drains once it has been.
#[tokio::test]
async fn an_admin_reload_can_replace_the_receiver_serving_it() {
    let (dir, key) = setup(false).await;
    let (mut child, address, _log) = spawn_service(&mut mcp_metrics(dir.path()));
    let client = reqwest::Client::new();
    std::fs::write(
        dir.path().join("pipelines.yaml"),
        with_second_pipeline(&CONFIG.replace("WATCH", "false")),
    )
    .unwrap();
    let reply = admin_reload(&client, &address, &key).await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    // A new connection: the one the reload came on belongs to the replaced receiver, which
    // closes it once idle (a request racing that close fails and is sent again).
    let posted = metrics_request(
        &reqwest::Client::new(),
        &address,
        &key,
        &request_of("svc", vec![metric("custom")]),
    )
    .send()
    .await
    .unwrap();
    assert_eq!(posted.status(), 200);
    assert_eq!(terminate(&mut child), 0);
    assert_eq!(rows(&dir.path().join("second.db")).await, 1);
}

/// An exporter that serves on a fixed port keeps its socket across reloads that leave it alone,
/// so a later reload that changes it can take the socket over instead of finding it in use.
#[tokio::test]
async fn a_scrape_endpoint_keeps_its_port_across_reloads() {
    let (dir, key) = setup(false).await;
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let with_prometheus = |config: &str, service_name: &str| {
        let config = edited(
            config,
            "  sqlite: {path: ./metrics.db, retention_days: 0}",
            &format!(
                "  sqlite: {{path: ./metrics.db, retention_days: 0}}\n  prometheus: {{host: 127.0.0.1, port: {port}, service_name: {service_name}}}"
            ),
        );
        edited(
            &config,
            "exporters: [sqlite]}",
            "exporters: [sqlite, prometheus]}",
        )
    };
    let config = CONFIG.replace("WATCH", "false");
    let write = |text: String| std::fs::write(dir.path().join("pipelines.yaml"), text).unwrap();
    write(with_prometheus(&config, "first"));
    let (mut child, address, _log) = spawn_service(&mut mcp_metrics(dir.path()));
    let client = reqwest::Client::new();

    // A reload that leaves the exporter as it is, then one that changes it.
    let smaller_batches = edited(&config, "send_batch_size: 200", "send_batch_size: 150");
    write(with_prometheus(&smaller_batches, "first"));
    assert_eq!(admin_reload(&client, &address, &key).await.status, 200);
    write(with_prometheus(&smaller_batches, "second"));
    let reply = admin_reload(&client, &address, &key).await;
    assert_eq!(reply.status, 200, "{}", reply.body);

    // The replaced exporter serves on the shared socket until it has drained; then only the
    // new one answers.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let scrape = client
            .get(format!("http://127.0.0.1:{port}/metrics"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        if scrape.contains(r#"service_name="second""#) {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "{scrape}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(terminate(&mut child), 0);
}
