use std::sync::Arc;
use std::time::Duration;

use mcp_metrics_plugin::bounds::{HOUR, MILLISECOND, out_of_range};
use mcp_metrics_plugin::{
    BoxError, BuildContext, ComponentConfig, Consumer, Processor, ProcessorConfig,
    ProcessorRegistration, async_trait, inventory,
};
use mcp_metrics_store::{Database, EnvKeyChange, KeyCache, Location};
use serde::{Deserialize, Serialize};

use super::AuthProcessor;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    /// The database whose `api_keys` table holds the keys: the id of a `database` extension, or
    /// a SQLite file path, `sqlite:///path` or `postgres://user:pass@host/db`.
    pub database: String,
    /// How often the keys are re-read, from 1ms to 1h: a deactivated key is refused within this
    /// time.
    #[serde(with = "humantime_serde")]
    pub refresh_interval: Duration,
    /// Every environment variable `<prefix><NAME>` is a key for service `<name>` (lower-cased,
    /// `_` becomes `-`), registered at start-up; empty for none.
    pub env_key_prefix: String,
}

impl Default for AuthConfig {
    fn default() -> Self {
        AuthConfig {
            database: "./data/metrics.db".into(),
            refresh_interval: Duration::from_secs(2),
            env_key_prefix: "METRICS_API_KEY_".into(),
        }
    }
}

impl ComponentConfig for AuthConfig {
    fn validate(&self) -> Vec<String> {
        let mut problems = Vec::new();
        if let Err(problem) = Location::parse(&self.database) {
            problems.push(format!("database: {problem}"));
        }
        // Zero panics the refreshing timer; a deactivated key is admitted for up to this long.
        problems.extend(out_of_range(
            "refresh_interval",
            self.refresh_interval,
            MILLISECOND..=HOUR,
        ));
        problems
    }
}

#[async_trait]
impl ProcessorConfig for AuthConfig {
    async fn build(
        &self,
        cx: &BuildContext,
        next: Arc<dyn Consumer>,
    ) -> Result<Arc<dyn Processor>, BoxError> {
        let database = Database::named(&self.database, cx).await?;
        if !self.env_key_prefix.is_empty() {
            let vars: Vec<_> = std::env::vars().collect();
            register_env_keys(&database, &self.env_key_prefix, vars.into_iter()).await?;
        }
        let keys = KeyCache::shared(database, self.refresh_interval).await?;
        Ok(Arc::new(AuthProcessor { keys, next }))
    }
}

/// Registers the deployment's `<prefix><NAME>=<key>` variables as keys of service `<name>`.
pub async fn register_env_keys(
    database: &Database,
    prefix: &str,
    vars: impl Iterator<Item = (String, String)>,
) -> Result<(), BoxError> {
    for (name, key) in vars {
        let Some(service) = name.strip_prefix(prefix).filter(|s| !s.is_empty()) else {
            continue;
        };
        if key.trim().is_empty() {
            tracing::warn!(variable = %name, "empty API key variable ignored");
            continue;
        }
        let service = service.to_lowercase().replace('_', "-");
        match database.register_env_key(&service, key.trim()).await? {
            EnvKeyChange::Revoked => tracing::warn!(
                %service,
                "the API key in {name} was revoked and stays revoked; set a new key in {name} \
                 or make one with `keys create`"
            ),
            EnvKeyChange::OtherService(owner) => tracing::warn!(
                %service,
                %owner,
                "the API key in {name} is already a key of service {owner:?} and stays one; \
                 give {name} a key of its own"
            ),
            change => tracing::info!(%service, ?change, "API key from {name}"),
        }
    }
    Ok(())
}

inventory::submit!(ProcessorRegistration::of::<AuthConfig>(
    "auth",
    "admits requests with an active API key (X-API-Key) from the api_keys table"
));
