//! What the running service offers its components (operator endpoints): flush everything now,
//! health and readiness, and a reload. Handed to components before
//! the graph exists; the service keeps it pointed at the current graph.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use mcp_metrics_plugin::{Problem, Processor, Room, ServiceControl, Telemetry, async_trait};
use tokio::sync::{mpsc, oneshot};

use crate::queue::ExporterQueue;

/// A reload asked for through [`ServiceControl::reload`], and where to say how it went.
pub type ReloadRequest = oneshot::Sender<Result<String, String>>;

pub struct Control {
    current: RwLock<Arc<Current>>,
    /// How long exports may fail before the service reports unhealthy.
    failure_threshold: RwLock<Duration>,
    stopping: AtomicBool,
    reloads: mpsc::Sender<ReloadRequest>,
    /// Where components report background tasks that failed (retention).
    telemetry: Telemetry,
}

#[derive(Default)]
struct Current {
    /// Every pipeline's processors, each pipeline in order, with their ids.
    processors: Vec<(String, Arc<dyn Processor>)>,
    exporters: Vec<Arc<ExporterQueue>>,
}

impl Control {
    pub fn new(reloads: mpsc::Sender<ReloadRequest>, telemetry: Telemetry) -> Control {
        Control {
            telemetry,
            current: RwLock::default(),
            failure_threshold: RwLock::new(Duration::from_secs(30)),
            stopping: AtomicBool::new(false),
            reloads,
        }
    }

    pub fn set(
        &self,
        processors: Vec<(String, Arc<dyn Processor>)>,
        exporters: Vec<Arc<ExporterQueue>>,
        failure_threshold: Duration,
    ) {
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(Current {
            processors,
            exporters,
        });
        *self
            .failure_threshold
            .write()
            .unwrap_or_else(|e| e.into_inner()) = failure_threshold;
    }

    pub fn stopping(&self) {
        self.stopping.store(true, Ordering::Relaxed);
    }

    fn current(&self) -> Arc<Current> {
        self.current
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Exporters whose exports have failed for longer than `threshold`.
    fn failing_exports(&self, threshold: Duration) -> Vec<Problem> {
        let current = self.current();
        let exporters = &current.exporters;
        exporters
            .iter()
            .filter_map(|e| {
                e.failing_for(threshold).map(|problem| Problem {
                    component: format!("exporters.{}", e.id()),
                    problem,
                })
            })
            .collect()
    }

    /// Full queues, in processors and exporters.
    fn full_queues(&self) -> Vec<Problem> {
        let current = self.current();
        let (processors, exporters) = (&current.processors, &current.exporters);
        let processors = processors
            .iter()
            .filter_map(|(id, p)| Some((format!("processors.{id}"), p.room()?)));
        let exporters = exporters
            .iter()
            .map(|e| (format!("exporters.{}", e.id()), e.room().clone()));
        processors
            .chain(exporters)
            .filter(|(_, room)| room.is_full())
            .map(|(component, room)| Problem {
                component,
                problem: full(&room),
            })
            .collect()
    }
}

#[async_trait]
impl ServiceControl for Control {
    async fn flush(&self, timeout: Duration) -> bool {
        let current = self.current();
        let (processors, exporters) = (&current.processors, &current.exporters);
        let everything = async {
            for (_, processor) in processors {
                processor.flush().await;
            }
            for exporter in exporters {
                exporter.idle().await;
            }
        };
        tokio::time::timeout(timeout, everything).await.is_ok()
    }

    /// Liveness: only what a restart could cure or a person must see. A full queue is a busy
    /// service, not a broken one, and is left to readiness.
    fn health(&self) -> Vec<Problem> {
        let threshold = *self
            .failure_threshold
            .read()
            .unwrap_or_else(|e| e.into_inner());
        let mut problems = self.failing_exports(threshold);
        problems.extend(self.telemetry.background_problems());
        problems
    }

    /// Readiness: whether to send this service traffic now. Full queues, an exporter failing at
    /// all (its database unreachable or locked), shutting down.
    fn readiness(&self) -> Vec<Problem> {
        let mut problems = self.full_queues();
        problems.extend(self.failing_exports(Duration::ZERO));
        if self.stopping.load(Ordering::Relaxed) {
            problems.push(Problem {
                component: "service".into(),
                problem: "shutting down".into(),
            });
        }
        problems
    }

    async fn reload(&self) -> Result<String, String> {
        let (reply, answer) = oneshot::channel();
        self.reloads
            .send(reply)
            .await
            .map_err(|_| "the service is shutting down".to_owned())?;
        answer
            .await
            .map_err(|_| "the service is shutting down".to_owned())?
    }
}

fn full(room: &Room) -> String {
    format!(
        "queue full ({} of {} metrics)",
        room.held(),
        room.capacity()
    )
}
