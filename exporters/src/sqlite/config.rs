use std::path::PathBuf;

use mcp_metrics_plugin::{
    BoxError, BuildContext, ComponentConfig, Exporter, ExporterConfig, ExporterRegistration,
    async_trait, inventory,
};
use mcp_metrics_store::Store;
use serde::{Deserialize, Serialize};

use super::SqliteExporter;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SqliteConfig {
    /// The database file; created with its folder when missing.
    pub path: PathBuf,
}

impl Default for SqliteConfig {
    fn default() -> Self {
        SqliteConfig {
            path: PathBuf::from("./data/metrics.db"),
        }
    }
}

impl ComponentConfig for SqliteConfig {
    fn validate(&self) -> Vec<String> {
        if self.path.as_os_str().is_empty() {
            vec!["path: must name a file".into()]
        } else {
            vec![]
        }
    }
}

#[async_trait]
impl ExporterConfig for SqliteConfig {
    async fn build(&self, _cx: &BuildContext) -> Result<Box<dyn Exporter>, BoxError> {
        let store = Store::open(&self.path).await?;
        Ok(Box::new(SqliteExporter { store }))
    }
}

inventory::submit!(ExporterRegistration::of::<SqliteConfig>(
    "sqlite",
    "stores every metric in a SQLite file: `metrics` plus the typed tables"
));
