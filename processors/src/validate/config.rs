use std::sync::Arc;
use std::time::Duration;

use mcp_metrics_plugin::{
    BoxError, BuildContext, ComponentConfig, Consumer, Processor, ProcessorConfig,
    ProcessorRegistration, async_trait, inventory,
};
use serde::{Deserialize, Serialize};

use super::ValidateProcessor;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ValidateConfig {
    /// Longest `service`, in characters (the contract: 50).
    pub max_service_length: usize,
    /// Longest `version`, in characters (the contract: 20).
    pub max_version_length: usize,
    /// Longest `instance_id`, in characters (the contract: 50).
    pub max_instance_id_length: usize,
    /// Most keys in one metric's `dimensions`, and in its `metadata`.
    pub max_attributes: usize,
    /// Deepest nesting of objects and arrays inside `dimensions` or `metadata` values.
    pub max_depth: usize,
    /// Largest `dimensions`, and `metadata`, of one metric, as JSON bytes.
    pub max_attributes_bytes: usize,
    /// How far ahead of this machine's clock a timestamp may be.
    #[serde(with = "humantime_serde")]
    pub max_future_skew: Duration,
}

impl Default for ValidateConfig {
    fn default() -> Self {
        ValidateConfig {
            max_service_length: 50,
            max_version_length: 20,
            max_instance_id_length: 50,
            max_attributes: 64,
            max_depth: 3,
            max_attributes_bytes: 16 * 1024,
            max_future_skew: Duration::from_secs(24 * 3600),
        }
    }
}

impl ComponentConfig for ValidateConfig {}

#[async_trait]
impl ProcessorConfig for ValidateConfig {
    async fn build(
        &self,
        _cx: &BuildContext,
        next: Arc<dyn Consumer>,
    ) -> Result<Arc<dyn Processor>, BoxError> {
        Ok(Arc::new(ValidateProcessor {
            config: self.clone(),
            next,
        }))
    }
}

inventory::submit!(ProcessorRegistration::of::<ValidateConfig>(
    "validate",
    "applies the contract's field rules; judges each metric alone"
));
