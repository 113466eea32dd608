//! mcp-metrics: the engine. It reads `pipelines.yaml`, builds the receivers, processors and
//! exporters it names through the plugin registry, runs them, and drains them on shutdown.
//! The plugins live in crates of their own; `distribution/` lists the ones this binary links.

pub mod config;
pub mod control;
pub mod fanout;
pub mod graph;
pub mod probe;
pub mod queue;
pub mod service;

pub use config::{ServiceConfig, load_file, parse};
pub use service::{ConfigSource, Service, Signals};

// `inventory` only sees plugin crates that the binary links; naming the distribution links them.
use mcp_metrics_distribution as _;
