//! The running graph, built from a checked config through the registry alone: exporters (each
//! behind its queue, shared by every pipeline that names it), each pipeline's processors from last
//! to first, and the receivers, each feeding the pipelines that name it through a [`Switch`].
//!
//! A reload builds the next generation beside the running one, reusing every component whose
//! settings did not change, switches the receivers over, and then drains what was replaced, so
//! metrics in flight are neither dropped nor refused by a half-built graph.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use anyhow::anyhow;
use futures::future::join_all;
use mcp_metrics_plugin::{
    Admitted, Batch, BuildContext, CancellationToken, Consumer, Extensions, Listeners, Outcome,
    Pipelines, Processor, Receiver, Refusal, RequestHead, Reservation, Room, ServiceControl,
    Telemetry, async_trait,
};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::config::ServiceConfig;
use crate::fanout::Fanout;
use crate::queue::ExporterQueue;

/// What every component is built with.
pub struct Base {
    /// Parent of every component's own token.
    pub components: CancellationToken,
    pub control: Arc<dyn ServiceControl>,
    pub listeners: Arc<Listeners>,
    pub telemetry: Telemetry,
    /// Where a receiver that stops on its own says so.
    pub receiver_failures: mpsc::UnboundedSender<(String, String)>,
}

/// A receiver's way into the pipelines; a reload points it elsewhere. It admits a request from
/// its head (each pipeline's processors judge it, then each pipeline's room), and hands an
/// admitted request to every pipeline or to none.
///
/// The route sits behind one `Arc`, so a request takes it with one reference count rather than
/// one per field: every request takes it, from every worker thread at once.
pub struct Switch(RwLock<Arc<Route>>);

/// Where a switch sends requests, and the generation that is; a request under way holds the
/// route, and so the generation, so a reload can tell when the old one is no longer in use.
#[derive(Clone)]
struct Route {
    pipelines: Arc<[Entry]>,
    /// How long a request may wait for room (`service.admission_wait`).
    admission_wait: Duration,
    telemetry: Telemetry,
    #[allow(
        dead_code,
        reason = "held, not read: its count tells a drain what is in use"
    )]
    generation: Arc<()>,
}

/// A pipeline as a request enters it.
#[derive(Clone)]
struct Entry {
    /// Its processors in order, which judge the request's head.
    processors: Vec<Arc<dyn Processor>>,
    /// Where the room for its metrics is reserved: the first processor that holds metrics, or
    /// else its exporters' queues.
    gates: Vec<Gate>,
    consumer: Arc<dyn Consumer>,
}

#[derive(Clone)]
struct Gate {
    /// `processors.batch`, `exporters.sqlite`, ...
    component: String,
    room: Arc<Room>,
    /// The exporter, when the gate is an exporter's queue.
    exporter: Option<String>,
}

impl Switch {
    fn set(&self, route: Route) {
        *self.0.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(route);
    }

