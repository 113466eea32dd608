//! Retention: per-table policies, and deleting rows older than a table's period a small chunk
//! per transaction, so the writer is never held up for long.

use chrono::{DateTime, Duration, Utc};
use sqlx::{AssertSqlSafe, Row};

use crate::idempotency::idempotency_cutoff;
use crate::{METRIC_TABLES, Store, timestamp_text};

/// Rows deleted per transaction.
pub(crate) const CHUNK: usize = 1_000;

/// The longest retention period a policy may have: 100 years (36,500 days). The admin API and
/// the `database` exporter's `retention_days` refuse more.
pub const MAX_RETENTION_DAYS: u32 = 36_500;

/// The moment before which rows are older than `days`. Checked arithmetic: a period reaching
/// before the earliest representable time (a policy written by an older version, say) yields
/// that earliest time, so nothing is older, rather than a panic.
pub fn retention_cutoff(now: DateTime<Utc>, days: u32) -> DateTime<Utc> {
    Duration::try_days(i64::from(days))
        .and_then(|period| now.checked_sub_signed(period))
        .unwrap_or(DateTime::<Utc>::MIN_UTC)
}

/// How long one table's rows are kept.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetentionPolicy {
    pub table_name: String,
    pub retention_days: u32,
    pub is_active: bool,
    /// `config` (from the `database` exporter's `retention_days`) or `admin` (set through the API).
    pub set_by: String,
    pub updated_at: String,
}

/// What applying a policy to a table did, or would do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetentionRun {
    pub table_name: String,
    pub retention_days: u32,
    pub cutoff: String,
    pub rows: u64,
}

/// The tables a retention pass (of `only` that table, if given) deletes from, with their periods:
/// those with an active policy that keeps rows for a limited time.
pub(crate) fn due(policies: Vec<RetentionPolicy>, only: Option<&str>) -> Vec<(&'static str, u32)> {
    policies
        .into_iter()
        .filter(|policy| policy.is_active && policy.retention_days > 0)
        .filter_map(|policy| Some((metric_table(&policy.table_name)?, policy.retention_days)))
        .filter(|(table, _)| only.is_none_or(|only| only == *table))
        .collect()
}

/// The name if it is one of the metrics tables.
pub fn metric_table(name: &str) -> Option<&'static str> {
    METRIC_TABLES.into_iter().find(|t| *t == name)
}

impl Store {
    /// Makes the config's period the policy of every table that has no policy set by an admin.
    pub async fn seed_retention(&self, retention_days: u32) -> Result<(), sqlx::Error> {
        let now = timestamp_text(&Utc::now());
        for table in METRIC_TABLES {
            sqlx::query(
                "INSERT INTO retention_policies (table_name, retention_days, is_active, set_by, updated_at) \
                 VALUES (?, ?, ?, 'config', ?) \
                 ON CONFLICT (table_name) DO UPDATE SET retention_days = excluded.retention_days, \
                 is_active = excluded.is_active, updated_at = excluded.updated_at \
                 WHERE retention_policies.set_by = 'config'",
            )
            .bind(table)
            .bind(i64::from(retention_days))
            .bind(retention_days > 0)
            .bind(&now)
            .execute(self.pool())
            .await?;
        }
        Ok(())
    }

    pub async fn retention_policies(&self) -> Result<Vec<RetentionPolicy>, sqlx::Error> {
        let rows = sqlx::query(
            "SELECT table_name, retention_days, is_active, set_by, updated_at FROM retention_policies \
             ORDER BY table_name",
        )
        .fetch_all(self.pool())
        .await?;
        rows.iter()
            .map(|row| {
                Ok(RetentionPolicy {
                    table_name: row.try_get("table_name")?,
                    retention_days: row
                        .try_get::<i64, _>("retention_days")?
                        .clamp(0, u32::MAX as i64) as u32,
                    is_active: row.try_get("is_active")?,
                    set_by: row.try_get("set_by")?,
                    updated_at: row.try_get("updated_at")?,
                })
            })
            .collect()
    }

    /// Sets a table's policy; it then survives config changes.
    pub async fn set_retention_policy(
        &self,
        table: &'static str,
        retention_days: u32,
        is_active: bool,
    ) -> Result<(), sqlx::Error> {
        sqlx::query(
            "INSERT INTO retention_policies (table_name, retention_days, is_active, set_by, updated_at) \
             VALUES (?, ?, ?, 'admin', ?) \
             ON CONFLICT (table_name) DO UPDATE SET retention_days = excluded.retention_days, \
             is_active = excluded.is_active, set_by = 'admin', updated_at = excluded.updated_at",
        )
        .bind(table)
        .bind(i64::from(retention_days))
        .bind(is_active)
        .bind(timestamp_text(&Utc::now()))
        .execute(self.pool())
        .await?;
        Ok(())
    }

    /// Applies the active policies (of `only` that table, if given): deletes the old rows, or
    /// with `dry_run` counts them.
    pub async fn apply_retention(
        &self,
        only: Option<&str>,
        dry_run: bool,
    ) -> Result<Vec<RetentionRun>, sqlx::Error> {
        let mut runs = Vec::new();
        for (table, retention_days) in due(self.retention_policies().await?, only) {
            let cutoff = retention_cutoff(Utc::now(), retention_days);
            let rows = if dry_run {
                self.count_older_than(table, cutoff).await?
            } else {
                self.delete_older_than(table, cutoff).await?
            };
            runs.push(RetentionRun {
                table_name: table.to_owned(),
                retention_days,
                cutoff: timestamp_text(&cutoff),
                rows,
            });
        }
        if !dry_run && only.is_none() {
            self.forget_idempotency_keys().await?;
        }
        Ok(runs)
    }

    /// Deletes idempotency records older than the window.
    async fn forget_idempotency_keys(&self) -> Result<(), sqlx::Error> {
        sqlx::query("DELETE FROM idempotency_keys WHERE created_at < ?")
            .bind(timestamp_text(&idempotency_cutoff(Utc::now())))
            .execute(self.pool())
            .await?;
        Ok(())
    }

    async fn count_older_than(
        &self,
        table: &'static str,
        cutoff: DateTime<Utc>,
    ) -> Result<u64, sqlx::Error> {
        let sql = format!("SELECT COUNT(*) FROM {table} WHERE timestamp < ?");
        let count: i64 = sqlx::query_scalar(AssertSqlSafe(sql))
            .bind(timestamp_text(&cutoff))
            .fetch_one(self.pool())
            .await?;
        Ok(count as u64)
    }

    async fn delete_older_than(
        &self,
        table: &'static str,
        cutoff: DateTime<Utc>,
    ) -> Result<u64, sqlx::Error> {
        let cutoff = timestamp_text(&cutoff);
        let sql = format!(
            "DELETE FROM {table} WHERE id IN (SELECT id FROM {table} WHERE timestamp < ? LIMIT {CHUNK})"
        );
        let mut deleted = 0;
        loop {
            let done = sqlx::query(AssertSqlSafe(sql.as_str()))
                .bind(&cutoff)
                .execute(self.pool())
                .await?;
            deleted += done.rows_affected();
            if done.rows_affected() < CHUNK as u64 {
                return Ok(deleted);
            }
            // Let queued writes in between chunks.
            tokio::task::yield_now().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cutoff_never_overflows() {
        let now = Utc::now();
        assert_eq!(retention_cutoff(now, 0), now);
        let century = retention_cutoff(now, MAX_RETENTION_DAYS);
        assert!(century < now && century.timestamp() > -2_300_000_000);
        assert_eq!(retention_cutoff(now, u32::MAX), DateTime::<Utc>::MIN_UTC);
    }
}
