//! Writing metric rows: every metric into `metrics`, the typed ones also into their own table,
//! with the contract's column mapping. One transaction per batch, run on the writer's thread
//! (see [`crate::writer`]).

use std::collections::HashSet;
use std::sync::Arc;

use mcp_metrics_plugin::{Metric, MetricType, Request, RequestContext};
use rusqlite::types::ToSql;
use rusqlite::{CachedStatement, Connection, TransactionBehavior};

use crate::columns::{authenticated_service, boolean, integer, json_text, real, text};
use crate::idempotency::{keyed_parts, unseen};
use crate::timestamp_text;

/// One metric ready to be written.
struct Row<'a> {
    context: &'a RequestContext,
    metric: &'a Metric,
    timestamp: String,
}

struct Table {
    name: &'static str,
    columns: &'static [&'static str],
    bind: fn(&mut Values<'_, '_>, &Row<'_>) -> rusqlite::Result<()>,
}

/// A row's values, bound to the table's statement in column order.
struct Values<'s, 'c> {
    statement: &'s mut CachedStatement<'c>,
    bound: usize,
}

impl Values<'_, '_> {
    fn add(&mut self, value: impl ToSql) -> rusqlite::Result<()> {
        self.bound += 1;
        self.statement.raw_bind_parameter(self.bound, value)
    }
}

static METRICS: Table = Table {
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
    bind: |args, row| {
        let (context, metric) = (row.context, row.metric);
        args.add(&context.request_id)?;
        args.add(&context.service)?;
        args.add(&context.version)?;
        args.add(&context.instance_id)?;
        args.add(metric.metric_type.as_str())?;
        args.add(&row.timestamp)?;
        args.add(metric.value)?;
        args.add(metric.duration_ms)?;
        args.add(json_text(&metric.dimensions))?;
        args.add(json_text(&metric.metadata))
    },
};

static AUTH_METRICS: Table = Table {
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
    bind: |args, row| {
        let (dimensions, metadata) = (&row.metric.dimensions, &row.metric.metadata);
        bind_common(args, row)?;
        args.add(boolean(dimensions.get("success")))?;
        args.add(text(dimensions.get("method")))?;
        args.add(text(dimensions.get("server")))?;
        args.add(text(dimensions.get("user_hash")))?;
        args.add(text(metadata.get("error_code")))?;
        args.add(authenticated_service(metadata))
    },
};

static DISCOVERY_METRICS: Table = Table {
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
    bind: |args, row| {
        let (dimensions, metadata) = (&row.metric.dimensions, &row.metric.metadata);
        bind_common(args, row)?;
        args.add(text(dimensions.get("query")))?;
        args.add(integer(dimensions.get("results_count")))?;
        args.add(integer(dimensions.get("top_k_services")))?;
        args.add(integer(dimensions.get("top_n_tools")))?;
        args.add(real(metadata.get("embedding_time_ms")))?;
        args.add(real(metadata.get("faiss_search_time_ms")))?;
        args.add(authenticated_service(metadata))
    },
};

static TOOL_METRICS: Table = Table {
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
    bind: |args, row| {
        let (dimensions, metadata) = (&row.metric.dimensions, &row.metric.metadata);
        bind_common(args, row)?;
        args.add(text(dimensions.get("tool_name")))?;
        args.add(text(dimensions.get("server_path")))?;
        args.add(text(dimensions.get("server_name")))?;
        args.add(boolean(dimensions.get("success")))?;
        args.add(text(metadata.get("error_code")))?;
        args.add(integer(metadata.get("input_size_bytes")))?;
        args.add(integer(metadata.get("output_size_bytes")))?;
        args.add(authenticated_service(metadata))
    },
};

/// The columns every typed table starts with.
fn bind_common(args: &mut Values<'_, '_>, row: &Row<'_>) -> rusqlite::Result<()> {
    args.add(&row.context.request_id)?;
    args.add(&row.timestamp)?;
    args.add(&row.context.service)?;
    args.add(row.metric.duration_ms)
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

/// Every row into `metrics`, the typed ones also into their table, in one transaction, except
/// the parts of requests the database already has under their idempotency key.
pub(crate) fn write_rows(
    connection: &mut Connection,
    requests: &[Arc<Request>],
) -> rusqlite::Result<()> {
    // IMMEDIATE: take the write lock (or wait for it) before reading anything, so a transaction
    // never has to upgrade a read lock another writer holds up.
    let tx = connection.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let seen = record_keyed_parts(&tx, requests)?;
    let rows: Vec<Row> = unseen(requests, &seen)
        .map(|(context, metric)| Row {
            context,
            metric,
            timestamp: timestamp_text(&metric.timestamp),
        })
        .collect();
    insert(&tx, &METRICS, rows.iter())?;
    for table in [&AUTH_METRICS, &DISCOVERY_METRICS, &TOOL_METRICS] {
        let typed = rows.iter().filter(|row| {
            typed_table(row.metric.metric_type).is_some_and(|t| std::ptr::eq(t, table))
        });
        insert(&tx, table, typed)?;
    }
    tx.commit()
}

/// Records the requests' keyed parts; returns the requests whose part was recorded before.
fn record_keyed_parts(
    connection: &Connection,
    requests: &[Arc<Request>],
) -> rusqlite::Result<HashSet<usize>> {
    let mut seen = HashSet::new();
    let parts = keyed_parts(requests);
    if parts.is_empty() {
        return Ok(seen);
    }
    let mut record = connection.prepare_cached(
        "INSERT INTO idempotency_keys \
         (key_id, idempotency_key, first_index, request_id, created_at) \
         VALUES (?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
    )?;
    let now = timestamp_text(&chrono::Utc::now());
    for part in parts {
        let recorded = record.execute((
            part.key_id,
            part.idempotency_key,
            part.first_index,
            part.request_id,
            &now,
        ))?;
        if recorded == 0 {
            seen.insert(part.request);
        }
    }
    Ok(seen)
}

/// The rows into `table`, one execution of its prepared statement each: on this thread a
/// statement costs no round trip, so there is nothing to gain from many rows per statement.
fn insert<'a>(
    connection: &Connection,
    table: &Table,
    rows: impl Iterator<Item = &'a Row<'a>>,
) -> rusqlite::Result<()> {
    let mut statement = connection.prepare_cached(&insert_sql(table))?;
    for row in rows {
        let mut values = Values {
            statement: &mut statement,
            bound: 0,
        };
        (table.bind)(&mut values, row)?;
        // A value left unbound would keep the previous row's.
        debug_assert_eq!(values.bound, table.columns.len(), "{}", table.name);
        statement.raw_execute()?;
    }
    Ok(())
}

/// `INSERT INTO t (a, b) VALUES (?, ?)`.
fn insert_sql(table: &Table) -> String {
    format!(
        "INSERT INTO {} ({}) VALUES ({})",
        table.name,
        table.columns.join(", "),
        vec!["?"; table.columns.len()].join(", ")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn insert_sql_has_a_parameter_per_column() {
        let sql = insert_sql(&AUTH_METRICS);
        assert!(sql.starts_with("INSERT INTO auth_metrics (request_id, timestamp"));
        assert_eq!(sql.matches('?').count(), AUTH_METRICS.columns.len());
    }
}
