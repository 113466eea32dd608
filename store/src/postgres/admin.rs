//! Retention and the admin endpoints' figures in PostgreSQL. A retention pass runs on one replica
//! at a time: it holds an advisory lock, and a replica that finds it taken skips its pass.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use sqlx::{AssertSqlSafe, Row};

use super::PgStore;
use crate::idempotency::idempotency_cutoff;
use crate::retention::CHUNK;
use crate::{
    DatabaseSize, METRIC_TABLES, RetentionPolicy, RetentionRun, TableStats, metric_table,
    retention_cutoff, timestamp_text,
};

/// The advisory lock a retention pass holds.
const RETENTION_LOCK: i64 = 0x006d_6370_6d72_6574; // "mcpmret"

impl PgStore {
    pub async fn seed_retention(&self, retention_days: u32) -> Result<(), sqlx::Error> {
        for table in METRIC_TABLES {
            sqlx::query(
                "INSERT INTO retention_policies (table_name, retention_days, is_active, set_by, updated_at) \
                 VALUES ($1, $2, $3, 'config', now()) \
                 ON CONFLICT (table_name) DO UPDATE SET retention_days = excluded.retention_days, \
                 is_active = excluded.is_active, updated_at = excluded.updated_at \
                 WHERE retention_policies.set_by = 'config'",
            )
            .bind(table)
            .bind(retention_days as i32)
            .bind(retention_days > 0)
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
                    retention_days: row.try_get::<i32, _>("retention_days")?.max(0) as u32,
                    is_active: row.try_get("is_active")?,
                    set_by: row.try_get("set_by")?,
                    updated_at: timestamp_text(&row.try_get("updated_at")?),
                })
            })
            .collect()
    }

    pub async fn set_retention_policy(
        &self,
        table: &'static str,
        retention_days: u32,
        is_active: bool,
    ) -> Result<(), sqlx::Error> {
        sqlx::query(
            "INSERT INTO retention_policies (table_name, retention_days, is_active, set_by, updated_at) \
             VALUES ($1, $2, $3, 'admin', now()) \
             ON CONFLICT (table_name) DO UPDATE SET retention_days = excluded.retention_days, \
             is_active = excluded.is_active, set_by = 'admin', updated_at = excluded.updated_at",
        )
        .bind(table)
        .bind(retention_days as i32)
        .bind(is_active)
        .execute(self.pool())
        .await?;
        Ok(())
    }

    /// As [`Store::apply_retention`](crate::Store::apply_retention). A pass that deletes runs
    /// only while it holds the retention lock; with another replica on it, this one does nothing.
    pub async fn apply_retention(
        &self,
        only: Option<&str>,
        dry_run: bool,
    ) -> Result<Vec<RetentionRun>, sqlx::Error> {
        let mut connection = self.pool().acquire().await?;
        if !dry_run {
            let locked: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock($1)")
                .bind(RETENTION_LOCK)
                .fetch_one(&mut *connection)
                .await?;
            if !locked {
                tracing::debug!("retention: another replica is on it");
                return Ok(Vec::new());
            }
        }
        let runs = self.retention_runs(&mut connection, only, dry_run).await;
        if !dry_run {
            sqlx::query("SELECT pg_advisory_unlock($1)")
                .bind(RETENTION_LOCK)
                .execute(&mut *connection)
                .await?;
        }
        runs
    }

    async fn retention_runs(
        &self,
        connection: &mut sqlx::PgConnection,
        only: Option<&str>,
        dry_run: bool,
    ) -> Result<Vec<RetentionRun>, sqlx::Error> {
        let mut runs = Vec::new();
        for policy in self.retention_policies().await? {
            let Some(table) = metric_table(&policy.table_name) else {
                continue;
            };
            if only.is_some_and(|only| only != table)
                || !policy.is_active
                || policy.retention_days == 0
            {
                continue;
            }
            let cutoff = retention_cutoff(Utc::now(), policy.retention_days);
            let rows = if dry_run {
                let sql = format!("SELECT COUNT(*) FROM {table} WHERE timestamp < $1");
                let count: i64 = sqlx::query_scalar(AssertSqlSafe(sql))
                    .bind(cutoff)
                    .fetch_one(&mut *connection)
                    .await?;
                count as u64
            } else {
                delete_older_than(connection, table, "timestamp", cutoff).await?
            };
            runs.push(RetentionRun {
                table_name: table.to_owned(),
                retention_days: policy.retention_days,
                cutoff: timestamp_text(&cutoff),
                rows,
            });
        }
        if !dry_run && only.is_none() {
            let cutoff = idempotency_cutoff(Utc::now());
            delete_older_than(connection, "idempotency_keys", "created_at", cutoff).await?;
        }
        Ok(runs)
    }

    pub async fn table_stats(&self) -> Result<Vec<TableStats>, sqlx::Error> {
        let mut stats = Vec::new();
        for table in METRIC_TABLES {
            let sql = format!(
                "SELECT COUNT(*) AS n, MIN(timestamp) AS oldest, MAX(timestamp) AS newest FROM {table}"
            );
            let row = sqlx::query(AssertSqlSafe(sql))
                .fetch_one(self.pool())
                .await?;
            let at = |name| -> Result<Option<String>, sqlx::Error> {
                Ok(row
                    .try_get::<Option<DateTime<Utc>>, _>(name)?
                    .map(|at| timestamp_text(&at)))
            };
            stats.push(TableStats {
                table_name: table,
                rows: row.try_get("n")?,
                oldest: at("oldest")?,
                newest: at("newest")?,
            });
        }
        Ok(stats)
    }

    /// The database's size as PostgreSQL counts it; it keeps no write-ahead log per database.
    pub async fn size(&self) -> Result<DatabaseSize, sqlx::Error> {
        let row = sqlx::query(
            "SELECT pg_database_size(current_database()) AS bytes, \
             current_setting('block_size')::bigint AS page_size",
        )
        .fetch_one(self.pool())
        .await?;
        let bytes: i64 = row.try_get("bytes")?;
        let page_size: i64 = row.try_get("page_size")?;
        Ok(DatabaseSize {
            path: self.location().to_string(),
            file_bytes: bytes as u64,
            wal_bytes: 0,
            page_size,
            page_count: bytes / page_size.max(1),
            free_pages: 0,
        })
    }

    pub async fn row_counts(&self) -> anyhow::Result<HashMap<&'static str, i64>> {
        let mut counts = HashMap::new();
        for table in METRIC_TABLES {
            let sql = AssertSqlSafe(format!("SELECT COUNT(*) FROM {table}"));
            let count: i64 = sqlx::query_scalar(sql).fetch_one(self.pool()).await?;
            counts.insert(table, count);
        }
        Ok(counts)
    }
}

/// Deletes the rows older than `cutoff` a chunk per statement, so concurrent writers are never
/// held up for long.
async fn delete_older_than(
    connection: &mut sqlx::PgConnection,
    table: &'static str,
    column: &'static str,
    cutoff: DateTime<Utc>,
) -> Result<u64, sqlx::Error> {
    let key = if table == "idempotency_keys" {
        "ctid"
    } else {
        "id"
    };
    let sql = format!(
        "DELETE FROM {table} WHERE {key} IN \
         (SELECT {key} FROM {table} WHERE {column} < $1 LIMIT {CHUNK})"
    );
    let mut deleted = 0;
    loop {
        let done = sqlx::query(AssertSqlSafe(sql.as_str()))
            .bind(cutoff)
            .execute(&mut *connection)
            .await?;
        deleted += done.rows_affected();
        if done.rows_affected() < CHUNK as u64 {
            return Ok(deleted);
        }
        tokio::task::yield_now().await;
    }
}
