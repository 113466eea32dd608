use std::collections::BTreeMap;
use std::sync::Arc;

use mcp_metrics_plugin::{
    BoxError, BuildContext, ComponentConfig, Consumer, Processor, ProcessorConfig,
    ProcessorRegistration, async_trait, inventory,
};
use serde::{Deserialize, Serialize};

use super::EnrichProcessor;

/// What to do with the `service` a client names, given the service its API key belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ServiceIdentity {
    /// Refuse a request naming another service than its key's: 403 `service_mismatch`.
    Refuse,
    /// Store the key's service instead of the one the client names.
    Overwrite,
    /// Store the client's, as the Python service did.
    Keep,
    /// Store the client's, and the key's as `metadata.authenticated_service`, in the typed
    /// tables' `authenticated_service` column, and as the `authenticated_service` label of
    /// Prometheus and OTLP series whose `service` differs from it.
    Record,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EnrichConfig {
    /// Added to every metric's `dimensions` (they become labels downstream), replacing the
    /// client's value for the same key.
    pub dimensions: BTreeMap<String, attribute::Value>,
    /// Added to every metric's `metadata`.
    pub metadata: BTreeMap<String, attribute::Value>,
    /// The `metadata` key for the time of receipt (RFC 3339); empty for none.
    pub received_at_key: Option<String>,
    pub service_identity: ServiceIdentity,
}

impl Default for EnrichConfig {
    fn default() -> Self {
        EnrichConfig {
            dimensions: BTreeMap::new(),
            metadata: BTreeMap::new(),
            received_at_key: Some("received_at".into()),
            service_identity: ServiceIdentity::Record,
        }
    }
}

impl ComponentConfig for EnrichConfig {}

#[async_trait]
impl ProcessorConfig for EnrichConfig {
    async fn build(
        &self,
        _cx: &BuildContext,
        next: Arc<dyn Consumer>,
    ) -> Result<Arc<dyn Processor>, BoxError> {
        let json = |map: &BTreeMap<String, attribute::Value>| {
            map.iter().map(|(k, v)| (k.clone(), v.to_json())).collect()
        };
        Ok(Arc::new(EnrichProcessor {
            dimensions: json(&self.dimensions),
            metadata: json(&self.metadata),
            config: self.clone(),
            next,
        }))
    }
}

/// Attribute values: strings, numbers or booleans.
mod attribute {
    use serde::{Deserialize, Serialize};

    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    #[serde(untagged)]
    pub enum Value {
        Bool(bool),
        Integer(i64),
        Float(f64),
        Text(String),
    }

    impl Value {
        pub fn to_json(&self) -> serde_json::Value {
            match self {
                Value::Bool(b) => serde_json::Value::from(*b),
                Value::Integer(n) => serde_json::Value::from(*n),
                Value::Float(f) => serde_json::Value::from(*f),
                Value::Text(s) => serde_json::Value::from(s.clone()),
            }
        }
    }
}

inventory::submit!(ProcessorRegistration::of::<EnrichConfig>(
    "enrich",
    "adds configured attributes, the receive time and the API key's service to every metric"
));
