//! The background task that keeps the database within its retention policies.

use std::sync::Arc;
use std::time::Duration;

use mcp_metrics_plugin::CancellationToken;
use mcp_metrics_store::Store;

pub async fn run(store: Arc<Store>, every: Duration, shutdown: CancellationToken) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = shutdown.cancelled() => return,
        }
        match store.apply_retention(None, false).await {
            Ok(runs) => {
                for run in runs.iter().filter(|run| run.rows > 0) {
                    tracing::info!(table = %run.table_name, deleted = run.rows, cutoff = %run.cutoff, "retention: deleted old rows");
                }
            }
            Err(error) => {
                tracing::warn!(%error, "retention: cannot delete old rows; will try again")
            }
        }
    }
}
