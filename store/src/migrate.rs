//! `mcp-metrics migrate`: copies a SQLite file's rows into PostgreSQL, for a deployment moving
//! from one box to replicas. Keys keep their digests (a key already in PostgreSQL is left as it
//! is), retention policies set by an admin carry over, and every metric row is copied with new
//! ids, so PostgreSQL may already be taking metrics from replicas meanwhile. Run it once: a
//! second run copies the metric rows again.

use sqlx::sqlite::SqliteRow;
use sqlx::{AssertSqlSafe, Postgres, Row};

use crate::{Database, PgStore, Store};

/// Rows read and written per statement.
const CHUNK: i64 = 5_000;

/// How a column is read from SQLite and written to PostgreSQL.
#[derive(Clone, Copy)]
enum Kind {
    Text,
    /// Text in SQLite (any form PostgreSQL reads, zone-less ones as UTC).
    Time,
    /// JSON text in SQLite.
    Json,
    Int,
    /// `INTEGER` in PostgreSQL, 64-bit in SQLite.
    Int4,
    Real,
    Bool,
}

struct Table {
    name: &'static str,
    columns: &'static [(&'static str, Kind)],
    /// What PostgreSQL does with a row it already has.
    on_conflict: &'static str,
}

use Kind::*;

const TABLES: [Table; 6] = [
    Table {
        name: "api_keys",
        columns: &[
            ("key_hash", Text),
            ("service_name", Text),
            ("created_at", Time),
            ("last_used_at", Time),
            ("is_active", Bool),
            ("rate_limit", Int4),
            ("is_admin", Bool),
            ("source", Text),
        ],
        on_conflict: "ON CONFLICT (key_hash) DO NOTHING",
    },
    Table {
        name: "retention_policies",
        columns: &[
            ("table_name", Text),
            ("retention_days", Int4),
            ("is_active", Bool),
            ("set_by", Text),
            ("updated_at", Time),
        ],
        // An operator's choice in the file wins over a replica's config default.
        on_conflict: "ON CONFLICT (table_name) DO UPDATE SET retention_days = excluded.retention_days, \
             is_active = excluded.is_active, set_by = excluded.set_by, updated_at = excluded.updated_at \
             WHERE excluded.set_by = 'admin'",
    },
    Table {
        name: "metrics",
        columns: &[
            ("request_id", Text),
            ("service", Text),
            ("service_version", Text),
            ("instance_id", Text),
            ("metric_type", Text),
            ("timestamp", Time),
            ("value", Real),
            ("duration_ms", Real),
            ("dimensions", Json),
            ("metadata", Json),
            ("created_at", Time),
        ],
        on_conflict: "",
    },
    Table {
        name: "auth_metrics",
        columns: &[
            ("request_id", Text),
            ("timestamp", Time),
            ("service", Text),
            ("duration_ms", Real),
            ("success", Bool),
            ("method", Text),
            ("server", Text),
            ("user_hash", Text),
            ("error_code", Text),
            ("authenticated_service", Text),
            ("created_at", Time),
        ],
        on_conflict: "",
    },
    Table {
        name: "discovery_metrics",
        columns: &[
            ("request_id", Text),
            ("timestamp", Time),
            ("service", Text),
            ("duration_ms", Real),
            ("query", Text),
            ("results_count", Int),
            ("top_k_services", Int),
            ("top_n_tools", Int),
            ("embedding_time_ms", Real),
            ("faiss_search_time_ms", Real),
            ("authenticated_service", Text),
            ("created_at", Time),
        ],
        on_conflict: "",
    },
    Table {
        name: "tool_metrics",
        columns: &[
            ("request_id", Text),
            ("timestamp", Time),
            ("service", Text),
            ("duration_ms", Real),
            ("tool_name", Text),
            ("server_path", Text),
            ("server_name", Text),
            ("success", Bool),
            ("error_code", Text),
            ("input_size_bytes", Int),
            ("output_size_bytes", Int),
            ("authenticated_service", Text),
            ("created_at", Time),
        ],
        on_conflict: "",
    },
];

