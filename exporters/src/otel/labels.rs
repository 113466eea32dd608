//! Turning a metric's dimensions, which are user input, into labels that are valid and bounded.

use std::borrow::Cow;
use std::collections::BTreeSet;

use mcp_metrics_plugin::{Metric, RequestContext};
use serde_json::Value;

/// Labels every series has; a dimension of the same name is renamed `exported_<name>`.
const RESERVED: [&str; 6] = [
    "service",
    "metric_type",
    AUTHENTICATED_SERVICE,
    "le",
    "quantile",
    OVERFLOW_LABEL,
];

/// The label (and `metadata` key, set by the `enrich` processor's `service_identity: record`)
/// naming the service of the API key, on series whose `service` the client named otherwise.
pub const AUTHENTICATED_SERVICE: &str = "authenticated_service";

/// The label that marks the series where points past the cardinality limit are counted.
pub const OVERFLOW_LABEL: &str = "otel_metric_overflow";

/// Most dimension labels one series carries; further dimensions (by key order) are left out.
pub const MAX_DIMENSION_LABELS: usize = 32;

/// Longest dimension label name, in characters; longer names are cut.
pub const MAX_LABEL_NAME_CHARS: usize = 100;

/// Longest label value, in characters; longer values are cut.
pub const MAX_LABEL_VALUE_CHARS: usize = 256;

/// Most bytes of label names and values one series carries, `service` and `metric_type`
/// included: the per-label caps alone would still allow 32 labels of over 1 KiB each.
pub const MAX_SERIES_LABEL_BYTES: usize = 2048;

/// Which dimensions become labels.
#[derive(Debug, Clone, Default)]
pub struct LabelPolicy {
    /// Only these dimension keys (as the client sends them); `None` takes every key.
    pub allow: Option<BTreeSet<String>>,
}

/// The labels of one series, as (name, value) pairs: what the Prometheus exporter keys its series
/// by, and what the OTLP one turns into attributes. They borrow from the metric where its text is
/// already a valid label, so a point of a series that exists costs no allocation.
#[derive(Debug, PartialEq)]
pub struct SeriesLabels<'a> {
    pub labels: Vec<(Cow<'a, str>, Cow<'a, str>)>,
    /// Whether dimensions were left out because the series was at its label bounds.
    pub dimensions_dropped: bool,
}

impl LabelPolicy {
    /// The labels of `metric`'s series: [`labels`](Self::labels) of its request's service, its
    /// type, the key's service that `enrich` recorded, and its dimensions.
    pub fn of<'a>(&self, context: &'a RequestContext, metric: &'a Metric) -> SeriesLabels<'a> {
        let authenticated = metric
            .metadata
            .get(AUTHENTICATED_SERVICE)
            .and_then(|v| v.as_str());
        self.labels(
            &context.service,
            metric.metric_type.as_str(),
            authenticated,
            &metric.dimensions,
        )
    }

    /// `service`, `metric_type`, `authenticated_service` when given and not `service`, then the
    /// allowed dimensions sorted by key, each named as a valid Prometheus label and valued as
    /// text, until the next would pass [`MAX_DIMENSION_LABELS`] or [`MAX_SERIES_LABEL_BYTES`].
    /// Null dimensions are left out.
    pub fn labels<'a>(
        &self,
        service: &'a str,
        metric_type: &'a str,
        authenticated_service: Option<&'a str>,
        dimensions: &'a serde_json::Map<String, Value>,
    ) -> SeriesLabels<'a> {
        let mut labels = Vec::with_capacity(3 + dimensions.len());
        labels.push((Cow::Borrowed("service"), Cow::Borrowed(service)));
        labels.push((Cow::Borrowed("metric_type"), Cow::Borrowed(metric_type)));
        let mut bytes = "service".len() + service.len() + "metric_type".len() + metric_type.len();
        if let Some(authenticated) = authenticated_service.filter(|a| *a != service) {
            labels.push((
                Cow::Borrowed(AUTHENTICATED_SERVICE),
                Cow::Borrowed(authenticated),
            ));
            bytes += AUTHENTICATED_SERVICE.len() + authenticated.len();
        }
        let mut dimension_labels = 0;
        // A JSON object's keys come sorted (serde_json's map is ordered by key).
        for (key, value) in dimensions {
            if self
                .allow
                .as_ref()
                .is_some_and(|allow| !allow.contains(key))
            {
                continue;
            }
            let (Some(value), Some(name)) = (label_value(value), label_name(key)) else {
                continue;
            };
            // Two keys that sanitise alike ("a.b", "a-b"): the first in key order wins.
            if labels.iter().any(|(taken, _)| *taken == name) {
                continue;
            }
            let size = name.len() + value.len();
            if dimension_labels == MAX_DIMENSION_LABELS || bytes + size > MAX_SERIES_LABEL_BYTES {
                return SeriesLabels {
                    labels,
                    dimensions_dropped: true,
                };
            }
            bytes += size;
            dimension_labels += 1;
            labels.push((name, value));
        }
        SeriesLabels {
            labels,
            dimensions_dropped: false,
        }
    }
}

