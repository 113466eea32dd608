//! How a metric becomes a row of each metrics table, alike in every database: the contract's
//! mapping from `dimensions` and `metadata` to the typed tables' columns, written once. The
//! SQLite writer binds these values, PostgreSQL's `COPY` encodes them, and its `UNNEST` writer
//! gathers them into one array per column.

use std::borrow::Cow;

use mcp_metrics_plugin::{Metric, MetricType, RequestContext};
use serde_json::{Map, Value};

use crate::timestamp_text;

/// A metrics table: its columns, which metrics it takes, and how a metric fills a row of it.
pub struct Table {
    pub name: &'static str,
    pub columns: &'static [Column],
    /// The one type of metric it takes; `None` takes every metric (`metrics`).
    only: Option<MetricType>,
    /// Pushes a metric's values, one per column in order, onto the row.
    row: for<'a> fn(&'a RequestContext, &'a Metric, &mut Vec<Field<'a>>),
}

pub struct Column {
    pub name: &'static str,
    pub kind: Kind,
}

/// What a column holds. Text, JSON and timestamps are all given as text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Text,
    Json,
    Timestamp,
    Real,
    Integer,
    Bool,
}

/// One value of a row.
#[derive(Debug, Clone, PartialEq)]
pub enum Field<'a> {
    Text(Option<Cow<'a, str>>),
    Real(Option<f64>),
    Integer(Option<i64>),
    Bool(Option<bool>),
}

impl Table {
    pub fn takes(&self, metric: &Metric) -> bool {
        self.only.is_none_or(|only| only == metric.metric_type)
    }

    /// The metric's row of this table, in `row` (cleared first), one value per column.
    pub fn row_of<'a>(
        &self,
        context: &'a RequestContext,
        metric: &'a Metric,
        row: &mut Vec<Field<'a>>,
    ) {
        row.clear();
        self.append_row(context, metric, row);
    }

    /// The metric's row of this table, appended to `values`, one value per column.
    pub fn append_row<'a>(
        &self,
        context: &'a RequestContext,
        metric: &'a Metric,
        values: &mut Vec<Field<'a>>,
    ) {
        let before = values.len();
        (self.row)(context, metric, values);
        debug_assert_eq!(values.len() - before, self.columns.len(), "{}", self.name);
    }

    /// The column names, comma-separated.
    pub fn column_list(&self) -> String {
        let names: Vec<&str> = self.columns.iter().map(|c| c.name).collect();
        names.join(", ")
    }
}

const fn column(name: &'static str, kind: Kind) -> Column {
    Column { name, kind }
}

/// Every table metric rows go into, `metrics` first.
pub static TABLES: [&Table; 4] = [&METRICS, &AUTH_METRICS, &DISCOVERY_METRICS, &TOOL_METRICS];

static METRICS: Table = Table {
    name: "metrics",
    columns: &[
        column("request_id", Kind::Text),
        column("service", Kind::Text),
        column("service_version", Kind::Text),
        column("instance_id", Kind::Text),
        column("metric_type", Kind::Text),
        column("timestamp", Kind::Timestamp),
        column("value", Kind::Real),
        column("duration_ms", Kind::Real),
        column("dimensions", Kind::Json),
        column("metadata", Kind::Json),
    ],
    only: None,
    row: |context, metric, row| {
        row.extend([
            borrowed(&context.request_id),
            borrowed(&context.service),
            Field::Text(context.version.as_deref().map(Cow::Borrowed)),
            Field::Text(context.instance_id.as_deref().map(Cow::Borrowed)),
            borrowed(metric.metric_type.as_str()),
            owned(timestamp_text(&metric.timestamp)),
            Field::Real(Some(metric.value)),
            Field::Real(metric.duration_ms),
            owned(json_text(&metric.dimensions)),
            owned(json_text(&metric.metadata)),
        ])
    },
};

static AUTH_METRICS: Table = Table {
    name: "auth_metrics",
    columns: &[
        column("request_id", Kind::Text),
        column("timestamp", Kind::Timestamp),
        column("service", Kind::Text),
        column("duration_ms", Kind::Real),
        column("success", Kind::Bool),
        column("method", Kind::Text),
        column("server", Kind::Text),
        column("user_hash", Kind::Text),
        column("error_code", Kind::Text),
        column("authenticated_service", Kind::Text),
    ],
    only: Some(MetricType::AuthRequest),
    row: |context, metric, row| {
        let (dimensions, metadata) = (&metric.dimensions, &metric.metadata);
        common(context, metric, row);
        row.extend([
            Field::Bool(boolean(dimensions.get("success"))),
            Field::Text(text(dimensions.get("method"))),
            Field::Text(text(dimensions.get("server"))),
            Field::Text(text(dimensions.get("user_hash"))),
            Field::Text(text(metadata.get("error_code"))),
            Field::Text(authenticated_service(metadata)),
        ])
    },
};

