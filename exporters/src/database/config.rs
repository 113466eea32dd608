use std::path::PathBuf;
use std::time::Duration;

use mcp_metrics_plugin::{
    BoxError, BuildContext, ComponentConfig, Exporter, ExporterConfig, ExporterRegistration,
    async_trait, inventory,
};
use mcp_metrics_store::{MAX_RETENTION_DAYS, Store};
use serde::{Deserialize, Serialize};

use super::SqliteExporter;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SqliteConfig {
    /// The database file; created with its folder when missing.
    pub path: PathBuf,
    /// Rows older than this many days are deleted (METRICS_RETENTION_DAYS), at most 36500
    /// (100 years); 0 keeps them all.
    /// A table's period set through the admin API takes precedence.
    pub retention_days: u32,
    /// How often old rows are looked for; a pass that failed is tried again after as long, and
    /// reported in `/health` until one succeeds.
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
        let mut problems = Vec::new();
        if self.path.as_os_str().is_empty() {
            problems.push("path: must name a file".into());
        }
        if self.retention_days > MAX_RETENTION_DAYS {
            problems.push(format!(
                "retention_days: {} is more than {MAX_RETENTION_DAYS} (100 years); 0 keeps rows for ever",
                self.retention_days
            ));
        }
        if self.retention_interval.is_zero() {
            problems.push("retention_interval: must be more than zero".into());
        }
        problems
    }
}

#[async_trait]
impl ExporterConfig for SqliteConfig {
    async fn build(&self, cx: &BuildContext) -> Result<Box<dyn Exporter>, BoxError> {
        let store = Store::open(&self.path).await?;
        store.seed_retention(self.retention_days).await?;
        let stop = cx.shutdown.child_token();
        let task = tokio::spawn(super::retention::run(
            store.clone(),
            self.retention_interval,
            format!("exporters.{}", cx.id),
            cx.telemetry.clone(),
            stop.clone(),
        ));
        Ok(Box::new(SqliteExporter {
            store,
            retention: tokio::sync::Mutex::new(Some((stop, task))),
        }))
    }
}

inventory::submit!(ExporterRegistration::of::<SqliteConfig>(
    "sqlite",
    "stores every metric in a SQLite file: `metrics` plus the typed tables"
));
