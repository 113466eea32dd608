//! What the load is made of: requests of mixed metric types with the dimensions and metadata the
//! gateway's components send, and the same rows written straight into SQLite for the ceiling.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use mcp_metrics_plugin::{
    Batch, KeyInfo, Metric, MetricType, ProcessorConfig, Request, RequestContext,
};
use mcp_metrics_processors::enrich::EnrichConfig;
use mcp_metrics_store::Store;
use serde_json::{Value, json};

/// The `i`-th metric of the mix, as a client sends it.
pub fn metric(i: usize) -> Value {
    let success = !i.is_multiple_of(10);
    match i % 6 {
        0 => json!({"type": "auth_request", "value": 1.0, "duration_ms": 12.5 + (i % 50) as f64,
                    "dimensions": {"method": "jwt", "success": success, "server": "mcpgw", "user_hash": format!("user_{:04}", i % 997)},
                    "metadata": {"error_code": if success { Value::Null } else { json!("401") }, "request_size": 1024, "response_size": 512}}),
        1 => json!({"type": "tool_discovery", "value": 1.0, "duration_ms": 85.0,
                    "dimensions": {"query": "find weather tools", "results_count": 5, "top_k_services": 3, "top_n_tools": 10},
                    "metadata": {"embedding_time_ms": 12.5, "faiss_search_time_ms": 3.2}}),
        2 | 3 => json!({"type": "tool_execution", "value": 1.0, "duration_ms": 240.0,
                        "dimensions": {"tool_name": "get_weather", "server_path": "/weather", "server_name": "weather", "success": success},
                        "metadata": {"error_code": if success { Value::Null } else { json!("500") }, "input_size_bytes": 128, "output_size_bytes": 2048}}),
        4 => {
            json!({"type": "health_check", "value": 1.0, "duration_ms": 2.0, "dimensions": {"server": "mcpgw", "status": "ok"}})
        }
        _ => {
            json!({"type": "registry_operation", "value": 1.0, "duration_ms": 8.0, "dimensions": {"operation": "list", "success": true}})
        }
    }
}

/// A request body of `n` metrics.
pub fn body(n: usize, offset: usize) -> Vec<u8> {
    let metrics: Vec<Value> = (0..n).map(|i| metric(offset + i)).collect();
    let request = json!({"service": "auth-server", "version": "1.0.0", "instance_id": "bench-01", "metrics": metrics});
    serde_json::to_vec(&request).expect("JSON")
}

/// The same mix as the service stores it: `n` metrics decoded as a client sends them, received
/// at `at` with a key of their service, then through the shipped pipeline's `enrich` processor,
/// which adds the receipt time and the key's service to each metric's metadata. A ceiling of
/// lighter rows than the service's would flatter the writer beside it.
pub async fn batch(n: usize, at: chrono::DateTime<chrono::Utc>) -> anyhow::Result<Batch> {
    let context = RequestContext {
        // As long as the ids the service gives.
        request_id: format!("req_{:016x}", 0x5eed_u64),
        service: "auth-server".into(),
        version: Some("1.0.0".into()),
        instance_id: Some("bench-01".into()),
        received_at: at,
        key: Some(KeyInfo {
            id: 1,
            service_name: "auth-server".into(),
            rate_limit: None,
            is_admin: false,
        }),
        idempotency_key: None,
    };
    let metrics = (0..n)
        .map(|i| {
            let wire = metric(i);
            Metric {
                index: i,
                metric_type: MetricType::from_name(wire["type"].as_str().unwrap_or_default())
                    .unwrap_or(MetricType::Custom),
                timestamp: at + chrono::Duration::microseconds(i as i64),
                value: wire["value"].as_f64().unwrap_or(1.0),
                duration_ms: wire["duration_ms"].as_f64(),
                dimensions: wire["dimensions"].as_object().cloned().unwrap_or_default(),
                metadata: wire["metadata"].as_object().cloned().unwrap_or_default(),
            }
        })
        .collect();
    let decoded = Batch::new(
        Request {
            context: Arc::new(context),
            metrics,
        },
        None,
    );
    enriched(decoded).await
}

/// `batch` as the `enrich` processor of the shipped `pipelines.yaml` (`enrich: {}`) hands it on.
async fn enriched(batch: Batch) -> anyhow::Result<Batch> {
    let kept = Arc::new(crate::Kept::default());
    let enrich = EnrichConfig::default()
        .build(&crate::build_context("enrich"), kept.clone())
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    enrich
        .consume(batch)
        .await
        .map_err(|refusal| anyhow::anyhow!("enrich refused the batch: {}", refusal.message))?;
    kept.take().context("enrich handed nothing on")
}

/// Metrics per second this machine's SQLite takes through the service's own writer (same schema,
/// indexes and pragmas), `per_transaction` metrics per transaction, for `duration`.
pub async fn sqlite_ceiling(per_transaction: usize, duration: Duration) -> anyhow::Result<f64> {
    let dir = tempfile::tempdir()?;
    let store = Store::open(dir.path().join("ceiling.db")).await?;
    let mut batch = batch(per_transaction, chrono::Utc::now()).await?;
    let started = Instant::now();
    let mut written = 0usize;
    while started.elapsed() < duration {
        store.write_batch(&batch).await?;
        written += batch.len();
        // Rows as the service writes them: timestamps move on from batch to batch.
        for metric in &mut Arc::make_mut(&mut batch.requests[0]).metrics {
            metric.timestamp += chrono::Duration::milliseconds(10);
        }
    }
    let rate = written as f64 / started.elapsed().as_secs_f64();
    check_typed_rows(&store).await?;
    store.close().await;
    Ok(rate)
}

/// Fails unless every typed row of `metrics` (auth, discovery, tool) is also in its own table: a
/// writer that skipped those would look faster than one that does its whole job.
pub async fn check_typed_rows(store: &Store) -> anyhow::Result<()> {
    let counts = store.row_counts().await?;
    let typed: i64 = sqlx::query_scalar(
        "SELECT COUNT(*) FROM metrics \
         WHERE metric_type IN ('auth_request', 'tool_discovery', 'tool_execution')",
    )
    .fetch_one(store.pool())
    .await?;
    let in_tables = counts["auth_metrics"] + counts["discovery_metrics"] + counts["tool_metrics"];
    anyhow::ensure!(
        typed == in_tables,
        "{typed} typed rows in metrics but {in_tables} in the typed tables"
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_mix_has_every_typed_table_and_decodes() {
        let body: Value = serde_json::from_slice(&body(6, 0)).unwrap();
        let types: Vec<&str> = body["metrics"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["type"].as_str().unwrap())
            .collect();
        assert_eq!(
            types,
            [
                "auth_request",
                "tool_discovery",
                "tool_execution",
                "tool_execution",
                "health_check",
                "registry_operation"
            ]
        );
    }

    #[tokio::test]
    async fn the_ceiling_rows_carry_what_enrich_adds() {
        let batch = batch(100, chrono::Utc::now()).await.unwrap();
        assert_eq!(batch.len(), 100);
        let metadata = &batch.requests[0].metrics[0].metadata;
        assert_eq!(metadata["authenticated_service"], "auth-server");
        assert!(metadata["received_at"].is_string(), "{metadata:?}");
    }
}
