//! `auth`: admits a request only with an active API key (`X-API-Key`), checked by its SHA-256
//! digest against the `api_keys` table through an in-memory cache.

mod config;

pub use config::{AuthConfig, register_env_keys};

use std::sync::Arc;
use std::time::Duration;

use mcp_metrics_plugin::{
    Batch, Consumer, Outcome, Processor, Reason, Refusal, RequestHead, async_trait,
};
use mcp_metrics_store::KeyCache;

pub struct AuthProcessor {
    keys: Arc<KeyCache>,
    next: Arc<dyn Consumer>,
}

#[async_trait]
impl Consumer for AuthProcessor {
    /// Its work was done on the request's head.
    async fn consume(&self, batch: Batch) -> Result<Outcome, Refusal> {
        self.next.consume(batch).await
    }
}

#[async_trait]
impl Processor for AuthProcessor {
    async fn admit(&self, head: &mut RequestHead) -> Result<(), Refusal> {
        let Some(credential) = head.credential.as_deref() else {
            return Err(Refusal::new(
                Reason::MissingCredential,
                "API key is required in the X-API-Key header",
            ));
        };
        let found = self.keys.lookup(credential).await.map_err(|error| {
            tracing::error!(%error, "cannot check API key");
            Refusal::busy("cannot check the API key right now", Duration::from_secs(1))
        })?;
        match found {
            Some(key) => {
                head.key = Some(key);
                Ok(())
            }
            None => Err(Refusal::new(
                Reason::InvalidCredential,
                "API key is invalid or expired",
            )),
        }
    }

    async fn shutdown(&self) {
        if let Err(error) = self.keys.record_use().await {
            tracing::warn!(%error, "cannot record API key use on shutdown");
        }
    }
}
