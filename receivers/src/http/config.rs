use std::sync::Arc;
use std::time::Duration;

use bytesize::ByteSize;
use mcp_metrics_plugin::{
    BoxError, BuildContext, ComponentConfig, Receiver, ReceiverConfig, ReceiverRegistration,
    ServiceControl, async_trait, inventory,
};
use serde::{Deserialize, Serialize};

use super::HttpReceiver;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpConfig {
    /// The address to listen on.
    pub host: String,
    /// The port to listen on; 0 picks a free one.
    pub port: u16,
    /// Largest request body: bytes, or a size such as `10MiB` (10 x 2^20 bytes) or `10MB` (10^7).
    pub max_request_size: ByteSize,
    /// Most metrics in one request; a larger request is refused whole with 413.
    pub max_metrics_per_request: usize,
    /// Most requests handled at once; past it, 503. With `max_request_size` it bounds the memory
    /// requests in flight can take.
    pub max_concurrent_requests: usize,
    /// Answer 200 only once every exporter has the metrics (for SQLite: committed), instead of
    /// once they are queued.
    pub acknowledgements: bool,
    /// The database whose API keys guard the operator endpoints (`/rate-limit`, `/flush`,
    /// `/admin/...`) and which `/admin` reports on; without it those endpoints answer 404.
    pub database: Option<std::path::PathBuf>,
    /// With `acknowledgements`, how long to wait for delivery before answering 503.
    #[serde(with = "humantime_serde")]
    pub acknowledgement_timeout: Duration,
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
        }
    }
}

impl ComponentConfig for HttpConfig {
    fn validate(&self) -> Vec<String> {
        let mut problems = Vec::new();
        if self.max_request_size.as_u64() == 0 {
            problems.push("max_request_size: must be more than zero".into());
        }
        if self.max_metrics_per_request == 0 {
            problems.push("max_metrics_per_request: must be more than zero".into());
        }
        if self.max_concurrent_requests == 0 {
            problems.push("max_concurrent_requests: must be more than zero".into());
        }
        problems
    }
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
