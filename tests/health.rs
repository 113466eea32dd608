//! A busy service is not a dead one: full queues make `/ready` refuse traffic, never `/health`
//! report the process broken; only exports failing past the threshold do.

mod common;

use std::time::Duration;

use common::*;

/// Clients sending as fast as they can while the database is held by another writer (for less
/// than SQLite's busy timeout, so no export has failed yet): the queues fill, `/ready` says so
/// and names the full queue, `/health` stays 200 throughout; once the load stops and the
/// database is free, `/ready` returns to 200 by itself.
#[tokio::test]
async fn full_queues_make_the_service_not_ready_but_never_unhealthy() {
    let svc = TestService::with_config(&edited(
        &default_pipeline_with(
            "  sqlite: {path: '{dir}/metrics.db', retention_days: 0}",
            "  sqlite: {path: '{dir}/metrics.db', retention_days: 0, sending_queue: {queue_size: 300}}",
        ),
        "service:\n",
        "service:\n  admission_wait: 0s\n",
    ))
    .await;
    let key = svc.key("svc").await;
    let get = |path: &'static str| {
        let (client, url) = (reqwest::Client::new(), svc.url(path));
        async move { Reply::from(client.get(url).send().await.unwrap()).await }
    };
    let lock = DatabaseLock::take(&svc.db_path()).await;
    let stop = tokio_util::sync::CancellationToken::new();
    let mut clients = Vec::new();
    for _ in 0..4 {
        let (client, url, key, stop) = (
            reqwest::Client::new(),
            svc.url("/metrics"),
            key.clone(),
            stop.clone(),
        );
        clients.push(tokio::spawn(async move {
            let body = request_of("svc", vec![metric("custom"); 100]);
            while !stop.is_cancelled() {
                let reply = client.post(&url).header("X-API-Key", &key).json(&body);
                let status = reply.send().await.unwrap().status().as_u16();
                assert!(status == 200 || status == 503, "unexpected {status}");
            }
        }));
    }

    let (mut not_ready, mut checks) = (None, 0);
    let until = tokio::time::Instant::now() + Duration::from_millis(1500);
    while tokio::time::Instant::now() < until {
        let health = get("/health").await;
        assert_eq!(health.status, 200, "busy is not dead: {}", health.body);
        let ready = get("/ready").await;
        if ready.status == 503 {
            not_ready = Some(ready.body);
        }
        checks += 1;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    stop.cancel();
    for client in clients {
        client.await.unwrap();
    }
    let not_ready = not_ready.expect("the queue never filled");
    assert_eq!(not_ready["status"], "not_ready");
    let problem = &not_ready["problems"][0];
    assert_eq!(problem["component"], "exporters.sqlite", "{not_ready}");
    assert!(
        problem["problem"]
            .as_str()
            .unwrap()
            .starts_with("queue full")
    );
    assert!(checks > 10, "health was asked throughout");

    lock.release().await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while get("/ready").await.status != 200 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "ready again by itself"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(get("/health").await.status, 200);
}
