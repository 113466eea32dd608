//! Writing metric rows: every metric into `metrics`, the typed ones also into their own table,
//! with the contract's column mapping. One transaction per batch, many rows per INSERT.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

use mcp_metrics_plugin::{Batch, Metric, MetricType, RequestContext};
use sqlx::sqlite::{Sqlite, SqliteArguments};
use sqlx::{AssertSqlSafe, SqliteConnection};

use crate::columns::{authenticated_service, boolean, integer, json_text, real, text};
use crate::idempotency::{keyed_parts, unseen};
use crate::{Store, timestamp_text};

/// Rows per INSERT statement: large enough to amortise the statement and the round trip to the
/// driver's thread, small enough to keep the bound parameters (12 per row at most, 6000) far
/// below SQLite's limit (32766).
const ROWS_PER_STATEMENT: usize = 500;

type Query<'q> = sqlx::query::Query<'q, Sqlite, SqliteArguments>;

/// One metric ready to be written.
struct Row<'a> {
    context: &'a RequestContext,
    metric: &'a Metric,
    timestamp: String,
}

struct Table {
    name: &'static str,
    columns: &'static [&'static str],
    bind: for<'q> fn(Query<'q>, &Row<'_>) -> Query<'q>,
}

const METRICS: Table = Table {
    name: "metrics",
    columns: &[
        "request_id",
        "service",
        "service_version",
        "instance_id",
        "metric_type",
        "timestamp",
        "value",
        "duration_ms",
        "dimensions",
        "metadata",
    ],
    bind: |query, row| {
        let (context, metric) = (row.context, row.metric);
        query
            .bind(context.request_id.clone())
            .bind(context.service.clone())
            .bind(context.version.clone())
            .bind(context.instance_id.clone())
            .bind(metric.metric_type.as_str())
            .bind(row.timestamp.clone())
            .bind(metric.value)
            .bind(metric.duration_ms)
            .bind(json_text(&metric.dimensions))
            .bind(json_text(&metric.metadata))
    },
};

const AUTH_METRICS: Table = Table {
    name: "auth_metrics",
    columns: &[
        "request_id",
        "timestamp",
        "service",
        "duration_ms",
        "success",
        "method",
        "server",
        "user_hash",
        "error_code",
        "authenticated_service",
    ],
    bind: |query, row| {
        let (dimensions, metadata) = (&row.metric.dimensions, &row.metric.metadata);
        bind_common(query, row)
            .bind(boolean(dimensions.get("success")))
            .bind(text(dimensions.get("method")))
            .bind(text(dimensions.get("server")))
            .bind(text(dimensions.get("user_hash")))
            .bind(text(metadata.get("error_code")))
            .bind(authenticated_service(metadata))
    },
};

const DISCOVERY_METRICS: Table = Table {
    name: "discovery_metrics",
    columns: &[
        "request_id",
        "timestamp",
        "service",
        "duration_ms",
        "query",
        "results_count",
        "top_k_services",
        "top_n_tools",
        "embedding_time_ms",
        "faiss_search_time_ms",
        "authenticated_service",
    ],
    bind: |query, row| {
        let (dimensions, metadata) = (&row.metric.dimensions, &row.metric.metadata);
        bind_common(query, row)
            .bind(text(dimensions.get("query")))
            .bind(integer(dimensions.get("results_count")))
            .bind(integer(dimensions.get("top_k_services")))
            .bind(integer(dimensions.get("top_n_tools")))
            .bind(real(metadata.get("embedding_time_ms")))
            .bind(real(metadata.get("faiss_search_time_ms")))
            .bind(authenticated_service(metadata))
    },
};

const TOOL_METRICS: Table = Table {
    name: "tool_metrics",
    columns: &[
        "request_id",
        "timestamp",
        "service",
        "duration_ms",
        "tool_name",
        "server_path",
        "server_name",
        "success",
        "error_code",
        "input_size_bytes",
        "output_size_bytes",
        "authenticated_service",
    ],
    bind: |query, row| {
        let (dimensions, metadata) = (&row.metric.dimensions, &row.metric.metadata);
        bind_common(query, row)
            .bind(text(dimensions.get("tool_name")))
            .bind(text(dimensions.get("server_path")))
            .bind(text(dimensions.get("server_name")))
            .bind(boolean(dimensions.get("success")))
            .bind(text(metadata.get("error_code")))
            .bind(integer(metadata.get("input_size_bytes")))
            .bind(integer(metadata.get("output_size_bytes")))
            .bind(authenticated_service(metadata))
    },
};

/// The columns every typed table starts with.
fn bind_common<'q>(query: Query<'q>, row: &Row<'_>) -> Query<'q> {
    query
        .bind(row.context.request_id.clone())
        .bind(row.timestamp.clone())
        .bind(row.context.service.clone())
        .bind(row.metric.duration_ms)
}

