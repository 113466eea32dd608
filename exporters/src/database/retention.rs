//! The background task that keeps the database within its retention policies. A pass that fails
//! (a database error, or even a panic) is logged, reported in `/health` under the exporter until
//! a later pass succeeds, and tried again at the next interval: the task itself never dies.

use std::time::Duration;

use mcp_metrics_plugin::{CancellationToken, Telemetry, panic_message};
use mcp_metrics_store::Database;

pub async fn run(
    database: Database,
    every: Duration,
    component: String,
    telemetry: Telemetry,
    shutdown: CancellationToken,
) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = shutdown.cancelled() => break,
        }
        match pass(&database).await {
            Ok(()) => telemetry.background_ok(&component),
            Err(problem) => {
                tracing::warn!(exporter = %component, %problem, "retention: will try again");
                telemetry.background_failed(&component, problem);
            }
        }
    }
    telemetry.background_ok(&component);
}

/// One pass over every active policy, in a task of its own so that even a panic in it is a
/// failed pass rather than the end of retention.
async fn pass(database: &Database) -> Result<(), String> {
    let database = database.clone();
    let pass = tokio::spawn(async move { database.apply_retention(None, false).await });
    match pass.await {
        Ok(Ok(runs)) => {
            for run in runs.iter().filter(|run| run.rows > 0) {
                tracing::info!(table = %run.table_name, deleted = run.rows, cutoff = %run.cutoff, "retention: deleted old rows");
            }
            Ok(())
        }
        Ok(Err(error)) => Err(format!("retention: cannot delete old rows: {error}")),
        Err(failed) if failed.is_panic() => {
            let panic = failed.into_panic();
            let message = panic_message(panic.as_ref()).unwrap_or_default();
            Err(format!("retention: the pass panicked: {message}"))
        }
        Err(failed) => Err(format!("retention: the pass stopped: {failed}")),
    }
}
