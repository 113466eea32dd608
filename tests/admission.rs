//! Judging a request from its head: a wrong key is 401 whatever the body, a full pipeline is 503
//! before the body is read, and a request is taken by every pipeline it enters or by none.

mod common;

use std::time::Duration;

use common::*;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// The status line and headers of the answer to `head` (a request head) followed by
/// `body_sent` bytes of its body, read while the rest of the body is still unsent.
async fn answer_before_body(addr: std::net::SocketAddr, head: &str, body_sent: usize) -> String {
    let mut socket = TcpStream::connect(addr).await.unwrap();
    socket.write_all(head.as_bytes()).await.unwrap();
    socket.write_all(&vec![b' '; body_sent]).await.unwrap();
    let mut answer = Vec::new();
    let mut buffer = [0u8; 4096];
    let read = async {
        while !answer.windows(4).any(|w| w == b"\r\n\r\n") {
            let n = socket.read(&mut buffer).await.unwrap();
            assert!(n > 0, "closed without an answer");
            answer.extend_from_slice(&buffer[..n]);
        }
    };
    tokio::time::timeout(Duration::from_secs(5), read)
        .await
        .expect("answered before the body was sent");
    String::from_utf8_lossy(&answer).into_owned()
}

fn post_head(key: &str, content_type: &str, length: usize) -> String {
    format!(
        "POST /metrics HTTP/1.1\r\nHost: test\r\nX-API-Key: {key}\r\n\
         Content-Type: {content_type}\r\nContent-Length: {length}\r\n\r\n"
    )
}

#[tokio::test]
async fn a_wrong_key_is_401_whatever_the_body() {
    let svc = TestService::with_config(&default_pipeline_with(
        "http: {host: 127.0.0.1, port: 0,",
        "http: {host: 127.0.0.1, port: 0, max_request_size: 1KiB,",
    ))
    .await;
    let post = |body: &'static [u8], content_type: &'static str| {
        svc.client
            .post(svc.url("/metrics"))
            .header("X-API-Key", "mcp_metrics_wrong")
            .header("Content-Type", content_type)
            .body(body)
            .send()
    };
    let oversized: &'static [u8] = Box::leak(vec![b'x'; 4096].into_boxed_slice());
    for (body, content_type) in [
        (&b"{}"[..], "application/json"),
        (b"{not json", "application/json"),
        (b"service=svc", "text/plain"),
        (oversized, "application/json"),
    ] {
        let reply = Reply::from(post(body, content_type).await.unwrap()).await;
        assert_eq!(reply.status, 401, "{content_type} {}", reply.body);
        assert_eq!(reply.error(), "invalid_api_key");
    }
    let reply = svc.post(None, &json!({})).await;
    assert_eq!((reply.status, reply.error()), (401, "missing_api_key"));
}

/// The answer to a wrong key arrives while the client has sent 64 KiB of a 10 MiB body: the body
/// was neither waited for nor decoded.
#[tokio::test]
async fn a_large_body_with_a_wrong_key_is_refused_before_it_is_read() {
    let svc = TestService::start().await;
    let head = post_head("mcp_metrics_wrong", "application/json", 10 << 20);
    let answer = answer_before_body(svc.addr, &head, 64 << 10).await;
    assert!(answer.starts_with("HTTP/1.1 401"), "{answer}");
}

