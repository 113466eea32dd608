//! `validate`: the contract's field rules. The request's own fields are checked as a whole; each
//! metric is judged alone, so good metrics go on while bad ones are reported with a reason.

mod config;

pub use config::ValidateConfig;

use std::sync::Arc;

use chrono::Utc;
use mcp_metrics_plugin::{
    Batch, Consumer, Metric, Outcome, Processor, Refusal, Rejection, RequestContext, async_trait,
};
use serde_json::{Map, Value};

pub struct ValidateProcessor {
    config: ValidateConfig,
    next: Arc<dyn Consumer>,
}

#[async_trait]
impl Consumer for ValidateProcessor {
    async fn consume(&self, mut batch: Batch) -> Result<Outcome, Refusal> {
        let mut rejected = Vec::new();
        for request in &mut batch.requests {
            let request = Arc::make_mut(request);
            self.check_request(&request.context)?;
            request
                .metrics
                .retain(|metric| match self.check_metric(metric) {
                    Ok(()) => true,
                    Err(reason) => {
                        rejected.push(Rejection {
                            index: metric.index,
                            reason: format!("metrics[{}]: {reason}", metric.index),
                        });
                        false
                    }
                });
        }
        let mut outcome = if batch.is_empty() {
            Outcome::default()
        } else {
            self.next.consume(batch).await?
        };
        outcome.merge(Outcome { rejected });
        Ok(outcome)
    }
}

impl Processor for ValidateProcessor {}

impl ValidateProcessor {
    fn check_request(&self, context: &RequestContext) -> Result<(), Refusal> {
        let limits = &self.config;
        let mut problems = Vec::new();
        if context.service.trim().is_empty() {
            problems.push("service: must not be empty".to_owned());
        }
        check_length(
            "service",
            Some(&context.service),
            limits.max_service_length,
            &mut problems,
        );
        check_length(
            "version",
            context.version.as_deref(),
            limits.max_version_length,
            &mut problems,
        );
        check_length(
            "instance_id",
            context.instance_id.as_deref(),
            limits.max_instance_id_length,
            &mut problems,
        );
        if problems.is_empty() {
            Ok(())
        } else {
            Err(Refusal::invalid(problems.join("; ")))
        }
    }

    fn check_metric(&self, metric: &Metric) -> Result<(), String> {
        if !metric.value.is_finite() {
            return Err("value: must be a finite number".into());
        }
        if let Some(duration) = metric.duration_ms
            && (!duration.is_finite() || duration < 0.0)
        {
            return Err("duration_ms: must be a finite number, zero or more".into());
        }
        let latest = Utc::now() + self.config.max_future_skew;
        if metric.timestamp > latest {
            return Err(format!(
                "timestamp: {} is more than {} in the future",
                metric.timestamp.to_rfc3339(),
                humantime::format_duration(self.config.max_future_skew)
            ));
        }
        self.check_attributes("dimensions", &metric.dimensions)?;
        self.check_attributes("metadata", &metric.metadata)
    }

    /// Bounds what one metric can make us store: key count, nesting and encoded size.
    fn check_attributes(&self, field: &str, attributes: &Map<String, Value>) -> Result<(), String> {
        let limits = &self.config;
        if attributes.len() > limits.max_attributes {
            return Err(format!(
                "{field}: {} keys, at most {} allowed",
                attributes.len(),
                limits.max_attributes
            ));
        }
        let depth = attributes.values().map(nesting).max().unwrap_or(0);
        if depth > limits.max_depth {
            return Err(format!(
                "{field}: nested {depth} levels deep, at most {} allowed",
                limits.max_depth
            ));
        }
        // Nearly every metric is far below the limit, which a bound shows without writing out
        // the JSON (that was 8.5 % of the HTTP workers' instructions, measured for every metric).
        if object_size_bound(attributes) <= limits.max_attributes_bytes {
            return Ok(());
        }
        let size = json_size(attributes);
        if size > limits.max_attributes_bytes {
            return Err(format!(
                "{field}: {size} bytes as JSON, at most {} allowed",
                limits.max_attributes_bytes
            ));
        }
        Ok(())
    }
}

