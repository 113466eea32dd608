//! Writing metric rows: every metric into `metrics`, the typed ones also into their own table,
//! with the contract's column mapping. One transaction per batch, run on the writer's thread
//! (see [`crate::writer`]).

use std::borrow::Cow;
use std::collections::HashSet;
use std::sync::Arc;

use mcp_metrics_plugin::{Metric, Request, RequestContext};
use rusqlite::{Connection, TransactionBehavior};

use crate::columns::{Field, TABLES, Table};
use crate::idempotency::{keyed_parts, unseen};
use crate::timestamp_text;
use crate::write_connection::{Inserts, WriteConnection};

/// Every row into `metrics`, the typed ones also into their table, in one transaction, except
/// the parts of requests the database already has under their idempotency key.
pub(crate) fn write_rows(
    connection: &mut WriteConnection,
    requests: &[Arc<Request>],
) -> rusqlite::Result<()> {
    let (connection, inserts) = connection.parts();
    // IMMEDIATE: take the write lock (or wait for it) before reading anything, so a transaction
    // never has to upgrade a read lock another writer holds up.
    let tx = connection.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let seen = record_keyed_parts(&tx, requests)?;
    let metrics: Vec<(&RequestContext, &Metric)> = unseen(requests, &seen).collect();
    let created_at = chrono::Utc::now().format(CREATED_AT).to_string();
    let mut values = Vec::new();
    for table in TABLES {
        insert(inserts, table, &metrics, &created_at, &mut values)?;
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

/// `created_at` as the schema's default, `datetime('now')`, writes it. The writer gives it
/// instead: a function in a statement of many rows makes SQLite keep a statement journal, a copy
/// of every page the statement changes, in case the function fails halfway: 7 % of the writer's
/// samples in a profile.
const CREATED_AT: &str = "%Y-%m-%d %H:%M:%S";

/// The metrics `table` takes, up to [`ROWS_PER_STATEMENT`] rows per execution of a prepared
/// statement. `values` is scratch: a statement's values, which it binds without copying.
fn insert<'a>(
    inserts: &mut Inserts,
    table: &Table,
    metrics: &[(&'a RequestContext, &'a Metric)],
    created_at: &'a str,
    values: &mut Vec<Field<'a>>,
) -> rusqlite::Result<()> {
    let taken: Vec<_> = metrics.iter().filter(|(_, m)| table.takes(m)).collect();
    for chunk in taken.chunks(ROWS_PER_STATEMENT) {
        values.clear();
        for &&(context, metric) in chunk {
            table.append_row(context, metric, values);
            values.push(Field::Text(Some(Cow::Borrowed(created_at))));
        }
        let key = (table.name, chunk.len());
        inserts.execute(key, || insert_sql(table, chunk.len()), values)?;
    }
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