/// A valid Prometheus label name for a dimension key: `[a-zA-Z_][a-zA-Z0-9_]*`, not starting
/// with the reserved `__`, not one of the labels every series has, at most
/// [`MAX_LABEL_NAME_CHARS`] long. `None` for an empty key. A key that is all that already (the
/// usual case) is borrowed.
pub fn label_name(key: &str) -> Option<Cow<'_, str>> {
    if is_label_name(key) {
        Some(Cow::Borrowed(key))
    } else {
        sanitised_label_name(key).map(Cow::Owned)
    }
}

/// Whether [`sanitised_label_name`] would leave `key` as it is.
fn is_label_name(key: &str) -> bool {
    key.len() <= MAX_LABEL_NAME_CHARS
        && key.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_')
        && !key.starts_with("__")
        && key.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
        && !RESERVED.contains(&key)
}

fn sanitised_label_name(key: &str) -> Option<String> {
    let mut name: String = key
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect();
    if name.is_empty() {
        return None;
    }
    if name.starts_with("__") {
        name = format!("_{}", name.trim_start_matches('_'));
    }
    if name.starts_with(|c: char| c.is_ascii_digit()) {
        name.insert(0, '_');
    }
    if RESERVED.contains(&name.as_str()) {
        name = format!("exported_{name}");
    }
    // ASCII only by now, so a byte index is a character index.
    name.truncate(MAX_LABEL_NAME_CHARS);
    Some(name)
}