/// Copies every table of `from` (a SQLite file) into `to` (PostgreSQL); returns the rows read
/// per table.
pub async fn migrate(from: &Database, to: &Database) -> anyhow::Result<Vec<(&'static str, u64)>> {
    let (Database::Sqlite(from), Database::Postgres(to)) = (from, to) else {
        anyhow::bail!("migrate reads a SQLite file (--from) and writes PostgreSQL (--to)");
    };
    let mut copied = Vec::new();
    for table in &TABLES {
        copied.push((table.name, copy_table(from, to, table).await?));
    }
    Ok(copied)
}

async fn copy_table(from: &Store, to: &PgStore, table: &Table) -> anyhow::Result<u64> {
    let names: Vec<&str> = table.columns.iter().map(|(name, _)| *name).collect();
    let read = format!(
        "SELECT rowid, {} FROM {} WHERE rowid > ? ORDER BY rowid LIMIT {CHUNK}",
        names.join(", "),
        table.name
    );
    let arrays: Vec<String> = table
        .columns
        .iter()
        .enumerate()
        .map(|(at, (_, kind))| {
            let n = at + 1;
            match kind {
                Text => format!("${n}::text[]"),
                Time => format!("${n}::text[]::timestamptz[]"),
                Json => format!("${n}::text[]::jsonb[]"),
                Int => format!("${n}::int8[]"),
                Int4 => format!("${n}::int8[]::int4[]"),
                Real => format!("${n}::float8[]"),
                Bool => format!("${n}::bool[]"),
            }
        })
        .collect();
    let write = format!(
        "INSERT INTO {} ({}) SELECT * FROM UNNEST({}) {}",
        table.name,
        names.join(", "),
        arrays.join(", "),
        table.on_conflict
    );
    let mut after = 0i64;
    let mut total = 0u64;
    loop {
        let rows = sqlx::query(AssertSqlSafe(read.as_str()))
            .bind(after)
            .fetch_all(from.pool())
            .await?;
        let Some(last) = rows.last() else {
            return Ok(total);
        };
        after = last.try_get_unchecked(0)?;
        let mut tx = to.pool().begin().await?;
        // Zone-less timestamps (the Python service's) are UTC.
        sqlx::query("SET LOCAL TIME ZONE 'UTC'")
            .execute(&mut *tx)
            .await?;
        let mut insert = sqlx::query::<Postgres>(AssertSqlSafe(write.as_str()));
        for (at, (_, kind)) in table.columns.iter().enumerate() {
            insert = bind_column(insert, &rows, at + 1, *kind)?;
        }
        insert.execute(&mut *tx).await.map_err(|error| {
            anyhow::anyhow!(
                "cannot copy {} rows after rowid {after}: {error}",
                table.name
            )
        })?;
        tx.commit().await?;
        total += rows.len() as u64;
    }
}

type PgQuery<'q> = sqlx::query::Query<'q, Postgres, sqlx::postgres::PgArguments>;

/// Binds column `at` of every row as one array.
fn bind_column<'q>(
    query: PgQuery<'q>,
    rows: &[SqliteRow],
    at: usize,
    kind: Kind,
) -> Result<PgQuery<'q>, sqlx::Error> {
    fn values<T: for<'r> sqlx::Decode<'r, sqlx::Sqlite> + sqlx::Type<sqlx::Sqlite>>(
        rows: &[SqliteRow],
        at: usize,
    ) -> Result<Vec<Option<T>>, sqlx::Error> {
        rows.iter().map(|row| row.try_get_unchecked(at)).collect()
    }
    Ok(match kind {
        Text | Time | Json => query.bind(values::<String>(rows, at)?),
        Int | Int4 => query.bind(values::<i64>(rows, at)?),
        Real => query.bind(values::<f64>(rows, at)?),
        Bool => query.bind(values::<bool>(rows, at)?),
    })
}
