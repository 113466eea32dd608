//! `sqlite`: stores every metric in a SQLite file with the contract's schema.

mod config;
mod retention;

pub use config::SqliteConfig;

use std::sync::Arc;

use mcp_metrics_plugin::{Batch, CancellationToken, ExportError, Exporter, async_trait};
use mcp_metrics_store::Store;
use tokio::task::JoinHandle;

pub struct SqliteExporter {
    store: Arc<Store>,
    /// The retention task, stopped before the last checkpoint so its deletes cannot hold it up.
    retention: tokio::sync::Mutex<Option<(CancellationToken, JoinHandle<()>)>>,
}

#[async_trait]
impl Exporter for SqliteExporter {
    async fn export(&self, batch: &Batch) -> Result<(), ExportError> {
        self.store.write_batch(batch).await.map_err(classify)
    }

    async fn shutdown(&self) -> Result<(), mcp_metrics_plugin::BoxError> {
        if let Some((stop, task)) = self.retention.lock().await.take() {
            stop.cancel();
            let _ = task.await;
        }
        // Fold the write-ahead log into the database so the file is complete on its own.
        sqlx::query("PRAGMA wal_checkpoint(TRUNCATE)")
            .execute(self.store.pool())
            .await?;
        Ok(())
    }
}

/// Whether trying again can help: a busy or locked database, a full disk or an I/O fault may
/// clear; a constraint or a malformed value will not.
fn classify(error: sqlx::Error) -> ExportError {
    let message = format!("sqlite: {error}");
    match &error {
        sqlx::Error::Database(db) => match db.kind() {
            sqlx::error::ErrorKind::Other => ExportError::retryable(message),
            _ => ExportError::permanent(message),
        },
        sqlx::Error::Encode(_) | sqlx::Error::TypeNotFound { .. } => {
            ExportError::permanent(message)
        }
        _ => ExportError::retryable(message),
    }
}