/// A dimension's value as label text: strings as they are, booleans as `True` / `False`, numbers
/// as JSON writes them (`1024`, `0.5`), arrays and objects as compact JSON; null has no label.
pub fn label_value(value: &Value) -> Option<Cow<'_, str>> {
    let text = match value {
        Value::Null => return None,
        Value::String(text) => Cow::Borrowed(text.as_str()),
        // The deployed Python service wrote labels with `str()`, and the field's dashboards query
        // `success="True"`: a drop-in replacement keeps that spelling.
        Value::Bool(true) => Cow::Borrowed("True"),
        Value::Bool(false) => Cow::Borrowed("False"),
        Value::Number(number) => Cow::Owned(number.to_string()),
        other => Cow::Owned(other.to_string()),
    };
    // Cheaper than counting characters: a text of no more bytes has no more characters.
    if text.len() <= MAX_LABEL_VALUE_CHARS {
        return Some(text);
    }
    Some(match text.char_indices().nth(MAX_LABEL_VALUE_CHARS) {
        Some((cut, _)) => Cow::Owned(text[..cut].to_owned()),
        None => text,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn names_are_made_valid() {
        assert_eq!(label_name("server.name").unwrap(), "server_name");
        assert_eq!(label_name("http-status").unwrap(), "http_status");
        assert_eq!(label_name("2fa").unwrap(), "_2fa");
        assert_eq!(label_name("__name__").unwrap(), "_name__");
        assert_eq!(label_name("naïve").unwrap(), "na_ve");
        assert_eq!(label_name("service").unwrap(), "exported_service");
        assert_eq!(label_name("le").unwrap(), "exported_le");
        let long = "k".repeat(150);
        assert_eq!(label_name(&long).unwrap(), "k".repeat(MAX_LABEL_NAME_CHARS));
        assert_eq!(label_name(""), None);
    }

    #[test]
    fn names_already_valid_are_borrowed_as_they_are() {
        let longest = "k".repeat(MAX_LABEL_NAME_CHARS);
        let longer = "k".repeat(MAX_LABEL_NAME_CHARS + 1);
        let keys = [
            "",
            "_",
            "__",
            "__x",
            "_x",
            "a",
            "A_b9",
            "1a",
            "a.b",
            "é",
            "service",
            "le",
            "exported_le",
            &longest,
            &longer,
        ];
        for key in keys {
            let name = label_name(key);
            assert_eq!(
                name.as_ref().map(|n| n.to_string()),
                sanitised_label_name(key),
                "{key:?}"
            );
            assert_eq!(
                matches!(name, Some(Cow::Borrowed(_))),
                sanitised_label_name(key).as_deref() == Some(key),
                "{key:?}"
            );
        }
    }

    #[test]
    fn values_of_every_json_type() {
        assert_eq!(label_value(&json!("jwt")).unwrap(), "jwt");
        assert_eq!(label_value(&json!(true)).unwrap(), "True");
        assert_eq!(label_value(&json!(false)).unwrap(), "False");
        assert_eq!(label_value(&json!(1024)).unwrap(), "1024");
        assert_eq!(label_value(&json!(0.5)).unwrap(), "0.5");
        assert_eq!(label_value(&json!([1, "a"])).unwrap(), r#"[1,"a"]"#);
        assert_eq!(label_value(&json!(null)), None);
        let long = "é".repeat(MAX_LABEL_VALUE_CHARS + 10);
        assert_eq!(
            label_value(&json!(long)).unwrap().chars().count(),
            MAX_LABEL_VALUE_CHARS
        );
    }

    #[test]
    fn labels_follow_the_policy() {
        let dimensions = json!({"success": true, "method": "jwt", "user_hash": "u1", "none": null, "a.b": 1, "a-b": 2});
        let dimensions = dimensions.as_object().unwrap();
        let all = LabelPolicy::default().labels("auth", "auth_request", None, dimensions);
        assert!(!all.dimensions_dropped);
        assert_eq!(
            all.labels,
            [
                ("service", "auth"),
                ("metric_type", "auth_request"),
                ("a_b", "2"),
                ("method", "jwt"),
                ("success", "True"),
                ("user_hash", "u1"),
            ]
            .map(|(k, v)| (Cow::Borrowed(k), Cow::Borrowed(v)))
        );
        let allow = LabelPolicy {
            allow: Some(["method".to_owned(), "success".to_owned()].into()),
        };
        let some = allow.labels("auth", "auth_request", None, dimensions);
        assert_eq!(some.labels.len(), 4);
        assert!(
            !some.dimensions_dropped,
            "left out by choice, not by a bound"
        );
    }

    #[test]
    fn the_number_of_dimension_labels_is_bounded() {
        let dimensions: serde_json::Map<String, Value> =
            (0..100).map(|i| (format!("k{i:03}"), json!(i))).collect();
        let series = LabelPolicy::default().labels("s", "custom", None, &dimensions);
        assert_eq!(series.labels.len(), 2 + MAX_DIMENSION_LABELS);
        assert!(series.dimensions_dropped);
    }

    #[test]
    fn the_label_bytes_of_a_series_are_bounded() {
        // Each dimension is a 2-byte name and a 256-byte value: 258 bytes. With the 25 bytes of
        // `service="s"` and `metric_type="custom"`, 7 fit in 2048 bytes (1831); an 8th would not.
        let dimensions: serde_json::Map<String, Value> = (0..10)
            .map(|i| (format!("k{i}"), json!("v".repeat(MAX_LABEL_VALUE_CHARS))))
            .collect();
        let series = LabelPolicy::default().labels("s", "custom", None, &dimensions);
        let names: Vec<&str> = series.labels.iter().map(|(k, _)| k.as_ref()).collect();
        assert_eq!(
            names,
            [
                "service",
                "metric_type",
                "k0",
                "k1",
                "k2",
                "k3",
                "k4",
                "k5",
                "k6"
            ]
        );
        assert!(series.dimensions_dropped);
        let bytes: usize = series.labels.iter().map(|(k, v)| k.len() + v.len()).sum();
        assert!(bytes <= MAX_SERIES_LABEL_BYTES, "{bytes}");
    }
}
