//! The database of mcp-metrics: the contract's schema kept current by migrations, the API keys,
//! and the metric rows, in a SQLite file ([`Store`]) or in PostgreSQL ([`PgStore`]), either
//! behind [`Database`]. One store per database per process, shared by every component that names
//! it, so it is migrated once and writes share one pool.

mod checkpointer;
mod columns;
mod database;
mod idempotency;
mod key_cache;
mod keys;
mod location;
mod migrate;
mod postgres;
mod retention;
mod rows;
mod shared;
mod stats;
mod wal_vfs;
mod write_connection;
mod write_error;
mod writer;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use chrono::{DateTime, Datelike, Timelike, Utc};
use shared::OpenOnce;
use sqlx::SqlitePool;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};

pub use database::{Database, DatabaseExtension, is_bare_word};
pub use idempotency::IDEMPOTENCY_WINDOW;
pub use key_cache::KeyCache;
pub use keys::{EnvKeyChange, KeyRecord, generate_key, hash_key, key_digest};
pub use location::Location;
pub use migrate::migrate;
pub use postgres::{KEYS_CHANGED, Lease, PgStore, PgWrite};
pub use retention::{
    MAX_RETENTION_DAYS, RetentionPolicy, RetentionRun, metric_table, retention_cutoff,
};
pub use stats::{DatabaseSize, TableStats};
pub use write_error::WriteError;

/// The schema migrations, embedded at build time.
static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/sqlite");

/// An open, migrated SQLite file.
#[derive(Debug)]
pub struct Store {
    pool: SqlitePool,
    /// The one connection metric rows are written through, on a thread of its own: SQLite takes
    /// one writer at a time anyway, and a connection of its own keeps its page cache warm.
    writer: writer::Writer,
    path: PathBuf,
}

/// Stores open in this process, by canonical path.
static OPEN: OpenOnce<PathBuf, Store> = OpenOnce::new();

impl Store {
    /// Opens (creating the file and its folder if needed) and migrates the database at `path`, or
    /// returns the store this process already has open for it.
    pub async fn open(path: impl AsRef<Path>) -> anyhow::Result<Arc<Store>> {
        let path = path.as_ref();
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            private_folder(parent)
                .with_context(|| format!("cannot create folder {}", parent.display()))?;
        }
        private_file(path).with_context(|| format!("cannot create database {}", path.display()))?;
        // The file exists now, so it has a canonical path: one name for every way of writing it.
        let canonical = std::fs::canonicalize(path)?;
        OPEN.get_or_make(canonical.clone(), || async {
            let options = SqliteConnectOptions::from_str("sqlite:")?
                .filename(&canonical)
                .create_if_missing(true)
                .journal_mode(SqliteJournalMode::Wal)
                .synchronous(SqliteSynchronous::Normal)
                .busy_timeout(Duration::from_secs(5))
                .pragma("temp_store", "memory")
                .pragma("cache_size", "-2000")
                // Checkpoints are the checkpoint thread's: at SQLite's default (1,000 pages) a
                // key's `last_used_at` or a retention sweep committed here would copy the whole
                // log on a driver thread, with two fsyncs, whenever the log had grown past it.
                .pragma(
                    "wal_autocheckpoint",
                    checkpointer::BACKSTOP_PAGES.to_string(),
                );
            let pool = SqlitePoolOptions::new()
                .max_connections(4)
                .min_connections(1)
                .connect_with(options)
                .await
                .with_context(|| format!("cannot open database {}", path.display()))?;
            MIGRATOR
                .run(&pool)
                .await
                .with_context(|| format!("cannot migrate database {}", path.display()))?;
            Ok(Arc::new(Store {
                pool,
                writer: writer::Writer::start(canonical.clone())
                    .context("cannot start the database writer's thread")?,
                path: canonical.clone(),
            }))
        })
        .await
    }

    pub fn pool(&self) -> &SqlitePool {
        &self.pool
    }

    /// Closes every connection, the writer's included.
    pub async fn close(&self) {
        self.writer.close().await;
        self.pool.close().await;
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Row counts of every metrics table, for tests and the admin endpoints.
    pub async fn row_counts(&self) -> anyhow::Result<HashMap<&'static str, i64>> {
        let mut counts = HashMap::new();
        for table in METRIC_TABLES {
            let sql = sqlx::AssertSqlSafe(format!("SELECT COUNT(*) FROM {table}"));
            let count: i64 = sqlx::query_scalar(sql).fetch_one(&self.pool).await?;
            counts.insert(table, count);
        }
        Ok(counts)
    }
}

/// Every table that holds metric rows.
pub const METRIC_TABLES: [&str; 4] = [
    "metrics",
    "auth_metrics",
    "discovery_metrics",
    "tool_metrics",
];