static DISCOVERY_METRICS: Table = Table {
    name: "discovery_metrics",
    columns: &[
        column("request_id", Kind::Text),
        column("timestamp", Kind::Timestamp),
        column("service", Kind::Text),
        column("duration_ms", Kind::Real),
        column("query", Kind::Text),
        column("results_count", Kind::Integer),
        column("top_k_services", Kind::Integer),
        column("top_n_tools", Kind::Integer),
        column("embedding_time_ms", Kind::Real),
        column("faiss_search_time_ms", Kind::Real),
        column("authenticated_service", Kind::Text),
    ],
    only: Some(MetricType::ToolDiscovery),
    row: |context, metric, row| {
        let (dimensions, metadata) = (&metric.dimensions, &metric.metadata);
        common(context, metric, row);
        row.extend([
            Field::Text(text(dimensions.get("query"))),
            Field::Integer(integer(dimensions.get("results_count"))),
            Field::Integer(integer(dimensions.get("top_k_services"))),
            Field::Integer(integer(dimensions.get("top_n_tools"))),
            Field::Real(real(metadata.get("embedding_time_ms"))),
            Field::Real(real(metadata.get("faiss_search_time_ms"))),
            Field::Text(authenticated_service(metadata)),
        ])
    },
};

static TOOL_METRICS: Table = Table {
    name: "tool_metrics",
    columns: &[
        column("request_id", Kind::Text),
        column("timestamp", Kind::Timestamp),
        column("service", Kind::Text),
        column("duration_ms", Kind::Real),
        column("tool_name", Kind::Text),
        column("server_path", Kind::Text),
        column("server_name", Kind::Text),
        column("success", Kind::Bool),
        column("error_code", Kind::Text),
        column("input_size_bytes", Kind::Integer),
        column("output_size_bytes", Kind::Integer),
        column("authenticated_service", Kind::Text),
    ],
    only: Some(MetricType::ToolExecution),
    row: |context, metric, row| {
        let (dimensions, metadata) = (&metric.dimensions, &metric.metadata);
        common(context, metric, row);
        row.extend([
            Field::Text(text(dimensions.get("tool_name"))),
            Field::Text(text(dimensions.get("server_path"))),
            Field::Text(text(dimensions.get("server_name"))),
            Field::Bool(boolean(dimensions.get("success"))),
            Field::Text(text(metadata.get("error_code"))),
            Field::Integer(integer(metadata.get("input_size_bytes"))),
            Field::Integer(integer(metadata.get("output_size_bytes"))),
            Field::Text(authenticated_service(metadata)),
        ])
    },
};

/// The columns every typed table starts with.
fn common<'a>(context: &'a RequestContext, metric: &'a Metric, row: &mut Vec<Field<'a>>) {
    row.extend([
        borrowed(&context.request_id),
        owned(timestamp_text(&metric.timestamp)),
        borrowed(&context.service),
        Field::Real(metric.duration_ms),
    ])
}

fn borrowed(text: &str) -> Field<'_> {
    Field::Text(Some(Cow::Borrowed(text)))
}

fn owned(text: String) -> Field<'static> {
    Field::Text(Some(Cow::Owned(text)))
}

/// The service of the API key, as the `enrich` processor records it (`service_identity: record`).
pub fn authenticated_service(metadata: &Map<String, Value>) -> Option<Cow<'_, str>> {
    text(metadata.get("authenticated_service"))
}

pub fn json_text(map: &Map<String, Value>) -> String {
    serde_json::to_string(map).unwrap_or_else(|_| "{}".into())
}

/// A TEXT column from a JSON value: strings as they are, other scalars as written, null as NULL.
pub fn text(value: Option<&Value>) -> Option<Cow<'_, str>> {
    match value? {
        Value::Null => None,
        Value::String(s) => Some(Cow::Borrowed(s)),
        other => Some(Cow::Owned(other.to_string())),
    }
}

