use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use mcp_metrics_plugin::{
    BoxError, BuildContext, ComponentConfig, Consumer, Processor, ProcessorConfig,
    ProcessorRegistration, async_trait, inventory,
};
use mcp_metrics_store::{KeyCache, Store};
use serde::{Deserialize, Serialize};

use super::AuthProcessor;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    /// The database whose `api_keys` table holds the keys.
    pub database: PathBuf,
    /// How often the keys are re-read: a deactivated key is refused within this time.
    #[serde(with = "humantime_serde")]
    pub refresh_interval: Duration,
}

impl Default for AuthConfig {
    fn default() -> Self {
        AuthConfig {
            database: PathBuf::from("./data/metrics.db"),
            refresh_interval: Duration::from_secs(2),
        }
    }
}

impl ComponentConfig for AuthConfig {
    fn validate(&self) -> Vec<String> {
        if self.refresh_interval.is_zero() {
            vec!["refresh_interval: must be more than zero".into()]
        } else {
            vec![]
        }
    }
}

#[async_trait]
impl ProcessorConfig for AuthConfig {
    async fn build(
        &self,
        cx: &BuildContext,
        next: Arc<dyn Consumer>,
    ) -> Result<Arc<dyn Processor>, BoxError> {
        let store = Store::open(&self.database).await?;
        let keys = KeyCache::start(store, self.refresh_interval, cx.shutdown.clone()).await?;
        Ok(Arc::new(AuthProcessor { keys, next }))
    }
}

inventory::submit!(ProcessorRegistration::of::<AuthConfig>(
    "auth",
    "admits requests with an active API key (X-API-Key) from the api_keys table"
));
