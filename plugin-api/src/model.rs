//! The data that flows through a pipeline: metrics grouped by the request that brought them.

use std::fmt;
use std::sync::Arc;

use chrono::{DateTime, NaiveDateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::ack::Ack;
use crate::room::{Permit, Reservation, Room};

/// The kinds of metric the contract knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MetricType {
    AuthRequest,
    ToolDiscovery,
    ToolExecution,
    RegistryOperation,
    HealthCheck,
    ProtocolLatency,
    Custom,
}

impl MetricType {
    pub const ALL: [MetricType; 7] = [
        MetricType::AuthRequest,
        MetricType::ToolDiscovery,
        MetricType::ToolExecution,
        MetricType::RegistryOperation,
        MetricType::HealthCheck,
        MetricType::ProtocolLatency,
        MetricType::Custom,
    ];

    /// Its place in [`ALL`](Self::ALL), for tables indexed by type.
    pub fn index(self) -> usize {
        self as usize
    }

    /// The name on the wire and in the database.
    pub fn as_str(self) -> &'static str {
        match self {
            MetricType::AuthRequest => "auth_request",
            MetricType::ToolDiscovery => "tool_discovery",
            MetricType::ToolExecution => "tool_execution",
            MetricType::RegistryOperation => "registry_operation",
            MetricType::HealthCheck => "health_check",
            MetricType::ProtocolLatency => "protocol_latency",
            MetricType::Custom => "custom",
        }
    }

    pub fn from_name(name: &str) -> Option<MetricType> {
        MetricType::ALL.into_iter().find(|t| t.as_str() == name)
    }
}

impl fmt::Display for MetricType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One measurement, as the client sent it once decoded.
#[derive(Debug, Clone, PartialEq)]
pub struct Metric {
    /// Position in the client's `metrics` array, so a rejection can name it.
    pub index: usize,
    pub metric_type: MetricType,
    /// The client's timestamp, or the time of receipt when it sent none.
    pub timestamp: DateTime<Utc>,
    pub value: f64,
    pub duration_ms: Option<f64>,
    pub dimensions: Map<String, Value>,
    pub metadata: Map<String, Value>,
}

/// The authenticated API key behind a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyInfo {
    pub id: i64,
    pub service_name: String,
    /// Requests per minute this key may send; none means the service's default.
    pub rate_limit: Option<u32>,
    /// May use the `/admin` endpoints.
    pub is_admin: bool,
}

/// What is known about the request that brought a group of metrics.
#[derive(Debug, Clone, PartialEq)]
pub struct RequestContext {
    pub request_id: String,
    pub service: String,
    pub version: Option<String>,
    pub instance_id: Option<String>,
    pub received_at: DateTime<Utc>,
    /// The API key behind the request, once a component that checks keys admitted it.
    pub key: Option<KeyInfo>,
    /// The client's name for this request (`Idempotency-Key`): a store that has seen it from the
    /// same key stores the request's metrics no second time.
    pub idempotency_key: Option<String>,
}

/// The metrics of one client request and its context.
#[derive(Debug, Clone, PartialEq)]
pub struct Request {
    pub context: Arc<RequestContext>,
    pub metrics: Vec<Metric>,
}

/// What flows between components: one or more requests' metrics (more than one once batched),
/// the acknowledgements that resolve when the last exporter is done with them, and the room the
/// engine reserved for them on admission. Requests are shared, so the copies a fan-out hands to
/// several exporters cost a reference count each; a processor that changes one takes it with
/// `Arc::make_mut`, which copies it only if it is shared.
#[derive(Debug, Clone, Default)]
pub struct Batch {
    pub requests: Vec<Arc<Request>>,
    acks: Vec<Ack>,
    reserved: Vec<Arc<Reservation>>,
}

impl Batch {
    pub fn new(request: Request, ack: Option<Ack>) -> Batch {
        Batch {
            requests: vec![Arc::new(request)],
            acks: ack.into_iter().collect(),
            reserved: Vec::new(),
        }
    }

    /// Whether a client is waiting for these metrics to be delivered (durable acknowledgements):
    /// such a batch is not held for a timer.
    pub fn awaits_delivery(&self) -> bool {
        !self.acks.is_empty()
    }

    /// Carries room reserved for these metrics in a component down the pipeline.
    pub fn reserve(&mut self, reservation: Arc<Reservation>) {
        self.reserved.push(reservation);
    }

    /// The room reserved for this batch in `room`, taken out so no other copy can use it.
    pub fn take_reserved(&self, room: &Room) -> Option<Permit> {
        self.reserved.iter().find_map(|r| r.take_if_of(room))
    }

    /// The number of metrics, across requests.
    pub fn len(&self) -> usize {
        self.requests.iter().map(|r| r.metrics.len()).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.requests.iter().all(|r| r.metrics.is_empty())
    }

