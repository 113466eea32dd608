//! The plugin API of mcp-metrics: what a receiver, processor or exporter is, the data that flows
//! between them, and the registry through which the engine finds them by type name.
//!
//! A plugin crate depends on this crate only. It defines a config type (serde, `deny_unknown_fields`,
//! defaults), implements one of [`ReceiverConfig`], [`ProcessorConfig`] or [`ExporterConfig`] on it,
//! and registers it next to the type:
//!
//! ```ignore
//! inventory::submit!(ExporterRegistration::of::<StdoutConfig>("stdout", "prints every batch"));
//! ```

mod ack;
pub mod bounds;
mod component;
mod listeners;
mod model;
mod panic;
mod redact;
mod registry;
mod room;
pub mod telemetry;

pub use ack::{Ack, AckReceiver, Delivery};
pub use component::{
    Admitted, BoxError, Consumer, ExportError, Exporter, Outcome, Pipelines, Problem, Processor,
    RateLimitState, Reason, Receiver, Refusal, Rejection, RequestHead, ServiceControl,
};
pub use listeners::Listeners;
pub use model::{Batch, KeyInfo, Metric, MetricType, Request, RequestContext, parse_timestamp};
pub use panic::panic_message;
pub use redact::redact_url_credentials;
pub use registry::{
    BuildContext, ComponentConfig, ConfigIssue, ExporterConfig, ExporterRegistration, Extension,
    ExtensionConfig, ExtensionRegistration, Extensions, ProcessorConfig, ProcessorRegistration,
    ReceiverConfig, ReceiverRegistration, Registration, closest, hint_unknown_field,
};
pub use room::{Permit, Reservation, Room};
pub use telemetry::Telemetry;

// Re-exported so a plugin crate needs no direct dependency on them.
pub use async_trait::async_trait;
pub use inventory;
pub use serde_yaml;
pub use tokio_util::sync::CancellationToken;