/// How timestamps are stored: UTC, fixed width, so text order is time order; the text the format
/// `%Y-%m-%dT%H:%M:%S%.6fZ` writes (`2026-12-01T13:45:07.123456Z`).
pub fn timestamp_text(at: &DateTime<Utc>) -> String {
    // Digit by digit: the writer formats the timestamp of every row (a typed metric's twice), and
    // chrono's RFC 3339 writer took about 715 instructions a call, this 370 (callgrind). Years of
    // other than four digits and leap seconds, which chrono writes its own way, are left to it.
    let at = at.naive_utc();
    let (date, time) = (at.date(), at.time());
    let nanos = time.nanosecond();
    if !(0..=9999).contains(&date.year()) || nanos >= 1_000_000_000 {
        return at
            .and_utc()
            .to_rfc3339_opts(chrono::SecondsFormat::Micros, true);
    }
    let mut text = *b"0000-00-00T00:00:00.000000Z";
    let fields = [
        (0, 4, date.year() as u32),
        (5, 2, date.month()),
        (8, 2, date.day()),
        (11, 2, time.hour()),
        (14, 2, time.minute()),
        (17, 2, time.second()),
        (20, 6, nanos / 1_000),
    ];
    for (start, width, mut value) in fields {
        for digit in text[start..start + width].iter_mut().rev() {
            *digit = b'0' + (value % 10) as u8;
            value /= 10;
        }
    }
    String::from_utf8(text.to_vec()).expect("ASCII digits and separators")
}

/// Creates a missing folder (and its missing parents) readable by the owner alone (`0700`): the
/// database holds key digests. A folder that exists is left as it is.
fn private_folder(folder: &Path) -> std::io::Result<()> {
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
    builder.create(folder)
}

/// Creates a missing database file readable by the owner alone (`0600`); SQLite gives its `-wal`
/// and `-shm` files the database file's mode. A file that exists is left as it is.
fn private_file(path: &Path) -> std::io::Result<()> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    match options.open(path) {
        Ok(_) => Ok(()),
        Err(error) if error.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(error) => Err(error),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::{NaiveDate, TimeZone};

    /// A pool connection that checkpointed at SQLite's default would copy the log on a driver
    /// thread whenever it commits (a key's `last_used_at`) after the log passed 1,000 pages.
    #[tokio::test]
    async fn only_the_backstop_checkpoints_from_the_pool() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path().join("metrics.db")).await.unwrap();
        let mut held = Vec::new();
        for _ in 0..store.pool().options().get_max_connections() {
            let mut connection = store.pool().acquire().await.unwrap();
            let pages: i64 = sqlx::query_scalar("PRAGMA wal_autocheckpoint")
                .fetch_one(&mut *connection)
                .await
                .unwrap();
            assert_eq!(pages, i64::from(checkpointer::BACKSTOP_PAGES));
            held.push(connection);
        }
        drop(held);
        store.close().await;
    }

    /// The text chrono's own RFC 3339 writer gives, which the service wrote before.
    fn chrono_text(at: &DateTime<Utc>) -> String {
        at.to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
    }

    #[test]
    fn timestamps_are_written_as_chrono_writes_them() {
        let day = |y, m, d| NaiveDate::from_ymd_opt(y, m, d).unwrap();
        let mut moments = vec![
            Utc.timestamp_opt(0, 0).unwrap(),
            day(2026, 12, 1)
                .and_hms_micro_opt(13, 45, 7, 123_456)
                .unwrap()
                .and_utc(),
            day(2024, 2, 29)
                .and_hms_nano_opt(23, 59, 59, 999_999_999)
                .unwrap()
                .and_utc(),
            day(9999, 12, 31)
                .and_hms_micro_opt(23, 59, 59, 999_999)
                .unwrap()
                .and_utc(),
            day(0, 1, 1).and_hms_opt(0, 0, 0).unwrap().and_utc(),
            // Left to chrono: a leap second, and years of other than four digits.
            day(2016, 12, 31)
                .and_hms_nano_opt(23, 59, 59, 1_500_000_000)
                .unwrap()
                .and_utc(),
            day(10_000, 1, 1).and_hms_opt(0, 0, 0).unwrap().and_utc(),
            day(-1, 6, 15).and_hms_opt(12, 0, 0).unwrap().and_utc(),
        ];
        // A spread of moments over the four-digit years, every field and digit moving.
        let mut seconds: i64 = -62_000_000_000;
        while seconds < 253_000_000_000 {
            let nanos = (seconds.rem_euclid(1_000_000_007) % 1_000_000_000) as u32;
            moments.push(Utc.timestamp_opt(seconds, nanos).unwrap());
            seconds += 77_777_777;
        }
        for at in &moments {
            assert_eq!(timestamp_text(at), chrono_text(at), "{at:?}");
        }
        assert_eq!(
            timestamp_text(&moments[1]),
            "2026-12-01T13:45:07.123456Z",
            "the stored form"
        );
    }
}
