//! The three kinds of component and what they answer.

use std::net::SocketAddr;
use std::sync::Arc;

use async_trait::async_trait;
use tokio_util::sync::CancellationToken;

use crate::model::{Batch, RequestContext};

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Anything a batch can be handed to: a processor, an exporter's queue, a fan-out.
#[async_trait]
pub trait Consumer: Send + Sync {
    /// Takes the batch on, or refuses it as a whole. Once this returns `Ok`, the batch is the
    /// consumer's responsibility: it must reach the exporters or be counted as failed.
    async fn consume(&self, batch: Batch) -> Result<Outcome, Refusal>;

    /// Whether it has room for `metrics` more right now. A fan-out asks every branch before
    /// giving the batch to any, so that a full branch does not make the others see it twice
    /// when the batch is offered again.
    fn has_room(&self, _metrics: usize) -> bool {
        true
    }
}

/// A step of a pipeline: it transforms, judges or holds batches and hands them to the next consumer
/// it was built with.
#[async_trait]
pub trait Processor: Consumer {
    /// Hands on whatever it still holds; the engine calls it in pipeline order on shutdown, after
    /// the receivers have stopped.
    async fn shutdown(&self) {}

    /// Hands on whatever it holds now, and returns once the next step has it (`POST /flush`).
    async fn flush(&self) {}

    /// A rate limiter's view of the caller of `context`, without using up a request.
    fn rate_limit(&self, _context: &RequestContext) -> Option<RateLimitState> {
        None
    }

    /// Why it cannot take metrics right now (a full queue), if it cannot.
    fn problem(&self) -> Option<String> {
        None
    }
}

/// A component that is not well, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// `exporters.sqlite`, `processors.batch`, ...
    pub component: String,
    pub problem: String,
}

/// A caller's standing with a rate limiter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimitState {
    /// Requests per minute.
    pub limit: u32,
    /// Requests it may send right now.
    pub remaining: u32,
    /// Seconds until it may send `limit` at once again.
    pub reset_seconds: u64,
}

/// What the running service offers its components, e.g. for operator endpoints.
#[async_trait]
pub trait ServiceControl: Send + Sync {
    /// Hands on everything the processors hold, then waits until every exporter has exported
    /// what was queued; false if that took longer than `timeout`.
    async fn flush(&self, timeout: std::time::Duration) -> bool;

    /// The caller's standing with the first rate limiter that knows it.
    fn rate_limit(&self, context: &RequestContext) -> Option<RateLimitState>;

    /// What is wrong now: exporters failing for longer than the threshold, full queues. Empty
    /// when healthy.
    fn health(&self) -> Vec<Problem>;

    /// Why the service should not be sent traffic now (full queues, shutting down). Empty when
    /// ready.
    fn readiness(&self) -> Vec<Problem>;

    /// Re-reads the configuration and applies what changed; the errors if it is refused (the
    /// running pipelines go on).
    async fn reload(&self) -> Result<String, String>;
}

/// The end of a pipeline. The engine gives every exporter a queue, batching and retries, so an
/// exporter only says how to push one batch.
#[async_trait]
pub trait Exporter: Send + Sync {
    async fn export(&self, batch: &Batch) -> Result<(), ExportError>;

    /// Called once the exporter's queue is drained on shutdown.
    async fn shutdown(&self) -> Result<(), BoxError> {
        Ok(())
    }

    /// The address it serves on, for exporters that are scraped.
    fn local_addr(&self) -> Option<SocketAddr> {
        None
    }

    /// False when its config switched it off (no endpoint, `enabled: false`): the engine then
    /// sends it nothing, rather than copying every batch into a queue for nothing.
    fn is_enabled(&self) -> bool {
        true
    }
}

/// The start of a pipeline: it turns outside input into batches.
#[async_trait]
pub trait Receiver: Send + Sync {
    /// Serves until `shutdown` is cancelled, then stops taking input and returns once the input
    /// it had already taken is handed to `next`.
    async fn run(
        self: Box<Self>,
        next: Arc<dyn Consumer>,
        shutdown: CancellationToken,
    ) -> Result<(), BoxError>;

    /// The address it listens on, for receivers that listen.
    fn local_addr(&self) -> Option<SocketAddr> {
        None
    }
}

/// One metric a processor would not take, with the reason for the client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    pub index: usize,
    pub reason: String,
}

/// What a consumer tells the receiver about a batch it took.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Outcome {
    /// Metrics judged bad and not passed on.
    pub rejected: Vec<Rejection>,
    /// Response headers to add (rate-limit state, for example).
    pub headers: Vec<(String, String)>,
}

impl Outcome {
    /// Folds in what another branch said: a metric rejected anywhere is reported rejected.
    pub fn merge(&mut self, other: Outcome) {
        for rejection in other.rejected {
            if !self.rejected.iter().any(|r| r.index == rejection.index) {
                self.rejected.push(rejection);
            }
        }
        for header in other.headers {
            if !self.headers.iter().any(|(name, _)| *name == header.0) {
                self.headers.push(header);
            }
        }
    }
}

/// A request refused as a whole. The receiver answers it with the contract's error body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// The HTTP status.
    pub status: u16,
    /// The machine-readable `error` of the body, e.g. `invalid_api_key`.
    pub error: String,
    pub message: String,
    /// Seconds after which the client may try again (429, 503).
    pub retry_after: Option<u64>,
    pub headers: Vec<(String, String)>,
}

impl Refusal {
    pub fn new(status: u16, error: &str, message: impl Into<String>) -> Refusal {
        Refusal {
            status,
            error: error.to_owned(),
            message: message.into(),
            retry_after: None,
            headers: Vec::new(),
        }
    }

    /// 503: the service cannot take more right now.
    pub fn unavailable(message: impl Into<String>, retry_after: u64) -> Refusal {
        Refusal {
            retry_after: Some(retry_after),
            ..Refusal::new(503, "service_unavailable", message)
        }
    }
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}: {}", self.status, self.error, self.message)
    }
}

/// Why an export failed, and whether trying the same batch again may succeed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExportError {
    pub message: String,
    pub retryable: bool,
}

impl ExportError {
    pub fn retryable(message: impl Into<String>) -> ExportError {
        ExportError {
            message: message.into(),
            retryable: true,
        }
    }

    pub fn permanent(message: impl Into<String>) -> ExportError {
        ExportError {
            message: message.into(),
            retryable: false,
        }
    }
}

impl std::fmt::Display for ExportError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for ExportError {}
