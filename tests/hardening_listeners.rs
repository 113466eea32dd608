//! Issue 14, item 1: stalled connections must not take the service down. The real binary on
//! loopback, with short timeouts so the test stays fast: 300 connections that send nothing,
//! half a head, or a head and one byte of a large body are held open while a normal client
//! sends; the normal client is answered 200 within a second throughout, and the stalled
//! connections are closed by the server within the configured timeouts.

mod common;

use std::time::{Duration, Instant};

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const CONFIG: &str = "
receivers:
  http: {host: 127.0.0.1, port: 0, database: ./metrics.db, header_read_timeout: 1s, body_read_timeout: 2s}
processors:
  auth: {database: ./metrics.db}
  validate: {}
exporters:
  sqlite: {path: ./metrics.db, retention_days: 0}
  prometheus: {host: 127.0.0.1, port: 0, header_read_timeout: 1s}
service:
  pipelines:
    metrics: {receivers: [http], processors: [auth, validate], exporters: [sqlite, prometheus]}
";

/// Opens a connection that stalls in one of three ways: no request at all, half a head, or a
/// whole head announcing a megabyte and one byte of it.
async fn stalled(address: &str, how: usize) -> TcpStream {
    let mut stream = TcpStream::connect(address).await.unwrap();
    match how % 3 {
        0 => {}
        1 => stream
            .write_all(b"POST /metrics HTTP/1.1\r\nHost: x\r\nContent-Ty")
            .await
            .unwrap(),
        _ => stream
            .write_all(
                b"POST /metrics HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n\
                  Content-Length: 1000000\r\n\r\n{",
            )
            .await
            .unwrap(),
    }
    stream
}

