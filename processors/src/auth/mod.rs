//! `auth`: admits a request only with an active API key (`X-API-Key`), checked by its SHA-256
//! digest against the `api_keys` table through an in-memory cache.

mod config;

pub use config::{AuthConfig, register_env_keys};

use std::sync::Arc;

use mcp_metrics_plugin::{Batch, Consumer, Outcome, Processor, Refusal, async_trait};
use mcp_metrics_store::KeyCache;

pub struct AuthProcessor {
    keys: Arc<KeyCache>,
    next: Arc<dyn Consumer>,
}

#[async_trait]
impl Consumer for AuthProcessor {
    async fn consume(&self, mut batch: Batch) -> Result<Outcome, Refusal> {
        for request in &mut batch.requests {
            let Some(key) = request.context.api_key.as_deref() else {
                return Err(Refusal::new(
                    401,
                    "missing_api_key",
                    "API key is required in the X-API-Key header",
                ));
            };
            let found = self.keys.lookup(key).await.map_err(|error| {
                tracing::error!(%error, "cannot check API key");
                Refusal::unavailable("cannot check the API key right now", 1)
            })?;
            let Some(info) = found else {
                return Err(Refusal::new(
                    401,
                    "invalid_api_key",
                    "API key is invalid or expired",
                ));
            };
            let context = Arc::make_mut(&mut request.context);
            context.key = Some(info);
            // The credential has done its job; exporters have no business seeing it.
            context.api_key = None;
        }
        self.next.consume(batch).await
    }
}

#[async_trait]
impl Processor for AuthProcessor {
    async fn shutdown(&self) {
        if let Err(error) = self.keys.record_use().await {
            tracing::warn!(%error, "cannot record API key use on shutdown");
        }
    }
}
