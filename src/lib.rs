//! mcp-metrics: the engine. It reads `pipelines.yaml`, builds the receivers, processors and
//! exporters it names through the plugin registry, runs them, and drains them on shutdown.
//! The built-in plugins live in their own crates; linking them here is what registers them.

pub mod config;
pub mod control;
pub mod fanout;
pub mod graph;
pub mod probe;
pub mod queue;
pub mod service;

pub use config::{ServiceConfig, load_file, parse};
pub use service::{ConfigSource, Service};

// `inventory` only sees plugin crates that the binary links; naming them links them.
use mcp_metrics_exporters as _;
use mcp_metrics_processors as _;
use mcp_metrics_receivers as _;
use mcp_metrics_stdout_exporter as _;
