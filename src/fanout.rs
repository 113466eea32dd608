//! Hands one batch to several consumers: a receiver feeding several pipelines, or a pipeline
//! feeding several exporters.

use std::sync::Arc;

use futures::future::join_all;
use mcp_metrics_plugin::{Batch, Consumer, Outcome, Refusal, async_trait};

pub struct Fanout {
    consumers: Vec<Arc<dyn Consumer>>,
}

impl Fanout {
    /// One consumer needs no fan-out.
    pub fn of(mut consumers: Vec<Arc<dyn Consumer>>) -> Arc<dyn Consumer> {
        if consumers.len() == 1 {
            consumers.remove(0)
        } else {
            Arc::new(Fanout { consumers })
        }
    }
}

#[async_trait]
impl Consumer for Fanout {
    /// Every consumer gets its own copy (processors change what they get). The request is refused
    /// if any consumer refuses it: the client will send it again, so a consumer that took it may
    /// see it twice (at-least-once), but none misses it.
    async fn consume(&self, batch: Batch) -> Result<Outcome, Refusal> {
        let results = join_all(self.consumers.iter().map(|c| c.consume(batch.clone()))).await;
        drop(batch);
        let mut outcome = Outcome::default();
        for result in results {
            outcome.merge(result?);
        }
        Ok(outcome)
    }
}
