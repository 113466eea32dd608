//! `Idempotency-Key` on the SQLite default: a resend is answered like the first and stores
//! nothing new; the key is the caller's own, and a malformed one is refused.

mod common;

use common::{TestService, metric, request_of};
use serde_json::Value;

async fn send(svc: &TestService, key: &str, idempotency_key: &str, body: &Value) -> (u16, Value) {
    let reply = svc
        .client
        .post(svc.url("/metrics"))
        .header("X-API-Key", key)
        .header("Idempotency-Key", idempotency_key)
        .json(body)
        .send()
        .await
        .unwrap();
    (reply.status().as_u16(), reply.json().await.unwrap())
}

#[tokio::test]
async fn a_resend_with_the_same_key_is_answered_like_the_first_and_stored_once() {
    let svc = TestService::start().await;
    let key = svc.key("svc").await;
    let mut bad = metric("custom");
    bad["value"] = "not a number".into();
    let body = request_of("svc", vec![metric("tool_execution"), bad, metric("custom")]);

    let first = send(&svc, &key, "3f1c9a52-batch", &body).await;
    assert_eq!(first.0, 200);
    assert_eq!(
        (first.1["accepted"].as_u64(), first.1["rejected"].as_u64()),
        (Some(2), Some(1))
    );
    assert_eq!(svc.rows_eventually("metrics", 2).await, 2);
    let again = send(&svc, &key, "3f1c9a52-batch", &body).await;
    assert_eq!(again, first, "the same answer, request id included");

    // The same idempotency key from another API key is another request.
    let other_key = svc.key("svc").await;
    let other = send(&svc, &other_key, "3f1c9a52-batch", &body).await;
    assert_eq!(other.0, 200);
    assert_ne!(other.1["request_id"], first.1["request_id"]);
    assert_eq!(svc.rows_eventually("metrics", 4).await, 4);
    // Nothing more arrives for the resend.
    svc.call("POST", "/flush", &key, None).await;
    assert_eq!(svc.store().await.row_counts().await.unwrap()["metrics"], 4);
    assert_eq!(
        svc.store().await.row_counts().await.unwrap()["tool_metrics"],
        2
    );
}

#[tokio::test]
async fn a_malformed_idempotency_key_is_refused_before_the_body_is_read() {
    let svc = TestService::start().await;
    let key = svc.key("svc").await;
    let body = request_of("svc", vec![metric("custom")]);
    for malformed in ["", "has space", &"k".repeat(256)] {
        let reply = svc
            .client
            .post(svc.url("/metrics"))
            .header("X-API-Key", &key)
            .header("Idempotency-Key", malformed)
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(reply.status(), 400, "{malformed:?}");
        let reply = common::Reply::from(reply).await;
        assert_eq!(reply.error(), "invalid_idempotency_key");
    }
    // 255 visible characters is the longest taken.
    let (status, _) = send(&svc, &key, &"k".repeat(255), &body).await;
    assert_eq!(status, 200);
    assert_eq!(svc.rows_eventually("metrics", 1).await, 1);
}
