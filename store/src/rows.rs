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
    let created_at = chrono::Utc::now().format(CREATED_AT).to_string();
    for table in TABLES {
        insert(&tx, table, &metrics, &created_at)?;
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

/// Rows per `INSERT` statement. Each execution of a statement has a fixed cost on top of its
/// rows, most of it the `AUTOINCREMENT` bookkeeping (reading and rewriting the table's
/// `sqlite_sequence` row). Sharing it among 16 rows took 10–20 % off the writer's CPU a row in a
/// scratch benchmark, where longer statements gained nothing more; with [`CREATED_AT`], the
/// writer thread's CPU in the bench's steady scenario fell from 13–14.6 % of a core to 10.6–11.2.
const ROWS_PER_STATEMENT: usize = 16;

/// The prepared statements the writer uses: an `INSERT` per table and row count, and the one
/// that records idempotency keys. Its connection caches them all.
pub(crate) const STATEMENTS: usize = TABLES.len() * ROWS_PER_STATEMENT + 1;

/// `created_at` as the schema's default, `datetime('now')`, writes it. The writer gives it
/// instead: a function in a statement of many rows makes SQLite keep a statement journal, a copy
/// of every page the statement changes, in case the function fails halfway: 7 % of the writer's
/// samples in a profile.
const CREATED_AT: &str = "%Y-%m-%d %H:%M:%S";

/// The metrics `table` takes, up to [`ROWS_PER_STATEMENT`] rows per execution of a prepared
/// statement. The full statement's text is made once per call, not once per execution.
fn insert(
    connection: &Connection,
    table: &Table,
    metrics: &[(&RequestContext, &Metric)],
    created_at: &str,
) -> rusqlite::Result<()> {
    let taken: Vec<_> = metrics.iter().filter(|(_, m)| table.takes(m)).collect();
    let full = taken.chunks_exact(ROWS_PER_STATEMENT);
    let rest = full.remainder();
    let mut row = Vec::with_capacity(table.columns.len());
    if full.len() > 0 {
        let sql = insert_sql(table, ROWS_PER_STATEMENT);
        for chunk in full {
            insert_chunk(connection, &sql, table, chunk, created_at, &mut row)?;
        }
    }
    if !rest.is_empty() {
        let sql = insert_sql(table, rest.len());
        insert_chunk(connection, &sql, table, rest, created_at, &mut row)?;
    }
    Ok(())
}

/// One execution of `sql`, made by [`insert_sql`] for `chunk.len()` rows; `row` is scratch.
fn insert_chunk<'a>(
    connection: &Connection,
    sql: &str,
    table: &Table,
    chunk: &[&(&'a RequestContext, &'a Metric)],
    created_at: &str,
    row: &mut Vec<Field<'a>>,
) -> rusqlite::Result<()> {
    let mut statement = connection.prepare_cached(sql)?;
    let mut parameter = 0;
    for &&(context, metric) in chunk {
        table.row_of(context, metric, row);
        for value in row.iter() {
            parameter += 1;
            statement.raw_bind_parameter(parameter, value)?;
        }
        parameter += 1;
        statement.raw_bind_parameter(parameter, created_at)?;
    }
    statement.raw_execute()?;
    Ok(())
}

/// `INSERT OR FAIL INTO t (a, b, created_at) VALUES (?, ?, ?), (?, ?, ?)`: `rows` rows. `OR
/// FAIL` because a row that breaks a constraint fails the whole transaction anyway, and the
/// default (`ABORT`) would make SQLite keep the statement journal to undo just the statement.
fn insert_sql(table: &Table, rows: usize) -> String {
    let row = format!("({})", vec!["?"; table.columns.len() + 1].join(", "));
    format!(
        "INSERT OR FAIL INTO {} ({}, created_at) VALUES {}",
        table.name,
        table.column_list(),
        vec![row; rows].join(", ")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn insert_sql_has_a_parameter_per_column_of_each_row() {
        let auth = TABLES[1];
        let sql = insert_sql(auth, 3);
        assert!(sql.starts_with("INSERT OR FAIL INTO auth_metrics (request_id, timestamp"));
        assert_eq!(sql.matches('?').count(), 3 * (auth.columns.len() + 1));
        assert_eq!(sql.matches("), (").count(), 2);
    }
}
