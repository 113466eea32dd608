//! Writing metric rows: every metric into `metrics`, the typed ones also into their own table,
//! with the contract's column mapping. One transaction per batch, run on the writer's thread
//! (see [`crate::writer`]).

use std::collections::HashSet;
use std::sync::Arc;

use mcp_metrics_plugin::{Metric, Request, RequestContext};
use rusqlite::types::{Null, ToSql, ToSqlOutput};
use rusqlite::{Connection, TransactionBehavior};

use crate::columns::{Field, TABLES, Table};
use crate::idempotency::{keyed_parts, unseen};
use crate::timestamp_text;

impl ToSql for Field<'_> {
    fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
        match self {
            Field::Text(Some(text)) => Ok(ToSqlOutput::from(text.as_ref())),
            Field::Text(None) => Ok(ToSqlOutput::from(Null)),
            Field::Real(real) => real.to_sql(),
            Field::Integer(integer) => integer.to_sql(),
            Field::Bool(bool) => bool.to_sql(),
        }
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
    let metrics: Vec<(&RequestContext, &Metric)> = unseen(requests, &seen).collect();
    for table in TABLES {
        insert(&tx, table, &metrics)?;
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

/// The metrics `table` takes, a row each, one execution of its prepared statement per row: on
/// this thread a statement costs no round trip, so there is nothing to gain from many rows per
/// statement.
fn insert(
    connection: &Connection,
    table: &Table,
    metrics: &[(&RequestContext, &Metric)],
) -> rusqlite::Result<()> {
    let mut statement = connection.prepare_cached(&insert_sql(table))?;
    let mut row = Vec::with_capacity(table.columns.len());
    for &(context, metric) in metrics.iter().filter(|(_, m)| table.takes(m)) {
        table.row_of(context, metric, &mut row);
        for (index, value) in row.iter().enumerate() {
            statement.raw_bind_parameter(index + 1, value)?;
        }
        statement.raw_execute()?;
    }
    Ok(())
}

/// `INSERT INTO t (a, b) VALUES (?, ?)`.
fn insert_sql(table: &Table) -> String {
    format!(
        "INSERT INTO {} ({}) VALUES ({})",
        table.name,
        table.column_list(),
        vec!["?"; table.columns.len()].join(", ")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn insert_sql_has_a_parameter_per_column() {
        let auth = TABLES[1];
        let sql = insert_sql(auth);
        assert!(sql.starts_with("INSERT INTO auth_metrics (request_id, timestamp"));
        assert_eq!(sql.matches('?').count(), auth.columns.len());
    }
}
