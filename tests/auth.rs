//! API keys: checked against the api_keys table, whoever wrote it, with no query per request.

mod common;

use std::time::Duration;

use common::*;
use mcp_metrics_store::hash_key;

#[tokio::test]
async fn missing_and_unknown_keys_are_refused_with_401() {
    let svc = TestService::start().await;
    let reply = svc.post(None, &example_request()).await;
    assert_eq!(reply.status, 401);
    assert_eq!(reply.error(), "missing_api_key");

    let reply = svc
        .post(Some("mcp_metrics_not-a-real-key"), &example_request())
        .await;
    assert_eq!(reply.status, 401);
    assert_eq!(reply.error(), "invalid_api_key");
    assert_eq!(reply.body["message"], "API key is invalid or expired");
    assert_eq!(svc.store().await.row_counts().await.unwrap()["metrics"], 0);
}

#[tokio::test]
async fn a_key_made_while_running_works_at_once_even_after_being_refused() {
    let svc = TestService::start().await;
    // Inserted by "any other tool": a plain SQL insert of the digest.
    let key = "mcp_metrics_made-by-hand-0123456789";
    let refused = svc.post(Some(key), &example_request()).await;
    assert_eq!(refused.status, 401);
    sqlx::query("INSERT INTO api_keys (key_hash, service_name, created_at) VALUES (?, 'auth-server', '2024-01-01')")
        .bind(hash_key(key))
        .execute(svc.store().await.pool())
        .await
        .unwrap();
    // Remembered as unknown until the next refresh (200 ms here), then known.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let accepted = svc.post(Some(key), &example_request()).await;
    assert_eq!(accepted.status, 200, "{}", accepted.body);

    let fresh = svc.key("auth-server").await;
    let accepted = svc.post(Some(&fresh), &example_request()).await;
    assert_eq!(
        accepted.status, 200,
        "a key never seen before is looked up at once"
    );
}

#[tokio::test]
async fn a_deactivated_key_is_refused_within_the_refresh_interval() {
    let svc = TestService::start().await;
    let store = svc.store().await;
    let (record, key) = store.create_key("auth-server", None, false).await.unwrap();
    assert_eq!(svc.post(Some(&key), &example_request()).await.status, 200);
    assert!(store.revoke_key(record.id).await.unwrap());
    tokio::time::sleep(Duration::from_millis(500)).await;
    let reply = svc.post(Some(&key), &example_request()).await;
    assert_eq!(reply.status, 401);
    assert_eq!(reply.error(), "invalid_api_key");
}

#[tokio::test]
async fn last_used_at_is_recorded_while_the_service_runs() {
    // The test config refreshes keys, and writes their use, every 200 ms.
    let svc = TestService::start().await;
    let store = svc.store().await;
    let (used, key) = store.create_key("auth-server", None, false).await.unwrap();
    let (idle, _) = store.create_key("auth-server", None, false).await.unwrap();
    for _ in 0..5 {
        assert_eq!(svc.post(Some(&key), &example_request()).await.status, 200);
    }
    // About two refresh intervals, with room for a busy machine; the service keeps running.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(2);
    let last_used = loop {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let keys = store.list_keys().await.unwrap();
        let record = keys.iter().find(|k| k.id == used.id).unwrap();
        if let Some(at) = record.last_used_at.clone() {
            assert_eq!(
                keys.iter().find(|k| k.id == idle.id).unwrap().last_used_at,
                None,
                "only keys that were used"
            );
            break at;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "last_used_at not written while running"
        );
    };
    assert!(last_used >= used.created_at, "{last_used}");
}
