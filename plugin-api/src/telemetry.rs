//! The service's own telemetry, in the manner of the OpenTelemetry Collector's: how many metric
//! points each receiver accepted or refused, how many each exporter sent or failed to send, how
//! full each exporter's queue is, and how long requests took. Specified once here for every
//! component; each service has one [`Telemetry`] handle, which its components get in their
//! build context (no process-wide state: two services in one process keep their own counts).
//!
//! The numbers are kept in OpenTelemetry instruments, but not on the process-global meter
//! provider: an exporter that shows the service's telemetry (the `prometheus` exporter, on its
//! scrape endpoint) [`attach`](Telemetry::attach)es its own meter, and every recording goes to
//! every meter attached at the time. So two scrape endpoints both show it, an exporter that stops
//! takes its instruments with it, and while none is attached recording costs a read lock and
//! nothing else.
//!
//! Names (as a Prometheus scrape shows them, `_total` added to counters, `_seconds` to durations):
//! - `mcp_metrics_receiver_accepted_metric_points_total{receiver}`
//! - `mcp_metrics_receiver_refused_metric_points_total{receiver}`
//! - `mcp_metrics_receiver_request_duration_seconds{receiver, status_code}` (histogram)
//! - `mcp_metrics_exporter_sent_metric_points_total{exporter}`
//! - `mcp_metrics_exporter_send_failed_metric_points_total{exporter}`
//! - `mcp_metrics_exporter_enqueue_failed_metric_points_total{exporter}`
//! - `mcp_metrics_exporter_queue_size{exporter}`, `mcp_metrics_exporter_queue_capacity{exporter}`
//! - `mcp_metrics_exporter_cardinality_overflow_metric_points_total{exporter, metric_type}`
//! - `mcp_metrics_exporter_dimensions_dropped_metric_points_total{exporter, metric_type}`
//! - `mcp_metrics_exporter_pushes_total{exporter, outcome}` (`success`/`failure`; push exporters)
//! - `mcp_metrics_rate_limited_requests_total{service}`

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock, Weak};
use std::time::Duration;

use opentelemetry::KeyValue;
use opentelemetry::metrics::{Counter, Histogram, Meter, ObservableGauge};

use crate::component::Problem;
use crate::room::Room;

/// Bucket bounds of the request duration histogram, in seconds.
const REQUEST_DURATION_BUCKETS: [f64; 14] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// Instruments on one attached meter.
struct Instruments {
    id: u64,
    receiver_accepted: Counter<u64>,
    receiver_refused: Counter<u64>,
    request_duration: Histogram<f64>,
    exporter_sent: Counter<u64>,
    exporter_send_failed: Counter<u64>,
    exporter_enqueue_failed: Counter<u64>,
    cardinality_overflow: Counter<u64>,
    dimensions_dropped: Counter<u64>,
    pushes: Counter<u64>,
    rate_limited: Counter<u64>,
    _queue_size: ObservableGauge<u64>,
    _queue_capacity: ObservableGauge<u64>,
}

/// An exporter queue whose fill the gauges read when collected.
struct QueueEntry {
    exporter: String,
    room: Weak<Room>,
}

/// One service's telemetry: where it is recorded, and the queues whose fill it reads. Cheap to
/// clone; every clone is the same telemetry.
#[derive(Clone, Default)]
pub struct Telemetry(Arc<Hub>);

#[derive(Default)]
struct Hub {
    sinks: RwLock<Vec<Arc<Instruments>>>,
    queues: Mutex<Vec<QueueEntry>>,
    next_id: AtomicU64,
    /// Background tasks whose last run failed, by component (`exporters.sqlite`), with why:
    /// `/health` reports them until a run succeeds.
    background: Mutex<BTreeMap<String, String>>,
}

/// While it lives, the service's telemetry is recorded on the meter it was attached with.
#[must_use = "the telemetry is detached when the guard is dropped"]
pub struct TelemetryGuard {
    id: u64,
    hub: Weak<Hub>,
}

impl Drop for TelemetryGuard {
    fn drop(&mut self) {
        if let Some(hub) = self.hub.upgrade() {
            let mut sinks = hub.sinks.write().unwrap_or_else(|e| e.into_inner());
            sinks.retain(|sink| sink.id != self.id);
        }
    }
}

