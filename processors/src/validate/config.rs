use std::sync::Arc;
use std::time::Duration;

use mcp_metrics_plugin::bounds::{DAY, out_of_range};
use mcp_metrics_plugin::{
    BoxError, BuildContext, ComponentConfig, Consumer, Processor, ProcessorConfig,
    ProcessorRegistration, async_trait, inventory,
};
use serde::{Deserialize, Serialize};

use super::ValidateProcessor;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ValidateConfig {
    /// Longest `service`, in characters (the contract: 50); 1 to 1024.
    pub max_service_length: usize,
    /// Longest `version`, in characters (the contract: 20); 1 to 1024.
    pub max_version_length: usize,
    /// Longest `instance_id`, in characters (the contract: 50); 1 to 1024.
    pub max_instance_id_length: usize,
    /// Most keys in one metric's `dimensions`, and in its `metadata`; 1 to 10000.
    pub max_attributes: usize,
    /// Deepest nesting of objects and arrays inside `dimensions` or `metadata` values; 0 (flat
    /// values only) to 64.
    pub max_depth: usize,
    /// Largest `dimensions`, and `metadata`, of one metric, as JSON bytes; 16 to 16777216
    /// (16MiB).
    pub max_attributes_bytes: usize,
    /// How far ahead of this machine's clock a timestamp may be; 0 to 365d.
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

impl ComponentConfig for ValidateConfig {
    fn validate(&self) -> Vec<String> {
        [
            out_of_range("max_service_length", self.max_service_length, 1..=1024),
            out_of_range("max_version_length", self.max_version_length, 1..=1024),
            out_of_range(
                "max_instance_id_length",
                self.max_instance_id_length,
                1..=1024,
            ),
            out_of_range("max_attributes", self.max_attributes, 1..=10_000),
            // A request deeper than 128 levels is not even decoded.
            out_of_range("max_depth", self.max_depth, 0..=64),
            out_of_range(
                "max_attributes_bytes",
                self.max_attributes_bytes,
                16..=16 * 1024 * 1024,
            ),
            // Every metric's timestamp is compared with the clock plus `max_future_skew`: past
            // what a date holds, that panics in every request.
            out_of_range(
                "max_future_skew",
                self.max_future_skew,
                Duration::ZERO..=365 * DAY,
            ),
        ]
        .into_iter()
        .flatten()
        .collect()
    }
}

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
