//! `batch`: gathers requests into larger batches, handed on when `send_batch_size` metrics wait
//! or `timeout` has passed since the first of them, whichever comes first (the OpenTelemetry
//! Collector's batch processor). Metrics a client waits for (durable acknowledgements) are never
//! held for the timer: they go on at once, from the client's own task, and gather behind the
//! export in progress in the exporter's queue, which merges whatever is queued when its export
//! starts. So batches grow with the load while a lone request waits for one commit (group
//! commit). Unlike the Collector's, it keeps its promise: what it holds is bounded
//! (`queue_size`, its [`Room`], which the engine reserves from on admission), is retried when the
//! next step refuses it, and is handed on at shutdown; each request's acknowledgement travels
//! with its metrics.

mod config;

pub use config::BatchConfig;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use mcp_metrics_plugin::{
    Batch, CancellationToken, Consumer, Outcome, Permit, Processor, Reason, Refusal, Room,
    async_trait,
};
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tokio::time::Instant;

pub struct BatchProcessor {
    shared: Arc<Shared>,
    stop: CancellationToken,
    flusher: tokio::sync::Mutex<Option<JoinHandle<()>>>,
}

struct Shared {
    config: BatchConfig,
    next: Arc<dyn Consumer>,
    /// What it holds, pending or being handed on, counts against this.
    room: Arc<Room>,
    pending: Mutex<Pending>,
    /// Wakes the flusher when a batch starts or fills up.
    wake: Notify,
    id: String,
}

#[derive(Default)]
struct Pending {
    batch: Batch,
    /// The pending metrics' share of the room.
    permit: Option<Permit>,
    /// When the oldest pending metric arrived.
    since: Option<Instant>,
    /// Shut down: nothing is held any more, batches go straight on (a request that was under way
    /// during a reload can still arrive).
    closed: bool,
}

impl BatchProcessor {
    fn start(id: String, config: BatchConfig, next: Arc<dyn Consumer>) -> BatchProcessor {
        let shared = Arc::new(Shared {
            room: Room::new(config.queue_size),
            config,
            next,
            pending: Mutex::new(Pending::default()),
            wake: Notify::new(),
            id,
        });
        let stop = CancellationToken::new();
        let flusher = tokio::spawn(flush_loop(shared.clone(), stop.clone()));
        BatchProcessor {
            shared,
            stop,
            flusher: tokio::sync::Mutex::new(Some(flusher)),
        }
    }
}

#[async_trait]
impl Consumer for BatchProcessor {
    async fn consume(&self, batch: Batch) -> Result<Outcome, Refusal> {
        if batch.is_empty() {
            return Ok(Outcome::default());
        }
        if batch.awaits_delivery() && batch.len() <= self.shared.max_part() {
            return self.hand_on_now(batch).await;
        }
        match self.hold(batch).await? {
            Some(batch) => self.shared.next.consume(batch).await,
            None => Ok(Outcome::default()),
        }
    }
}

impl BatchProcessor {
    /// Hands on metrics a client waits for from the client's own task, holding the room reserved
    /// for them until the next step has them; they gather behind the export in progress in the
    /// exporter's queue. Through the flusher, each cost a hand-off between tasks: about a tenth
    /// of durable mode's requests/s in the benchmark. A refusal goes back to the client, who was
    /// not answered yet and sends them again.
    async fn hand_on_now(&self, batch: Batch) -> Result<Outcome, Refusal> {
        let _room = self.shared.take_room(&batch).await?;
        self.shared.next.consume(batch).await
    }

    /// Adds the batch to what is pending, in the room reserved for it; gives it back if this
    /// processor no longer holds anything (after its last flush), refuses it if it is full.
    async fn hold(&self, batch: Batch) -> Result<Option<Batch>, Refusal> {
        let config = &self.shared.config;
        let permit = self.shared.take_room(&batch).await?;
        let mut pending = self
            .shared
            .pending
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if pending.closed {
            return Ok(Some(batch));
        }
        match pending.permit.as_mut() {
            Some(held) => held.merge(permit),
            None => pending.permit = Some(permit),
        }
        let first = pending.since.is_none();
        if first {
            pending.since = Some(Instant::now());
        }
        pending.batch.append(batch);
        let due = pending.batch.len() >= config.send_batch_size || pending.batch.awaits_delivery();
        drop(pending);
        if first || due {
            self.shared.wake.notify_one();
        }
        Ok(None)
    }
}