impl Telemetry {
    /// Records the service's telemetry on `meter` too, from now until the guard is dropped.
    pub fn attach(&self, meter: &Meter) -> TelemetryGuard {
        let id = self.0.next_id.fetch_add(1, Ordering::Relaxed);
        let gauges = Arc::downgrade(&self.0);
        let counter = |name: &'static str, description: &'static str| {
            meter
                .u64_counter(name)
                .with_description(description)
                .build()
        };
        let instruments = Instruments {
            id,
            receiver_accepted: counter(
                "mcp_metrics_receiver_accepted_metric_points",
                "Metric points a receiver took and handed to its pipelines",
            ),
            receiver_refused: counter(
                "mcp_metrics_receiver_refused_metric_points",
                "Metric points a receiver could not take: rejected alone or in a request refused after decoding",
            ),
            request_duration: meter
                .f64_histogram("mcp_metrics_receiver_request_duration")
                .with_description("Time from receiving a request to answering it")
                .with_unit("s")
                .with_boundaries(REQUEST_DURATION_BUCKETS.to_vec())
                .build(),
            exporter_sent: counter(
                "mcp_metrics_exporter_sent_metric_points",
                "Metric points an exporter delivered",
            ),
            exporter_send_failed: counter(
                "mcp_metrics_exporter_send_failed_metric_points",
                "Metric points an exporter gave up on after its retries",
            ),
            exporter_enqueue_failed: counter(
                "mcp_metrics_exporter_enqueue_failed_metric_points",
                "Metric points refused because the exporter's queue was full",
            ),
            cardinality_overflow: counter(
                "mcp_metrics_exporter_cardinality_overflow_metric_points",
                "Metric points whose labels would have passed the series limit; counted in the overflow series instead",
            ),
            dimensions_dropped: counter(
                "mcp_metrics_exporter_dimensions_dropped_metric_points",
                "Metric points recorded without some of their dimensions, which would have passed the most labels or label bytes a series carries",
            ),
            pushes: counter(
                "mcp_metrics_exporter_pushes",
                "Pushes of a push exporter (OTLP) to its endpoint, by outcome",
            ),
            rate_limited: counter(
                "mcp_metrics_rate_limited_requests",
                "Requests refused over the rate limit of the key's service",
            ),
            _queue_size: meter
                .u64_observable_gauge("mcp_metrics_exporter_queue_size")
                .with_description("Metric points waiting for or in export")
                .with_callback({
                    let hub = gauges.clone();
                    move |observer| {
                        for_each_queue(&hub, |exporter, capacity, free| {
                            let used = capacity.saturating_sub(free) as u64;
                            observer
                                .observe(used, &[KeyValue::new("exporter", exporter.to_owned())]);
                        })
                    }
                })
                .build(),
            _queue_capacity: meter
                .u64_observable_gauge("mcp_metrics_exporter_queue_capacity")
                .with_description("Most metric points an exporter's queue holds")
                .with_callback(move |observer| {
                    for_each_queue(&gauges, |exporter, capacity, _| {
                        let attributes = [KeyValue::new("exporter", exporter.to_owned())];
                        observer.observe(capacity as u64, &attributes);
                    })
                })
                .build(),
        };
        self.0
            .sinks
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .push(Arc::new(instruments));
        TelemetryGuard {
            id,
            hub: Arc::downgrade(&self.0),
        }
    }

    fn each(&self, record: impl Fn(&Instruments)) {
        let sinks = self.0.sinks.read().unwrap_or_else(|e| e.into_inner());
        for sink in sinks.iter() {
            record(sink);
        }
    }

    /// A component's background task (`sqlite` retention, say) failed its last run: the service
    /// reports `problem` in `/health` under `component` until [`background_ok`](Self::background_ok).
    pub fn background_failed(&self, component: &str, problem: impl Into<String>) {
        let mut failed = self.0.background.lock().unwrap_or_else(|e| e.into_inner());
        failed.insert(component.to_owned(), problem.into());
    }

    /// A component's background task ran well again (or the component stopped).
    pub fn background_ok(&self, component: &str) {
        let mut failed = self.0.background.lock().unwrap_or_else(|e| e.into_inner());
        failed.remove(component);
    }

    /// The background tasks whose last run failed.
    pub fn background_problems(&self) -> Vec<Problem> {
        let failed = self.0.background.lock().unwrap_or_else(|e| e.into_inner());
        failed
            .iter()
            .map(|(component, problem)| Problem {
                component: component.clone(),
                problem: problem.clone(),
            })
            .collect()
    }