/// A BOOLEAN column: true/false, 1/0, or their spellings as strings.
pub fn boolean(value: Option<&Value>) -> Option<bool> {
    match value? {
        Value::Bool(b) => Some(*b),
        Value::Number(n) => n.as_f64().map(|n| n != 0.0),
        Value::String(s) => match s.to_ascii_lowercase().as_str() {
            "true" | "1" | "yes" => Some(true),
            "false" | "0" | "no" => Some(false),
            _ => None,
        },
        _ => None,
    }
}

/// An INTEGER column: whole numbers, or strings that hold one.
pub fn integer(value: Option<&Value>) -> Option<i64> {
    match value? {
        Value::Number(n) => n
            .as_i64()
            .or_else(|| n.as_f64().filter(|f| f.fract() == 0.0).map(|f| f as i64)),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
}

/// A REAL column: numbers, or strings that hold one.
pub fn real(value: Option<&Value>) -> Option<f64> {
    match value? {
        Value::Number(n) => n.as_f64(),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn metric(metric_type: MetricType, dimensions: Value, metadata: Value) -> Metric {
        Metric {
            index: 0,
            metric_type,
            timestamp: chrono::Utc::now(),
            value: 1.0,
            duration_ms: Some(2.5),
            dimensions: dimensions.as_object().cloned().unwrap_or_default(),
            metadata: metadata.as_object().cloned().unwrap_or_default(),
        }
    }

    #[test]
    fn every_row_has_a_value_of_its_column_s_kind_for_each_column() {
        let context = RequestContext {
            request_id: "req_1".into(),
            service: "svc".into(),
            version: None,
            instance_id: Some("i-1".into()),
            received_at: chrono::Utc::now(),
            key: None,
            idempotency_key: None,
        };
        let full = json!({"success": "yes", "method": "jwt", "results_count": "5",
                          "tool_name": "t", "top_k_services": 3});
        let metadata = json!({"error_code": 401, "embedding_time_ms": 1.5,
                              "input_size_bytes": 12.0, "authenticated_service": "gw"});
        for metric_type in MetricType::ALL {
            for (dimensions, metadata) in [(json!({}), json!({})), (full.clone(), metadata.clone())]
            {
                let metric = metric(metric_type, dimensions, metadata);
                let mut row = Vec::new();
                let tables: Vec<&str> = TABLES
                    .iter()
                    .filter(|t| t.takes(&metric))
                    .map(|t| t.name)
                    .collect();
                assert_eq!(tables[0], "metrics");
                assert!(tables.len() <= 2, "{tables:?}");
                for table in TABLES.iter().filter(|t| t.takes(&metric)) {
                    table.row_of(&context, &metric, &mut row);
                    assert_eq!(row.len(), table.columns.len(), "{}", table.name);
                    for (column, field) in table.columns.iter().zip(&row) {
                        let fits = match field {
                            Field::Text(_) => {
                                matches!(column.kind, Kind::Text | Kind::Json | Kind::Timestamp)
                            }
                            Field::Real(_) => column.kind == Kind::Real,
                            Field::Integer(_) => column.kind == Kind::Integer,
                            Field::Bool(_) => column.kind == Kind::Bool,
                        };
                        assert!(fits, "{}.{}: {field:?}", table.name, column.name);
                    }
                }
            }
        }
        let auth = metric(MetricType::AuthRequest, full, metadata);
        let mut row = Vec::new();
        TABLES[1].row_of(&context, &auth, &mut row);
        assert_eq!(row[4], Field::Bool(Some(true)));
        assert_eq!(row[8], Field::Text(Some("401".into())));
        assert_eq!(row[9], Field::Text(Some("gw".into())));
    }

    #[test]
    fn column_conversions() {
        assert_eq!(text(Some(&json!("jwt"))).as_deref(), Some("jwt"));
        assert_eq!(text(Some(&json!(404))).as_deref(), Some("404"));
        assert_eq!(text(Some(&json!(null))), None);
        assert_eq!(boolean(Some(&json!("False"))), Some(false));
        assert_eq!(boolean(Some(&json!(1))), Some(true));
        assert_eq!(integer(Some(&json!(5.0))), Some(5));
        assert_eq!(integer(Some(&json!("12"))), Some(12));
        assert_eq!(integer(Some(&json!(1.5))), None);
        assert_eq!(real(Some(&json!("2.5"))), Some(2.5));
    }
}
