//! `stdout`: prints every batch it is given, for seeing what a pipeline carries (the OpenTelemetry
//! Collector's `debug` exporter). It is an example of a plugin in a crate of its own: it depends
//! on the plugin API only, registers itself with `inventory`, and the distribution links it with
//! one dependency line and one `use mcp_metrics_stdout_exporter as _;` in `distribution/`.

use std::io::Write;

use mcp_metrics_plugin::{
    Batch, BoxError, BuildContext, ComponentConfig, ExportError, Exporter, ExporterConfig,
    ExporterRegistration, async_trait, inventory,
};
use serde::{Deserialize, Serialize};
use serde_json::json;

/// How much to print.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Verbosity {
    /// One line per batch: how many metrics, of which types.
    #[default]
    Basic,
    /// One JSON line per metric, with its request's context.
    Detailed,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StdoutConfig {
    pub verbosity: Verbosity,
}

impl ComponentConfig for StdoutConfig {}

#[async_trait]
impl ExporterConfig for StdoutConfig {
    async fn build(&self, _cx: &BuildContext) -> Result<Box<dyn Exporter>, BoxError> {
        Ok(Box::new(StdoutExporter {
            verbosity: self.verbosity,
        }))
    }
}

inventory::submit!(ExporterRegistration::of::<StdoutConfig>(
    "stdout",
    "prints every batch to standard output (example plugin crate)"
));

pub struct StdoutExporter {
    verbosity: Verbosity,
}

#[async_trait]
impl Exporter for StdoutExporter {
    async fn export(&self, batch: &Batch) -> Result<(), ExportError> {
        let text = render(batch, self.verbosity);
        std::io::stdout()
            .lock()
            .write_all(text.as_bytes())
            .map_err(|e| ExportError::retryable(format!("stdout: {e}")))
    }
}

/// The lines printed for a batch.
pub fn render(batch: &Batch, verbosity: Verbosity) -> String {
    match verbosity {
        Verbosity::Basic => {
            let mut types: Vec<&str> = batch
                .metrics()
                .map(|(_, m)| m.metric_type.as_str())
                .collect();
            types.sort_unstable();
            types.dedup();
            format!(
                "batch: {} metrics from {} requests; types: {}\n",
                batch.len(),
                batch.requests.len(),
                types.join(", ")
            )
        }
        Verbosity::Detailed => batch
            .metrics()
            .map(|(context, metric)| {
                let line = json!({
                    "request_id": context.request_id,
                    "service": context.service,
                    "type": metric.metric_type.as_str(),
                    "timestamp": metric.timestamp.to_rfc3339(),
                    "value": metric.value,
                    "duration_ms": metric.duration_ms,
                    "dimensions": metric.dimensions,
                    "metadata": metric.metadata,
                });
                format!("{line}\n")
            })
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use mcp_metrics_plugin::serde_yaml;
    use mcp_metrics_plugin::{Metric, MetricType, Registration, Request, RequestContext};

    fn batch() -> Batch {
        let context = RequestContext {
            request_id: "req_1".into(),
            service: "auth-server".into(),
            version: None,
            instance_id: None,
            received_at: chrono::Utc::now(),
            key: None,
            idempotency_key: None,
        };
        let metric = |metric_type| Metric {
            index: 0,
            metric_type,
            timestamp: chrono::Utc::now(),
            value: 2.5,
            duration_ms: Some(10.0),
            dimensions: serde_json::from_value(json!({"server": "mcpgw"})).unwrap(),
            metadata: Default::default(),
        };
        let request = Request {
            context: Arc::new(context),
            metrics: vec![
                metric(MetricType::AuthRequest),
                metric(MetricType::Custom),
                metric(MetricType::AuthRequest),
            ],
        };
        Batch::new(request, None)
    }

    #[test]
    fn basic_prints_one_line_per_batch() {
        assert_eq!(
            render(&batch(), Verbosity::Basic),
            "batch: 3 metrics from 1 requests; types: auth_request, custom\n"
        );
    }

    #[test]
    fn detailed_prints_one_json_line_per_metric() {
        let text = render(&batch(), Verbosity::Detailed);
        let lines: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines.len(), 3);
        assert_eq!(lines[0]["service"], "auth-server");
        assert_eq!(lines[1]["type"], "custom");
        assert_eq!(lines[2]["dimensions"]["server"], "mcpgw");
    }

    #[test]
    fn it_is_registered_and_its_config_is_checked() {
        let registration = Registration::<dyn ExporterConfig>::find("stdout").expect("registered");
        assert!(
            registration
                .decode(serde_yaml::from_str("verbosity: detailed").unwrap())
                .is_ok()
        );
        let issues = registration
            .decode(serde_yaml::from_str("verbosity: loud").unwrap())
            .err()
            .unwrap();
        assert!(
            issues[0].message.contains("unknown variant `loud`"),
            "{issues:?}"
        );
    }
}
