//! The background task that keeps the database within its retention period.

use std::sync::Arc;
use std::time::Duration;

use mcp_metrics_plugin::CancellationToken;
use mcp_metrics_store::Store;

/// Rows deleted per transaction.
const CHUNK: usize = 1_000;

pub async fn run(
    store: Arc<Store>,
    retention: Duration,
    every: Duration,
    shutdown: CancellationToken,
) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = shutdown.cancelled() => return,
        }
        let cutoff = chrono::Utc::now() - retention;
        match store.delete_older_than(cutoff, CHUNK).await {
            Ok(0) => {}
            Ok(deleted) => tracing::info!(deleted, %cutoff, "retention: deleted old rows"),
            Err(error) => {
                tracing::warn!(%error, "retention: cannot delete old rows; will try again")
            }
        }
    }
}