/// Reads (and drops) what the server sends until it closes the connection; when that was.
async fn closed_at(mut stream: TcpStream, within: Duration) -> Option<Instant> {
    let mut buffer = [0u8; 4096];
    let deadline = tokio::time::Instant::now() + within;
    loop {
        match tokio::time::timeout_at(deadline, stream.read(&mut buffer)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return Some(Instant::now()),
            Ok(Ok(_)) => continue,
            Err(_) => return None,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_connections_neither_starve_clients_nor_stay_open() {
    let (_dir, _child, address, key) = spawn_with_config(CONFIG).await;

    let opened = Instant::now();
    let mut attackers = Vec::new();
    for how in 0..300 {
        attackers.push(stalled(&address, how).await);
    }
    let watchers: Vec<_> = attackers
        .into_iter()
        .enumerate()
        .map(|(how, stream)| {
            tokio::spawn(async move { (how, closed_at(stream, Duration::from_secs(10)).await) })
        })
        .collect();

    // A normal client, a fresh connection per request, for as long as the attack lasts.
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .timeout(Duration::from_secs(1))
        .build()
        .unwrap();
    let body = request_of("svc", vec![metric("custom")]);
    let mut answered = 0;
    while opened.elapsed() < Duration::from_secs(3) {
        let reply = metrics_request(&client, &address, &key, &body)
            .send()
            .await
            .expect("POST /metrics answered within a second");
        assert_eq!(reply.status(), 200, "{:?}", reply.text().await);
        let health = client
            .get(format!("http://{address}/health"))
            .send()
            .await
            .expect("GET /health answered within a second");
        assert_eq!(health.status(), 200);
        answered += 1;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(answered > 10, "{answered}");

    // Every stalled connection was closed by the server: those without a whole head after the
    // 1 s header timeout, those stuck in their body after the 2 s body timeout (plus slack).
    for watcher in watchers {
        let (how, closed) = watcher.await.unwrap();
        let closed = closed.unwrap_or_else(|| panic!("connection {how} still open after 10 s"));
        let after = closed - opened;
        let limit = if how % 3 == 2 { 2 } else { 1 };
        assert!(
            after < Duration::from_secs(limit) + Duration::from_millis(2500),
            "connection {how} closed after {after:?}"
        );
        assert!(
            after >= Duration::from_millis(900),
            "connection {how} closed early, after {after:?}"
        );
    }
}

/// The head deadline (1 s here) runs from a connection's first byte or last answer until the
/// next head is in, not while a request is read and answered: a body that takes longer than it
/// (within its own 2 s) is answered, and the idle connection is closed a deadline later.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_head_deadline_runs_between_requests_not_during_one() {
    let (_dir, _child, address, key) = spawn_with_config(CONFIG).await;
    let body = serde_json::to_vec(&request_of("svc", vec![metric("custom")])).unwrap();
    let head = format!(
        "POST /metrics HTTP/1.1\r\nHost: x\r\nX-API-Key: {key}\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    let (first_half, second_half) = body.split_at(body.len() / 2);
    let mut stream = TcpStream::connect(&address).await.unwrap();
    stream.write_all(head.as_bytes()).await.unwrap();
    stream.write_all(first_half).await.unwrap();
    // A slow client: the point of the test, not a wait for something.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    stream.write_all(second_half).await.unwrap();
    let mut answer = [0u8; 4096];
    let read = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut answer))
        .await
        .expect("answered")
        .unwrap();
    let answered = Instant::now();
    let answer = String::from_utf8_lossy(&answer[..read]);
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    let closed = closed_at(stream, Duration::from_secs(5))
        .await
        .expect("the idle connection was closed");
    let idle = closed - answered;
    assert!(
        idle >= Duration::from_millis(900) && idle < Duration::from_millis(2500),
        "closed {idle:?} after its answer"
    );
}

#[tokio::test]
async fn a_body_slower_than_its_deadline_is_answered_408_and_health_is_not_behind_the_in_flight_limit()
 {
    let config = default_pipeline_with(
        "http: {host: 127.0.0.1, port: 0, database: '{dir}/metrics.db'}",
        "http: {host: 127.0.0.1, port: 0, database: '{dir}/metrics.db', \
         max_concurrent_requests: 2, body_read_timeout: 1s}",
    );
    let svc = TestService::with_config(&config).await;
    let key = svc.key("svc").await;
    // Two requests with a key, stuck in their bodies, take every in-flight slot.
    let mut stuck = Vec::new();
    for _ in 0..2 {
        let mut stream = TcpStream::connect(svc.addr).await.unwrap();
        let head = format!(
            "POST /metrics HTTP/1.1\r\nHost: x\r\nX-API-Key: {key}\r\n\
             Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n{{"
        );
        stream.write_all(head.as_bytes()).await.unwrap();
        stuck.push(stream);
    }
    // Once both hold their slots, data and operator requests are refused with a retry hint.
    let deadline = Instant::now() + Duration::from_secs(5);
    let reply = loop {
        let reply = svc
            .post(Some(&key), &request_of("svc", vec![metric("custom")]))
            .await;
        if reply.status != 200 || Instant::now() > deadline {
            break reply;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    assert_eq!(reply.status, 503, "{}", reply.body);
    assert_eq!(reply.error(), "service_unavailable");
    assert!(
        reply.body["message"]
            .as_str()
            .unwrap()
            .contains("in flight")
    );
    assert_eq!(reply.headers["retry-after"], "1");
    let operator = svc.call("GET", "/rate-limit", &key, None).await;
    assert_eq!(operator.status, 503, "{}", operator.body);
    assert_eq!(operator.error(), "service_unavailable");
    // Health and readiness are still answered.
    let health = svc.health_until(Duration::ZERO, |_| true).await;
    assert_eq!(health.status, 200, "{}", health.body);
    let ready = svc.client.get(svc.url("/ready")).send().await.unwrap();
    assert_eq!(ready.status(), 200);

    // At the body deadline each stuck request is answered 408 with the contract's body, and
    // its connection is closed.
    for mut stream in stuck {
        let mut answer = Vec::new();
        tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut answer))
            .await
            .expect("closed")
            .unwrap();
        let answer = String::from_utf8_lossy(&answer);
        assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
        assert!(answer.contains("\"error\":\"request_timeout\""), "{answer}");
        assert!(answer.contains("\"request_id\":\"req_"), "{answer}");
    }
    let reply = svc
        .post(Some(&key), &request_of("svc", vec![metric("custom")]))
        .await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    let operator = svc.call("GET", "/rate-limit", &key, None).await;
    assert_eq!(operator.status, 200, "{}", operator.body);
}

#[tokio::test]
async fn the_connection_cap_holds_new_connections_until_a_slot_frees() {
    let config = default_pipeline_with(
        "http: {host: 127.0.0.1, port: 0, database: '{dir}/metrics.db'}",
        "http: {host: 127.0.0.1, port: 0, database: '{dir}/metrics.db', \
         max_connections: 3, header_read_timeout: 1s}",
    );
    let svc = TestService::with_config(&config).await;
    let mut idle = Vec::new();
    for _ in 0..3 {
        idle.push(TcpStream::connect(svc.addr).await.unwrap());
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    // A fourth connection is not served while the three idle ones hold every slot; once the
    // header timeout closes them, it is.
    let started = Instant::now();
    let health = svc.health_until(Duration::ZERO, |_| true).await;
    assert_eq!(health.status, 200);
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(700) && waited < Duration::from_secs(4),
        "{waited:?}"
    );
    drop(idle);
}

#[test]
fn the_shipped_config_binds_the_scrape_port_to_the_service_host() {
    let printed = print_config(&[("METRICS_SERVICE_HOST", "127.0.0.1")]);
    let printed: serde_json::Value = serde_yaml::from_str(&printed).unwrap();
    assert_eq!(printed["exporters"]["prometheus"]["host"], "127.0.0.1");
    assert_eq!(printed["receivers"]["http"]["header_read_timeout"], "10s");
    assert_eq!(printed["receivers"]["http"]["max_connections"], 1024);
}
