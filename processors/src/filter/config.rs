use std::collections::BTreeMap;
use std::sync::Arc;

use mcp_metrics_plugin::{
    BoxError, BuildContext, ComponentConfig, Consumer, MetricType, Processor, ProcessorConfig,
    ProcessorRegistration, async_trait, inventory,
};
use serde::{Deserialize, Serialize};

use super::FilterProcessor;

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FilterConfig {
    /// Keep only the metrics that match (all metrics when absent).
    pub include: Option<Match>,
    /// Then drop the metrics that match.
    pub exclude: Option<Match>,
}

/// Conditions on a metric; those given must all hold.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Match {
    /// One of these types (`auth_request`, `tool_execution`, ...).
    pub metric_types: Vec<MetricType>,
    /// One of these services, as the request names it.
    pub services: Vec<String>,
    /// Each of these dimensions has this value (`true`, `42` and text compare as written).
    pub dimensions: BTreeMap<String, String>,
}

impl ComponentConfig for FilterConfig {
    fn validate(&self) -> Vec<String> {
        let mut problems = Vec::new();
        if self.include.is_none() && self.exclude.is_none() {
            problems.push(
                "include: give `include` or `exclude`, or the filter keeps everything".into(),
            );
        }
        // An empty match matches every metric: `exclude: {}` would drop them all.
        for (key, given) in [("include", &self.include), ("exclude", &self.exclude)] {
            if given.as_ref().is_some_and(Match::is_empty) {
                problems.push(format!(
                    "{key}: give at least one of metric_types, services, dimensions"
                ));
            }
        }
        problems
    }
}

impl Match {
    fn is_empty(&self) -> bool {
        self.metric_types.is_empty() && self.services.is_empty() && self.dimensions.is_empty()
    }
}

#[async_trait]
impl ProcessorConfig for FilterConfig {
    async fn build(
        &self,
        _cx: &BuildContext,
        next: Arc<dyn Consumer>,
    ) -> Result<Arc<dyn Processor>, BoxError> {
        Ok(Arc::new(FilterProcessor {
            config: self.clone(),
            next,
        }))
    }
}

inventory::submit!(ProcessorRegistration::of::<FilterConfig>(
    "filter",
    "keeps or drops metrics by type, service and dimension values, for routing"
));