#[async_trait]
impl Processor for BatchProcessor {
    async fn flush(&self) {
        self.shared.flush(false).await;
    }

    fn room(&self) -> Option<Arc<Room>> {
        Some(self.shared.room.clone())
    }

    async fn shutdown(&self) {
        self.stop.cancel();
        if let Some(flusher) = self.flusher.lock().await.take() {
            let _ = flusher.await;
        }
    }
}

async fn flush_loop(shared: Arc<Shared>, stop: CancellationToken) {
    loop {
        let (due, ready) = {
            let pending = shared.pending.lock().unwrap_or_else(|e| e.into_inner());
            let ready = pending.batch.len() >= shared.config.send_batch_size
                || pending.batch.awaits_delivery();
            (
                pending.since.map(|since| since + shared.config.timeout),
                ready,
            )
        };
        let stopping = stop.is_cancelled();
        if ready || stopping || due.is_some_and(|due| due <= Instant::now()) {
            shared.flush(stopping).await;
            if stopping {
                return;
            }
            continue;
        }
        tokio::select! {
            _ = shared.wake.notified() => {}
            _ = stop.cancelled() => {}
            _ = sleep_until(due) => {}
        }
    }
}

async fn sleep_until(due: Option<Instant>) {
    match due {
        Some(due) => tokio::time::sleep_until(due).await,
        None => std::future::pending().await,
    }
}

impl Shared {
    /// The room reserved for `batch`: a request comes with it; anything else is refused at once
    /// if full.
    async fn take_room(&self, batch: &Batch) -> Result<Permit, Refusal> {
        self.room
            .take_for(batch, Duration::ZERO)
            .await
            .ok_or_else(|| {
                Refusal::busy(
                    format!("processor {} is full: exporters are behind", self.id),
                    Duration::from_secs(1),
                )
            })
    }

    /// The most metrics handed on at once (`send_batch_max_size`).
    fn max_part(&self) -> usize {
        match self.config.send_batch_max_size {
            0 => usize::MAX,
            max => max,
        }
    }

    /// Hands on everything pending, in batches of at most `send_batch_max_size`; when `last`,
    /// holds nothing from then on.
    async fn flush(&self, last: bool) {
        let (mut batch, mut permit) = {
            let mut pending = self.pending.lock().unwrap_or_else(|e| e.into_inner());
            pending.closed |= last;
            pending.since = None;
            (std::mem::take(&mut pending.batch), pending.permit.take())
        };
        let max = self.max_part();
        while !batch.is_empty() {
            let part = if batch.len() > max {
                batch.take_front(max)
            } else {
                std::mem::take(&mut batch)
            };
            // The part holds its share of the room until the next step has it.
            let _share = permit.as_mut().map(|p| p.split(part.len()));
            self.hand_on(part).await;
        }
    }

    /// Offers the batch until the next step takes it: these metrics were acknowledged. A full
    /// queue is waited out; a batch larger than the next step can ever take goes on in halves;
    /// any other refusal (a judging processor placed after `batch`) cannot clear by waiting, so
    /// those metrics are failed, loudly, rather than blocking everything behind them.
    async fn hand_on(&self, batch: Batch) {
        let mut parts = vec![batch];
        'parts: while let Some(mut part) = parts.pop() {
            let mut delay = Duration::from_millis(50);
            loop {
                let refusal = match self.next.consume(part.clone()).await {
                    Ok(_) => continue 'parts,
                    Err(refusal) => refusal,
                };
                match refusal.reason {
                    Reason::Busy { .. } => {
                        tracing::warn!(processor = %self.id, %refusal, metrics = part.len(), retry_in = ?delay, "next step refused a batch; holding it");
                        tokio::time::sleep(delay).await;
                        delay = (delay * 2).min(Duration::from_secs(5));
                    }
                    Reason::TooLarge if part.len() > 1 => {
                        let front = part.take_front(part.len() / 2);
                        parts.push(part);
                        parts.push(front);
                        continue 'parts;
                    }
                    _ => {
                        tracing::error!(processor = %self.id, %refusal, metrics = part.len(), "next step refused a batch for good; these metrics are lost");
                        part.fail(&refusal.to_string());
                        continue 'parts;
                    }
                }
            }
        }
    }
}