/// With the pipeline full (its database locked by another writer), a request is answered 503
/// with `Retry-After` from its head, though not a byte of its body was sent; once the database
/// is free again, every acknowledged metric lands.
#[tokio::test]
async fn a_full_pipeline_answers_503_before_the_body_is_read() {
    let svc = TestService::with_config(&default_pipeline_with(
        "sqlite: {path: '{dir}/metrics.db', retention_days: 0}",
        "sqlite: {path: '{dir}/metrics.db', retention_days: 0, sending_queue: {queue_size: 20}}",
    ))
    .await;
    let key = svc.key("svc").await;
    let lock = DatabaseLock::take(&svc.db_path()).await;
    let mut acknowledged = 0;
    loop {
        let reply = svc
            .post(Some(&key), &request_of("svc", vec![metric("custom"); 5]))
            .await;
        match reply.status {
            200 => acknowledged += 5,
            503 => break,
            other => panic!("unexpected {other}: {}", reply.body),
        }
        assert!(acknowledged <= 20, "the queue holds 20 metrics at most");
    }
    let answer = answer_before_body(svc.addr, &post_head(&key, "application/json", 1000), 0).await;
    assert!(answer.starts_with("HTTP/1.1 503"), "{answer}");
    assert!(
        answer.to_ascii_lowercase().contains("retry-after: 1"),
        "{answer}"
    );

    lock.release().await;
    assert_eq!(
        svc.rows_eventually("metrics", acknowledged).await,
        acknowledged
    );
}

/// One receiver feeding two pipelines with processors, one of whose databases is locked by
/// another writer for a while: clients that send every request again on 503 until it is taken
/// end with every metric exactly once in each database, since a refused request was taken by
/// neither pipeline.
#[tokio::test]
async fn a_request_is_taken_by_every_pipeline_or_by_none() {
    let svc = TestService::with_config(
        "
receivers:
  http: {host: 127.0.0.1, port: 0}
processors:
  auth: {database: '{dir}/metrics.db', refresh_interval: 200ms}
  validate: {}
  batch: {send_batch_size: 50, timeout: 20ms, queue_size: 200}
exporters:
  sqlite: {path: '{dir}/metrics.db', retention_days: 0}
  sqlite/locked: {path: '{dir}/locked.db', retention_days: 0, sending_queue: {queue_size: 100}}
service:
  pipelines:
    batched: {receivers: [http], processors: [auth, validate, batch], exporters: [sqlite]}
    direct: {receivers: [http], processors: [auth, validate], exporters: [sqlite/locked]}
",
    )
    .await;
    let key = svc.key("svc").await;
    let locked_db = svc.dir.path().join("locked.db");
    let lock = DatabaseLock::take(&locked_db).await;
    let (clients, requests, per_request) = (4, 25, 10);
    let mut senders = Vec::new();
    for client_id in 0..clients {
        let (client, url, key) = (svc.client.clone(), svc.url("/metrics"), key.clone());
        senders.push(tokio::spawn(async move {
            let mut refused = 0;
            for request in 0..requests {
                let metrics: Vec<_> = (0..per_request)
                    .map(|i| {
                        let id = format!("{client_id}-{request}-{i}");
                        json!({"type": "custom", "value": 1.0, "dimensions": {"id": id}})
                    })
                    .collect();
                let body = request_of("svc", metrics);
                loop {
                    let reply = client
                        .post(&url)
                        .header("X-API-Key", &key)
                        .json(&body)
                        .send()
                        .await
                        .unwrap();
                    match reply.status().as_u16() {
                        200 => break,
                        503 => refused += 1,
                        other => panic!("unexpected {other}"),
                    }
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
            refused
        }));
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    lock.release().await;
    let mut refused = 0;
    for sender in senders {
        refused += sender.await.unwrap();
    }
    assert!(refused > 0, "the locked database never pushed back");

    let sent = (clients * requests * per_request) as i64;
    for database in [svc.db_path(), locked_db] {
        let store = mcp_metrics_store::Store::open(&database).await.unwrap();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        let (rows, distinct) = loop {
            let (rows, distinct): (i64, i64) = sqlx::query_as(
                "SELECT COUNT(*), COUNT(DISTINCT json_extract(dimensions, '$.id')) FROM metrics",
            )
            .fetch_one(store.pool())
            .await
            .unwrap();
            if rows >= sent || tokio::time::Instant::now() > deadline {
                break (rows, distinct);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        assert_eq!(
            (rows, distinct),
            (sent, sent),
            "{}: every metric exactly once ({refused} refusals)",
            database.display()
        );
    }
}