    /// Every metric with the context of its request.
    pub fn metrics(&self) -> impl Iterator<Item = (&RequestContext, &Metric)> {
        self.requests
            .iter()
            .flat_map(|r| r.metrics.iter().map(move |m| (&*r.context, m)))
    }

    /// Appends `other`, taking over its acknowledgements.
    pub fn append(&mut self, mut other: Batch) {
        self.requests.append(&mut other.requests);
        self.acks.append(&mut other.acks);
        self.reserved.append(&mut other.reserved);
    }

    /// Splits off and returns at most `max` metrics from the front: whole requests while they
    /// fit, and part of the first request only when it alone is larger than `max`. A request
    /// larger than `max` is thus always cut at the same metrics, whatever came before it, which
    /// is what lets a store recognise the parts of a resent request (`Idempotency-Key`). Both
    /// halves keep the acknowledgements, so a request counts as delivered only when both are.
    pub fn take_front(&mut self, max: usize) -> Batch {
        let mut front = Batch {
            requests: Vec::new(),
            acks: self.acks.clone(),
            reserved: self.reserved.clone(),
        };
        let mut room = max;
        while room > 0 && !self.requests.is_empty() {
            if self.requests[0].metrics.len() <= room {
                room -= self.requests[0].metrics.len();
                front.requests.push(self.requests.remove(0));
            } else if !front.requests.is_empty() {
                break;
            } else {
                let request = Arc::make_mut(&mut self.requests[0]);
                let rest = request.metrics.split_off(room);
                let head = std::mem::replace(&mut request.metrics, rest);
                front.requests.push(Arc::new(Request {
                    context: request.context.clone(),
                    metrics: head,
                }));
                room = 0;
            }
        }
        front
    }

    /// Marks every request in this batch as not delivered.
    pub fn fail(&self, reason: &str) {
        for ack in &self.acks {
            ack.fail(reason);
        }
    }
}

/// Reads a client timestamp: RFC 3339, or a naive ISO 8601 date-time (Python's
/// `datetime.utcnow().isoformat()`), which is taken as UTC.
pub fn parse_timestamp(text: &str) -> Result<DateTime<Utc>, String> {
    if let Ok(at) = DateTime::parse_from_rfc3339(text) {
        return Ok(at.with_timezone(&Utc));
    }
    for format in ["%Y-%m-%dT%H:%M:%S%.f", "%Y-%m-%d %H:%M:%S%.f"] {
        if let Ok(naive) = NaiveDateTime::parse_from_str(text, format) {
            return Ok(naive.and_utc());
        }
    }
    Err(format!(
        "timestamp {text:?} is not RFC 3339 (e.g. 2024-01-15T10:30:00Z) nor a naive UTC date-time"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_metric_type_index_is_its_place_in_all() {
        for (place, metric_type) in MetricType::ALL.into_iter().enumerate() {
            assert_eq!(metric_type.index(), place);
        }
    }

    fn request(id: &str, n: usize) -> Request {
        let context = RequestContext {
            request_id: id.into(),
            service: "svc".into(),
            version: None,
            instance_id: None,
            received_at: Utc::now(),
            key: None,
            idempotency_key: None,
        };
        let metric = |index| Metric {
            index,
            metric_type: MetricType::Custom,
            timestamp: Utc::now(),
            value: 1.0,
            duration_ms: None,
            dimensions: Map::new(),
            metadata: Map::new(),
        };
        Request {
            context: Arc::new(context),
            metrics: (0..n).map(metric).collect(),
        }
    }

    #[test]
    fn take_front_keeps_requests_whole_when_they_fit() {
        let mut batch = Batch::new(request("a", 3), None);
        batch.append(Batch::new(request("b", 4), None));
        let front = batch.take_front(5);
        assert_eq!((front.len(), batch.len()), (3, 4));
        assert_eq!(batch.requests[0].context.request_id, "b");
        let front = batch.take_front(7);
        assert_eq!((front.len(), batch.len()), (4, 0));
    }

    #[test]
    fn take_front_cuts_a_large_request_at_the_same_metrics_whatever_came_before() {
        let mut alone = Batch::new(request("big", 7), None);
        let mut behind = Batch::new(request("small", 2), None);
        behind.append(Batch::new(request("big", 7), None));
        behind.take_front(5);
        for batch in [&mut alone, &mut behind] {
            let front = batch.take_front(5);
            assert_eq!(front.len(), 5);
            assert_eq!(batch.requests[0].metrics[0].index, 5);
        }
    }

    #[test]
    fn timestamps_with_and_without_zone() {
        let utc = parse_timestamp("2024-01-15T10:30:00Z").unwrap();
        assert_eq!(parse_timestamp("2024-01-15T12:30:00+02:00").unwrap(), utc);
        assert_eq!(parse_timestamp("2024-01-15T10:30:00").unwrap(), utc);
        let naive = parse_timestamp("2024-01-15T10:30:00.123456").unwrap();
        assert_eq!(naive.timestamp_subsec_micros(), 123456);
        assert!(parse_timestamp("yesterday").is_err());
    }
}
