use std::path::PathBuf;
use std::time::Duration;

use mcp_metrics_plugin::bounds::{DAY, MILLISECOND, out_of_range};
use mcp_metrics_plugin::{
    BoxError, BuildContext, ComponentConfig, Exporter, ExporterConfig, ExporterRegistration,
    async_trait, inventory,
};
use mcp_metrics_store::{Database, Location, MAX_RETENTION_DAYS};
use serde::{Deserialize, Serialize};

use super::DatabaseExporter;

/// The `database` exporter: the database a `DATABASE_URL` or a SQLite path names.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DatabaseConfig {
    /// The id of a `database` extension, or `postgres://user:pass@host/db` (PostgreSQL, shared
    /// by replicas), `sqlite:///path` or a plain path (a SQLite file, created with its folder
    /// when missing).
    pub database: String,
    /// Rows older than this many days are deleted (METRICS_RETENTION_DAYS), at most 36500
    /// (100 years); 0 keeps them all.
    /// A table's period set through the admin API takes precedence.
    pub retention_days: u32,
    /// How often old rows are looked for, from 1ms to 30d; a pass that failed is tried again
    /// after as long, and reported in `/health` until one succeeds. On PostgreSQL one replica at
    /// a time does it.
    #[serde(with = "humantime_serde")]
    pub retention_interval: Duration,
}

impl Default for DatabaseConfig {
    fn default() -> Self {
        let sqlite = SqliteConfig::default();
        DatabaseConfig {
            database: sqlite.path.display().to_string(),
            retention_days: sqlite.retention_days,
            retention_interval: sqlite.retention_interval,
        }
    }
}

impl ComponentConfig for DatabaseConfig {
    fn validate(&self) -> Vec<String> {
        let mut problems = retention_problems(self.retention_days, self.retention_interval);
        if let Err(problem) = Location::parse(&self.database) {
            problems.insert(0, format!("database: {problem}"));
        }
        problems
    }
}

#[async_trait]
impl ExporterConfig for DatabaseConfig {
    async fn build(&self, cx: &BuildContext) -> Result<Box<dyn Exporter>, BoxError> {
        let database = Database::named(&self.database, cx).await?;
        build(database, self.retention_days, self.retention_interval, cx).await
    }
}

/// The `sqlite` exporter: the `database` exporter named by a file path, as older configs have it.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SqliteConfig {
    /// The database file; created with its folder when missing.
    pub path: PathBuf,
    /// Rows older than this many days are deleted (METRICS_RETENTION_DAYS), at most 36500
    /// (100 years); 0 keeps them all.
    /// A table's period set through the admin API takes precedence.
    pub retention_days: u32,
    /// How often old rows are looked for, from 1ms to 30d; a pass that failed is tried again
    /// after as long, and reported in `/health` until one succeeds.
    #[serde(with = "humantime_serde")]
    pub retention_interval: Duration,
}

impl Default for SqliteConfig {
    fn default() -> Self {
        SqliteConfig {
            path: PathBuf::from("./data/metrics.db"),
            retention_days: 90,
            retention_interval: Duration::from_secs(3600),
        }
    }
}

impl ComponentConfig for SqliteConfig {
    fn validate(&self) -> Vec<String> {
        let mut problems = retention_problems(self.retention_days, self.retention_interval);
        if self.path.as_os_str().is_empty() {
            problems.insert(0, "path: must name a file".into());
        }
        problems
    }
}

fn retention_problems(retention_days: u32, retention_interval: Duration) -> Vec<String> {
    let mut problems = Vec::new();
    if retention_days > MAX_RETENTION_DAYS {
        problems.push(format!(
            "retention_days: {retention_days} is more than {MAX_RETENTION_DAYS} (100 years); 0 keeps rows for ever"
        ));
    }
    // Zero panics the retention timer; passes a month apart already keep rows past their time.
    problems.extend(out_of_range(
        "retention_interval",
        retention_interval,
        MILLISECOND..=30 * DAY,
    ));
    problems
}

#[async_trait]
impl ExporterConfig for SqliteConfig {
    async fn build(&self, cx: &BuildContext) -> Result<Box<dyn Exporter>, BoxError> {
        let location = Location::Sqlite(self.path.clone());
        let database = Database::open_at(&location).await?;
        build(database, self.retention_days, self.retention_interval, cx).await
    }
}

async fn build(
    database: Database,
    retention_days: u32,
    retention_interval: Duration,
    cx: &BuildContext,
) -> Result<Box<dyn Exporter>, BoxError> {
    database.seed_retention(retention_days).await?;
    let stop = cx.shutdown.child_token();
    let task = tokio::spawn(super::retention::run(
        database.clone(),
        retention_interval,
        format!("exporters.{}", cx.id),
        cx.telemetry.clone(),
        stop.clone(),
    ));
    Ok(Box::new(DatabaseExporter {
        database,
        retention: tokio::sync::Mutex::new(Some((stop, task))),
    }))
}

inventory::submit!(ExporterRegistration::of::<DatabaseConfig>(
    "database",
    "stores every metric in the database DATABASE_URL names (PostgreSQL, or a SQLite file): \
     `metrics` plus the typed tables"
));

inventory::submit!(ExporterRegistration::of::<SqliteConfig>(
    "sqlite",
    "stores every metric in a SQLite file: `metrics` plus the typed tables"
));
