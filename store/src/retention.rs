//! Deleting rows older than the retention period, a small chunk per transaction, so the writer
//! is never held up for long.

use chrono::{DateTime, Utc};
use sqlx::AssertSqlSafe;

use crate::{METRIC_TABLES, Store, timestamp_text};

impl Store {
    /// Deletes the rows of every metrics table whose `timestamp` is before `cutoff`, `chunk` rows
    /// at a time; returns how many went.
    pub async fn delete_older_than(
        &self,
        cutoff: DateTime<Utc>,
        chunk: usize,
    ) -> Result<u64, sqlx::Error> {
        let cutoff = timestamp_text(&cutoff);
        let mut deleted = 0;
        for table in METRIC_TABLES {
            let sql = format!(
                "DELETE FROM {table} WHERE id IN (SELECT id FROM {table} WHERE timestamp < ? LIMIT {chunk})"
            );
            loop {
                let done = sqlx::query(AssertSqlSafe(sql.as_str()))
                    .bind(&cutoff)
                    .execute(self.pool())
                    .await?;
                deleted += done.rows_affected();
                if done.rows_affected() < chunk as u64 {
                    break;
                }
                // Let queued writes in between chunks.
                tokio::task::yield_now().await;
            }
        }
        Ok(deleted)
    }
}
