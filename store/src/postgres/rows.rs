//! Writing metric rows into PostgreSQL: one transaction per batch, with its idempotency keys.
//! The rows go in with `COPY ... FROM STDIN` ([`PgWrite::Copy`], PostgreSQL's bulk-load path),
//! or with one `INSERT ... SELECT FROM UNNEST(arrays)` per table ([`PgWrite::Unnest`]). The
//! benchmark measures both in the same run: COPY took the same rows 1.25 times as fast, so the
//! service uses it; UNNEST is kept for that comparison.

use std::collections::HashSet;

use chrono::{DateTime, Utc};
use mcp_metrics_plugin::{Batch, Metric, MetricType, RequestContext};
use sqlx::{Postgres, Transaction};

use super::PgStore;
use super::copy::copy_rows;
use crate::columns::{authenticated_service, boolean, integer, json_text, real, text};
use crate::idempotency::{keyed_parts, unseen};

pub(super) type Row<'a> = (&'a RequestContext, &'a Metric);

/// How rows are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PgWrite {
    Copy,
    Unnest,
}

impl PgStore {
    /// Writes every metric of the batch in one transaction, all or none, except the parts of
    /// requests this database already has under their idempotency key.
    pub async fn write_batch(&self, batch: &Batch) -> Result<(), sqlx::Error> {
        self.write_batch_with(batch, PgWrite::Copy).await
    }

    /// [`write_batch`](Self::write_batch) with the rows written as `method` says.
    pub async fn write_batch_with(
        &self,
        batch: &Batch,
        method: PgWrite,
    ) -> Result<(), sqlx::Error> {
        if batch.is_empty() {
            return Ok(());
        }
        let mut tx = self.pool().begin().await?;
        let seen = record_keyed_parts(&mut tx, batch).await?;
        let rows: Vec<Row> = unseen(&batch.requests, &seen).collect();
        match method {
            PgWrite::Copy => copy_rows(&mut tx, &rows).await?,
            PgWrite::Unnest => {
                insert_metrics(&mut tx, &rows).await?;
                insert_auth(&mut tx, &of_type(&rows, MetricType::AuthRequest)).await?;
                insert_discovery(&mut tx, &of_type(&rows, MetricType::ToolDiscovery)).await?;
                insert_tool(&mut tx, &of_type(&rows, MetricType::ToolExecution)).await?;
            }
        }
        tx.commit().await
    }
}

/// Records the batch's keyed parts; returns the requests whose part was recorded before. A part
/// another replica is recording at this moment waits for its transaction, then counts as seen.
async fn record_keyed_parts(
    tx: &mut Transaction<'_, Postgres>,
    batch: &Batch,
) -> Result<HashSet<usize>, sqlx::Error> {
    let parts = keyed_parts(&batch.requests);
    let mut seen = HashSet::new();
    for part in parts {
        let recorded = sqlx::query(
            "INSERT INTO idempotency_keys (key_id, idempotency_key, first_index, request_id) \
             VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING",
        )
        .bind(part.key_id)
        .bind(part.idempotency_key)
        .bind(part.first_index as i32)
        .bind(part.request_id)
        .execute(&mut **tx)
        .await?;
        if recorded.rows_affected() == 0 {
            seen.insert(part.request);
        }
    }
    Ok(seen)
}

fn of_type<'a>(rows: &[Row<'a>], metric_type: MetricType) -> Vec<Row<'a>> {
    rows.iter()
        .filter(|(_, metric)| metric.metric_type == metric_type)
        .copied()
        .collect()
}

/// One column's values, read from every row.
fn column<'a, T>(rows: &[Row<'a>], value: impl Fn(&'a RequestContext, &'a Metric) -> T) -> Vec<T> {
    rows.iter()
        .map(|(context, metric)| value(context, metric))
        .collect()
}

