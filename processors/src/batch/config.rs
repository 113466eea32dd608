use std::sync::Arc;
use std::time::Duration;

use mcp_metrics_plugin::bounds::{HOUR, MAX_METRICS_HELD, MILLISECOND, out_of_range};
use mcp_metrics_plugin::{
    BoxError, BuildContext, ComponentConfig, Consumer, Processor, ProcessorConfig,
    ProcessorRegistration, async_trait, inventory,
};
use serde::{Deserialize, Serialize};

use super::BatchProcessor;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BatchConfig {
    /// Hand a batch on once this many metrics wait (BATCH_SIZE in the default config); 1 to
    /// 10000000.
    pub send_batch_size: usize,
    /// Or once the oldest waiting metric has waited this long (FLUSH_INTERVAL_SECONDS); 1ms to
    /// 1h.
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
    /// Largest batch handed on, from send_batch_size to 10000000; 0 for no limit.
    pub send_batch_max_size: usize,
    /// Most metrics held (waiting, or refused by the next step and retried), from
    /// send_batch_size to 10000000; past it, requests are refused with 503.
    pub queue_size: usize,
}

impl Default for BatchConfig {
    fn default() -> Self {
        BatchConfig {
            send_batch_size: 100,
            timeout: Duration::from_secs(30),
            send_batch_max_size: 0,
            queue_size: 5_000,
        }
    }
}

impl ComponentConfig for BatchConfig {
    fn validate(&self) -> Vec<String> {
        let mut problems: Vec<String> = [
            out_of_range(
                "send_batch_size",
                self.send_batch_size,
                1..=MAX_METRICS_HELD,
            ),
            // The flush deadline is when the first metric came plus `timeout`: past what an
            // `Instant` holds, the flushing task panics and nothing is handed on again.
            out_of_range("timeout", self.timeout, MILLISECOND..=HOUR),
            out_of_range("queue_size", self.queue_size, 1..=MAX_METRICS_HELD),
        ]
        .into_iter()
        .flatten()
        .collect();
        if self.send_batch_max_size > MAX_METRICS_HELD {
            problems.push(format!(
                "send_batch_max_size: must be 0 or from send_batch_size to {MAX_METRICS_HELD}"
            ));
        } else if self.send_batch_max_size != 0 && self.send_batch_max_size < self.send_batch_size {
            problems.push("send_batch_max_size: must be 0 or at least send_batch_size".into());
        }
        if self.queue_size < self.send_batch_size {
            problems.push("queue_size: must be at least send_batch_size".into());
        }
        problems
    }
}

#[async_trait]
impl ProcessorConfig for BatchConfig {
    async fn build(
        &self,
        cx: &BuildContext,
        next: Arc<dyn Consumer>,
    ) -> Result<Arc<dyn Processor>, BoxError> {
        Ok(Arc::new(BatchProcessor::start(
            cx.id.clone(),
            self.clone(),
            next,
        )))
    }
}

inventory::submit!(ProcessorRegistration::of::<BatchConfig>(
    "batch",
    "gathers metrics into batches: flushed by size or by timeout, held safely until taken"
));
