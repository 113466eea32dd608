//! The queue and retries the engine puts in front of every exporter (the OpenTelemetry
//! Collector's exporterhelper), so an exporter only says how to push one batch.
//!
//! The queue is bounded in metrics, not batches: when it is full the receiver answers 503 rather
//! than holding more in memory. Metrics count against the bound until their export is over, so
//! retries of a failing exporter hold the line too: by default a batch whose export may still
//! succeed is retried until it does, and clients are told to come back instead of data being
//! lost. Whatever is queued when the worker gets to it is merged into one export (up to
//! `batch_max_size`), which is what turns many small requests into few large SQLite transactions
//! without making any request wait.

use std::sync::Arc;
use std::time::{Duration, Instant};

use backon::{ExponentialBuilder, Retryable};
use futures::future::BoxFuture;
use mcp_metrics_plugin::bounds::{DAY, HOUR, MAX_METRICS_HELD, MILLISECOND, out_of_range};
use mcp_metrics_plugin::{
    Batch, CancellationToken, ComponentConfig, Consumer, ExportError, Exporter, Outcome, Permit,
    Refusal, Room, Telemetry, async_trait,
};
use serde::{Deserialize, Serialize};
use tokio::sync::{Mutex, mpsc};
use tokio::task::JoinHandle;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct QueueSettings {
    /// Most metrics waiting for or in export, from 1 to 10000000; past it, requests are refused
    /// with 503.
    pub queue_size: usize,
    /// Exports run at once, from 1 to 1000.
    pub num_consumers: usize,
    /// Most metrics merged into one export, from 1 to 10000000.
    pub batch_max_size: usize,
    /// How long an export of metrics that no client waits for (default mode) may wait for more
    /// to merge, up to `batch_max_size`; 0 exports what is queued at once, at most 1h.
    #[serde(with = "humantime_serde")]
    pub linger: Duration,
}

impl Default for QueueSettings {
    fn default() -> Self {
        QueueSettings {
            // Two exports' worth: the next one gathers while one is written.
            queue_size: 10_000,
            num_consumers: 1,
            batch_max_size: 5_000,
            linger: Duration::from_millis(100),
        }
    }
}