    /// An exporter's queue was made: its fill is read from its `room`.
    pub fn queue_started(&self, exporter: &str, room: &Arc<Room>) {
        let mut queues = self.0.queues.lock().unwrap_or_else(|e| e.into_inner());
        queues.retain(|queue| queue.room.strong_count() > 0);
        queues.push(QueueEntry {
            exporter: exporter.to_owned(),
            room: Arc::downgrade(room),
        });
    }

    /// A receiver answered a request: how many of its metric points were taken and how many not.
    pub fn receiver_points(&self, receiver: &str, accepted: usize, refused: usize) {
        if accepted == 0 && refused == 0 {
            return;
        }
        let attributes = [KeyValue::new("receiver", receiver.to_owned())];
        self.each(|sink| {
            if accepted > 0 {
                sink.receiver_accepted.add(accepted as u64, &attributes);
            }
            if refused > 0 {
                sink.receiver_refused.add(refused as u64, &attributes);
            }
        });
    }

    /// A receiver answered a request after `elapsed`; `status` is its protocol's status code.
    pub fn receiver_request(&self, receiver: &str, status: u16, elapsed: Duration) {
        let attributes = [
            KeyValue::new("receiver", receiver.to_owned()),
            KeyValue::new("status_code", i64::from(status)),
        ];
        self.each(|sink| {
            sink.request_duration
                .record(elapsed.as_secs_f64(), &attributes)
        });
    }

    /// An exporter delivered `points` metric points.
    pub fn exporter_sent(&self, exporter: &str, points: usize) {
        let attributes = [KeyValue::new("exporter", exporter.to_owned())];
        self.each(|sink| sink.exporter_sent.add(points as u64, &attributes));
    }

    /// An exporter gave up on `points` metric points.
    pub fn exporter_send_failed(&self, exporter: &str, points: usize) {
        let attributes = [KeyValue::new("exporter", exporter.to_owned())];
        self.each(|sink| sink.exporter_send_failed.add(points as u64, &attributes));
    }

    /// An exporter's queue had no room for `points` metric points.
    pub fn exporter_enqueue_failed(&self, exporter: &str, points: usize) {
        let attributes = [KeyValue::new("exporter", exporter.to_owned())];
        self.each(|sink| sink.exporter_enqueue_failed.add(points as u64, &attributes));
    }

    /// An exporter folded `points` metric points of `metric_type` into its overflow series because
    /// their labels would have made a series past its limit.
    pub fn cardinality_overflow(&self, exporter: &str, metric_type: &str, points: usize) {
        let attributes = [
            KeyValue::new("exporter", exporter.to_owned()),
            KeyValue::new("metric_type", metric_type.to_owned()),
        ];
        self.each(|sink| sink.cardinality_overflow.add(points as u64, &attributes));
    }

    /// An exporter recorded `points` metric points of `metric_type` without some of their dimensions,
    /// because their labels would have passed the bounds of a series.
    pub fn dimensions_dropped(&self, exporter: &str, metric_type: &str, points: usize) {
        let attributes = [
            KeyValue::new("exporter", exporter.to_owned()),
            KeyValue::new("metric_type", metric_type.to_owned()),
        ];
        self.each(|sink| sink.dimensions_dropped.add(points as u64, &attributes));
    }

    /// A push exporter pushed to its endpoint, successfully or not.
    pub fn exporter_push(&self, exporter: &str, success: bool) {
        let attributes = [
            KeyValue::new("exporter", exporter.to_owned()),
            KeyValue::new("outcome", if success { "success" } else { "failure" }),
        ];
        self.each(|sink| sink.pushes.add(1, &attributes));
    }

    /// A request of the key of `service` was refused over its rate limit.
    pub fn rate_limited(&self, service: &str) {
        let attributes = [KeyValue::new("service", service.to_owned())];
        self.each(|sink| sink.rate_limited.add(1, &attributes));
    }
}

/// Reads the fill of every queue still alive.
fn for_each_queue(hub: &Weak<Hub>, mut observe: impl FnMut(&str, usize, usize)) {
    let Some(hub) = hub.upgrade() else {
        return;
    };
    let mut queues = hub.queues.lock().unwrap_or_else(|e| e.into_inner());
    queues.retain(|queue| queue.room.strong_count() > 0);
    for queue in queues.iter() {
        if let Some(room) = queue.room.upgrade() {
            observe(
                &queue.exporter,
                room.capacity(),
                room.capacity() - room.held(),
            );
        }
    }
}
