//! What the store's tests write: one request of `count` metrics, made by `metric` from each
//! index and the request's receipt time.

use std::sync::Arc;

use chrono::{DateTime, Utc};
use mcp_metrics_plugin::{Batch, Metric, Request, RequestContext};

pub fn batch(count: usize, metric: impl Fn(usize, DateTime<Utc>) -> Metric) -> Batch {
    let now = Utc::now();
    let context = RequestContext {
        request_id: "req_1".into(),
        service: "svc".into(),
        version: None,
        instance_id: None,
        received_at: now,
        key: None,
        idempotency_key: None,
    };
    Batch::new(
        Request {
            context: Arc::new(context),
            metrics: (0..count).map(|index| metric(index, now)).collect(),
        },
        None,
    )
}
