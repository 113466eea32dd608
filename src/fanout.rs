//! Hands one batch to several consumers: a receiver feeding several pipelines, or a pipeline
//! feeding several exporters.

use std::sync::Arc;

use futures::future::join_all;
use mcp_metrics_plugin::{Batch, Consumer, Outcome, Refusal, async_trait};

pub struct Fanout {
    consumers: Vec<Arc<dyn Consumer>>,
}

impl Fanout {
    /// One consumer needs no fan-out; none takes batches and drops them (every exporter of the
    /// pipeline is switched off).
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
    fn has_room(&self, metrics: usize) -> bool {
        self.consumers.iter().all(|c| c.has_room(metrics))
    }

    /// Every consumer gets its own copy (processors change what they get). A consumer without room
    /// refuses the batch before any has it. If one still refuses (its room went in between), the
    /// request is refused: the client sends it again, so a consumer that took it may see it twice
    /// (at-least-once), but none misses it.
    async fn consume(&self, batch: Batch) -> Result<Outcome, Refusal> {
        let size = batch.len();
        if !self.has_room(size) {
            // Refused before any branch has it, so offering it again duplicates nothing.
            return Err(Refusal::unavailable(
                "an exporter is behind: its queue is full",
                1,
            ));
        }
        // Copies for all but the last, which takes the batch itself.
        let mut copies: Vec<Batch> = Vec::with_capacity(self.consumers.len());
        if let Some(others) = self.consumers.len().checked_sub(1) {
            copies.extend(std::iter::repeat_n(&batch, others).cloned());
            copies.push(batch);
        }
        let results = join_all(self.consumers.iter().zip(copies).map(|(c, b)| c.consume(b))).await;
        let mut outcome = Outcome::default();
        for result in results {
            outcome.merge(result?);
        }
        Ok(outcome)
    }
}
