//! What the running service offers its components (operator endpoints): flush everything now,
//! and a caller's rate-limit standing. Handed to components before the graph exists, filled in
//! once it does.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use mcp_metrics_plugin::{Processor, RateLimitState, RequestContext, ServiceControl, async_trait};

use crate::queue::ExporterQueue;

#[derive(Default)]
pub struct Control {
    /// Every pipeline's processors, each pipeline in order.
    processors: OnceLock<Vec<Arc<dyn Processor>>>,
    exporters: OnceLock<Vec<Arc<ExporterQueue>>>,
}

impl Control {
    pub fn set(&self, processors: Vec<Arc<dyn Processor>>, exporters: Vec<Arc<ExporterQueue>>) {
        let _ = self.processors.set(processors);
        let _ = self.exporters.set(exporters);
    }
}

#[async_trait]
impl ServiceControl for Control {
    async fn flush(&self, timeout: Duration) -> bool {
        let everything = async {
            for processor in self.processors.get().into_iter().flatten() {
                processor.flush().await;
            }
            for exporter in self.exporters.get().into_iter().flatten() {
                exporter.idle().await;
            }
        };
        tokio::time::timeout(timeout, everything).await.is_ok()
    }

    fn rate_limit(&self, context: &RequestContext) -> Option<RateLimitState> {
        self.processors
            .get()?
            .iter()
            .find_map(|p| p.rate_limit(context))
    }
}
