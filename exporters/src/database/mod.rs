//! `database`: stores every metric with the contract's schema, in a SQLite file or in PostgreSQL
//! shared by replicas. `sqlite` is the same exporter named by a file path, as older configs have it.

mod config;
mod retention;

pub use config::{DatabaseConfig, SqliteConfig};

use mcp_metrics_plugin::{Batch, CancellationToken, ExportError, Exporter, async_trait};
use mcp_metrics_store::Database;
use tokio::task::JoinHandle;

pub struct DatabaseExporter {
    database: Database,
    /// The retention task, stopped before the last checkpoint so its deletes cannot hold it up.
    retention: tokio::sync::Mutex<Option<(CancellationToken, JoinHandle<()>)>>,
}

#[async_trait]
impl Exporter for DatabaseExporter {
    async fn export(&self, batch: &Batch) -> Result<(), ExportError> {
        Ok(self.database.write_batch(batch).await?)
    }

    async fn shutdown(&self) -> Result<(), mcp_metrics_plugin::BoxError> {
        if let Some((stop, task)) = self.retention.lock().await.take() {
            stop.cancel();
            let _ = task.await;
        }
        self.database.checkpoint().await?;
        Ok(())
    }
}