    fn route(&self) -> Arc<Route> {
        self.0.read().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

/// How long a client refused for want of room is asked to wait.
const BUSY_RETRY_AFTER: Duration = Duration::from_secs(1);

#[async_trait]
impl Pipelines for Switch {
    async fn admit(&self, mut head: RequestHead) -> Result<Box<dyn Admitted>, Refusal> {
        let route = self.route();
        for pipeline in route.pipelines.iter() {
            for processor in &pipeline.processors {
                processor.admit(&mut head).await?;
            }
        }
        if !head.look_only {
            // Room is waited for from the head, with not a byte of the body read.
            let deadline = Instant::now() + route.admission_wait;
            for gate in route.pipelines.iter().flat_map(|p| &p.gates) {
                let wait = deadline.saturating_duration_since(Instant::now());
                if !gate.room.wait_for_room(wait).await {
                    return Err(Refusal::busy(
                        format!("{} is full: exporters are behind", gate.component),
                        BUSY_RETRY_AFTER,
                    ));
                }
            }
        }
        Ok(Box::new(Admission { head, route }))
    }
}

/// A request admitted on one generation of the graph, delivered to the same one.
struct Admission {
    head: RequestHead,
    route: Arc<Route>,
}

#[async_trait]
impl Admitted for Admission {
    fn head(&self) -> &RequestHead {
        &self.head
    }

    async fn deliver(self: Box<Self>, mut batch: Batch) -> Result<Outcome, Refusal> {
        let pipelines = &self.route.pipelines;
        let reservations = reserve(&self.route, batch.len()).await?;
        for reservation in &reservations {
            batch.reserve(reservation.clone());
        }
        let mut copies = vec![batch; pipelines.len()];
        let taken = join_all(pipelines.iter().map(|pipeline| {
            let copy = copies.pop().unwrap_or_default();
            pipeline.consumer.consume(copy)
        }))
        .await;
        // What a pipeline did not take (a filter dropped the metrics) is free again.
        for reservation in &reservations {
            reservation.release();
        }
        let mut outcome = Outcome::default();
        for result in taken {
            outcome.merge(result?);
        }
        Ok(outcome)
    }
}

/// Room for `metrics` in every gate of the route's pipelines, waiting for it at most the route's
/// `admission_wait` in all; an error if one has not enough by then.
async fn reserve(route: &Route, metrics: usize) -> Result<Vec<Arc<Reservation>>, Refusal> {
    if metrics == 0 {
        return Ok(Vec::new());
    }
    let deadline = Instant::now() + route.admission_wait;
    let mut reservations = Vec::new();
    for gate in route.pipelines.iter().flat_map(|p| &p.gates) {
        if metrics > gate.room.capacity() {
            return Err(Refusal::too_large(format!(
                "{metrics} metrics exceed what {} can ever hold ({}); send fewer at once",
                gate.component,
                gate.room.capacity()
            )));
        }
        let wait = deadline.saturating_duration_since(Instant::now());
        let Some(permit) = gate.room.take_within(metrics, wait).await else {
            if let Some(exporter) = &gate.exporter {
                route.telemetry.exporter_enqueue_failed(exporter, metrics);
            }
            return Err(Refusal::busy(
                format!("{} is full: exporters are behind", gate.component),
                BUSY_RETRY_AFTER,
            ));
        };
        reservations.push(Reservation::new(permit));
    }
    Ok(reservations)
}

pub struct BuiltExporter {
    fingerprint: String,
    pub queue: Arc<ExporterQueue>,
    stop: CancellationToken,
}

pub struct BuiltPipeline {
    fingerprint: String,
    /// Its processors in pipeline order, with their ids.
    pub chain: Vec<(String, Arc<dyn Processor>)>,
    entry: Entry,
    stop: CancellationToken,
}

pub struct RunningReceiver {
    fingerprint: String,
    switch: Arc<Switch>,
    /// Stops it taking input.
    stop_receiving: CancellationToken,
    /// Stops its background tasks.
    stop: CancellationToken,
    task: JoinHandle<()>,
    pub addr: Option<SocketAddr>,
}

/// One generation of the running graph.
#[derive(Default)]
pub struct Graph {
    pub exporters: BTreeMap<String, BuiltExporter>,
    pub pipelines: BTreeMap<String, BuiltPipeline>,
    pub receivers: BTreeMap<String, RunningReceiver>,
    generation: Arc<()>,
}

/// The next generation, built and not yet taking traffic.
pub struct Plan {
    admission_wait: Duration,
    telemetry: Telemetry,
    exporters: BTreeMap<String, (bool, BuiltExporter)>,
    pipelines: BTreeMap<String, (bool, BuiltPipeline)>,
    receivers: BTreeMap<String, PlannedReceiver>,
}

enum PlannedReceiver {
    /// Unchanged: it keeps running, pointed at the new pipelines.
    Keep(Arc<[Entry]>),
    New {
        fingerprint: String,
        receiver: Box<dyn Receiver>,
        target: Arc<[Entry]>,
        stop: CancellationToken,
    },
}

/// What a new generation replaced, to be drained once nothing sends to it.
#[derive(Default)]
pub struct Retired {
    receivers: Vec<RunningReceiver>,
    pipelines: Vec<BuiltPipeline>,
    exporters: Vec<BuiltExporter>,
    generation: Arc<()>,
}

impl Plan {
    /// Builds every component the config uses, reusing those of `current` whose settings are
    /// unchanged. On error, what was built is stopped and `current` is untouched.
    pub async fn build(
        config: &ServiceConfig,
        current: Option<&Graph>,
        base: &Base,
    ) -> anyhow::Result<Plan> {
        let built = std::sync::Mutex::new(Vec::new());
        let result = Plan::build_tracked(config, current, base, &built).await;
        if result.is_err() {
            for token in built.lock().unwrap_or_else(|e| e.into_inner()).iter() {
                token.cancel();
            }
        }
        result
    }

    async fn build_tracked(
        config: &ServiceConfig,
        current: Option<&Graph>,
        base: &Base,
        // Every component's token, to stop what was built if a later component fails.
        built: &std::sync::Mutex<Vec<CancellationToken>>,
    ) -> anyhow::Result<Plan> {
        let context = |id: &str, extensions: &Arc<Extensions>| {
            let stop = base.components.child_token();
            built
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push(stop.clone());
            BuildContext {
                id: id.to_owned(),
                shutdown: stop,
                listeners: base.listeners.clone(),
                telemetry: base.telemetry.clone(),
                extensions: extensions.clone(),
            }
        };
        // Extensions first: the components are built on them. Building one again is cheap (the
        // database it opens is the one already open), so every build makes them anew.
        let none = Arc::new(Extensions::default());
        let mut extensions = BTreeMap::new();
        for (id, extension) in &config.extensions {
            let built = extension
                .build(&context(id, &none))
                .await
                .map_err(|e| anyhow!("extensions.{id}: {e}"))?;
            extensions.insert(id.clone(), built);
        }
        let extensions = Arc::new(Extensions::new(extensions));
        let context = |id: &str| context(id, &extensions);
        let used = |section: &str, id: &String| {
            config.pipelines.values().any(|p| match section {
                "receivers" => p.receivers.contains(id),
                _ => p.exporters.contains(id),
            })
        };

        let mut exporters = BTreeMap::new();
        for (id, settings) in config
            .exporters
            .iter()
            .filter(|(id, _)| used("exporters", id))
        {
            let fingerprint = config.fingerprint("exporters", id).to_owned();
            if let Some(old) = current
                .and_then(|g| g.exporters.get(id))
                .filter(|old| old.fingerprint == fingerprint)
            {
                let reused = BuiltExporter {
                    fingerprint,
                    queue: old.queue.clone(),
                    stop: old.stop.clone(),
                };
                exporters.insert(id.clone(), (true, reused));
                continue;
            }
            let cx = context(id);
            let exporter = settings
                .config
                .build(&cx)
                .await
                .map_err(|e| anyhow!("exporters.{id}: {e}"))?;
            let queue = ExporterQueue::start(
                id.clone(),
                exporter,
                base.telemetry.clone(),
                &settings.sending_queue,
                &settings.retry_on_failure,
            );
            exporters.insert(
                id.clone(),
                (
                    false,
                    BuiltExporter {
                        fingerprint,
                        queue,
                        stop: cx.shutdown,
                    },
                ),
            );
        }

        let mut pipelines = BTreeMap::new();
        for (name, pipeline) in &config.pipelines {
            let parts: Vec<String> =
                pipeline
                    .processors
                    .iter()
                    .map(|id| format!("processors.{id}={}", config.fingerprint("processors", id)))
                    .chain(pipeline.exporters.iter().map(|id| {
                        format!("exporters.{id}={}", config.fingerprint("exporters", id))
                    }))
                    .collect();
            let fingerprint = parts.join("\n");
            if let Some(old) = current
                .and_then(|g| g.pipelines.get(name))
                .filter(|old| old.fingerprint == fingerprint)
            {
                let reused = BuiltPipeline {
                    fingerprint,
                    chain: old.chain.clone(),
                    entry: old.entry.clone(),
                    stop: old.stop.clone(),
                };
                pipelines.insert(name.clone(), (true, reused));
                continue;
            }
            let queues: Vec<Arc<ExporterQueue>> = pipeline
                .exporters
                .iter()
                .map(|id| exporters[id].1.queue.clone())
                .filter(|queue| queue.exporter().is_enabled())
                .collect();
            let mut gates: Vec<Gate> = queues
                .iter()
                .map(|queue| Gate {
                    component: format!("exporters.{}", queue.id()),
                    room: queue.room().clone(),
                    exporter: Some(queue.id().to_owned()),
                })
                .collect();
            let mut next = Fanout::of(queues);
            let stop = base.components.child_token();
            built
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push(stop.clone());
            let mut chain = Vec::new();
            for id in pipeline.processors.iter().rev() {
                let cx = BuildContext {
                    shutdown: stop.clone(),
                    ..context(id)
                };
                let processor = config.processors[id]
                    .build(&cx, next)
                    .await
                    .map_err(|e| anyhow!("processors.{id} (pipeline {name}): {e}"))?;
                next = processor.clone();
                chain.push((id.clone(), processor));
            }
            chain.reverse();
            // Room is reserved where metrics are first held.
            if let Some(gate) = chain.iter().find_map(|(id, p)| {
                p.room().map(|room| Gate {
                    component: format!("processors.{id}"),
                    room,
                    exporter: None,
                })
            }) {
                gates = vec![gate];
            }
            let entry = Entry {
                processors: chain.iter().map(|(_, p)| p.clone()).collect(),
                gates,
                consumer: next,
            };
            pipelines.insert(
                name.clone(),
                (
                    false,
                    BuiltPipeline {
                        fingerprint,
                        chain,
                        entry,
                        stop,
                    },
                ),
            );
        }

        let mut receivers = BTreeMap::new();
        for (id, receiver_config) in config
            .receivers
            .iter()
            .filter(|(id, _)| used("receivers", id))
        {
            let target: Arc<[Entry]> = config
                .pipelines
                .iter()
                .filter(|(_, p)| p.receivers.contains(id))
                .map(|(name, _)| pipelines[name].1.entry.clone())
                .collect();
            let fingerprint = config.fingerprint("receivers", id).to_owned();
            let unchanged = current
                .and_then(|g| g.receivers.get(id))
                .is_some_and(|old| old.fingerprint == fingerprint);
            let planned = if unchanged {
                PlannedReceiver::Keep(target)
            } else {
                let cx = context(id);
                let receiver = receiver_config
                    .build(&cx, base.control.clone())
                    .await
                    .map_err(|e| anyhow!("receivers.{id}: {e}"))?;
                PlannedReceiver::New {
                    fingerprint,
                    receiver,
                    target,
                    stop: cx.shutdown,
                }
            };
            receivers.insert(id.clone(), planned);
        }
        Ok(Plan {
            admission_wait: config.settings.admission_wait,
            telemetry: base.telemetry.clone(),
            exporters,
            pipelines,
            receivers,
        })
    }
}

impl Graph {
    /// Puts `plan` to work in place of `previous`: starts its new receivers, points the kept ones
    /// at the new pipelines, and returns what is left of `previous` to drain.
    pub fn commit(plan: Plan, mut previous: Graph, base: &Base) -> (Graph, Retired) {
        let mut graph = Graph::default();
        let mut retired = Retired {
            generation: previous.generation.clone(),
            ..Retired::default()
        };
        for (id, planned) in plan.receivers {
            let running = match planned {
                PlannedReceiver::Keep(target) => {
                    let running = previous
                        .receivers
                        .remove(&id)
                        .expect("a kept receiver is running");
                    running.switch.set(Route {
                        pipelines: target,
                        admission_wait: plan.admission_wait,
                        telemetry: plan.telemetry.clone(),
                        generation: graph.generation.clone(),
                    });
                    running
                }
                PlannedReceiver::New {
                    fingerprint,
                    receiver,
                    target,
                    stop,
                } => {
                    let route = Route {
                        pipelines: target,
                        admission_wait: plan.admission_wait,
                        telemetry: plan.telemetry.clone(),
                        generation: graph.generation.clone(),
                    };
                    // The receiver it replaces shares its socket until it has drained: what it
                    // still takes goes the new way too.
                    if let Some(replaced) = previous.receivers.remove(&id) {
                        replaced.switch.set(route.clone());
                        retired.receivers.push(replaced);
                    }
                    start(&id, fingerprint, receiver, route, stop, base)
                }
            };
            graph.receivers.insert(id, running);
        }
        retired.receivers.extend(previous.receivers.into_values());
        // Stop taking connections now, not when the drain gets to them.
        for receiver in &retired.receivers {
            receiver.stop_receiving.cancel();
        }
        graph.pipelines = take_over(plan.pipelines, previous.pipelines, &mut retired.pipelines);
        graph.exporters = take_over(plan.exporters, previous.exporters, &mut retired.exporters);
        (graph, retired)
    }

    /// Every processor, each pipeline in order.
    pub fn processors(&self) -> Vec<(String, Arc<dyn Processor>)> {
        self.pipelines
            .values()
            .flat_map(|p| p.chain.iter().cloned())
            .collect()
    }

    /// Where its receivers listen and its exporters serve, to keep those sockets open.
    pub fn addrs(&self) -> Vec<SocketAddr> {
        let receivers = self.receivers.values().filter_map(|r| r.addr);
        let exporters = self.exporters.values();
        receivers
            .chain(exporters.filter_map(|e| e.queue.exporter().local_addr()))
            .collect()
    }

    pub fn queues(&self) -> Vec<Arc<ExporterQueue>> {
        self.exporters.values().map(|e| e.queue.clone()).collect()
    }

    /// Everything, to drain on shutdown.
    pub fn retire(self) -> Retired {
        Retired {
            receivers: self.receivers.into_values().collect(),
            pipelines: self.pipelines.into_values().collect(),
            exporters: self.exporters.into_values().collect(),
            generation: self.generation,
        }
    }
}

/// The planned components in place of the previous ones; the previous ones not reused go to
/// `retired`.
fn take_over<T>(
    planned: BTreeMap<String, (bool, T)>,
    mut previous: BTreeMap<String, T>,
    retired: &mut Vec<T>,
) -> BTreeMap<String, T> {
    let mut current = BTreeMap::new();
    for (id, (reused, component)) in planned {
        let old = previous.remove(&id);
        if !reused {
            retired.extend(old);
        }
        current.insert(id, component);
    }
    retired.extend(previous.into_values());
    current
}

fn start(
    id: &str,
    fingerprint: String,
    receiver: Box<dyn Receiver>,
    route: Route,
    stop: CancellationToken,
    base: &Base,
) -> RunningReceiver {
    let addr = receiver.local_addr();
    let switch = Arc::new(Switch(RwLock::new(Arc::new(route))));
    let stop_receiving = CancellationToken::new();
    let (id, failures, stopping) = (
        id.to_owned(),
        base.receiver_failures.clone(),
        stop_receiving.clone(),
    );
    let next = switch.clone();
    let task = tokio::spawn(async move {
        let ended = receiver.run(next, stopping.clone()).await;
        if !stopping.is_cancelled() {
            let why = ended
                .err()
                .map_or_else(|| "stopped".to_owned(), |e| e.to_string());
            let _ = failures.send((id, why));
        } else if let Err(error) = ended {
            tracing::warn!(receiver = %id, %error, "receiver ended with an error");
        }
    });
    RunningReceiver {
        fingerprint,
        switch,
        stop_receiving,
        stop,
        task,
        addr,
    }
}

impl Retired {
    /// Components replaced or removed (a pipeline counts its processors).
    pub fn count(&self) -> usize {
        let processors: usize = self.pipelines.iter().map(|p| p.chain.len()).sum();
        self.receivers.len() + processors + self.exporters.len()
    }

    /// Stops the receivers (they finish the requests in flight), waits until nothing else sends
    /// to the pipelines, lets their processors hand on what they hold, then exports everything
    /// queued at the exporters.
    pub async fn drain(self) {
        for receiver in &self.receivers {
            receiver.stop_receiving.cancel();
        }
        let receivers_done = join_all(self.receivers.into_iter().map(|receiver| async move {
            let _ = receiver.task.await;
            receiver.stop.cancel();
        }));
        tokio::pin!(receivers_done);
        // A request in flight may be waiting for its metrics to be delivered (durable
        // acknowledgements), which a batch would otherwise hold until its timeout.
        loop {
            tokio::select! {
                _ = &mut receivers_done => break,
                _ = tokio::time::sleep(Duration::from_millis(20)) => {
                    for (_, processor) in self.pipelines.iter().flat_map(|p| &p.chain) {
                        processor.flush().await;
                    }
                }
            }
        }
        // A request that took the old way before the switch may still be on it.
        while Arc::strong_count(&self.generation) > 1 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        for pipeline in self.pipelines {
            for (_, processor) in &pipeline.chain {
                processor.shutdown().await;
            }
            pipeline.stop.cancel();
        }
        for exporter in self.exporters {
            exporter.queue.drain().await;
            exporter.stop.cancel();
        }
    }
}
