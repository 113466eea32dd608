//! `enrich`: adds configured attributes, the time of receipt, and who the API key says the caller
//! is, so a client cannot pass itself off as another service unnoticed.

mod config;

pub use config::{EnrichConfig, ServiceIdentity};

use std::sync::Arc;

use mcp_metrics_plugin::{Batch, Consumer, Outcome, Processor, Reason, Refusal, async_trait};
use serde_json::{Map, Value};

/// The `metadata` key where `record` puts the key's service; the typed tables' column and the
/// Prometheus label of the same name are filled from it.
pub const AUTHENTICATED_SERVICE: &str = "authenticated_service";

pub struct EnrichProcessor {
    config: EnrichConfig,
    dimensions: Map<String, Value>,
    metadata: Map<String, Value>,
    next: Arc<dyn Consumer>,
}

#[async_trait]
impl Consumer for EnrichProcessor {
    async fn consume(&self, mut batch: Batch) -> Result<Outcome, Refusal> {
        for request in &mut batch.requests {
            let request = Arc::make_mut(request);
            let authenticated = request.context.key.as_ref().map(|k| k.service_name.clone());
            let mut metadata = self.metadata.clone();
            if let Some(key) = &self.config.received_at_key {
                metadata.insert(
                    key.clone(),
                    Value::from(request.context.received_at.to_rfc3339()),
                );
            }
            if let Some(authenticated) = authenticated {
                match self.config.service_identity {
                    ServiceIdentity::Refuse => {
                        if request.context.service != authenticated {
                            return Err(Refusal::new(
                                Reason::ServiceMismatch,
                                format!(
                                    "this API key belongs to service {authenticated:?}, not {:?}",
                                    request.context.service
                                ),
                            ));
                        }
                    }
                    ServiceIdentity::Keep => {}
                    ServiceIdentity::Overwrite => {
                        if request.context.service != authenticated {
                            Arc::make_mut(&mut request.context).service = authenticated;
                        }
                    }
                    ServiceIdentity::Record => {
                        metadata.insert(AUTHENTICATED_SERVICE.into(), Value::from(authenticated));
                    }
                }
            }
            for metric in &mut request.metrics {
                // Only this processor says who the key is: a client's own claim is dropped.
                metric.metadata.remove(AUTHENTICATED_SERVICE);
                for (key, value) in &self.dimensions {
                    metric.dimensions.insert(key.clone(), value.clone());
                }
                for (key, value) in &metadata {
                    metric.metadata.insert(key.clone(), value.clone());
                }
            }
        }
        self.next.consume(batch).await
    }
}

impl Processor for EnrichProcessor {}