/// The typed table a metric also lands in, if any.
fn typed_table(metric_type: MetricType) -> Option<&'static Table> {
    match metric_type {
        MetricType::AuthRequest => Some(&AUTH_METRICS),
        MetricType::ToolDiscovery => Some(&DISCOVERY_METRICS),
        MetricType::ToolExecution => Some(&TOOL_METRICS),
        _ => None,
    }
}

impl Store {
    /// Writes every metric of the batch in one transaction: all rows or none.
    pub async fn write_batch(&self, batch: &Batch) -> Result<(), sqlx::Error> {
        if batch.is_empty() {
            return Ok(());
        }
        let mut writer = self.writer.lock().await;
        let connection = match writer.as_mut() {
            Some(connection) => connection,
            None => writer.insert(self.pool().acquire().await?),
        };
        let written = write_rows(connection, batch).await;
        if written.is_err() {
            // The connection may be what failed: take a fresh one next time.
            *writer = None;
        }
        written
    }
}

/// Every row into `metrics`, the typed ones also into their table, in one transaction, except
/// the parts of requests the database already has under their idempotency key.
async fn write_rows(connection: &mut SqliteConnection, batch: &Batch) -> Result<(), sqlx::Error> {
    use sqlx::Connection;
    let mut tx = connection.begin().await?;
    let seen = record_keyed_parts(&mut tx, batch).await?;
    let rows: Vec<Row> = unseen(batch, &seen)
        .map(|(context, metric)| Row {
            context,
            metric,
            timestamp: timestamp_text(&metric.timestamp),
        })
        .collect();
    insert(&mut tx, &METRICS, rows.iter()).await?;
    for table in [&AUTH_METRICS, &DISCOVERY_METRICS, &TOOL_METRICS] {
        let typed = rows.iter().filter(|row| {
            typed_table(row.metric.metric_type).is_some_and(|t| t.name == table.name)
        });
        insert(&mut tx, table, typed).await?;
    }
    tx.commit().await
}

/// Records the batch's keyed parts; returns the requests whose part was recorded before.
async fn record_keyed_parts(
    connection: &mut SqliteConnection,
    batch: &Batch,
) -> Result<HashSet<usize>, sqlx::Error> {
    let mut seen = HashSet::new();
    for part in keyed_parts(batch) {
        let recorded = sqlx::query(
            "INSERT INTO idempotency_keys \
             (key_id, idempotency_key, first_index, request_id, created_at) \
             VALUES (?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
        )
        .bind(part.key_id)
        .bind(part.idempotency_key)
        .bind(part.first_index)
        .bind(part.request_id)
        .bind(timestamp_text(&chrono::Utc::now()))
        .execute(&mut *connection)
        .await?;
        if recorded.rows_affected() == 0 {
            seen.insert(part.request);
        }
    }
    Ok(seen)
}

async fn insert<'a>(
    conn: &mut SqliteConnection,
    table: &Table,
    rows: impl Iterator<Item = &'a Row<'a>>,
) -> Result<(), sqlx::Error> {
    let rows: Vec<&Row> = rows.collect();
    let mut rest = &rows[..];
    while !rest.is_empty() {
        // Full statements, then the rest in powers of two: a handful of statement shapes per
        // table, so the driver's cache of prepared statements stays small.
        let size = if rest.len() >= ROWS_PER_STATEMENT {
            ROWS_PER_STATEMENT
        } else {
            1 << rest.len().ilog2()
        };
        let (chunk, tail) = rest.split_at(size);
        rest = tail;
        let mut query = sqlx::query(AssertSqlSafe(insert_sql(table, chunk.len())));
        for row in chunk {
            query = (table.bind)(query, row);
        }
        query.execute(&mut *conn).await?;
    }
    Ok(())
}

/// `INSERT INTO t (a, b) VALUES (?, ?), (?, ?) ...` for `rows` rows, built once per shape so the
/// driver's statement cache can keep it prepared.
fn insert_sql(table: &Table, rows: usize) -> Arc<str> {
    type Statements = HashMap<(&'static str, usize), Arc<str>>;
    static CACHE: Mutex<Option<Statements>> = Mutex::new(None);
    let mut cache = CACHE.lock().unwrap_or_else(|e| e.into_inner());
    cache
        .get_or_insert_with(HashMap::new)
        .entry((table.name, rows))
        .or_insert_with(|| {
            let tuple = format!("({})", vec!["?"; table.columns.len()].join(", "));
            let values = vec![tuple; rows].join(", ");
            format!(
                "INSERT INTO {} ({}) VALUES {}",
                table.name,
                table.columns.join(", "),
                values
            )
            .into()
        })
        .clone()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn insert_sql_has_one_tuple_per_row() {
        let sql = insert_sql(&AUTH_METRICS, 2);
        assert!(sql.starts_with("INSERT INTO auth_metrics (request_id, timestamp"));
        assert_eq!(sql.matches('?').count(), 20);
    }
}
