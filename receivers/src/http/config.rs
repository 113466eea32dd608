use std::sync::Arc;
use std::time::Duration;

use bytesize::ByteSize;
use mcp_metrics_plugin::bounds::{HOUR, MILLISECOND, out_of_range};
use mcp_metrics_plugin::{
    BoxError, BuildContext, ComponentConfig, Receiver, ReceiverConfig, ReceiverRegistration,
    ServiceControl, async_trait, inventory,
};
use mcp_metrics_store::Location;
use serde::{Deserialize, Serialize};

use super::HttpReceiver;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpConfig {
    /// The address to listen on.
    pub host: String,
    /// The port to listen on; 0 picks a free one.
    pub port: u16,
    /// Largest request body: bytes, or a size such as `10MiB` (10 x 2^20 bytes) or `10MB` (10^7);
    /// from 1KiB to 1GiB.
    pub max_request_size: ByteSize,
    /// Most metrics in one request, from 1 to 1000000; a larger request is refused whole with 413.
    pub max_metrics_per_request: usize,
    /// Most requests handled at once, from 1 to 100000; past it, 503. With `max_request_size` it
    /// bounds the memory requests in flight can take.
    pub max_concurrent_requests: usize,
    /// Answer 200 only once every exporter has the metrics (for SQLite: committed), instead of
    /// once they are queued.
    pub acknowledgements: bool,
    /// The database the operator endpoints (`/rate-limit`, `/flush`, `/admin/...`) act on and
    /// report on: the id of a `database` extension, or a SQLite file path, `sqlite:///path` or
    /// `postgres://user:pass@host/db`; without it those endpoints answer 404. Their callers are checked by the
    /// pipelines' `auth`, as for `POST /metrics`.
    pub database: Option<String>,
    /// With `acknowledgements`, how long to wait for delivery before answering 503; 1ms to 1h.
    #[serde(with = "humantime_serde")]
    pub acknowledgement_timeout: Duration,
    /// How long a connection may take to send its first byte, and then a request's head, counted
    /// from that byte or its previous answer; past it the connection is closed. It is thus also
    /// the idle keep-alive timeout. From 1ms to 1h.
    #[serde(with = "humantime_serde")]
    pub header_read_timeout: Duration,
    /// How long a request's whole body may take to arrive once its head has; past it the answer
    /// is 408 `request_timeout` and the connection is closed. From 1ms to 1h.
    #[serde(with = "humantime_serde")]
    pub body_read_timeout: Duration,
    /// Most connections open at once, from 1 to 100000; past it new ones wait in the listen
    /// backlog until one closes.
    pub max_connections: usize,
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            host: "0.0.0.0".into(),
            port: 8890,
            max_request_size: ByteSize::mib(10),
            max_metrics_per_request: 5_000,
            max_concurrent_requests: 256,
            acknowledgements: false,
            acknowledgement_timeout: Duration::from_secs(30),
            database: None,
            header_read_timeout: Duration::from_secs(10),
            body_read_timeout: Duration::from_secs(30),
            max_connections: 1024,
        }
    }
}

impl ComponentConfig for HttpConfig {
    fn validate(&self) -> Vec<String> {
        let mut problems = Vec::new();
        if let Some(Err(problem)) = self.database.as_deref().map(Location::parse) {
            problems.push(format!("database: {problem}"));
        }
        if !(MIN_REQUEST_SIZE..=MAX_REQUEST_SIZE).contains(&self.max_request_size) {
            problems.push("max_request_size: must be from 1KiB to 1GiB".into());
        }
        problems.extend(
            [
                out_of_range(
                    "max_metrics_per_request",
                    self.max_metrics_per_request,
                    1..=1_000_000,
                ),
                // Its semaphore panics past 2^61 permits, and the receiver with it.
                out_of_range(
                    "max_concurrent_requests",
                    self.max_concurrent_requests,
                    1..=100_000,
                ),
            ]
            .into_iter()
            .flatten(),
        );
        problems.extend(listener_problems(
            self.header_read_timeout,
            self.body_read_timeout,
            self.max_connections,
        ));
        problems.extend(out_of_range(
            "acknowledgement_timeout",
            self.acknowledgement_timeout,
            MILLISECOND..=HOUR,
        ));
        problems
    }
}

/// The range of `max_request_size`: room for a request of a few metrics, up to what one request
/// held in memory (times `max_concurrent_requests`) may sanely take.
const MIN_REQUEST_SIZE: ByteSize = ByteSize::kib(1);
const MAX_REQUEST_SIZE: ByteSize = ByteSize::gib(1);

/// The ranges of a listener's bounds: timeouts from 1 ms to 1 h, from 1 to 100000 connections.
pub fn listener_problems(
    header_read_timeout: Duration,
    body_read_timeout: Duration,
    max_connections: usize,
) -> Vec<String> {
    [
        out_of_range(
            "header_read_timeout",
            header_read_timeout,
            MILLISECOND..=HOUR,
        ),
        out_of_range("body_read_timeout", body_read_timeout, MILLISECOND..=HOUR),
        out_of_range("max_connections", max_connections, 1..=100_000),
    ]
    .into_iter()
    .flatten()
    .collect()
}

#[async_trait]
impl ReceiverConfig for HttpConfig {
    async fn build(
        &self,
        cx: &BuildContext,
        control: Arc<dyn ServiceControl>,
    ) -> Result<Box<dyn Receiver>, BoxError> {
        Ok(Box::new(
            HttpReceiver::bind(cx, control, self.clone()).await?,
        ))
    }
}

inventory::submit!(ReceiverRegistration::of::<HttpConfig>(
    "http",
    "POST /metrics and GET /health, the wire contract of the MCP Gateway's metrics clients"
));
