//! The three kinds of component and what they answer.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use tokio_util::sync::CancellationToken;

use crate::model::{Batch, KeyInfo};
use crate::room::Room;

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Anything a batch can be handed to: a processor, an exporter's queue, a fan-out.
#[async_trait]
pub trait Consumer: Send + Sync {
    /// Takes the batch on, or refuses it as a whole. Once this returns `Ok`, the batch is the
    /// consumer's responsibility: it must reach the exporters or be counted as failed.
    async fn consume(&self, batch: Batch) -> Result<Outcome, Refusal>;
}

/// A step of a pipeline: it transforms, judges or holds batches and hands them to the next consumer
/// it was built with.
#[async_trait]
pub trait Processor: Consumer {
    /// Judges a request from its head alone, before its body is read (`auth` checks the key,
    /// `rate_limit` spends the caller's token), and writes what it learned into the head. The
    /// engine asks every processor of every pipeline the request would enter, in order, and reads
    /// the body only if all admit it.
    async fn admit(&self, _head: &mut RequestHead) -> Result<(), Refusal> {
        Ok(())
    }

    /// The bound on the metrics it holds, for a processor that holds them (`batch`): the engine
    /// refuses a request up front when it is full and reserves room in it before handing a
    /// request on, which `consume` then takes with [`Room::take_for`](crate::Room::take_for).
    fn room(&self) -> Option<Arc<Room>> {
        None
    }

    /// Hands on whatever it still holds; the engine calls it in pipeline order on shutdown, after
    /// the receivers have stopped.
    async fn shutdown(&self) {}

    /// Hands on whatever it holds now, and returns once the next step has it (`POST /flush`,
    /// draining).
    async fn flush(&self) {}
}

/// What a request's head tells, before its body is read, and what the processors that judge
/// heads learned from it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RequestHead {
    /// The credential as presented (an API key), if any.
    pub credential: Option<String>,
    /// Only asks what the request would be told (`GET /rate-limit`): nothing is spent or reserved.
    pub look_only: bool,
    /// The key behind the credential, once checked.
    pub key: Option<KeyInfo>,
    /// The caller's standing with its rate limiter, once judged.
    pub standing: Option<RateLimitState>,
}

/// The pipelines a receiver feeds, as the engine offers them: a request is admitted from its head
/// first, and only an admitted request's metrics are handed on.
#[async_trait]
pub trait Pipelines: Send + Sync {
    /// Judges a request from its head alone: every processor that judges heads, in pipeline order,
    /// then whether every pipeline has room. The cheapest refusal comes first.
    async fn admit(&self, head: RequestHead) -> Result<Box<dyn Admitted>, Refusal>;
}

/// A request admitted by [`Pipelines::admit`], whose metrics are yet to be handed on.
#[async_trait]
pub trait Admitted: Send + Sync {
    /// The head, with what the processors learned (the key, the rate-limit standing).
    fn head(&self) -> &RequestHead;

    /// Hands the request's metrics to every pipeline it was admitted to, or to none: room for
    /// them is reserved in all of them first, so a refused request was taken by none and can be
    /// sent again without duplicates.
    async fn deliver(self: Box<Self>, batch: Batch) -> Result<Outcome, Refusal>;
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

/// What the running service offers the components that serve operators.
#[async_trait]
pub trait ServiceControl: Send + Sync {
    /// Hands on everything the processors hold, then waits until every exporter has exported
    /// what was queued; false if that took longer than `timeout`.
    async fn flush(&self, timeout: std::time::Duration) -> bool;

    /// Liveness: what a restart could cure or a person must see (exporters failing for longer
    /// than the threshold). A busy service is alive. Empty when healthy.
    fn health(&self) -> Vec<Problem>;

    /// Readiness: why the service should not be sent traffic now (full queues, an exporter
    /// failing, shutting down). Empty when ready.
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
    /// it had already taken is handed to `pipelines`.
    async fn run(
        self: Box<Self>,
        pipelines: Arc<dyn Pipelines>,
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
}

impl Outcome {
    /// Folds in what another branch said: a metric rejected anywhere is reported rejected.
    pub fn merge(&mut self, other: Outcome) {
        for rejection in other.rejected {
            if !self.rejected.iter().any(|r| r.index == rejection.index) {
                self.rejected.push(rejection);
            }
        }
    }
}

/// Why a request was refused as a whole. The receiver says it in its own protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    /// No credential was presented.
    MissingCredential,
    /// The credential is not an active key.
    InvalidCredential,
    /// The key may not do this.
    Forbidden,
    /// The request names another service than its key's, and such requests are refused.
    ServiceMismatch,
    /// Over the caller's rate limit; it may try again after `retry_after`.
    RateLimited {
        standing: RateLimitState,
        retry_after: Duration,
    },
    /// No room right now (a full queue, shutting down); it may try again after `retry_after`.
    Busy { retry_after: Duration },
    /// More than can ever be taken at once.
    TooLarge,
    /// The request as a whole breaks a rule (a missing or overlong `service`).
    Invalid,
}

/// A request refused as a whole: why, and a message for the client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub reason: Reason,
    pub message: String,
}

impl Refusal {
    pub fn new(reason: Reason, message: impl Into<String>) -> Refusal {
        Refusal {
            reason,
            message: message.into(),
        }
    }

    /// The service cannot take more right now.
    pub fn busy(message: impl Into<String>, retry_after: Duration) -> Refusal {
        Refusal::new(Reason::Busy { retry_after }, message)
    }

    pub fn invalid(message: impl Into<String>) -> Refusal {
        Refusal::new(Reason::Invalid, message)
    }

    pub fn too_large(message: impl Into<String>) -> Refusal {
        Refusal::new(Reason::TooLarge, message)
    }
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:?}: {}", self.reason, self.message)
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
