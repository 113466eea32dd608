//! Hands one batch to every exporter of a pipeline, each its own copy, or to none: room is taken
//! in every exporter's queue before any has the batch, so a full queue refuses it whole and the
//! batch offered again duplicates nothing.

use std::sync::Arc;

use mcp_metrics_plugin::{Batch, Consumer, Outcome, Refusal, async_trait};

use crate::queue::ExporterQueue;

pub struct Fanout {
    queues: Vec<Arc<ExporterQueue>>,
}

impl Fanout {
    /// One queue needs no fan-out; none takes batches and drops them (every exporter of the
    /// pipeline is switched off).
    pub fn of(mut queues: Vec<Arc<ExporterQueue>>) -> Arc<dyn Consumer> {
        if queues.len() == 1 {
            queues.remove(0)
        } else {
            Arc::new(Fanout { queues })
        }
    }
}

#[async_trait]
impl Consumer for Fanout {
    async fn consume(&self, batch: Batch) -> Result<Outcome, Refusal> {
        if batch.is_empty() {
            return Ok(Outcome::default());
        }
        let mut rooms = Vec::with_capacity(self.queues.len());
        for queue in &self.queues {
            rooms.push(queue.room_for(&batch).await?);
        }
        let mut copies = vec![batch; self.queues.len()];
        for (queue, room) in self.queues.iter().zip(rooms) {
            let copy = copies.pop().unwrap_or_default();
            queue.enqueue(copy, room)?;
        }
        Ok(Outcome::default())
    }
}
