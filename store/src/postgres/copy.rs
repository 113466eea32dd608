//! Rows written with `COPY ... FROM STDIN` in its text format: PostgreSQL's bulk-load path.

use std::fmt::Write;

use mcp_metrics_plugin::{Metric, MetricType, RequestContext};
use sqlx::{Postgres, Transaction};

use super::rows::Row;
use crate::columns::{authenticated_service, boolean, integer, json_text, real, text};
use crate::timestamp_text;

/// One field of a row in COPY's text format.
enum Field {
    Text(Option<String>),
    Number(Option<f64>),
    Integer(Option<i64>),
    Bool(Option<bool>),
}

/// A table's row of one metric.
type RowOf = fn(&RequestContext, &Metric) -> Vec<Field>;

/// Every row into `metrics`, the typed ones also into their table, in the transaction `tx`.
pub(super) async fn copy_rows(
    tx: &mut Transaction<'_, Postgres>,
    rows: &[Row<'_>],
) -> Result<(), sqlx::Error> {
    let tables: [(&str, RowOf, Option<MetricType>); 4] = [
        (METRICS, metrics_row, None),
        (AUTH, auth_row, Some(MetricType::AuthRequest)),
        (DISCOVERY, discovery_row, Some(MetricType::ToolDiscovery)),
        (TOOL, tool_row, Some(MetricType::ToolExecution)),
    ];
    for (statement, row, only) in tables {
        let mut data = String::new();
        for (context, metric) in rows {
            if only.is_none_or(|t| t == metric.metric_type) {
                encode(&mut data, row(context, metric));
            }
        }
        if data.is_empty() {
            continue;
        }
        let mut copy = tx.copy_in_raw(statement).await?;
        copy.send(data.into_bytes()).await?;
        copy.finish().await?;
    }
    Ok(())
}

const METRICS: &str = "COPY metrics (request_id, service, service_version, instance_id, \
    metric_type, timestamp, value, duration_ms, dimensions, metadata) FROM STDIN";
const AUTH: &str = "COPY auth_metrics (request_id, timestamp, service, duration_ms, success, \
    method, server, user_hash, error_code, authenticated_service) FROM STDIN";
const DISCOVERY: &str = "COPY discovery_metrics (request_id, timestamp, service, duration_ms, \
    query, results_count, top_k_services, top_n_tools, embedding_time_ms, faiss_search_time_ms, \
    authenticated_service) FROM STDIN";
const TOOL: &str = "COPY tool_metrics (request_id, timestamp, service, duration_ms, tool_name, \
    server_path, server_name, success, error_code, input_size_bytes, output_size_bytes, \
    authenticated_service) FROM STDIN";

fn common(context: &RequestContext, metric: &Metric) -> Vec<Field> {
    vec![
        Field::Text(Some(context.request_id.clone())),
        Field::Text(Some(timestamp_text(&metric.timestamp))),
        Field::Text(Some(context.service.clone())),
        Field::Number(metric.duration_ms),
    ]
}

fn metrics_row(context: &RequestContext, metric: &Metric) -> Vec<Field> {
    vec![
        Field::Text(Some(context.request_id.clone())),
        Field::Text(Some(context.service.clone())),
        Field::Text(context.version.clone()),
        Field::Text(context.instance_id.clone()),
        Field::Text(Some(metric.metric_type.as_str().to_owned())),
        Field::Text(Some(timestamp_text(&metric.timestamp))),
        Field::Number(Some(metric.value)),
        Field::Number(metric.duration_ms),
        Field::Text(Some(json_text(&metric.dimensions))),
        Field::Text(Some(json_text(&metric.metadata))),
    ]
}

fn auth_row(context: &RequestContext, metric: &Metric) -> Vec<Field> {
    let (d, m) = (&metric.dimensions, &metric.metadata);
    let mut row = common(context, metric);
    row.extend([
        Field::Bool(boolean(d.get("success"))),
        Field::Text(text(d.get("method"))),
        Field::Text(text(d.get("server"))),
        Field::Text(text(d.get("user_hash"))),
        Field::Text(text(m.get("error_code"))),
        Field::Text(authenticated_service(m)),
    ]);
    row
}

fn discovery_row(context: &RequestContext, metric: &Metric) -> Vec<Field> {
    let (d, m) = (&metric.dimensions, &metric.metadata);
    let mut row = common(context, metric);
    row.extend([
        Field::Text(text(d.get("query"))),
        Field::Integer(integer(d.get("results_count"))),
        Field::Integer(integer(d.get("top_k_services"))),
        Field::Integer(integer(d.get("top_n_tools"))),
        Field::Number(real(m.get("embedding_time_ms"))),
        Field::Number(real(m.get("faiss_search_time_ms"))),
        Field::Text(authenticated_service(m)),
    ]);
    row
}

fn tool_row(context: &RequestContext, metric: &Metric) -> Vec<Field> {
    let (d, m) = (&metric.dimensions, &metric.metadata);
    let mut row = common(context, metric);
    row.extend([
        Field::Text(text(d.get("tool_name"))),
        Field::Text(text(d.get("server_path"))),
        Field::Text(text(d.get("server_name"))),
        Field::Bool(boolean(d.get("success"))),
        Field::Text(text(m.get("error_code"))),
        Field::Integer(integer(m.get("input_size_bytes"))),
        Field::Integer(integer(m.get("output_size_bytes"))),
        Field::Text(authenticated_service(m)),
    ]);
    row
}

/// One line of COPY's text format: tab-separated, `\N` for NULL, backslash escapes.
fn encode(out: &mut String, fields: Vec<Field>) {
    for (at, field) in fields.into_iter().enumerate() {
        if at > 0 {
            out.push('\t');
        }
        let _ = match field {
            Field::Text(Some(text)) => {
                for c in text.chars() {
                    match c {
                        '\\' => out.push_str("\\\\"),
                        '\t' => out.push_str("\\t"),
                        '\n' => out.push_str("\\n"),
                        '\r' => out.push_str("\\r"),
                        c => out.push(c),
                    }
                }
                Ok(())
            }
            Field::Number(Some(n)) => write!(out, "{n}"),
            Field::Integer(Some(n)) => write!(out, "{n}"),
            Field::Bool(Some(b)) => write!(out, "{}", if b { 't' } else { 'f' }),
            _ => write!(out, "\\N"),
        };
    }
    out.push('\n');
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn copy_text_escapes_and_nulls() {
        let mut out = String::new();
        encode(
            &mut out,
            vec![
                Field::Text(Some("a\tb\\c\nd".into())),
                Field::Text(None),
                Field::Number(Some(1.5)),
                Field::Bool(Some(false)),
            ],
        );
        assert_eq!(out, "a\\tb\\\\c\\nd\t\\N\t1.5\tf\n");
    }
}
