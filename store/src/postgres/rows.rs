//! Writing metric rows into PostgreSQL: one transaction per batch, with its idempotency keys.
//! The rows go in with `COPY ... FROM STDIN` ([`PgWrite::Copy`], PostgreSQL's bulk-load path),
//! or with one `INSERT ... SELECT FROM UNNEST(arrays)` per table ([`PgWrite::Unnest`]). The
//! benchmark measures both in the same run: COPY took the same rows 1.25 times as fast, so the
//! service uses it; UNNEST is kept for that comparison.

use std::collections::HashSet;

use mcp_metrics_plugin::{Batch, Metric, RequestContext};
use sqlx::{Postgres, Transaction};

use super::PgStore;
use super::copy::copy_rows;
use crate::columns::{Field, Kind, TABLES, Table};
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
                for table in TABLES {
                    insert_unnest(&mut tx, table, &rows).await?;
                }
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

/// The rows `table` takes in one `INSERT ... SELECT * FROM UNNEST($1::text[], ...)`: one array
/// per column, whatever the number of rows.
async fn insert_unnest(
    tx: &mut Transaction<'_, Postgres>,
    table: &Table,
    rows: &[Row<'_>],
) -> Result<(), sqlx::Error> {
    let mut columns: Vec<Vec<Field>> = vec![Vec::new(); table.columns.len()];
    let mut row = Vec::new();
    for &(context, metric) in rows.iter().filter(|(_, m)| table.takes(m)) {
        table.row_of(context, metric, &mut row);
        for (column, field) in columns.iter_mut().zip(row.drain(..)) {
            column.push(field);
        }
    }
    if columns[0].is_empty() {
        return Ok(());
    }
    let arrays: Vec<String> = (1..=table.columns.len())
        .zip(table.columns)
        .map(|(n, column)| format!("${n}::{}", array_type(column.kind)))
        .collect();
    let sql = format!(
        "INSERT INTO {} ({}) SELECT * FROM UNNEST({})",
        table.name,
        table.column_list(),
        arrays.join(", ")
    );
    let mut query = sqlx::query(sqlx::AssertSqlSafe(sql));
    for (column, values) in table.columns.iter().zip(columns) {
        query = match column.kind {
            Kind::Text | Kind::Json | Kind::Timestamp => query.bind(gather(values, |f| match f {
                Field::Text(text) => text.map(|t| t.into_owned()),
                _ => None,
            })),
            Kind::Real => query.bind(gather(values, |f| match f {
                Field::Real(real) => real,
                _ => None,
            })),
            Kind::Integer => query.bind(gather(values, |f| match f {
                Field::Integer(integer) => integer,
                _ => None,
            })),
            Kind::Bool => query.bind(gather(values, |f| match f {
                Field::Bool(bool) => bool,
                _ => None,
            })),
        };
    }
    query.execute(&mut **tx).await?;
    Ok(())
}

/// The array a column's values are bound as (text for JSON and timestamps, cast on the way in).
fn array_type(kind: Kind) -> &'static str {
    match kind {
        Kind::Text => "text[]",
        Kind::Json => "text[]::jsonb[]",
        Kind::Timestamp => "text[]::timestamptz[]",
        Kind::Real => "float8[]",
        Kind::Integer => "int8[]",
        Kind::Bool => "bool[]",
    }
}

fn gather<T>(values: Vec<Field>, value: impl Fn(Field) -> Option<T>) -> Vec<Option<T>> {
    values.into_iter().map(value).collect()
}
