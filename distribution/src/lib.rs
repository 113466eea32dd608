//! The components this distribution of mcp-metrics links, in the manner of the OpenTelemetry
//! Collector builder's `components.go`. Each plugin crate registers its components with
//! `inventory`; naming the crate here is what links it into the binary, and so what makes its
//! components known to `pipelines.yaml`. The engine (`src/`) names only this crate.

use mcp_metrics_exporters as _;
use mcp_metrics_processors as _;
use mcp_metrics_receivers as _;
// An example plugin from a crate of its own (`contrib/stdout-exporter`).
use mcp_metrics_stdout_exporter as _;