fn check_length(field: &str, value: Option<&str>, max: usize, problems: &mut Vec<String>) {
    if let Some(value) = value {
        let length = value.chars().count();
        if length > max {
            problems.push(format!(
                "{field}: {length} characters, at most {max} allowed"
            ));
        }
    }
}

/// How many bytes `attributes` take as compact JSON, counted as they are written rather than
/// written into a string: every metric is measured, and almost all are far below the limit.
fn json_size(attributes: &Map<String, Value>) -> usize {
    struct Counter(usize);
    impl std::io::Write for Counter {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            self.0 += bytes.len();
            Ok(bytes.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut counter = Counter(0);
    match serde_json::to_writer(&mut counter, attributes) {
        Ok(()) => counter.0,
        Err(_) => usize::MAX,
    }
}

/// At least as many bytes as `attributes` take as compact JSON ([`json_size`]), found without
/// writing them: each byte of a string counted as if escaped (`\u00XX`, 6 bytes), each number
/// at its longest.
fn object_size_bound(attributes: &Map<String, Value>) -> usize {
    let members = attributes.iter();
    let members = members.map(|(key, value)| string_size_bound(key) + 1 + size_bound(value));
    2 + members.map(|member| member + 1).sum::<usize>()
}

fn size_bound(value: &Value) -> usize {
    match value {
        Value::Null => 4,
        Value::Bool(_) => 5,
        // Floats take at most 24 bytes (`-1.7976931348623157e+308`), integers 20.
        Value::Number(_) => 24,
        Value::String(text) => string_size_bound(text),
        Value::Array(items) => 2 + items.iter().map(|item| size_bound(item) + 1).sum::<usize>(),
        Value::Object(map) => object_size_bound(map),
    }
}

fn string_size_bound(text: &str) -> usize {
    2 + 6 * text.len()
}

/// Levels of objects and arrays below a value: 0 for a scalar.
fn nesting(value: &Value) -> usize {
    match value {
        Value::Object(map) => 1 + map.values().map(nesting).max().unwrap_or(0),
        Value::Array(items) => 1 + items.iter().map(nesting).max().unwrap_or(0),
        _ => 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn nesting_counts_levels_below_the_value() {
        assert_eq!(nesting(&json!(1)), 0);
        assert_eq!(nesting(&json!({"a": [1, {"b": 2}]})), 3);
    }

    #[test]
    fn the_size_bound_is_never_below_the_size() {
        let values = [
            json!({}),
            json!({"": ""}),
            json!({"tool": "séarch \"q\" \\ \n\u{1}\u{1f}", "n": [1, 2.5, null], "ok": true}),
            json!({"\u{0}\u{7}": "\u{8}\t\r", "deep": {"a": [[], {}, [false]]}}),
            json!({"min": f64::MIN, "tiny": 5e-324, "neg": -2.2250738585072014e-308}),
            json!({"i": i64::MIN, "u": u64::MAX, "f": -1.7976931348623157e308}),
            json!({"emoji": "🌧🌧🌧", "cjk": "数据", "control": "\u{7f}\u{80}"}),
        ];
        for value in &values {
            let attributes = value.as_object().unwrap();
            let exact = json_size(attributes);
            let bound = object_size_bound(attributes);
            assert!(bound >= exact, "{value}: bound {bound} < {exact}");
        }
        // Every byte escaped, every number at its longest: the bound is reached, but for the
        // comma it counts after the last member.
        let worst = json!({"\u{1}": f64::MIN});
        let worst = worst.as_object().unwrap();
        assert_eq!(object_size_bound(worst), json_size(worst) + 1, "{worst:?}");
    }

    #[test]
    fn json_size_is_the_length_of_the_compact_json() {
        let attributes = json!({"tool": "séarch \"q\"", "n": [1, 2.5, null], "ok": true});
        let attributes = attributes.as_object().unwrap();
        assert_eq!(
            json_size(attributes),
            serde_json::to_string(attributes).unwrap().len()
        );
    }
}