impl ComponentConfig for QueueSettings {
    fn validate(&self) -> Vec<String> {
        [
            out_of_range("queue_size", self.queue_size, 1..=MAX_METRICS_HELD),
            // A task each.
            out_of_range("num_consumers", self.num_consumers, 1..=1_000),
            out_of_range("batch_max_size", self.batch_max_size, 1..=MAX_METRICS_HELD),
            // An export gathers until the clock plus `linger`: past what an `Instant` holds,
            // the worker panics and the queue is never exported again.
            out_of_range("linger", self.linger, Duration::ZERO..=HOUR),
        ]
        .into_iter()
        .flatten()
        .collect()
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RetrySettings {
    /// Retry failed exports that may succeed later (busy database, unreachable endpoint).
    pub enabled: bool,
    /// The first wait before a retry, from 1ms to 1h; each next one doubles, up to
    /// `max_interval`.
    #[serde(with = "humantime_serde")]
    pub initial_interval: Duration,
    /// The longest wait between retries, from `initial_interval` to 1h.
    #[serde(with = "humantime_serde")]
    pub max_interval: Duration,
    /// Give up on a batch after retrying this long (at most 30d), losing it for this exporter; 0
    /// (the default) retries until the export succeeds, the full queue answering clients 503
    /// meanwhile.
    #[serde(with = "humantime_serde")]
    pub max_elapsed_time: Duration,
}

impl Default for RetrySettings {
    fn default() -> Self {
        RetrySettings {
            enabled: true,
            initial_interval: Duration::from_millis(500),
            max_interval: Duration::from_secs(30),
            max_elapsed_time: Duration::ZERO,
        }
    }
}

impl ComponentConfig for RetrySettings {
    fn validate(&self) -> Vec<String> {
        let mut problems: Vec<String> = [
            // Zero would retry a failing export in a busy loop.
            out_of_range(
                "initial_interval",
                self.initial_interval,
                MILLISECOND..=HOUR,
            ),
            out_of_range("max_interval", self.max_interval, MILLISECOND..=HOUR),
            out_of_range(
                "max_elapsed_time",
                self.max_elapsed_time,
                Duration::ZERO..=30 * DAY,
            ),
        ]
        .into_iter()
        .flatten()
        .collect();
        if self.initial_interval > self.max_interval {
            problems.push("initial_interval: must not exceed max_interval".into());
        }
        problems
    }
}

/// How often a failing export is retried while the queue drains (shutdown, reload): the
/// shutdown deadline, not the backoff, bounds how long that goes on.
const DRAIN_RETRY_INTERVAL: Duration = Duration::from_millis(100);

/// How long a batch handed on without reserved room waits for room in a full queue before it is
/// refused (and offered again by its sender).
const HANDOFF_WAIT: Duration = Duration::from_secs(1);

/// A batch in the queue and its share of the queue's room, given back when its export is over.
struct Queued {
    batch: Batch,
    room: Permit,
}

/// An exporter behind its queue; a [`Consumer`] for the pipeline.
pub struct ExporterQueue {
    id: String,
    exporter: Arc<dyn Exporter>,
    room: Arc<Room>,
    sender: std::sync::Mutex<Option<mpsc::UnboundedSender<Queued>>>,
    workers: Mutex<Vec<JoinHandle<()>>>,
    failing: Arc<Failing>,
    /// Cancelled when the queue drains: workers waiting to retry try again at once.
    draining: CancellationToken,
    telemetry: Telemetry,
}

/// Since when exports have been failing, and the latest error; empty while they succeed.
#[derive(Default)]
struct Failing(std::sync::Mutex<Option<(Instant, String)>>);

impl Failing {
    fn failed(&self, error: &ExportError) {
        let mut failing = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let since = failing
            .as_ref()
            .map_or_else(Instant::now, |(since, _)| *since);
        *failing = Some((since, error.message.clone()));
    }

    fn succeeded(&self) {
        *self.0.lock().unwrap_or_else(|e| e.into_inner()) = None;
    }

    fn longer_than(&self, threshold: Duration) -> Option<(Duration, String)> {
        let failing = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let (since, error) = failing.as_ref()?;
        let elapsed = since.elapsed();
        (elapsed > threshold).then(|| (elapsed, error.clone()))
    }
}

impl ExporterQueue {
    pub fn start(
        id: String,
        exporter: Box<dyn Exporter>,
        telemetry: Telemetry,
        queue: &QueueSettings,
        retry: &RetrySettings,
    ) -> Arc<ExporterQueue> {
        let exporter: Arc<dyn Exporter> = Arc::from(exporter);
        let (sender, receiver) = mpsc::unbounded_channel();
        let receiver = Arc::new(Mutex::new(receiver));
        let failing = Arc::new(Failing::default());
        let draining = CancellationToken::new();
        let workers = (0..queue.num_consumers)
            .map(|_| {
                let worker = Worker {
                    failing: failing.clone(),
                    id: id.clone(),
                    exporter: exporter.clone(),
                    receiver: receiver.clone(),
                    batch_max_size: queue.batch_max_size,
                    linger: queue.linger,
                    retry: retry.clone(),
                    draining: draining.clone(),
                    telemetry: telemetry.clone(),
                };
                tokio::spawn(worker.run())
            })
            .collect();
        let room = Room::new(queue.queue_size);
        telemetry.queue_started(&id, &room);
        Arc::new(ExporterQueue {
            id,
            exporter,
            room,
            sender: std::sync::Mutex::new(Some(sender)),
            workers: Mutex::new(workers),
            failing,
            draining,
            telemetry,
        })
    }

    pub fn id(&self) -> &str {
        &self.id
    }

    pub fn exporter(&self) -> &Arc<dyn Exporter> {
        &self.exporter
    }

    /// Metrics queued or being exported.
    pub fn queued(&self) -> usize {
        self.room.held()
    }

    /// The bound on what it holds, which the engine reserves from on admission.
    pub fn room(&self) -> &Arc<Room> {
        &self.room
    }

    /// Why it is not well: exports failing for longer than `threshold`.
    pub fn failing_for(&self, threshold: Duration) -> Option<String> {
        let (elapsed, error) = self.failing.longer_than(threshold)?;
        Some(format!(
            "exports failing for {} s: {error}",
            elapsed.as_secs()
        ))
    }

    /// Returns once nothing is queued or being exported.
    pub async fn idle(&self) {
        while self.queued() > 0 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Stops taking batches, exports everything queued, then shuts the exporter down. A failing
    /// export is retried every [`DRAIN_RETRY_INTERVAL`] from then on; the caller bounds how long.
    pub async fn drain(&self) {
        self.sender.lock().unwrap_or_else(|e| e.into_inner()).take();
        self.draining.cancel();
        for worker in self.workers.lock().await.drain(..) {
            let _ = worker.await;
        }
        if let Err(error) = self.exporter.shutdown().await {
            tracing::warn!(exporter = %self.id, %error, "exporter shutdown failed");
        }
    }
}

impl ExporterQueue {
    /// Room for `batch` in the queue: what was reserved for it, or else what frees up within
    /// [`HANDOFF_WAIT`] (a `batch` processor handing on waits for the export in progress rather
    /// than polling).
    pub async fn room_for(&self, batch: &Batch) -> Result<Permit, Refusal> {
        let size = batch.len();
        if size > self.room.capacity() {
            return Err(Refusal::too_large(format!(
                "{size} metrics exceed exporter {}'s whole queue ({})",
                self.id,
                self.room.capacity()
            )));
        }
        let room = self.room.take_for(batch, HANDOFF_WAIT).await;
        room.ok_or_else(|| {
            self.telemetry.exporter_enqueue_failed(&self.id, size);
            Refusal::busy(
                format!("exporter {} is behind: its queue is full", self.id),
                Duration::from_secs(1),
            )
        })
    }

    /// Queues `batch` in the room taken for it.
    pub fn enqueue(&self, batch: Batch, room: Permit) -> Result<Outcome, Refusal> {
        let sender = self.sender.lock().unwrap_or_else(|e| e.into_inner());
        let sent = sender.as_ref().map(|s| s.send(Queued { batch, room }));
        match sent {
            Some(Ok(())) => Ok(Outcome::default()),
            _ => Err(Refusal::busy(
                "the service is shutting down",
                Duration::from_secs(5),
            )),
        }
    }
}

#[async_trait]
impl Consumer for ExporterQueue {
    async fn consume(&self, batch: Batch) -> Result<Outcome, Refusal> {
        if batch.is_empty() {
            return Ok(Outcome::default());
        }
        let room = self.room_for(&batch).await?;
        self.enqueue(batch, room)
    }
}

struct Worker {
    failing: Arc<Failing>,
    id: String,
    exporter: Arc<dyn Exporter>,
    receiver: Arc<Mutex<mpsc::UnboundedReceiver<Queued>>>,
    batch_max_size: usize,
    linger: Duration,
    retry: RetrySettings,
    draining: CancellationToken,
    telemetry: Telemetry,
}

impl Worker {
    async fn run(self) {
        let mut carried: Option<Queued> = None;
        loop {
            let Some((batch, rooms, rest)) = self.next_export(carried.take()).await else {
                break;
            };
            carried = rest;
            self.export(batch).await;
            drop(rooms);
        }
    }

    /// The next batch to export: whatever is queued, merged up to `batch_max_size` metrics. A
    /// batch that would overflow the merge is carried to the next export.
    async fn next_export(
        &self,
        carried: Option<Queued>,
    ) -> Option<(Batch, Vec<Permit>, Option<Queued>)> {
        let mut receiver = self.receiver.lock().await;
        let first = match carried {
            Some(queued) => queued,
            None => receiver.recv().await?,
        };
        let mut batch = first.batch;
        let mut rooms = vec![first.room];
        // Metrics nobody waits for may linger a moment for more: one larger export costs the
        // database far less than many small ones. A client waiting for delivery ends the wait.
        let linger_until = tokio::time::Instant::now() + self.linger;
        while batch.len() < self.batch_max_size {
            let next = if batch.awaits_delivery() || self.draining.is_cancelled() {
                receiver.try_recv().ok()
            } else {
                tokio::time::timeout_at(linger_until, receiver.recv())
                    .await
                    .ok()
                    .flatten()
            };
            let Some(queued) = next else {
                break;
            };
            if batch.len() + queued.batch.len() > self.batch_max_size {
                return Some((batch, rooms, Some(queued)));
            }
            batch.append(queued.batch);
            rooms.push(queued.room);
        }
        Some((batch, rooms, None))
    }

    async fn export(&self, batch: Batch) {
        let attempt = || self.exporter.export(&batch);
        let result = if self.retry.enabled {
            let total =
                (!self.retry.max_elapsed_time.is_zero()).then_some(self.retry.max_elapsed_time);
            let backoff = ExponentialBuilder::default()
                .with_min_delay(self.retry.initial_interval)
                .with_max_delay(self.retry.max_interval)
                .with_jitter()
                .without_max_times()
                .with_total_delay(total);
            attempt
                .retry(backoff)
                .sleep(self.backoff_sleep())
                .when(|error: &ExportError| error.retryable)
                .notify(|error, delay| {
                    self.failing.failed(error);
                    tracing::warn!(exporter = %self.id, %error, retry_in = ?delay, "export failed; will retry");
                })
                .await
        } else {
            attempt().await
        };
        match &result {
            Ok(()) => {
                self.failing.succeeded();
                self.telemetry.exporter_sent(&self.id, batch.len());
            }
            Err(error) => {
                self.failing.failed(error);
                self.telemetry.exporter_send_failed(&self.id, batch.len());
            }
        }
        if let Err(error) = result {
            tracing::error!(
                exporter = %self.id,
                %error,
                metrics = batch.len(),
                "export failed for good; these metrics are lost for this exporter"
            );
            batch.fail(&error.message);
        }
    }

    /// Waits out a backoff delay: never longer than `max_interval` (jitter included), and at
    /// most [`DRAIN_RETRY_INTERVAL`] once the queue drains, so a shutdown retries promptly.
    fn backoff_sleep(&self) -> impl Fn(Duration) -> BoxFuture<'static, ()> + 'static {
        let (draining, shortest, longest) = (
            self.draining.clone(),
            self.retry.initial_interval.min(DRAIN_RETRY_INTERVAL),
            self.retry.max_interval,
        );
        move |delay: Duration| {
            let draining = draining.clone();
            Box::pin(async move {
                tokio::select! {
                    _ = tokio::time::sleep(delay.min(longest)) => {}
                    _ = async {
                        draining.cancelled().await;
                        tokio::time::sleep(shortest).await;
                    } => {}
                }
            })
        }
    }
}
