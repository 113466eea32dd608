//! The wire contract: the request body as clients send it, and the replies they expect.

use std::sync::Arc;

use axum::Json;
use axum::extract::rejection::BytesRejection;
use axum::http::{HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};
use mcp_metrics_plugin::{Metric, MetricType, Outcome, Refusal, Rejection, parse_timestamp};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use serde_json::{Map, Value};

/// The body of `POST /metrics`. Metrics stay raw here so each can be judged alone.
#[derive(Deserialize)]
pub struct WireRequest<'a> {
    pub service: String,
    #[serde(default)]
    pub version: Option<String>,
    #[serde(default)]
    pub instance_id: Option<String>,
    #[serde(borrow)]
    pub metrics: Vec<&'a RawValue>,
}

#[derive(Deserialize)]
struct WireMetric {
    #[serde(rename = "type")]
    metric_type: String,
    #[serde(default)]
    timestamp: Option<String>,
    value: f64,
    #[serde(default)]
    duration_ms: Option<f64>,
    #[serde(default)]
    dimensions: Option<Map<String, Value>>,
    #[serde(default)]
    metadata: Option<Map<String, Value>>,
}

/// Reads the whole body, or says why it cannot be read at all.
pub fn decode_request(body: &[u8]) -> Result<WireRequest<'_>, Refusal> {
    serde_json::from_slice(body).map_err(|error| {
        if error.is_data() {
            Refusal::new(422, "invalid_request", format!("request body: {error}"))
        } else {
            Refusal::new(
                400,
                "malformed_json",
                format!("request body is not valid JSON: {error}"),
            )
        }
    })
}

/// Why a body could not be read: too large, or cut off.
pub fn body_refusal(rejection: BytesRejection) -> Refusal {
    let status = rejection.status().as_u16();
    let error = if status == 413 {
        "request_too_large"
    } else {
        "unreadable_body"
    };
    Refusal::new(status, error, rejection.body_text())
}

/// Reads one metric; `received_at` stands in for a missing timestamp.
pub fn decode_metric(
    index: usize,
    raw: &RawValue,
    received_at: DateTime<Utc>,
) -> Result<Metric, Rejection> {
    let reject = |reason: String| Rejection {
        index,
        reason: format!("metrics[{index}]: {reason}"),
    };
    let wire: WireMetric =
        serde_json::from_str(raw.get()).map_err(|error| reject(without_position(&error)))?;
    let metric_type = MetricType::from_name(&wire.metric_type).ok_or_else(|| {
        let known: Vec<&str> = MetricType::ALL.iter().map(|t| t.as_str()).collect();
        reject(format!(
            "type: unknown metric type {:?}; known: {}",
            wire.metric_type,
            known.join(", ")
        ))
    })?;
    let timestamp = match wire.timestamp.as_deref() {
        None => received_at,
        Some(text) => parse_timestamp(text).map_err(|e| reject(format!("timestamp: {e}")))?,
    };
    Ok(Metric {
        index,
        metric_type,
        timestamp,
        value: wire.value,
        duration_ms: wire.duration_ms,
        dimensions: wire.dimensions.unwrap_or_default(),
        metadata: wire.metadata.unwrap_or_default(),
    })
}

/// serde_json's message without " at line 1 column 30", which means nothing inside one metric.
fn without_position(error: &serde_json::Error) -> String {
    let message = error.to_string();
    match message.rfind(" at line ") {
        Some(at) => message[..at].to_owned(),
        None => message,
    }
}

/// The contract's success reply, fields in the contract's order.
#[derive(Serialize)]
struct SuccessReply<'a> {
    status: &'static str,
    accepted: usize,
    rejected: usize,
    errors: Vec<&'a str>,
    request_id: &'a str,
}

/// The contract's error reply; a request whose metrics were all rejected also says why each was.
#[derive(Serialize)]
struct ErrorReply<'a> {
    status: &'static str,
    error: &'a str,
    message: &'a str,
    request_id: &'a str,
    #[serde(flatten, skip_serializing_if = "Option::is_none")]
    judged: Option<Judged<'a>>,
}

#[derive(Serialize)]
struct Judged<'a> {
    accepted: usize,
    rejected: usize,
    errors: Vec<&'a str>,
}

/// The contract's error reply.
pub fn refusal_reply(refusal: &Refusal, request_id: &str) -> Response {
    let body = ErrorReply {
        status: "error",
        error: &refusal.error,
        message: &refusal.message,
        request_id,
        judged: None,
    };
    let mut headers = refusal.headers.clone();
    if let Some(seconds) = refusal.retry_after {
        headers.push(("retry-after".into(), seconds.to_string()));
    }
    reply(status(refusal.status), body, &headers)
}

/// The contract's success reply, or a 422 when not one metric could be taken.
pub fn outcome_reply(total: usize, mut outcome: Outcome, request_id: &str) -> Response {
    outcome.rejected.sort_by_key(|r| r.index);
    let rejected = outcome.rejected.len();
    let accepted = total - rejected;
    let errors: Vec<&str> = outcome.rejected.iter().map(|r| r.reason.as_str()).collect();
    if accepted == 0 && rejected > 0 {
        let message = format!("all {rejected} metrics were rejected; see errors");
        let body = ErrorReply {
            status: "error",
            error: "no_valid_metrics",
            message: &message,
            request_id,
            judged: Some(Judged {
                accepted,
                rejected,
                errors,
            }),
        };
        return reply(StatusCode::UNPROCESSABLE_ENTITY, body, &outcome.headers);
    }
    let body = SuccessReply {
        status: "success",
        accepted,
        rejected,
        errors,
        request_id,
    };
    reply(StatusCode::OK, body, &outcome.headers)
}

/// A 200 for the operator endpoints: the contract's `status` and `request_id` around `body`.
pub fn success_reply(mut body: Value, request_id: &str) -> Response {
    if let Some(fields) = body.as_object_mut() {
        fields.insert("status".into(), Value::from("success"));
        fields.insert("request_id".into(), Value::from(request_id));
    }
    reply(StatusCode::OK, body, &[])
}

fn reply(status: StatusCode, body: impl Serialize, headers: &[(String, String)]) -> Response {
    let mut response = (status, Json(body)).into_response();
    for (name, value) in headers {
        if let (Ok(name), Ok(value)) = (
            HeaderName::try_from(name.as_str()),
            HeaderValue::try_from(value.as_str()),
        ) {
            response.headers_mut().insert(name, value);
        }
    }
    response
}

fn status(code: u16) -> StatusCode {
    StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
}

/// A fresh request id in the contract's shape.
pub fn request_id() -> Arc<str> {
    format!("req_{:016x}", rand::random::<u64>()).into()
}
