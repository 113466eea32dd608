//! Writing metric rows: every metric into `metrics`, the typed ones also into their own table,
//! with the contract's column mapping. One transaction per batch, many rows per INSERT.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

use mcp_metrics_plugin::{Batch, Metric, MetricType, RequestContext};
use sqlx::error::BoxDynError;
use sqlx::sqlite::SqliteArguments;
use sqlx::{Arguments, AssertSqlSafe, SqliteConnection};

use crate::columns::{authenticated_service, boolean, integer, json_text, real, text};
use crate::idempotency::{keyed_parts, unseen};
use crate::{Store, timestamp_text};

/// Rows per INSERT statement: large enough to amortise the statement and the round trip to the
/// driver's thread, small enough to keep the bound parameters (12 per row at most, 6000) far
/// below SQLite's limit (32766).
const ROWS_PER_STATEMENT: usize = 500;

/// Up to this many rows, a table's rows are written by one statement of exactly their number.
const EXACT_SHAPES: usize = 32;

/// Statements a connection keeps prepared: for each metrics table, one per exact size, one per
/// power of two above them and the full one (36); and room for what the pool's other connections
/// prepare (keys, retention, statistics).
pub(crate) const STATEMENT_SHAPES: usize = crate::METRIC_TABLES.len()
    * (EXACT_SHAPES + (ROWS_PER_STATEMENT.ilog2() - EXACT_SHAPES.ilog2()) as usize + 1)
    + 64;

/// One metric ready to be written. Its text columns are shared (`Arc<str>`): binding one costs
/// a reference count, where binding a `String` costs a copy and two allocations, per row and
/// column.
struct Row<'a> {
    request: Arc<RequestColumns>,
    metric: &'a Metric,
    metric_type: Arc<str>,
    timestamp: Arc<str>,
}

/// A request's columns, shared by its rows.
struct RequestColumns {
    request_id: Arc<str>,
    service: Arc<str>,
    version: Option<Arc<str>>,
    instance_id: Option<Arc<str>>,
}

impl RequestColumns {
    fn of(context: &RequestContext) -> Arc<RequestColumns> {
        Arc::new(RequestColumns {
            request_id: context.request_id.as_str().into(),
            service: context.service.as_str().into(),
            version: context.version.as_deref().map(Arc::from),
            instance_id: context.instance_id.as_deref().map(Arc::from),
        })
    }
}

struct Table {
    name: &'static str,
    columns: &'static [&'static str],
    bind: fn(&mut SqliteArguments, &Row<'_>) -> Result<(), BoxDynError>,
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
        let (request, metric) = (&row.request, row.metric);
        args.add(request.request_id.clone())?;
        args.add(request.service.clone())?;
        args.add(request.version.clone())?;
        args.add(request.instance_id.clone())?;
        args.add(row.metric_type.clone())?;
        args.add(row.timestamp.clone())?;
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
fn bind_common(args: &mut SqliteArguments, row: &Row<'_>) -> Result<(), BoxDynError> {
    args.add(row.request.request_id.clone())?;
    args.add(row.timestamp.clone())?;
    args.add(row.request.service.clone())?;
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
    let metric_types = MetricType::ALL.map(|t| Arc::<str>::from(t.as_str()));
    let mut request: Option<(&RequestContext, Arc<RequestColumns>)> = None;
    let rows: Vec<Row> = unseen(batch, &seen)
        .map(|(context, metric)| {
            let columns = match &request {
                Some((of, columns)) if std::ptr::eq(*of, context) => columns.clone(),
                _ => request
                    .insert((context, RequestColumns::of(context)))
                    .1
                    .clone(),
            };
            Row {
                request: columns,
                metric,
                metric_type: metric_types[metric.metric_type.index()].clone(),
                timestamp: timestamp_text(&metric.timestamp).into(),
            }
        })
        .collect();
    insert(&mut tx, &METRICS, rows.iter()).await?;
    for table in [&AUTH_METRICS, &DISCOVERY_METRICS, &TOOL_METRICS] {
        let typed = rows.iter().filter(|row| {
            typed_table(row.metric.metric_type).is_some_and(|t| std::ptr::eq(t, table))
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
        let (chunk, tail) = rest.split_at(statement_rows(rest.len()));
        rest = tail;
        let mut args = SqliteArguments::default();
        args.reserve(chunk.len() * table.columns.len(), 0);
        for row in chunk {
            (table.bind)(&mut args, row).map_err(sqlx::Error::Encode)?;
        }
        sqlx::query_with(AssertSqlSafe(insert_sql(table, chunk.len())), args)
            .execute(&mut *conn)
            .await?;
    }
    Ok(())
}

/// How many of `remaining` rows the next statement writes: full statements, then the rest in
/// powers of two down to [`EXACT_SHAPES`] rows, which go in one statement of their own size. So
/// a table has few statement shapes, which the driver's cache keeps prepared, and a small batch
/// (durable mode's group commits) costs one round trip to the driver's thread per table.
fn statement_rows(remaining: usize) -> usize {
    match remaining {
        n if n >= ROWS_PER_STATEMENT => ROWS_PER_STATEMENT,
        n if n <= EXACT_SHAPES => n,
        n => 1 << n.ilog2(),
    }
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
    fn statements_write_every_row_in_few_shapes() {
        let mut shapes = HashSet::new();
        for rows in 0..=2 * ROWS_PER_STATEMENT + 1 {
            let (mut left, mut statements) = (rows, 0);
            while left > 0 {
                let size = statement_rows(left);
                shapes.insert(size);
                left -= size;
                statements += 1;
            }
            if rows <= EXACT_SHAPES {
                assert!(statements <= 1, "{rows} rows took {statements} statements");
            }
        }
        assert!(shapes.len() * crate::METRIC_TABLES.len() + 64 <= STATEMENT_SHAPES);
    }

    #[test]
    fn insert_sql_has_one_tuple_per_row() {
        let sql = insert_sql(&AUTH_METRICS, 2);
        assert!(sql.starts_with("INSERT INTO auth_metrics (request_id, timestamp"));
        assert_eq!(sql.matches('?').count(), 20);
    }
}