fn timestamps(rows: &[Row<'_>]) -> Vec<DateTime<Utc>> {
    column(rows, |_, m| m.timestamp)
}

async fn insert_metrics(
    tx: &mut Transaction<'_, Postgres>,
    rows: &[Row<'_>],
) -> Result<(), sqlx::Error> {
    if rows.is_empty() {
        return Ok(());
    }
    sqlx::query(
        "INSERT INTO metrics (request_id, service, service_version, instance_id, metric_type, \
         timestamp, value, duration_ms, dimensions, metadata) \
         SELECT * FROM UNNEST($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], \
         $6::timestamptz[], $7::float8[], $8::float8[], $9::text[]::jsonb[], $10::text[]::jsonb[])",
    )
    .bind(column(rows, |c, _| c.request_id.as_str()))
    .bind(column(rows, |c, _| c.service.as_str()))
    .bind(column(rows, |c, _| c.version.as_deref()))
    .bind(column(rows, |c, _| c.instance_id.as_deref()))
    .bind(column(rows, |_, m| m.metric_type.as_str()))
    .bind(timestamps(rows))
    .bind(column(rows, |_, m| m.value))
    .bind(column(rows, |_, m| m.duration_ms))
    .bind(column(rows, |_, m| json_text(&m.dimensions)))
    .bind(column(rows, |_, m| json_text(&m.metadata)))
    .execute(&mut **tx)
    .await?;
    Ok(())
}

async fn insert_auth(
    tx: &mut Transaction<'_, Postgres>,
    rows: &[Row<'_>],
) -> Result<(), sqlx::Error> {
    if rows.is_empty() {
        return Ok(());
    }
    sqlx::query(
        "INSERT INTO auth_metrics (request_id, timestamp, service, duration_ms, success, method, \
         server, user_hash, error_code, authenticated_service) \
         SELECT * FROM UNNEST($1::text[], $2::timestamptz[], $3::text[], $4::float8[], \
         $5::bool[], $6::text[], $7::text[], $8::text[], $9::text[], $10::text[])",
    )
    .bind(column(rows, |c, _| c.request_id.as_str()))
    .bind(timestamps(rows))
    .bind(column(rows, |c, _| c.service.as_str()))
    .bind(column(rows, |_, m| m.duration_ms))
    .bind(column(rows, |_, m| boolean(m.dimensions.get("success"))))
    .bind(column(rows, |_, m| text(m.dimensions.get("method"))))
    .bind(column(rows, |_, m| text(m.dimensions.get("server"))))
    .bind(column(rows, |_, m| text(m.dimensions.get("user_hash"))))
    .bind(column(rows, |_, m| text(m.metadata.get("error_code"))))
    .bind(column(rows, |_, m| authenticated_service(&m.metadata)))
    .execute(&mut **tx)
    .await?;
    Ok(())
}

async fn insert_discovery(
    tx: &mut Transaction<'_, Postgres>,
    rows: &[Row<'_>],
) -> Result<(), sqlx::Error> {
    if rows.is_empty() {
        return Ok(());
    }
    sqlx::query(
        "INSERT INTO discovery_metrics (request_id, timestamp, service, duration_ms, query, \
         results_count, top_k_services, top_n_tools, embedding_time_ms, faiss_search_time_ms, \
         authenticated_service) \
         SELECT * FROM UNNEST($1::text[], $2::timestamptz[], $3::text[], $4::float8[], \
         $5::text[], $6::int8[], $7::int8[], $8::int8[], $9::float8[], $10::float8[], $11::text[])",
    )
    .bind(column(rows, |c, _| c.request_id.as_str()))
    .bind(timestamps(rows))
    .bind(column(rows, |c, _| c.service.as_str()))
    .bind(column(rows, |_, m| m.duration_ms))
    .bind(column(rows, |_, m| text(m.dimensions.get("query"))))
    .bind(column(rows, |_, m| {
        integer(m.dimensions.get("results_count"))
    }))
    .bind(column(rows, |_, m| {
        integer(m.dimensions.get("top_k_services"))
    }))
    .bind(column(rows, |_, m| {
        integer(m.dimensions.get("top_n_tools"))
    }))
    .bind(column(rows, |_, m| {
        real(m.metadata.get("embedding_time_ms"))
    }))
    .bind(column(rows, |_, m| {
        real(m.metadata.get("faiss_search_time_ms"))
    }))
    .bind(column(rows, |_, m| authenticated_service(&m.metadata)))
    .execute(&mut **tx)
    .await?;
    Ok(())
}

async fn insert_tool(
    tx: &mut Transaction<'_, Postgres>,
    rows: &[Row<'_>],
) -> Result<(), sqlx::Error> {
    if rows.is_empty() {
        return Ok(());
    }
    sqlx::query(
        "INSERT INTO tool_metrics (request_id, timestamp, service, duration_ms, tool_name, \
         server_path, server_name, success, error_code, input_size_bytes, output_size_bytes, \
         authenticated_service) \
         SELECT * FROM UNNEST($1::text[], $2::timestamptz[], $3::text[], $4::float8[], \
         $5::text[], $6::text[], $7::text[], $8::bool[], $9::text[], $10::int8[], $11::int8[], \
         $12::text[])",
    )
    .bind(column(rows, |c, _| c.request_id.as_str()))
    .bind(timestamps(rows))
    .bind(column(rows, |c, _| c.service.as_str()))
    .bind(column(rows, |_, m| m.duration_ms))
    .bind(column(rows, |_, m| text(m.dimensions.get("tool_name"))))
    .bind(column(rows, |_, m| text(m.dimensions.get("server_path"))))
    .bind(column(rows, |_, m| text(m.dimensions.get("server_name"))))
    .bind(column(rows, |_, m| boolean(m.dimensions.get("success"))))
    .bind(column(rows, |_, m| text(m.metadata.get("error_code"))))
    .bind(column(rows, |_, m| {
        integer(m.metadata.get("input_size_bytes"))
    }))
    .bind(column(rows, |_, m| {
        integer(m.metadata.get("output_size_bytes"))
    }))
    .bind(column(rows, |_, m| authenticated_service(&m.metadata)))
    .execute(&mut **tx)
    .await?;
    Ok(())
}
