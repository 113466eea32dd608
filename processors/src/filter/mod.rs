//! `filter`: keeps or drops metrics by type, service and dimension values, so one receiver can
//! feed pipelines that each take their share. Dropped metrics are not rejections: the client is
//! not told they were bad, they just do not go down this pipeline.

mod config;

pub use config::{FilterConfig, Match};

use std::sync::Arc;

use mcp_metrics_plugin::{Batch, Consumer, Metric, Outcome, Processor, Refusal, async_trait};
use serde_json::Value;

pub struct FilterProcessor {
    config: FilterConfig,
    next: Arc<dyn Consumer>,
}

#[async_trait]
impl Consumer for FilterProcessor {
    async fn consume(&self, mut batch: Batch) -> Result<Outcome, Refusal> {
        for request in &mut batch.requests {
            let request = Arc::make_mut(request);
            let service = request.context.service.as_str();
            request
                .metrics
                .retain(|metric| self.config.keeps(service, metric));
        }
        batch.requests.retain(|request| !request.metrics.is_empty());
        if batch.is_empty() {
            return Ok(Outcome::default());
        }
        self.next.consume(batch).await
    }
}

impl Processor for FilterProcessor {}

impl FilterConfig {
    /// Kept if it matches `include` (when given) and does not match `exclude` (when given).
    pub fn keeps(&self, service: &str, metric: &Metric) -> bool {
        let included = self
            .include
            .as_ref()
            .is_none_or(|m| m.matches(service, metric));
        let excluded = self
            .exclude
            .as_ref()
            .is_some_and(|m| m.matches(service, metric));
        included && !excluded
    }
}

impl Match {
    /// Every condition given holds: the type is one of `metric_types`, the service one of
    /// `services`, and each of `dimensions` has the value given.
    pub fn matches(&self, service: &str, metric: &Metric) -> bool {
        let type_ok =
            self.metric_types.is_empty() || self.metric_types.contains(&metric.metric_type);
        let service_ok = self.services.is_empty() || self.services.iter().any(|s| s == service);
        let dimensions_ok = self.dimensions.iter().all(|(key, wanted)| {
            metric
                .dimensions
                .get(key)
                .is_some_and(|value| as_text(value) == *wanted)
        });
        type_ok && service_ok && dimensions_ok
    }
}

/// A dimension value as the text a config compares it with: `true`, `42`, `mcpgw`.
fn as_text(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::Utc;
    use mcp_metrics_plugin::MetricType;
    use serde_json::json;

    fn metric(metric_type: MetricType, dimensions: Value) -> Metric {
        Metric {
            index: 0,
            metric_type,
            timestamp: Utc::now(),
            value: 1.0,
            duration_ms: None,
            dimensions: dimensions.as_object().cloned().unwrap_or_default(),
            metadata: Default::default(),
        }
    }

    fn config(yaml: &str) -> FilterConfig {
        serde_yaml::from_str(yaml).unwrap()
    }

    #[test]
    fn include_keeps_only_what_matches_every_condition() {
        let filter = config(
            "include: {metric_types: [auth_request], dimensions: {server: mcpgw, success: true}}",
        );
        let auth = metric(
            MetricType::AuthRequest,
            json!({"server": "mcpgw", "success": true}),
        );
        assert!(filter.keeps("auth-server", &auth));
        let other_server = metric(
            MetricType::AuthRequest,
            json!({"server": "other", "success": true}),
        );
        assert!(!filter.keeps("auth-server", &other_server));
        let tool = metric(
            MetricType::ToolExecution,
            json!({"server": "mcpgw", "success": true}),
        );
        assert!(!filter.keeps("auth-server", &tool));
    }

    #[test]
    fn exclude_drops_what_matches() {
        let filter = config("exclude: {metric_types: [health_check], services: [registry]}");
        assert!(!filter.keeps("registry", &metric(MetricType::HealthCheck, json!({}))));
        assert!(filter.keeps("auth-server", &metric(MetricType::HealthCheck, json!({}))));
        assert!(filter.keeps("registry", &metric(MetricType::Custom, json!({}))));
    }

    #[test]
    fn no_conditions_keep_everything() {
        assert!(config("{}").keeps("any", &metric(MetricType::Custom, json!({}))));
    }
}
