use std::sync::Arc;

use mcp_metrics_plugin::{
    BoxError, BuildContext, ComponentConfig, Consumer, Processor, ProcessorConfig,
    ProcessorRegistration, async_trait, inventory,
};
use serde::{Deserialize, Serialize};

use super::RateLimitProcessor;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RateLimitConfig {
    /// Requests per minute for keys whose `rate_limit` column is empty (the contract: 1000).
    pub default_limit: u32,
    /// Most callers tracked at once; idle ones (full bucket) are forgotten first.
    pub max_tracked_keys: usize,
}

impl Default for RateLimitConfig {
    fn default() -> Self {
        RateLimitConfig {
            default_limit: 1000,
            max_tracked_keys: 10_000,
        }
    }
}

impl ComponentConfig for RateLimitConfig {
    fn validate(&self) -> Vec<String> {
        let mut problems = Vec::new();
        if self.default_limit == 0 {
            problems.push("default_limit: must be at least 1 request per minute".into());
        }
        if self.max_tracked_keys == 0 {
            problems.push("max_tracked_keys: must be at least 1".into());
        }
        problems
    }
}

#[async_trait]
impl ProcessorConfig for RateLimitConfig {
    async fn build(
        &self,
        cx: &BuildContext,
        next: Arc<dyn Consumer>,
    ) -> Result<Arc<dyn Processor>, BoxError> {
        Ok(Arc::new(RateLimitProcessor::new(self, cx, next)))
    }
}

inventory::submit!(ProcessorRegistration::of::<RateLimitConfig>(
    "rate_limit",
    "limits requests per minute per API key (GCRA); 429 with Retry-After over the limit"
));
